//! `sluice status`: the current revision and every node of the fleet.

use serde_json::Value;

use crate::client::Client;
use crate::table::Table;

pub async fn run(client: &Client) -> anyhow::Result<()> {
    let revision = client.get("/v1/revision").await?;
    let nodes = client.get("/v1/nodes").await?;
    let revision = revision.get("revision").and_then(Value::as_u64).unwrap_or(0);
    println!("revision {revision}");
    if let Some(r) = crate::release::latest(client).await? {
        let state = r.get("state").and_then(Value::as_str).unwrap_or("");
        if matches!(state, "applying" | "baking" | "failed") {
            println!("{}", crate::release::describe(&r));
        }
    }
    print!("{}", render(&nodes));
    Ok(())
}

pub fn render(nodes: &Value) -> String {
    let empty = Vec::new();
    let nodes = nodes.as_array().unwrap_or(&empty);
    if nodes.is_empty() {
        return "no nodes\n".to_string();
    }
    let mut t = Table::new(&["NODE", "GROUP", "STATE", "ACKED", "LAST NACK", "LAST SEEN", "NOT APPLIED"]);
    for n in nodes {
        let s = |k: &str| n.get(k).and_then(Value::as_str).unwrap_or("-").to_string();
        let nack = match n.get("last_nack").filter(|v| !v.is_null()) {
            Some(v) => format!(
                "{}: {}",
                v.get("revision").and_then(Value::as_u64).unwrap_or(0),
                v.get("message").and_then(Value::as_str).unwrap_or("")
            ),
            None => "-".to_string(),
        };
        let acked = n.get("acked_revision").and_then(Value::as_u64).unwrap_or(0).to_string();
        let left_out = crate::render::resource_errors(n);
        let left_out = if left_out.is_empty() { "-".to_string() } else { left_out.join("; ") };
        t.row(vec![s("id"), s("group"), s("state"), acked, nack, s("last_seen"), left_out]);
    }
    t.render()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_nodes() {
        let out = render(&json!([{"id": "dev", "group": "default", "state": "nacked", "acked_revision": 3,
            "last_nack": {"revision": 4, "message": "port in use"}, "last_seen": "2025-01-01T00:00:00Z"}]));
        assert!(out.starts_with("NODE  GROUP    STATE   ACKED  LAST NACK       LAST SEEN"), "{out}");
        let degraded = render(&json!([{"id": "dev", "group": "default", "state": "degraded", "acked_revision": 5,
            "last_nack": null, "resource_errors": [{"kind": "listener", "name": "web", "message": "port in use"}],
            "last_seen": "2025-01-01T00:00:00Z"}]));
        assert!(
            degraded.ends_with("degraded  5      -          2025-01-01T00:00:00Z  listener web: port in use\n"),
            "{degraded}"
        );
        assert!(out.contains("dev   default  nacked  3      4: port in use"), "{out}");
        assert_eq!(render(&json!([])), "no nodes\n");
    }
}
