//! One typed configuration: a TOML file overlaid with `LETTA_MATRIX_*` environment variables,
//! validated once at start so that every later module can trust it.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ruma::{OwnedServerName, OwnedUserId};
use serde::{Deserialize, Serialize};
use url::Url;

/// Every environment variable we read starts with this.
pub const ENV_PREFIX: &str = "LETTA_MATRIX_";
/// The variable naming the TOML file; it is not itself a config key.
pub const CONFIG_PATH_ENV: &str = "LETTA_MATRIX_CONFIG";
/// Nested keys (`[relay] max_lanes`) are reached from the environment as `LETTA_MATRIX_RELAY__MAX_LANES`.
const ENV_NESTING: &str = "__";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The homeserver's `server_name`: the part after the colon in user ids.
    pub server_name: String,
    /// Where we reach the homeserver's client-server API.
    pub homeserver_url: String,
    /// Where the appservice listens for the homeserver.
    pub bind: SocketAddr,
    /// The URL the homeserver uses to reach us; derived from `bind` when unset.
    pub appservice_url: Option<String>,
    /// Serve `/health`, `/ready` and `/metrics` on their own address instead of `bind`.
    pub ops_bind: Option<SocketAddr>,
    pub data_dir: PathBuf,
    /// `sqlite://…` or `postgres://…`; a SQLite file in `data_dir` when unset.
    pub database_url: Option<String>,
    pub database_max_connections: u32,
    /// Path of `registration.yaml`, which holds the appservice's tokens.
    pub registration: PathBuf,
    /// The appservice id in `registration.yaml`.
    pub appservice_id: String,
    /// The appservice's own bot user.
    pub bot_localpart: String,
    /// Every agent's ghost localpart starts with this; the exclusive namespace is built from it.
    pub ghost_prefix: String,
    pub letta_url: String,
    pub letta_token: Option<Secret>,
    pub letta_token_file: Option<PathBuf>,
    /// Letta Cloud: the project (its slug) agents are listed from and created in, sent as the
    /// `X-Project` header as Letta's own SDK does. Self-hosted Letta ignores it.
    pub letta_project: Option<String>,
    /// Only agents carrying at least one of these Letta tags are bridged; empty means every agent.
    pub agent_tags: Vec<String>,
    /// People invited to every agent room and to the space.
    pub invite: Vec<String>,
    /// Operators: each gets a management room (a DM with the bot) that takes commands.
    pub admins: Vec<String>,
    pub log_format: LogFormat,
    /// A `tracing` filter, e.g. `info` or `letta_matrix=debug,info`.
    pub log_filter: String,
    /// Larger transaction bodies are refused with `M_TOO_LARGE`.
    pub max_body_bytes: usize,
    /// On every listener: a connection is closed when a request's head is not complete this long
    /// after the connection opened or after its previous response (so also when idle).
    pub http_header_timeout_ms: u64,
    /// On every listener: a request whose body has not fully arrived this long after its head is
    /// answered 408 and its connection closed.
    pub http_body_timeout_ms: u64,
    /// On every listener: at most this many open connections; more wait to be accepted.
    pub http_max_connections: usize,
    /// How often Letta's agent list is compared with Matrix.
    pub sync_interval_ms: u64,
    /// How many agents are brought into Matrix at once.
    pub sync_concurrency: usize,
    /// The name of the space that holds every agent room.
    pub space_name: String,
    /// Bearer token for the `/status` endpoint; without it the endpoint is off.
    pub admin_token: Option<Secret>,
    /// Who may talk to agents: user id globs (`@*:example.org`, `@alice:*`) or bare server names.
    /// Empty: the users of `server_name` only.
    pub allow: Vec<String>,
    /// How many rooms are worked on at once (each room is answered in order, one message at a time).
    pub relay_concurrency: usize,
    /// How long a claim on a room's next message lasts without renewal; another replica takes the
    /// room over this long after its worker died.
    pub relay_lease_ms: u64,
    /// Names this replica in leases, so that after a restart it takes its rooms back at once.
    /// Unset: an id kept in `data_dir/replica-id`, made on first start.
    pub replica_id: Option<String>,
    /// The least time between two edits of a reply that is still streaming.
    pub relay_edit_interval_ms: u64,
    /// How many earlier messages the agent was not addressed by go with its next turn in a group room.
    pub relay_context_messages: usize,
    /// Show the agent's reasoning and tool calls as collapsed notices (rooms can override).
    pub show_reasoning: bool,
    /// While Letta cannot be reached, a person is told after this long; the message stays queued.
    pub relay_notice_after_ms: u64,
    /// A message that could not be delivered to Letta for this long is given up, with a notice.
    pub relay_give_up_after_ms: u64,
    /// An exchange between agents stops (with a notice) after this many messages back and forth.
    pub inter_agent_max_hops: u32,
    /// Enables the MCP tool server; each agent's token is derived from it (`letta-matrix mcp-token`).
    pub mcp_secret: Option<Secret>,
    /// Serve MCP on its own address instead of `/mcp` on `bind`.
    pub mcp_bind: Option<SocketAddr>,
    /// Which Letta conversation a room talks in: `room` (each room but the agent's own gets a
    /// conversation of its own, where the agent type allows) or `agent` (every room in the
    /// agent's default conversation, as before conversations existed).
    pub conversation_scope: ConversationScope,
    /// How agents get the tools: `sandbox` (Letta tools that call our HTTP API from Letta's tool
    /// sandbox; works where Letta refuses private MCP URLs), `mcp` (our MCP server, registered in
    /// Letta; needs a URL Letta accepts), or `off`.
    pub tools_mode: ToolsMode,
    /// Where Letta reaches our tools listener (`bind`, or `mcp_bind`): its tool sandbox in
    /// `sandbox` mode, its MCP client in `mcp` mode. With `mcp_secret`, agents get the tools.
    pub tools_url: Option<String>,
    /// Only agents with one of these Letta tags get the tools; empty: every bridged agent.
    pub tools_agent_tags: Vec<String>,
    /// A new agent room gets at most this many of the agent's latest Letta messages; 0: no import.
    pub history_import_limit: usize,
    /// Import the agent's reasoning too, as collapsed notices.
    pub history_include_reasoning: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server_name: String::new(),
            homeserver_url: String::new(),
            bind: SocketAddr::from(([127, 0, 0, 1], 9000)),
            appservice_url: None,
            ops_bind: None,
            data_dir: PathBuf::from("data"),
            database_url: None,
            database_max_connections: 8,
            registration: PathBuf::from("registration.yaml"),
            appservice_id: "letta".into(),
            bot_localpart: "letta_bot".into(),
            ghost_prefix: "letta_".into(),
            letta_url: "http://127.0.0.1:8283".into(),
            letta_token: None,
            letta_token_file: None,
            letta_project: None,
            agent_tags: Vec::new(),
            invite: Vec::new(),
            admins: Vec::new(),
            log_format: LogFormat::Pretty,
            log_filter: "info".into(),
            // Synapse batches up to 100 PDUs and 100 EDUs of at most 64 KiB each.
            max_body_bytes: 32 * 1024 * 1024,
            http_header_timeout_ms: 30_000,
            // A full 32 MiB body in a minute needs about 4.5 Mbit/s.
            http_body_timeout_ms: 60_000,
            http_max_connections: 512,
            sync_interval_ms: 1000,
            sync_concurrency: 4,
            space_name: "Letta Agents".into(),
            admin_token: None,
            allow: Vec::new(),
            relay_concurrency: 128,
            relay_lease_ms: 30_000,
            replica_id: None,
            relay_edit_interval_ms: 400,
            relay_context_messages: 20,
            show_reasoning: false,
            relay_notice_after_ms: 20_000,
            relay_give_up_after_ms: 3_600_000,
            inter_agent_max_hops: 3,
            mcp_secret: None,
            mcp_bind: None,
            conversation_scope: ConversationScope::Room,
            tools_mode: ToolsMode::Sandbox,
            tools_url: None,
            tools_agent_tags: Vec::new(),
            history_import_limit: 300,
            history_include_reasoning: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

