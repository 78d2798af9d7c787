//! Locks held through a database session of their own: if the process dies, the session ends and
//! the lock with it. On PostgreSQL these are session advisory locks; SQLite means one instance,
//! which always holds every lock.
//!
//! One replica reconciles at a time: whoever holds the sync lock leads, and another takes over on
//! its next try. A replica id is held the same way, so that two live processes never share one.

use sha2::{Digest, Sha256};
use sqlx::{AnyConnection, Connection};

use super::{Backend, Store, StoreError};

/// "letta-matrix sync" folded into the bigint space of advisory lock keys.
const SYNC_LOCK_KEY: i64 = 0x6c65_7474_6173_796e;

/// A lock held through a dedicated database session; dropping it gives the lock up.
pub struct SessionLock {
    session: Option<AnyConnection>,
}

/// Leadership of reconciliation (see [`Store::try_lead`]).
pub type Leadership = SessionLock;

impl Store {
    /// Takes leadership if nobody holds it. `Ok(None)` means another replica leads.
    pub async fn try_lead(&self) -> Result<Option<Leadership>, StoreError> {
        self.try_session_lock(SYNC_LOCK_KEY).await
    }

    /// Holds `replica_id` for this process. `Ok(None)` means a live process already holds it.
    pub async fn try_hold_replica_id(&self, replica_id: &str) -> Result<Option<SessionLock>, StoreError> {
        let digest = Sha256::digest(format!("letta-matrix replica\n{replica_id}").as_bytes());
        let key = i64::from_be_bytes(digest[..8].try_into().expect("8 bytes"));
        self.try_session_lock(key).await
    }

    async fn try_session_lock(&self, key: i64) -> Result<Option<SessionLock>, StoreError> {
        if self.backend == Backend::Sqlite {
            return Ok(Some(SessionLock { session: None }));
        }
        let mut session = AnyConnection::connect(&self.url).await?;
        let (acquired,): (bool,) = sqlx::query_as("SELECT pg_try_advisory_lock($1)")
            .bind(key)
            .fetch_one(&mut session)
            .await?;
        if acquired {
            Ok(Some(SessionLock { session: Some(session) }))
        } else {
            session.close().await?;
            Ok(None)
        }
    }
}

impl SessionLock {
    /// Whether the lock is still ours: a lost session means a lost lock.
    pub async fn still_held(&mut self) -> bool {
        match &mut self.session {
            None => true,
            Some(session) => session.ping().await.is_ok(),
        }
    }
}
