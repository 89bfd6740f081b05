//! `sluice get` and `sluice delete`.

use std::io::{BufRead, IsTerminal};

use anyhow::{bail, Context};
use reqwest::Method;
use serde_json::{json, Value};
use sluice_shared::Kind;

use crate::apply::{read_all, report};
use crate::args::{DeleteArgs, Format, GetArgs, Output};
use crate::client::{revision_of, Client};
use crate::table::Table;

pub fn parse_kind(s: &str) -> anyhow::Result<Kind> {
    Kind::parse(&s.to_ascii_lowercase())
        .with_context(|| format!("unknown kind {s:?} (use clusters, listeners, routes or certificates)"))
}

pub async fn get(client: &Client, args: &GetArgs) -> anyhow::Result<()> {
    let kind = parse_kind(&args.kind)?;
    let format = match args.output {
        Output::Json => Format::Json,
        Output::Yaml => Format::Yaml,
        Output::Table => return get_table(client, kind, args.name.as_deref()).await,
    };
    // The export's shape, so that what is printed applies back unchanged.
    let mut path = format!("/v1/config?kind={}", kind.singular());
    if let Some(n) = &args.name {
        path.push_str(&format!("&name={n}"));
    }
    let config = client.get(&path).await?;
    let docs: Vec<Value> = config
        .get(kind.plural())
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(name, spec)| json!({"kind": kind, "name": name, "spec": spec}))
        .collect();
    print!("{}", documents(&docs, format, args.name.is_some())?);
    Ok(())
}

/// `{kind, name, spec}` documents: YAML documents separated by `---`, or JSON (one object for one
/// resource asked for by name, else a list).
pub fn documents(docs: &[Value], format: Format, one: bool) -> anyhow::Result<String> {
    Ok(match (format, one, docs) {
        (Format::Json, true, [doc]) => format!("{}\n", serde_json::to_string_pretty(doc)?),
        (Format::Json, _, _) => format!("{}\n", serde_json::to_string_pretty(docs)?),
        (Format::Yaml, _, _) => {
            let texts = docs.iter().map(serde_yaml::to_string).collect::<Result<Vec<_>, _>>()?;
            texts.join("---\n")
        }
    })
}

async fn get_table(client: &Client, kind: Kind, name: Option<&str>) -> anyhow::Result<()> {
    let path = match name {
        Some(n) => format!("/v1/{}/{n}", kind.plural()),
        None => format!("/v1/{}", kind.plural()),
    };
    let items = match client.get(&path).await? {
        Value::Array(items) => items,
        one => vec![one],
    };
    if items.is_empty() && name.is_none() {
        eprintln!("no {}", kind.plural());
        return Ok(());
    }
    print!("{}", table(kind, &items).render());
    Ok(())
}

pub async fn delete(client: &Client, args: &DeleteArgs) -> anyhow::Result<()> {
    let targets: Vec<Value> = match (&args.kind, &args.name) {
        (Some(kind), Some(name)) if !args.cascade => {
            let kind = parse_kind(kind)?;
            let answer = client.call(Method::DELETE, &format!("/v1/{}/{name}", kind.plural()), None).await?;
            match revision_of(&answer) {
                Some(rev) => println!("{kind} {name} deleted (revision {rev})"),
                None => println!("{kind} {name} deleted"),
            }
            return Ok(());
        }
        (Some(kind), Some(name)) => vec![json!({"kind": parse_kind(kind)?, "name": name})],
        _ => read_all(&args.files)?.iter().map(|d| json!({"kind": d.kind, "name": d.name})).collect(),
    };
    if targets.is_empty() {
        bail!("the files name no resources");
    }
    let mut body = json!({"delete": targets, "cascade": args.cascade});
    let mut if_match = None;
    if args.cascade && !args.yes {
        // Show what goes before it goes.
        body["dry_run"] = true.into();
        let plan = client.call(Method::POST, "/v1/config", Some(&body)).await?;
        print!("{}", crate::render::changes(&plan));
        if !confirm("delete these resources?")? {
            bail!("nothing deleted");
        }
        body["dry_run"] = false.into();
        // Only what was shown: a write since then makes this fail (412) rather than delete more.
        if_match = revision_of(&plan);
    }
    let answer = client.call_if_match(Method::POST, "/v1/config", Some(&body), if_match).await?;
    report(&answer);
    Ok(())
}

