//! An OpenAI-compatible model server for tests in which everything but the language model is real:
//! a real Letta's agents are pointed at it (`llm_config.model_endpoint` = [`ModelStandin::url`],
//! `model_endpoint_type: openai`) and it answers from a script per model, echoing the user when
//! the script is empty.
//!
//! Letta 0.16.8 reaches it through the `openai` Python SDK with `base_url` = the endpoint:
//! `POST /v1/chat/completions` (streamed with `stream_options.include_usage`, or not),
//! `POST /v1/embeddings` (the SDK asks for base64 unless told otherwise) and `GET /v1/models`.
//! The request's `model` is `llm_config.model` as given, which is how answers are routed.

mod chat;
mod embeddings;

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

pub use embeddings::{EMBEDDING_DIM, EMBEDDING_MODEL, embed};

/// The context window [`ModelStandin::llm_config`] declares.
pub const CONTEXT_WINDOW: u64 = 32_000;

/// What one chat completion answers.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// `You said: <text of the last user message>`.
    Echo,
    /// This text.
    Reply(String),
    /// A call of the named tool. After it a memgpt-style agent takes another step only if
    /// `arguments` has `"request_heartbeat": true`; a `letta_v1_agent` does unless a tool rule
    /// ends the turn.
    ToolCall { name: String, arguments: Value },
    /// Several tool calls in one answer (parallel tool calling).
    ToolCalls(Vec<(String, Value)>),
    /// This HTTP status with an OpenAI-style error body.
    Fail(u16),
    /// Text and tool calls in one answer. Letta stores them as one message, whose listed items (an
    /// assistant or reasoning item, and the tool call) share its id.
    Said { text: String, calls: Vec<(String, Value)> },
}

impl Step {
    pub fn reply(text: impl Into<String>) -> Self {
        Self::Reply(text.into())
    }

    pub fn tool_call(name: impl Into<String>, arguments: Value) -> Self {
        Self::ToolCall {
            name: name.into(),
            arguments,
        }
    }
}

/// Everything known about one model name.
#[derive(Default)]
struct Model {
    script: VecDeque<Step>,
    first_token: Duration,
    per_token: Duration,
    requests: Vec<Value>,
    in_flight: usize,
    max_concurrent: usize,
    completions: usize,
}

#[derive(Default)]
struct World {
    models: BTreeMap<String, Model>,
    /// Counters behind the completion and tool-call ids, so ids are the same run after run.
    completion_ids: u64,
    call_ids: u64,
}

impl World {
    fn model(&mut self, name: &str) -> &mut Model {
        self.models.entry(name.to_owned()).or_default()
    }
}

type Shared = Arc<Mutex<World>>;

fn lock(world: &Shared) -> MutexGuard<'_, World> {
    // A test that panicked elsewhere must not hide what the model saw.
    world.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The model server; it stops when dropped.
pub struct ModelStandin {
    address: SocketAddr,
    world: Shared,
    server: tokio::task::JoinHandle<()>,
}

