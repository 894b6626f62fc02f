//! Proxy rules: which proxy a URL goes through (`http_proxy`, `https_proxy`, `all_proxy`,
//! `no_proxy`, or rules of the same form), and a proxy URL taken apart.

use std::fmt;
use std::net::IpAddr;

use downpour::{url, TransportError, TransportErrorKind, Url};

/// Proxies by scheme, and the hosts that go direct.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    http: Option<Url>,
    https: Option<Url>,
    no: NoProxy,
}

impl Rules {
    /// Rules of this form; `None` when they name no proxy at all.
    pub fn new(http: Option<Url>, https: Option<Url>, no: &str) -> Option<Rules> {
        if http.is_none() && https.is_none() {
            return None;
        }
        Some(Rules {
            http,
            https,
            no: NoProxy::parse(no),
        })
    }

    /// The environment's rules, read as curl reads them: lower case first; the upper-case
    /// `HTTP_PROXY` is ignored under CGI (where a client can set it through a header).
    pub fn from_env() -> Option<Rules> {
        fn var(names: &[&str]) -> Option<String> {
            names
                .iter()
                .filter_map(|n| std::env::var(n).ok())
                .map(|v| v.trim().to_string())
                .find(|v| !v.is_empty())
        }
        fn url(value: Option<String>) -> Option<Url> {
            let value = value?;
            let with_scheme = if value.contains("://") {
                value
            } else {
                format!("http://{value}")
            };
            Url::parse(&with_scheme).ok()
        }
        let cgi = std::env::var_os("REQUEST_METHOD").is_some();
        let all = url(var(&["all_proxy", "ALL_PROXY"]));
        let http = if cgi {
            var(&["http_proxy"])
        } else {
            var(&["http_proxy", "HTTP_PROXY"])
        };
        let http = url(http).or_else(|| all.clone());
        let https = url(var(&["https_proxy", "HTTPS_PROXY"])).or(all);
        let no = var(&["no_proxy", "NO_PROXY"]).unwrap_or_default();
        Rules::new(http, https, &no)
    }

    /// The proxy for this URL, if any.
    pub fn proxy_for(&self, url: &Url) -> Option<&Url> {
        let proxy = match url.scheme() {
            "http" => self.http.as_ref(),
            "https" => self.https.as_ref(),
            _ => None,
        }?;
        if self.no.matches(url) {
            None
        } else {
            Some(proxy)
        }
    }
}

/// The `no_proxy` list: `*`, domains (`example.com` and `.example.com` both cover the
/// domain and its subdomains), IP addresses and CIDR blocks (`10.0.0.0/8`).
#[derive(Debug, Clone, Default)]
struct NoProxy {
    all: bool,
    domains: Vec<String>,
    ips: Vec<(IpAddr, u8)>,
}

impl NoProxy {
    fn parse(list: &str) -> NoProxy {
        let mut no = NoProxy::default();
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            if entry == "*" {
                no.all = true;
                continue;
            }
            let (addr, bits) = match entry.split_once('/') {
                Some((a, b)) => (a, b.parse::<u8>().ok()),
                None => (entry, None),
            };
            let bare = addr.trim_start_matches('[').trim_end_matches(']');
            if let Ok(ip) = bare.parse::<IpAddr>() {
                let max = if ip.is_ipv4() { 32 } else { 128 };
                no.ips.push((ip, bits.unwrap_or(max).min(max)));
                continue;
            }
            // A port is not part of the match.
            let host = match entry.rsplit_once(':') {
                Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
                _ => entry,
            };
            let domain = host
                .trim_start_matches("*.")
                .trim_start_matches('.')
                .trim_end_matches('.')
                .to_ascii_lowercase();
            if !domain.is_empty() {
                no.domains.push(domain);
            }
        }
        no
    }

    fn matches(&self, url: &Url) -> bool {
        if self.all {
            return true;
        }
        match url.host() {
            Some(url::Host::Ipv4(ip)) => self.ip_matches(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => self.ip_matches(IpAddr::V6(ip)),
            Some(url::Host::Domain(d)) => {
                let d = d.trim_end_matches('.').to_ascii_lowercase();
                self.domains.iter().any(|n| {
                    d == *n
                        || (d.len() > n.len()
                            && d.ends_with(n.as_str())
                            && d.as_bytes()[d.len() - n.len() - 1] == b'.')
                })
            }
            None => false,
        }
    }

    fn ip_matches(&self, ip: IpAddr) -> bool {
        self.ips.iter().any(|&(net, bits)| match (net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        })
    }
}

/// A proxy taken apart: where it is, and its credentials (decoded).
#[derive(Debug, Clone)]
pub struct Target {
    /// `host:port` (IPv6 in brackets).
    pub authority: String,
    /// Decoded user name and password, when the URL has credentials.
    pub credentials: Option<(String, String)>,
    /// The URL without credentials, for messages.
    pub redacted: String,
}

