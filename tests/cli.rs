//! The command line as an operator meets it: the real binary, real files, readable errors.

use std::path::Path;
use std::process::{Command, Output};

fn letta_matrix(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_letta-matrix"));
    command
        .current_dir(dir)
        .args(args)
        .env("LETTA_MATRIX_LOG_FILTER", "warn");
    for (key, _) in
        std::env::vars().filter(|(k, _)| k.starts_with("LETTA_MATRIX_") && !k.starts_with("LETTA_MATRIX_TEST"))
    {
        command.env_remove(key);
    }
    command.envs(env.iter().copied());
    command.output().expect("the binary runs")
}

const MINIMAL: &[(&str, &str)] = &[
    ("LETTA_MATRIX_SERVER_NAME", "example.org"),
    // Nothing listens on the discard port: commands that must not need the homeserver prove it.
    ("LETTA_MATRIX_HOMESERVER_URL", "http://127.0.0.1:9"),
    ("LETTA_MATRIX_LETTA_URL", "http://127.0.0.1:9"),
];

/// Long enough for the 32-byte minimum.
const SECRET: &str = "mcp-secret-for-the-cli-tests-0123456789";

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn registration_works_offline_is_private_and_keeps_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let first = letta_matrix(dir.path(), MINIMAL, &["registration", "--out", "reg.yaml"]);
    assert!(first.status.success(), "{}", text(&first.stderr));
    assert!(
        text(&first.stdout).contains("app_service_config_files"),
        "tells the admin what to do next"
    );
    let path = dir.path().join("reg.yaml");
    let yaml = std::fs::read_to_string(&path).unwrap();
    assert!(yaml.contains(r"regex: '@letta_.*:example\.org'"), "{yaml}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }
    letta_matrix(dir.path(), MINIMAL, &["registration", "--out", "reg.yaml"]);
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        yaml,
        "a rerun keeps the tokens"
    );
    letta_matrix(
        dir.path(),
        MINIMAL,
        &["registration", "--out", "reg.yaml", "--regenerate"],
    );
    assert_ne!(std::fs::read_to_string(&path).unwrap(), yaml);
}

#[test]
fn config_errors_are_one_readable_line() {
    let dir = tempfile::tempdir().unwrap();
    let missing = letta_matrix(dir.path(), &MINIMAL[1..], &["migrate"]);
    assert_eq!(missing.status.code(), Some(2));
    let stderr = text(&missing.stderr);
    assert!(
        stderr.starts_with("error: ") && stderr.contains("LETTA_MATRIX_SERVER_NAME"),
        "{stderr}"
    );

    std::fs::write(dir.path().join("c.toml"), "server_name = \"example.org\"\nbind = 42\n").unwrap();
    let bad_file = letta_matrix(dir.path(), &MINIMAL[1..], &["--config", "c.toml", "migrate"]);
    let stderr = text(&bad_file.stderr);
    assert_eq!(bad_file.status.code(), Some(2));
    assert!(stderr.contains("`bind`") && stderr.contains("c.toml"), "{stderr}");

    let no_file = letta_matrix(dir.path(), MINIMAL, &["--config", "absent.toml", "migrate"]);
    assert!(
        text(&no_file.stderr).contains("absent.toml"),
        "{}",
        text(&no_file.stderr)
    );
}

#[test]
fn migrate_creates_the_default_sqlite_database() {
    let dir = tempfile::tempdir().unwrap();
    let output = letta_matrix(dir.path(), MINIMAL, &["migrate"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(dir.path().join("data/letta-matrix.db").exists());
    assert!(text(&output.stdout).contains("current"));
}

#[test]
fn serve_without_registration_says_how_to_make_one() {
    let dir = tempfile::tempdir().unwrap();
    let output = letta_matrix(dir.path(), MINIMAL, &["serve"]);
    assert!(!output.status.success());
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("registration.yaml") && stderr.contains("letta-matrix registration"),
        "{stderr}"
    );
}

#[test]
fn check_names_every_broken_link_with_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    letta_matrix(dir.path(), MINIMAL, &["registration"]);
    let output = letta_matrix(dir.path(), MINIMAL, &["check"]);
    assert_eq!(output.status.code(), Some(1));
    let stdout = text(&output.stdout);
    assert!(stdout.contains("ok   registration"), "{stdout}");
    assert!(
        stdout.contains("FAIL database") && stdout.contains("letta-matrix migrate"),
        "{stdout}"
    );
    assert!(
        stdout.contains("FAIL homeserver") && stdout.contains("homeserver_url"),
        "{stdout}"
    );
    assert!(
        stdout.contains("FAIL letta") && stdout.contains("letta_url"),
        "{stdout}"
    );
    letta_matrix(dir.path(), MINIMAL, &["migrate"]);
    let after = text(&letta_matrix(dir.path(), MINIMAL, &["check"]).stdout);
    assert!(after.contains("ok   database"), "{after}");
}

