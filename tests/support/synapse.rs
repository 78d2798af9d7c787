//! A real Synapse for the end-to-end tests: the pinned release from PyPI (installed by
//! `scripts/test`, found through `SYNAPSE_PYTHON`), on loopback, with SQLite, in a temp dir.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use tokio::process::{Child, Command};

pub const PYTHON_ENV: &str = "SYNAPSE_PYTHON";
const SHARED_SECRET: &str = "letta-matrix-test-shared-secret";

pub struct Synapse {
    dir: tempfile::TempDir,
    port: u16,
    server_name: String,
    child: Option<Child>,
    http: reqwest::Client,
}

/// Reserves a loopback port by binding and releasing it; the window for a clash is tiny.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Synapse {
    /// Starts Synapse with the given appservice registration files and waits until it answers.
    pub async fn start(server_name: &str, appservice_files: &[PathBuf]) -> anyhow::Result<Self> {
        Self::start_with(server_name, appservice_files, json!({})).await
    }

    /// As [`Synapse::start`], with `extra` keys added to (or replacing) the test configuration.
    pub async fn start_with(server_name: &str, appservice_files: &[PathBuf], extra: Value) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = free_port();
        write_config(dir.path(), server_name, port, appservice_files, extra)?;
        let mut synapse = Self {
            dir,
            port,
            server_name: server_name.to_owned(),
            child: None,
            http: reqwest::Client::new(),
        };
        synapse.run(&["--generate-keys"]).await?.wait().await?;
        synapse.launch().await?;
        Ok(synapse)
    }

    async fn run(&self, extra: &[&str]) -> anyhow::Result<Child> {
        let python = std::env::var(PYTHON_ENV).map_err(|_| {
            anyhow::anyhow!(
                "{PYTHON_ENV} is not set: run the tests through scripts/test, which installs the pinned Synapse"
            )
        })?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("stdout.log"))?;
        Command::new(python)
            .args(["-m", "synapse.app.homeserver", "-c"])
            .arg(self.dir.path().join("homeserver.yaml"))
            .args(extra)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("cannot start Synapse")
    }

    async fn launch(&mut self) -> anyhow::Result<()> {
        let mut child = self.run(&[]).await?;
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "Synapse exited with {status} before it was ready:\n{}",
                    self.log_tail(40)
                );
            }
            let versions = self
                .http
                .get(format!("{}/_matrix/client/versions", self.base_url()))
                .send()
                .await;
            if versions.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!("Synapse was not ready after 60 s:\n{}", self.log_tail(40));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.child = Some(child);
        Ok(())
    }

    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Starts a stopped Synapse again on its own data and port: the end of an outage.
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        self.launch().await
    }

    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop().await;
        self.launch().await
    }

    /// Restarts once every appservice transaction has been delivered, as a quiet homeserver
    /// restarts. On SQLite, Synapse numbers transactions from the highest id left in its table, so
    /// it then starts again from 1.
    pub async fn restart_when_delivered(&mut self) -> anyhow::Result<()> {
        use sqlx::Connection;
        let url = format!("sqlite://{}", self.dir.path().join("homeserver.db").display());
        let mut db = sqlx::SqliteConnection::connect(&url).await?;
        let started = Instant::now();
        loop {
            let (waiting,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM application_services_txns")
                .fetch_one(&mut db)
                .await?;
            if waiting == 0 {
                break;
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!("{waiting} appservice transactions still undelivered after 60 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        db.close().await?;
        self.restart().await
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|child| child.id())
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn server_name(&self) -> &str {
        &self.server_name
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let mut text = String::new();
        for name in ["stdout.log", "homeserver.log"] {
            let content = std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
            let all: Vec<&str> = content.lines().collect();
            text.push_str(&all[all.len().saturating_sub(lines)..].join("\n"));
            text.push('\n');
        }
        text
    }

    /// Registers a person through the shared-secret admin API, as an admin would.
    pub async fn register_user(&self, localpart: &str, password: &str) -> anyhow::Result<Person> {
        let url = format!("{}/_synapse/admin/v1/register", self.base_url());
        let nonce: Value = self.http.get(&url).send().await?.error_for_status()?.json().await?;
        let nonce = nonce["nonce"].as_str().context("no nonce")?;
        let mut mac = Hmac::<sha1::Sha1>::new_from_slice(SHARED_SECRET.as_bytes())?;
        for (i, part) in [nonce, localpart, password, "notadmin"].iter().enumerate() {
            if i > 0 {
                mac.update(b"\0");
            }
            mac.update(part.as_bytes());
        }
        let body = json!({
            "nonce": nonce, "username": localpart, "password": password, "admin": false,
            "mac": hex::encode(mac.finalize().into_bytes()),
        });
        let response: Value = self
            .http
            .post(&url)
            .json(&body)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok(Person {
            user_id: response["user_id"].as_str().context("no user_id")?.to_owned(),
            access_token: response["access_token"].as_str().context("no access_token")?.to_owned(),
            base_url: self.base_url(),
            http: self.http.clone(),
        })
    }
}

impl Drop for Synapse {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
    }
}

fn write_config(
    dir: &Path,
    server_name: &str,
    port: u16,
    appservice_files: &[PathBuf],
    extra: Value,
) -> anyhow::Result<()> {
    let generous = json!({"per_second": 1000, "burst_count": 10000});
    let mut config = json!({
        "server_name": server_name,
        "pid_file": dir.join("homeserver.pid"),
        "listeners": [{
            "port": port, "type": "http", "tls": false, "x_forwarded": false,
            "bind_addresses": ["127.0.0.1"],
            "resources": [{"names": ["client"], "compress": false}],
        }],
        "database": {"name": "sqlite3", "args": {"database": dir.join("homeserver.db")}},
        "log_config": dir.join("log.yaml"),
        "media_store_path": dir.join("media"),
        "signing_key_path": dir.join("signing.key"),
        "registration_shared_secret": SHARED_SECRET,
        "macaroon_secret_key": "letta-matrix-test-macaroon",
        "form_secret": "letta-matrix-test-form",
        "report_stats": false,
        "enable_registration": false,
        "trusted_key_servers": [],
        "suppress_key_server_warning": true,
        "presence": {"enabled": false},
        // Identical initial syncs are otherwise answered from a two-minute cache, and tests
        // poll them to watch invites arrive.
        "caches": {"sync_response_cache_duration": 0},
        "app_service_config_files": appservice_files,
        "rc_message": generous,
        "rc_registration": generous,
        "rc_login": {"address": generous, "account": generous, "failed_attempts": generous},
        "rc_joins": {"local": generous, "remote": generous},
        "rc_joins_per_room": generous,
        "rc_invites": {"per_room": generous, "per_user": generous, "per_issuer": generous},
        "rc_admin_redaction": generous,
        "rc_room_creation": generous,
    });
    if let (Some(config), Value::Object(extra)) = (config.as_object_mut(), extra) {
        config.extend(extra);
    }
    // JSON is YAML, and serde_json needs no extra dependency here.
    std::fs::write(dir.join("homeserver.yaml"), serde_json::to_string_pretty(&config)?)?;
    let log_config = format!(
        "version: 1\nformatters:\n  plain:\n    format: '%(asctime)s %(levelname)s %(name)s %(message)s'\nhandlers:\n  file:\n    class: logging.FileHandler\n    filename: {}\n    formatter: plain\nroot:\n  level: INFO\n  handlers: [file]\ndisable_existing_loggers: false\n",
        dir.join("homeserver.log").display()
    );
    std::fs::write(dir.join("log.yaml"), log_config)?;
    Ok(())
}

/// A person using the client-server API, as Element would.
#[derive(Clone)]
pub struct Person {
    pub user_id: String,
    pub access_token: String,
    base_url: String,
    http: reqwest::Client,
}

fn encode(segment: &str) -> String {
    url::form_urlencoded::byte_serialize(segment.as_bytes()).collect()
}

impl Person {
    /// Logs in with a password, as a client does with what the demo prints.
    pub async fn log_in(base_url: &str, user: &str, password: &str) -> anyhow::Result<Person> {
        let http = reqwest::Client::new();
        let body = json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user}, "password": password});
        let response = http
            .post(format!("{base_url}/_matrix/client/v3/login"))
            .json(&body)
            .send()
            .await?;
        let login: Value = response.error_for_status()?.json().await?;
        Ok(Person {
            user_id: login["user_id"].as_str().context("no user_id")?.to_owned(),
            access_token: login["access_token"].as_str().context("no access_token")?.to_owned(),
            base_url: base_url.to_owned(),
            http,
        })
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.base_url))
            .bearer_auth(&self.access_token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await?;
        let status = response.status();
        let value: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("{method} {path}: {status} {value}");
        }
        Ok(value)
    }

    pub async fn create_room(&self, body: Value) -> anyhow::Result<String> {
        let created = self
            .call(reqwest::Method::POST, "/_matrix/client/v3/createRoom", Some(body))
            .await?;
        Ok(created["room_id"].as_str().context("no room_id")?.to_owned())
    }

    pub async fn send_text(&self, room_id: &str, body: &str) -> anyhow::Result<String> {
        self.send(room_id, json!({"msgtype": "m.text", "body": body})).await
    }

    /// Sends an `m.room.message` with any content; returns its event id.
    pub async fn send(&self, room_id: &str, content: Value) -> anyhow::Result<String> {
        let txn = format!(
            "t{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_nanos()
        );
        let path = format!("/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}", encode(room_id));
        let sent = self.call(reqwest::Method::PUT, &path, Some(content)).await?;
        Ok(sent["event_id"].as_str().context("no event_id")?.to_owned())
    }

    pub async fn put_state(
        &self,
        room_id: &str,
        event_type: &str,
        state_key: &str,
        content: Value,
    ) -> anyhow::Result<()> {
        let path = format!(
            "/_matrix/client/v3/rooms/{}/state/{event_type}/{}",
            encode(room_id),
            encode(state_key)
        );
        self.call(reqwest::Method::PUT, &path, Some(content)).await.map(drop)
    }

    /// One event as the homeserver stores it.
    pub async fn event(&self, room_id: &str, event_id: &str) -> anyhow::Result<Value> {
        let path = format!(
            "/_matrix/client/v3/rooms/{}/event/{}",
            encode(room_id),
            encode(event_id)
        );
        self.call(reqwest::Method::GET, &path, None).await
    }

    /// A raw `/sync`, long-polling up to `timeout_ms` for news after `since`.
    pub async fn sync(&self, since: Option<&str>, timeout_ms: u64) -> anyhow::Result<Value> {
        let mut path = format!("/_matrix/client/v3/sync?timeout={timeout_ms}");
        if let Some(since) = since {
            path.push_str("&since=");
            path.push_str(&encode(since));
        }
        self.call(reqwest::Method::GET, &path, None).await
    }

    pub async fn invite(&self, room_id: &str, user_id: &str) -> anyhow::Result<()> {
        let path = format!("/_matrix/client/v3/rooms/{}/invite", encode(room_id));
        self.call(reqwest::Method::POST, &path, Some(json!({"user_id": user_id})))
            .await
            .map(drop)
    }

    pub async fn join(&self, room_id_or_alias: &str) -> anyhow::Result<()> {
        let path = format!("/_matrix/client/v3/join/{}", encode(room_id_or_alias));
        self.call(reqwest::Method::POST, &path, Some(json!({}))).await.map(drop)
    }

    /// Upgrades a room to `version`; returns the replacement room's id.
    pub async fn upgrade_room(&self, room_id: &str, version: &str) -> anyhow::Result<String> {
        let path = format!("/_matrix/client/v3/rooms/{}/upgrade", encode(room_id));
        let answer = self
            .call(reqwest::Method::POST, &path, Some(json!({"new_version": version})))
            .await?;
        Ok(answer["replacement_room"].as_str().unwrap_or_default().to_owned())
    }

    pub async fn leave(&self, room_id: &str) -> anyhow::Result<()> {
        let path = format!("/_matrix/client/v3/rooms/{}/leave", encode(room_id));
        self.call(reqwest::Method::POST, &path, Some(json!({}))).await.map(drop)
    }

    pub async fn joined_members(&self, room_id: &str) -> anyhow::Result<Vec<String>> {
        let path = format!("/_matrix/client/v3/rooms/{}/joined_members", encode(room_id));
        let members = self.call(reqwest::Method::GET, &path, None).await?;
        Ok(members["joined"]
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default())
    }

    /// Rooms this person is invited to, with the invite's stripped state events.
    pub async fn invites(&self) -> anyhow::Result<Vec<(String, Vec<Value>)>> {
        let sync = self
            .call(reqwest::Method::GET, "/_matrix/client/v3/sync?timeout=0", None)
            .await?;
        let invites = sync["rooms"]["invite"].as_object().cloned().unwrap_or_default();
        Ok(invites
            .into_iter()
            .map(|(room, invite)| {
                (
                    room,
                    invite["invite_state"]["events"].as_array().cloned().unwrap_or_default(),
                )
            })
            .collect())
    }

    pub async fn joined_rooms(&self) -> anyhow::Result<Vec<String>> {
        let rooms = self
            .call(reqwest::Method::GET, "/_matrix/client/v3/joined_rooms", None)
            .await?;
        Ok(rooms["joined_rooms"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r.as_str().map(str::to_owned))
            .collect())
    }

    /// One state event's content, or `None` when the room has no such state.
    pub async fn state(&self, room_id: &str, event_type: &str, state_key: &str) -> anyhow::Result<Option<Value>> {
        let path = format!(
            "/_matrix/client/v3/rooms/{}/state/{event_type}/{}",
            encode(room_id),
            encode(state_key)
        );
        match self.call(reqwest::Method::GET, &path, None).await {
            Ok(content) => Ok(Some(content)),
            Err(error) if error.to_string().contains("404") => Ok(None),
            Err(error) => Err(error),
        }
    }

    pub async fn display_name(&self, user_id: &str) -> anyhow::Result<Option<String>> {
        let path = format!("/_matrix/client/v3/profile/{}/displayname", encode(user_id));
        let profile = self.call(reqwest::Method::GET, &path, None).await?;
        Ok(profile["displayname"].as_str().map(str::to_owned))
    }

    /// The room's latest events, newest first.
    pub async fn messages(&self, room_id: &str, limit: u32) -> anyhow::Result<Vec<Value>> {
        let path = format!(
            "/_matrix/client/v3/rooms/{}/messages?dir=b&limit={limit}",
            encode(room_id)
        );
        let page = self.call(reqwest::Method::GET, &path, None).await?;
        Ok(page["chunk"].as_array().cloned().unwrap_or_default())
    }
}
