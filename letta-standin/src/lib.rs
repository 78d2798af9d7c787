//! A Letta server stand-in for tests and demos: it speaks Letta 0.16.8's REST shapes (captured
//! from a real server, in `fixtures/`) from in-memory state, because an LLM cannot run in CI.
//!
//! Agents can be created, renamed and deleted between test steps, failures injected, and every
//! request is counted so tests can assert what the bridge asked for.

mod messages;
mod replies;

pub use replies::Replies;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

/// An agent as the real server returned it from `GET /v1/agents/{id}` and `POST /v1/agents/`.
const AGENT_TEMPLATE: &str = include_str!("../fixtures/agent.json");
/// The same agent as the real server listed it to a 1.0 client: without relationships, a third
/// of the size, which matters for listing thousands.
const LISTED_TEMPLATE: &str = include_str!("../fixtures/agents_list.json");

#[derive(Default)]
struct World {
    agents: BTreeMap<String, Value>,
    /// Each agent as the list shows it, kept beside the full one.
    listed: BTreeMap<String, Value>,
    /// Insertion order stands in for `created_at` order, which ties on fast machines.
    order: Vec<String>,
    requests: BTreeMap<String, usize>,
    failing: Option<u16>,
    token: Option<String>,
    clock: u64,
    chats: messages::Chats,
}

impl World {
    /// The current time as Letta writes dates, strictly increasing (a real Letta's dates are real:
    /// the bridge's history import tells old conversation from new by them).
    fn tick(&mut self) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or_default();
        self.clock = now.max(self.clock + 1);
        rfc3339_micros(self.clock)
    }
}

/// Microseconds since the epoch as `YYYY-MM-DDTHH:MM:SS.ffffffZ` (civil-from-days, proleptic
/// Gregorian), so the stand-in needs no date crate.
fn rfc3339_micros(micros: u64) -> String {
    let seconds = micros / 1_000_000;
    let (days, of_day) = ((seconds / 86_400) as i64, seconds % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        of_day / 3600,
        (of_day / 60) % 60,
        of_day % 60,
        micros % 1_000_000
    )
}

type Shared = Arc<Mutex<World>>;

pub struct LettaStandin {
    address: SocketAddr,
    world: Shared,
    server: tokio::task::JoinHandle<()>,
}

