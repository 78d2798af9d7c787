//! The container files hold together: no Docker engine runs here, so what can be checked without
//! one is checked: every variable the compose stack and the Dockerfile give letta-matrix is a valid
//! configuration, and the registration file one service writes is the one Synapse reads.

use letta_matrix::config::Settings;
use serde_norway::Value;

fn compose() -> Value {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docker/compose.yaml")).unwrap();
    let mut compose: Value = serde_norway::from_str(&text).expect("compose.yaml is YAML");
    compose.apply_merge().expect("merge keys resolve");
    compose
}

fn service<'a>(compose: &'a Value, name: &str) -> &'a Value {
    compose["services"]
        .get(name)
        .unwrap_or_else(|| panic!("compose has a `{name}` service"))
}

fn environment(service: &Value) -> Vec<(String, String)> {
    let Some(map) = service["environment"].as_mapping() else {
        return Vec::new();
    };
    map.iter()
        .map(|(k, v)| {
            let value = match v {
                Value::String(s) => s.clone(),
                other => serde_norway::to_string(other).unwrap().trim().to_owned(),
            };
            (k.as_str().unwrap().to_owned(), value)
        })
        .collect()
}

/// Where `volume` is mounted in `service`.
fn mount_point(service: &Value, volume: &str) -> Option<String> {
    service["volumes"].as_sequence()?.iter().find_map(|mount| {
        let mount = mount.as_str()?;
        let mut parts = mount.split(':');
        (parts.next()? == volume).then(|| parts.next().map(str::to_owned))?
    })
}

/// The `ENV` settings the Dockerfile bakes into the image.
fn dockerfile_env() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docker/Dockerfile")).unwrap();
    let joined = text.replace("\\\n", " ");
    let line = joined.lines().find(|l| l.starts_with("ENV ")).expect("an ENV line");
    line.trim_start_matches("ENV ")
        .split_whitespace()
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap();
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

#[test]
fn the_stack_has_every_part() {
    let compose = compose();
    for name in [
        "postgres",
        "letta",
        "registration",
        "synapse",
        "letta-matrix",
        "element",
    ] {
        service(&compose, name);
    }
}

#[test]
fn letta_matrix_accepts_its_container_configuration() {
    let compose = compose();
    for name in ["registration", "letta-matrix"] {
        let mut env = dockerfile_env();
        env.extend(environment(service(&compose, name)));
        let settings = Settings::from_parts("", None, &env)
            .unwrap_or_else(|e| panic!("the `{name}` service's configuration is refused: {e}"));
        assert_eq!(settings.server_name.as_str(), "localhost");
        let appservice_host = settings.appservice_url.host_str().unwrap().to_owned();
        service(&compose, &appservice_host);
        assert_eq!(settings.appservice_url.port(), Some(settings.raw.bind.port()), "{name}");
        let homeserver_host = settings.homeserver_url.host_str().unwrap().to_owned();
        service(&compose, &homeserver_host);
    }
}

#[test]
fn synapse_reads_the_registration_that_letta_matrix_writes() {
    let compose = compose();
    let homeserver: Value = serde_norway::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docker/synapse/homeserver.yaml")).unwrap(),
    )
    .unwrap();
    let read_by_synapse = homeserver["app_service_config_files"][0].as_str().unwrap();
    let synapse_mount =
        mount_point(service(&compose, "synapse"), "appservice").expect("synapse mounts the appservice volume");
    let in_volume = read_by_synapse
        .strip_prefix(&format!("{synapse_mount}/"))
        .expect("the registration is read from the shared volume");
    for writer in ["registration", "letta-matrix"] {
        let mount = mount_point(service(&compose, writer), "appservice").unwrap();
        let env = environment(service(&compose, writer));
        let written = env.iter().find(|(k, _)| k == "LETTA_MATRIX_REGISTRATION").unwrap();
        assert_eq!(written.1, format!("{mount}/{in_volume}"), "{writer} uses the same file");
    }
    assert_eq!(homeserver["server_name"], "localhost");
    let element: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docker/element-config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        element["default_server_config"]["m.homeserver"]["server_name"],
        "localhost"
    );
}

#[test]
fn the_sample_alerts_use_metrics_the_service_exports() {
    let rules: Value = serde_norway::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/prometheus-alerts.yaml")).unwrap(),
    )
    .unwrap();
    let telemetry = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/telemetry.rs")).unwrap();
    let mut checked = 0;
    for rule in rules["groups"][0]["rules"].as_sequence().unwrap() {
        let expr = rule["expr"].as_str().unwrap();
        for metric in expr
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|word| word.starts_with("letta_matrix_"))
        {
            assert!(
                telemetry.contains(&format!("\"{metric}\"")),
                "{metric} is not described in telemetry.rs"
            );
            checked += 1;
        }
    }
    assert!(checked >= 4);
}
