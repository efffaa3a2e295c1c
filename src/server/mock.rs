//! `tidegate mock-provider`: the mock provider's behaviours served over HTTP in the OpenAI wire
//! format, plus `GET /mock/stats` with the per-model call, cancel and completion counters.

use std::sync::Arc;

use http::{Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::Handled;
use crate::body::Body;
use crate::providers::mock::{self, MockStats};

fn json(status: StatusCode, v: &serde_json::Value) -> Response<Body> {
    let mut r = Response::new(Body::full(v.to_string()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    r
}

/// The mock server's handler for [`super::serve`]. A `reset` behaviour returns `Err`, which
/// closes the connection without a response.
pub fn mock_plane(
    stats: Arc<MockStats>,
) -> impl Fn(Request<Incoming>) -> Handled<Body> + Clone + Send + Sync + 'static {
    move |req| {
        let stats = stats.clone();
        Box::pin(async move {
            let path = req.uri().path().to_owned();
            if req.method() == Method::GET && path == "/mock/stats" {
                return Ok(json(
                    StatusCode::OK,
                    &serde_json::to_value(stats.snapshot()).unwrap_or_default(),
                ));
            }
            let Some(api) = path.strip_prefix("/v1") else {
                return Ok(json(
                    StatusCode::NOT_FOUND,
                    &serde_json::json!({"error": {"message": format!("no endpoint at {path}"), "type": "invalid_request_error"}}),
                ));
            };
            let api = api.to_owned();
            let body = req
                .into_body()
                .collect()
                .await
                .map_err(|e| crate::body::Broken(e.to_string()))?
                .to_bytes();
            match mock::respond(&stats, &api, &body).await {
                Ok(r) => Ok(r.map(Body::mock)),
                Err(mock::Reset) => Err(crate::body::Broken("mock reset".into())),
            }
        })
    }
}
