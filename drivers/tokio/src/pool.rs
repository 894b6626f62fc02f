//! The driver's own keep-alive HTTP/1.1 connections, for the direct hops that cannot become
//! HTTP/2: plain `http`, and `https` when HTTP/2 is not offered ([`ClientOptions::http2`]).
//!
//! hyper-util's pooled client, which the other hops use (HTTP/2 shares a connection between
//! streams, a proxy needs its connectors), boxes every request's future, races a checkout
//! against a lazy connect, and gives an HTTP/1 connection back through a task it spawns for
//! the request when the connection cannot take the next one yet (nearly always: its
//! response's body is still to be read). A hop knows when it is done with its connection,
//! once it has read the response's body in full: here it takes an idle connection of its
//! origin (or makes one) and gives it back then. In a fifo crawl over loopback that is about
//! an eighth less CPU in user space per request.
//!
//! [`ClientOptions::http2`]: crate::ClientOptions::http2

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use http_body_util::Full;
use hyper::body::{Body as _, Incoming};
use hyper::client::conn::http1::{Builder, SendRequest};
use rustc_hash::FxHashMap;
use tokio::sync::oneshot;
use tower_service::Service;

use crate::client::{BoxError, Carried, Connector};

type Sender = SendRequest<Full<Bytes>>;

/// Where a connection goes: scheme and authority, compared as written (URLs come with their
/// host lowercased). Hashed as two strings, rather than byte by byte as `Authority` hashes.
#[derive(Clone)]
struct Origin {
    scheme: Scheme,
    authority: Authority,
}

impl Origin {
    /// The origin of an absolute URI.
    fn of(uri: &Uri) -> Option<Origin> {
        Some(Origin {
            scheme: uri.scheme()?.clone(),
            authority: uri.authority()?.clone(),
        })
    }
}

impl PartialEq for Origin {
    fn eq(&self, other: &Origin) -> bool {
        self.scheme.as_str() == other.scheme.as_str()
            && self.authority.as_str() == other.authority.as_str()
    }
}

impl Eq for Origin {}

impl Hash for Origin {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.scheme.as_str().hash(state);
        self.authority.as_str().hash(state);
    }
}

/// While connections are idle, they are looked over for ones past their time this often (or
/// every idle timeout, if shorter), by a task of the pool's, so that those of origins no hop
/// comes back to are closed too.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Keep-alive HTTP/1.1 connections per origin. Shared by the hops of one client.
pub(crate) struct Http1Pool {
    connector: Connector,
    builder: Builder,
    idle_timeout: Duration,
    max_idle_per_origin: usize,
    idle: Mutex<Idle>,
}

struct Idle {
    /// Hosts come from the crawl's URLs, as in the scheduler's own maps: a fast hash.
    by_origin: FxHashMap<Origin, OriginEntry>,
    /// Whether the task that closes idle connections past their time runs.
    sweeping: bool,
}

/// An origin's idle connections, and the `Host` header of its requests (made once).
struct OriginEntry {
    host: HeaderValue,
    idle: Vec<IdleConnection>,
}

struct IdleConnection {
    sender: Sender,
    carried: Carried,
    since: Instant,
}

/// A connection lent to a hop: given back once the response's body was read in full, and
/// dropped (which closes it) otherwise.
pub(crate) struct Lease {
    pool: Arc<Http1Pool>,
    origin: Origin,
    sender: Sender,
    carried: Carried,
    /// The request had a body, which may still be going out when the response is complete
    /// (a server may answer before it read it all).
    sent_body: bool,
}

impl Lease {
    /// What the connection has carried.
    pub(crate) fn carried(&self) -> &Carried {
        &self.carried
    }

    /// The response's body was read in full: the connection may carry the next request. One
    /// whose request's body may still be going out joins the idle ones only once hyper can
    /// take the next request on it, so that no hop waits for the rest of that body (or for
    /// ever, if the server stopped reading it).
    pub(crate) fn give_back(self) {
        let Lease {
            pool,
            origin,
            mut sender,
            carried,
            sent_body,
        } = self;
        if sent_body && !sender.is_ready() {
            // Not ready within the idle timeout: dropped, which closes it.
            tokio::spawn(async move {
                let ready = tokio::time::timeout(pool.idle_timeout, sender.ready()).await;
                if matches!(ready, Ok(Ok(()))) {
                    Http1Pool::give_back(&pool, origin, sender, carried);
                }
            });
            return;
        }
        Http1Pool::give_back(&pool, origin, sender, carried);
    }
}

