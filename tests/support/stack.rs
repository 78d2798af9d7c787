//! A whole installation for end-to-end tests: the Letta stand-in with named agents, a real Synapse,
//! `letta-matrix serve`, and alice, who is in every agent room.

use std::time::Duration;

use letta_standin::LettaStandin;

use super::chat::{Shown, shown_messages};
use super::letta_server::LettaServer;
use super::service::{ADMIN_TOKEN, Installation, Served};
use super::synapse::{Person, Synapse};
use super::wait::eventually;

const PATIENCE: Duration = Duration::from_secs(60);

/// Sync passes the stand-in has served (with fewer than 200 agents): each reads a page of agents
/// and the empty page that ends the list.
pub fn sync_passes(letta: &LettaStandin) -> usize {
    letta.requests("GET /v1/agents/") / 2
}

/// `L` is the Letta: our stand-in, or a [`super::letta_server::LettaServer`] (the real one).
pub struct Stack<L = LettaStandin> {
    pub letta: L,
    pub synapse: Synapse,
    pub install: Installation,
    pub served: Option<Served>,
    pub alice: Person,
    pub agents: Vec<Agent>,
}

pub struct Agent {
    pub id: String,
    pub ghost: String,
    pub room: String,
}

/// Synapse, the stand-in with `names` as agents, and `serve`; alice is in every agent room.
pub async fn stack(server: &str, names: &[&str], settings: &[(&str, &str)]) -> Stack {
    stack_prepared(server, names, settings, |_, _| {}).await
}

/// As [`stack`], with `prepare` given the stand-in and the agent ids before `serve` starts.
pub async fn stack_prepared(
    server: &str,
    names: &[&str],
    settings: &[(&str, &str)],
    prepare: impl FnOnce(&LettaStandin, &[String]),
) -> Stack {
    build(server, names, settings, prepare, serde_json::json!({})).await
}

/// As [`stack`], on a Synapse with `synapse_config` added to its test configuration.
pub async fn stack_on_synapse(
    server: &str,
    names: &[&str],
    settings: &[(&str, &str)],
    synapse_config: serde_json::Value,
) -> Stack {
    build(server, names, settings, |_, _| {}, synapse_config).await
}

async fn build(
    server: &str,
    names: &[&str],
    settings: &[(&str, &str)],
    prepare: impl FnOnce(&LettaStandin, &[String]),
    synapse_config: serde_json::Value,
) -> Stack {
    let letta = LettaStandin::start().await;
    let ids: Vec<String> = names.iter().map(|name| letta.create_agent(name, None)).collect();
    prepare(&letta, &ids);
    let url = letta.url();
    bring_up(letta, &url, None, ids, server, settings, synapse_config).await
}

/// Synapse and `serve` in front of the real Letta, with `agents` (already created there) set up
/// in Matrix.
/// In a setting's value, stands for the address letta-matrix serves on (e.g. for `tools_url`).
pub const SELF_URL: &str = "{letta-matrix}";

pub async fn real_stack(
    server: &str,
    letta: LettaServer,
    agents: Vec<String>,
    settings: &[(&str, &str)],
) -> Stack<LettaServer> {
    let (url, token) = (letta.url.clone(), letta.token.clone());
    let mut settings = settings.to_vec();
    let tags = letta.tag.clone();
    settings.push(("LETTA_MATRIX_AGENT_TAGS", &tags));
    bring_up(letta, &url, token, agents, server, &settings, serde_json::json!({})).await
}

async fn bring_up<L>(
    letta: L,
    letta_url: &str,
    letta_token: Option<String>,
    ids: Vec<String>,
    server: &str,
    settings: &[(&str, &str)],
    synapse_config: serde_json::Value,
) -> Stack<L> {
    let mut install = Installation::new(server);
    install.set("LETTA_MATRIX_LETTA_URL", letta_url);
    if let Some(token) = letta_token {
        install.set("LETTA_MATRIX_LETTA_TOKEN", token);
    }
    install.set("LETTA_MATRIX_ADMIN_TOKEN", ADMIN_TOKEN);
    install.set("LETTA_MATRIX_SYNC_INTERVAL_MS", "500");
    install.set("LETTA_MATRIX_INVITE", format!("@alice:{server}"));
    install.set("LETTA_MATRIX_RELAY_EDIT_INTERVAL_MS", "300");
    for (key, value) in settings {
        install.set(key, value.replace(SELF_URL, &install.base_url()));
    }
    install.write_registration().await;
    let synapse = Synapse::start_with(server, &[install.registration_path()], synapse_config)
        .await
        .unwrap();
    install.set("LETTA_MATRIX_HOMESERVER_URL", synapse.base_url());
    let alice = synapse.register_user("alice", "alice-password").await.unwrap();
    let served = install.serve().await.unwrap();
    let mut agents = Vec::new();
    for id in ids {
        agents.push(join_agent_room(&install, &alice, server, id).await);
    }
    Stack {
        letta,
        synapse,
        install,
        served: Some(served),
        alice,
        agents,
    }
}

/// Alice joins the agent's room once sync has made it.
pub async fn join_agent_room(install: &Installation, alice: &Person, server: &str, id: String) -> Agent {
    let ghost = format!("@letta_{id}:{server}");
    let alias = format!("#letta_{id}:{server}");
    eventually("alice joining the agent's room", PATIENCE, || async {
        alice.join(&alias).await.ok()
    })
    .await;
    let room = eventually("the agent's room id", PATIENCE, || async {
        let status = install.status().await;
        let agent = status["agents"]
            .as_array()?
            .iter()
            .find(|a| a["agent_id"] == id.as_str())?
            .clone();
        agent["room_id"].as_str().map(str::to_owned)
    })
    .await;
    Agent { id, ghost, room }
}

impl<L> Stack<L> {
    pub async fn shown(&self, room: &str, ghost: &str) -> Vec<Shown> {
        let events = self.alice.messages(room, 200).await.unwrap();
        shown_messages(&events, ghost)
    }

    /// Waits until the ghost shows `count` messages whose latest text is final (`done` says so).
    pub async fn wait_for_answers(&self, agent: &Agent, count: usize, done: impl Fn(&[Shown]) -> bool) -> Vec<Shown> {
        eventually("the agent's answers", PATIENCE, || async {
            let shown = self.shown(&agent.room, &agent.ghost).await;
            (shown.len() >= count && done(&shown)).then_some(shown)
        })
        .await
    }

    pub async fn stop(mut self) {
        if let Some(served) = self.served.take() {
            assert_eq!(served.terminate().await, Some(0));
        }
        self.synapse.stop().await;
    }
}