impl LettaStandin {
    /// Starts on a free loopback port.
    pub async fn start() -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap(), None)
            .await
            .expect("a free port")
    }

    /// Starts on `address`, requiring `token` as a Bearer token when given.
    pub async fn start_on(address: SocketAddr, token: Option<String>) -> std::io::Result<Self> {
        let world: Shared = Arc::new(Mutex::new(World {
            token,
            ..World::default()
        }));
        let listener = tokio::net::TcpListener::bind(address).await?;
        let address = listener.local_addr()?;
        let app = router(world.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { address, world, server })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    fn world(&self) -> MutexGuard<'_, World> {
        self.world.lock().expect("no test panicked while holding the lock")
    }

    /// Creates an agent the way `POST /v1/agents/` does and returns its id.
    pub fn create_agent(&self, name: &str, description: Option<&str>) -> String {
        create(&mut self.world(), None, name, description)["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Creates an agent with the id `id` (see [`agent_id_for`]).
    pub fn create_agent_with_id(&self, id: &str, name: &str, description: Option<&str>) {
        create(&mut self.world(), Some(id.to_owned()), name, description);
    }

    pub fn rename_agent(&self, agent_id: &str, name: &str) {
        let mut world = self.world();
        let now = world.tick();
        set_fields(&mut world, agent_id, &json!({"name": name}), &now);
    }

    pub fn delete_agent(&self, agent_id: &str) {
        let mut world = self.world();
        remove(&mut world, agent_id);
    }

    pub fn agent_ids(&self) -> Vec<String> {
        self.world().order.clone()
    }

    /// How many requests reached `route`, e.g. `GET /v1/agents/`.
    pub fn requests(&self, route: &str) -> usize {
        self.world().requests.get(route).copied().unwrap_or(0)
    }

    pub fn total_requests(&self) -> usize {
        self.world().requests.values().sum()
    }

    /// Makes every route answer `status` (a Letta having a bad day) until cleared with `None`.
    pub fn set_failing(&self, status: Option<u16>) {
        self.world().failing = status;
    }

    /// Queues the text the agent answers its next turn with (instead of "You said: …").
    pub fn script_reply(&self, agent_id: &str, text: &str) {
        self.world().chats.script_reply(agent_id, text);
    }

    /// Queues reasoning the agent streams (and stores) before its next turn's answer.
    pub fn script_reasoning(&self, agent_id: &str, text: &str) {
        self.world().chats.script_reasoning(agent_id, text);
    }

    /// How long the agent thinks before its first token, and between tokens.
    pub fn set_latency(&self, agent_id: &str, first_token: Duration, per_token: Duration) {
        self.world().chats.set_latency(agent_id, first_token, per_token);
    }

    /// The latency of every agent without one of its own.
    pub fn set_default_latency(&self, first_token: Duration, per_token: Duration) {
        self.world().chats.set_default_latency(first_token, per_token);
    }

    /// How many characters one streamed token carries (8 unless set).
    pub fn set_chunk_chars(&self, chars: usize) {
        self.world().chats.set_chunk_chars(chars);
    }

    /// What agents answer when no reply is scripted ([`Replies::Echo`] unless set).
    pub fn set_replies(&self, replies: Replies) {
        self.world().chats.set_replies(replies);
    }

    /// The agent's message history, oldest first.
    pub fn messages(&self, agent_id: &str) -> Vec<Value> {
        self.world().chats.messages(agent_id)
    }

    /// The user messages the agent was sent, oldest first.
    pub fn user_messages(&self, agent_id: &str) -> Vec<Value> {
        self.messages(agent_id)
            .into_iter()
            .filter(|m| m["message_type"] == "user_message")
            .collect()
    }

    /// The most turns this agent ever ran at once.
    pub fn max_concurrent(&self, agent_id: &str) -> usize {
        self.world().chats.max_concurrent(agent_id)
    }

    /// Appends to the agent's history directly: a conversation from before the bridge.
    pub fn add_history(&self, agent_id: &str, role: &str, text: &str, date: &str) {
        messages::add_history(&mut self.world(), agent_id, role, text, date);
    }

    pub fn stop(self) {
        self.server.abort();
    }
}

impl Drop for LettaStandin {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn create(world: &mut World, id: Option<String>, name: &str, description: Option<&str>) -> Value {
    let id = id.unwrap_or_else(|| format!("agent-{}", uuid_like(world.clock + world.order.len() as u64 + 1)));
    let now = world.tick();
    let mut agent: Value = serde_json::from_str(AGENT_TEMPLATE).expect("the fixture is JSON");
    agent["id"] = json!(id);
    agent["name"] = json!(name);
    agent["description"] = json!(description);
    agent["created_at"] = json!(now);
    agent["updated_at"] = json!(now);
    agent["message_ids"] = json!([]);
    let mut listed: Value =
        serde_json::from_str::<Vec<Value>>(LISTED_TEMPLATE).expect("the fixture is a JSON list")[0].clone();
    for field in ["id", "name", "description", "created_at", "updated_at", "message_ids"] {
        listed[field] = agent[field].clone();
    }
    world.agents.insert(id.clone(), agent.clone());
    world.listed.insert(id.clone(), listed);
    world.order.push(id);
    agent
}

/// Applies `changes` (name, description) to both shapes of the agent; false if it is unknown.
fn set_fields(world: &mut World, agent_id: &str, changes: &Value, now: &str) -> bool {
    let mut found = false;
    for shape in [&mut world.agents, &mut world.listed] {
        if let Some(agent) = shape.get_mut(agent_id) {
            for field in ["name", "description"] {
                if let Some(value) = changes.get(field) {
                    agent[field] = value.clone();
                }
            }
            agent["updated_at"] = json!(now);
            found = true;
        }
    }
    found
}

fn remove(world: &mut World, agent_id: &str) -> bool {
    world.listed.remove(agent_id);
    world.order.retain(|id| id != agent_id);
    world.agents.remove(agent_id).is_some()
}

/// A uuid4-shaped id; random so that ids never repeat across stand-ins in one test run.
fn uuid_like(salt: u64) -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("random bytes");
    bytes[0] ^= salt as u8;
    uuid_shaped(bytes)
}

/// An agent id made from `name` alone, the same on every start: a bridge that kept its rooms
/// between runs of a stand-in finds the same agents in them (the demo does).
pub fn agent_id_for(name: &str) -> String {
    // FNV-1a, twice with different offsets: stable across Rust versions, unlike std's hasher.
    let fnv = |offset: u64| {
        name.bytes().fold(offset, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x100_0000_01b3)
        })
    };
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&fnv(0xcbf2_9ce4_8422_2325).to_be_bytes());
    bytes[8..].copy_from_slice(&fnv(0x6c62_272e_07bb_0142).to_be_bytes());
    format!("agent-{}", uuid_shaped(bytes))
}

