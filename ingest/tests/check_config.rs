//! `ingest check-config`, the real binary: one file with a problem of every
//! kind gets every problem reported at once, each line naming the file, the
//! source and the field, and a non-zero exit; a good file exits 0.

use std::process::{Command, Output};

fn check(config: &str, env: &[(&str, &str)]) -> (Output, String, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ingest.toml");
    std::fs::write(&path, config).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ingest"));
    cmd.arg("check-config").arg("--config").arg(&path);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("running ingest check-config");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    // Keep the folder until the command ran; the path stays for messages.
    drop(dir);
    (out, stderr, path)
}

const BAD: &str = r#"
[server]
trusted_proxies = ["10.0.0.0/8", "10.1/16"]

[sources.purple]
allow = ["203.0.113.0/24", "10.0.0/8"]
ordering_key = { pointer = "venue/id" }
rate_limit = { per_second = -1.0, burst = 0 }
subscription = { token_param = "hub.challenge", verify_token = { id = "hub", env = "CHECK_TEST_UNSET_TOKEN" } }
signature = { scheme = "purple", secrets = [
  { id = "current", env = "CHECK_TEST_UNSET_SECRET" },
  { id = "old", env = "CHECK_TEST_SET_SECRET" },
] }

[sources.typo]
alow = ["203.0.113.0/24"]
signature = { scheme = "purple", secrets = [{ id = "a", env = "CHECK_TEST_SET_SECRET" }] }

[sources.rot]
signature = { scheme = "rot13", secrets = [{ id = "a", env = "CHECK_TEST_SET_SECRET" }] }

[sources.svix]
signature = { scheme = "standard", secrets = [{ id = "a", env = "CHECK_TEST_SET_SECRET" }] }
"#;

#[test]
fn every_problem_is_reported_at_once_naming_file_source_and_field() {
    let (out, stderr, path) = check(BAD, &[("CHECK_TEST_SET_SECRET", "s3cret-value")]);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let file = path.display().to_string();
    let lines: Vec<&str> = stderr.lines().collect();
    for (kind, needle) in [
        (
            "bad CIDR",
            "server.trusted_proxies[1]: \"10.1/16\" is not a CIDR",
        ),
        (
            "bad CIDR",
            "sources.purple.allow[1]: \"10.0.0/8\" is not a CIDR",
        ),
        (
            "bad pointer",
            "sources.purple.ordering_key.pointer: \"venue/id\" is not a JSON pointer",
        ),
        (
            "bad rate limit",
            "sources.purple.rate_limit.per_second: -1 must be between",
        ),
        (
            "bad rate limit",
            "sources.purple.rate_limit.burst: 0 must be between",
        ),
        (
            "challenge config",
            "sources.purple.subscription.token_param: must differ from challenge_param",
        ),
        (
            "secret variable unset",
            "sources.purple.signature.secrets[0]: secret \"current\": environment variable CHECK_TEST_UNSET_SECRET is not set",
        ),
        (
            "verify token unset",
            "sources.purple.subscription.verify_token: secret \"hub\": environment variable CHECK_TEST_UNSET_TOKEN is not set",
        ),
        ("unknown field", "sources.typo.alow: unknown field"),
        ("unknown scheme", "sources.rot.signature"),
        (
            "secret in the wrong form",
            "sources.svix.signature.secrets: secret \"a\": a Standard Webhooks secret must start with whsec_",
        ),
    ] {
        let line = lines
            .iter()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("{kind}: no line with {needle:?} in:\n{stderr}"));
        assert!(
            line.starts_with(&format!("{file}: ")),
            "{kind}: the line does not name the file: {line}"
        );
    }
    assert!(stderr.contains("rot13"), "{stderr}");
    // Every line names the file; the last one counts the problems.
    assert!(lines.iter().all(|l| l.starts_with(&format!("{file}: "))));
    assert!(lines.last().unwrap().ends_with(" problems"), "{stderr}");
    // A secret that was read is never printed.
    assert!(!stderr.contains("s3cret-value"));
    assert!(out.stdout.is_empty());
}

#[test]
fn a_good_file_is_ok_and_exits_zero() {
    let good = r#"
[server]
trusted_proxies = ["10.0.0.0/8", "fd00::/8"]
[sources.purple]
allow = ["203.0.113.0/24", "2001:db8::/32"]
rate_limit = { per_second = 50.0, burst = 100 }
subscription = { verify_token = { id = "hub", env = "CHECK_TEST_TOKEN" } }
signature = { scheme = "purple", secrets = [{ id = "a", env = "CHECK_TEST_SECRET" }] }
[sources.chat]
url_verification = true
signature = { scheme = "slack", secrets = [{ id = "a", env = "CHECK_TEST_SECRET" }] }
"#;
    let (out, stderr, path) = check(
        good,
        &[("CHECK_TEST_SECRET", "x"), ("CHECK_TEST_TOKEN", "y")],
    );
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("{}: ok", path.display())
    );
    // The same file without its token variable is not.
    let (out, stderr, _) = check(good, &[("CHECK_TEST_SECRET", "x")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("sources.purple.subscription.verify_token"),
        "{stderr}"
    );
}

#[test]
fn unreadable_files_are_a_problem_not_a_panic() {
    let out = Command::new(env!("CARGO_BIN_EXE_ingest"))
        .args(["check-config", "--config", "/nonexistent/ingest.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("/nonexistent/ingest.toml: file not found"),
        "{stderr}"
    );
    let (out, stderr, _) = check("this is [not toml", &[]);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
