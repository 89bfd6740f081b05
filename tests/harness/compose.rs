//! A compose file read as data, to run its services as processes on this machine (there is no
//! container runtime here): each service's command, environment, health check, volumes and fixed
//! address, with `${VAR}`, `${VAR:-default}` and `${VAR:?message}` interpolated and YAML merge
//! keys applied. [`Network`] stands in for the compose network with loopback addresses.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use serde_yaml::Value;

use crate::free_addr;

#[derive(Debug, Clone, Default)]
pub struct Service {
    pub name: String,
    pub image: Option<String>,
    pub command: Vec<String>,
    pub environment: Vec<(String, String)>,
    /// The health check's command (after `CMD`).
    pub healthcheck: Option<Vec<String>>,
    /// `(source, target)`: a named volume or a path relative to the compose file.
    pub volumes: Vec<(String, String)>,
    /// Fixed addresses on the service's networks.
    pub addresses: Vec<String>,
    pub depends_on: Vec<String>,
    pub restart: Option<String>,
}

#[derive(Debug)]
pub struct ComposeFile {
    pub services: BTreeMap<String, Service>,
}

impl ComposeFile {
    /// Reads `path`; `vars` answers the variables the file interpolates.
    pub fn load(path: &Path, vars: &dyn Fn(&str) -> Option<String>) -> ComposeFile {
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        let mut doc: Value = serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        doc.apply_merge().expect("merge keys");
        let services = doc["services"].as_mapping().expect("a services mapping");
        let services = services
            .iter()
            .map(|(name, spec)| {
                let name = name.as_str().expect("service names are strings").to_string();
                let service = service(&name, spec, vars);
                (name, service)
            })
            .collect();
        ComposeFile { services }
    }

    pub fn service(&self, name: &str) -> &Service {
        self.services.get(name).unwrap_or_else(|| panic!("no service {name} in the compose file"))
    }
}

fn service(name: &str, spec: &Value, vars: &dyn Fn(&str) -> Option<String>) -> Service {
    let text = |v: &Value| -> String {
        let raw = match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            other => panic!("service {name}: expected a scalar, got {other:?}"),
        };
        interpolate(&raw, vars)
    };
    let list = |v: &Value| -> Vec<String> { v.as_sequence().map(|s| s.iter().map(text).collect()).unwrap_or_default() };
    let environment = match &spec["environment"] {
        Value::Mapping(m) => m.iter().map(|(k, v)| (text(k), text(v))).collect(),
        Value::Sequence(s) => s
            .iter()
            .map(|e| {
                let e = text(e);
                let (k, v) = e.split_once('=').unwrap_or((&e, ""));
                (k.to_string(), v.to_string())
            })
            .collect(),
        _ => Vec::new(),
    };
    let healthcheck = spec["healthcheck"]["test"].as_sequence().map(|t| {
        let argv: Vec<String> = t.iter().map(text).collect();
        assert_eq!(argv.first().map(String::as_str), Some("CMD"), "service {name}: health checks are CMD lists");
        argv[1..].to_vec()
    });
    let volumes = list(&spec["volumes"])
        .into_iter()
        .map(|v| {
            let mut parts = v.splitn(3, ':');
            let source = parts.next().unwrap_or_default().to_string();
            let target = parts.next().unwrap_or_else(|| panic!("service {name}: volume {v} has no target"));
            (source, target.to_string())
        })
        .collect();
    let addresses = match &spec["networks"] {
        Value::Mapping(m) => m.values().filter_map(|n| n["ipv4_address"].as_str().map(String::from)).collect(),
        _ => Vec::new(),
    };
    let depends_on = match &spec["depends_on"] {
        Value::Mapping(m) => m.keys().map(text).collect(),
        other => list(other),
    };
    Service {
        name: name.to_string(),
        image: spec["image"].as_str().map(String::from),
        command: list(&spec["command"]),
        environment,
        healthcheck,
        volumes,
        addresses,
        depends_on,
        restart: spec["restart"].as_str().map(String::from),
    }
}

