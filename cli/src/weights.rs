//! `sluice weights ROUTE CLUSTER=W… [--wait]`: shift weights, optionally wait for the fleet to ack.

use std::collections::BTreeMap;

use anyhow::Context;
use reqwest::Method;
use serde_json::json;

use crate::args::WeightsArgs;
use crate::client::{revision_of, Client};
use crate::wait;

pub async fn run(client: &Client, args: &WeightsArgs) -> anyhow::Result<()> {
    let weights: BTreeMap<&str, u32> = args.weights.iter().map(|(c, w)| (c.as_str(), *w)).collect();
    let answer = client
        .call(Method::POST, &format!("/v1/routes/{}/weights", args.route), Some(&json!({ "weights": weights })))
        .await
        .with_context(|| format!("shifting the weights of route {}", args.route))?;
    let revision = revision_of(&answer).context("the API answered without a revision")?;
    println!("route {} weights set (revision {revision})", args.route);
    wait::for_fleet(client, revision, &args.wait).await
}
