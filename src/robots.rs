//! robots.txt per origin (RFC 9309): what is known, what is being fetched, and who waits.
//!
//! Parsing is `texting_robots`'s; this module only keeps the cache (a TTL per origin and a
//! size cap, least recently used going first) and the state of each origin's fetch.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;
use texting_robots::Robot;
use url::Url;

use crate::request::RequestId;

/// An origin (`scheme://host:port`) interned by the cache.
pub(crate) type OriginId = u32;

/// What robots.txt says about a URL, or why it cannot say yet.
pub(crate) enum Check {
    /// Fetch it; the origin asks for this crawl delay (in seconds, uncapped).
    Allowed { crawl_delay: Option<f32> },
    /// robots.txt forbids it.
    Disallowed,
    /// robots.txt could not be had; the origin is off-limits until the given time.
    Unavailable { origin: String, reason: String },
    /// robots.txt is being fetched; wait for it.
    Pending(OriginId),
    /// Nothing is known: fetch robots.txt for this origin, and wait for it.
    Missing(OriginId),
}

enum State {
    Fetching {
        waiters: Vec<RequestId>,
        attempts: u32,
    },
    Ready {
        rules: Rules,
        expires: Instant,
    },
    Unavailable {
        until: Instant,
        reason: String,
    },
}

enum Rules {
    AllowAll,
    Parsed(Box<Robot>),
}

struct Origin {
    key: Box<str>,
    state: State,
    /// Second-chance bit of the clock eviction.
    referenced: bool,
}

/// The robots.txt cache.
pub(crate) struct RobotsCache {
    ids: FxHashMap<Box<str>, OriginId>,
    origins: Vec<Option<Origin>>,
    free: Vec<OriginId>,
    live: usize,
    /// Origins whose robots.txt is being fetched: they do not count against the cap.
    fetching: usize,
    cap: usize,
    hand: usize,
    agent: String,
    key: String,
}

impl RobotsCache {
    pub fn new(agent: &str, cap: usize) -> Self {
        RobotsCache {
            ids: FxHashMap::default(),
            origins: Vec::new(),
            free: Vec::new(),
            live: 0,
            fetching: 0,
            cap,
            hand: 0,
            agent: agent.to_string(),
            key: String::new(),
        }
    }

