//! `sluice release status|promote|abort`, the `release` a write asks for, and one line that says
//! where a release stands (for `status` and `--wait`).

use anyhow::Context;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::args::{ReleaseArgs, ReleaseCommand};
use crate::client::{ApiError, Client};

/// The `release` of a write's body, when the flags ask for one.
pub fn body(args: &ReleaseArgs) -> Option<Value> {
    if args.immediate {
        return Some(json!("immediate"));
    }
    let canary = match (&args.canary_group, args.canary_percent) {
        (Some(g), _) => json!({ "group": g }),
        (None, Some(p)) => json!({ "percent": p }),
        (None, None) => return None,
    };
    Some(json!({ "canary": canary, "bake_s": args.bake.as_secs(), "max_error_rate": args.max_error_rate }))
}

/// The newest release, or `None` when there has been none.
pub async fn latest(client: &Client) -> anyhow::Result<Option<Value>> {
    match client.get("/v1/release").await {
        Ok(r) => Ok(Some(r)),
        Err(e) if e.downcast_ref::<ApiError>().is_some_and(|a| a.status == StatusCode::NOT_FOUND) => Ok(None),
        Err(e) => Err(e),
    }
}

/// `release of revision 12 (canary group edge, bake 60s): baking` with the reason when it failed.
pub fn describe(r: &Value) -> String {
    let s = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or("?");
    let n = |k: &str| r.get(k).and_then(Value::as_u64).unwrap_or(0);
    let canary = match r.get("canary") {
        Some(c) if c.get("group").is_some() => format!("canary group {}", c["group"].as_str().unwrap_or("?")),
        Some(c) => {
            let ids: Vec<&str> = crate::render::items(c, "nodes").filter_map(Value::as_str).collect();
            format!("canary nodes {}", ids.join(","))
        }
        None => "canary ?".into(),
    };
    let mut line = format!(
        "release of revision {} (stable {}, {canary}, bake {}s): {}",
        n("revision"),
        n("stable_revision"),
        n("bake_s"),
        s("state")
    );
    if let Some(reason) = r.get("reason").and_then(Value::as_str) {
        line.push_str(&format!(" ({reason})"));
    }
    line
}

pub async fn run(client: &Client, command: &ReleaseCommand) -> anyhow::Result<()> {
    let answer = match command {
        ReleaseCommand::Status => match latest(client).await? {
            Some(r) => r,
            None => {
                println!("no release yet");
                return Ok(());
            }
        },
        ReleaseCommand::Promote => {
            client.call(Method::POST, "/v1/release/promote", None).await.context("promoting the release")?
        }
        ReleaseCommand::Abort => {
            client.call(Method::POST, "/v1/release/abort", None).await.context("aborting the release")?
        }
    };
    println!("{}", describe(&answer));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_a_failed_release() {
        let r = json!({"revision": 12, "stable_revision": 11, "canary": {"group": "edge"}, "bake_s": 60,
            "state": "failed", "reason": "canary error rate 50.00% … ; reverted to revision 11 in revision 13"});
        assert_eq!(
            describe(&r),
            "release of revision 12 (stable 11, canary group edge, bake 60s): failed (canary error rate 50.00% … ; reverted to revision 11 in revision 13)"
        );
    }
}
