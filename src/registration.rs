//! The appservice registration file: what a homeserver admin drops into Synapse or Tuwunel, and
//! where `serve` reads its two tokens from.

use std::io::Write;
use std::path::Path;

use ruma::api::appservice::{Namespace, Namespaces, Registration, RegistrationInit};

use crate::config::Settings;

#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    #[error("cannot read registration file {path}: {source} (create it with `letta-matrix registration --out {path}`)")]
    Read { path: String, source: std::io::Error },
    #[error("registration file {path} is not a valid appservice registration: {message}")]
    Parse { path: String, message: String },
    #[error("cannot write registration file {path}: {source}")]
    Write { path: String, source: std::io::Error },
    #[error("registration file {path}: {message}")]
    Mismatch { path: String, message: String },
}

/// 32 random bytes, hex-encoded: 256 bits of entropy in characters every homeserver accepts.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system's random source works");
    hex::encode(bytes)
}

/// Homeservers read namespace regexes as full-match patterns, so the server name's dots must not
/// match any character.
fn escape_regex(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len() + 4);
    for c in text.chars() {
        if "\\.^$|?*+()[]{}".contains(c) {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

pub fn users_regex(settings: &Settings) -> String {
    format!(
        "@{}.*:{}",
        escape_regex(&settings.raw.ghost_prefix),
        escape_regex(settings.server_name.as_str())
    )
}

pub fn aliases_regex(settings: &Settings) -> String {
    format!(
        "#{}.*:{}",
        escape_regex(&settings.raw.ghost_prefix),
        escape_regex(settings.server_name.as_str())
    )
}

/// Builds the registration the config describes, keeping `existing` tokens when given.
pub fn build(settings: &Settings, existing: Option<&Registration>) -> Registration {
    let (as_token, hs_token) = match existing {
        Some(old) => (old.as_token.clone(), old.hs_token.clone()),
        None => (random_token(), random_token()),
    };
    let mut namespaces = Namespaces::new();
    namespaces.users = vec![Namespace::new(true, users_regex(settings))];
    namespaces.aliases = vec![Namespace::new(true, aliases_regex(settings))];
    let mut registration: Registration = RegistrationInit {
        id: settings.raw.appservice_id.clone(),
        url: Some(settings.appservice_url.as_str().trim_end_matches('/').to_owned()),
        as_token,
        hs_token,
        sender_localpart: settings.raw.bot_localpart.clone(),
        namespaces,
        rate_limited: Some(false),
        protocols: None,
    }
    .into();
    registration.receive_ephemeral = true;
    registration
}

pub fn load(path: &Path) -> Result<Registration, RegistrationError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| RegistrationError::Read {
        path: shown.clone(),
        source,
    })?;
    let registration: Registration = serde_norway::from_str(&text).map_err(|e| RegistrationError::Parse {
        path: shown.clone(),
        message: e.to_string(),
    })?;
    if registration.as_token.len() < 16 || registration.hs_token.len() < 16 {
        return Err(RegistrationError::Mismatch {
            path: shown,
            message: "as_token and hs_token must be at least 16 characters; regenerate with `letta-matrix registration --regenerate`".into(),
        });
    }
    Ok(registration)
}

/// Loads the registration and checks it describes this config, so a stale file fails at start
/// rather than as a puzzling 403 from the homeserver later.
pub fn load_for(settings: &Settings) -> Result<Registration, RegistrationError> {
    let path = &settings.raw.registration;
    let registration = load(path)?;
    let mismatch = |message: String| RegistrationError::Mismatch {
        path: path.display().to_string(),
        message,
    };
    if registration.id != settings.raw.appservice_id {
        return Err(mismatch(format!(
            "its id is `{}` but appservice_id is `{}`; rerun `letta-matrix registration`",
            registration.id, settings.raw.appservice_id
        )));
    }
    if registration.sender_localpart != settings.raw.bot_localpart {
        return Err(mismatch(format!(
            "its sender_localpart is `{}` but bot_localpart is `{}`; rerun `letta-matrix registration`",
            registration.sender_localpart, settings.raw.bot_localpart
        )));
    }
    let expected = users_regex(settings);
    if !registration
        .namespaces
        .users
        .iter()
        .any(|ns| ns.exclusive && ns.regex == expected)
    {
        return Err(mismatch(format!(
            "it has no exclusive users namespace `{expected}`; rerun `letta-matrix registration`"
        )));
    }
    Ok(registration)
}

/// Writes the file readable by its owner only: it holds the tokens that let anyone act as every
/// agent.
pub fn write(path: &Path, registration: &Registration) -> Result<(), RegistrationError> {
    let shown = path.display().to_string();
    let write_error = |source| RegistrationError::Write {
        path: shown.clone(),
        source,
    };
    let yaml = serde_norway::to_string(registration).expect("a registration serialises to YAML");
    let temporary = path.with_extension("yaml.tmp");
    let mut file = open_private(&temporary).map_err(write_error)?;
    file.write_all(yaml.as_bytes())
        .and_then(|_| file.sync_all())
        .map_err(write_error)?;
    std::fs::rename(&temporary, path).map_err(write_error)
}

#[cfg(unix)]
fn open_private(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn open_private(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::File::create(path)
}

/// What `letta-matrix registration` does: keep the tokens of an existing file unless told not to.
pub fn generate(settings: &Settings, out: &Path, regenerate: bool) -> Result<Registration, RegistrationError> {
    let existing = match (regenerate, out.exists()) {
        (false, true) => Some(load(out)?),
        _ => None,
    };
    let registration = build(settings, existing.as_ref());
    write(out, &registration)?;
    Ok(registration)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings::for_tests("chat.example.org")
    }

    #[test]
    fn namespaces_escape_the_server_name() {
        let settings = settings();
        assert_eq!(users_regex(&settings), r"@letta_.*:chat\.example\.org");
        assert_eq!(aliases_regex(&settings), r"#letta_.*:chat\.example\.org");
    }

    #[test]
    fn tokens_are_long_random_and_distinct() {
        let registration = build(&settings(), None);
        assert_eq!(registration.as_token.len(), 64);
        assert_ne!(registration.as_token, registration.hs_token);
        assert_ne!(registration.as_token, build(&settings(), None).as_token);
        assert!(registration.receive_ephemeral);
        assert_eq!(registration.rate_limited, Some(false));
        assert_eq!(registration.url.as_deref(), Some("http://127.0.0.1:9000"));
    }

    #[test]
    fn rerun_keeps_tokens_unless_regenerating() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registration.yaml");
        let first = generate(&settings(), &path, false).unwrap();
        let second = generate(&settings(), &path, false).unwrap();
        assert_eq!(first.as_token, second.as_token);
        assert_eq!(first.hs_token, second.hs_token);
        let third = generate(&settings(), &path, true).unwrap();
        assert_ne!(first.as_token, third.as_token);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let loaded = load_for(&settings()).err();
        assert!(loaded.is_some(), "the default path is not the temp file");
        assert_eq!(load(&path).unwrap().hs_token, third.hs_token);
    }

    #[test]
    fn yaml_is_what_synapse_reads() {
        let yaml = serde_norway::to_string(&build(&settings(), None)).unwrap();
        for key in [
            "id: letta",
            "sender_localpart: letta_bot",
            "exclusive: true",
            "rate_limited: false",
            "receive_ephemeral: true",
        ] {
            assert!(yaml.contains(key), "{key} missing in\n{yaml}");
        }
    }
}
