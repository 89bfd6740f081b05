//! Staged releases in the store, on SQLite and on Postgres: a write starts one (or joins the one
//! in progress), the active release is published with its stable state, moves are conditional.

use std::time::Duration;

use sluice_shared::validate::parse_json;

use super::testdb::each_backend;
use super::*;
use crate::nodes::NodeRecord;

fn cluster(name: &str, port: u16) -> Change {
    let json = format!(r#"{{"endpoints":[{{"address":"127.0.0.1:{port}"}}]}}"#);
    Change::Put(Resource::Cluster(name.into(), parse_json(json.as_bytes()).unwrap()))
}

fn spec(canary: Canary) -> Staging {
    Staging::Release(ReleaseSpec { canary, bake: Duration::from_secs(5), max_error_rate: 0.01 })
}

#[tokio::test]
async fn writes_start_join_and_skip_releases() {
    each_backend(|url, _| async move {
        let store = Store::open(&url).await.unwrap();
        store.apply(cluster("a", 9001), None).await.unwrap(); // 1
        for id in ["n1", "n2", "n3", "n4"] {
            let n = NodeRecord {
                id: id.into(),
                group: "default".into(),
                acked_revision: 1,
                last_nack: None,
                resource_errors: Vec::new(),
                last_seen_ms: 0,
                connected: true,
            };
            store.upsert_node(&n).await.unwrap();
        }
        let w = store.write_staged(cluster("a", 9002), None, "ci", &spec(Canary::Percent(50))).await.unwrap(); // 2
        let active = store.active_release().expect("a release in progress");
        assert_eq!((active.release.revision, active.release.stable_revision), (2, 1));
        assert_eq!(active.release.state, ReleaseState::Applying);
        assert_eq!(active.stable.revision, 1);
        assert_eq!(active.stable.config, store.config_at(1).await.unwrap());
        assert_ne!(active.stable.config, w.state.config);
        match &active.release.canary {
            CanarySet::Nodes(ids) => assert_eq!(ids.len(), 2, "{ids:?}"),
            other => panic!("{other:?}"),
        }

        // A later write joins it (the bake starts over); the release keeps its stable revision.
        let baseline = std::collections::BTreeMap::from([("n1".to_string(), (5, 0))]);
        let m = Move { baseline: Some(&baseline), ..Move::default() };
        assert!(store.move_release(2, ReleaseState::Applying, ReleaseState::Baking, m).await.unwrap());
        assert!(!store.move_release(2, ReleaseState::Applying, ReleaseState::Baking, Move::default()).await.unwrap());
        store.write(cluster("b", 9003), None, "ci").await.unwrap(); // 3
        let active = store.active_release().unwrap();
        assert_eq!((active.release.revision, active.release.state), (2, ReleaseState::Applying));
        assert!(active.release.baseline.is_empty() && active.release.baking_since_ms.is_none());

        // An immediate write leaves the release alone; promoting ends it.
        let before = store.active_release().unwrap().release.applying_since_ms;
        store.write_staged(cluster("c", 9004), None, "release", &Staging::Immediate).await.unwrap(); // 4
        assert_eq!(store.active_release().unwrap().release.applying_since_ms, before);
        assert!(store.move_release(2, ReleaseState::Applying, ReleaseState::Released, Move::default()).await.unwrap());
        assert!(store.active_release().is_none());
        assert_eq!(store.latest_release().await.unwrap().unwrap().state, ReleaseState::Released);
        store.close().await;
    })
    .await;
}

#[tokio::test]
async fn a_default_release_stages_every_write() {
    each_backend(|url, _| async move {
        let opts = StoreOptions {
            default_release: Some(ReleaseSpec {
                canary: Canary::Group("canary".into()),
                bake: Duration::from_secs(1),
                max_error_rate: 0.5,
            }),
            ..StoreOptions::default()
        };
        let store = Store::open_with(&url, opts).await.unwrap();
        store.apply(cluster("a", 9001), None).await.unwrap();
        let active = store.active_release().expect("staged by default");
        assert_eq!(active.release.canary, CanarySet::Group("canary".into()));
        assert_eq!((active.release.stable_revision, active.stable.config.clusters.len()), (0, 0));
        // Another replica (a second store on the database) sees it too.
        let other = Store::open(&url).await.unwrap();
        assert_eq!(other.active_release().unwrap().release.revision, 1);
        let traffic = NodeTraffic { revision: 1, requests: 10, errors: 2 };
        store.record_traffic("n1", traffic).await.unwrap();
        assert_eq!(other.node_traffic().await.unwrap()["n1"], traffic);
        other.close().await;
        store.close().await;
    })
    .await;
}
