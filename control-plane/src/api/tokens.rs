//! `POST /v1/tokens`, `GET /v1/tokens`, `DELETE /v1/tokens/{name}` (admin only).
//! The secret is in the creation response only; lists show neither secrets nor hashes.

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use sluice_shared::clock::{rfc3339_ms, unix_now_ms};
use sluice_shared::validate::{is_valid_name, parse_json, ValidationError};

use super::auth::{new_secret, secret_sha256};
use super::{read_body, Action, ApiError, Caller, Shared};
use crate::store::{Scope, TokenRecord};

/// Names the audit log uses for callers without a token of their own.
const RESERVED_NAMES: [&str; 3] = ["admin", "anonymous", "invalid-token"];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewToken {
    name: String,
    scopes: Vec<Scope>,
    #[serde(default)]
    routes: Vec<String>,
}

#[derive(Debug, Serialize)]
struct TokenView<'a> {
    name: &'a str,
    scopes: &'a [Scope],
    routes: &'a [String],
    created: String,
}

impl<'a> TokenView<'a> {
    fn of(t: &'a TokenRecord) -> Self {
        Self { name: &t.name, scopes: &t.scopes, routes: &t.routes, created: rfc3339_ms(t.created_ms) }
    }
}

fn check(new: &NewToken) -> Result<(), ValidationError> {
    sluice_shared::validate::name("name", &new.name)?;
    if RESERVED_NAMES.contains(&new.name.as_str()) {
        return Err(ValidationError::invalid("name", format!("{} is reserved for the audit log", new.name)));
    }
    if new.scopes.is_empty() {
        return Err(ValidationError::invalid("scopes", "give at least one of admin, read, write, weights"));
    }
    if !new.routes.is_empty() && !new.scopes.contains(&Scope::Weights) {
        return Err(ValidationError::invalid("routes", "routes only limit the weights scope, which this token lacks"));
    }
    for (i, r) in new.routes.iter().enumerate() {
        if !is_valid_name(r) {
            return Err(ValidationError::invalid(format!("routes[{i}]"), format!("{r:?} is not a route name")));
        }
    }
    Ok(())
}

pub(super) async fn create(
    State(app): State<Shared>,
    caller: Extension<Caller>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    caller.permit(Action::Tokens)?;
    let mut new: NewToken = parse_json(&read_body(&headers, body).await?)?;
    check(&new).map_err(ApiError::validation)?;
    new.scopes.sort();
    new.scopes.dedup();
    // Routes need not exist yet: a pipeline's token may be issued before its route.
    new.routes.sort();
    new.routes.dedup();
    let secret = new_secret();
    let record = TokenRecord {
        name: new.name,
        scopes: new.scopes,
        routes: new.routes,
        created_ms: unix_now_ms(),
        secret_sha256: secret_sha256(&secret),
    };
    app.store.create_token(&record).await?;
    tracing::info!(token = %record.name, scopes = ?record.scopes, "token created");
    let mut body = serde_json::to_value(TokenView::of(&record)).map_err(|_| ApiError::unavailable())?;
    body["token"] = secret.into();
    let mut response = (StatusCode::CREATED, Json(body)).into_response();
    // The secret is shown once: no cache may keep it.
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

pub(super) async fn list(State(app): State<Shared>, caller: Extension<Caller>) -> Result<Response, ApiError> {
    caller.permit(Action::Tokens)?;
    let tokens = app.store.tokens().await?;
    let views: Vec<_> = tokens.iter().map(TokenView::of).collect();
    Ok((StatusCode::OK, Json(views)).into_response())
}

pub(super) async fn revoke(
    State(app): State<Shared>,
    caller: Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    caller.permit(Action::Tokens)?;
    let Path(name) = path.map_err(|e| ApiError::malformed(format!("bad path: {e}")))?;
    if !app.store.delete_token(&name).await? {
        return Err(ApiError::not_found(format!("token {name} does not exist")));
    }
    tracing::info!(token = %name, "token revoked");
    Ok((StatusCode::OK, Json(serde_json::json!({ "name": name, "revoked": true }))).into_response())
}
