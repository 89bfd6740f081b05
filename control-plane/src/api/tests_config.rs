//! `POST /v1/config`, `GET /v1/config`, the revision history and rollback, each on SQLite and on
//! Postgres through the router.

use axum::http::{Method, StatusCode};
use serde_json::{json, Value};

use super::tests::Api;
use crate::store::testdb::each_backend;

fn file() -> Value {
    json!({"resources": [
        {"kind": "cluster", "name": "a-blue", "spec": {"endpoints": [{"address": "127.0.0.1:9001"}]}},
        {"kind": "cluster", "name": "a-green", "spec": {"endpoints": [{"address": "127.0.0.1:9002"}]}},
        {"kind": "listener", "name": "a-web", "spec": {"address": "127.0.0.1:8080", "protocol": "http"}},
        {"kind": "route", "name": "a-api", "spec": {"listener": "a-web", "match": {"path": {"prefix": "/api/"}},
            "backends": [{"cluster": "a-blue", "weight": 100}, {"cluster": "a-green", "weight": 0}]}},
    ]})
}

async fn post(api: &Api, path: &str, body: &Value) -> super::tests::Reply {
    api.call(Method::POST, path, &body.to_string()).await
}

fn ops(reply: &Value) -> Vec<String> {
    reply["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            format!("{} {} {}", c["op"].as_str().unwrap(), c["kind"].as_str().unwrap(), c["name"].as_str().unwrap())
        })
        .collect()
}

