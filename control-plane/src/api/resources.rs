//! `/v1/{clusters,listeners,routes,certificates}[/{name}]` and `POST /v1/routes/{name}/weights`.
//! One set of generic handlers serves every kind through [`Spec`].

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Extension, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sluice_shared::clock::rfc3339_s;
use sluice_shared::validate::{is_valid_name, parse_json};
use sluice_shared::{Certificate, Cluster, Config, Kind, Listener, Revision, Route};

use super::{committed, if_match, read_body, with_etag, Action, ApiError, Caller, Shared};
use crate::store::{Change, Resource};

/// A resource kind the API serves.
trait Spec: Serialize + DeserializeOwned + Send + Sync + 'static {
    const KIND: Kind;
    fn all(config: &Config) -> &BTreeMap<String, Self>;
    fn resource(name: String, spec: Self) -> Resource;
    /// The JSON a read shows: `{"name": …, <spec fields>}`, plus `"revision"` on write responses.
    fn view(&self, name: &str, revision: Option<Revision>) -> Result<serde_json::Value, ApiError> {
        render(name, self, revision)
    }
}

impl Spec for Cluster {
    const KIND: Kind = Kind::Cluster;
    fn all(config: &Config) -> &BTreeMap<String, Self> {
        &config.clusters
    }
    fn resource(name: String, spec: Self) -> Resource {
        Resource::Cluster(name, spec)
    }
}

impl Spec for Listener {
    const KIND: Kind = Kind::Listener;
    fn all(config: &Config) -> &BTreeMap<String, Self> {
        &config.listeners
    }
    fn resource(name: String, spec: Self) -> Resource {
        Resource::Listener(name, spec)
    }
}

impl Spec for Route {
    const KIND: Kind = Kind::Route;
    fn all(config: &Config) -> &BTreeMap<String, Self> {
        &config.routes
    }
    fn resource(name: String, spec: Self) -> Resource {
        Resource::Route(name, spec)
    }
}

impl Spec for Certificate {
    const KIND: Kind = Kind::Certificate;
    fn all(config: &Config) -> &BTreeMap<String, Self> {
        &config.certificates
    }
    fn resource(name: String, spec: Self) -> Resource {
        Resource::Certificate(name, spec)
    }
    /// Never the key: the chain, the names it serves and its validity.
    fn view(&self, name: &str, revision: Option<Revision>) -> Result<serde_json::Value, ApiError> {
        let mut value = serde_json::json!({ "name": name, "cert_pem": self.cert_pem });
        match self.info() {
            Ok(info) => {
                value["server_names"] = info.server_names.into();
                value["not_before"] = rfc3339_s(info.not_before).into();
                value["not_after"] = rfc3339_s(info.not_after).into();
            }
            // Stored certificates were validated; this would mean a corrupt row.
            Err(e) => tracing::error!(certificate = name, error = %e, "stored certificate does not parse"),
        }
        if let Some(rev) = revision {
            value["revision"] = rev.into();
        }
        Ok(value)
    }
}

pub(super) fn routes(router: Router<Shared>) -> Router<Shared> {
    // A cluster read also shows its endpoints' health as the nodes report it.
    let router = router
        .route("/v1/clusters", get(list::<Cluster>))
        .route("/v1/clusters/{name}", get(get_cluster).put(put_one::<Cluster>).delete(delete_one::<Cluster>));
    let router = kind::<Listener>(router);
    let router = kind::<Certificate>(router);
    kind::<Route>(router).route("/v1/routes/{name}/weights", post(set_weights))
}

fn kind<T: Spec>(router: Router<Shared>) -> Router<Shared> {
    let base = format!("/v1/{}", T::KIND.plural());
    router
        .route(&base, get(list::<T>))
        .route(&format!("{base}/{{name}}"), get(get_one::<T>).put(put_one::<T>).delete(delete_one::<T>))
}

/// `{"name": …, <spec fields>}`, plus `"revision"` on write responses.
fn render<T: Serialize>(name: &str, spec: &T, revision: Option<Revision>) -> Result<serde_json::Value, ApiError> {
    let mut value = serde_json::to_value(spec).map_err(|e| {
        tracing::error!(error = %e, "cannot render {name}");
        ApiError::unavailable()
    })?;
    if let Some(obj) = value.as_object_mut() {
        obj.insert("name".into(), name.into());
        if let Some(rev) = revision {
            obj.insert("revision".into(), rev.into());
        }
    }
    Ok(value)
}

