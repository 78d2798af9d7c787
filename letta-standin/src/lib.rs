//! A Letta server stand-in for tests and demos: it speaks Letta 0.16.8's REST shapes (captured
//! from a real server, in `fixtures/`) from in-memory state, because an LLM cannot run in CI.
//!
//! Agents can be created, renamed and deleted between test steps, failures injected, and every
//! request is counted so tests can assert what the bridge asked for.

mod conversations;
mod messages;
mod replies;
mod tools;
mod turn;

pub use replies::Replies;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
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
    /// The headers of the last request to each route.
    headers: BTreeMap<String, HeaderMap>,
    failing: Option<u16>,
    /// The most agents one list page holds, whatever the request asks (as Cloud may).
    agent_page_cap: Option<usize>,
    /// Each main agent's sleeptime companion.
    companions: BTreeMap<String, String>,
    tools: tools::Tools,
    token: Option<String>,
    clock: u64,
    chats: messages::Chats,
    /// Conversation id → its agent.
    conversations: BTreeMap<String, String>,
    /// The conversation the request being served writes to (`None`: the agent's default one).
    /// Set and cleared under the same lock as the turn it serves.
    serving: Option<String>,
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
        self.create_agent_with(&json!({"name": name, "description": description}))
    }

    /// Creates an agent from a `POST /v1/agents/` body (`name`, `description`, `agent_type`,
    /// `enable_sleeptime`) and returns its id; a sleeptime companion is created beside it.
    pub fn create_agent_with(&self, body: &Value) -> String {
        create_from(&mut self.world(), body)["id"].as_str().unwrap().to_owned()
    }

    /// Creates an agent with the id `id` (see [`agent_id_for`]).
    pub fn create_agent_with_id(&self, id: &str, name: &str, description: Option<&str>) {
        create(
            &mut self.world(),
            Some(id.to_owned()),
            name,
            description,
            "letta_v1_agent",
        );
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

    /// How many conversations (besides the default one) the agent has.
    pub fn conversations(&self, agent_id: &str) -> usize {
        self.world().conversations.values().filter(|a| *a == agent_id).count()
    }

    /// Messages sent to agents, in their default conversation or another (turns and decisions).
    pub fn turn_requests(&self) -> usize {
        self.requests("POST /v1/agents/{agent_id}/messages")
            + self.requests("POST /v1/conversations/{conversation_id}/messages")
    }

    pub fn total_requests(&self) -> usize {
        self.world().requests.values().sum()
    }

    /// The headers of the last request to `route` (e.g. `GET /v1/agents/`), to check what the
    /// client sent (`Authorization`, `X-Project`, the SDK version header).
    pub fn last_headers(&self, route: &str) -> Option<HeaderMap> {
        self.world().headers.get(route).cloned()
    }

    /// Caps every agent list page at `cap` agents whatever `limit` asks, as a hosted Letta may.
    pub fn set_agent_page_cap(&self, cap: Option<usize>) {
        self.world().agent_page_cap = cap;
    }

    /// Makes the agent's next turn fail as an LLM error does: in a stream, HTTP 200 with a
    /// `stop_reason` (`llm_api_error` for the `llm_*` kinds), `event: error` carrying
    /// `error_type` and `message`, then `[DONE]`; without streaming, the matching HTTP error.
    /// Nothing of the failed turn is stored.
    pub fn script_error(&self, agent_id: &str, error_type: &str, message: &str) {
        let chat = &mut self.world().chats;
        let errors = &mut chat.chat(agent_id).scripted_errors;
        errors.push_back((error_type.to_owned(), message.to_owned()));
    }

    /// Ends the agent's next completed turn with `reason` (e.g. `max_tokens_exceeded`) instead
    /// of `end_turn`; the answer is still stored and streamed.
    pub fn script_stop_reason(&self, agent_id: &str, reason: &str) {
        let chat = &mut self.world().chats;
        chat.chat(agent_id).scripted_stops.push_back(reason.to_owned());
    }

    /// Makes the agent's next turn call `tool_name` with `arguments_json`. If the agent must ask
    /// approval for that tool the turn stops with `requires_approval` and the call waits;
    /// otherwise the tool "runs" (returns "ok") and the agent answers.
    pub fn script_tool_call(&self, agent_id: &str, tool_name: &str, arguments_json: &str) {
        let chat = &mut self.world().chats;
        let tools = &mut chat.chat(agent_id).scripted_tools;
        tools.push_back((tool_name.to_owned(), arguments_json.to_owned()));
    }

    /// Creates a tool as `POST /v1/tools/` does and returns its id.
    pub fn create_tool(&self, name: &str, default_requires_approval: bool) -> String {
        let source = format!("def {name}() -> str:\n    return 'ok'\n");
        let tool = self.world().tools.create(name, &source, default_requires_approval);
        tool["id"].as_str().unwrap().to_owned()
    }

    /// Attaches a tool to an agent as `PATCH /v1/agents/{id}/tools/attach/{tool_id}` does.
    pub fn attach_tool(&self, agent_id: &str, tool_id: &str) {
        let _ = tools::attach(&mut self.world(), agent_id, tool_id);
    }

    /// The `approval_request_message` the agent waits on, if any.
    pub fn pending_approval(&self, agent_id: &str) -> Option<Value> {
        self.world().chats.pending_approval(agent_id)
    }

    /// Makes every route answer `status` (a Letta having a bad day) until cleared with `None`.
    pub fn set_failing(&self, status: Option<u16>) {
        self.world().failing = status;
    }

    /// Queues the text the agent answers its next turn with (instead of "You said: …").
    pub fn script_reply(&self, agent_id: &str, text: &str) {
        let chat = &mut self.world().chats;
        chat.chat(agent_id).scripted.push_back(text.to_owned());
    }

    /// Queues reasoning the agent streams (and stores) before its next turn's answer.
    pub fn script_reasoning(&self, agent_id: &str, text: &str) {
        let chat = &mut self.world().chats;
        chat.chat(agent_id).scripted_reasoning.push_back(text.to_owned());
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

/// Creates the agent of a `POST /v1/agents/` body, and with `enable_sleeptime` its companion
/// `<name>-sleeptime` of type `sleeptime_agent`, which Letta lists like any agent.
fn create_from(world: &mut World, body: &Value) -> Value {
    let name = body["name"].as_str().unwrap_or_default();
    let agent_type = body["agent_type"].as_str().unwrap_or("letta_v1_agent");
    let mut agent = create(world, None, name, body["description"].as_str(), agent_type);
    if let Some(tags) = body.get("tags").filter(|t| t.is_array()) {
        let id = agent["id"].as_str().unwrap_or_default().to_owned();
        for shape in [&mut world.agents, &mut world.listed] {
            if let Some(stored) = shape.get_mut(&id) {
                stored["tags"] = tags.clone();
            }
        }
        agent["tags"] = tags.clone();
    }
    if body["enable_sleeptime"] == true {
        let companion = create(world, None, &format!("{name}-sleeptime"), None, "sleeptime_agent");
        let (main_id, companion_id) = (agent["id"].clone(), companion["id"].clone());
        let group = json!({"id": format!("group-{}", uuid_like(world.clock)), "manager_type": "sleeptime", "agent_ids": [companion_id], "manager_agent_id": main_id, "sleeptime_agent_frequency": 5});
        for shape in [&mut world.agents, &mut world.listed] {
            if let Some(main) = shape.get_mut(main_id.as_str().unwrap_or_default()) {
                main["enable_sleeptime"] = json!(true);
                main["multi_agent_group"] = group.clone();
                main["managed_group"] = group.clone();
            }
        }
        agent = world.agents[main_id.as_str().unwrap_or_default()].clone();
        let ids = (main_id.as_str(), companion_id.as_str());
        if let (Some(main), Some(companion)) = ids {
            world.companions.insert(main.to_owned(), companion.to_owned());
        }
    }
    agent
}

fn create(world: &mut World, id: Option<String>, name: &str, description: Option<&str>, agent_type: &str) -> Value {
    let id = id.unwrap_or_else(|| format!("agent-{}", uuid_like(world.clock + world.order.len() as u64 + 1)));
    let now = world.tick();
    let mut agent: Value = serde_json::from_str(AGENT_TEMPLATE).expect("the fixture is JSON");
    agent["id"] = json!(id);
    agent["name"] = json!(name);
    agent["description"] = json!(description);
    agent["created_at"] = json!(now);
    agent["updated_at"] = json!(now);
    agent["message_ids"] = json!([]);
    agent["agent_type"] = json!(agent_type);
    let mut listed: Value =
        serde_json::from_str::<Vec<Value>>(LISTED_TEMPLATE).expect("the fixture is a JSON list")[0].clone();
    for field in [
        "id",
        "name",
        "description",
        "created_at",
        "updated_at",
        "message_ids",
        "agent_type",
    ] {
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

/// Removes an agent; a main agent takes its sleeptime companion with it, as in Letta.
fn remove(world: &mut World, agent_id: &str) -> bool {
    if let Some(companion) = world.companions.remove(agent_id) {
        remove(world, &companion);
    }
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
        .route("/v1/runs/", get(messages::runs))
        .route("/v1/conversations/", post(conversations::create))
        .route(
            "/v1/conversations/{conversation_id}/messages",
            get(conversations::list).post(conversations::send),
        )
        .route("/v1/tools/", post(tools::create_tool).put(tools::upsert_tool))
        .route(
            "/v1/mcp-servers/",
            get(tools::list_mcp_servers).post(tools::create_mcp_server),
        )
        .route(
            "/v1/agents/{agent_id}/tools/attach/{tool_id}",
            patch(tools::attach_tool),
        )
        .route(
            "/v1/agents/{agent_id}/tools/approval/{tool_name}",
            patch(tools::set_approval),
        )
        .layer(axum::middleware::from_fn_with_state(world.clone(), count_and_gate))
        .with_state(world)
}

fn detail(status: StatusCode, text: impl Into<String>) -> Response {
    (status, Json(json!({"detail": text.into()}))).into_response()
}

/// Counts every request under its route and keeps its headers, then applies injected failures
/// and the token check of Letta's secure mode (`CheckPasswordMiddleware`: health is exempt).
async fn count_and_gate(State(world): State<Shared>, request: Request, next: Next) -> Response {
    let route = match request.extensions().get::<axum::extract::MatchedPath>() {
        Some(path) => format!("{} {}", request.method(), path.as_str()),
        None => format!("{} {}", request.method(), request.uri().path()),
    };
    let (failing, token) = {
        let mut world = world.lock().unwrap();
        *world.requests.entry(route.clone()).or_default() += 1;
        world.headers.insert(route, request.headers().clone());
        (world.failing, world.token.clone())
    };
    if let Some(status) = failing {
        return detail(StatusCode::from_u16(status).unwrap(), "injected failure");
    }
    let exempt = matches!(request.uri().path(), "/v1/health" | "/v1/health/");
    if let Some(token) = token.filter(|_| !exempt) {
        let header = |name: &str| request.headers().get(name).and_then(|v| v.to_str().ok());
        let bearer = header("authorization") == Some(format!("Bearer {token}").as_str());
        let bare = header("x-bare-password") == Some(format!("password {token}").as_str());
        if !bearer && !bare {
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

/// `GET /v1/agents/`: a bare array, newest first unless `order=asc`; `after`/`before` are
/// relative to that order and an unknown cursor is ignored, as in Letta 0.16.8. `limit`
/// defaults to 50 and 0 means all. `tags` (repeated) keeps agents carrying any of them.
async fn list_agents(
    State(world): State<Shared>,
    headers: axum::http::HeaderMap,
    Query(query): Query<ListQuery>,
    axum::extract::RawQuery(raw): axum::extract::RawQuery,
) -> Response {
    let world = world.lock().unwrap();
    let wanted: Vec<String> = raw
        .as_deref()
        .unwrap_or_default()
        .split('&')
        .filter_map(|pair| pair.strip_prefix("tags="))
        .map(|tag| tag.replace("%2D", "-").replace("%5F", "_"))
        .collect();
    let tagged = |id: &String| {
        wanted.is_empty()
            || world.listed[id]["tags"].as_array().is_some_and(|tags| {
                tags.iter()
                    .any(|t| t.as_str().is_some_and(|t| wanted.iter().any(|w| w == t)))
            })
    };
    let mut ids: Vec<&String> = world.order.iter().filter(|id| tagged(id)).collect();
    if query.order.as_deref() != Some("asc") {
        ids.reverse();
    }
    let position = |cursor: &str| ids.iter().position(|id| id.as_str() == cursor);
    let start = query.after.as_deref().and_then(position).map_or(0, |index| index + 1);
    let end = query.before.as_deref().and_then(position).unwrap_or(ids.len());
    let limit = match query.limit.unwrap_or(50) {
        0 => usize::MAX,
        limit => limit,
    };
    let page: Vec<Value> = ids[start.min(end)..end]
        .iter()
        .take(limit.min(world.agent_page_cap.unwrap_or(usize::MAX)))
        .map(|id| tools::with_relationships(world.listed[*id].clone(), raw.as_deref().unwrap_or_default(), &headers))
        .collect();
    Json(Value::Array(page)).into_response()
}

/// `GET /v1/agents/{id}`; `include=agent.pending_approval` fills `pending_approval`.
async fn get_agent(
    State(world): State<Shared>,
    Path(agent_id): Path<String>,
    headers: axum::http::HeaderMap,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Response {
    let world = world.lock().unwrap();
    let Some(agent) = world.agents.get(&agent_id) else {
        return detail(StatusCode::NOT_FOUND, format!("Agent with ID {agent_id} not found"));
    };
    let query = query.unwrap_or_default();
    let mut agent = tools::with_relationships(agent.clone(), &query, &headers);
    if query.contains("agent.pending_approval") {
        agent["pending_approval"] = world.chats.pending_approval(&agent_id).unwrap_or(Value::Null);
    }
    Json(agent).into_response()
}

async fn create_agent(State(world): State<Shared>, Json(body): Json<Value>) -> Response {
    if !body["name"].is_string() {
        return detail(StatusCode::UNPROCESSABLE_ENTITY, "name is required");
    }
    Json(create_from(&mut world.lock().unwrap(), &body)).into_response()
}

async fn update_agent(State(world): State<Shared>, Path(agent_id): Path<String>, Json(body): Json<Value>) -> Response {
    let mut world = world.lock().unwrap();
    let now = world.tick();
    if !set_fields(&mut world, &agent_id, &body, &now) {
        return detail(StatusCode::NOT_FOUND, format!("Agent with ID {agent_id} not found"));
    }
    if let Some(secrets) = body.get("secrets").and_then(Value::as_object) {
        tools::replace_secrets(&mut world, &agent_id, secrets);
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
mod tests;