fn uuid_shaped(mut bytes: [u8; 16]) -> String {
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

fn router(world: Shared) -> Router {
    Router::new()
        .route("/v1/health/", get(health))
        .route("/v1/agents/", get(list_agents).post(create_agent))
        .route(
            "/v1/agents/{agent_id}",
            get(get_agent).patch(update_agent).delete(delete_agent),
        )
        .route(
            "/v1/agents/{agent_id}/messages",
            get(messages::list).post(messages::send),
        )
        .layer(axum::middleware::from_fn_with_state(world.clone(), count_and_gate))
        .with_state(world)
}

fn detail(status: StatusCode, text: impl Into<String>) -> Response {
    (status, Json(json!({"detail": text.into()}))).into_response()
}

/// Counts every request under its route, then applies injected failures and the token check.
async fn count_and_gate(State(world): State<Shared>, request: Request, next: Next) -> Response {
    let route = match request.extensions().get::<axum::extract::MatchedPath>() {
        Some(path) => format!("{} {}", request.method(), path.as_str()),
        None => format!("{} {}", request.method(), request.uri().path()),
    };
    let (failing, token) = {
        let mut world = world.lock().unwrap();
        *world.requests.entry(route).or_default() += 1;
        (world.failing, world.token.clone())
    };
    if let Some(status) = failing {
        return detail(StatusCode::from_u16(status).unwrap(), "injected failure");
    }
    if let Some(token) = token {
        let given = request.headers().get("authorization").and_then(|v| v.to_str().ok());
        if given != Some(format!("Bearer {token}").as_str()) {
            return detail(StatusCode::UNAUTHORIZED, "Unauthorized");
        }
    }
    next.run(request).await
}

async fn health() -> Json<Value> {
    Json(serde_json::from_str(include_str!("../fixtures/health.json")).unwrap())
}

#[derive(Deserialize)]
struct ListQuery {
    limit: Option<usize>,
    after: Option<String>,
    before: Option<String>,
    order: Option<String>,
}

/// `GET /v1/agents/`: a bare array, newest first unless `order=asc`, cursor paging by agent id.
async fn list_agents(State(world): State<Shared>, Query(query): Query<ListQuery>) -> Response {
    let world = world.lock().unwrap();
    let mut ids: Vec<&String> = world.order.iter().collect();
    if query.order.as_deref() != Some("asc") {
        ids.reverse();
    }
    let position = |cursor: &str| ids.iter().position(|id| id.as_str() == cursor);
    let start = match query.after.as_deref() {
        Some(cursor) => match position(cursor) {
            Some(index) => index + 1,
            None => return detail(StatusCode::NOT_FOUND, format!("Agent with ID {cursor} not found")),
        },
        None => 0,
    };
    let end = query.before.as_deref().and_then(position).unwrap_or(ids.len());
    let page: Vec<Value> = ids[start.min(end)..end]
        .iter()
        .take(query.limit.unwrap_or(50))
        .map(|id| world.listed[*id].clone())
        .collect();
    Json(Value::Array(page)).into_response()
}

async fn get_agent(State(world): State<Shared>, Path(agent_id): Path<String>) -> Response {
    match world.lock().unwrap().agents.get(&agent_id) {
        Some(agent) => Json(agent.clone()).into_response(),
        None => detail(StatusCode::NOT_FOUND, format!("Agent with ID {agent_id} not found")),
    }
}

async fn create_agent(State(world): State<Shared>, Json(body): Json<Value>) -> Response {
    let Some(name) = body["name"].as_str() else {
        return detail(StatusCode::UNPROCESSABLE_ENTITY, "name is required");
    };
    let agent = create(&mut world.lock().unwrap(), None, name, body["description"].as_str());
    Json(agent).into_response()
}

async fn update_agent(State(world): State<Shared>, Path(agent_id): Path<String>, Json(body): Json<Value>) -> Response {
    let mut world = world.lock().unwrap();
    let now = world.tick();
    if !set_fields(&mut world, &agent_id, &body, &now) {
        return detail(StatusCode::NOT_FOUND, format!("Agent with ID {agent_id} not found"));
    }
    Json(world.agents[&agent_id].clone()).into_response()
}

async fn delete_agent(State(world): State<Shared>, Path(agent_id): Path<String>) -> Response {
    if !remove(&mut world.lock().unwrap(), &agent_id) {
        return detail(StatusCode::NOT_FOUND, format!("Agent with ID {agent_id} not found"));
    }
    Json(json!({"message": format!("Agent id={agent_id} successfully deleted")})).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_rfc3339() {
        assert_eq!(rfc3339_micros(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(rfc3339_micros(1_795_000_000_123_456), "2026-11-18T11:06:40.123456Z");
        assert_eq!(rfc3339_micros(951_782_400_000_000), "2000-02-29T00:00:00.000000Z");
    }

    #[test]
    fn ids_look_like_letta_ids() {
        let id = uuid_like(7);
        let parts: Vec<&str> = id.split('-').collect();
        assert_eq!(parts.iter().map(|p| p.len()).collect::<Vec<_>>(), [8, 4, 4, 4, 12]);
        assert!(parts[2].starts_with('4'), "version 4: {id}");
        assert_ne!(uuid_like(7), uuid_like(7));
    }

    #[test]
    fn ids_for_names_are_stable_and_distinct() {
        assert_eq!(agent_id_for("Ada"), agent_id_for("Ada"));
        assert_ne!(agent_id_for("Ada"), agent_id_for("Grace"));
        assert!(agent_id_for("Ada").starts_with("agent-"));
        assert_eq!(agent_id_for("Ada").len(), uuid_like(0).len() + "agent-".len());
    }

    #[tokio::test]
    async fn lists_newest_first_unless_asked_and_pages_by_cursor() {
        let letta = LettaStandin::start().await;
        let ids: Vec<String> = ["a", "b", "c"]
            .iter()
            .map(|name| letta.create_agent(name, None))
            .collect();
        let list = |query: String| {
            let url = format!("{}/v1/agents/?{query}", letta.url());
            async move {
                let page: Vec<Value> = reqwest_free_get(&url).await;
                page.iter()
                    .map(|a| a["id"].as_str().unwrap().to_owned())
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(
            list(String::new()).await,
            [ids[2].clone(), ids[1].clone(), ids[0].clone()]
        );
        assert_eq!(
            list(format!("order=asc&limit=1&after={}", ids[0])).await,
            [ids[1].clone()]
        );
        letta.delete_agent(&ids[1]);
        assert_eq!(list("order=asc".into()).await, [ids[0].clone(), ids[2].clone()]);
        assert_eq!(letta.requests("GET /v1/agents/"), 3);
    }

    /// A plain HTTP/1.1 GET over a TCP stream: the stand-in's tests need no HTTP client crate.
    async fn reqwest_free_get(url: &str) -> Vec<Value> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let rest = url.strip_prefix("http://").unwrap();
        let (host, path) = rest.split_once('/').unwrap();
        let mut stream = tokio::net::TcpStream::connect(host).await.unwrap();
        let request = format!("GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let (_, body) = response.split_once("\r\n\r\n").unwrap();
        serde_json::from_str(body).unwrap()
    }
}
