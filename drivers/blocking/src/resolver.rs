//! Name resolution for ureq without a thread per request.
//!
//! ureq resolves a request's host on every request, pooled connection or not, and with a
//! timeout it does so on a thread spawned for the purpose. Here an IP address is taken as it
//! is, and a name is resolved (by ureq's resolver, within the timeout) once a minute at
//! most, as curl's DNS cache does.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::Uri;
use ureq::config::Config;
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::NextTimeout;

/// How long a resolved name is reused.
const TTL: Duration = Duration::from_secs(60);
/// Names kept at most; the cache is emptied when it is full.
const MAX_NAMES: usize = 10_000;

#[derive(Debug, Default)]
pub(crate) struct CachingResolver {
    inner: DefaultResolver,
    cache: Mutex<HashMap<String, (Instant, Vec<SocketAddr>)>>,
}

impl Resolver for CachingResolver {
    fn resolve(
        &self,
        uri: &Uri,
        config: &Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let Some(authority) = uri.authority() else {
            return self.inner.resolve(uri, config, timeout);
        };
        let port = authority.port_u16().or(match uri.scheme_str() {
            Some("http") => Some(80),
            Some("https") => Some(443),
            _ => None,
        });
        let Some(port) = port else {
            return self.inner.resolve(uri, config, timeout);
        };
        let host = authority.host();
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return Ok(self.addrs(&[SocketAddr::new(ip, port)]));
        }
        let key = format!("{}:{port}", host.to_ascii_lowercase());
        let now = Instant::now();
        if let Ok(cache) = self.cache.lock() {
            if let Some((at, addrs)) = cache.get(&key) {
                if now.duration_since(*at) < TTL {
                    return Ok(self.addrs(addrs));
                }
            }
        }
        let resolved = self.inner.resolve(uri, config, timeout)?;
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= MAX_NAMES {
                cache.clear();
            }
            cache.insert(key, (now, resolved.iter().copied().collect()));
        }
        Ok(resolved)
    }
}

impl CachingResolver {
    fn addrs(&self, addrs: &[SocketAddr]) -> ResolvedSocketAddrs {
        let mut out = self.empty();
        for addr in addrs.iter().take(16) {
            out.push(*addr);
        }
        out
    }
}
