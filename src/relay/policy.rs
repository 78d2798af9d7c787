//! Who may talk to agents: the `allow` list of user id globs and server names.

use ruma::{ServerName, UserId};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowRule {
    /// Every user of one homeserver.
    Server(String),
    /// A user id pattern where `*` stands for any run of characters and `?` for one.
    Glob(String),
}

impl AllowRule {
    pub fn parse(pattern: &str) -> Result<Self, String> {
        let pattern = pattern.trim();
        if pattern.is_empty() {
            return Err("an empty pattern allows nobody; remove it".into());
        }
        if pattern.starts_with('@') {
            if !pattern.contains(':') {
                return Err(format!(
                    "`{pattern}` has no server part; write `{pattern}:example.org` or `{pattern}:*`"
                ));
            }
            return Ok(Self::Glob(pattern.to_owned()));
        }
        ServerName::parse(pattern)
            .map(|_| Self::Server(pattern.to_owned()))
            .map_err(|_| format!("`{pattern}` is neither a user id pattern (@…:…) nor a server name"))
    }

    pub fn allows(&self, user: &UserId) -> bool {
        match self {
            Self::Server(server) => user.server_name().as_str() == server,
            Self::Glob(pattern) => glob_matches(pattern.as_bytes(), user.as_str().as_bytes()),
        }
    }
}

/// Whether `user` may use agents: listed, or local when nothing is listed.
pub fn is_allowed(rules: &[AllowRule], local_server: &ServerName, user: &UserId) -> bool {
    if rules.is_empty() {
        return user.server_name() == local_server;
    }
    rules.iter().any(|rule| rule.allows(user))
}

fn glob_matches(pattern: &[u8], text: &[u8]) -> bool {
    // Iterative matching with one backtrack point: linear for the patterns people write.
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((star_p, star_t)) => {
                    p = star_p + 1;
                    t = star_t + 1;
                    star = Some((star_p, star_t + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str) -> ruma::OwnedUserId {
        id.try_into().unwrap()
    }

    #[test]
    fn nothing_listed_means_local_users_only() {
        let local: &ServerName = "example.org".try_into().unwrap();
        assert!(is_allowed(&[], local, &user("@alice:example.org")));
        assert!(!is_allowed(&[], local, &user("@mallory:evil.org")));
    }

    #[test]
    fn globs_and_servers_match_as_written() {
        let rules: Vec<AllowRule> = ["@alice:*", "@*-staff:corp.example", "friends.org"]
            .iter()
            .map(|p| AllowRule::parse(p).unwrap())
            .collect();
        let local: &ServerName = "example.org".try_into().unwrap();
        assert!(is_allowed(&rules, local, &user("@alice:anywhere.net")));
        assert!(is_allowed(&rules, local, &user("@bob-staff:corp.example")));
        assert!(is_allowed(&rules, local, &user("@carol:friends.org")));
        assert!(!is_allowed(&rules, local, &user("@bob:corp.example")));
        assert!(
            !is_allowed(&rules, local, &user("@dave:example.org")),
            "a list replaces the local default"
        );
        assert!(!is_allowed(&rules, local, &user("@carol:friends.org.evil")));
    }

    #[test]
    fn bad_patterns_are_explained() {
        assert!(AllowRule::parse("@alice").unwrap_err().contains("no server part"));
        assert!(AllowRule::parse("not a server!").unwrap_err().contains("neither"));
        assert!(AllowRule::parse(" ").is_err());
    }
}
