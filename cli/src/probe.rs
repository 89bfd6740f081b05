//! `sluice probe URL`: a health check for images without curl (Docker HEALTHCHECK, compose).

use anyhow::{bail, Context};

use crate::args::ProbeArgs;

pub async fn run(args: &ProbeArgs) -> anyhow::Result<()> {
    let client = reqwest::Client::builder().timeout(args.timeout).build().context("building the HTTP client")?;
    let response = client.get(&args.url).send().await.with_context(|| format!("GET {}", args.url))?;
    let status = response.status();
    if !status.is_success() {
        bail!("GET {} answered {status}", args.url);
    }
    Ok(())
}
