//! Store tests, each on SQLite and on Postgres (see `testdb`).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_shared::validate::parse_json;
use sluice_shared::{ErrorKind, Kind};

use super::testdb::each_backend;
use super::*;

fn cluster(port: u16) -> Resource {
    let json = format!(r#"{{"endpoints":[{{"address":"127.0.0.1:{port}"}}]}}"#);
    Resource::Cluster(format!("c{port}"), parse_json(json.as_bytes()).unwrap())
}

fn put(json: &str, kind: Kind, name: &str) -> Change {
    let r = match kind {
        Kind::Cluster => Resource::Cluster(name.into(), parse_json(json.as_bytes()).unwrap()),
        Kind::Listener => Resource::Listener(name.into(), parse_json(json.as_bytes()).unwrap()),
        Kind::Route => Resource::Route(name.into(), parse_json(json.as_bytes()).unwrap()),
        Kind::Certificate => Resource::Certificate(name.into(), parse_json(json.as_bytes()).unwrap()),
    };
    Change::Put(r)
}

/// A small valid config: cluster `api`, listener `web`, route `api` (revision 3).
async fn seed(store: &Store) {
    store.apply(put(r#"{"endpoints":[{"address":"127.0.0.1:9001"}]}"#, Kind::Cluster, "api"), None).await.unwrap();
    store.apply(put(r#"{"address":"127.0.0.1:8080","protocol":"http"}"#, Kind::Listener, "web"), None).await.unwrap();
    let route = r#"{"listener":"web","match":{"path":{"prefix":"/api/"}},"backends":[{"cluster":"api"}]}"#;
    store.apply(put(route, Kind::Route, "api"), None).await.unwrap();
}

/// What the database itself holds, read through a second, fresh store.
async fn stored(url: &str) -> Arc<State> {
    let other = Store::open(url).await.unwrap();
    let state = other.state();
    other.close().await;
    state
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn state_and_revision_survive_reopening() {
    each_backend(|url, backend| async move {
        let store = Store::open(&url).await.unwrap();
        assert_eq!(store.backend(), backend);
        assert_eq!(store.state().revision, 0);
        seed(&store).await;
        let before = store.state();
        assert_eq!(before.revision, 3);
        before.config.validate().unwrap();
        store.close().await;
        drop(store);

        let reopened = Store::open(&url).await.unwrap();
        assert_eq!(*reopened.state(), *before);
        let next = reopened.apply(Change::Put(cluster(9100)), None).await.unwrap();
        assert_eq!(next.revision, 4);
        reopened.close().await;
    })
    .await;
}

#[tokio::test]
async fn rejected_writes_store_nothing() {
    each_backend(|url, _| async move {
        let store = Store::open(&url).await.unwrap();
        seed(&store).await;
        let before = store.state();

        let bad = put(r#"{"endpoints":[{"address":"nope"}]}"#, Kind::Cluster, "api");
        assert!(matches!(store.apply(bad, None).await, Err(StoreError::Invalid(e)) if e.kind == ErrorKind::Invalid));
        let dangling = put(r#"{"listener":"web","backends":[{"cluster":"ghost"}]}"#, Kind::Route, "r2");
        assert!(matches!(store.apply(dangling, None).await, Err(StoreError::Invalid(_))));
        let clash = put(r#"{"address":"127.0.0.1:8080","protocol":"http"}"#, Kind::Listener, "web2");
        assert!(matches!(store.apply(clash, None).await, Err(StoreError::Invalid(e)) if e.kind == ErrorKind::Conflict));
        match store.apply(Change::Delete(Kind::Cluster, "api".into()), None).await {
            Err(StoreError::InUse { by, .. }) => assert_eq!(by, vec!["route api"]),
            other => panic!("{other:?}"),
        }
        let missing = store.apply(Change::Delete(Kind::Route, "ghost".into()), None).await;
        assert!(matches!(missing, Err(StoreError::NotFound { kind: Kind::Route, .. })));
        let stale = store.apply(Change::Put(cluster(9100)), Some(2)).await;
        assert_eq!(stale.unwrap_err(), StoreError::RevisionMismatch { expected: 2, current: 3 });

        assert_eq!(store.state(), before);
        assert_eq!(*stored(&url).await, *before, "the database holds exactly what it held before");
        // A matching If-Match goes through.
        assert_eq!(store.apply(Change::Put(cluster(9100)), Some(3)).await.unwrap().revision, 4);
        store.close().await;
    })
    .await;
}

#[tokio::test]
async fn concurrent_writers_get_distinct_consecutive_revisions() {
    each_backend(|url, _| async move {
        let store = Store::open(&url).await.unwrap();
        let mut changes = store.subscribe();
        let tasks: Vec<_> = (0..50u16)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move { store.apply(Change::Put(cluster(10_000 + i)), None).await.unwrap().revision })
            })
            .collect();
        let mut revisions = BTreeSet::new();
        for t in tasks {
            assert!(revisions.insert(t.await.unwrap()), "a revision was handed out twice");
        }
        assert_eq!(revisions, (1..=50).collect::<BTreeSet<_>>());
        let last = store.state();
        assert_eq!((last.revision, last.config.clusters.len()), (50, 50));
        changes.mark_changed();
        assert_eq!(changes.borrow_and_update().revision, 50);
        assert_eq!(*stored(&url).await, *last);
        store.close().await;
    })
    .await;
}

#[tokio::test]
async fn replicas_serialize_and_see_each_other() {
    each_backend(|url, _| async move {
        let opts = StoreOptions { poll_interval: Duration::from_millis(50), ..StoreOptions::default() };
        let a = Store::open_with(&url, opts.clone()).await.unwrap();
        let b = Store::open_with(&url, opts).await.unwrap();
        seed(&a).await;
        // b's poller picks up a's writes.
        eventually("replica b to see revision 3", || b.state().revision == 3).await;
        assert_eq!(b.state().config, a.state().config);

        // Both write at once: every write gets its own revision, none is lost.
        let writes: Vec<_> = (0..20u16)
            .map(|i| {
                let s = if i % 2 == 0 { a.clone() } else { b.clone() };
                tokio::spawn(async move { s.apply(Change::Put(cluster(11_000 + i)), None).await.unwrap().revision })
            })
            .collect();
        let mut revisions = BTreeSet::new();
        for w in writes {
            revisions.insert(w.await.unwrap());
        }
        assert_eq!(revisions, (4..=23).collect::<BTreeSet<_>>());
        eventually("both replicas at revision 23", || a.state().revision == 23 && b.state().revision == 23).await;
        assert_eq!(a.state(), b.state());
        assert_eq!(a.state().config.clusters.len(), 21);

        // If-Match is checked against the database, not a replica's stale cache.
        let stale = a.state().revision;
        b.apply(Change::Put(cluster(12_000)), None).await.unwrap();
        let refused = a.apply(Change::Put(cluster(12_001)), Some(stale)).await;
        assert_eq!(refused.unwrap_err(), StoreError::RevisionMismatch { expected: stale, current: stale + 1 });
        a.close().await;
        b.close().await;
    })
    .await;
}

#[tokio::test]
async fn weights_and_deletes_commit_one_revision_each() {
    each_backend(|url, _| async move {
        let store = Store::open(&url).await.unwrap();
        seed(&store).await;
        store.apply(Change::Put(cluster(9200)), None).await.unwrap();
        let two = r#"{"listener":"web","backends":[{"cluster":"api","weight":90},{"cluster":"c9200","weight":10}]}"#;
        store.apply(put(two, Kind::Route, "api"), None).await.unwrap();
        let weights = [("c9200".to_string(), 100), ("api".to_string(), 0)].into();
        let s = store.apply(Change::SetWeights { route: "api".into(), weights }, None).await.unwrap();
        assert_eq!(s.revision, 6);
        let ws: Vec<_> = s.config.routes["api"].backends.iter().map(|b| b.weight).collect();
        assert_eq!(ws, vec![0, 100]);
        let s = store.apply(Change::Delete(Kind::Route, "api".into()), None).await.unwrap();
        assert_eq!(s.revision, 7);
        assert!(s.config.routes.is_empty());
        assert_eq!(*stored(&url).await, *s);
        store.close().await;
    })
    .await;
}

#[tokio::test]
async fn nodes_round_trip() {
    each_backend(|url, _| async move {
        let store = Store::open(&url).await.unwrap();
        assert!(store.nodes().await.unwrap().is_empty());
        let mut n = NodeRecord {
            id: "node-b".into(),
            group: "edge".into(),
            acked_revision: 3,
            last_nack: None,
            resource_errors: Vec::new(),
            last_seen_ms: 1_700_000_000_123,
            connected: true,
        };
        store.upsert_node(&n).await.unwrap();
        let a = NodeRecord { id: "node-a".into(), group: "default".into(), ..n.clone() };
        store.upsert_node(&a).await.unwrap();
        n.last_nack = Some((4, "port 8080 in use".into()));
        n.connected = false;
        store.upsert_node(&n).await.unwrap();
        assert_eq!(store.nodes().await.unwrap(), vec![a, n]);
        store.close().await;
    })
    .await;
}

#[tokio::test]
async fn a_closed_store_is_unavailable_and_keeps_its_state() {
    each_backend(|url, _| async move {
        let store = Store::open(&url).await.unwrap();
        seed(&store).await;
        store.close().await;
        assert!(matches!(store.apply(Change::Put(cluster(9300)), None).await, Err(StoreError::Unavailable(_))));
        assert!(matches!(store.nodes().await, Err(StoreError::Unavailable(_))));
        assert_eq!(store.state().revision, 3);
        assert_eq!(stored(&url).await.revision, 3);
    })
    .await;
}

#[tokio::test]
async fn bad_urls_are_refused() {
    assert!(matches!(Store::open("mysql://x").await, Err(StoreError::Unavailable(_))));
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/fresh/dir/sluice.db", dir.path().display());
    let store = Store::open(&url).await.unwrap();
    assert!(dir.path().join("fresh/dir/sluice.db").exists(), "the file is created if missing");
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode").fetch_one(&store.inner.pool).await.unwrap();
    assert_eq!(mode.to_lowercase(), "wal");
    let timeout: i64 = sqlx::query_scalar("PRAGMA busy_timeout").fetch_one(&store.inner.pool).await.unwrap();
    assert_eq!(timeout, 5000);
    store.close().await;

    // A database that does not answer is reported as unavailable, within the acquire timeout.
    let opts = StoreOptions { acquire_timeout: Duration::from_millis(300), ..StoreOptions::default() };
    let dead = Store::open_with("postgres://postgres@127.0.0.1:1/test", opts).await;
    assert!(matches!(dead, Err(StoreError::Unavailable(_))));
}
