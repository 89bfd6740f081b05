//! Config as code: `POST /v1/config` (many resources, one revision, all or nothing, dry run),
//! `GET /v1/config` (the whole config, or one kind or resource, in the shape `apply` takes back),
//! `GET /v1/revisions[/{n}]` (history, and the whole config as of a revision) and
//! `POST /v1/rollback` (one new revision equal to an old one's config).

use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Extension, Router};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use sluice_shared::clock::rfc3339_ms;
use sluice_shared::validate::{parse_json, parse_value, ValidationError};
use sluice_shared::{Certificate, Config, Kind, Revision};

use super::error::problem_json;
use super::release::{staging, ReleaseBody};
use super::{committed, if_match, read_body, with_etag, Action, ApiError, Caller, Shared};
use crate::store::{Batch, Change, Resource, RevisionRecord, Staging, Written};

/// Revisions `GET /v1/revisions` returns without `?limit=`, and the most it returns with one.
const DEFAULT_LIMIT: u32 = 50;
const MAX_LIMIT: u32 = 1000;

/// Fields of a certificate that reads show and a write ignores (they follow from `cert_pem`).
const CERT_READ_ONLY: [&str; 4] = ["server_names", "not_before", "not_after", "key_sha256"];

pub(super) fn routes(router: Router<Shared>) -> Router<Shared> {
    router
        .route("/v1/config", get(export).post(apply))
        .route("/v1/revisions", get(revisions))
        .route("/v1/revisions/{revision}", get(revision))
        .route("/v1/rollback", post(rollback))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchBody {
    #[serde(default)]
    resources: Vec<DocBody>,
    #[serde(default)]
    delete: Vec<RefBody>,
    #[serde(default)]
    prune: Option<PruneBody>,
    #[serde(default)]
    keep_weights: bool,
    #[serde(default)]
    cascade: bool,
    #[serde(default)]
    dry_run: bool,
    #[serde(default)]
    release: Option<ReleaseBody>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DocBody {
    kind: Kind,
    name: String,
    spec: Value,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RefBody {
    kind: Kind,
    name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PruneBody {
    prefix: String,
}

async fn apply(
    State(app): State<Shared>,
    caller: Extension<Caller>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let body: BatchBody = parse_json(&read_body(&headers, body).await?)?;
    let staging = staging(body.release)?;
    for d in &body.resources {
        caller.permit(Action::Write { kind: d.kind, name: &d.name })?;
    }
    for d in &body.delete {
        caller.permit(Action::Write { kind: d.kind, name: &d.name })?;
    }
    if let Some(p) = &body.prune {
        caller.permit_writes(&format!("{}*", p.prefix))?;
    }
    let stored = app.store.state();
    let mut puts = Vec::with_capacity(body.resources.len());
    let mut unreadable = Vec::new();
    for d in body.resources {
        match resource(&d, &stored.config) {
            Ok(r) => puts.push(r),
            Err(e) => unreadable.push((d.kind, d.name, e)),
        }
    }
    let batch = Batch {
        puts,
        deletes: body.delete.into_iter().map(|r| (r.kind, r.name)).collect(),
        prune_prefix: body.prune.map(|p| p.prefix),
        keep_weights: body.keep_weights,
        cascade: body.cascade,
        unreadable,
    };
    write(&app, &caller, &headers, Change::Batch(batch), body.dry_run, &staging).await
}

/// A dry run plans against the current revision; a write commits (or finds nothing to commit).
async fn write(
    app: &Shared,
    caller: &Caller,
    headers: &HeaderMap,
    change: Change,
    dry_run: bool,
    staging: &Staging,
) -> Result<Response, ApiError> {
    let expected = if_match(headers, app.store.state().revision)?;
    let written = if dry_run {
        app.store.plan(change, expected)?
    } else {
        app.store.write_staged(change, expected, caller.who(), staging).await?
    };
    let mut body = outcome_json(&written, dry_run);
    // A write that started or joined a release says so.
    if let Some(active) =
        app.store.active_release().filter(|a| written.committed && a.release.revision <= written.state.revision)
    {
        body["release"] = super::release::release_json(&active.release);
    }
    Ok(if written.committed {
        committed(written.state.revision, body)
    } else {
        with_etag(StatusCode::OK, written.state.revision, body)
    })
}

/// `{"revision", "committed", "dry_run", "changes": [{op, kind, name, before, after}], "warnings"}`.
fn outcome_json(w: &Written, dry_run: bool) -> Value {
    let changes: Vec<Value> = w
        .changes
        .iter()
        .map(|c| {
            json!({
                "op": c.op, "kind": c.kind, "name": c.name,
                "before": spec_view(&w.before.config, c.kind, &c.name, Keys::Fingerprint),
                "after": spec_view(&w.state.config, c.kind, &c.name, Keys::Fingerprint),
            })
        })
        .collect();
    let warnings: Vec<Value> = w.warnings.iter().map(problem_json).collect();
    json!({
        "revision": w.state.revision,
        "committed": w.committed,
        "dry_run": dry_run,
        "changes": changes,
        "warnings": warnings,
    })
}

/// One `{kind, name, spec}` of a batch as a typed resource. A certificate without `key_pem` keeps
/// the stored key when its chain is the stored one, so that what reads show applies back.
fn resource(d: &DocBody, stored: &Config) -> Result<Resource, ValidationError> {
    let (kind, name, mut spec) = (d.kind, d.name.clone(), d.spec.clone());
    if kind == Kind::Certificate {
        if let Some(obj) = spec.as_object_mut() {
            for k in CERT_READ_ONLY {
                obj.remove(k);
            }
            if !obj.contains_key("key_pem") {
                let same = stored
                    .certificates
                    .get(&name)
                    .filter(|c| obj.get("cert_pem").and_then(Value::as_str) == Some(c.cert_pem.as_str()));
                match same {
                    Some(c) => {
                        obj.insert("key_pem".into(), c.key_pem.clone().into());
                    }
                    None => {
                        return Err(ValidationError::invalid(
                            "key_pem",
                            "is required for a new certificate or a changed chain (the stored key is kept only for the same cert_pem)",
                        ))
                    }
                }
            }
        }
    }
    match kind {
        Kind::Cluster => parse_value(spec).map(|s| Resource::Cluster(name, s)),
        Kind::Listener => parse_value(spec).map(|s| Resource::Listener(name, s)),
        Kind::Route => parse_value(spec).map(|s| Resource::Route(name, s)),
        Kind::Certificate => parse_value(spec).map(|s| Resource::Certificate(name, s)),
    }
}

/// How a certificate's key shows in a read.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Keys {
    /// `key_sha256`: the first 16 hex digits of the key's SHA-256, so a diff shows a changed key.
    Fingerprint,
    Omitted,
    Included,
}

fn spec_view(config: &Config, kind: Kind, name: &str, keys: Keys) -> Value {
    let value = match kind {
        Kind::Cluster => config.clusters.get(name).map(serde_json::to_value),
        Kind::Listener => config.listeners.get(name).map(serde_json::to_value),
        Kind::Route => config.routes.get(name).map(serde_json::to_value),
        Kind::Certificate => {
            return config.certificates.get(name).map(|c| certificate_view(c, keys)).unwrap_or(Value::Null)
        }
    };
    value.and_then(Result::ok).unwrap_or(Value::Null)
}

fn certificate_view(c: &Certificate, keys: Keys) -> Value {
    let mut v = json!({ "cert_pem": c.cert_pem });
    match keys {
        Keys::Included => v["key_pem"] = c.key_pem.clone().into(),
        Keys::Fingerprint => {
            let digest = Sha256::digest(c.key_pem.as_bytes());
            v["key_sha256"] = digest.iter().take(8).map(|b| format!("{b:02x}")).collect::<String>().into();
        }
        Keys::Omitted => {}
    }
    v
}

/// `{clusters: {NAME: SPEC}, listeners: …, routes: …, certificates: …}`: the shape `apply` takes.
fn config_view(config: &Config, keys: Keys, only: Option<(Kind, Option<&str>)>) -> Value {
    let mut out = Map::new();
    for kind in Kind::DEPENDENCY_ORDER {
        if only.is_some_and(|(k, _)| k != kind) {
            continue;
        }
        let names: Vec<&String> = match kind {
            Kind::Cluster => config.clusters.keys().collect(),
            Kind::Listener => config.listeners.keys().collect(),
            Kind::Route => config.routes.keys().collect(),
            Kind::Certificate => config.certificates.keys().collect(),
        };
        let section: Map<String, Value> = names
            .into_iter()
            .filter(|n| only.and_then(|(_, name)| name).is_none_or(|want| want == n.as_str()))
            .map(|n| (n.clone(), spec_view(config, kind, n, keys)))
            .collect();
        out.insert(kind.plural().into(), section.into());
    }
    out.into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ExportQuery {
    kind: Option<String>,
    name: Option<String>,
    #[serde(default)]
    include_keys: bool,
}

async fn export(
    State(app): State<Shared>,
    caller: Extension<Caller>,
    query: Result<Query<ExportQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    caller.permit(Action::Read)?;
    let Query(q) = query.map_err(|e| ApiError::malformed(format!("bad query: {e}")))?;
    let keys = if q.include_keys {
        caller.permit(Action::ReadKeys)?;
        Keys::Included
    } else {
        Keys::Omitted
    };
    let kind = match q.kind.as_deref() {
        Some(k) => Some(Kind::parse(k).ok_or_else(|| ApiError::malformed(format!("unknown kind {k:?}")))?),
        None if q.name.is_some() => return Err(ApiError::malformed("name needs a kind")),
        None => None,
    };
    let state = app.store.state();
    if let (Some(k), Some(n)) = (kind, q.name.as_deref()) {
        if !state.config.contains(k, n) {
            return Err(ApiError::not_found(format!("{k} {n} does not exist")));
        }
    }
    let view = config_view(&state.config, keys, kind.map(|k| (k, q.name.as_deref())));
    Ok(with_etag(StatusCode::OK, state.revision, view))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RevisionsQuery {
    limit: Option<String>,
    before: Option<String>,
}

fn record_json(r: &RevisionRecord) -> Value {
    json!({
        "revision": r.revision,
        "time": rfc3339_ms(r.at_ms),
        "who": r.who,
        "note": r.note,
        "changes": r.changes,
    })
}

async fn revisions(
    State(app): State<Shared>,
    caller: Extension<Caller>,
    query: Result<Query<RevisionsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    caller.permit(Action::Read)?;
    let Query(q) = query.map_err(|e| ApiError::malformed(format!("bad query: {e}")))?;
    let limit = super::limit(q.limit.as_deref(), DEFAULT_LIMIT, MAX_LIMIT)?;
    let current = app.store.state().revision;
    let below = match q.before.as_deref() {
        None => current,
        Some(t) => t
            .parse::<Revision>()
            .map_err(|_| ApiError::malformed("before must be a revision number"))?
            .saturating_sub(1),
    };
    let records = app.store.revisions(limit, below).await?;
    Ok(with_etag(StatusCode::OK, current, records.iter().map(record_json).collect::<Vec<_>>().into()))
}

fn revision_number(path: Result<Path<String>, PathRejection>) -> Result<Revision, ApiError> {
    let Path(text) = path.map_err(|e| ApiError::malformed(format!("bad path: {e}")))?;
    text.parse().map_err(|_| ApiError::malformed(format!("{text:?} is not a revision number")))
}

/// `{"revision", "time", "who", "note", "changes", "config"}` (the record's fields where the
/// history has them); certificate keys as fingerprints.
async fn revision(
    State(app): State<Shared>,
    caller: Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    caller.permit(Action::Read)?;
    let n = revision_number(path)?;
    let config = app.store.config_at(n).await?;
    let mut body = match app.store.revision_record(n).await? {
        Some(r) => record_json(&r),
        None => json!({ "revision": n }),
    };
    body["config"] = config_view(&config, Keys::Fingerprint, None);
    Ok(with_etag(StatusCode::OK, app.store.state().revision, body))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackBody {
    revision: Revision,
    #[serde(default)]
    dry_run: bool,
    #[serde(default)]
    release: Option<ReleaseBody>,
}

/// Writes one new revision whose config equals revision n's, certificates (and their keys)
/// included. Tokens are not config: a rollback leaves them as they are.
async fn rollback(
    State(app): State<Shared>,
    caller: Extension<Caller>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let body: RollbackBody = parse_json(&read_body(&headers, body).await?)?;
    let staging = staging(body.release)?;
    caller.permit_writes("*")?;
    let config = app.store.config_at(body.revision).await?;
    write(&app, &caller, &headers, Change::Restore { revision: body.revision, config }, body.dry_run, &staging).await
}
