//! How the client commands show a write's outcome: each changed resource with a line diff of its
//! spec in YAML, warnings, and a one-line summary.

use serde_json::Value;

/// The elements of the array at `v[key]` (none when it is missing or not an array).
pub fn items<'a>(v: &'a Value, key: &str) -> impl Iterator<Item = &'a Value> {
    v.get(key).and_then(Value::as_array).into_iter().flatten()
}

/// A node's `resource_errors` as `kind name: message` lines.
pub fn resource_errors(node: &Value) -> Vec<String> {
    items(node, "resource_errors")
        .map(|e| {
            let s = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("?");
            format!("{} {}: {}", s("kind"), s("name"), s("message"))
        })
        .collect()
}

/// Past this many line pairs a changed spec is shown as removed and added, not diffed.
const MAX_DIFF_CELLS: usize = 4_000_000;
/// Unchanged lines shown around each change.
const CONTEXT: usize = 2;

/// The `changes` of a `POST /v1/config` or rollback answer, as text.
pub fn changes(answer: &Value) -> String {
    let mut out = String::new();
    for c in items(answer, "changes") {
        let s = |k: &str| c.get(k).and_then(Value::as_str).unwrap_or("?");
        let (mark, verb) = match s("op") {
            "create" => ('+', "created"),
            "delete" => ('-', "deleted"),
            _ => ('~', "updated"),
        };
        out.push_str(&format!("{mark} {} {} ({verb})\n", s("kind"), s("name")));
        let before = yaml_lines(c.get("before"));
        let after = yaml_lines(c.get("after"));
        if s("op") != "delete" {
            out.push_str(&line_diff(&before, &after));
        }
    }
    out
}

/// `warning: …` lines for the answer's warnings.
pub fn warnings(answer: &Value) -> String {
    let mut out = String::new();
    for w in items(answer, "warnings") {
        let s = |k: &str| w.get(k).and_then(Value::as_str);
        let at = match (s("resource"), s("field")) {
            (Some(r), Some(f)) => format!("{r}: {f}: "),
            (Some(r), None) => format!("{r}: "),
            _ => String::new(),
        };
        out.push_str(&format!("warning: {at}{}\n", s("message").unwrap_or("")));
    }
    out
}

/// `applied: 2 created, 1 updated, 0 deleted (revision 7)`, or what a dry run would do.
pub fn summary(answer: &Value) -> String {
    let ops: Vec<&str> = items(answer, "changes").filter_map(|c| c.get("op").and_then(Value::as_str)).collect();
    let n = |op: &str| ops.iter().filter(|o| **o == op).count();
    let revision = answer.get("revision").and_then(Value::as_u64).unwrap_or(0);
    let counts = format!("{} created, {} updated, {} deleted", n("create"), n("update"), n("delete"));
    if answer.get("dry_run").and_then(Value::as_bool) == Some(true) {
        format!("dry run: would have {counts}; nothing written (revision {revision})")
    } else if ops.is_empty() {
        format!("unchanged (revision {revision})")
    } else {
        format!("applied: {counts} (revision {revision})")
    }
}

fn yaml_lines(spec: Option<&Value>) -> Vec<String> {
    match spec {
        None | Some(Value::Null) => Vec::new(),
        Some(v) => serde_yaml::to_string(v).unwrap_or_default().lines().map(str::to_string).collect(),
    }
}

/// A unified-style diff: `-`/`+` lines with a little unchanged context, `  …` between hunks.
pub fn line_diff(a: &[String], b: &[String]) -> String {
    let ops = if a.len().saturating_mul(b.len()) > MAX_DIFF_CELLS {
        a.iter().map(|l| ('-', l)).chain(b.iter().map(|l| ('+', l))).collect()
    } else {
        lcs_ops(a, b)
    };
    let near_change =
        |i: usize| ops[i.saturating_sub(CONTEXT)..(i + CONTEXT + 1).min(ops.len())].iter().any(|(m, _)| *m != ' ');
    let mut out = String::new();
    let mut skipped = false;
    for (i, (mark, line)) in ops.iter().enumerate() {
        if *mark == ' ' && !near_change(i) {
            skipped = true;
            continue;
        }
        if skipped && !out.is_empty() {
            out.push_str("    …\n");
        }
        skipped = false;
        out.push_str(&format!("  {mark} {line}\n"));
    }
    out
}

/// The edit script of a longest common subsequence: (' ', kept), ('-', removed), ('+', added).
fn lcs_ops<'a>(a: &'a [String], b: &'a [String]) -> Vec<(char, &'a String)> {
    let (n, m) = (a.len(), b.len());
    let mut len = vec![0u32; (n + 1) * (m + 1)];
    let at = |i: usize, j: usize| i * (m + 1) + j;
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            len[at(i, j)] =
                if a[i] == b[j] { len[at(i + 1, j + 1)] + 1 } else { len[at(i + 1, j)].max(len[at(i, j + 1)]) };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, Vec::with_capacity(n + m));
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            out.push((' ', &a[i]));
            (i, j) = (i + 1, j + 1);
        } else if i < n && (j == m || len[at(i + 1, j)] >= len[at(i, j + 1)]) {
            out.push(('-', &a[i]));
            i += 1;
        } else {
            out.push(('+', &b[j]));
            j += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn lines(s: &str) -> Vec<String> {
        s.lines().map(str::to_string).collect()
    }

    #[test]
    fn diff_shows_changes_with_context() {
        let a = lines("a\nb\nc\nd\ne\nf\ng\nh\nj\nk");
        let b = lines("a\nb\nc\nD\ne\nf\ng\nh\nj\nk\ni");
        let shown = "    b\n    c\n  - d\n  + D\n    e\n    f\n    …\n    j\n    k\n  + i\n";
        assert_eq!(line_diff(&a, &b), shown);
    }

    #[test]
    fn an_answer_renders_as_resources_and_a_summary() {
        let answer = json!({"revision": 7, "dry_run": false, "changes": [
            {"op": "update", "kind": "route", "name": "api",
             "before": {"listener": "web", "timeout_ms": 100}, "after": {"listener": "web", "timeout_ms": 900}},
            {"op": "create", "kind": "cluster", "name": "c", "before": null, "after": {"endpoints": []}},
            {"op": "delete", "kind": "cluster", "name": "old", "before": {"endpoints": []}, "after": null},
        ], "warnings": [{"resource": "route api", "field": "match", "message": "never matches"}]});
        assert_eq!(
            changes(&answer),
            "~ route api (updated)\n    listener: web\n  - timeout_ms: 100\n  + timeout_ms: 900\n\
             + cluster c (created)\n  + endpoints: []\n- cluster old (deleted)\n"
        );
        assert_eq!(summary(&answer), "applied: 1 created, 1 updated, 1 deleted (revision 7)");
        assert_eq!(warnings(&answer), "warning: route api: match: never matches\n");
        assert_eq!(summary(&json!({"revision": 7, "changes": []})), "unchanged (revision 7)");
    }
}