/// Asks on the terminal; refuses (rather than assumes) when stdin is not one.
fn confirm(question: &str) -> anyhow::Result<bool> {
    if !std::io::stdin().is_terminal() {
        bail!("a cascade needs --yes when stdin is not a terminal");
    }
    eprint!("{question} [y/N] ");
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes"))
}

fn text(v: &Value, key: &str) -> String {
    match v.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "-".into(),
        Some(other) => other.to_string(),
    }
}

fn list(v: &Value, key: &str, each: impl Fn(&Value) -> String) -> String {
    let items: Vec<String> =
        v.get(key).and_then(Value::as_array).map(|a| a.iter().map(each).collect()).unwrap_or_default();
    if items.is_empty() {
        "-".into()
    } else {
        items.join(",")
    }
}

fn weighted(v: &Value, name_key: &str) -> String {
    let name = text(v, name_key);
    match v.get("weight").and_then(Value::as_u64) {
        Some(1) | None => name,
        Some(w) => format!("{name}={w}"),
    }
}

fn path_of(route: &Value) -> String {
    let Some(path) = route.get("match").and_then(|m| m.get("path")) else { return "-".into() };
    for (key, shown) in [("exact", "="), ("prefix", ""), ("regex", "~")] {
        if let Some(p) = path.get(key).and_then(Value::as_str) {
            return match key {
                "prefix" => format!("{p}*"),
                _ => format!("{shown}{p}"),
            };
        }
    }
    "-".into()
}

/// One row per resource, with the columns that tell resources of a kind apart.
pub fn table(kind: Kind, items: &[Value]) -> Table {
    let mut t = match kind {
        Kind::Cluster => Table::new(&["NAME", "POLICY", "ENDPOINTS"]),
        Kind::Listener => Table::new(&["NAME", "ADDRESS", "PROTOCOL", "GROUP", "CLUSTER"]),
        Kind::Route => Table::new(&["NAME", "LISTENER", "PRIORITY", "HOSTS", "PATH", "BACKENDS"]),
        Kind::Certificate => Table::new(&["NAME", "SERVER NAMES", "NOT AFTER"]),
    };
    for v in items {
        let row = match kind {
            Kind::Cluster => {
                vec![text(v, "name"), text(v, "lb_policy"), list(v, "endpoints", |e| weighted(e, "address"))]
            }
            Kind::Listener => {
                vec![text(v, "name"), text(v, "address"), text(v, "protocol"), text(v, "group"), text(v, "cluster")]
            }
            Kind::Route => vec![
                text(v, "name"),
                text(v, "listener"),
                v.get("priority").and_then(Value::as_i64).unwrap_or(0).to_string(),
                v.get("match")
                    .map(|m| list(m, "hosts", |h| h.as_str().unwrap_or("?").to_string()))
                    .unwrap_or("-".into()),
                path_of(v),
                list(v, "backends", |b| weighted(b, "cluster")),
            ],
            Kind::Certificate => vec![
                text(v, "name"),
                list(v, "server_names", |h| h.as_str().unwrap_or("?").to_string()),
                text(v, "not_after"),
            ],
        };
        t.row(row);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn route_row() {
        let r = json!({"name": "api", "listener": "web", "priority": 0,
            "match": {"hosts": ["myshop.com"], "path": {"prefix": "/api/"}},
            "backends": [{"cluster": "blue", "weight": 90}, {"cluster": "green", "weight": 10}]});
        let out = table(Kind::Route, &[r]).render();
        assert!(out.contains("api   web       0         myshop.com  /api/*  blue=90,green=10"), "{out}");
    }

    #[test]
    fn cluster_row() {
        let c =
            json!({"name": "api", "lb_policy": "round_robin", "endpoints": [{"address": "127.0.0.1:1", "weight": 1}]});
        assert!(table(Kind::Cluster, &[c]).render().contains("api   round_robin  127.0.0.1:1"));
    }

    #[test]
    fn kinds() {
        assert_eq!(parse_kind("Routes").unwrap(), Kind::Route);
        assert!(parse_kind("pods").is_err());
    }
}
