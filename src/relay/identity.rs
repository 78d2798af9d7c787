//! Which replica this process is. Leases name their owner; an owner that outlives a restart lets
//! the restarted process take its rooms back at once instead of waiting for its own leases to run
//! out. The id is held in the database for the process's lifetime, so two live processes never
//! share one (their leases would be indistinguishable).

use std::path::Path;

use crate::config::Settings;
use crate::store::{SessionLock, Store};

/// The file in `data_dir` that keeps the id of an installation without `replica_id`.
const ID_FILE: &str = "replica-id";

pub struct ReplicaIdentity {
    pub id: String,
    /// Held while the process runs; `None` when the id is a fresh random one nobody else can have.
    pub hold: Option<SessionLock>,
}

impl ReplicaIdentity {
    /// The configured id, else the one kept in the data dir; a random one (with a warning) if a
    /// live process already holds it or it cannot be read or kept.
    pub async fn establish(settings: &Settings, store: &Store) -> Self {
        let wanted = match &settings.raw.replica_id {
            Some(id) => Ok(id.trim().to_owned()),
            None => kept_id(&settings.raw.data_dir),
        };
        let wanted = match wanted {
            Ok(id) => id,
            Err(error) => {
                let id = random_id();
                tracing::warn!(%error, replica_id = id, "cannot keep a replica id in the data dir; a restart of this process waits out its leases");
                return Self { id, hold: None };
            }
        };
        match store.try_hold_replica_id(&wanted).await {
            Ok(Some(hold)) => {
                tracing::info!(replica_id = wanted, "replica id held");
                Self {
                    id: wanted,
                    hold: Some(hold),
                }
            }
            Ok(None) => {
                let id = random_id();
                tracing::warn!(
                    taken = wanted,
                    replica_id = id,
                    "another running process holds this replica id (a shared data dir or the same replica_id?); running under a random id. Give each replica its own replica_id or data_dir"
                );
                Self { id, hold: None }
            }
            Err(error) => {
                let id = random_id();
                tracing::warn!(%error, replica_id = id, "cannot hold the replica id; running under a random id");
                Self { id, hold: None }
            }
        }
    }

    /// Whether no other process can be using this id: re-takes a hold whose session was lost.
    /// `false` means another live process took it meanwhile.
    pub async fn still_ours(&mut self, store: &Store) -> bool {
        let Some(hold) = &mut self.hold else {
            return true;
        };
        if hold.still_held().await {
            return true;
        }
        match store.try_hold_replica_id(&self.id).await {
            Ok(Some(hold)) => {
                tracing::warn!(
                    replica_id = self.id,
                    "the replica id's database session was lost; held again"
                );
                self.hold = Some(hold);
                true
            }
            Ok(None) => false,
            // The database is out of reach: nobody can start claiming under this id either.
            Err(error) => {
                tracing::warn!(%error, replica_id = self.id, "cannot hold the replica id again yet");
                true
            }
        }
    }
}

/// The id in `data_dir/replica-id`, written there on first use.
fn kept_id(data_dir: &Path) -> std::io::Result<String> {
    let path = data_dir.join(ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => return Ok(text.trim().to_owned()),
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    std::fs::create_dir_all(data_dir)?;
    let id = random_id();
    // Written aside and renamed, so a crash never leaves a half-written id behind.
    let partial = data_dir.join(format!("{ID_FILE}.partial"));
    std::fs::write(&partial, format!("{id}\n"))?;
    std::fs::rename(&partial, &path)?;
    Ok(id)
}

fn random_id() -> String {
    let mut random = [0u8; 8];
    getrandom::fill(&mut random).expect("random bytes");
    hex::encode(random)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kept_id_survives_a_restart_and_differs_per_data_dir() {
        let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let first = kept_id(&one.path().join("data")).unwrap();
        assert_eq!(kept_id(&one.path().join("data")).unwrap(), first);
        assert_ne!(kept_id(two.path()).unwrap(), first);
        std::fs::write(one.path().join("data").join(ID_FILE), "  chosen-by-hand \n").unwrap();
        assert_eq!(kept_id(&one.path().join("data")).unwrap(), "chosen-by-hand");
    }
}
