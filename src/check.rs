//! `letta-matrix check`: every link the service depends on, one line each, with what to do when
//! one is broken.

use std::fmt::Write;

use crate::app::redact_url;
use crate::config::Secret;
use crate::config::Settings;
use crate::letta::{LettaClient, LettaError};
use crate::matrix::{MatrixClient, MatrixError};
use crate::registration;
use crate::store::Store;

#[derive(Debug, Default)]
pub struct Report {
    lines: Vec<(bool, &'static str, String)>,
}

impl Report {
    fn pass(&mut self, name: &'static str, detail: impl Into<String>) {
        self.lines.push((true, name, detail.into()));
    }

    fn fail(&mut self, name: &'static str, detail: impl Into<String>) {
        self.lines.push((false, name, detail.into()));
    }

    pub fn ok(&self) -> bool {
        self.lines.iter().all(|(ok, _, _)| *ok)
    }

    pub fn render(&self) -> String {
        let mut text = String::new();
        for (ok, name, detail) in &self.lines {
            let _ = writeln!(text, "{} {name}: {detail}", if *ok { "ok  " } else { "FAIL" });
        }
        text
    }
}

pub async fn run(settings: &Settings) -> Report {
    let mut report = Report::default();
    report.pass(
        "config",
        format!(
            "server_name {}, homeserver {}",
            settings.server_name, settings.homeserver_url
        ),
    );
    check_database(settings, &mut report).await;
    match registration::load_for(settings) {
        Ok(registration) => {
            report.pass(
                "registration",
                format!("{} (id {})", settings.raw.registration.display(), registration.id),
            );
            let matrix = MatrixClient::new(&settings.homeserver_url, Secret::new(registration.as_token.clone()))
                .with_retry(crate::matrix::RetryPolicy {
                    attempts: 1,
                    ..Default::default()
                });
            check_homeserver(settings, &matrix, &mut report).await;
        }
        Err(error) => report.fail("registration", error.to_string()),
    }
    check_letta(settings, &mut report).await;
    report
}

async fn check_database(settings: &Settings, report: &mut Report) {
    let shown = redact_url(&settings.database_url);
    let store = match Store::connect(&settings.database_url, 1).await {
        Ok(store) => store,
        Err(error) => return report.fail("database", format!("{shown}: {error}")),
    };
    match store.pending_migrations().await {
        Ok(pending) if pending.is_empty() => report.pass("database", format!("{shown} (migrations current)")),
        Ok(pending) => report.fail(
            "database",
            format!(
                "{shown}: {} migration(s) not applied ({}); run `letta-matrix migrate`",
                pending.len(),
                pending.join(", ")
            ),
        ),
        Err(error) => report.fail("database", format!("{shown}: {error}")),
    }
    store.close().await;
}

async fn check_homeserver(settings: &Settings, matrix: &MatrixClient, report: &mut Report) {
    match matrix.versions().await {
        Ok(versions) => report.pass(
            "homeserver",
            format!("{} speaks {}", settings.homeserver_url, versions.join(" ")),
        ),
        Err(error) => {
            return report.fail(
                "homeserver",
                format!(
                    "{}: {error}; is the homeserver running and homeserver_url right?",
                    settings.homeserver_url
                ),
            );
        }
    }
    match matrix.whoami().await {
        Ok(user) => report.pass(
            "appservice token",
            format!("the homeserver accepts our as_token as {user}"),
        ),
        Err(error) => {
            return report.fail(
                "appservice token",
                format!("{error}; add {} to the homeserver's app_service_config_files (Synapse) or register it in the admin room (Tuwunel), then restart it", settings.raw.registration.display()),
            );
        }
    }
    match matrix.default_room_version().await {
        Ok(version) => {
            let creators = if crate::matrix::creators_outrank_levels(&version) {
                "creators outrank every power level"
            } else {
                "creators are listed at power level 100"
            };
            report.pass("room version", format!("new rooms are version {version}; {creators}"));
        }
        Err(error) => report.fail(
            "room version",
            format!("{error}; agent sync reads /capabilities to make rooms: does the homeserver allow it for the appservice bot?"),
        ),
    }
    match matrix.ping(&settings.raw.appservice_id).await {
        Ok(duration) => report.pass(
            "appservice ping",
            format!(
                "the homeserver reached us at {} in {} ms",
                settings.appservice_url,
                duration.as_millis()
            ),
        ),
        Err(error) => report.fail("appservice ping", ping_hint(settings, &error)),
    }
}

fn ping_hint(settings: &Settings, error: &MatrixError) -> String {
    let status = error.status().map(|s| s.as_u16());
    match status {
        Some(502 | 504) => format!(
            "{error}; the homeserver cannot reach letta-matrix at {}: start `letta-matrix serve` and make sure that URL (appservice_url, `url` in the registration) is reachable from the homeserver",
            settings.appservice_url
        ),
        Some(403 | 404) => format!(
            "{error}; the homeserver does not know appservice id `{}`: is the current registration file loaded?",
            settings.raw.appservice_id
        ),
        _ => error.to_string(),
    }
}

async fn check_letta(settings: &Settings, report: &mut Report) {
    let letta = LettaClient::from_settings(settings).with_retry(crate::outbound::RetryPolicy::once());
    match letta.health().await {
        Ok(health) => report.pass(
            "letta",
            format!("{} version {} ({})", settings.letta_url, health.version, health.status),
        ),
        Err(error) => {
            let hint = match &error {
                LettaError::Unreachable { .. } => "; is the Letta server running and letta_url right?",
                LettaError::Unauthorized { .. } => "",
                _ => "; is letta_url a Letta server?",
            };
            return report.fail("letta", format!("{error}{hint}"));
        }
    }
    match letta.verify_token().await {
        Ok(()) => report.pass("letta token", "Letta accepts our token for listing agents"),
        Err(error) => return report.fail("letta token", error.to_string()),
    }
    match (letta.project(), letta.list_agents().await) {
        (Some(project), Ok(agents)) => report.pass(
            "letta project",
            format!(
                "project `{project}` (X-Project header): {} agent(s) visible",
                agents.len()
            ),
        ),
        (None, Ok(agents)) => report.pass(
            "letta project",
            format!(
                "none set (letta_project; Letta Cloud only): {} agent(s) visible",
                agents.len()
            ),
        ),
        (_, Err(error)) => report.fail("letta project", format!("cannot list agents: {error}")),
    }
}