    /// Origins known (with rules, a fetch under way, or marked unavailable).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.live
    }

    /// Origins whose robots.txt is being fetched, and requests waiting for them.
    pub fn pending(&self) -> (usize, usize) {
        let mut origins = 0;
        let mut waiters = 0;
        for o in self.origins.iter().flatten() {
            if let State::Fetching { waiters: w, .. } = &o.state {
                origins += 1;
                waiters += w.len();
            }
        }
        (origins, waiters)
    }

    /// What robots.txt says about `url` at `now`.
    pub fn check(&mut self, now: Instant, url: &Url) -> Check {
        self.key.clear();
        let _ = write!(
            self.key,
            "{}://{}:{}",
            url.scheme(),
            url.host_str().unwrap_or(""),
            url.port_or_known_default().unwrap_or(0)
        );
        let Some(&id) = self.ids.get(self.key.as_str()) else {
            return Check::Missing(self.insert());
        };
        let origin = self.origins[id as usize]
            .as_mut()
            .expect("interned origin is live");
        origin.referenced = true;
        match &origin.state {
            State::Fetching { .. } => Check::Pending(id),
            State::Ready { expires, .. } if *expires <= now => {
                origin.state = fetching();
                self.fetching += 1;
                Check::Missing(id)
            }
            State::Ready { rules, .. } => match rules {
                Rules::AllowAll => Check::Allowed { crawl_delay: None },
                Rules::Parsed(robot) => {
                    if robot.allowed(url.as_str()) {
                        Check::Allowed {
                            crawl_delay: robot.delay,
                        }
                    } else {
                        Check::Disallowed
                    }
                }
            },
            State::Unavailable { until, .. } if *until <= now => {
                origin.state = fetching();
                self.fetching += 1;
                Check::Missing(id)
            }
            State::Unavailable { reason, .. } => Check::Unavailable {
                origin: origin.key.to_string(),
                reason: reason.clone(),
            },
        }
    }

    /// `request` waits for the origin's robots.txt.
    pub fn wait(&mut self, id: OriginId, request: RequestId) {
        if let Some(Origin {
            state: State::Fetching { waiters, .. },
            ..
        }) = self.origins.get_mut(id as usize).and_then(Option::as_mut)
        {
            waiters.push(request);
        }
    }

    /// The `Crawl-delay` (seconds, uncapped) of the origin's rules, if they have one.
    pub fn crawl_delay(&self, id: OriginId) -> Option<f32> {
        match &self.origins.get(id as usize)?.as_ref()?.state {
            State::Ready {
                rules: Rules::Parsed(robot),
                ..
            } => robot.delay,
            _ => None,
        }
    }

    /// The origin's key, `scheme://host:port`.
    pub fn key(&self, id: OriginId) -> &str {
        self.origins[id as usize].as_ref().map_or("", |o| &o.key)
    }

    /// robots.txt arrived (2xx, with this body) or is absent (`None`: allow all). Returns the
    /// requests that waited for it.
    pub fn set_rules(
        &mut self,
        id: OriginId,
        body: Option<&[u8]>,
        expires: Instant,
    ) -> Vec<RequestId> {
        let rules = match body {
            // A file the parser rejects outright has no rules it could follow.
            Some(body) => Robot::new(&self.agent, body)
                .map(|r| Rules::Parsed(Box::new(r)))
                .unwrap_or(Rules::AllowAll),
            None => Rules::AllowAll,
        };
        self.settle(id, State::Ready { rules, expires })
    }

    /// robots.txt failed (5xx, 429 or unreachable). Returns how many attempts failed so far.
    pub fn record_failure(&mut self, id: OriginId) -> u32 {
        match self.origins.get_mut(id as usize).and_then(Option::as_mut) {
            Some(Origin {
                state: State::Fetching { attempts, .. },
                ..
            }) => {
                *attempts += 1;
                *attempts
            }
            _ => u32::MAX,
        }
    }

    /// Gives up on robots.txt for a while. Returns the requests that waited for it.
    pub fn set_unavailable(
        &mut self,
        id: OriginId,
        until: Instant,
        reason: String,
    ) -> Vec<RequestId> {
        self.settle(id, State::Unavailable { until, reason })
    }

    /// Forgets the origin's fetch (the scheduler is handing its requests back).
    pub fn abandon(&mut self, id: OriginId) {
        if let Some(o) = self.origins.get_mut(id as usize).and_then(Option::take) {
            if matches!(o.state, State::Fetching { .. }) {
                self.fetching -= 1;
            }
            self.ids.remove(&o.key);
            self.free.push(id);
            self.live -= 1;
        }
    }

    /// Ends the origin's fetch with `state`, then keeps the cache within its cap (never
    /// evicting this origin: its waiters are about to read it). Returns the waiters.
    fn settle(&mut self, id: OriginId, state: State) -> Vec<RequestId> {
        let Some(origin) = self.origins.get_mut(id as usize).and_then(Option::as_mut) else {
            return Vec::new();
        };
        let waiters = match std::mem::replace(&mut origin.state, state) {
            State::Fetching { waiters, .. } => {
                self.fetching -= 1;
                waiters
            }
            _ => Vec::new(),
        };
        self.evict(id);
        waiters
    }

    fn insert(&mut self) -> OriginId {
        let key: Box<str> = self.key.as_str().into();
        let origin = Origin {
            key: key.clone(),
            state: fetching(),
            referenced: true,
        };
        let id = match self.free.pop() {
            Some(id) => {
                self.origins[id as usize] = Some(origin);
                id
            }
            None => {
                self.origins.push(Some(origin));
                (self.origins.len() - 1) as OriginId
            }
        };
        self.ids.insert(key, id);
        self.live += 1;
        self.fetching += 1;
        id
    }

    /// Evicts settled origins over the cap, least recently used first (clock algorithm:
    /// an origin checked since the hand last passed gets a second chance). Origins whose
    /// robots.txt is being fetched neither count nor are evicted, so a settle evicts at most
    /// one origin, after a sweep bounded by the table's size.
    fn evict(&mut self, keep: OriginId) {
        let mut budget = self.origins.len() * 2;
        while self.live - self.fetching > self.cap && budget > 0 {
            budget -= 1;
            if self.hand >= self.origins.len() {
                self.hand = 0;
            }
            let id = self.hand;
            self.hand += 1;
            let Some(origin) = self.origins[id].as_mut() else {
                continue;
            };
            if id == keep as usize || matches!(origin.state, State::Fetching { .. }) {
                continue;
            }
            if origin.referenced {
                origin.referenced = false;
                continue;
            }
            self.abandon(id as OriginId);
        }
    }
}

fn fetching() -> State {
    State::Fetching {
        waiters: Vec::new(),
        attempts: 0,
    }
}

/// The robots.txt URL of the origin of `url`.
pub(crate) fn robots_url(url: &Url) -> Url {
    let mut robots = url.clone();
    robots.set_path("/robots.txt");
    robots.set_query(None);
    robots.set_fragment(None);
    let _ = robots.set_username("");
    let _ = robots.set_password(None);
    robots
}

