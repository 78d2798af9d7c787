//! A Letta server for tests, driven through its REST API only: the real Letta 0.16.8 that
//! `scripts/test` runs (`LETTA_MATRIX_TEST_LETTA_URL`), whose agents' language model is a
//! [`ModelStandin`] in the test's own process, or our stand-in. The same scenario runs on both;
//! only scripting what an agent answers differs.

use std::collections::HashMap;
use std::sync::Mutex;

use letta_matrix::config::Secret;
use letta_matrix::letta::LettaClient;
use letta_standin::LettaStandin;
use model_standin::{ModelStandin, Step};
use serde_json::{Value, json};

pub const PYTHON_ENV: &str = "LETTA_MATRIX_TEST_LETTA_PYTHON";
pub const URL_ENV: &str = "LETTA_MATRIX_TEST_LETTA_URL";
pub const TOKEN_ENV: &str = "LETTA_MATRIX_TEST_LETTA_TOKEN";
/// Set by `scripts/test`: a missing server is then a failure, not a skip.
pub const REQUIRE_ENV: &str = "LETTA_MATRIX_TEST_REQUIRE_REAL_LETTA";

pub struct LettaServer {
    pub url: String,
    pub token: Option<String>,
    pub model: ModelStandin,
    /// Set when this is our stand-in rather than the real server.
    pub standin: Option<LettaStandin>,
    /// Every agent this test creates carries this tag, and a bridge in front of the shared real
    /// server is told to bridge only it (`agent_tags`): tests running side by side on one Letta
    /// do not see each other's agents.
    pub tag: String,
    http: reqwest::Client,
    /// Agent id → the model name its `llm_config` routes to.
    models: Mutex<HashMap<String, String>>,
}

