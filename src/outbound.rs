//! What every outbound client (homeserver, Letta) shares: one HTTP client setup, and backoff
//! that is exponential, capped, and jittered so that replicas retrying together spread out.

use std::time::Duration;

/// An HTTP client that names us and gives up on dead peers instead of hanging.
pub fn http_client(request_timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(request_timeout)
        .user_agent(concat!("letta-matrix/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("a TLS backend is compiled in")
}

#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub first_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 6,
            first_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// One attempt and no waiting: for interactive checks that must answer at once.
    pub fn once() -> Self {
        Self {
            attempts: 1,
            ..Self::default()
        }
    }

    /// The wait before retry number `attempt` (1-based): between half and all of the capped
    /// exponential delay.
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self
            .first_delay
            .saturating_mul(1 << attempt.min(16))
            .min(self.max_delay);
        let mut random = [0u8; 4];
        getrandom::fill(&mut random).unwrap_or_default();
        let fraction = f64::from(u32::from_le_bytes(random)) / f64::from(u32::MAX);
        ceiling.mul_f64(0.5 + fraction / 2.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let policy = RetryPolicy {
            attempts: 10,
            first_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
        };
        let first = policy.delay(0);
        assert!(
            first >= Duration::from_millis(50) && first <= Duration::from_millis(100),
            "{first:?}"
        );
        let late = policy.delay(12);
        assert!(
            late >= Duration::from_millis(500) && late <= Duration::from_secs(1),
            "{late:?}"
        );
    }
}
