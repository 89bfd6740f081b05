//! Tokens, scopes, revocation and the audit log through the API, on SQLite and Postgres.

use axum::http::{Method, StatusCode};
use serde_json::{json, Value};

use super::tests::{Api, Reply, TOKEN};
use crate::store::testdb::each_backend;

impl Api {
    /// A call with `token` as the bearer (none when `None`).
    async fn call_as(&self, token: Option<&str>, method: Method, path: &str, body: &str) -> Reply {
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![("content-type", "application/json")];
        if let Some(auth) = &auth {
            headers.push(("authorization", auth.as_str()));
        }
        self.call_with(method, path, body, &headers).await
    }

    /// Creates a token as admin and returns its secret.
    async fn token(&self, name: &str, scopes: &[&str], routes: &[&str]) -> String {
        let body = json!({"name": name, "scopes": scopes, "routes": routes}).to_string();
        let r = self.call(Method::POST, "/v1/tokens", &body).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        r.body["token"].as_str().unwrap().to_string()
    }

    async fn audit(&self, query: &str) -> Vec<Value> {
        let r = self.get(&format!("/v1/audit{query}")).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        r.body.as_array().unwrap().clone()
    }
}

const CLUSTER: &str = r#"{"endpoints":[{"address":"127.0.0.1:9009"}]}"#;
const WEIGHTS: &str = r#"{"weights":{"api":50}}"#;

