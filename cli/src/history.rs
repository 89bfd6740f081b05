//! `sluice export`, `revisions`, `diff A [B]` and `rollback N`.

use anyhow::Context;
use reqwest::Method;
use serde_json::{json, Value};
use sluice_shared::Kind;

use crate::apply::report;
use crate::args::{DiffArgs, ExportArgs, Format, RevisionsArgs, RollbackArgs};
use crate::client::{revision_of, Client};
use crate::table::Table;
use crate::{render, wait};

pub async fn export(client: &Client, args: &ExportArgs) -> anyhow::Result<()> {
    let path = if args.include_keys { "/v1/config?include_keys=true" } else { "/v1/config" };
    let config = client.get(path).await?;
    match args.output {
        Format::Json => println!("{}", serde_json::to_string_pretty(&config)?),
        Format::Yaml => print!("{}", serde_yaml::to_string(&config)?),
    }
    Ok(())
}

pub async fn revisions(client: &Client, args: &RevisionsArgs) -> anyhow::Result<()> {
    let list = client.get(&format!("/v1/revisions?limit={}", args.limit)).await?;
    let mut t = Table::new(&["REVISION", "TIME", "WHO", "CHANGES"]);
    for r in list.as_array().into_iter().flatten() {
        let s = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or("-").to_string();
        let mut what: Vec<String> = render::items(r, "changes")
            .map(|c| {
                let s = |k: &str| c.get(k).and_then(Value::as_str).unwrap_or("?");
                let mark = match s("op") {
                    "create" => "+",
                    "delete" => "-",
                    _ => "~",
                };
                format!("{mark}{} {}", s("kind"), s("name"))
            })
            .collect();
        if what.len() > 4 {
            let more = what.len() - 3;
            what.truncate(3);
            what.push(format!("… {more} more"));
        }
        let mut changes = what.join(", ");
        if let Some(note) = r.get("note").and_then(Value::as_str) {
            changes = if changes.is_empty() { note.to_string() } else { format!("{note}: {changes}") };
        }
        let rev = r.get("revision").and_then(Value::as_u64).unwrap_or(0).to_string();
        t.row(vec![rev, s("time"), s("who"), if changes.is_empty() { "-".into() } else { changes }]);
    }
    print!("{}", t.render());
    Ok(())
}

pub async fn diff(client: &Client, args: &DiffArgs) -> anyhow::Result<()> {
    let from = client.get(&format!("/v1/revisions/{}", args.from)).await.context("reading the first revision")?;
    let to = match args.to {
        Some(n) => client.get(&format!("/v1/revisions/{n}")).await.context("reading the second revision")?,
        None => {
            let current = client.get("/v1/revision").await?;
            let n = revision_of(&current).context("the API answered without a revision")?;
            client.get(&format!("/v1/revisions/{n}")).await?
        }
    };
    let changes = config_changes(&from["config"], &to["config"]);
    let answer = json!({ "changes": changes });
    let (a, b) = (from["revision"].as_u64().unwrap_or(0), to["revision"].as_u64().unwrap_or(0));
    let text = render::changes(&answer);
    if text.is_empty() {
        println!("revisions {a} and {b} hold the same config");
    } else {
        print!("{text}");
    }
    Ok(())
}

/// The changes from one config view (`{clusters: {NAME: SPEC}, …}`) to another, as a write's
/// answer lists them.
pub fn config_changes(from: &Value, to: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    for kind in Kind::DEPENDENCY_ORDER {
        let empty = serde_json::Map::new();
        let section = |v: &Value| v.get(kind.plural()).and_then(Value::as_object).cloned().unwrap_or(empty.clone());
        let (a, b) = (section(from), section(to));
        for (name, after) in &b {
            match a.get(name) {
                None => out.push(json!({"op": "create", "kind": kind, "name": name, "before": null, "after": after})),
                Some(before) if before != after => {
                    out.push(json!({"op": "update", "kind": kind, "name": name, "before": before, "after": after}))
                }
                Some(_) => {}
            }
        }
        for (name, before) in a.iter().filter(|(n, _)| !b.contains_key(*n)) {
            out.push(json!({"op": "delete", "kind": kind, "name": name, "before": before, "after": null}));
        }
    }
    out
}

pub async fn rollback(client: &Client, args: &RollbackArgs) -> anyhow::Result<()> {
    let mut body = json!({ "revision": args.revision, "dry_run": args.dry_run });
    if let Some(release) = crate::release::body(&args.release) {
        body["release"] = release;
    }
    let answer = client
        .call(Method::POST, "/v1/rollback", Some(&body))
        .await
        .with_context(|| format!("rolling back to revision {}", args.revision))?;
    report(&answer);
    if args.dry_run {
        return Ok(());
    }
    let revision = revision_of(&answer).context("the API answered without a revision")?;
    wait::for_fleet(client, revision, &args.wait).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_compare_by_resource() {
        let a = json!({"clusters": {"a": {"endpoints": []}, "b": {}}, "routes": {}});
        let b = json!({"clusters": {"a": {"endpoints": [1]}}, "routes": {"r": {}}});
        let ops: Vec<String> = config_changes(&a, &b)
            .iter()
            .map(|c| {
                format!("{} {} {}", c["op"].as_str().unwrap(), c["kind"].as_str().unwrap(), c["name"].as_str().unwrap())
            })
            .collect();
        assert_eq!(ops, ["update cluster a", "delete cluster b", "create route r"]);
    }
}
