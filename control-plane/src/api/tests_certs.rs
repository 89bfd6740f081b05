//! `/v1/certificates` through the API, on SQLite and Postgres, with certificates made by rcgen.

use std::time::Duration;

use axum::http::{Method, StatusCode};
use rcgen::{date_time_ymd, CertificateParams, DnType, KeyPair};
use serde_json::{json, Value};
use sluice_shared::clock::unix_now_ms;

use super::tests::Api;
use crate::store::testdb::each_backend;

const DAY: i64 = 86_400;

fn now() -> i64 {
    unix_now_ms() / 1000
}

/// `{"cert_pem", "key_pem"}` of a self-signed certificate for `names`, valid `from`..`until`.
fn cert(names: &[&str], from: i64, until: i64) -> Value {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(DnType::CommonName, "sluice test");
    let epoch = date_time_ymd(1970, 1, 1);
    params.not_before = epoch + Duration::from_secs(from.unsigned_abs());
    params.not_after = epoch + Duration::from_secs(until.unsigned_abs());
    let cert = params.self_signed(&key).unwrap();
    json!({ "cert_pem": cert.pem(), "key_pem": key.serialize_pem() })
}

fn valid(names: &[&str]) -> Value {
    cert(names, now() - DAY, now() + 90 * DAY)
}

fn assert_no_key(body: &Value) {
    let text = body.to_string();
    assert!(!text.contains("key_pem") && !text.contains("PRIVATE KEY"), "a read showed the key: {text}");
}

#[tokio::test]
async fn certificates_are_stored_and_read_without_their_keys() {
    each_backend(|url, _| async move {
        let api = Api::open(&url).await;
        let r = api.put("/v1/certificates/shop", valid(&["shop.example", "*.shop.example"])).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        assert_eq!((r.body["revision"].as_u64(), r.etag()), (Some(1), Some("\"1\"")));
        assert_eq!(r.body["server_names"], json!(["shop.example", "*.shop.example"]));
        assert_no_key(&r.body);

        let r = api.get("/v1/certificates/shop").await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.body["name"], "shop");
        assert!(r.body["cert_pem"].as_str().unwrap().starts_with("-----BEGIN CERTIFICATE-----"));
        let not_after = r.body["not_after"].as_str().unwrap();
        assert!(not_after.ends_with('Z') && not_after.len() == 20, "RFC 3339: {not_after}");
        assert!(r.body["not_before"].as_str().unwrap() < not_after);
        assert_no_key(&r.body);

        // No SAN: the common name is the name.
        assert_eq!(api.put("/v1/certificates/plain", valid(&[])).await.body["server_names"], json!(["sluice test"]));
        let r = api.get("/v1/certificates").await;
        let names: Vec<_> = r.body.as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
        assert_eq!(names, vec!["plain", "shop"]);
        assert_no_key(&r.body);

        // The key is stored (nodes need it) even though reads never show it.
        assert!(!api.store.state().config.certificates["shop"].key_pem.is_empty());

        // Rotation: a PUT replaces the material in one revision.
        let r = api.put("/v1/certificates/shop", valid(&["shop.example"])).await;
        assert_eq!((r.status, r.body["revision"].as_u64()), (StatusCode::OK, Some(3)));
        assert_eq!(r.body["server_names"], json!(["shop.example"]));
        api.store.close().await;
    })
    .await;
}