/// Compose's variable syntax: `${VAR}`, `${VAR:-default}` (unset or empty), `${VAR:?message}`
/// (unset or empty is an error), and `$$` for a dollar sign.
pub fn interpolate(text: &str, vars: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let tail = &rest[at + 1..];
        if let Some(after) = tail.strip_prefix('$') {
            out.push('$');
            rest = after;
            continue;
        }
        let Some(body) = tail.strip_prefix('{') else { panic!("only ${{...}} variables are supported: {text}") };
        let end = body.find('}').unwrap_or_else(|| panic!("unclosed ${{ in {text}"));
        let expr = &body[..end];
        let value = |name: &str| vars(name).filter(|v| !v.is_empty());
        let replaced = if let Some((name, default)) = expr.split_once(":-") {
            value(name).unwrap_or_else(|| default.to_string())
        } else if let Some((name, message)) = expr.split_once(":?") {
            value(name).unwrap_or_else(|| panic!("{name} is required: {message}"))
        } else {
            vars(expr).unwrap_or_default()
        };
        out.push_str(&replaced);
        rest = &body[end + 1..];
    }
    out.push_str(rest);
    out
}

/// Loopback stand-ins for the compose network. Every `0.0.0.0:PORT` a service's command listens
/// on gets a free loopback address; a `SERVICE:PORT` or `FIXED_IP:PORT` anywhere in a text then
/// means that address, and inside the service itself, so does `127.0.0.1:PORT`.
#[derive(Debug)]
pub struct Network {
    listens: BTreeMap<(String, u16), SocketAddr>,
    /// `(text, service)`: each name and fixed address a service answers to.
    names: Vec<(String, String)>,
}

impl Network {
    pub fn plan(compose: &ComposeFile) -> Network {
        let mut listens = BTreeMap::new();
        let mut names = Vec::new();
        for (name, s) in &compose.services {
            for arg in &s.command {
                if let Some(port) = arg.strip_prefix("0.0.0.0:").and_then(|p| p.parse::<u16>().ok()) {
                    listens.insert((name.clone(), port), free_addr());
                }
            }
            names.push((name.clone(), name.clone()));
            names.extend(s.addresses.iter().map(|a| (a.clone(), name.clone())));
        }
        // Longest first, so that no name is replaced inside a longer one.
        names.sort_by_key(|(text, _)| std::cmp::Reverse(text.len()));
        Network { listens, names }
    }

    /// Where `service` listens for what it listens on `port` in the compose network.
    pub fn addr(&self, service: &str, port: u16) -> SocketAddr {
        *self.listens.get(&(service.to_string(), port)).unwrap_or_else(|| panic!("{service} does not listen on {port}"))
    }

    /// `text` as seen from outside every service: each `SERVICE:PORT` and `FIXED_IP:PORT`
    /// replaced by that service's loopback address.
    pub fn rewrite(&self, text: &str) -> String {
        let mut out = text.to_string();
        for (from, service) in &self.names {
            for ((s, port), addr) in &self.listens {
                if s == service {
                    out = out.replace(&format!("{from}:{port}"), &addr.to_string());
                }
            }
        }
        out
    }

    /// `text` as `service` sees it: its own `0.0.0.0:PORT` and `127.0.0.1:PORT` are its
    /// loopback addresses, the rest as [`Network::rewrite`].
    pub fn rewrite_in(&self, service: &str, text: &str) -> String {
        let mut out = text.to_string();
        for ((s, port), addr) in &self.listens {
            if s == service {
                for host in ["0.0.0.0", "127.0.0.1"] {
                    out = out.replace(&format!("{host}:{port}"), &addr.to_string());
                }
            }
        }
        self.rewrite(&out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpolates_like_compose() {
        let vars = |name: &str| (name == "SET").then(|| "v".to_string());
        assert_eq!(interpolate("a${SET}b ${UNSET:-d} $$ ${SET:?x}", &vars), "avb d $ v");
        assert_eq!(interpolate("${UNSET}", &vars), "");
        let missing = std::panic::catch_unwind(|| interpolate("${UNSET:?set it}", &vars));
        assert!(missing.is_err());
    }
}