/// Why a hop through the pool got no response.
#[derive(Debug)]
pub(crate) struct PoolError {
    pub(crate) error: BoxError,
    /// The request went out on a connection that had carried responses before, and nothing
    /// of an answer came back: the server may have closed it as the request went out.
    pub(crate) on_reuse_unanswered: bool,
}

impl PoolError {
    /// A failure before the request went out on a reused connection.
    fn unsent(error: impl Into<BoxError>) -> Self {
        PoolError {
            error: error.into(),
            on_reuse_unanswered: false,
        }
    }
}

impl fmt::Display for PoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.error.fmt(f)
    }
}

impl Http1Pool {
    pub(crate) fn new(
        connector: Connector,
        max_buf_size: usize,
        max_headers: usize,
        idle_timeout: Duration,
        max_idle_per_origin: usize,
    ) -> Self {
        let mut builder = Builder::new();
        builder.max_buf_size(max_buf_size).max_headers(max_headers);
        Http1Pool {
            connector,
            builder,
            idle_timeout,
            max_idle_per_origin,
            idle: Mutex::new(Idle {
                by_origin: FxHashMap::default(),
                sweeping: false,
            }),
        }
    }

    /// Sends `request` (its URI absolute, with an authority) on an idle connection of its
    /// origin, or on a new one. A connection found closed before the request went out is
    /// passed over for the next (the request is not lost, and was not seen); the others'
    /// failures are the hop's.
    pub(crate) async fn send(
        self: Arc<Self>,
        mut request: Request<Full<Bytes>>,
    ) -> Result<(Response<Incoming>, Lease), PoolError> {
        let uri = request.uri().clone();
        let Some(origin) = Origin::of(&uri) else {
            return Err(PoolError::unsent(format!("{uri} has no scheme or host")));
        };
        let (host, idle) = self.take_idle(&origin).map_err(PoolError::unsent)?;
        request.headers_mut().entry(header::HOST).or_insert(host);
        *request.uri_mut() = origin_form(&uri);
        let mut first = Some(idle);
        loop {
            let taken = match first.take() {
                Some(idle) => idle,
                // The one before was found closed.
                None => self.take_more(&origin),
            };
            let (mut sender, carried, fresh) = match taken {
                Some((sender, carried)) => (sender, carried, None),
                None => {
                    // Boxed: a connect's state (TCP, TLS, the handshake) is kilobytes,
                    // and most hops find a connection idle.
                    let (sender, carried, failure) = Box::pin(self.connect(&uri))
                        .await
                        .map_err(PoolError::unsent)?;
                    (sender, carried, Some(failure))
                }
            };
            let reused = fresh.is_none();
            if let Err(closed) = sender.ready().await {
                let Some(failure) = fresh else {
                    continue;
                };
                // A new connection that ended before it took the request: its own error
                // says why (a reset, a TLS alert), where `closed` only says that it did.
                return Err(PoolError::unsent(failure.await.unwrap_or(closed)));
            }
            let sent_body = request.body().size_hint().exact() != Some(0);
            match sender.try_send_request(request).await {
                Ok(response) => {
                    carried.count();
                    let lease = Lease {
                        pool: Arc::clone(&self),
                        origin,
                        sender,
                        carried,
                        sent_body,
                    };
                    return Ok((response, lease));
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) if reused => request = unsent,
                    _ => {
                        return Err(PoolError {
                            on_reuse_unanswered: reused && carried.reused_unanswered(),
                            error: e.into_error().into(),
                        })
                    }
                },
            }
        }
    }

    /// A new connection to the URI's origin, its HTTP/1.1 exchange running on a task of its
    /// own (which ends when the connection closes, or when its sender is dropped), and the
    /// error it ends with, if it fails.
    async fn connect(
        &self,
        uri: &Uri,
    ) -> Result<(Sender, Carried, oneshot::Receiver<hyper::Error>), BoxError> {
        // `Connector` is always ready (its `poll_ready`): no need to ask.
        let io = self.connector.clone().call(uri.clone()).await?;
        let carried = io.inner().carried().clone();
        let (sender, connection) = self.builder.handshake(io).await?;
        let (failed, failure) = oneshot::channel();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                let _ = failed.send(e);
            }
        });
        Ok((sender, carried, failure))
    }

    /// The `Host` header of `origin`'s requests, and its connection idle the shortest time
    /// (the likeliest to be open still), leaving out those that closed or stayed idle too
    /// long.
    fn take_idle(
        &self,
        origin: &Origin,
    ) -> Result<(HeaderValue, Option<(Sender, Carried)>), BoxError> {
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        match idle.by_origin.get_mut(origin) {
            Some(entry) => Ok((entry.host.clone(), entry.take(now, self.idle_timeout))),
            // Not kept before a connection is given back: the origins tried whose connects
            // fail leave nothing behind.
            None => Ok((host_header(origin)?, None)),
        }
    }

    /// The next idle connection of `origin`, after one found closed.
    fn take_more(&self, origin: &Origin) -> Option<(Sender, Carried)> {
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        idle.by_origin.get_mut(origin)?.take(now, self.idle_timeout)
    }

    fn give_back(pool: &Arc<Self>, origin: Origin, sender: Sender, carried: Carried) {
        if sender.is_closed() || pool.max_idle_per_origin == 0 || pool.idle_timeout.is_zero() {
            return;
        }
        let mut idle = pool.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if !idle.sweeping {
            idle.sweeping = true;
            let every = SWEEP_EVERY.min(pool.idle_timeout);
            tokio::spawn(sweep_while_idle(Arc::downgrade(pool), every));
        }
        // New, or swept meanwhile (it had no idle connection): the header is made again.
        let entry = match idle.by_origin.get_mut(&origin) {
            Some(entry) => entry,
            None => {
                let Ok(host) = host_header(&origin) else {
                    return;
                };
                idle.by_origin.entry(origin).or_insert(OriginEntry {
                    host,
                    idle: Vec::new(),
                })
            }
        };
        if entry.idle.len() < pool.max_idle_per_origin {
            entry.idle.push(IdleConnection {
                sender,
                carried,
                since: Instant::now(),
            });
        }
    }
}

