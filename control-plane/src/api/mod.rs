//! The REST API v1 (DESIGN.md §3): resources, weight shifts, revision and node status over the
//! [`Store`], plus tokens and the audit log. Reads come from the published in-memory state; writes
//! go through `Store::apply`. A middleware identifies every caller once and audits every mutating
//! call (see [`audit`]); handlers then check the caller's scopes for their [`Action`].

mod audit;
mod auth;
mod cluster_health;
mod config;
mod error;
mod nodes;
mod release;
mod resources;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_access;
#[cfg(test)]
mod tests_certs;
#[cfg(test)]
mod tests_config;
mod tokens;

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Extension, Json, Router};
use sluice_shared::Revision;

use crate::store::Store;

pub use auth::{bearer_token, Action, AdminToken, Authorizer, Caller, StoredTokens};
pub use error::ApiError;

/// Largest request body accepted; larger ones get 413.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// What the API needs: the store and the admin token (which keeps working beside stored tokens).
#[derive(Clone)]
pub struct ApiState {
    pub store: Store,
    pub admin_token: Arc<str>,
}

impl ApiState {
    pub fn new(store: Store, admin_token: impl Into<Arc<str>>) -> Self {
        Self { store, admin_token: admin_token.into() }
    }
}

/// The router's own state: the store and whoever judges tokens.
#[derive(Clone)]
pub(crate) struct Shared {
    store: Store,
    auth: Arc<dyn Authorizer>,
}

/// Marks a response whose request committed this revision (for the audit log).
#[derive(Debug, Clone, Copy)]
struct Committed(Revision);

/// The API with the admin token and the store's scoped tokens as credentials.
pub fn app(state: ApiState) -> Router {
    let auth = Arc::new(StoredTokens::new(&state.admin_token, state.store.clone()));
    app_with_authorizer(state.store, auth)
}

/// The API with any [`Authorizer`].
pub fn app_with_authorizer(store: Store, auth: Arc<dyn Authorizer>) -> Router {
    let shared = Shared { store, auth };
    let router = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/v1/revision", get(revision))
        .route("/v1/nodes", get(nodes::list))
        .route("/v1/tokens", get(tokens::list).post(tokens::create))
        .route("/v1/tokens/{name}", delete(tokens::revoke))
        .route("/v1/audit", get(audit::list));
    release::routes(config::routes(resources::routes(router)))
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(axum::middleware::from_fn_with_state(shared.clone(), audit::identify_and_audit))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(shared)
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// How long `/readyz` waits for the database; probes time out after about a second.
const READY_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(800);

/// 200 while the database answers, 503 otherwise: a replica that cannot reach it cannot serve
/// writes, so load balancers should send clients to another.
async fn readyz(axum::extract::State(app): axum::extract::State<Shared>) -> Response {
    match app.store.ping(READY_TIMEOUT).await {
        Ok(()) => Json(serde_json::json!({ "status": "ready" })).into_response(),
        Err(e) => {
            // Unauthenticated: the reason goes to the log, not to whoever asks.
            tracing::warn!(error = %e, "not ready: the database does not answer");
            (StatusCode::SERVICE_UNAVAILABLE, Json(serde_json::json!({ "status": "unavailable" }))).into_response()
        }
    }
}

async fn revision(axum::extract::State(app): axum::extract::State<Shared>, caller: Extension<Caller>) -> Response {
    if let Err(e) = caller.permit(Action::Read) {
        return e.into_response();
    }
    let revision = app.store.state().revision;
    with_etag(StatusCode::OK, revision, serde_json::json!({ "revision": revision }))
}

/// A JSON response carrying `ETag: "N"`.
fn with_etag(status: StatusCode, revision: Revision, body: serde_json::Value) -> Response {
    let mut response = (status, Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("\"{revision}\"")) {
        response.headers_mut().insert(header::ETAG, v);
    }
    response
}

/// The response of a committed write: `ETag` and the revision marked for the audit log.
fn committed(revision: Revision, body: serde_json::Value) -> Response {
    let mut response = with_etag(StatusCode::OK, revision, body);
    response.extensions_mut().insert(Committed(revision));
    response
}

/// Reads the whole body, refusing more than [`MAX_BODY_BYTES`] (413) without buffering past it.
async fn read_body(headers: &HeaderMap, body: Body) -> Result<Bytes, ApiError> {
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(ApiError::too_large(MAX_BODY_BYTES));
    }
    axum::body::to_bytes(body, MAX_BODY_BYTES).await.map_err(|e| {
        let inner = e.into_inner();
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(inner.as_ref());
        while let Some(err) = source {
            if err.is::<http_body_util::LengthLimitError>() {
                return ApiError::too_large(MAX_BODY_BYTES);
            }
            source = err.source();
        }
        ApiError::malformed(format!("cannot read the request body: {inner}"))
    })
}

/// A `?limit=` query value: `default` when absent, else an integer from 1 to `max` (400 otherwise).
fn limit(text: Option<&str>, default: u32, max: u32) -> Result<u32, ApiError> {
    match text {
        None => Ok(default),
        Some(t) => t
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| ApiError::malformed(format!("limit must be an integer from 1 to {max}"))),
    }
}

/// The revision a write is conditioned on (`If-Match: "N"`), checked atomically by the store.
/// `*` or no header: unconditional. A list matches if any entry is the current revision.
fn if_match(headers: &HeaderMap, current: Revision) -> Result<Option<Revision>, ApiError> {
    let mut listed = Vec::new();
    for value in headers.get_all(header::IF_MATCH) {
        let text = value.to_str().map_err(|_| ApiError::precondition_failed("If-Match is not readable"))?;
        for tag in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            if tag == "*" {
                return Ok(None);
            }
            let bare = tag.strip_prefix("W/").unwrap_or(tag).trim_matches('"');
            if let Ok(rev) = bare.parse::<Revision>() {
                listed.push(rev);
            }
        }
    }
    match listed.as_slice() {
        [] if headers.contains_key(header::IF_MATCH) => {
            Err(ApiError::precondition_failed(format!("If-Match names no revision; the revision is {current}")))
        }
        [] => Ok(None),
        // The store re-checks against the database, so a write in between still yields 412.
        revs if revs.contains(&current) => Ok(Some(current)),
        [first, ..] => Ok(Some(*first)),
    }
}
