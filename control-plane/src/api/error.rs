//! The one error type of the REST API and its JSON shape:
//! `{"error": {"code": "…", "message": "…", "field": "endpoints[0].address"}}`; a write of many
//! resources adds `"errors": [{"resource": "route api", "field": "match.path", "message": "…"}]`,
//! every problem at once (`field` and `message` are then the first one's).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use sluice_shared::validate::ParseError;
use sluice_shared::{ErrorKind, ValidationError};

use crate::store::{all_conflicts, Problem, StoreError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    /// Stable, machine-readable (`invalid`, `not_found`, …).
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
    /// Every problem of a write of many resources.
    pub errors: Vec<Problem>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), field: None, errors: Vec::new() }
    }

    pub fn malformed(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "malformed", message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn method_not_allowed() -> Self {
        Self::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "method not allowed on this path")
    }

    pub fn precondition_failed(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PRECONDITION_FAILED, "precondition_failed", message)
    }

    pub fn too_large(limit: usize) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", format!("request body is over {limit} bytes"))
    }

    pub fn unavailable() -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "the store is unavailable; try again later")
    }

    /// 422, or 409 for a conflict with what is stored (e.g. two listeners on one address).
    pub fn validation(e: ValidationError) -> Self {
        let (status, code) = match e.kind {
            ErrorKind::Invalid => (StatusCode::UNPROCESSABLE_ENTITY, "invalid"),
            ErrorKind::Conflict => (StatusCode::CONFLICT, "conflict"),
        };
        Self { status, code, message: e.message, field: e.field, errors: Vec::new() }
    }

    /// 422 (409 when each is a conflict) listing every problem; the message and field are the first's.
    pub fn problems(problems: Vec<Problem>) -> Self {
        let (status, code) = if all_conflicts(&problems) {
            (StatusCode::CONFLICT, "conflict")
        } else {
            (StatusCode::UNPROCESSABLE_ENTITY, "invalid")
        };
        let message = match problems.as_slice() {
            [one] => one.to_string(),
            [first, ..] => format!("{} problems; the first: {first}", problems.len()),
            [] => "invalid".to_string(),
        };
        let field = problems.first().and_then(|p| p.error.field.clone());
        Self { status, code, message, field, errors: problems }
    }
}

impl From<ParseError> for ApiError {
    fn from(e: ParseError) -> Self {
        match e {
            ParseError::Malformed(m) => ApiError::malformed(format!("malformed JSON: {m}")),
            ParseError::Invalid(v) => ApiError::validation(v),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Invalid(v) => ApiError::validation(v),
            StoreError::Problems(p) => ApiError::problems(p),
            e @ (StoreError::NotFound { .. } | StoreError::NoHistory(_)) => ApiError::not_found(e.to_string()),
            e @ StoreError::InUse { .. } => ApiError::new(StatusCode::CONFLICT, "in_use", e.to_string()),
            e @ StoreError::RevisionMismatch { .. } => ApiError::precondition_failed(e.to_string()),
            StoreError::Unavailable(why) => {
                // The details are for operators, not clients.
                tracing::warn!(error = %why, "store unavailable");
                ApiError::unavailable()
            }
        }
    }
}

pub(super) fn problem_json(p: &Problem) -> serde_json::Value {
    serde_json::json!({ "resource": p.resource, "field": p.error.field, "message": p.error.message })
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({
            "error": { "code": self.code, "message": self.message, "field": self.field }
        });
        if !self.errors.is_empty() {
            body["error"]["errors"] = self.errors.iter().map(problem_json).collect();
        }
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