/// Which Letta conversation a room talks in (`conversation_scope`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConversationScope {
    Room,
    Agent,
}

/// How agents get their Matrix tools (`tools_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ToolsMode {
    Sandbox,
    Mcp,
    Off,
}

/// A token that must never reach a log line or an error message.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(…)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path} is not valid TOML: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config key `{key}` (in {path} or {env_var}): {message}")]
    Value {
        key: String,
        path: PathBuf,
        env_var: String,
        message: String,
    },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("config: {0}")]
    Invalid(String),
}

/// The configuration after validation, with the values derived from it.
#[derive(Debug, Clone)]
pub struct Settings {
    pub raw: Config,
    pub server_name: OwnedServerName,
    pub homeserver_url: Url,
    pub appservice_url: Url,
    pub database_url: String,
    pub letta_url: Url,
    pub letta_token: Option<Secret>,
    pub invite: Vec<OwnedUserId>,
    pub admins: Vec<OwnedUserId>,
    pub bot_user_id: OwnedUserId,
    pub allow: Vec<crate::relay::AllowRule>,
    /// Set when agents are to be given the tools (`tools_url`, unless `tools_mode` is off).
    pub tools_url: Option<Url>,
}

impl Settings {
    /// Loads the file named by `path` (or `LETTA_MATRIX_CONFIG`; no file at all is fine) and the
    /// process environment.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        let from_env = env
            .iter()
            .find(|(k, _)| k == CONFIG_PATH_ENV)
            .map(|(_, v)| PathBuf::from(v));
        let path = path.map(Path::to_path_buf).or(from_env);
        let text = match &path {
            Some(path) => std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?,
            None => String::new(),
        };
        Self::from_parts(&text, path.as_deref(), &env)
    }

    /// Settings for unit tests: a server name, a homeserver URL, defaults for everything else.
    #[cfg(test)]
    pub fn for_tests(server_name: &str) -> Self {
        let env = [
            ("LETTA_MATRIX_SERVER_NAME".to_owned(), server_name.to_owned()),
            (
                "LETTA_MATRIX_HOMESERVER_URL".to_owned(),
                "http://127.0.0.1:8008".to_owned(),
            ),
        ];
        Self::from_parts("", None, &env).expect("the test settings are valid")
    }

    /// The pure core of [`Settings::load`], so tests need not touch the process environment.
    pub fn from_parts(toml_text: &str, path: Option<&Path>, env: &[(String, String)]) -> Result<Self, ConfigError> {
        let display_path = path.map(Path::to_path_buf).unwrap_or_else(|| "the environment".into());
        let mut table: toml::Table = toml::from_str(toml_text).map_err(|e| ConfigError::Parse {
            path: display_path.clone(),
            message: e.to_string(),
        })?;
        apply_env_overrides(&mut table, env)?;
        let config: Config = serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
            let key = e.path().to_string();
            let env_var = format!("{ENV_PREFIX}{}", key.replace('.', ENV_NESTING).to_uppercase());
            ConfigError::Value {
                key,
                path: display_path,
                env_var,
                message: e.inner().message().to_owned(),
            }
        })?;
        config.validate()
    }
}

