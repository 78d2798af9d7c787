//! One replica reconciles at a time. On PostgreSQL that is whoever holds a session advisory
//! lock on a connection of its own: if the process dies, the session ends and the lock with it,
//! and another replica takes over on its next try. SQLite means one instance, always the leader.

use sqlx::{AnyConnection, Connection};

use super::{Backend, Store, StoreError};

/// "letta-matrix sync" folded into the bigint space of advisory lock keys.
const SYNC_LOCK_KEY: i64 = 0x6c65_7474_6173_796e;

/// Leadership held through a dedicated database session; dropping it gives leadership up.
pub struct Leadership {
    session: Option<AnyConnection>,
}

impl Store {
    /// Takes leadership if nobody holds it. `Ok(None)` means another replica leads.
    pub async fn try_lead(&self) -> Result<Option<Leadership>, StoreError> {
        if self.backend == Backend::Sqlite {
            return Ok(Some(Leadership { session: None }));
        }
        let mut session = AnyConnection::connect(&self.url).await?;
        let (acquired,): (bool,) = sqlx::query_as("SELECT pg_try_advisory_lock($1)")
            .bind(SYNC_LOCK_KEY)
            .fetch_one(&mut session)
            .await?;
        if acquired {
            Ok(Some(Leadership { session: Some(session) }))
        } else {
            session.close().await?;
            Ok(None)
        }
    }
}

impl Leadership {
    /// Whether the lock is still ours: a lost session means a lost lock.
    pub async fn still_held(&mut self) -> bool {
        match &mut self.session {
            None => true,
            Some(session) => session.ping().await.is_ok(),
        }
    }
}
