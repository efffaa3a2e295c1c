//! `GET /v1/models` and `/v1/models/{id}`: the routes, listed as models (SPEC §3). Under a
//! route's base URL (`/r/{route}`) that route is the one model there is; with client auth, a
//! client sees the routes it may use.

use http::{Response, StatusCode};

use super::record::RequestRecord;
use super::{ROUTE_HEADER, client_auth, json_response};
use crate::body::Body;
use crate::config::auth::Client;
use crate::error::{ErrorCode, GatewayError};
use crate::runtime::{RouteRuntime, Snapshot};

/// `GET /v1/models`.
pub(super) fn list(
    snap: &Snapshot,
    fixed: Option<&RouteRuntime>,
    client: Option<&Client>,
    rec: &mut RequestRecord,
) -> Response<Body> {
    rec.outcome = "ok";
    rec.status = 200;
    let visible =
        |i: usize| fixed.is_none_or(|r| r.index == i) && client.is_none_or(|c| c.may_use(i));
    let mut resp = models_list(snap, visible);
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
    rec: &mut RequestRecord,
) -> Result<Response<Body>, GatewayError> {
    if let Some(r) = fixed
        && r.route.name != id
    {
        return Err(GatewayError::new(
            ErrorCode::ModelNotFound,
            format!("no model {id:?} under route {:?}'s base URL", r.route.name),
        )
        .with_param("model"));
    }
    if let Some(r) = snap.route_by_name(id) {
        client_auth::allow(client, r)?;
    }
    let mut one = model_one(snap, id)?;
    if let Some(r) = fixed {
        one.headers_mut().insert(ROUTE_HEADER, r.name_header.clone());
    }
    rec.outcome = "ok";
    rec.status = 200;
    Ok(one)
}

fn models_list(snap: &Snapshot, visible: impl Fn(usize) -> bool) -> Response<Body> {
    let created = snap.loaded_at.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let data: Vec<serde_json::Value> = snap
        .config
        .routes
        .iter()
        .enumerate()
        .filter(|(i, _)| visible(*i))
        .map(|(_, r)| r)
        .map(|r| serde_json::json!({"id": r.name, "object": "model", "created": created, "owned_by": "tidegate"}))
        .collect();
    json_response(StatusCode::OK, &serde_json::json!({"object": "list", "data": data}))
}

fn model_one(snap: &Snapshot, id: &str) -> Result<Response<Body>, GatewayError> {
    let created = snap.loaded_at.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    match snap.route_by_name(id) {
        Some(r) => Ok(json_response(
            StatusCode::OK,
            &serde_json::json!({"id": r.route.name, "object": "model", "created": created, "owned_by": "tidegate"}),
        )),
        None => Err(GatewayError::new(
            ErrorCode::ModelNotFound,
            format!("no route named {:?}", crate::error::clip(id)),
        )
        .with_param("model")),
    }
}