/// Overlays `LETTA_MATRIX_<KEY>` variables onto the TOML table. A value's type is taken from the
/// default config, so `LETTA_MATRIX_INVITE=@a:x,@b:x` becomes a list and numbers become numbers.
fn apply_env_overrides(table: &mut toml::Table, env: &[(String, String)]) -> Result<(), ConfigError> {
    let defaults = toml::Table::try_from(Config::default()).expect("the default config serialises");
    for (var, value) in env {
        let Some(key) = var.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        // LETTA_MATRIX_TEST_* belong to the test suite (database URLs, caches), not the service.
        if var == CONFIG_PATH_ENV || key.starts_with("TEST_") {
            continue;
        }
        let path: Vec<String> = key.split(ENV_NESTING).map(str::to_lowercase).collect();
        let env_error = |message: String| ConfigError::Env {
            var: var.clone(),
            message,
        };
        let typed = typed_env_value(lookup(&defaults, &path), value).map_err(env_error)?;
        insert(table, &path, typed).map_err(env_error)?;
    }
    Ok(())
}

fn lookup<'a>(table: &'a toml::Table, path: &[String]) -> Option<&'a toml::Value> {
    let (first, rest) = path.split_first()?;
    let value = table.get(first)?;
    match (rest.is_empty(), value) {
        (true, value) => Some(value),
        (false, toml::Value::Table(inner)) => lookup(inner, rest),
        (false, _) => None,
    }
}

fn insert(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    let (last, parents) = path.split_last().ok_or("empty key")?;
    let mut current = table;
    for key in parents {
        let entry = current.entry(key.clone()).or_insert_with(|| toml::Table::new().into());
        current = entry
            .as_table_mut()
            .ok_or_else(|| format!("`{key}` is not a section"))?;
    }
    current.insert(last.clone(), value);
    Ok(())
}

