//! A REST client for the control plane's API, returning raw status and JSON for assertions.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;

#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub token: Option<String>,
    http: reqwest::Client,
}

impl Api {
    pub fn new(api_addr: std::net::SocketAddr, token: &str) -> Api {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("reqwest client");
        Api { base: format!("http://{api_addr}"), token: Some(token.to_string()), http }
    }

    /// `(status, JSON body or Null)`; a transport error is status 0 with the error as a string.
    pub async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> (StatusCode, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        match req.send().await {
            Ok(resp) => {
                let status = resp.status();
                let text = resp.text().await.unwrap_or_default();
                (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
            }
            Err(e) => (StatusCode::from_u16(599).unwrap_or(StatusCode::BAD_GATEWAY), Value::String(e.to_string())),
        }
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, None).await
    }

    /// PUTs and asserts success; returns the new revision.
    pub async fn put(&self, kind: &str, name: &str, spec: Value) -> u64 {
        let (st, body) = self.call(Method::PUT, &format!("/v1/{kind}/{name}"), Some(&spec)).await;
        assert!(st.is_success(), "PUT /v1/{kind}/{name}: {st} {body}");
        body.get("revision").and_then(Value::as_u64).unwrap_or_else(|| panic!("no revision in {body}"))
    }

    pub async fn healthy(&self) -> bool {
        matches!(self.http.get(format!("{}/healthz", self.base)).send().await, Ok(r) if r.status().is_success())
    }

    pub async fn revision(&self) -> Option<u64> {
        let (st, body) = self.get("/v1/revision").await;
        st.is_success().then(|| body.get("revision").and_then(Value::as_u64)).flatten()
    }

    pub async fn nodes(&self) -> Vec<Value> {
        match self.get("/v1/nodes").await {
            (st, Value::Array(nodes)) if st.is_success() => nodes,
            _ => Vec::new(),
        }
    }

    /// The node `id` as `GET /v1/nodes` shows it.
    pub async fn node(&self, id: &str) -> Option<Value> {
        self.nodes().await.into_iter().find(|n| n.get("id").and_then(Value::as_str) == Some(id))
    }
}
