//! Plain HTTP through a forward proxy, in absolute form.
//!
//! ureq reaches every proxy through `CONNECT`, which many forward proxies allow to port 443
//! only, and which hides the request from the proxy (no `Via`, no caching, no per-request
//! authorization answer). For `http` URLs this connector opens the connection to the proxy
//! itself and rewrites each request line to absolute form (`GET http://host:port/path
//! HTTP/1.1`), adding `Proxy-Authorization` when the proxy URL has credentials. Everything
//! else — framing, timeouts, limits, pooling (keyed by origin and proxy) — stays ureq's.
//! `https` URLs are left to ureq's `CONNECT` connector, next in the chain.

use std::fmt;

use http::uri::Scheme;
use ureq::unversioned::transport::{
    Buffers, ConnectionDetails, Connector, Either, NextTimeout, Transport,
};

use crate::proxy::base64;
use crate::tcp::Tcp;

/// Connects `http` requests that have a proxy to that proxy, in absolute form, over `tcp`.
#[derive(Debug)]
pub(crate) struct HttpProxyConnector {
    pub(crate) tcp: Tcp,
}

impl<In: Transport> Connector<In> for HttpProxyConnector {
    type Out = Either<In, Box<dyn Transport>>;

    fn connect(
        &self,
        details: &ConnectionDetails,
        chained: Option<In>,
    ) -> Result<Option<Self::Out>, ureq::Error> {
        if let Some(transport) = chained {
            return Ok(Some(Either::A(transport)));
        }
        let Some(proxy) = details.config.proxy() else {
            return Ok(None);
        };
        if details.uri.scheme() != Some(&Scheme::HTTP) || proxy.is_no_proxy(details.uri) {
            return Ok(None);
        }
        let Some(authority) = details.uri.authority() else {
            return Ok(None);
        };
        let origin = format!("http://{}", authority.as_str());
        let addrs = details
            .resolver
            .resolve(proxy.uri(), details.config, details.timeout)?;
        let proxy_details = ConnectionDetails {
            uri: proxy.uri(),
            addrs,
            config: details.config,
            request_level: details.request_level,
            resolver: details.resolver,
            now: details.now,
            timeout: details.timeout,
            current_time: details.current_time.clone(),
            run_connector: details.run_connector.clone(),
            register_shutdown: details.register_shutdown.clone(),
        };
        let tcp = Connector::<()>::connect(&self.tcp, &proxy_details, None)?;
        let Some(Either::B(tcp)) = tcp else {
            return Ok(None);
        };
        let auth = proxy.username().map(|user| {
            let pass = proxy.password().unwrap_or("");
            format!("Basic {}", base64(format!("{user}:{pass}").as_bytes()))
        });
        Ok(Some(Either::B(Box::new(AbsoluteForm {
            inner: Box::new(tcp),
            origin,
            auth,
            state: State::Head,
        }))))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The next bytes written start a request head.
    Head,
    /// This many body bytes of the current request are still to be written.
    Body(u64),
    /// The body's length is unknown (chunked): the connection is not reused.
    Spent,
}

/// A connection to a proxy whose request lines are rewritten to absolute form.
struct AbsoluteForm {
    inner: Box<dyn Transport>,
    /// `http://host:port` of the origin every request on this connection goes to (the pool
    /// keys connections by origin and proxy).
    origin: String,
    /// `Proxy-Authorization` value.
    auth: Option<String>,
    state: State,
}

impl fmt::Debug for AbsoluteForm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AbsoluteForm")
            .field("origin", &self.origin)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl Transport for AbsoluteForm {
    fn buffers(&mut self) -> &mut dyn Buffers {
        self.inner.buffers()
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), ureq::Error> {
        match self.state {
            State::Body(left) => {
                let left = left.saturating_sub(amount as u64);
                self.state = if left == 0 {
                    State::Head
                } else {
                    State::Body(left)
                };
                self.inner.transmit_output(amount, timeout)
            }
            State::Spent => self.inner.transmit_output(amount, timeout),
            State::Head => {
                let written = self.inner.buffers().output()[..amount].to_vec();
                let (rewritten, state) = rewrite(&written, &self.origin, self.auth.as_deref())?;
                let out = self.inner.buffers().output();
                if rewritten.len() > out.len() {
                    return Err(ureq::Error::Other(
                        "request head too large for the output buffer".into(),
                    ));
                }
                out[..rewritten.len()].copy_from_slice(&rewritten);
                self.state = state;
                self.inner.transmit_output(rewritten.len(), timeout)
            }
        }
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, ureq::Error> {
        self.inner.await_input(timeout)
    }

    fn is_open(&mut self) -> bool {
        self.state != State::Spent && self.inner.is_open()
    }
}

/// Rewrites the request line of the head at the start of `bytes` to absolute form and adds
/// `Proxy-Authorization`; says what follows the head.
fn rewrite(
    bytes: &[u8],
    origin: &str,
    auth: Option<&str>,
) -> Result<(Vec<u8>, State), ureq::Error> {
    let bad = || ureq::Error::Other("unexpected request head".into());
    let line_end = find(bytes, b"\r\n").ok_or_else(bad)?;
    let line = &bytes[..line_end];
    let first_space = line.iter().position(|&b| b == b' ').ok_or_else(bad)?;
    let (method, target) = line.split_at(first_space + 1);
    let mut out = Vec::with_capacity(bytes.len() + origin.len() + 64);
    out.extend_from_slice(method);
    if target.first() == Some(&b'/') {
        out.extend_from_slice(origin.as_bytes());
    }
    out.extend_from_slice(target);
    out.extend_from_slice(b"\r\n");
    if let Some(auth) = auth {
        out.extend_from_slice(b"Proxy-Authorization: ");
        out.extend_from_slice(auth.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let rest = &bytes[line_end + 2..];
    out.extend_from_slice(rest);
    // What follows the head: a body of known length, none, or an unknown one.
    let Some(head_end) = find(rest, b"\r\n\r\n").or_else(|| rest.starts_with(b"\r\n").then_some(0))
    else {
        // The head did not fit in one write: its body cannot be told from the next head.
        return Ok((out, State::Spent));
    };
    let body_start = if rest.starts_with(b"\r\n") && head_end == 0 {
        2
    } else {
        head_end + 4
    };
    let headers = String::from_utf8_lossy(&rest[..head_end]).to_ascii_lowercase();
    let mut length = 0u64;
    for h in headers.split("\r\n") {
        let Some((name, value)) = h.split_once(':') else {
            continue;
        };
        match name.trim() {
            "transfer-encoding" => return Ok((out, State::Spent)),
            "content-length" => length = value.trim().parse().map_err(|_| bad())?,
            _ => {}
        }
    }
    let already = (rest.len() - body_start) as u64;
    let left = length.saturating_sub(already);
    Ok((
        out,
        if left == 0 {
            State::Head
        } else {
            State::Body(left)
        },
    ))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_line_becomes_absolute_and_carries_credentials() {
        let head = b"GET /echo?x=1 HTTP/1.1\r\nhost: 127.0.0.2:8080\r\n\r\n";
        let (out, state) = rewrite(head, "http://127.0.0.2:8080", Some("Basic abc")).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET http://127.0.0.2:8080/echo?x=1 HTTP/1.1\r\nProxy-Authorization: Basic abc\r\n\
             host: 127.0.0.2:8080\r\n\r\n"
        );
        assert_eq!(state, State::Head);
    }

    #[test]
    fn bodies_are_counted_so_the_next_head_is_found() {
        let head = b"POST /form HTTP/1.1\r\ncontent-length: 10\r\n\r\nabc";
        let (out, state) = rewrite(head, "http://h", None).unwrap();
        assert!(out.starts_with(b"POST http://h/form HTTP/1.1\r\n"));
        assert!(out.ends_with(b"\r\n\r\nabc"));
        assert_eq!(state, State::Body(7));
        let chunked = b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n";
        assert_eq!(rewrite(chunked, "http://h", None).unwrap().1, State::Spent);
        let split = b"GET / HTTP/1.1\r\nx-long: aaaa";
        assert_eq!(rewrite(split, "http://h", None).unwrap().1, State::Spent);
    }
}
