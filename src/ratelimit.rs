//! Rate-limit signals meet here: one pure function from (host pace, response, now) to the
//! host's next pace.
//!
//! The signals are `429 Too Many Requests` and `503 Service Unavailable` (with or without
//! `Retry-After`, as seconds or an HTTP date), robots.txt `Crawl-delay`, and optionally the
//! observed latency. The delay is measured from the **end** of one response to the **start**
//! of the next fetch from the same host.

use std::time::{Duration, Instant};

use http::header::{DATE, RETRY_AFTER};
use http::{HeaderMap, StatusCode};

/// How a host is paced, as kept between its responses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HostPace {
    /// No fetch to the host may start before this.
    pub next_allowed: Option<Instant>,
    /// Consecutive rate-limit responses (429/503); 0 when the host answers normally.
    pub backoffs: u32,
    /// Smoothed latency of the host's recent hops (kept when adaptive pacing is on).
    pub latency: Option<Duration>,
}

/// The rules a host is paced by.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PaceRules {
    /// Minimum delay between the end of one response and the start of the next fetch.
    pub delay: Duration,
    /// The host's robots.txt `Crawl-delay`, already capped.
    pub crawl_delay: Option<Duration>,
    /// With `Some(k)`, the delay is at least `k ×` the smoothed latency (capped by
    /// `max_delay`): a slow host is asked less often.
    pub adaptive: Option<f64>,
    /// Cap of the adaptive delay.
    pub max_delay: Duration,
    /// First back-off after a rate-limit response without `Retry-After`; doubles with each
    /// consecutive one.
    pub backoff_base: Duration,
    /// Cap of the back-off without `Retry-After`.
    pub max_backoff: Duration,
    /// Cap of a `Retry-After` pause.
    pub max_retry_after: Duration,
}

/// What a finished hop tells about its host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Feedback {
    /// The response status; `None` when the hop failed without a response.
    pub status: Option<StatusCode>,
    /// The response's `Retry-After`, parsed.
    pub retry_after: Option<Duration>,
    /// From the start of the hop to its end.
    pub latency: Duration,
}

/// Whether a status asks the client to slow down.
pub fn is_rate_limit(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE
}

/// The delay a host is paced by between responses, before back-off.
pub fn base_delay(pace: &HostPace, rules: &PaceRules) -> Duration {
    let mut delay = rules.delay;
    if let Some(crawl) = rules.crawl_delay {
        delay = delay.max(crawl);
    }
    if let (Some(k), Some(latency)) = (rules.adaptive, pace.latency) {
        delay = delay.max(latency.mul_f64(k.max(0.0)).min(rules.max_delay));
    }
    delay
}

/// The host's pace after a hop to it ended at `now`.
///
/// - A normal response (or a failure without response) clears the back-off; the next fetch
///   may start after the base delay.
/// - `429`/`503` with `Retry-After`: wait that long (capped by `max_retry_after`), and at
///   least the base delay.
/// - `429`/`503` without it: wait `backoff_base × 2^(n-1)` for the n-th in a row, capped by
///   `max_backoff`, and at least the base delay.
/// - A pause already decided is never shortened.
pub fn pace(state: &HostPace, rules: &PaceRules, feedback: &Feedback, now: Instant) -> HostPace {
    let mut next = *state;
    if rules.adaptive.is_some() {
        next.latency = Some(match state.latency {
            // An exponentially weighted moving average with weight 1/4 for the new sample.
            Some(old) => (old * 3 + feedback.latency) / 4,
            None => feedback.latency,
        });
    }
    let base = base_delay(&next, rules);
    let wait = match feedback.status {
        Some(status) if is_rate_limit(status) => {
            next.backoffs = next.backoffs.saturating_add(1);
            let pause = match feedback.retry_after {
                Some(asked) => asked.min(rules.max_retry_after),
                None => {
                    let doublings = (next.backoffs - 1).min(20);
                    rules
                        .backoff_base
                        .saturating_mul(1u32 << doublings)
                        .min(rules.max_backoff)
                }
            };
            pause.max(base)
        }
        _ => {
            next.backoffs = 0;
            base
        }
    };
    let candidate = now + wait;
    next.next_allowed = Some(match state.next_allowed {
        Some(previous) => previous.max(candidate),
        None => candidate,
    });
    next
}

