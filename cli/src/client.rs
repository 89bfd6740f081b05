//! A small REST client for the control plane's API (DESIGN.md §3), used by the client commands and by
//! `dev --demo` to register its seed config.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use reqwest::{Method, StatusCode};
use serde_json::Value;

pub const DEFAULT_API_URL: &str = "http://127.0.0.1:7070";
/// Where `sluice dev` writes its generated admin token (relative to the default data dir).
pub const DEV_TOKEN_FILE: &str = "./.sluice/admin-token";
/// Beside it, the URL of the API that `sluice dev` serves: the one URL that token goes to.
pub const DEV_URL_FILE: &str = "./.sluice/api-url";
pub const DEV_URL_FILE_NAME: &str = "api-url";

/// An error answer of the API: `{"error": {"code", "message", "field"}}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
    pub field: Option<String>,
    /// Every problem of a write of many resources, as `resource: field: message` lines.
    pub errors: Vec<String>,
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.errors.is_empty() {
            write!(f, "{} ({}): {} problem(s):", self.code, self.status.as_u16(), self.errors.len())?;
            for e in &self.errors {
                write!(f, "\n  {e}")?;
            }
            return Ok(());
        }
        write!(f, "{} ({}): {}", self.code, self.status.as_u16(), self.message)?;
        if let Some(field) = &self.field {
            write!(f, " [field: {field}]")?;
        }
        Ok(())
    }
}

impl std::error::Error for ApiError {}

impl ApiError {
    fn from_response(status: StatusCode, body: &str) -> ApiError {
        let parsed: Option<Value> = serde_json::from_str(body).ok();
        let err = parsed.as_ref().and_then(|v| v.get("error"));
        let text = |k: &str| err.and_then(|e| e.get(k)).and_then(Value::as_str).map(str::to_string);
        let problem = |p: &Value| {
            let s = |k: &str| p.get(k).and_then(Value::as_str);
            [s("resource"), s("field"), s("message")].into_iter().flatten().collect::<Vec<_>>().join(": ")
        };
        match err {
            Some(e) => ApiError {
                status,
                code: text("code").unwrap_or_else(|| "error".into()),
                message: text("message").unwrap_or_default(),
                field: text("field"),
                errors: e.get("errors").and_then(Value::as_array).into_iter().flatten().map(problem).collect(),
            },
            None => ApiError {
                status,
                code: status.canonical_reason().unwrap_or("error").to_lowercase().replace(' ', "_"),
                message: body.trim().chars().take(200).collect(),
                field: None,
                errors: Vec::new(),
            },
        }
    }
}

/// Where the client's token came from, said when the API refuses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    Env,
    DevFile,
    None,
}

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
    source: TokenSource,
}

impl Client {
    pub fn new(base: &str, token: Option<String>) -> anyhow::Result<Client> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .context("building the HTTP client")?;
        let source = if token.is_some() { TokenSource::Env } else { TokenSource::None };
        Ok(Client { http, base: base.trim_end_matches('/').to_string(), token, source })
    }

    /// SLUICE_API_URL and SLUICE_TOKEN. Without SLUICE_TOKEN, the token `sluice dev` wrote in
    /// ./.sluice/admin-token, but only for the API URL that `sluice dev` recorded beside it
    /// (./.sluice/api-url; the default URL when there is none): a local admin token is never sent
    /// to another control plane.
    pub fn from_env() -> anyhow::Result<Client> {
        let base = std::env::var("SLUICE_API_URL").ok().filter(|s| !s.is_empty());
        let base = base.as_deref().unwrap_or(DEFAULT_API_URL);
        let (token, source) = match std::env::var("SLUICE_TOKEN").ok().filter(|s| !s.is_empty()) {
            Some(t) => (Some(t), TokenSource::Env),
            None if same_url(base, &dev_api_url()) => match read_token_file(Path::new(DEV_TOKEN_FILE)) {
                Some(t) => (Some(t), TokenSource::DevFile),
                None => (None, TokenSource::None),
            },
            None => (None, TokenSource::None),
        };
        Ok(Client { source, ..Client::new(base, token)? })
    }

    /// Sends one request; a non-2xx answer becomes an [`ApiError`] inside the `anyhow::Error`.
    pub async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        self.call_if_match(method, path, body, None).await
    }

    /// [`Client::call`] conditioned on the revision (`If-Match`): 412 when it moved.
    pub async fn call_if_match(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        if_match: Option<u64>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method.clone(), &url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(rev) = if_match {
            req = req.header(reqwest::header::IF_MATCH, format!("\"{rev}\""));
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.with_context(|| format!("cannot reach the Sluice API at {}", self.base))?;
        let status = resp.status();
        let text = resp.text().await.with_context(|| format!("reading the answer to {method} {path}"))?;
        if !status.is_success() {
            let mut err = ApiError::from_response(status, &text);
            if status == StatusCode::UNAUTHORIZED {
                err.message.push_str(match self.source {
                    TokenSource::Env => " (the token came from SLUICE_TOKEN)",
                    TokenSource::DevFile => {
                        " (the token came from ./.sluice/admin-token, written by `sluice dev`; set SLUICE_TOKEN)"
                    }
                    TokenSource::None => {
                        " (no token was sent: set SLUICE_TOKEN; ./.sluice/admin-token goes only to the API `sluice dev` serves)"
                    }
                });
            }
            return Err(err.into());
        }
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).with_context(|| format!("{method} {path} answered with invalid JSON"))
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.call(Method::GET, path, None).await
    }
}

/// The API URL the local `sluice dev` serves, as it recorded it.
fn dev_api_url() -> String {
    read_token_file(Path::new(DEV_URL_FILE)).unwrap_or_else(|| DEFAULT_API_URL.to_string())
}

fn same_url(a: &str, b: &str) -> bool {
    a.trim_end_matches('/').eq_ignore_ascii_case(b.trim_end_matches('/'))
}

pub fn read_token_file(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

/// The `revision` of a write's answer.
pub fn revision_of(v: &Value) -> Option<u64> {
    v.get("revision").and_then(Value::as_u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_error_from_contract_body() {
        let e = ApiError::from_response(
            StatusCode::UNPROCESSABLE_ENTITY,
            r#"{"error":{"code":"invalid","message":"bad address","field":"endpoints[0].address"}}"#,
        );
        assert_eq!(e.code, "invalid");
        assert_eq!(e.field.as_deref(), Some("endpoints[0].address"));
        assert_eq!(e.to_string(), "invalid (422): bad address [field: endpoints[0].address]");
    }

    #[test]
    fn api_error_from_other_body() {
        let e = ApiError::from_response(StatusCode::BAD_GATEWAY, "upstream down\n");
        assert_eq!(e.code, "bad_gateway");
        assert_eq!(e.message, "upstream down");
    }
}
