//! Client auth on the data plane (`auth.keys`, SPEC §3): who is calling, and whether it may
//! use the route it asked for. Both refusals are 401 `unauthorized`.

use std::sync::Arc;

use http::HeaderMap;

use crate::config::auth::{Client, Refusal};
use crate::error::{ErrorCode, GatewayError};
use crate::runtime::{RouteRuntime, Snapshot};

/// The calling client when client auth is on (`Ok(None)` when it is off), or the 401.
pub(super) fn identify(
    snap: &Snapshot,
    headers: &HeaderMap,
) -> Result<Option<Arc<Client>>, GatewayError> {
    let Some(auth) = &snap.config.auth else { return Ok(None) };
    match auth.identify(headers) {
        Ok(client) => Ok(Some(client.clone())),
        Err(Refusal::Missing) => Err(GatewayError::new(
            ErrorCode::Unauthorized,
            "an API key is required: send `Authorization: Bearer <key>` or `x-api-key: <key>`",
        )),
        Err(Refusal::Unknown) => {
            Err(GatewayError::new(ErrorCode::Unauthorized, "the API key is not recognized"))
        }
    }
}

/// Whether `client` (none: auth is off) may use `route`.
pub(super) fn allow(client: Option<&Client>, route: &RouteRuntime) -> Result<(), GatewayError> {
    match client {
        Some(c) if !c.may_use(route.index) => Err(GatewayError::new(
            ErrorCode::Unauthorized,
            // The route is not named: a model alias would tell the client a route's name.
            format!(
                "client {:?} may not use the route this request selects (by its model, path or x-tidegate-route)",
                c.name
            ),
        )),
        _ => Ok(()),
    }
}
