//! `GET /v1/models` and `/v1/models/{id}`: the routes, listed as models (SPEC §3). Under a
//! route's base URL (`/r/{route}`) that route is the one model there is; with client auth, a
//! client sees the routes it may use. A model a route matches (`match_models`) can be fetched
//! by that name too: a chat request naming it is served, so the SDK's `models.retrieve` must
//! not say it does not exist. Answers come in the shape of the SDK that asks: Anthropic's when
//! the request carries `anthropic-version` (its SDK always does), OpenAI's otherwise.

use http::{Response, StatusCode};

use super::record::RequestRecord;
use super::{ROUTE_HEADER, client_auth, json_response};
use crate::body::Body;
use crate::config::auth::Client;
use crate::config::reload::rfc3339;
use crate::error::{ErrorCode, GatewayError};
use crate::runtime::{RouteRuntime, Snapshot};

/// Which SDK's model objects to answer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Shape {
    OpenAi,
    Anthropic,
}

impl Shape {
    pub(super) fn of(headers: &http::HeaderMap) -> Self {
        if headers.contains_key("anthropic-version") { Self::Anthropic } else { Self::OpenAi }
    }

    fn model(self, id: &str, created: u64) -> serde_json::Value {
        match self {
            Self::OpenAi => serde_json::json!({
                "id": id, "object": "model", "created": created, "owned_by": "tidegate",
            }),
            Self::Anthropic => serde_json::json!({
                "type": "model", "id": id, "display_name": id, "created_at": rfc3339(std::time::UNIX_EPOCH + std::time::Duration::from_secs(created)),
                "lifecycle": "active",
            }),
        }
    }

    fn list(self, data: Vec<serde_json::Value>) -> serde_json::Value {
        match self {
            Self::OpenAi => serde_json::json!({"object": "list", "data": data}),
            Self::Anthropic => {
                let id = |v: Option<&serde_json::Value>| v.map(|m| m["id"].clone());
                serde_json::json!({
                    "data": &data,
                    "has_more": false,
                    "first_id": id(data.first()),
                    "last_id": id(data.last()),
                })
            }
        }
    }
}

/// `GET /v1/models`.
pub(super) fn list(
    snap: &Snapshot,
    fixed: Option<&RouteRuntime>,
    client: Option<&Client>,
    shape: Shape,
    rec: &mut RequestRecord,
) -> Response<Body> {
    rec.outcome = "ok";
    rec.status = 200;
    let visible =
        |i: usize| fixed.is_none_or(|r| r.index == i) && client.is_none_or(|c| c.may_use(i));
    let mut resp = models_list(snap, visible, shape);
    if let Some(r) = fixed {
        resp.headers_mut().insert(ROUTE_HEADER, r.name_header.clone());
    }
    resp
}

/// `GET /v1/models/{id}`.
pub(super) fn one(
    snap: &Snapshot,
    id: &str,
    fixed: Option<&RouteRuntime>,
    client: Option<&Client>,
    shape: Shape,
    rec: &mut RequestRecord,
) -> Result<Response<Body>, GatewayError> {
    // Under a route's base URL: that route, by its name or a model it matches.
    if let Some(r) = fixed
        && snap.route_for_model(id).is_none_or(|m| m.index != r.index)
    {
        return Err(GatewayError::new(
            ErrorCode::ModelNotFound,
            format!("no model {id:?} under route {:?}'s base URL", r.route.name),
        )
        .with_param("model"));
    }
    if let Some(r) = snap.route_for_model(id) {
        client_auth::allow(client, r)?;
    }
    let mut one = model_one(snap, id, shape)?;
    if let Some(r) = fixed {
        one.headers_mut().insert(ROUTE_HEADER, r.name_header.clone());
    }
    rec.outcome = "ok";
    rec.status = 200;
    Ok(one)
}

fn created(snap: &Snapshot) -> u64 {
    snap.loaded_at.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn models_list(snap: &Snapshot, visible: impl Fn(usize) -> bool, shape: Shape) -> Response<Body> {
    let created = created(snap);
    let data: Vec<serde_json::Value> = snap
        .config
        .routes
        .iter()
        .enumerate()
        .filter(|(i, _)| visible(*i))
        .map(|(_, r)| shape.model(&r.name, created))
        .collect();
    json_response(StatusCode::OK, &shape.list(data))
}

fn model_one(snap: &Snapshot, id: &str, shape: Shape) -> Result<Response<Body>, GatewayError> {
    match snap.route_for_model(id) {
        Some(_) => Ok(json_response(StatusCode::OK, &shape.model(id, created(snap)))),
        None => Err(GatewayError::new(
            ErrorCode::ModelNotFound,
            format!("no route named {:?} or matching it", crate::error::clip(id)),
        )
        .with_param("model")),
    }
}