impl OriginEntry {
    fn take(&mut self, now: Instant, idle_timeout: Duration) -> Option<(Sender, Carried)> {
        while let Some(c) = self.idle.pop() {
            if usable(&c, now, idle_timeout) {
                return Some((c.sender, c.carried));
            }
        }
        None
    }
}

/// Closes the idle connections past their time every `every`, while any is idle (the next one
/// given back starts it again) and the pool lives.
async fn sweep_while_idle(pool: Weak<Http1Pool>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(pool) = pool.upgrade() else {
            return;
        };
        let mut idle = pool.idle.lock().unwrap_or_else(PoisonError::into_inner);
        idle.sweep(Instant::now(), pool.idle_timeout);
        if idle.by_origin.is_empty() {
            idle.sweeping = false;
            return;
        }
    }
}

impl Idle {
    /// Closes the idle connections past their time, or already closed (dropping a sender
    /// ends its connection), and forgets the origins left with none.
    fn sweep(&mut self, now: Instant, idle_timeout: Duration) {
        self.by_origin.retain(|_, entry| {
            entry.idle.retain(|c| usable(c, now, idle_timeout));
            !entry.idle.is_empty()
        });
    }
}

fn usable(c: &IdleConnection, now: Instant, idle_timeout: Duration) -> bool {
    !c.sender.is_closed() && now.saturating_duration_since(c.since) < idle_timeout
}

/// The `Host` header of a request to `origin`: its host, and its port unless the scheme's
/// own.
fn host_header(origin: &Origin) -> Result<HeaderValue, BoxError> {
    let host = origin.authority.host();
    let default = if origin.scheme == Scheme::HTTPS {
        443
    } else {
        80
    };
    let value = match origin.authority.port_u16() {
        Some(port) if port != default => HeaderValue::from_str(&format!("{host}:{port}")),
        _ => HeaderValue::from_str(host),
    };
    Ok(value?)
}