impl ModelStandin {
    /// Starts on a free loopback port, in the current tokio runtime.
    pub async fn start() -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap())
            .await
            .expect("a free loopback port")
    }

    /// Starts on `address`.
    pub async fn start_on(address: SocketAddr) -> std::io::Result<Self> {
        let world: Shared = Arc::default();
        let listener = tokio::net::TcpListener::bind(address).await?;
        let address = listener.local_addr()?;
        let app = router(world.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { address, world, server })
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The OpenAI base URL, `http://127.0.0.1:PORT/v1`.
    pub fn url(&self) -> String {
        format!("http://{}/v1", self.address)
    }

    /// An `llm_config` for Letta's create-agent body that points the agent at this server under
    /// the model name `model`.
    ///
    /// Letta 0.16.8 reads meaning into some names: `o1*`, `o3*`, `o4*` and `gpt-5*` go to the
    /// Responses API (`/v1/responses`, not served here), a `-fast` suffix is cut off before the
    /// request, `gpt-oss` and `glm-5` change the request. Names like `standin-alice` are plain.
    pub fn llm_config(&self, model: &str) -> Value {
        json!({
            "model": model,
            "model_endpoint_type": "openai",
            "model_endpoint": self.url(),
            "context_window": CONTEXT_WINDOW,
            "put_inner_thoughts_in_kwargs": false,
        })
    }

    /// An `embedding_config` for Letta's create-agent body that embeds with this server.
    pub fn embedding_config(&self) -> Value {
        json!({
            "embedding_endpoint_type": "openai",
            "embedding_endpoint": self.url(),
            "embedding_model": EMBEDDING_MODEL,
            "embedding_dim": EMBEDDING_DIM,
            "embedding_chunk_size": 300,
        })
    }

    fn world(&self) -> MutexGuard<'_, World> {
        lock(&self.world)
    }

    /// Queues what the next chat completions for `model` answer, in order, after any steps
    /// already queued. With the queue empty a completion answers [`Step::Echo`].
    pub fn script(&self, model: &str, steps: impl IntoIterator<Item = Step>) {
        self.world().model(model).script.extend(steps);
    }

    /// Delays the answers for `model` from the next request on: `first_token` before the first
    /// chunk, `per_token` between chunks (an unstreamed answer takes as long as a streamed one,
    /// a [`Step::Fail`] takes `first_token`).
    pub fn set_latency(&self, model: &str, first_token: Duration, per_token: Duration) {
        let mut world = self.world();
        let model = world.model(model);
        model.first_token = first_token;
        model.per_token = per_token;
    }

    /// Every chat-completions request body received for `model`, in arrival order.
    pub fn requests(&self, model: &str) -> Vec<Value> {
        self.world()
            .models
            .get(model)
            .map(|m| m.requests.clone())
            .unwrap_or_default()
    }

    /// All text the model was shown: every message content of every request for `model`, one
    /// message a line. Tool-call arguments are not message content and are not included.
    pub fn seen_text(&self, model: &str) -> String {
        let requests = self.requests(model);
        let mut seen = Vec::new();
        for request in &requests {
            for message in request["messages"].as_array().into_iter().flatten() {
                if let Some(text) = chat::content_text(&message["content"]) {
                    seen.push(text);
                }
            }
        }
        seen.join("\n")
    }

    /// The most chat completions for `model` that were being answered at once.
    pub fn max_concurrent(&self, model: &str) -> usize {
        self.world().models.get(model).map_or(0, |m| m.max_concurrent)
    }

    /// How many chat completions for `model` were answered to the end (a streamed one when its
    /// `[DONE]` is sent); [`Step::Fail`] answers are not counted.
    pub fn completions(&self, model: &str) -> usize {
        self.world().models.get(model).map_or(0, |m| m.completions)
    }
}

impl Drop for ModelStandin {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn router(world: Shared) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/embeddings", post(create_embeddings))
        .route("/v1/models", get(list_models))
        .with_state(world)
}

/// An OpenAI-style error response.
fn error(status: StatusCode, message: &str, kind: &str) -> Response {
    let body = json!({"error": {"message": message, "type": kind, "code": null}});
    (status, axum::Json(body)).into_response()
}

/// The JSON object a request body must be, or why it is not one.
fn parse(body: &Bytes) -> Result<Value, String> {
    match serde_json::from_slice::<Value>(body) {
        Ok(value) if value.is_object() => Ok(value),
        Ok(_) => Err("the body is not a JSON object".to_owned()),
        Err(e) => Err(format!("invalid JSON: {e}")),
    }
}

fn invalid(message: &str) -> Response {
    error(StatusCode::BAD_REQUEST, message, "invalid_request_error")
}

/// Counts a completion as in flight from arrival until its answer is complete or dropped.
struct InFlight {
    world: Shared,
    model: String,
    finished: bool,
}

impl InFlight {
    fn finish(mut self) {
        self.finished = true;
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut world = lock(&self.world);
        let model = world.model(&self.model);
        model.in_flight -= 1;
        if self.finished {
            model.completions += 1;
        }
    }
}

