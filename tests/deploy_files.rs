//! The files under deploy/ are checked by the tools that read them: every Kubernetes manifest
//! against the API's schemas (`kubernetes-validate --strict`), the compose file against the
//! Compose Specification's schema (`check-jsonschema`; both from PyPI, .ci/run installs them),
//! the systemd units by `systemd-analyze verify` and the sysusers.d file by `systemd-sysusers`
//! (each skipped with a notice where systemd is not installed), and the example environment files
//! name every variable the units use. No Docker here: the Dockerfile's promises are read from it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// Runs `program args`; `None` when the program is not installed.
fn run(program: &str, args: &[String]) -> Option<Output> {
    match Command::new(program).args(args).output() {
        Ok(out) => Some(out),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => panic!("running {program}: {e}"),
    }
}

/// A tool from PyPI by its command, else as `python3 -m module` (installed for a Python whose
/// scripts are not on PATH); `None` when neither is there.
fn python_tool(command: &str, module: &str, args: &[String]) -> Option<Output> {
    run(command, args).or_else(|| {
        let module_args: Vec<String> =
            ["-m".to_string(), module.to_string()].into_iter().chain(args.to_vec()).collect();
        run("python3", &module_args).filter(|o| !text(o).contains(&format!("No module named {module}")))
    })
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Every .yaml and .yml file under `dir`, sorted.
fn manifests(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(manifests(&path));
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
    out.sort();
    out
}

#[test]
fn kubernetes_manifests_match_the_api_schemas() {
    let files = manifests(&deploy_dir().join("kubernetes"));
    let names: Vec<String> = files.iter().map(|f| f.file_name().unwrap().to_string_lossy().into_owned()).collect();
    for expected in ["namespace.yaml", "control-plane.yaml", "proxy.yaml", "postgres-secret.yaml"] {
        assert!(names.iter().any(|n| n == expected), "{expected} among {names:?}");
    }
    let mut args = vec!["--strict".to_string()];
    args.extend(files.iter().map(|f| f.display().to_string()));
    let Some(out) = python_tool("kubernetes-validate", "kubernetes_validate", &args) else {
        assert!(!in_ci(), "kubernetes-validate is not installed and CI is set (.ci/run installs it)");
        eprintln!("NOTICE: skipped: kubernetes-validate is not installed (pip install kubernetes-validate)");
        return;
    };
    let report = text(&out);
    assert!(out.status.success(), "kubernetes-validate --strict failed:\n{report}");
    // Each resource is reported as passed: nothing was skipped as an unknown kind.
    let passed = report.lines().filter(|l| l.contains(" passed for resource ")).count();
    let documents: usize = files.iter().map(|f| std::fs::read_to_string(f).unwrap().matches("\nkind: ").count()).sum();
    assert_eq!(passed, documents, "every resource validated:\n{report}");
}

#[test]
fn compose_file_matches_the_compose_spec() {
    let file = deploy_dir().join("compose.yaml");
    let args = ["--builtin-schema".to_string(), "vendor.compose-spec".to_string(), file.display().to_string()];
    let Some(out) = python_tool("check-jsonschema", "check_jsonschema", &args) else {
        assert!(!in_ci(), "check-jsonschema is not installed and CI is set (.ci/run installs it)");
        eprintln!("NOTICE: skipped: check-jsonschema is not installed (pip install check-jsonschema)");
        return;
    };
    assert!(out.status.success(), "deploy/compose.yaml against the Compose Specification:\n{}", text(&out));
}

#[test]
fn systemd_units_parse() {
    let dir = deploy_dir().join("systemd");
    let work = tempfile::tempdir().unwrap();
    let mut units = Vec::new();
    for name in ["sluice-control-plane.service", "sluice-proxy.service"] {
        // `verify` also checks that ExecStart's binary exists: point it at the one cargo built.
        let unit = std::fs::read_to_string(dir.join(name)).unwrap();
        assert!(unit.contains("ExecStart=/usr/local/bin/sluice "), "{name} runs /usr/local/bin/sluice");
        let local = work.path().join(name);
        std::fs::write(&local, unit.replace("/usr/local/bin/sluice", BIN)).unwrap();
        units.push(local.display().to_string());
    }
    let mut args = vec!["verify".to_string(), "--man=no".to_string()];
    args.extend(units);
    let Some(out) = run("systemd-analyze", &args) else {
        eprintln!("NOTICE: skipped: systemd-analyze is not installed");
        return;
    };
    // verify exits 0 even for unknown keys and bad values: any word from it is a finding.
    let report = text(&out);
    assert!(out.status.success() && report.trim().is_empty(), "systemd-analyze verify:\n{report}");

    let sysusers = dir.join("sluice.sysusers.conf");
    let root = tempfile::tempdir().unwrap();
    let args = [format!("--root={}", root.path().display()), "--dry-run".to_string(), sysusers.display().to_string()];
    let Some(out) = run("systemd-sysusers", &args) else {
        eprintln!("NOTICE: skipped: systemd-sysusers is not installed");
        return;
    };
    let report = text(&out);
    assert!(out.status.success() && report.contains("Creating user 'sluice'"), "systemd-sysusers:\n{report}");
}

/// `$NAME` and `${NAME}` in a unit's ExecStart lines.
fn variables(unit: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in unit.lines().filter(|l| l.starts_with("ExecStart=")) {
        for part in line.split('$').skip(1) {
            let name: String =
                part.trim_start_matches('{').chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            out.push(name);
        }
    }
    out
}

#[test]
fn example_environment_files_name_every_variable_the_units_use() {
    let dir = deploy_dir().join("systemd");
    for (unit, example, read_by_the_binary) in [
        (
            "sluice-control-plane.service",
            "control-plane.env.example",
            &["SLUICE_ADMIN_TOKEN", "SLUICE_DATABASE_URL"][..],
        ),
        ("sluice-proxy.service", "proxy.env.example", &[][..]),
    ] {
        let unit_text = std::fs::read_to_string(dir.join(unit)).unwrap();
        assert!(unit_text.contains(&format!("EnvironmentFile=/etc/sluice/{}", example.trim_end_matches(".example"))));
        let example_text = std::fs::read_to_string(dir.join(example)).unwrap();
        let mut needed = variables(&unit_text);
        assert!(!needed.is_empty(), "{unit} uses variables");
        needed.extend(read_by_the_binary.iter().map(|v| v.to_string()));
        for var in needed {
            // Set, or shown commented out where the unit gives a default (Environment=).
            let set = example_text.lines().any(|l| l.starts_with(&format!("{var}=")));
            let defaulted = unit_text.contains(&format!("Environment={var}="))
                && example_text.lines().any(|l| l.starts_with(&format!("#{var}=")));
            assert!(set || defaulted, "{example} names {var}, which {unit} uses");
        }
    }
}

/// The first JSON array of the `INSTRUCTION` line of a Dockerfile (continuation lines joined).
fn exec_form(dockerfile: &str, instruction: &str) -> Vec<String> {
    let joined = dockerfile.replace("\\\n", " ");
    let line = joined
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{instruction} ")))
        .unwrap_or_else(|| panic!("the Dockerfile has no {instruction}"));
    let json = &line[line.find('[').unwrap_or_else(|| panic!("{instruction} in exec form"))..];
    serde_json::from_str(json).unwrap_or_else(|e| panic!("{instruction} {json}: {e}"))
}

#[test]
fn image_runs_unprivileged_reachable_and_checkable() {
    let dockerfile = std::fs::read_to_string(deploy_dir().join("Dockerfile")).unwrap();
    assert!(dockerfile.contains("setcap cap_net_bind_service=+ep /usr/local/bin/sluice"), "may bind 80/443");
    let user = dockerfile.lines().rev().find_map(|l| l.strip_prefix("USER ")).expect("a USER");
    assert!(!user.starts_with('0') && !user.starts_with("root"), "runs as {user}");
    // The default command: every address reachable through a published port.
    let cmd = exec_form(&dockerfile, "CMD");
    let addrs: Vec<&str> = cmd.windows(2).filter(|w| w[0].ends_with("-addr")).map(|w| w[1].as_str()).collect();
    assert!(addrs.len() >= 5 && addrs.iter().all(|a| a.starts_with("0.0.0.0:")), "{cmd:?}");
    // The health check probes the node admin address the command sets.
    let check = exec_form(&dockerfile, "HEALTHCHECK");
    let admin = cmd.windows(2).find(|w| w[0] == "--admin-addr").map(|w| w[1].replace("0.0.0.0", "127.0.0.1"));
    assert_eq!(check, ["/usr/local/bin/sluice", "probe", &format!("http://{}/readyz", admin.unwrap())]);
    let ignore = std::fs::read_to_string(deploy_dir().join("../.dockerignore")).unwrap();
    for kept_out in ["target/", ".git/", ".sluice/"] {
        assert!(ignore.lines().any(|l| l == kept_out), ".dockerignore leaves out {kept_out}");
    }
}