/// Parses `Retry-After`: delay-seconds, or an HTTP date measured against the response's own
/// `Date` header (the core has no wall clock; without `Date`, a date is ignored and the
/// back-off without header applies).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    let date = headers.get(DATE)?.to_str().ok()?;
    let date = httpdate::parse_http_date(date.trim()).ok()?;
    Some(at.duration_since(date).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn rules() -> PaceRules {
        PaceRules {
            delay: Duration::from_secs(1),
            crawl_delay: None,
            adaptive: None,
            max_delay: Duration::from_secs(30),
            backoff_base: Duration::from_secs(2),
            max_backoff: Duration::from_secs(60),
            max_retry_after: Duration::from_secs(300),
        }
    }

    fn fb(status: u16, retry_after: Option<u64>) -> Feedback {
        Feedback {
            status: Some(StatusCode::from_u16(status).unwrap()),
            retry_after: retry_after.map(Duration::from_secs),
            latency: Duration::from_millis(100),
        }
    }

    #[test]
    fn normal_response_waits_the_delay_from_the_end() {
        let t0 = crate::t0();
        let p = pace(&HostPace::default(), &rules(), &fb(200, None), t0);
        assert_eq!(p.next_allowed, Some(t0 + Duration::from_secs(1)));
        assert_eq!(p.backoffs, 0);
    }

    #[test]
    fn crawl_delay_raises_the_delay() {
        let t0 = crate::t0();
        let r = PaceRules {
            crawl_delay: Some(Duration::from_secs(5)),
            ..rules()
        };
        let p = pace(&HostPace::default(), &r, &fb(200, None), t0);
        assert_eq!(p.next_allowed, Some(t0 + Duration::from_secs(5)));
    }

    #[test]
    fn retry_after_is_honoured_and_capped() {
        let t0 = crate::t0();
        let p = pace(&HostPace::default(), &rules(), &fb(429, Some(20)), t0);
        assert_eq!(p.next_allowed, Some(t0 + Duration::from_secs(20)));
        assert_eq!(p.backoffs, 1);
        let p = pace(&HostPace::default(), &rules(), &fb(503, Some(100_000)), t0);
        assert_eq!(p.next_allowed, Some(t0 + Duration::from_secs(300)));
    }

    #[test]
    fn backoff_without_header_doubles_then_caps_then_clears() {
        let t0 = crate::t0();
        let mut p = HostPace::default();
        let mut waits = Vec::new();
        for _ in 0..7 {
            p.next_allowed = None;
            p = pace(&p, &rules(), &fb(503, None), t0);
            waits.push((p.next_allowed.unwrap() - t0).as_secs());
        }
        assert_eq!(waits, vec![2, 4, 8, 16, 32, 60, 60]);
        p.next_allowed = None;
        p = pace(&p, &rules(), &fb(200, None), t0);
        assert_eq!(p.backoffs, 0);
        assert_eq!(p.next_allowed, Some(t0 + Duration::from_secs(1)));
    }

    #[test]
    fn a_decided_pause_is_never_shortened() {
        let t0 = crate::t0();
        let p = pace(&HostPace::default(), &rules(), &fb(429, Some(30)), t0);
        let p = pace(&p, &rules(), &fb(200, None), t0 + Duration::from_secs(1));
        assert_eq!(p.next_allowed, Some(t0 + Duration::from_secs(30)));
    }

    #[test]
    fn adaptive_delay_follows_latency() {
        let t0 = crate::t0();
        let r = PaceRules {
            adaptive: Some(2.0),
            ..rules()
        };
        let slow = Feedback {
            latency: Duration::from_secs(3),
            ..fb(200, None)
        };
        let p = pace(&HostPace::default(), &r, &slow, t0);
        assert_eq!(p.next_allowed, Some(t0 + Duration::from_secs(6)));
        let very_slow = Feedback {
            latency: Duration::from_secs(100),
            ..fb(200, None)
        };
        let p = pace(&HostPace::default(), &r, &very_slow, t0);
        assert_eq!(p.next_allowed, Some(t0 + Duration::from_secs(30)));
    }

    #[test]
    fn retry_after_parses_seconds_and_dates() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_static("120"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(120)));
        h.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:30 GMT"),
        );
        assert_eq!(retry_after(&h), None, "a date needs the response's Date");
        h.insert(
            DATE,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&h), Some(Duration::from_secs(30)));
        h.insert(
            DATE,
            HeaderValue::from_static("Wed, 21 Oct 2015 08:00:00 GMT"),
        );
        assert_eq!(
            retry_after(&h),
            Some(Duration::ZERO),
            "a past date means now"
        );
        h.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h), None);
    }
}