#[tokio::test]
async fn referenced_certificates_cannot_be_deleted() {
    each_backend(|url, _| async move {
        let api = Api::open(&url).await;
        let https = |certs: Value| json!({"address": "127.0.0.1:8443", "protocol": "https", "certificates": certs});
        let r = api.put("/v1/listeners/tls", https(json!(["shop"]))).await;
        assert_eq!(r.error(StatusCode::UNPROCESSABLE_ENTITY).1.as_deref(), Some("certificates[0]"));
        assert_eq!(api.put("/v1/certificates/shop", valid(&["shop.example"])).await.status, StatusCode::OK);
        assert_eq!(api.put("/v1/listeners/tls", https(json!(["shop"]))).await.status, StatusCode::OK);

        let before = api.store.state();
        let r = api.call(Method::DELETE, "/v1/certificates/shop", "").await;
        let (code, _) = r.error(StatusCode::CONFLICT);
        assert_eq!(code, "in_use");
        assert!(r.body["error"]["message"].as_str().unwrap().contains("listener tls"), "{}", r.body);
        api.assert_unchanged(&before, "delete of a referenced certificate").await;

        assert_eq!(api.call(Method::DELETE, "/v1/listeners/tls", "").await.status, StatusCode::OK);
        assert_eq!(api.call(Method::DELETE, "/v1/certificates/shop", "").await.status, StatusCode::OK);
        api.get("/v1/certificates/shop").await.error(StatusCode::NOT_FOUND);
        api.store.close().await;
    })
    .await;
}

#[tokio::test]
async fn bad_certificates_are_refused_naming_the_field_and_store_nothing() {
    each_backend(|url, _| async move {
        let api = Api::open(&url).await;
        assert_eq!(api.put("/v1/certificates/shop", valid(&["shop.example"])).await.status, StatusCode::OK);
        let before = api.store.state();

        let good = valid(&["a.example"]);
        let other = valid(&["b.example"]);
        // A line of base64 from inside the key, which no error may echo.
        let key_line = good["key_pem"].as_str().unwrap().lines().nth(1).unwrap().to_string();
        let key_line = key_line.as_str();
        let with = |field: &str, value: Value| {
            let mut v = good.clone();
            v[field] = value;
            v
        };
        let cases: Vec<(&str, Value, &str, &str)> = vec![
            ("expired", cert(&["a.example"], now() - 30 * DAY, now() - DAY), "cert_pem", "expired"),
            ("not yet valid", cert(&["a.example"], now() + DAY, now() + 30 * DAY), "cert_pem", "not valid before"),
            ("mismatched key", with("key_pem", other["key_pem"].clone()), "key_pem", "does not match"),
            ("garbage cert", with("cert_pem", json!("not a certificate")), "cert_pem", "no PEM certificate"),
            (
                "garbage DER",
                with("cert_pem", json!("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")),
                "cert_pem",
                "not a valid X.509",
            ),
            ("garbage key", with("key_pem", json!("nope")), "key_pem", "no PEM private key"),
            (
                "key in cert_pem",
                with(
                    "cert_pem",
                    json!(format!("{}{}", good["cert_pem"].as_str().unwrap(), good["key_pem"].as_str().unwrap())),
                ),
                "cert_pem",
                "private key",
            ),
            ("missing key", json!({"cert_pem": good["cert_pem"]}), "", "key_pem"),
            ("unknown field", with("chain", json!("x")), "chain", "unknown field"),
        ];
        for (what, body, field, message) in cases {
            let r = api.put("/v1/certificates/shop", body).await;
            let (code, got_field) = r.error(StatusCode::UNPROCESSABLE_ENTITY);
            assert_eq!(code, "invalid", "{what}");
            if !field.is_empty() {
                assert_eq!(got_field.as_deref(), Some(field), "{what}: {}", r.body);
            }
            let text = r.body["error"]["message"].as_str().unwrap();
            assert!(text.contains(message), "{what}: {text}");
            let text = r.body.to_string();
            assert!(!text.contains("-----BEGIN PRIVATE KEY") && !text.contains(key_line), "{what}: quoted the key");
            api.assert_unchanged(&before, what).await;
        }
        api.store.close().await;
    })
    .await;
}

#[test]
fn debug_output_never_shows_the_key() {
    let c: sluice_shared::Certificate = serde_json::from_value(valid(&["a.example"])).unwrap();
    let change = crate::store::Change::Put(crate::store::Resource::Certificate("a".into(), c));
    let text = format!("{change:?}");
    assert!(!text.contains("PRIVATE KEY") && text.contains("redacted"), "{text}");
}
