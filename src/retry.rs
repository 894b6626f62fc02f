//! When a failed attempt is tried again, and after how long.

use std::time::Duration;

use crate::config::Config;

/// What to do after an attempt that may be retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Try again after this long.
    Retry(Duration),
    /// The retries are used up.
    Exhausted,
    /// The server asked for a longer wait than allowed.
    TooLong(Duration),
}

/// Decides a retry after `retries_done` earlier retries of the request.
///
/// The back-off is `retry_base × 2^retries_done`, capped by `retry_max`, times a seeded
/// jitter in [0.5, 1); a `Retry-After` from the server is honoured when longer.
pub(crate) fn decide(
    config: &Config,
    retries_done: u32,
    retry_after: Option<Duration>,
    rng: &mut fastrand::Rng,
) -> Verdict {
    if let Some(asked) = retry_after {
        if asked > config.max_retry_after {
            return Verdict::TooLong(asked);
        }
    }
    if retries_done >= config.max_retries {
        return Verdict::Exhausted;
    }
    let backoff = config
        .retry_base
        .saturating_mul(1u32 << retries_done.min(20))
        .min(config.retry_max);
    let jittered = backoff.mul_f64(0.5 + rng.f64() * 0.5);
    Verdict::Retry(jittered.max(retry_after.unwrap_or(Duration::ZERO)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_stops_at_the_limit() {
        let config = Config {
            max_retries: 3,
            ..Config::default()
        };
        let mut rng = fastrand::Rng::with_seed(7);
        for n in 0..3 {
            let Verdict::Retry(d) = decide(&config, n, None, &mut rng) else {
                panic!("attempt {n} should be retried");
            };
            let full = Duration::from_secs(1 << n);
            assert!(
                d >= full / 2 && d < full,
                "retry {n}: {d:?} not in [{:?}, {full:?})",
                full / 2
            );
        }
        assert_eq!(decide(&config, 3, None, &mut rng), Verdict::Exhausted);
    }

    #[test]
    fn retry_after_is_honoured_and_a_long_one_gives_up() {
        let config = Config::default();
        let mut rng = fastrand::Rng::with_seed(7);
        assert_eq!(
            decide(&config, 0, Some(Duration::from_secs(40)), &mut rng),
            Verdict::Retry(Duration::from_secs(40))
        );
        assert_eq!(
            decide(&config, 0, Some(Duration::from_secs(3600)), &mut rng),
            Verdict::TooLong(Duration::from_secs(3600))
        );
    }

    #[test]
    fn same_seed_same_jitter() {
        let config = Config::default();
        let a = decide(&config, 1, None, &mut fastrand::Rng::with_seed(42));
        let b = decide(&config, 1, None, &mut fastrand::Rng::with_seed(42));
        assert_eq!(a, b);
    }
}