/// The `{name}` path segment; a malformed one is reported in the JSON error shape.
fn name(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    path.map(|Path(n)| n).map_err(|e| ApiError::malformed(format!("bad path: {e}")))
}

fn not_found(kind: Kind, name: &str) -> ApiError {
    ApiError::not_found(format!("{kind} {name} does not exist"))
}

async fn list<T: Spec>(State(app): State<Shared>, caller: Extension<Caller>) -> Result<Response, ApiError> {
    caller.permit(Action::Read)?;
    let state = app.store.state();
    let items = T::all(&state.config).iter().map(|(n, s)| s.view(n, None)).collect::<Result<Vec<_>, _>>()?;
    Ok(with_etag(StatusCode::OK, state.revision, items.into()))
}

async fn get_one<T: Spec>(
    State(app): State<Shared>,
    caller: Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    caller.permit(Action::Read)?;
    let name = name(path)?;
    let state = app.store.state();
    let spec = T::all(&state.config).get(&name).ok_or_else(|| not_found(T::KIND, &name))?;
    Ok(with_etag(StatusCode::OK, state.revision, spec.view(&name, None)?))
}

/// `GET /v1/clusters/{name}`: the spec, each endpoint with a `health` object (see `cluster_health`).
async fn get_cluster(
    State(app): State<Shared>,
    caller: Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    caller.permit(Action::Read)?;
    let name = name(path)?;
    let state = app.store.state();
    let spec = state.config.clusters.get(&name).ok_or_else(|| not_found(Kind::Cluster, &name))?;
    let mut value = spec.view(&name, None)?;
    super::cluster_health::add_endpoint_health(&app.store, &state.config, &name, &mut value).await?;
    Ok(with_etag(StatusCode::OK, state.revision, value))
}

async fn put_one<T: Spec>(
    State(app): State<Shared>,
    caller: Extension<Caller>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    body: Body,
) -> Result<Response, ApiError> {
    let name = name(path)?;
    caller.permit(Action::Write { kind: T::KIND, name: &name })?;
    let spec: T = parse_json(&read_body(&headers, body).await?)?;
    let expected = if_match(&headers, app.store.state().revision)?;
    let written = app.store.write(Change::Put(T::resource(name.clone(), spec)), expected, caller.who()).await?;
    let state = &written.state;
    let stored = T::all(&state.config).get(&name).ok_or_else(|| not_found(T::KIND, &name))?;
    let mut view = stored.view(&name, Some(state.revision))?;
    if !written.warnings.is_empty() {
        view["warnings"] = written.warnings.iter().map(super::error::problem_json).collect();
    }
    Ok(committed(state.revision, view))
}

async fn delete_one<T: Spec>(
    State(app): State<Shared>,
    caller: Extension<Caller>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let name = name(path)?;
    caller.permit(Action::Write { kind: T::KIND, name: &name })?;
    if !is_valid_name(&name) {
        // Such a name can never have been stored.
        return Err(not_found(T::KIND, &name));
    }
    let expected = if_match(&headers, app.store.state().revision)?;
    let state = app.store.write(Change::Delete(T::KIND, name.clone()), expected, caller.who()).await?.state;
    let body = serde_json::json!({ "revision": state.revision, "name": name });
    Ok(committed(state.revision, body))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WeightsBody {
    weights: BTreeMap<String, u32>,
}

async fn set_weights(
    State(app): State<Shared>,
    caller: Extension<Caller>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    body: Body,
) -> Result<Response, ApiError> {
    let route = name(path)?;
    caller.permit(Action::Weights { route: &route })?;
    let WeightsBody { weights } = parse_json(&read_body(&headers, body).await?)?;
    let expected = if_match(&headers, app.store.state().revision)?;
    let change = Change::SetWeights { route: route.clone(), weights };
    let state = app.store.write(change, expected, caller.who()).await?.state;
    let stored = state.config.routes.get(&route).ok_or_else(|| not_found(Kind::Route, &route))?;
    Ok(committed(state.revision, stored.view(&route, Some(state.revision))?))
}
