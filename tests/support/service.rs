//! Our own binary, run the way an operator runs it: environment config, a registration file,
//! `serve` as a child process.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::bail;
use tokio::process::{Child, Command};

use super::synapse::free_port;

pub const BINARY: &str = env!("CARGO_BIN_EXE_letta-matrix");
/// Long enough for the service's 32-byte minimum.
pub const ADMIN_TOKEN: &str = "admin-token-for-tests-0123456789abcdef";

/// The environment and files of one letta-matrix installation.
pub struct Installation {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub env: Vec<(String, String)>,
}

impl Installation {
    /// A SQLite installation for `server_name`; the homeserver URL can be set later.
    pub fn new(server_name: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let env = vec![
            ("LETTA_MATRIX_SERVER_NAME".into(), server_name.to_owned()),
            ("LETTA_MATRIX_HOMESERVER_URL".into(), "http://127.0.0.1:9".into()),
            ("LETTA_MATRIX_LETTA_URL".into(), "http://127.0.0.1:9".into()),
            ("LETTA_MATRIX_BIND".into(), format!("127.0.0.1:{port}")),
            (
                "LETTA_MATRIX_DATA_DIR".into(),
                dir.path().join("data").display().to_string(),
            ),
            (
                "LETTA_MATRIX_REGISTRATION".into(),
                dir.path().join("registration.yaml").display().to_string(),
            ),
            ("LETTA_MATRIX_LOG_FILTER".into(), "letta_matrix=debug,info".into()),
        ];
        Self { dir, port, env }
    }

    /// A second replica of this installation: same settings and registration, its own port.
    pub fn replica(&self) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut replica = Self {
            dir,
            port,
            env: self.env.clone(),
        };
        replica.set("LETTA_MATRIX_BIND", format!("127.0.0.1:{port}"));
        replica
    }

    pub fn set(&mut self, key: &str, value: impl Into<String>) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_owned(), value.into()));
    }

    pub fn registration_path(&self) -> PathBuf {
        self.dir.path().join("registration.yaml")
    }

    pub fn database_url(&self) -> String {
        format!(
            "sqlite://{}?mode=rwc",
            self.dir.path().join("data/letta-matrix.db").display()
        )
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `/ready`'s JSON, or `None` while nothing answers.
    pub async fn ready(&self) -> Option<serde_json::Value> {
        reqwest::get(format!("{}/ready", self.base_url()))
            .await
            .ok()?
            .json()
            .await
            .ok()
    }

    /// `/status`'s JSON, with the admin token the installation was given.
    pub async fn status(&self) -> serde_json::Value {
        let token = self
            .env
            .iter()
            .find(|(k, _)| k == "LETTA_MATRIX_ADMIN_TOKEN")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let response = reqwest::Client::new()
            .get(format!("{}/status", self.base_url()))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        response.json().await.unwrap()
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(BINARY);
        command
            .current_dir(self.dir.path())
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("LETTA_MATRIX_")) {
            command.env_remove(key);
        }
        command.envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        command
    }

    /// Runs a one-shot command; returns (exit code, stdout, stderr).
    pub async fn run(&self, args: &[&str]) -> (Option<i32>, String, String) {
        let output = self.command(args).output().await.unwrap();
        let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
        (output.status.code(), text(&output.stdout), text(&output.stderr))
    }

    pub async fn write_registration(&self) -> ruma::api::appservice::Registration {
        let (code, _, stderr) = self.run(&["registration"]).await;
        assert_eq!(code, Some(0), "{stderr}");
        letta_matrix::registration::load(&self.registration_path()).unwrap()
    }

    /// Starts `serve` and waits until `/ready` answers 200.
    pub async fn serve(&self) -> anyhow::Result<Served> {
        let log_path = self
            .dir
            .path()
            .join(format!("serve-{}.log", letta_matrix::store::now_ms()));
        let log = std::fs::File::create(&log_path)?;
        let child = self.command(&["serve"]).stdout(log.try_clone()?).stderr(log).spawn()?;
        let mut served = Served {
            child,
            log_path,
            ready_after: Duration::ZERO,
        };
        let ready_url = format!("{}/ready", self.base_url());
        let started = Instant::now();
        loop {
            if let Some(status) = served.child.try_wait()? {
                bail!("serve exited with {status}:\n{}", served.log());
            }
            if reqwest::get(&ready_url).await.is_ok_and(|r| r.status().is_success()) {
                served.ready_after = started.elapsed();
                return Ok(served);
            }
            if started.elapsed() > Duration::from_secs(30) {
                bail!("serve was not ready after 30 s:\n{}", served.log());
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// A running `serve`.
pub struct Served {
    pub child: Child,
    log_path: PathBuf,
    /// From spawning the process to the first 200 from `/ready`.
    pub ready_after: Duration,
}

impl Served {
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn pid(&self) -> i32 {
        self.child.id().expect("still running") as i32
    }

    /// Resident memory, from the kernel's own accounting.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        let line = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .unwrap_or("VmRSS: 0 kB");
        line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).unwrap_or(0)
    }

    /// CPU seconds the process has used so far (user + system).
    pub fn cpu_seconds(&self) -> f64 {
        process_cpu_seconds(self.pid() as u32)
    }

    /// SIGKILL: a crash, with no chance to clean up.
    pub async fn kill(mut self) {
        self.child.kill().await.expect("kill -9");
    }

    /// SIGTERM, as a container runtime stops us; returns the exit code.
    pub async fn terminate(mut self) -> Option<i32> {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let status = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
        status.ok().and_then(|s| s.ok()).and_then(|s| s.code())
    }
}

/// CPU seconds (user + system) a process has used, from `/proc/<pid>/stat`.
pub fn process_cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: f64 = fields
        .get(11..13)
        .map(|f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum())
        .unwrap_or(0.0);
    ticks / 100.0
}
