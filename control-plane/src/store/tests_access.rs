//! Tokens and the audit log in the store, each on SQLite and on Postgres.

use super::testdb::each_backend;
use super::*;

fn token(name: &str, hash: &str) -> TokenRecord {
    TokenRecord {
        name: name.into(),
        scopes: vec![Scope::Weights, Scope::Read],
        routes: vec!["api".into()],
        created_ms: 1_700_000_000_000,
        secret_sha256: hash.into(),
    }
}

fn entry(who: &str, status: u16, before: Revision, after: Revision) -> AuditEntry {
    AuditEntry {
        id: 0,
        at_ms: 1_700_000_000_000,
        who: who.into(),
        method: "PUT".into(),
        path: "/v1/clusters/api".into(),
        revision_before: before,
        revision_after: after,
        status,
    }
}

#[tokio::test]
async fn tokens_round_trip_and_survive_reopening_without_a_revision() {
    each_backend(|url, _| async move {
        let store = Store::open(&url).await.unwrap();
        store.create_token(&token("ci", "aa")).await.unwrap();
        store.create_token(&token("backup", "bb")).await.unwrap();
        match store.create_token(&token("ci", "cc")).await {
            Err(StoreError::Invalid(e)) => assert_eq!(e.kind, sluice_shared::ErrorKind::Conflict),
            other => panic!("a taken name must conflict: {other:?}"),
        }
        assert!(store.create_token(&token("other", "aa")).await.is_err(), "hashes are unique");
        assert_eq!(store.state().revision, 0, "tokens are not config");
        store.close().await;

        let store = Store::open(&url).await.unwrap();
        let names: Vec<_> = store.tokens().await.unwrap().into_iter().map(|t| t.name).collect();
        assert_eq!(names, vec!["backup", "ci"]);
        let found = store.token_by_hash("aa").await.unwrap().unwrap();
        assert_eq!(found, token("ci", "aa"));
        assert_eq!(store.token_by_hash("zz").await.unwrap(), None);
        assert!(store.delete_token("ci").await.unwrap());
        assert!(!store.delete_token("ci").await.unwrap());
        assert_eq!(store.token_by_hash("aa").await.unwrap(), None, "revoked at once");
        assert_eq!(store.state().revision, 0);
        assert!(!format!("{found:?}").contains("aa\""), "Debug leaves the hash out");
        store.close().await;
    })
    .await;
}

#[tokio::test]
async fn audit_entries_come_back_newest_first() {
    each_backend(|url, _| async move {
        let store = Store::open(&url).await.unwrap();
        for (i, status) in [200u16, 401, 403, 422].into_iter().enumerate() {
            let rev = i as Revision;
            store.record_audit(&entry(&format!("who{i}"), status, rev, rev + 1)).await.unwrap();
        }
        let all = store.audit(100).await.unwrap();
        let got: Vec<_> = all.iter().map(|e| (e.who.as_str(), e.status, e.revision_after)).collect();
        assert_eq!(got, vec![("who3", 422, 4), ("who2", 403, 3), ("who1", 401, 2), ("who0", 200, 1)]);
        assert!(all.windows(2).all(|w| w[0].id > w[1].id));
        assert_eq!(all[3], AuditEntry { id: all[3].id, ..entry("who0", 200, 0, 1) });
        assert_eq!(store.audit(2).await.unwrap().len(), 2);
        store.close().await;
    })
    .await;
}

#[tokio::test]
async fn audit_pruning_keeps_the_newest_within_age_and_count() {
    each_backend(|url, _| async move {
        let store = Store::open(&url).await.unwrap();
        let day_ms = 24 * 3600 * 1000;
        let now_ms = 400 * day_ms;
        // Ten entries a day apart, the oldest 9 days old.
        for i in 0..10i64 {
            let mut e = entry(&format!("who{i}"), 200, 0, 0);
            e.at_ms = now_ms - (9 - i) * day_ms;
            store.record_audit(&e).await.unwrap();
        }
        let keep_all = AuditRetention { max_age: None, max_entries: None };
        assert_eq!(store.prune_audit(keep_all, now_ms).await.unwrap(), 0);
        let week = AuditRetention { max_age: Some(std::time::Duration::from_secs(7 * 24 * 3600)), max_entries: None };
        assert_eq!(store.prune_audit(week, now_ms).await.unwrap(), 2, "the entries 8 and 9 days old");
        let five = AuditRetention { max_age: None, max_entries: Some(5) };
        assert_eq!(store.prune_audit(five, now_ms).await.unwrap(), 3);
        let left: Vec<_> = store.audit(100).await.unwrap().into_iter().map(|e| e.who).collect();
        assert_eq!(left, ["who9", "who8", "who7", "who6", "who5"]);
        store.close().await;
    })
    .await;
}
