//! The real `prometheus-alertmanager` from Debian on a free port.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::process::{die_with_parent, free_port};

/// `prometheus-alertmanager`: `ALERTMANAGER_BIN`, else on PATH (Debian's
/// package; `deploy/install-debian-packages.sh` installs it).
pub fn alertmanager_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("ALERTMANAGER_BIN") {
        return PathBuf::from(p);
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let p = dir.join("prometheus-alertmanager");
            if p.is_file() {
                return p;
            }
        }
    }
    let p = PathBuf::from("/usr/bin/prometheus-alertmanager");
    assert!(
        p.is_file(),
        "prometheus-alertmanager not found: run deploy/install-debian-packages.sh"
    );
    p
}

/// A real Alertmanager on a free loopback port: one receiver that sends
/// nothing, clustering off, storage in a temporary folder; killed when
/// dropped.
pub struct Alertmanager {
    /// Its web port on 127.0.0.1.
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Alertmanager {
    /// Starts it and waits until `/-/ready` answers 200.
    pub async fn start() -> Alertmanager {
        Alertmanager::start_with(
            "route:\n  receiver: nowhere\n  group_wait: 1s\nreceivers:\n  - name: nowhere\n",
        )
        .await
    }

    /// Starts it with a webhook receiver at `url` that gets every
    /// notification, firing and resolved: each alert its own group (group
    /// by every label), `group_wait` and `group_interval` 1 s, and
    /// `repeat_interval` 1 h, so an alert that stays firing is notified
    /// once in a test's time.
    pub async fn start_with_webhook(url: &str) -> Alertmanager {
        Alertmanager::start_with(&format!(
            "route:\n  receiver: recorder\n  group_by: ['...']\n  group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 1h\n\
             receivers:\n  - name: recorder\n    webhook_configs:\n      - url: '{url}'\n        send_resolved: true\n"
        ))
        .await
    }

    /// Starts it with `config` (YAML).
    pub async fn start_with(config_text: &str) -> Alertmanager {
        let dir = tempfile::tempdir().expect("temporary folder");
        let config = dir.path().join("alertmanager.yml");
        std::fs::write(&config, config_text).expect("writing the Alertmanager config");
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("alertmanager.log")).expect("log file");
        let mut cmd = Command::new(alertmanager_binary());
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--cluster.listen-address=")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        die_with_parent(&mut cmd);
        let am = Alertmanager {
            port,
            child: Some(cmd.spawn().expect("starting prometheus-alertmanager")),
            dir,
        };
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = client.get(am.url("/-/ready")).send().await
                && r.status() == 200
            {
                return am;
            }
            assert!(
                Instant::now() < deadline,
                "alertmanager did not become ready:\n{}",
                am.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `http://127.0.0.1:port` plus `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The alerts it holds as active now (`GET /api/v2/alerts`: resolved
    /// ones are not listed).
    pub async fn alerts(&self) -> Vec<serde_json::Value> {
        let r = reqwest::get(self.url("/api/v2/alerts"))
            .await
            .expect("GET /api/v2/alerts");
        assert_eq!(r.status(), 200, "GET /api/v2/alerts");
        r.json().await.expect("alerts JSON")
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("alertmanager.log")).unwrap_or_default()
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