/// The request target of a request sent straight to its origin: the path and query.
fn origin_form(uri: &Uri) -> Uri {
    match uri.path_and_query() {
        Some(path) if path.as_str() != "/" => Uri::from(path.clone()),
        _ => Uri::from(PathAndQuery::from_static("/")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::HttpClient;
    use crate::test_runtime as runtime;
    use crate::{ClientOptions, Proxy};
    use http_body_util::BodyExt;
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpListener};
    use std::sync::mpsc;

    /// What the test server saw: a connection accepted, a request head on a connection, a
    /// connection closed by the client.
    #[derive(Debug, PartialEq)]
    enum Seen {
        Accepted(usize),
        Request(usize, String),
        Closed(usize),
    }

    /// A loopback HTTP/1.1 server that answers every request with `ok`, keeps connections
    /// open, and reports what it sees.
    fn server() -> (SocketAddr, mpsc::Receiver<Seen>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for (n, stream) in listener.incoming().enumerate() {
                let Ok(mut stream) = stream else { return };
                let tx = tx.clone();
                let _ = tx.send(Seen::Accepted(n));
                std::thread::spawn(move || {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    loop {
                        match stream.read(&mut byte) {
                            Ok(1) => head.push(byte[0]),
                            _ => {
                                let _ = tx.send(Seen::Closed(n));
                                return;
                            }
                        }
                        if head.ends_with(b"\r\n\r\n") {
                            let text = String::from_utf8_lossy(&head).into_owned();
                            let _ = tx.send(Seen::Request(n, text));
                            head.clear();
                            let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                            if stream.write_all(answer).is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (addr, rx)
    }

    fn next(seen: &mpsc::Receiver<Seen>) -> Seen {
        seen.recv_timeout(Duration::from_secs(5))
            .expect("the server saw nothing more")
    }

    fn get(url: &str) -> Request<Full<Bytes>> {
        let mut request = Request::new(Full::new(Bytes::new()));
        *request.uri_mut() = url.parse().unwrap();
        request
    }

    fn pool(idle_timeout: Duration, max_idle: usize) -> Arc<Http1Pool> {
        let options = ClientOptions {
            proxy: Proxy::None,
            pool_idle_timeout: idle_timeout,
            pool_max_idle_per_host: max_idle,
            ..ClientOptions::default()
        };
        HttpClient::new(&options, 16 << 10, false)
            .unwrap()
            .own_pool()
    }

    /// Sends, reads the body in full, and leaves the lease to the caller.
    async fn fetch(pool: &Arc<Http1Pool>, url: &str) -> Lease {
        let (response, lease) = Arc::clone(pool).send(get(url)).await.unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"ok");
        lease
    }

    #[test]
    fn a_connection_given_back_carries_the_next_request_in_origin_form() {
        let (addr, seen) = server();
        let pool = pool(Duration::from_secs(90), 32);
        runtime().block_on(async {
            fetch(&pool, &format!("http://{addr}/a?b=c"))
                .await
                .give_back();
            fetch(&pool, &format!("http://{addr}/")).await.give_back();
        });
        assert_eq!(next(&seen), Seen::Accepted(0));
        let Seen::Request(0, first) = next(&seen) else {
            panic!("no first request")
        };
        assert!(first.starts_with("GET /a?b=c HTTP/1.1\r\n"), "{first}");
        assert!(
            first
                .to_ascii_lowercase()
                .contains(&format!("host: {addr}\r\n")),
            "{first}"
        );
        let Seen::Request(0, second) = next(&seen) else {
            panic!("the second request went on another connection")
        };
        assert!(second.starts_with("GET / HTTP/1.1\r\n"), "{second}");
    }

    /// The server saw a first connection carry one request and close, and a second one
    /// carry the next request.
    fn assert_replaced(seen: &mpsc::Receiver<Seen>) {
        assert_eq!(next(seen), Seen::Accepted(0));
        assert!(matches!(next(seen), Seen::Request(0, _)));
        let mut rest = vec![next(seen), next(seen), next(seen)];
        rest.sort_by_key(|s| format!("{s:?}"));
        assert!(matches!(rest[0], Seen::Accepted(1)), "{rest:?}");
        assert!(matches!(rest[1], Seen::Closed(0)), "{rest:?}");
        assert!(matches!(rest[2], Seen::Request(1, _)), "{rest:?}");
    }

    #[test]
    fn a_connection_not_given_back_is_not_reused() {
        let (addr, seen) = server();
        let pool = pool(Duration::from_secs(90), 32);
        runtime().block_on(async {
            let lease = fetch(&pool, &format!("http://{addr}/a")).await;
            drop(lease);
            fetch(&pool, &format!("http://{addr}/b")).await.give_back();
        });
        assert_replaced(&seen);
    }

    #[test]
    fn a_connection_idle_past_its_time_is_closed_and_not_reused() {
        let (addr, seen) = server();
        let idle_timeout = Duration::from_millis(50);
        let pool = pool(idle_timeout, 32);
        runtime().block_on(async {
            fetch(&pool, &format!("http://{addr}/a")).await.give_back();
            tokio::time::sleep(idle_timeout + Duration::from_millis(10)).await;
            fetch(&pool, &format!("http://{addr}/b")).await.give_back();
        });
        assert_replaced(&seen);
    }

    #[test]
    fn idle_connections_are_closed_in_time_with_no_hop_to_see_it() {
        let (addr, seen) = server();
        let idle_timeout = Duration::from_millis(50);
        let pool = pool(idle_timeout, 32);
        runtime().block_on(async {
            fetch(&pool, &format!("http://{addr}/a")).await.give_back();
            // No other hop: the pool's task sweeps (twice in this time), and the
            // connection's task ends as the runtime runs it.
            tokio::time::sleep(3 * idle_timeout).await;
            for _ in 0..100 {
                tokio::task::yield_now().await;
            }
            assert!(pool.idle.lock().unwrap().by_origin.is_empty());
        });
        assert_eq!(next(&seen), Seen::Accepted(0));
        assert!(matches!(next(&seen), Seen::Request(0, _)));
        assert_eq!(next(&seen), Seen::Closed(0));
        // The sweeping task ended with nothing left to sweep; the next connection given
        // back starts another.
        assert!(!pool.idle.lock().unwrap().sweeping);
    }

    #[test]
    fn a_connection_still_sending_a_body_answered_early_is_not_waited_for() {
        // Answers each request once its head came, reads none of a body, keeps the
        // connection open.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, seen) = mpsc::channel();
        std::thread::spawn(move || {
            for (n, stream) in listener.incoming().enumerate() {
                let Ok(mut stream) = stream else { return };
                let _ = tx.send(Seen::Accepted(n));
                std::thread::spawn(move || {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        if stream.read(&mut byte).unwrap_or(0) == 0 {
                            return;
                        }
                        head.push(byte[0]);
                    }
                    let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
                    // Holds the connection, reading nothing more.
                    std::thread::sleep(Duration::from_secs(60));
                });
            }
        });
        let pool = pool(Duration::from_secs(90), 32);
        runtime().block_on(async {
            // More than loopback's buffers hold: the rest waits for a reader.
            let mut upload = Request::new(Full::new(Bytes::from(vec![b'x'; 32 << 20])));
            *upload.method_mut() = http::Method::POST;
            *upload.uri_mut() = format!("http://{addr}/upload").parse().unwrap();
            let sent =
                tokio::time::timeout(Duration::from_secs(10), Arc::clone(&pool).send(upload));
            let (response, lease) = sent.await.expect("no early answer").unwrap();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"ok");
            lease.give_back();
            let url = format!("http://{addr}/next");
            tokio::time::timeout(Duration::from_secs(10), fetch(&pool, &url))
                .await
                .expect("the next hop waited for the body still going out")
                .give_back();
        });
        assert_eq!(next(&seen), Seen::Accepted(0));
        assert_eq!(next(&seen), Seen::Accepted(1));
    }

    #[test]
    fn at_most_the_idle_limit_of_an_origin_is_kept() {
        let (addr, seen) = server();
        let pool = pool(Duration::from_secs(90), 1);
        let runtime = runtime();
        runtime.block_on(async {
            // Two at once: two connections.
            let a = fetch(&pool, &format!("http://{addr}/a")).await;
            let b = fetch(&pool, &format!("http://{addr}/b")).await;
            a.give_back();
            b.give_back();
            for _ in 0..100 {
                tokio::task::yield_now().await;
            }
        });
        let mut all: Vec<Seen> = (0..5).map(|_| next(&seen)).collect();
        all.sort_by_key(|s| format!("{s:?}"));
        assert!(matches!(all[0], Seen::Accepted(0)), "{all:?}");
        assert!(matches!(all[1], Seen::Accepted(1)), "{all:?}");
        assert!(matches!(all[2], Seen::Closed(1)), "{all:?}");
        assert_eq!(
            pool.idle
                .lock()
                .unwrap()
                .by_origin
                .values()
                .map(|e| e.idle.len())
                .sum::<usize>(),
            1
        );
    }

    #[test]
    fn host_header_leaves_out_the_schemes_own_port() {
        let host = |u: &str| host_header(&Origin::of(&u.parse().unwrap()).unwrap()).unwrap();
        assert_eq!(host("http://example.com/a"), "example.com");
        assert_eq!(host("http://example.com:80/a"), "example.com");
        assert_eq!(host("http://example.com:8080/a"), "example.com:8080");
        assert_eq!(host("https://example.com:443/"), "example.com");
        assert_eq!(host("https://example.com:80/"), "example.com:80");
        assert_eq!(host("http://[::1]:8080/"), "[::1]:8080");
        assert_eq!(host("http://user:pw@example.com/"), "example.com");
    }

    #[test]
    fn origin_form_keeps_the_path_and_query_only() {
        let form = |u: &str| origin_form(&u.parse().unwrap()).to_string();
        assert_eq!(form("http://example.com"), "/");
        assert_eq!(form("http://example.com/"), "/");
        assert_eq!(form("http://example.com/a/b?c=d"), "/a/b?c=d");
        assert_eq!(form("http://example.com:8080/?q"), "/?q");
    }
}
