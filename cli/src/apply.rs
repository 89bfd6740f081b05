//! `sluice apply -f FILE|DIR…`: read resources from YAML or JSON files and write them all in one
//! revision with `POST /v1/config` (the server validates the whole set and lists every problem).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use reqwest::Method;
use serde::Deserialize;
use serde_json::{json, Value};
use sluice_shared::Kind;

use crate::args::ApplyArgs;
use crate::client::{revision_of, Client};
use crate::{render, wait};

/// One resource to apply.
#[derive(Debug, Clone, PartialEq)]
pub struct Doc {
    pub kind: Kind,
    pub name: String,
    pub spec: Value,
}

fn rank(kind: Kind) -> usize {
    Kind::DEPENDENCY_ORDER.iter().position(|k| *k == kind).unwrap_or(0)
}

/// Parses a file's text (YAML, JSON, or YAML documents) into resources, sorted in dependency order.
pub fn parse(text: &str) -> anyhow::Result<Vec<Doc>> {
    let mut docs = Vec::new();
    for (i, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = Value::deserialize(de).with_context(|| format!("document {} is not valid YAML or JSON", i + 1))?;
        collect(value, &mut docs).with_context(|| format!("document {}", i + 1))?;
    }
    let mut seen = HashSet::new();
    for d in &docs {
        if !seen.insert((d.kind, d.name.clone())) {
            bail!("{} {} appears twice", d.kind, d.name);
        }
    }
    // A stable sort keeps the file's order within each kind.
    docs.sort_by_key(|d| rank(d.kind));
    Ok(docs)
}

fn collect(value: Value, out: &mut Vec<Doc>) -> anyhow::Result<()> {
    match value {
        Value::Null => Ok(()),
        Value::Array(items) => {
            for (i, item) in items.into_iter().enumerate() {
                match item {
                    Value::Object(_) => collect(item, out).with_context(|| format!("item {}", i + 1))?,
                    _ => bail!("item {} is not a {{kind, name, spec}} mapping", i + 1),
                }
            }
            Ok(())
        }
        Value::Object(map) if map.contains_key("kind") => {
            let kind_text = map.get("kind").and_then(Value::as_str).context("`kind` must be a string")?;
            let kind = Kind::parse(kind_text).with_context(|| format!("unknown kind {kind_text:?}"))?;
            let name = map.get("name").and_then(Value::as_str).context("`name` is missing or not a string")?;
            if let Some(extra) = map.keys().find(|k| !matches!(k.as_str(), "kind" | "name" | "spec")) {
                bail!("{kind} {name}: unexpected key {extra:?} (expected kind, name, spec)");
            }
            let spec = map.get("spec").cloned().with_context(|| format!("{kind} {name}: `spec` is missing"))?;
            out.push(Doc { kind, name: name.to_string(), spec });
            Ok(())
        }
        Value::Object(map) => {
            for (section, entries) in map {
                let kind = match Kind::parse(&section) {
                    Some(k) if section == k.plural() => k,
                    _ => bail!("unexpected key {section:?} (expected clusters, listeners, routes, certificates)"),
                };
                match entries {
                    Value::Null => {}
                    Value::Object(entries) => {
                        out.extend(entries.into_iter().map(|(name, spec)| Doc { kind, name, spec }));
                    }
                    _ => bail!("`{section}` must map names to specs"),
                }
            }
            Ok(())
        }
        _ => bail!("expected a mapping of kinds or a list of {{kind, name, spec}}"),
    }
}

/// The files a path stands for: itself, or every .yaml, .yml and .json file under a directory, in
/// name order.
fn files(path: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if path.as_os_str() == "-" || !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut out = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
        .with_context(|| format!("reading directory {}", path.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .with_context(|| format!("reading directory {}", path.display()))?;
    entries.sort();
    for p in entries {
        if p.is_dir() {
            out.extend(files(&p)?);
        } else if p.extension().and_then(|e| e.to_str()).is_some_and(|e| matches!(e, "yaml" | "yml" | "json")) {
            out.push(p);
        }
    }
    Ok(out)
}

/// Every resource the paths name, in dependency order; a resource named twice is an error that
/// says where.
pub fn read_all(paths: &[PathBuf]) -> anyhow::Result<Vec<Doc>> {
    let mut docs = Vec::new();
    let mut origin: HashMap<(Kind, String), PathBuf> = HashMap::new();
    for path in paths {
        for file in files(path)? {
            let text = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin()).context("reading stdin")?
            } else {
                std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?
            };
            for d in parse(&text).with_context(|| format!("{}", file.display()))? {
                if let Some(first) = origin.insert((d.kind, d.name.clone()), file.clone()) {
                    bail!("{} {} is in both {} and {}", d.kind, d.name, first.display(), file.display());
                }
                docs.push(d);
            }
        }
    }
    docs.sort_by_key(|d| rank(d.kind));
    Ok(docs)
}