async fn chat_completions(State(world): State<Shared>, body: Bytes) -> Response {
    let request = match parse(&body) {
        Ok(request) => request,
        Err(message) => return invalid(&message),
    };
    let model_name = request["model"].as_str().unwrap_or_default().to_owned();
    let (step, first_token, per_token, completion_number) = {
        let mut world = lock(&world);
        world.completion_ids += 1;
        let completion_number = world.completion_ids;
        let model = world.model(&model_name);
        model.requests.push(request.clone());
        model.in_flight += 1;
        model.max_concurrent = model.max_concurrent.max(model.in_flight);
        let step = model.script.pop_front().unwrap_or(Step::Echo);
        (step, model.first_token, model.per_token, completion_number)
    };
    let in_flight = InFlight {
        world: world.clone(),
        model: model_name.clone(),
        finished: false,
    };

    let answer = match chat::answer(&request, step) {
        chat::Answer::Fail(status) => {
            tokio::time::sleep(first_token).await;
            drop(in_flight);
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let mut response = error(status, "model stand-in told to fail", "server_error");
            // The openai SDK retries 408, 409, 429 and 5xx twice unless told not to; one Fail
            // step is meant to be one failed call as Letta sees it.
            response
                .headers_mut()
                .insert("x-should-retry", HeaderValue::from_static("false"));
            return response;
        }
        chat::Answer::Message(message) => message,
    };
    let ids = {
        let mut world = lock(&world);
        let first = world.call_ids + 1;
        world.call_ids += answer.calls().len() as u64;
        chat::Ids {
            completion: format!("chatcmpl-standin-{completion_number}"),
            first_call: first,
        }
    };
    let completion = chat::Completion::new(&request, &model_name, answer, ids);

    if request["stream"].as_bool() != Some(true) {
        tokio::time::sleep(first_token + per_token * completion.pieces()).await;
        let body = completion.unstreamed();
        in_flight.finish();
        return axum::Json(body).into_response();
    }

    let include_usage = request["stream_options"]["include_usage"].as_bool() == Some(true);
    let mut events: Vec<String> = completion
        .chunks(include_usage)
        .iter()
        .map(|chunk| format!("data: {chunk}\n\n"))
        .collect();
    events.push("data: [DONE]\n\n".to_owned());
    let events = stream_events(events, first_token, per_token, in_flight);
    let mut response = axum::body::Body::from_stream(events).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// The SSE events with their delays; the completion counts as finished as the last is sent.
fn stream_events(
    events: Vec<String>,
    first_token: Duration,
    per_token: Duration,
    in_flight: InFlight,
) -> impl futures::Stream<Item = Result<Bytes, std::convert::Infallible>> {
    let total = events.len();
    let state = (events.into_iter().enumerate(), Some(in_flight));
    futures::stream::unfold(state, move |(mut events, mut in_flight)| async move {
        let (index, event) = events.next()?;
        tokio::time::sleep(if index == 0 { first_token } else { per_token }).await;
        if index + 1 == total
            && let Some(in_flight) = in_flight.take()
        {
            in_flight.finish();
        }
        Some((Ok(Bytes::from(event)), (events, in_flight)))
    })
}

async fn create_embeddings(body: Bytes) -> Response {
    match parse(&body).and_then(|request| embeddings::answer(&request)) {
        Ok(body) => axum::Json(body).into_response(),
        Err(message) => invalid(&message),
    }
}

async fn list_models(State(world): State<Shared>) -> Response {
    let mut ids: Vec<String> = lock(&world).models.keys().cloned().collect();
    ids.extend(["standin".to_owned(), EMBEDDING_MODEL.to_owned()]);
    ids.sort();
    ids.dedup();
    let data: Vec<Value> = ids
        .iter()
        .map(|id| json!({"id": id, "object": "model", "created": 0, "owned_by": "model-standin"}))
        .collect();
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

#[cfg(test)]
mod tests;