#[tokio::test]
async fn every_scope_boundary() {
    each_backend(|url, _| async move {
        let api = Api::open(&url).await;
        api.seed().await;
        // A second route, so `weights` limited to `api` has something to be refused on.
        let other = json!({"listener": "web", "match": {"path": {"exact": "/x"}}, "backends": [{"cluster": "api"}]});
        assert_eq!(api.put("/v1/routes/other", other).await.status, StatusCode::OK);
        let admin = api.token("root", &["admin"], &[]).await;
        let read = api.token("reader", &["read"], &[]).await;
        let write = api.token("writer", &["write"], &[]).await;
        let ci = api.token("ci-deploy", &["weights"], &["api"]).await;
        let any_weights = api.token("shifter", &["weights"], &[]).await;

        let new_token = r#"{"name":"x","scopes":["read"]}"#;
        let requests: [(Method, &str, &str); 9] = [
            (Method::GET, "/v1/clusters", ""),
            (Method::GET, "/v1/nodes", ""),
            (Method::PUT, "/v1/clusters/fresh", CLUSTER),
            (Method::POST, "/v1/routes/api/weights", WEIGHTS),
            (Method::POST, "/v1/routes/other/weights", r#"{"weights":{"api":5}}"#),
            (Method::GET, "/v1/tokens", ""),
            (Method::POST, "/v1/tokens", new_token),
            (Method::GET, "/v1/audit", ""),
            (Method::DELETE, "/v1/clusters/fresh", ""),
        ];
        use StatusCode as S;
        let (ok, created, no, anon) = (S::OK, S::CREATED, S::FORBIDDEN, S::UNAUTHORIZED);
        let table: [(&str, Option<&str>, [StatusCode; 9]); 7] = [
            ("admin token", Some(TOKEN), [ok, ok, ok, ok, ok, ok, created, ok, ok]),
            ("admin scope", Some(admin.as_str()), [ok, ok, ok, ok, ok, ok, S::CONFLICT, ok, ok]),
            ("read", Some(read.as_str()), [ok, ok, no, no, no, no, no, no, no]),
            ("write", Some(write.as_str()), [no, no, ok, ok, ok, no, no, no, ok]),
            ("weights on api", Some(ci.as_str()), [no, no, no, ok, no, no, no, no, no]),
            ("weights anywhere", Some(any_weights.as_str()), [no, no, no, ok, ok, no, no, no, no]),
            ("no token", None, [anon, anon, anon, anon, anon, anon, anon, anon, anon]),
        ];
        for (who, token, expected) in table {
            for ((method, path, body), want) in requests.iter().zip(expected) {
                let before = api.store.state();
                let r = api.call_as(token, method.clone(), path, body).await;
                assert_eq!(r.status, want, "{who}: {method} {path}: {}", r.body);
                if want == no || want == anon {
                    api.assert_unchanged(&before, &format!("{who}: {method} {path}")).await;
                    let code = r.body["error"]["code"].as_str().unwrap();
                    assert_eq!(code, if want == no { "forbidden" } else { "unauthorized" });
                }
            }
        }
        let r = api.call_as(Some("sluice_0000"), Method::GET, "/v1/clusters", "").await;
        r.error(StatusCode::UNAUTHORIZED);
        let r = api.call_as(Some("not-even-close"), Method::GET, "/v1/clusters", "").await;
        r.error(StatusCode::UNAUTHORIZED);
        api.store.close().await;
    })
    .await;
}

#[tokio::test]
async fn secrets_are_shown_once_and_never_listed() {
    each_backend(|url, _| async move {
        let api = Api::open(&url).await;
        let revision = api.store.state().revision;
        let body = json!({"name": "ci-deploy", "scopes": ["weights", "read", "weights"], "routes": ["api"]});
        let r = api.call(Method::POST, "/v1/tokens", &body.to_string()).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        assert_eq!(r.headers.get("cache-control").unwrap(), "no-store");
        let secret = r.body["token"].as_str().unwrap().to_string();
        assert!(secret.starts_with("sluice_") && secret.len() >= 7 + 32, "at least 128 bits: {secret}");
        assert_eq!(r.body["name"], "ci-deploy");
        assert_eq!(r.body["scopes"], json!(["read", "weights"]), "sorted, deduplicated");
        assert_eq!(api.store.state().revision, revision, "tokens are not config: no revision");

        let hash = super::auth::secret_sha256(&secret);
        let r = api.get("/v1/tokens").await;
        assert_eq!(r.status, StatusCode::OK);
        let text = r.body.to_string();
        assert!(!text.contains(&secret) && !text.contains(&hash) && !text.contains("sluice_"), "{text}");
        let listed = r.body.as_array().unwrap();
        assert_eq!(listed.len(), 1);
        let mut keys: Vec<_> = listed[0].as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(keys, vec!["created", "name", "routes", "scopes"]);
        assert!(listed[0]["created"].as_str().unwrap().ends_with('Z'));

        let again = api.call(Method::POST, "/v1/tokens", &body.to_string()).await;
        assert_eq!(again.error(StatusCode::CONFLICT).0, "conflict");
        let refused = [
            (json!({"name": "admin", "scopes": ["read"]}), "name"),
            (json!({"name": "Bad Name", "scopes": ["read"]}), "name"),
            (json!({"name": "x", "scopes": []}), "scopes"),
            (json!({"name": "x", "scopes": ["root"]}), "scopes[0]"),
            (json!({"name": "x", "scopes": ["read"], "routes": ["api"]}), "routes"),
            (json!({"name": "x", "scopes": ["weights"], "routes": ["API!"]}), "routes[0]"),
            (json!({"name": "x", "scopes": ["read"], "secret": "mine"}), "secret"),
        ];
        for (body, field) in refused {
            let r = api.call(Method::POST, "/v1/tokens", &body.to_string()).await;
            assert_eq!(r.error(StatusCode::UNPROCESSABLE_ENTITY).1.as_deref(), Some(field), "{body}");
        }
        assert_eq!(api.get("/v1/tokens").await.body.as_array().unwrap().len(), 1, "refused tokens are not stored");
        api.store.close().await;
    })
    .await;
}

#[tokio::test]
async fn a_revoked_token_stops_working_at_once_on_every_replica() {
    each_backend(|url, _| async move {
        let api = Api::open(&url).await;
        let replica = Api::open(&url).await;
        let secret = api.token("ci", &["read"], &[]).await;
        assert_eq!(replica.call_as(Some(&secret), Method::GET, "/v1/revision", "").await.status, StatusCode::OK);
        assert_eq!(api.call(Method::DELETE, "/v1/tokens/ci", "").await.status, StatusCode::OK);
        for a in [&api, &replica] {
            let r = a.call_as(Some(&secret), Method::GET, "/v1/revision", "").await;
            assert_eq!(r.error(StatusCode::UNAUTHORIZED).0, "unauthorized");
        }
        api.call(Method::DELETE, "/v1/tokens/ci", "").await.error(StatusCode::NOT_FOUND);
        // The admin token is not a stored token and keeps working.
        assert_eq!(api.get("/v1/revision").await.status, StatusCode::OK);
        replica.store.close().await;
        api.store.close().await;
    })
    .await;
}

#[tokio::test]
async fn the_audit_log_records_writes_and_denials_redacted() {
    each_backend(|url, _| async move {
        let api = Api::open(&url).await;
        let reader = api.token("reader", &["read"], &[]).await;
        assert_eq!(api.put("/v1/clusters/api", serde_json::from_str(CLUSTER).unwrap()).await.status, StatusCode::OK);
        api.call_as(None, Method::PUT, "/v1/clusters/api", CLUSTER).await.error(StatusCode::UNAUTHORIZED);
        api.call_as(Some("wrong"), Method::DELETE, "/v1/clusters/api", "").await.error(StatusCode::UNAUTHORIZED);
        api.call_as(Some(&reader), Method::PUT, "/v1/clusters/api", CLUSTER).await.error(StatusCode::FORBIDDEN);
        api.call(Method::PUT, "/v1/clusters/api", "{").await.error(StatusCode::BAD_REQUEST);
        api.call(Method::DELETE, "/v1/clusters/api", "").await;
        api.call_as(Some(&reader), Method::GET, "/v1/clusters", "").await; // reads are not audited
        api.call(Method::DELETE, &format!("/v1/tokens/{reader}"), "").await.error(StatusCode::NOT_FOUND);
        api.call(Method::PATCH, "/v1/clusters/api", "{}").await.error(StatusCode::METHOD_NOT_ALLOWED);
        api.call_as(None, Method::POST, "/v1/nope", "").await.error(StatusCode::NOT_FOUND);

        let entries = api.audit("").await;
        let got: Vec<_> = entries
            .iter()
            .map(|e| {
                let s = |k: &str| e[k].as_str().unwrap().to_string();
                (
                    s("who"),
                    s("method"),
                    s("path"),
                    e["status"].as_u64().unwrap(),
                    e["revision_before"].as_u64().unwrap(),
                    e["revision_after"].as_u64().unwrap(),
                )
            })
            .collect();
        let row = |who: &str, m: &str, p: &str, st: u64, b: u64, a: u64| {
            (who.to_string(), m.to_string(), p.to_string(), st, b, a)
        };
        assert_eq!(
            got,
            vec![
                row("anonymous", "POST", "/v1/nope", 404, 2, 2),
                row("admin", "PATCH", "/v1/clusters/api", 405, 2, 2),
                row("admin", "DELETE", "/v1/tokens/sluice_***", 404, 2, 2),
                row("admin", "DELETE", "/v1/clusters/api", 200, 1, 2),
                row("admin", "PUT", "/v1/clusters/api", 400, 1, 1),
                row("reader", "PUT", "/v1/clusters/api", 403, 1, 1),
                row("invalid-token", "DELETE", "/v1/clusters/api", 401, 1, 1),
                row("anonymous", "PUT", "/v1/clusters/api", 401, 1, 1),
                row("admin", "PUT", "/v1/clusters/api", 200, 0, 1),
                row("admin", "POST", "/v1/tokens", 201, 0, 0),
            ],
            "newest first"
        );
        assert!(entries.iter().all(|e| e["time"].as_str().unwrap().ends_with('Z')));
        let text = serde_json::to_string(&entries).unwrap();
        assert!(!text.contains(&reader), "the audit log holds no secret: {text}");

        assert_eq!(api.audit("?limit=2").await.len(), 2);
        api.get("/v1/audit?limit=0").await.error(StatusCode::BAD_REQUEST);
        api.get("/v1/audit?limit=x").await.error(StatusCode::BAD_REQUEST);
        api.call_as(Some(&reader), Method::GET, "/v1/audit", "").await.error(StatusCode::FORBIDDEN);
        api.store.close().await;
    })
    .await;
}

#[tokio::test]
async fn readyz_answers_without_a_token_while_the_database_does() {
    each_backend(|url, _| async move {
        let api = Api::open(&url).await;
        let r = api.call_with(Method::GET, "/readyz", "", &[]).await;
        assert_eq!((r.status, r.body["status"].as_str()), (StatusCode::OK, Some("ready")), "{}", r.body);
        assert!(api.audit("").await.is_empty(), "probes are not audited");
        // A closed pool is what a lost database looks like to the API.
        api.store.close().await;
        let r = api.call_with(Method::GET, "/readyz", "", &[]).await;
        assert_eq!((r.status, r.body["status"].as_str()), (StatusCode::SERVICE_UNAVAILABLE, Some("unavailable")));
        assert_eq!(api.call_with(Method::GET, "/healthz", "", &[]).await.status, StatusCode::OK, "still alive");
    })
    .await;
}
