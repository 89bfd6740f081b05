//! Identifying callers and the audit log.
//!
//! [`identify_and_audit`] runs before routing: it turns the bearer token into a [`Caller`] for the
//! handlers and, for every mutating call (anything but GET/HEAD/OPTIONS), records who, method and
//! path, the revision before and after, and the status, whatever the outcome (401, 403, 4xx
//! included). Bodies are never recorded, and path segments that look like secrets are masked.
//! `GET /v1/audit?limit=N` (admin only) reads it back, newest first.

use axum::extract::{Query, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use sluice_shared::clock::{rfc3339_ms, unix_now_ms};
use sluice_shared::Revision;

use super::auth::TOKEN_PREFIX;
use super::{bearer_token, Action, ApiError, Caller, Committed, Shared};
use crate::store::AuditEntry;

/// Entries `GET /v1/audit` returns without `?limit=`, and the most it returns with one.
pub const DEFAULT_LIMIT: u32 = 100;
pub const MAX_LIMIT: u32 = 1000;

/// Longest path recorded; longer ones are cut (they can only be garbage).
const MAX_PATH_CHARS: usize = 256;

pub(super) async fn identify_and_audit(State(app): State<Shared>, mut req: Request, next: Next) -> Response {
    if matches!(req.uri().path(), "/healthz" | "/readyz") {
        return next.run(req).await;
    }
    let caller = match app.auth.identify(bearer_token(req.headers())).await {
        Ok(caller) => caller,
        // Credentials cannot be checked (store down): the audit log is out of reach as well.
        Err(e) => return e.into_response(),
    };
    let mutating = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if !mutating {
        req.extensions_mut().insert(caller);
        return next.run(req).await;
    }
    let who = caller.who().to_string();
    let method = req.method().to_string();
    let path = audit_path(req.uri().path());
    let before = app.store.state().revision;
    req.extensions_mut().insert(caller);
    let response = next.run(req).await;
    // Each write commits exactly one revision, so the one before it is exact even under
    // concurrent writers; without a commit, nothing changed.
    let (revision_before, revision_after) = match response.extensions().get::<Committed>() {
        Some(&Committed(rev)) => (rev.saturating_sub(1), rev),
        None => (before, before),
    };
    let entry = AuditEntry {
        id: 0,
        at_ms: unix_now_ms(),
        who,
        method,
        path,
        revision_before,
        revision_after,
        status: response.status().as_u16(),
    };
    if let Err(e) = app.store.record_audit(&entry).await {
        tracing::error!(error = %e, who = %entry.who, method = %entry.method, path = %entry.path, "audit entry lost");
    }
    response
}

/// The path as recorded: secret-looking segments masked (someone may paste a token into a URL),
/// cut to [`MAX_PATH_CHARS`].
fn audit_path(path: &str) -> String {
    let masked: Vec<&str> =
        path.split('/').map(|seg| if seg.starts_with(TOKEN_PREFIX) { "sluice_***" } else { seg }).collect();
    masked.join("/").chars().take(MAX_PATH_CHARS).collect()
}

#[derive(Debug, Deserialize)]
pub(super) struct AuditQuery {
    limit: Option<String>,
}

#[derive(Debug, Serialize)]
struct AuditView<'a> {
    id: i64,
    time: String,
    who: &'a str,
    method: &'a str,
    path: &'a str,
    revision_before: Revision,
    revision_after: Revision,
    status: u16,
}

pub(super) async fn list(
    State(app): State<Shared>,
    caller: Extension<Caller>,
    query: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    caller.permit(Action::Audit)?;
    let query = query.map_err(|e| ApiError::malformed(format!("bad query: {e}")))?;
    let limit = super::limit(query.limit.as_deref(), DEFAULT_LIMIT, MAX_LIMIT)?;
    let entries = app.store.audit(limit).await?;
    let views: Vec<_> = entries
        .iter()
        .map(|e| AuditView {
            id: e.id,
            time: rfc3339_ms(e.at_ms),
            who: &e.who,
            method: &e.method,
            path: &e.path,
            revision_before: e.revision_before,
            revision_after: e.revision_after,
            status: e.status,
        })
        .collect();
    Ok((StatusCode::OK, Json(views)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_masked_and_bounded() {
        assert_eq!(audit_path("/v1/tokens/ci"), "/v1/tokens/ci");
        assert_eq!(audit_path("/v1/tokens/sluice_abcdef"), "/v1/tokens/sluice_***");
        assert_eq!(audit_path(&format!("/{}", "a".repeat(1000))).len(), MAX_PATH_CHARS);
    }
}
