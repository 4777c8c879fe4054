//! How long the driver waits before it reconnects.

use std::time::Duration;

/// Capped exponential backoff with jitter: attempt n waits a random time between half and all
/// of min(100 ms × 2ⁿ, 30 s), so modules that lost edgeHub together do not reconnect together.
pub(crate) struct Backoff {
    attempt: u32,
    rng: fastrand::Rng,
}

impl Backoff {
    pub(crate) fn new() -> Backoff {
        Backoff::with_rng(fastrand::Rng::new())
    }

    pub(crate) fn with_rng(rng: fastrand::Rng) -> Backoff {
        Backoff { attempt: 0, rng }
    }

    /// After a successful connection: the next failure waits the shortest time again.
    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }

    pub(crate) fn next(&mut self) -> Duration {
        let ceiling = 100u64.saturating_mul(1 << self.attempt.min(9)).min(30_000);
        self.attempt = self.attempt.saturating_add(1);
        Duration::from_millis(self.rng.u64(ceiling / 2..=ceiling))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_30_s_with_jitter_and_restarts_after_a_connection() {
        let mut b = Backoff::with_rng(fastrand::Rng::with_seed(7));
        for n in 0..14u32 {
            let ceiling = (100u64 << n.min(9)).min(30_000);
            let wait = b.next().as_millis() as u64;
            assert!(
                (ceiling / 2..=ceiling).contains(&wait),
                "attempt {n}: {wait} ms outside {}..={ceiling}",
                ceiling / 2
            );
        }
        b.reset();
        assert!(b.next() <= Duration::from_millis(100));
    }

    #[test]
    fn clients_failing_together_spread_their_retries() {
        // 100 clients at the same attempt (the fleet after an outage): their waits differ.
        let waits: std::collections::HashSet<u128> = (0..100u64)
            .map(|seed| {
                let mut b = Backoff::with_rng(fastrand::Rng::with_seed(seed));
                for _ in 0..5 {
                    b.next();
                }
                b.next().as_millis()
            })
            .collect();
        assert!(
            waits.len() > 50,
            "only {} distinct waits of 100",
            waits.len()
        );
        assert!(waits.iter().all(|w| (1600..=3200).contains(w)));
    }
}