/// A `Crawl-delay` as a duration, capped; nonsense values are ignored.
pub(crate) fn crawl_delay(seconds: f32, cap: Duration) -> Option<Duration> {
    if seconds.is_finite() && seconds > 0.0 {
        Some(Duration::from_secs_f64(f64::from(seconds)).min(cap))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    fn id(index: u32) -> RequestId {
        RequestId {
            index,
            generation: 0,
        }
    }

    #[test]
    fn first_check_asks_for_a_fetch_then_rules_apply() {
        let t0 = crate::t0();
        let mut c = RobotsCache::new("downpour", 10);
        let Check::Missing(o) = c.check(t0, &url("http://a.test/x")) else {
            panic!("unknown origin must be fetched");
        };
        c.wait(o, id(1));
        assert!(matches!(c.check(t0, &url("http://a.test/y")), Check::Pending(p) if p == o));
        c.wait(o, id(2));
        let body = b"User-agent: *\nDisallow: /private\nCrawl-delay: 2\n";
        let waiters = c.set_rules(o, Some(body), t0 + Duration::from_secs(60));
        assert_eq!(waiters, vec![id(1), id(2)]);
        assert!(matches!(
            c.check(t0, &url("http://a.test/public")),
            Check::Allowed { crawl_delay: Some(d) } if d == 2.0
        ));
        assert!(matches!(
            c.check(t0, &url("http://a.test/private/1")),
            Check::Disallowed
        ));
        // Another scheme or port is another origin.
        assert!(matches!(
            c.check(t0, &url("https://a.test/private")),
            Check::Missing(_)
        ));
        // Expired rules are fetched again.
        assert!(matches!(
            c.check(t0 + Duration::from_secs(60), &url("http://a.test/public")),
            Check::Missing(p) if p == o
        ));
    }

    #[test]
    fn rules_for_our_agent_win_over_the_star_group() {
        let t0 = crate::t0();
        let mut c = RobotsCache::new("downpour", 10);
        let Check::Missing(o) = c.check(t0, &url("http://a.test/")) else {
            panic!()
        };
        let body = b"User-agent: *\nDisallow: /\n\nUser-agent: downpour\nAllow: /\n";
        c.set_rules(o, Some(body), t0 + Duration::from_secs(60));
        assert!(matches!(
            c.check(t0, &url("http://a.test/page")),
            Check::Allowed { .. }
        ));
    }

    #[test]
    fn unavailable_origin_fails_fast_then_is_tried_again() {
        let t0 = crate::t0();
        let mut c = RobotsCache::new("downpour", 10);
        let Check::Missing(o) = c.check(t0, &url("http://a.test/")) else {
            panic!()
        };
        assert_eq!(c.record_failure(o), 1);
        assert_eq!(c.record_failure(o), 2);
        c.set_unavailable(o, t0 + Duration::from_secs(10), "HTTP 503".into());
        match c.check(t0, &url("http://a.test/x")) {
            Check::Unavailable { origin, reason } => {
                assert_eq!(origin, "http://a.test:80");
                assert_eq!(reason, "HTTP 503");
            }
            _ => panic!("expected unavailable"),
        }
        assert!(matches!(
            c.check(t0 + Duration::from_secs(10), &url("http://a.test/x")),
            Check::Missing(_)
        ));
    }

    #[test]
    fn cache_is_capped_and_never_evicts_a_pending_fetch() {
        let t0 = crate::t0();
        let far = t0 + Duration::from_secs(3600);
        let mut c = RobotsCache::new("downpour", 3);
        let Check::Missing(pending) = c.check(t0, &url("http://pending.test/")) else {
            panic!()
        };
        for i in 0..20 {
            let Check::Missing(o) = c.check(t0, &url(&format!("http://h{i}.test/"))) else {
                panic!()
            };
            c.set_rules(o, None, far);
            // The cap holds settled origins; the pending one comes on top.
            assert!(c.len() <= 3 + 1, "cache grew to {}", c.len());
        }
        assert!(
            matches!(c.check(t0, &url("http://pending.test/")), Check::Pending(p) if p == pending)
        );
    }

    #[test]
    fn an_origin_just_read_survives_eviction_with_many_pending() {
        let t0 = crate::t0();
        let far = t0 + Duration::from_secs(3600);
        let mut c = RobotsCache::new("downpour", 1);
        let Check::Missing(a) = c.check(t0, &url("http://a.test/")) else {
            panic!()
        };
        let Check::Missing(_) = c.check(t0, &url("http://b.test/")) else {
            panic!()
        };
        c.set_rules(a, None, far);
        assert!(matches!(
            c.check(t0, &url("http://a.test/x")),
            Check::Allowed { .. }
        ));
    }

    #[test]
    fn robots_url_drops_path_query_and_credentials() {
        assert_eq!(
            robots_url(&url("https://u:p@a.test:8443/x/y?q#f")).as_str(),
            "https://a.test:8443/robots.txt"
        );
    }
}
