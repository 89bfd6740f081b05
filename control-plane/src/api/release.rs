//! Staged releases over the API: the `release` a write may carry, `GET /v1/release` (the newest
//! release), `POST /v1/release/promote|abort`, and what `GET /v1/nodes` says of each node's part.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Extension, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use sluice_shared::clock::rfc3339_ms;
use sluice_shared::validate::ValidationError;

use super::{with_etag, Action, ApiError, Caller, Shared};
use crate::nodes::NodeRecord;
use crate::store::{Canary, CanarySet, Move, Release, ReleaseSpec, ReleaseState, Staging};

/// Longest bake a write may ask for.
const MAX_BAKE_S: u64 = 24 * 3600;

pub(super) fn routes(router: Router<Shared>) -> Router<Shared> {
    router
        .route("/v1/release", get(latest))
        .route("/v1/release/promote", post(promote))
        .route("/v1/release/abort", post(abort))
}

/// `"release": {"canary": {"group": "edge"} | {"percent": 10}, "bake_s": 60, "max_error_rate": 0.01}`,
/// or `"release": "immediate"` to skip the control plane's default release.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum ReleaseBody {
    Spec(SpecBody),
    Word(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SpecBody {
    canary: Canary,
    #[serde(default = "default_bake_s")]
    bake_s: u64,
    #[serde(default = "default_max_error_rate")]
    max_error_rate: f64,
}

fn default_bake_s() -> u64 {
    60
}

fn default_max_error_rate() -> f64 {
    0.01
}

/// The staging a write asks for; a malformed `release` is a 422 naming the field.
pub(super) fn staging(body: Option<ReleaseBody>) -> Result<Staging, ApiError> {
    let invalid = |field: &str, message: &str| ApiError::validation(ValidationError::invalid(field, message));
    match body {
        None => Ok(Staging::Default),
        Some(ReleaseBody::Word(w)) if w == "immediate" => Ok(Staging::Immediate),
        Some(ReleaseBody::Word(_)) => Err(invalid(
            "release",
            r#"expected "immediate" or an object such as {"canary": {"percent": 10}, "bake_s": 60}"#,
        )),
        Some(ReleaseBody::Spec(s)) => {
            match &s.canary {
                Canary::Group(g) if !sluice_shared::validate::is_valid_name(g) => {
                    return Err(invalid("release.canary.group", "expected a group name"))
                }
                Canary::Percent(p) if !(1..=99).contains(p) => {
                    return Err(invalid("release.canary.percent", "expected a whole number from 1 to 99"))
                }
                _ => {}
            }
            if s.bake_s > MAX_BAKE_S {
                return Err(invalid("release.bake_s", &format!("expected at most {MAX_BAKE_S} seconds")));
            }
            if !(0.0..=1.0).contains(&s.max_error_rate) {
                return Err(invalid("release.max_error_rate", "expected a share from 0 to 1, such as 0.01"));
            }
            Ok(Staging::Release(ReleaseSpec {
                canary: s.canary,
                bake: Duration::from_secs(s.bake_s),
                max_error_rate: s.max_error_rate,
            }))
        }
    }
}

pub(super) fn release_json(r: &Release) -> Value {
    let canary = match &r.canary {
        CanarySet::Group(g) => json!({ "group": g }),
        CanarySet::Nodes(ids) => json!({ "nodes": ids }),
    };
    json!({
        "revision": r.revision,
        "stable_revision": r.stable_revision,
        "state": r.state,
        "canary": canary,
        "bake_s": r.bake_ms / 1000,
        "max_error_rate": r.max_error_rate,
        "reason": r.reason,
        "reverted_revision": r.reverted_revision,
        "started": rfc3339_ms(r.started_ms),
        "baking_since": r.baking_since_ms.map(rfc3339_ms),
        "updated": rfc3339_ms(r.updated_ms),
    })
}

/// A node's part in the newest release while it is in progress or after it failed.
pub(super) fn node_part(r: Option<&Release>, n: &NodeRecord) -> Value {
    let Some(r) = r.filter(|r| r.state.is_active() || r.state == ReleaseState::Failed) else { return Value::Null };
    let role = if r.canary.includes(&n.id, &n.group) { "canary" } else { "held" };
    json!({ "revision": r.revision, "role": role, "state": r.state, "reason": r.reason })
}

async fn latest(State(app): State<Shared>, caller: Extension<Caller>) -> Result<Response, ApiError> {
    caller.permit(Action::Read)?;
    let r = app.store.latest_release().await?.ok_or_else(|| ApiError::not_found("no release yet"))?;
    Ok(with_etag(StatusCode::OK, app.store.state().revision, release_json(&r)))
}

async fn active(app: &Shared) -> Result<Release, ApiError> {
    let active = app.store.refresh_release().await?;
    active.map(|a| a.release.clone()).ok_or_else(|| ApiError::not_found("no release is in progress"))
}

/// Skips the rest of the bake: every node gets the release now.
async fn promote(State(app): State<Shared>, caller: Extension<Caller>) -> Result<Response, ApiError> {
    caller.permit_writes("*")?;
    let r = active(&app).await?;
    let reason = format!("promoted by {}", caller.who());
    let m = Move { reason: Some(&reason), ..Move::default() };
    if !app.store.move_release(r.revision, r.state, ReleaseState::Released, m).await? {
        return Err(ApiError::precondition_failed("the release moved on meanwhile; look again"));
    }
    let r = app.store.latest_release().await?.unwrap_or(r);
    Ok(with_etag(StatusCode::OK, app.store.state().revision, release_json(&r)))
}

/// Stops the release: the canary nodes go back to the stable config.
async fn abort(State(app): State<Shared>, caller: Extension<Caller>) -> Result<Response, ApiError> {
    caller.permit_writes("*")?;
    let r = active(&app).await?;
    crate::release::fail(&app.store, &r, &format!("aborted by {}", caller.who())).await?;
    let r = app.store.latest_release().await?.unwrap_or(r);
    Ok(with_etag(StatusCode::OK, app.store.state().revision, release_json(&r)))
}
