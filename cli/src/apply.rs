//! `sluice apply -f FILE`: read resources from YAML or JSON and PUT them in dependency order.

use std::collections::HashSet;

use anyhow::{bail, Context};
use reqwest::Method;
use serde::Deserialize;
use serde_json::Value;
use sluice_shared::validate::{parse_json, ParseError};
use sluice_shared::{Certificate, Cluster, Kind, Listener, Route, ValidationError};

use crate::client::{revision_of, Client};

/// One resource to apply.
#[derive(Debug, Clone, PartialEq)]
pub struct Doc {
    pub kind: Kind,
    pub name: String,
    pub spec: Value,
}

/// Certificates and clusters first: listeners refer to them, and routes refer to listeners.
fn rank(kind: Kind) -> u8 {
    match kind {
        Kind::Certificate => 0,
        Kind::Cluster => 1,
        Kind::Listener => 2,
        Kind::Route => 3,
    }
}

/// Parses a file's text (YAML, JSON, or YAML documents) into resources, sorted in dependency order.
pub fn parse(text: &str) -> anyhow::Result<Vec<Doc>> {
    let mut docs = Vec::new();
    for (i, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = Value::deserialize(de).with_context(|| format!("document {} is not valid YAML or JSON", i + 1))?;
        collect(value, &mut docs).with_context(|| format!("document {}", i + 1))?;
    }
    if docs.is_empty() {
        bail!("the file holds no resources");
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

/// Checks each resource on its own before anything is sent, so that a typo in the last resource of
/// a file does not leave the first ones applied. References are left to the API.
pub fn precheck(doc: &Doc) -> Result<(), ValidationError> {
    sluice_shared::validate::name("name", &doc.name)?;
    let bytes = serde_json::to_vec(&doc.spec).unwrap_or_default();
    fn shape<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, ValidationError> {
        parse_json(b).map_err(|e| match e {
            ParseError::Invalid(v) => v,
            ParseError::Malformed(m) => ValidationError::invalid("", m),
        })
    }
    match doc.kind {
        Kind::Cluster => shape::<Cluster>(&bytes)?.validate(),
        Kind::Listener => shape::<Listener>(&bytes)?.validate(),
        Kind::Route => shape::<Route>(&bytes)?.validate(),
        Kind::Certificate => shape::<Certificate>(&bytes)?.validate(),
    }
}

pub async fn run(client: &Client, file: &std::path::Path) -> anyhow::Result<()> {
    let text = if file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading stdin")?
    } else {
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?
    };
    let docs = parse(&text).with_context(|| format!("{}", file.display()))?;
    for d in &docs {
        precheck(d).map_err(|e| anyhow::anyhow!("{} {}: invalid: {e}", d.kind, d.name))?;
    }
    for d in &docs {
        let path = format!("/v1/{}/{}", d.kind.plural(), d.name);
        let answer = client
            .call(Method::PUT, &path, Some(&d.spec))
            .await
            .with_context(|| format!("applying {} {}", d.kind, d.name))?;
        match revision_of(&answer) {
            Some(rev) => println!("{} {} applied (revision {rev})", d.kind, d.name),
            None => println!("{} {} applied", d.kind, d.name),
        }
    }
    Ok(())
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
        assert!(docs.iter().all(|d| precheck(d).is_ok()));
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
        assert!(parse("").is_err());
        assert!(parse("clusters: {a: {}}\n---\nclusters: {a: {}}").is_err(), "duplicates");
        assert!(parse("- {kind: cluster, spec: {}}").is_err(), "no name");
        assert!(parse("- {kind: gadget, name: a, spec: {}}").is_err());
        let docs = parse("clusters: {a: {endpoints: [{address: \"127.0.0.1:1\", wieght: 1}]}}").unwrap();
        let e = precheck(&docs[0]).unwrap_err();
        assert!(e.field.as_deref().unwrap_or("").starts_with("endpoints[0]"), "{e}");
        let docs = parse("clusters: {Bad_Name: {}}").unwrap();
        assert!(precheck(&docs[0]).is_err());
    }
}
