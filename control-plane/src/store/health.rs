//! Endpoint health as the connected nodes report it (issue 6), in table `node_health`: one row per
//! (node, cluster). Outside the config and its revisions, like tokens. Rows live in the database so
//! that every control-plane replica shows the health reported to any of them.

use serde::{Deserialize, Serialize};
use sluice_shared::clock::unix_now_ms;
use sqlx::Row;

use super::db::unavailable;
use super::{Store, StoreError};

/// One endpoint of a cluster as one node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointHealth {
    pub address: String,
    /// Passes the cluster's active health checks (true when it has none).
    pub healthy: bool,
    /// Ejected by outlier detection.
    pub ejected: bool,
}

/// What changed in one node's report: clusters to (re)write and clusters to drop.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct HealthUpdate {
    /// Drop every row of the node first (its first report on a stream replaces whatever was left).
    pub replace_all: bool,
    pub put: Vec<(String, Vec<EndpointHealth>)>,
    pub removed: Vec<String>,
}

impl HealthUpdate {
    pub fn is_empty(&self) -> bool {
        !self.replace_all && self.put.is_empty() && self.removed.is_empty()
    }
}

impl Store {
    /// Applies one node's health update in one transaction.
    pub async fn update_node_health(&self, node_id: &str, update: &HealthUpdate) -> Result<(), StoreError> {
        let now = unix_now_ms();
        let mut tx = self.inner.pool.begin().await.map_err(unavailable)?;
        if update.replace_all {
            sqlx::query("DELETE FROM node_health WHERE node_id = $1")
                .bind(node_id)
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
        }
        for cluster in &update.removed {
            sqlx::query("DELETE FROM node_health WHERE node_id = $1 AND cluster = $2")
                .bind(node_id)
                .bind(cluster.as_str())
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
        }
        for (cluster, endpoints) in &update.put {
            let json = serde_json::to_string(endpoints)
                .map_err(|e| StoreError::Unavailable(format!("cannot encode endpoint health: {e}")))?;
            sqlx::query(
                "INSERT INTO node_health (node_id, cluster, endpoints, updated_ms) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (node_id, cluster) DO UPDATE SET endpoints = excluded.endpoints, \
                 updated_ms = excluded.updated_ms",
            )
            .bind(node_id)
            .bind(cluster.as_str())
            .bind(json)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        }
        tx.commit().await.map_err(unavailable)
    }

    /// Forgets everything a node reported (its stream ended).
    pub async fn clear_node_health(&self, node_id: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM node_health WHERE node_id = $1")
            .bind(node_id)
            .execute(&self.inner.pool)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// Every node's report for `cluster`, by node id. A row that does not decode is skipped.
    pub async fn cluster_health(&self, cluster: &str) -> Result<Vec<(String, Vec<EndpointHealth>)>, StoreError> {
        let rows = sqlx::query("SELECT node_id, endpoints FROM node_health WHERE cluster = $1 ORDER BY node_id")
            .bind(cluster)
            .fetch_all(&self.inner.pool)
            .await
            .map_err(unavailable)?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let node: String = row.try_get(0).map_err(unavailable)?;
            let text: String = row.try_get(1).map_err(unavailable)?;
            match serde_json::from_str(&text) {
                Ok(endpoints) => out.push((node, endpoints)),
                Err(e) => tracing::warn!(%node, %cluster, error = %e, "stored endpoint health does not decode"),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testdb::each_backend;
    use super::*;

    fn ep(address: &str, healthy: bool) -> EndpointHealth {
        EndpointHealth { address: address.into(), healthy, ejected: false }
    }

    #[tokio::test]
    async fn node_health_is_replaced_diffed_and_cleared() {
        each_backend(|url, _| async move {
            let store = Store::open(&url).await.unwrap();
            let first = HealthUpdate {
                replace_all: true,
                put: vec![("a".into(), vec![ep("127.0.0.1:1", true)]), ("b".into(), vec![ep("127.0.0.1:2", false)])],
                removed: vec![],
            };
            store.update_node_health("n1", &first).await.unwrap();
            store.update_node_health("n2", &first).await.unwrap();
            assert_eq!(store.cluster_health("b").await.unwrap().len(), 2);

            let second = HealthUpdate {
                replace_all: false,
                put: vec![("a".into(), vec![ep("127.0.0.1:1", false)])],
                removed: vec!["b".into()],
            };
            store.update_node_health("n1", &second).await.unwrap();
            let a = store.cluster_health("a").await.unwrap();
            assert_eq!(
                a,
                vec![("n1".into(), vec![ep("127.0.0.1:1", false)]), ("n2".into(), vec![ep("127.0.0.1:1", true)])]
            );
            assert_eq!(
                store.cluster_health("b").await.unwrap().iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
                ["n2"]
            );

            // A full report drops what it does not name.
            let third = HealthUpdate { replace_all: true, put: vec![], removed: vec![] };
            store.update_node_health("n2", &third).await.unwrap();
            assert!(store.cluster_health("b").await.unwrap().is_empty());

            store.clear_node_health("n1").await.unwrap();
            assert!(store.cluster_health("a").await.unwrap().is_empty());
            assert_eq!(store.state().revision, 0, "health is not config");
        })
        .await;
    }
}