impl Target {
    pub fn from_url(url: &Url) -> Result<Target, TransportError> {
        let bad = |what: &str| {
            TransportError::new(
                TransportErrorKind::Proxy,
                format!("unusable proxy {}: {what}", redact(url)),
            )
        };
        if url.scheme() != "http" {
            return Err(bad("only http:// proxies are supported"));
        }
        let host = match url.host() {
            Some(url::Host::Ipv6(ip)) => format!("[{ip}]"),
            Some(h) => h.to_string(),
            None => return Err(bad("no host")),
        };
        let port = url.port_or_known_default().unwrap_or(80);
        let credentials = (!url.username().is_empty()).then(|| {
            (
                percent_decode(url.username()),
                percent_decode(url.password().unwrap_or("")),
            )
        });
        Ok(Target {
            authority: format!("{host}:{port}"),
            credentials,
            redacted: redact(url),
        })
    }

    /// Removes the credentials from a message, in every form they could take.
    pub fn scrub(&self, message: String) -> String {
        let Some((user, pass)) = &self.credentials else {
            return message;
        };
        let mut out = message;
        let auth = base64(format!("{user}:{pass}").as_bytes());
        for secret in [auth.as_str(), pass.as_str()] {
            if !secret.is_empty() {
                out = out.replace(secret, "***");
            }
        }
        out
    }
}

/// A proxy URL fit for messages: the credentials replaced.
pub fn redact(url: &Url) -> String {
    let mut url = url.clone();
    if !url.username().is_empty() || url.password().is_some() {
        let _ = url.set_username("***");
        let _ = url.set_password(None);
    }
    url.to_string()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 3 <= bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
            if let Ok(b) = u8::from_str_radix(hex, 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn base64(input: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(T[(n >> 18) as usize & 63] as char);
        out.push(T[(n >> 12) as usize & 63] as char);
        out.push(if chunk.len() > 1 {
            T[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if chunk.len() > 2 {
            T[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

/// Which proxy requests go through (a request's own `Request::proxy` always wins).
#[derive(Clone, Default)]
pub enum Proxy {
    /// `http_proxy`, `https_proxy`, `all_proxy` and `no_proxy`, upper or lower case, read
    /// once when the fetcher is made (as curl reads them).
    #[default]
    FromEnv,
    /// Never a proxy (besides a request's own).
    None,
    /// These rules, in the same form as the environment variables.
    Rules {
        /// Proxy for `http` URLs, e.g. `http://user:pass@proxy:3128`.
        http: Option<Url>,
        /// Proxy for `https` URLs (reached with `CONNECT`).
        https: Option<Url>,
        /// Hosts that go direct, comma separated, as `no_proxy` (`localhost,.example.com,10.0.0.0/8`).
        no: String,
    },
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Proxy::FromEnv => f.write_str("FromEnv"),
            Proxy::None => f.write_str("None"),
            Proxy::Rules { http, https, no } => f
                .debug_struct("Rules")
                .field("http", &http.as_ref().map(redact))
                .field("https", &https.as_ref().map(redact))
                .field("no", no)
                .finish(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn base64_matches_rfc_4648() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"Aladdin:opensesame"), "QWxhZGRpbjpvcGVuc2VzYW1l");
    }

    #[test]
    fn credentials_are_decoded_and_never_shown() {
        let t = Target::from_url(&url("http://us%40er:p%3Ass@proxy.example:3128")).unwrap();
        assert_eq!(t.authority, "proxy.example:3128");
        assert_eq!(
            t.credentials,
            Some(("us@er".to_string(), "p:ss".to_string()))
        );
        assert!(!t.redacted.contains("p%3Ass"));
        assert_eq!(t.scrub("failed with p:ss".into()), "failed with ***");
        assert!(Target::from_url(&url("socks5://proxy:1080")).is_err());
        assert_eq!(
            Target::from_url(&url("http://proxy")).unwrap().authority,
            "proxy:80"
        );
    }

    #[test]
    fn no_proxy_matches_domains_ips_and_blocks() {
        let proxy = url("http://proxy:3128");
        let rules = Rules::new(
            Some(proxy.clone()),
            None,
            "localhost, .example.com,other.org:8080,10.0.0.0/8,127.0.0.3,[::1]",
        )
        .unwrap();
        let via = |u: &str| rules.proxy_for(&url(u)).is_some();
        assert!(!via("http://localhost/"));
        assert!(!via("http://example.com/"));
        assert!(!via("http://a.b.example.com/"));
        assert!(via("http://notexample.com/"));
        assert!(!via("http://x.other.org/"));
        assert!(!via("http://10.1.2.3/"));
        assert!(via("http://11.1.2.3/"));
        assert!(!via("http://127.0.0.3:8080/"));
        assert!(via("http://127.0.0.2/"));
        assert!(!via("http://[::1]:80/"));
        // No https proxy given: https goes direct.
        assert!(!via("https://far.away/"));
        let all = Rules::new(Some(proxy), None, "*").unwrap();
        assert!(all.proxy_for(&url("http://anything/")).is_none());
        assert!(Rules::new(None, None, "").is_none());
    }
}