#[tokio::test]
async fn a_batch_is_one_revision_and_an_unchanged_one_is_none() {
    each_backend(|url, _| async move {
        let api = Api::open(&url).await;
        let mut dry = file();
        dry["dry_run"] = true.into();
        let r = post(&api, "/v1/config", &dry).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        assert_eq!(r.body["committed"], false);
        assert_eq!(ops(&r.body).len(), 4);
        assert_eq!(r.body["changes"][0]["before"], Value::Null);
        assert_eq!(api.store.state().revision, 0, "a dry run writes nothing");

        let r = post(&api, "/v1/config", &file()).await;
        assert_eq!((r.status, r.body["revision"].as_u64(), r.etag()), (StatusCode::OK, Some(1), Some("\"1\"")));
        assert_eq!(
            ops(&r.body),
            ["create cluster a-blue", "create cluster a-green", "create listener a-web", "create route a-api"]
        );
        let r = post(&api, "/v1/config", &file()).await;
        assert_eq!((r.body["committed"].as_bool(), r.body["revision"].as_u64()), (Some(false), Some(1)));
        assert!(ops(&r.body).is_empty());

        // A pipeline shifted weights; a re-apply that keeps weights leaves them, and the rest applies.
        api.call(Method::POST, "/v1/routes/a-api/weights", r#"{"weights":{"a-blue":50,"a-green":50}}"#).await;
        let mut again = file();
        again["keep_weights"] = true.into();
        again["resources"][3]["spec"]["timeout_ms"] = 900.into();
        let r = post(&api, "/v1/config", &again).await;
        assert_eq!(ops(&r.body), ["update route a-api"]);
        let route = &api.store.state().config.routes["a-api"];
        assert_eq!((route.backends[0].weight, route.timeout_ms), (50, Some(900)));
        api.store.close().await;
    })
    .await;
}

#[tokio::test]
async fn every_problem_at_once_and_nothing_written() {
    each_backend(|url, _| async move {
        let api = Api::open(&url).await;
        let mut bad = file();
        bad["resources"][0]["spec"]["endpoints"][0]["address"] = "nowhere".into();
        bad["resources"][3]["spec"]["match"]["path"] = "/".into();
        let r = post(&api, "/v1/config", &bad).await;
        let (code, field) = r.error(StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!((code.as_str(), field.as_deref()), ("invalid", Some("endpoints[0].address")));
        let errors = r.body["error"]["errors"].as_array().unwrap();
        assert_eq!(errors.len(), 2, "{}", r.body);
        assert_eq!(errors[0]["resource"], "cluster a-blue");
        assert_eq!(errors[1]["resource"], "route a-api");
        assert_eq!(errors[1]["field"], "match.path");
        assert_eq!(errors[1]["message"], r#"expected an object such as {"prefix": "/"}, not the string "/""#);
        // Several mistakes in one resource are each reported.
        let mut many = file();
        many["resources"][3]["spec"]["sticky"] = json!({"ttl_s": 0});
        many["resources"][3]["spec"]["retries"] = json!({"attempts": 99});
        many["resources"][3]["spec"]["backends"][0]["cluster"] = "Bad Name".into();
        let r = post(&api, "/v1/config", &many).await;
        r.error(StatusCode::UNPROCESSABLE_ENTITY);
        let fields: Vec<&str> =
            r.body["error"]["errors"].as_array().unwrap().iter().map(|e| e["field"].as_str().unwrap()).collect();
        assert_eq!(fields, ["backends[0].cluster", "sticky.ttl_s", "retries.attempts"], "{}", r.body);
        // A dangling reference in the last resource: nothing of the rest is written either.
        let mut dangling = file();
        dangling["resources"][3]["spec"]["listener"] = "nope".into();
        let r = post(&api, "/v1/config", &dangling).await;
        r.error(StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(r.body["error"]["errors"][0]["field"], "listener");
        assert_eq!(api.store.state().revision, 0);
        assert!(api.store.state().config.clusters.is_empty());
        api.store.close().await;
    })
    .await;
}

#[tokio::test]
async fn prune_cascade_and_shadow_warnings() {
    each_backend(|url, _| async move {
        let api = Api::open(&url).await;
        post(&api, "/v1/config", &file()).await;
        api.put("/v1/clusters/b-db", json!({"endpoints": []})).await;
        // The file drops the green cluster: a prune scoped to a- deletes it and nothing of b-.
        let mut smaller = file();
        smaller["resources"][3]["spec"]["backends"] = json!([{"cluster": "a-blue"}]);
        smaller["resources"].as_array_mut().unwrap().remove(1);
        smaller["prune"] = json!({"prefix": "a-"});
        let r = post(&api, "/v1/config", &smaller).await;
        assert_eq!(ops(&r.body), ["delete cluster a-green", "update route a-api"]);
        assert!(api.store.state().config.clusters.contains_key("b-db"));

        let delete = json!({"delete": [{"kind": "listener", "name": "a-web"}]});
        let r = post(&api, "/v1/config", &delete).await;
        r.error(StatusCode::CONFLICT);
        let mut cascade = delete.clone();
        cascade["cascade"] = true.into();
        cascade["dry_run"] = true.into();
        let r = post(&api, "/v1/config", &cascade).await;
        assert_eq!(ops(&r.body), ["delete listener a-web", "delete route a-api"]);

        let shadow = json!({"listener": "a-web", "priority": 5, "match": {"path": {"prefix": "/"}}, "backends": [{"cluster": "a-blue"}]});
        assert!(api.put("/v1/routes/a-all", shadow).await.body.get("warnings").is_none(), "the broad route is not shadowed");
        let r = post(&api, "/v1/config", &file()).await;
        let w = &r.body["warnings"][0];
        assert_eq!((w["resource"].as_str(), w["field"].as_str()), (Some("route a-api"), Some("match")));
        assert!(w["message"].as_str().unwrap().contains("route a-all (priority 5)"), "{w}");
        api.store.close().await;
    })
    .await;
}

#[tokio::test]
async fn history_export_and_rollback() {
    each_backend(|url, _| async move {
        let api = Api::open(&url).await;
        post(&api, "/v1/config", &file()).await; // 1
        api.call(Method::POST, "/v1/routes/a-api/weights", r#"{"weights":{"a-blue":0,"a-green":100}}"#).await; // 2
        api.call(Method::DELETE, "/v1/routes/a-api", "").await; // 3

        let r = api.get("/v1/revisions").await;
        let list = r.body.as_array().unwrap();
        let revs: Vec<u64> = list.iter().map(|r| r["revision"].as_u64().unwrap()).collect();
        assert_eq!(revs, [3, 2, 1]);
        assert_eq!(list[0]["who"], "admin");
        assert_eq!(list[1]["note"], "weights of route a-api");
        assert_eq!(list[2]["changes"].as_array().unwrap().len(), 4);
        assert_eq!(api.get("/v1/revisions?limit=1&before=3").await.body[0]["revision"], 2);

        let r = api.get("/v1/revisions/2").await;
        assert_eq!(r.body["config"]["routes"]["a-api"]["backends"][1]["weight"], 100);
        api.get("/v1/revisions/9").await.error(StatusCode::NOT_FOUND);

        let r = post(&api, "/v1/rollback", &json!({"revision": 1})).await;
        assert_eq!(r.body["revision"], 4, "{}", r.body);
        assert_eq!(ops(&r.body), ["create route a-api"]);
        assert_eq!(api.get("/v1/revisions/4").await.body["note"], "rollback to revision 1");
        assert_eq!(api.store.state().config, api.store.config_at(1).await.unwrap());

        let export = api.get("/v1/config").await;
        assert_eq!(export.etag(), Some("\"4\""));
        assert_eq!(export.body["routes"]["a-api"]["backends"][0]["weight"], 100);
        let one = api.get("/v1/config?kind=route&name=a-api").await.body;
        assert_eq!(one, json!({"routes": {"a-api": export.body["routes"]["a-api"].clone()}}));
        api.get("/v1/config?kind=route&name=ghost").await.error(StatusCode::NOT_FOUND);
        api.store.close().await;
    })
    .await;
}