impl LettaServer {
    /// The real server, or `None` (said on stderr) where none runs and none is required.
    pub async fn real() -> Option<Self> {
        let url = match std::env::var(URL_ENV) {
            Ok(url) => url,
            Err(_) if std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1") => {
                panic!("{URL_ENV} is not set though {REQUIRE_ENV}=1: scripts/test starts the real Letta")
            }
            Err(_) => {
                eprintln!("no real Letta: {URL_ENV} is not set (scripts/test starts one); this test did not run");
                return None;
            }
        };
        Some(Self {
            url,
            token: std::env::var(TOKEN_ENV).ok().filter(|t| !t.is_empty()),
            model: ModelStandin::start().await,
            standin: None,
            tag: unique_tag(),
            http: reqwest::Client::new(),
            models: Mutex::default(),
        })
    }

    /// The python of the real Letta's venv, whose `mcp` package is the MCP client Letta uses; `None`
    /// (said on stderr) where no real Letta was installed and none is required.
    pub fn python() -> Option<std::path::PathBuf> {
        match std::env::var(PYTHON_ENV) {
            Ok(python) => Some(python.into()),
            Err(_) if std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1") => {
                panic!("{PYTHON_ENV} is not set though {REQUIRE_ENV}=1: scripts/test installs the real Letta")
            }
            Err(_) => {
                eprintln!("no real Letta: {PYTHON_ENV} is not set (scripts/test sets it); this test did not run");
                None
            }
        }
    }

    /// Our stand-in, requiring a token as the real server in secure mode does.
    pub async fn standin() -> Self {
        let token = "standin-password".to_owned();
        let standin = LettaStandin::start_on("127.0.0.1:0".parse().unwrap(), Some(token.clone()))
            .await
            .unwrap();
        Self {
            url: standin.url(),
            token: Some(token),
            model: ModelStandin::start().await,
            standin: Some(standin),
            tag: unique_tag(),
            http: reqwest::Client::new(),
            models: Mutex::default(),
        }
    }

    pub fn is_real(&self) -> bool {
        self.standin.is_none()
    }

    /// Our product's client for this server.
    pub fn client(&self) -> LettaClient {
        LettaClient::new(self.url.parse().unwrap(), self.token.clone().map(Secret::new))
    }

    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.url))
            .header("X-Stainless-Package-Version", "1.0.0");
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        request
    }

    /// Sends `body` (or nothing) and returns the JSON answer, failing the test on an error status.
    pub async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self.request(method.clone(), path);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        assert!(status.is_success(), "{method} {path}: HTTP {status}: {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    /// A new agent of `agent_type` (`letta_v1_agent`, `memgpt_v2_agent`, …) answering through
    /// its own model name, so scripts and recordings are per agent. `extra` is merged into the body.
    pub async fn create_agent_with(&self, name: &str, agent_type: &str, extra: Value) -> String {
        let mut random = [0u8; 6];
        getrandom::fill(&mut random).unwrap();
        let model = format!("standin-{}", hex::encode(random));
        let mut body = json!({
            "name": name,
            "agent_type": agent_type,
            "llm_config": self.model.llm_config(&model),
            "embedding_config": self.model.embedding_config(),
            "tags": [self.tag],
            "memory_blocks": [
                {"label": "human", "value": "People who write to me through Matrix."},
                {"label": "persona", "value": format!("I am {name}.")}
            ],
        });
        if let (Some(body), Value::Object(extra)) = (body.as_object_mut(), extra) {
            body.extend(extra);
        }
        let agent = self.call(reqwest::Method::POST, "/v1/agents/", Some(body)).await;
        let id = agent["id"].as_str().expect("an agent id").to_owned();
        self.models.lock().unwrap().insert(id.clone(), model);
        id
    }

    pub async fn create_agent(&self, name: &str) -> String {
        self.create_agent_with(name, "letta_v1_agent", json!({})).await
    }

    pub fn model_of(&self, agent_id: &str) -> String {
        self.models.lock().unwrap()[agent_id].clone()
    }

    /// What the agent's next model calls answer. The stand-in has no model: its agents are told
    /// the same through its own knobs.
    pub fn script(&self, agent_id: &str, steps: impl IntoIterator<Item = Step>) {
        let Some(standin) = &self.standin else {
            self.model.script(&self.model_of(agent_id), steps);
            return;
        };
        for step in steps {
            match step {
                Step::Echo => {}
                Step::Reply(text) => standin.script_reply(agent_id, &text),
                Step::ToolCall { name, arguments } => standin.script_tool_call(agent_id, &name, &arguments.to_string()),
                Step::ToolCalls(calls) => {
                    for (name, arguments) in calls {
                        standin.script_tool_call(agent_id, &name, &arguments.to_string());
                    }
                }
                Step::Fail(_) => standin.script_error(agent_id, "llm_error", "model stand-in told to fail"),
                // The stand-in's step that shares an id: reasoning beside the next answer.
                Step::Said { text, .. } => standin.script_reasoning(agent_id, &text),
            }
        }
    }

    /// Everything the agent was told so far (on the real server: what its model was shown).
    pub fn seen_text(&self, agent_id: &str) -> String {
        match &self.standin {
            Some(standin) => standin
                .messages(agent_id)
                .iter()
                .filter_map(|m| m["content"].as_str())
                .collect::<Vec<_>>()
                .join("\n"),
            None => self.model.seen_text(&self.model_of(agent_id)),
        }
    }

    /// Waits until the agent's model (or the stand-in agent) has been sent `text`.
    pub async fn wait_seen(&self, agent_id: &str, text: &str) {
        super::wait::eventually(
            &format!("{text:?} sent to {agent_id}"),
            std::time::Duration::from_secs(120),
            || async { self.seen_text(agent_id).contains(text).then_some(()) },
        )
        .await;
    }

    pub async fn rename(&self, agent_id: &str, name: &str) {
        self.call(
            reqwest::Method::PATCH,
            &format!("/v1/agents/{agent_id}"),
            Some(json!({"name": name})),
        )
        .await;
    }

    pub async fn delete(&self, agent_id: &str) {
        self.call(reqwest::Method::DELETE, &format!("/v1/agents/{agent_id}"), None)
            .await;
    }

    /// Creates a tool (Python source, as Letta runs custom tools) that needs a person's
    /// approval, and attaches it to the agent; returns its name, unique on the server.
    pub async fn attach_approval_tool(&self, agent_id: &str) -> String {
        let mut random = [0u8; 4];
        getrandom::fill(&mut random).unwrap();
        let tool = format!("guarded_action_{}", hex::encode(random));
        let source = format!(
            "def {tool}(target: str) -> str:\n    \"\"\"Does something that needs a person's approval.\n\n    Args:\n        target: What to act on.\n\n    Returns:\n        str: What was done.\n    \"\"\"\n    return f\"done with {{target}}\"\n"
        );
        let created = self
            .call(
                reqwest::Method::POST,
                "/v1/tools/",
                Some(json!({"source_code": source, "default_requires_approval": true})),
            )
            .await;
        let tool_id = created["id"].as_str().expect("a tool id").to_owned();
        self.call(
            reqwest::Method::PATCH,
            &format!("/v1/agents/{agent_id}/tools/attach/{tool_id}"),
            None,
        )
        .await;
        tool
    }
}

fn unique_tag() -> String {
    let mut random = [0u8; 6];
    getrandom::fill(&mut random).unwrap();
    format!("test-{}", hex::encode(random))
}
