//! stunnel (Debian's `stunnel4`) as a TLS server in front of a plaintext
//! service on loopback: how the tests put TLS between the clients and the
//! tansu broker, which serves no TLS of its own (0.6 takes `--cert` and
//! `--key` but never uses them).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::process::{die_with_parent, free_port};

/// The stunnel binary: `STUNNEL_BIN`, else `stunnel` on PATH.
pub fn stunnel_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("STUNNEL_BIN") {
        return PathBuf::from(p);
    }
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        for name in ["stunnel", "stunnel4"] {
            let p = dir.join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    panic!("stunnel not found: run deploy/install-debian-packages.sh (Debian's stunnel4)");
}

/// A running stunnel: TLS on [`Stunnel::port`], plaintext to its target.
pub struct Stunnel {
    /// The loopback port it accepts TLS on.
    pub port: u16,
    /// Holds its config and log.
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Stunnel {
    /// A free port to give [`Stunnel::start`] (and a broker to advertise)
    /// before either runs.
    pub fn pick_port() -> u16 {
        free_port()
    }

    /// Serves TLS on `port` with the PEM certificate chain `cert` and key
    /// `key`, forwarding to `127.0.0.1:target`; waits until it accepts
    /// connections.
    pub fn start(port: u16, target: u16, cert: &Path, key: &Path) -> Stunnel {
        let dir = tempfile::tempdir().expect("temporary folder");
        let conf = dir.path().join("stunnel.conf");
        std::fs::write(
            &conf,
            format!(
                "foreground = yes\npid =\ndebug = notice\n[kafka]\naccept = 127.0.0.1:{port}\nconnect = 127.0.0.1:{target}\ncert = {}\nkey = {}\n",
                cert.display(),
                key.display()
            ),
        )
        .expect("stunnel config");
        let log = std::fs::File::create(dir.path().join("stunnel.log")).expect("stunnel log");
        let mut cmd = Command::new(stunnel_binary());
        cmd.arg(&conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log);
        die_with_parent(&mut cmd);
        let child = cmd.spawn().expect("starting stunnel");
        let s = Stunnel {
            port,
            dir,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "stunnel did not start listening:\n{}",
                s.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        s
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stunnel.log")).unwrap_or_default()
    }
}

impl Drop for Stunnel {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
