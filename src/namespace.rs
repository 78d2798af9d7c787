//! The users the appservice owns: the bot and one ghost per agent, all under one exclusive prefix.

use ruma::{OwnedServerName, OwnedUserId, UserId};

use crate::config::{Settings, is_valid_localpart};

#[derive(Debug, Clone)]
pub struct Namespace {
    prefix: String,
    server_name: OwnedServerName,
    bot: OwnedUserId,
}

impl Namespace {
    pub fn new(settings: &Settings) -> Self {
        Self {
            prefix: settings.raw.ghost_prefix.clone(),
            server_name: settings.server_name.clone(),
            bot: settings.bot_user_id.clone(),
        }
    }

    /// True for the bot and every ghost: users whose events are our own doing.
    pub fn is_ours(&self, user_id: &UserId) -> bool {
        user_id.server_name() == self.server_name && user_id.localpart().starts_with(&self.prefix)
    }

    pub fn is_bot(&self, user_id: &UserId) -> bool {
        user_id == self.bot
    }

    pub fn bot(&self) -> &UserId {
        &self.bot
    }

    /// The ghost of an agent. Derived from the agent id alone, so a rename never changes it;
    /// characters the Matrix grammar forbids become `_`.
    pub fn ghost_for_agent(&self, agent_id: &str) -> OwnedUserId {
        let localpart: String = format!("{}{}", self.prefix, agent_id.to_lowercase())
            .chars()
            .map(|c| {
                if is_valid_localpart(c.encode_utf8(&mut [0; 4])) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        OwnedUserId::try_from(format!("@{localpart}:{}", self.server_name))
            .expect("a sanitised localpart and a validated server name make a user id")
    }

    /// `#letta_<agent-id>:server`, the published alias of an agent's room.
    pub fn alias_for_agent(&self, agent_id: &str) -> String {
        let ghost = self.ghost_for_agent(agent_id);
        format!("#{}:{}", ghost.localpart(), self.server_name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn namespace() -> Namespace {
        Namespace::new(&Settings::for_tests("example.org"))
    }

    #[test]
    fn ghosts_are_stable_lowercase_and_valid() {
        let ns = namespace();
        let ghost = ns.ghost_for_agent("agent-6F1B2c3d-AAAA");
        assert_eq!(ghost.as_str(), "@letta_agent-6f1b2c3d-aaaa:example.org");
        assert_eq!(ns.ghost_for_agent("agent x+y").as_str(), "@letta_agent_x_y:example.org");
        assert_eq!(ns.alias_for_agent("agent-1"), "#letta_agent-1:example.org");
    }

    #[test]
    fn ours_means_prefix_and_server() {
        let ns = namespace();
        let user = |s: &str| OwnedUserId::try_from(s).unwrap();
        assert!(ns.is_ours(&user("@letta_agent-1:example.org")));
        assert!(ns.is_ours(&user("@letta_bot:example.org")));
        assert!(ns.is_bot(&user("@letta_bot:example.org")));
        assert!(!ns.is_ours(&user("@letta_agent-1:other.org")));
        assert!(!ns.is_ours(&user("@alice:example.org")));
    }
}
