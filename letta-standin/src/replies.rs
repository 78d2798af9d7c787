//! What a stand-in agent answers when no reply is scripted: an echo that tests match on, or, for
//! the demo, a short Markdown answer a person can read while it streams in.

/// How agents answer unscripted turns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Replies {
    /// `You said: <the message as the bridge sent it>`.
    #[default]
    Echo,
    /// A greeting that quotes what the person wrote, without the bridge's `Name (@user:server): `
    /// prefix, and says what the demo is.
    Friendly,
}

impl Replies {
    pub(crate) fn answer(self, agent_name: &str, said: &str) -> String {
        match self {
            Replies::Echo => format!("You said: {said}"),
            Replies::Friendly => friendly(agent_name, said),
        }
    }
}

fn friendly(agent_name: &str, said: &str) -> String {
    let (speaker, text) = speaker_and_text(said);
    let greeting = match speaker {
        Some(speaker) => format!("Hello {speaker}!"),
        None => "Hello!".to_owned(),
    };
    let quoted: Vec<String> = text.trim().lines().map(|line| format!("> {line}")).collect();
    let quoted = if quoted.is_empty() {
        "> (nothing)".to_owned()
    } else {
        quoted.join("\n")
    };
    format!(
        "{greeting} I am **{agent_name}**, a sample agent of the letta-matrix demo. You wrote:\n\n\
         {quoted}\n\n\
         There is no language model behind me: a stand-in for a Letta server answers, a few \
         characters at a time, so you can watch an answer stream into the room the way a real \
         agent's does. Point the demo at your own Letta (`LETTA_MATRIX_DEMO_LETTA_URL`) and your \
         agents answer here instead."
    )
}

/// Splits the `Name (@user:server): ` prefix the bridge puts before a person's message.
fn speaker_and_text(said: &str) -> (Option<&str>, &str) {
    if let Some((head, text)) = said.split_once("): ")
        && let Some((speaker, user)) = head.rsplit_once(" (@")
        && user.contains(':')
        && !user.contains(char::is_whitespace)
    {
        return (Some(speaker), text);
    }
    (None, said)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_is_what_the_tests_match() {
        assert_eq!(
            Replies::default().answer("Ada", "Bob (@bob:x): hi"),
            "You said: Bob (@bob:x): hi"
        );
    }

    #[test]
    fn friendly_quotes_the_message_without_the_bridge_prefix() {
        let answer = Replies::Friendly.answer("Ada", "demo (@demo:localhost): hello\nthere");
        assert!(answer.starts_with("Hello demo! I am **Ada**"), "{answer}");
        assert!(answer.contains("\n> hello\n> there\n"), "{answer}");
        assert!(!answer.contains("@demo:localhost"), "{answer}");
        let plain = Replies::Friendly.answer("Ada", "no prefix (here): at all");
        assert!(
            plain.starts_with("Hello! ") && plain.contains("> no prefix (here): at all"),
            "{plain}"
        );
    }
}