#[test]
fn mcp_token_is_the_agents_own_and_needs_the_secret() {
    let dir = tempfile::tempdir().unwrap();
    let off = letta_matrix(dir.path(), MINIMAL, &["mcp-token", "agent-1"]);
    assert!(!off.status.success());
    assert!(
        text(&off.stderr).contains("mcp_secret is not set"),
        "{}",
        text(&off.stderr)
    );

    let with_secret: Vec<(&str, &str)> = MINIMAL
        .iter()
        .copied()
        .chain([("LETTA_MATRIX_MCP_SECRET", SECRET)])
        .collect();
    let token = |agent: &str| text(&letta_matrix(dir.path(), &with_secret, &["mcp-token", agent]).stdout);
    let expected = letta_matrix::mcp::agent_token(&letta_matrix::config::Secret::new(SECRET), "agent-1");
    assert_eq!(token("agent-1").trim(), expected);
    assert_ne!(token("agent-1"), token("agent-2"));
    let typo = letta_matrix(dir.path(), &with_secret, &["mcp-token", "Helper"]);
    assert!(text(&typo.stderr).contains("does not look like a Letta agent id"));
}

#[test]
fn short_secrets_are_refused_at_start_with_a_way_to_make_one() {
    let dir = tempfile::tempdir().unwrap();
    for (key, value) in [
        ("LETTA_MATRIX_MCP_SECRET", ""),
        ("LETTA_MATRIX_MCP_SECRET", "   "),
        ("LETTA_MATRIX_ADMIN_TOKEN", "a"),
    ] {
        let env: Vec<(&str, &str)> = MINIMAL.iter().copied().chain([(key, value)]).collect();
        let output = letta_matrix(dir.path(), &env, &["serve"]);
        assert_eq!(output.status.code(), Some(2), "{key}={value:?}");
        let stderr = text(&output.stderr);
        assert!(
            stderr.contains(&key["LETTA_MATRIX_".len()..].to_lowercase()) && stderr.contains("openssl rand -hex 32"),
            "{stderr}"
        );
    }
}

#[test]
fn a_sqlite_url_to_a_missing_file_creates_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("elsewhere/new.db");
    let url = format!("sqlite://{}", path.display());
    let env: Vec<(&str, &str)> = MINIMAL
        .iter()
        .copied()
        .chain([("LETTA_MATRIX_DATABASE_URL", url.as_str())])
        .collect();
    let output = letta_matrix(dir.path(), &env, &["migrate"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(path.exists());
    let again = letta_matrix(dir.path(), &env, &["migrate"]);
    assert!(again.status.success(), "{}", text(&again.stderr));
}

/// The database holds every message people sent: private files and directory, whatever the umask.
#[cfg(unix)]
#[test]
fn the_sqlite_files_are_private_even_under_umask_000() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    letta_matrix(dir.path(), MINIMAL, &["registration"]);
    let mut command = Command::new(env!("CARGO_BIN_EXE_letta-matrix"));
    command
        .current_dir(dir.path())
        .arg("serve")
        .env("LETTA_MATRIX_BIND", "127.0.0.1:0")
        .env("LETTA_MATRIX_LOG_FILTER", "warn")
        .envs(MINIMAL.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    for (key, _) in
        std::env::vars().filter(|(k, _)| k.starts_with("LETTA_MATRIX_") && !k.starts_with("LETTA_MATRIX_TEST"))
    {
        if !MINIMAL.iter().any(|(k, _)| *k == key) {
            command.env_remove(key);
        }
    }
    // SAFETY: umask is async-signal-safe and touches only the child's own state.
    unsafe {
        command.pre_exec(|| {
            libc::umask(0);
            Ok(())
        });
    }
    let mut child = command.spawn().unwrap();
    let data = dir.path().join("data");
    let files = ["letta-matrix.db", "letta-matrix.db-wal", "letta-matrix.db-shm"];
    let started = std::time::Instant::now();
    while !files.iter().all(|f| data.join(f).exists()) {
        assert!(child.try_wait().unwrap().is_none(), "serve exited early");
        assert!(started.elapsed().as_secs() < 30, "the database files never appeared");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    let modes: Vec<(String, u32)> = std::iter::once(("data".to_owned(), mode(&data)))
        .chain(files.iter().map(|f| (f.to_string(), mode(&data.join(f)))))
        .collect();
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(
        modes,
        [
            ("data".to_owned(), 0o700),
            ("letta-matrix.db".to_owned(), 0o600),
            ("letta-matrix.db-wal".to_owned(), 0o600),
            ("letta-matrix.db-shm".to_owned(), 0o600),
        ]
    );
}