pub fn docs_json(docs: &[Doc]) -> Vec<Value> {
    docs.iter().map(|d| json!({"kind": d.kind, "name": d.name, "spec": d.spec})).collect()
}

pub async fn run(client: &Client, args: &ApplyArgs) -> anyhow::Result<()> {
    let docs = read_all(&args.files)?;
    if docs.is_empty() && !args.prune {
        bail!("the files hold no resources");
    }
    let mut body = json!({
        "resources": docs_json(&docs),
        "keep_weights": args.keep_weights,
        "dry_run": args.dry_run,
    });
    if let Some(prefix) = args.prefix.as_deref().filter(|_| args.prune) {
        body["prune"] = json!({ "prefix": prefix });
    }
    if let Some(release) = crate::release::body(&args.release) {
        body["release"] = release;
    }
    let answer = client.call(Method::POST, "/v1/config", Some(&body)).await.context("applying")?;
    report(&answer);
    if args.dry_run {
        return Ok(());
    }
    let revision = revision_of(&answer).context("the API answered without a revision")?;
    wait::for_fleet(client, revision, &args.wait).await
}

/// Prints a write's changes and summary to stdout and its warnings to stderr.
pub fn report(answer: &Value) {
    print!("{}", render::changes(answer));
    eprint!("{}", render::warnings(answer));
    println!("{}", render::summary(answer));
    if let Some(r) = answer.get("release").filter(|r| !r.is_null()) {
        println!("{}", crate::release::describe(r));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(docs: &[Doc]) -> Vec<String> {
        docs.iter().map(|d| format!("{}/{}", d.kind, d.name)).collect()
    }

    #[test]
    fn config_shape_in_dependency_order() {
        let docs = parse(
            "routes:\n  api: {listener: web, backends: [{cluster: api}]}\nlisteners:\n  web: {address: \"127.0.0.1:8080\", protocol: http}\nclusters:\n  api: {endpoints: []}\n",
        )
        .unwrap();
        assert_eq!(names(&docs), ["cluster/api", "listener/web", "route/api"]);
    }

    #[test]
    fn json_config_shape() {
        let docs = parse(r#"{"clusters": {"a": {"endpoints": []}, "b": {}}, "certificates": {}}"#).unwrap();
        assert_eq!(names(&docs), ["cluster/a", "cluster/b"]);
    }

    #[test]
    fn kind_name_spec_list_and_documents() {
        let list = "- {kind: route, name: r, spec: {listener: web, backends: [{cluster: c}]}}\n- {kind: clusters, name: c, spec: {}}\n";
        assert_eq!(names(&parse(list).unwrap()), ["cluster/c", "route/r"]);
        let multi = "kind: listener\nname: web\nspec: {address: \"127.0.0.1:1\", protocol: http}\n---\nkind: cluster\nname: c\nspec: {}\n";
        assert_eq!(names(&parse(multi).unwrap()), ["cluster/c", "listener/web"]);
    }

    #[test]
    fn mistakes_are_reported() {
        assert!(parse("widgets: {a: {}}").unwrap_err().to_string().contains("document 1"));
        assert!(parse("").unwrap().is_empty());
        assert!(parse("clusters: {a: {}}\n---\nclusters: {a: {}}").is_err(), "duplicates");
        assert!(parse("- {kind: cluster, spec: {}}").is_err(), "no name");
        assert!(parse("- {kind: gadget, name: a, spec: {}}").is_err());
    }

    #[test]
    fn directories_are_read_in_name_order_and_duplicates_named() {
        let dir = std::env::temp_dir().join(format!("sluice-apply-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("b.yaml"), "routes: {r: {listener: web, backends: [{cluster: c}]}}").unwrap();
        std::fs::write(dir.join("sub/a.json"), r#"{"clusters": {"c": {}}}"#).unwrap();
        std::fs::write(dir.join("notes.txt"), "not config").unwrap();
        let docs = read_all(std::slice::from_ref(&dir)).unwrap();
        assert_eq!(names(&docs), ["cluster/c", "route/r"]);
        std::fs::write(dir.join("c.yml"), "clusters: {c: {}}").unwrap();
        let e = read_all(std::slice::from_ref(&dir)).unwrap_err().to_string();
        assert!(e.contains("cluster c is in both") && e.contains("c.yml"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