fn typed_env_value(default: Option<&toml::Value>, raw: &str) -> Result<toml::Value, String> {
    Ok(match default {
        Some(toml::Value::Integer(_)) => toml::Value::Integer(
            raw.trim()
                .parse()
                .map_err(|_| format!("`{raw}` is not a whole number"))?,
        ),
        Some(toml::Value::Boolean(_)) => toml::Value::Boolean(match raw.trim() {
            "1" | "true" | "yes" | "on" => true,
            "0" | "false" | "no" | "off" => false,
            _ => return Err(format!("`{raw}` is not true or false")),
        }),
        Some(toml::Value::Array(_)) => toml::Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(toml::Value::from)
                .collect(),
        ),
        // Strings, and optional keys that have no default to learn a type from.
        _ => toml::Value::String(raw.to_owned()),
    })
}

impl Config {
    pub fn validate(self) -> Result<Settings, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid(message);
        if self.server_name.is_empty() {
            return Err(invalid(
                "server_name is missing: set it in the config file or LETTA_MATRIX_SERVER_NAME \
                 (the homeserver's server_name, e.g. example.org)"
                    .into(),
            ));
        }
        let server_name = OwnedServerName::try_from(self.server_name.as_str()).map_err(|e| {
            invalid(format!(
                "server_name `{}` is not a valid server name: {e}",
                self.server_name
            ))
        })?;
        if self.homeserver_url.is_empty() {
            return Err(invalid(
                "homeserver_url is missing: set it in the config file or LETTA_MATRIX_HOMESERVER_URL \
                 (e.g. http://127.0.0.1:8008)"
                    .into(),
            ));
        }
        let homeserver_url = parse_http_url("homeserver_url", &self.homeserver_url)?;
        let appservice_url = match &self.appservice_url {
            Some(url) => parse_http_url("appservice_url", url)?,
            None => derive_appservice_url(self.bind),
        };
        let letta_url = parse_http_url("letta_url", &self.letta_url)?;
        let letta_token = self.read_letta_token()?;
        let invite = self
            .invite
            .iter()
            .map(|user| {
                OwnedUserId::try_from(user.as_str())
                    .map_err(|e| invalid(format!("invite: `{user}` is not a Matrix user id ({e})")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let admins = self
            .admins
            .iter()
            .map(|user| {
                OwnedUserId::try_from(user.as_str())
                    .map_err(|e| invalid(format!("admins: `{user}` is not a Matrix user id ({e})")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let bot_user_id = OwnedUserId::try_from(format!("@{}:{}", self.bot_localpart, server_name)).map_err(|e| {
            invalid(format!(
                "bot_localpart `{}` is not a valid localpart: {e}",
                self.bot_localpart
            ))
        })?;
        if !is_valid_localpart(&self.ghost_prefix) || self.ghost_prefix.is_empty() {
            return Err(invalid(format!(
                "ghost_prefix `{}` must be non-empty and use only a-z, 0-9 and . _ = - /",
                self.ghost_prefix
            )));
        }
        let database_url = match &self.database_url {
            Some(url) => url.clone(),
            None => format!("sqlite://{}?mode=rwc", self.data_dir.join("letta-matrix.db").display()),
        };
        if !(database_url.starts_with("sqlite:")
            || database_url.starts_with("postgres:")
            || database_url.starts_with("postgresql:"))
        {
            return Err(invalid(
                "database_url must start with sqlite:// or postgres:// (got another scheme)".into(),
            ));
        }
        if self.sync_interval_ms < 100 || self.sync_concurrency == 0 {
            return Err(invalid(
                "sync_interval_ms must be at least 100 and sync_concurrency at least 1".into(),
            ));
        }
        if self.relay_concurrency == 0 || self.relay_lease_ms < 1000 || self.relay_edit_interval_ms < 50 {
            return Err(invalid(
                "relay_concurrency must be at least 1, relay_lease_ms at least 1000 and relay_edit_interval_ms at least 50"
                    .into(),
            ));
        }
        if self
            .replica_id
            .as_ref()
            .is_some_and(|id| id.trim().is_empty() || id.len() > 200)
        {
            return Err(invalid("replica_id must be 1 to 200 characters, not blank".into()));
        }
        let allow = self
            .allow
            .iter()
            .map(|pattern| crate::relay::AllowRule::parse(pattern).map_err(|e| invalid(format!("allow: {e}"))))
            .collect::<Result<Vec<_>, _>>()?;
        if self.max_body_bytes < 1024 {
            return Err(invalid("max_body_bytes must be at least 1024".into()));
        }
        if self.http_header_timeout_ms < 100 || self.http_body_timeout_ms < 100 || self.http_max_connections == 0 {
            return Err(invalid(
                "http_header_timeout_ms and http_body_timeout_ms must be at least 100, http_max_connections at least 1"
                    .into(),
            ));
        }
        check_secret("mcp_secret", self.mcp_secret.as_ref())?;
        check_secret("admin_token", self.admin_token.as_ref())?;
        let tools_url = match &self.tools_url {
            Some(url) if !url.trim().is_empty() && self.tools_mode != ToolsMode::Off => {
                if self.mcp_secret.is_none() {
                    return Err(invalid(
                        "tools_url is set but mcp_secret is not: agents' tool tokens derive from it \
                         (make one with `openssl rand -hex 32`)"
                            .into(),
                    ));
                }
                Some(parse_http_url("tools_url", url)?)
            }
            _ => None,
        };
        Ok(Settings {
            server_name,
            homeserver_url,
            appservice_url,
            database_url,
            letta_url,
            letta_token,
            invite,
            admins,
            bot_user_id,
            allow,
            tools_url,
            raw: self,
        })
    }

    fn read_letta_token(&self) -> Result<Option<Secret>, ConfigError> {
        match (&self.letta_token, &self.letta_token_file) {
            (Some(_), Some(_)) => Err(ConfigError::Invalid(
                "set either letta_token or letta_token_file, not both".into(),
            )),
            (Some(token), None) => Ok(Some(token.clone())),
            (None, Some(path)) => std::fs::read_to_string(path)
                .map(|text| Some(Secret::new(text.trim())))
                .map_err(|e| ConfigError::Invalid(format!("letta_token_file {}: cannot read it: {e}", path.display()))),
            (None, None) => Ok(None),
        }
    }
}

/// The least length of `mcp_secret` and `admin_token`: a guessed one lets anyone act as any agent
/// or read every room id.
pub const MIN_SECRET_BYTES: usize = 32;

fn check_secret(key: &str, secret: Option<&Secret>) -> Result<(), ConfigError> {
    let Some(secret) = secret else {
        return Ok(());
    };
    let length = secret.expose().trim().len();
    if length >= MIN_SECRET_BYTES {
        return Ok(());
    }
    let what = if length == 0 {
        "is empty".to_owned()
    } else {
        format!("has {length} bytes")
    };
    Err(ConfigError::Invalid(format!(
        "{key} {what}; it needs at least {MIN_SECRET_BYTES}: make one with `openssl rand -hex 32` \
         (or leave {key} unset to turn its endpoints off)"
    )))
}

fn parse_http_url(key: &str, value: &str) -> Result<Url, ConfigError> {
    let url = Url::parse(value).map_err(|e| ConfigError::Invalid(format!("{key} `{value}` is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ConfigError::Invalid(format!(
            "{key} `{value}` must start with http:// or https://"
        )));
    }
    Ok(url)
}

/// A wildcard bind address is not something the homeserver can dial, so loopback stands in for it.
fn derive_appservice_url(bind: SocketAddr) -> Url {
    let host = match bind.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => "127.0.0.1".to_owned(),
        ip if ip.is_unspecified() => "[::1]".to_owned(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        std::net::IpAddr::V4(ip) => ip.to_string(),
    };
    Url::parse(&format!("http://{host}:{}", bind.port())).expect("a host and port make a URL")
}

/// The Matrix user id grammar for localparts (historical ids aside).
pub fn is_valid_localpart(localpart: &str) -> bool {
    localpart
        .bytes()
        .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'=' | b'-' | b'/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    const MINIMAL: &[(&str, &str)] = &[
        ("LETTA_MATRIX_SERVER_NAME", "example.org"),
        ("LETTA_MATRIX_HOMESERVER_URL", "http://127.0.0.1:8008"),
    ];

    #[test]
    fn two_env_vars_are_enough() {
        let settings = Settings::from_parts("", None, &env(MINIMAL)).unwrap();
        assert_eq!(settings.server_name.as_str(), "example.org");
        assert_eq!(settings.appservice_url.as_str(), "http://127.0.0.1:9000/");
        assert_eq!(settings.database_url, "sqlite://data/letta-matrix.db?mode=rwc");
        assert_eq!(settings.bot_user_id.as_str(), "@letta_bot:example.org");
    }

    #[test]
    fn env_overrides_file_and_takes_types_from_defaults() {
        let toml = "server_name = \"file.org\"\nhomeserver_url = \"http://hs:8008\"\ndatabase_max_connections = 2\n";
        let mut vars = env(&[
            ("LETTA_MATRIX_SERVER_NAME", "env.org"),
            ("LETTA_MATRIX_INVITE", "@alice:env.org, @bob:env.org"),
            ("LETTA_MATRIX_DATABASE_MAX_CONNECTIONS", "3"),
            ("LETTA_MATRIX_BIND", "0.0.0.0:29000"),
        ]);
        vars.push(("UNRELATED".into(), "x".into()));
        let settings = Settings::from_parts(toml, None, &vars).unwrap();
        assert_eq!(settings.server_name.as_str(), "env.org");
        assert_eq!(settings.invite.len(), 2);
        assert_eq!(settings.raw.database_max_connections, 3);
        assert_eq!(settings.appservice_url.as_str(), "http://127.0.0.1:29000/");
    }

    #[test]
    fn missing_server_name_says_how_to_fix_it() {
        let err = Settings::from_parts("", None, &env(&MINIMAL[1..]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("LETTA_MATRIX_SERVER_NAME"), "{err}");
    }

    #[test]
    fn bad_values_are_named() {
        let cases: &[(&str, &str, &str)] = &[
            ("LETTA_MATRIX_HOMESERVER_URL", "not a url", "homeserver_url"),
            ("LETTA_MATRIX_LETTA_URL", "ftp://x", "letta_url"),
            ("LETTA_MATRIX_INVITE", "alice", "invite"),
            ("LETTA_MATRIX_DATABASE_URL", "mysql://x", "database_url"),
            (
                "LETTA_MATRIX_DATABASE_MAX_CONNECTIONS",
                "many",
                "LETTA_MATRIX_DATABASE_MAX_CONNECTIONS",
            ),
            ("LETTA_MATRIX_BIND", "nowhere", "bind"),
            ("LETTA_MATRIX_NO_SUCH_KEY", "1", "no_such_key"),
        ];
        for (var, value, expected) in cases {
            let mut vars = env(MINIMAL);
            vars.push((var.to_string(), value.to_string()));
            let err = Settings::from_parts("", None, &vars).unwrap_err().to_string();
            assert!(err.contains(expected), "{var}={value}: {err}");
        }
    }

    #[test]
    fn unknown_file_key_is_an_error() {
        let err = Settings::from_parts("server_nmae = \"x\"", Some(Path::new("c.toml")), &env(MINIMAL))
            .unwrap_err()
            .to_string();
        assert!(err.contains("server_nmae") && err.contains("c.toml"), "{err}");
    }

    #[test]
    fn example_config_is_valid() {
        let example = include_str!("../config.example.toml");
        let settings = Settings::from_parts(example, Some(Path::new("config.example.toml")), &[]).unwrap();
        assert_eq!(settings.invite.len(), 1);
    }

    #[test]
    fn short_or_blank_secrets_are_refused_with_a_way_to_make_one() {
        let padded = format!("  {}  ", "s".repeat(20));
        for key in ["LETTA_MATRIX_MCP_SECRET", "LETTA_MATRIX_ADMIN_TOKEN"] {
            for value in ["", "   ", "a", "31-bytes-xxxxxxxxxxxxxxxxxxxxxx", padded.as_str()] {
                let mut vars = env(MINIMAL);
                vars.push((key.into(), value.into()));
                let err = Settings::from_parts("", None, &vars).unwrap_err().to_string();
                let name = key.trim_start_matches(ENV_PREFIX).to_lowercase();
                assert!(
                    err.contains(&name) && err.contains("openssl rand -hex 32"),
                    "{key}={value:?}: {err}"
                );
            }
            let mut vars = env(MINIMAL);
            vars.push((key.into(), "k".repeat(MIN_SECRET_BYTES)));
            assert!(Settings::from_parts("", None, &vars).is_ok(), "{key} of 32 bytes");
        }
    }

    #[test]
    fn secrets_do_not_print() {
        let mut vars = env(MINIMAL);
        vars.push(("LETTA_MATRIX_LETTA_TOKEN".into(), "sk-very-secret".into()));
        let settings = Settings::from_parts("", None, &vars).unwrap();
        assert_eq!(settings.letta_token.as_ref().unwrap().expose(), "sk-very-secret");
        assert!(!format!("{settings:?}").contains("sk-very-secret"));
    }
}
