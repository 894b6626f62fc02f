//! Loopback HTTP servers on many addresses (127.0.0.2, 127.0.0.3, …), one listener per
//! address, written on raw TCP so that they can misbehave on purpose. Every request is
//! logged with the server's own clock, so politeness is audited from the server's side.

use std::collections::HashMap;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct LogEntry {
    /// The address the request came to (the "host").
    pub host: IpAddr,
    /// The path and query, as requested.
    pub path: String,
    /// The request head, lower-case header names.
    pub headers: Vec<(String, String)>,
    /// When its head had arrived.
    pub arrived: Instant,
    /// When the server started writing the last bytes of the response (`None`: it never
    /// did, e.g. a reset or a stall).
    pub ended: Option<Instant>,
    /// Which connection (numbered per server set) carried it.
    pub connection: u64,
    /// Whether it came over TLS.
    pub tls: bool,
}

/// What `/robots.txt` of a host answers.
#[derive(Debug, Clone)]
pub enum Robots {
    /// 404 (the default).
    NotFound,
    /// 200 with this body.
    Body(String),
    /// This status, empty body.
    Status(u16),
    /// A 301 to this URL.
    Redirect(String),
}

#[derive(Default)]
struct State {
    log: Mutex<Vec<LogEntry>>,
    robots: Mutex<HashMap<IpAddr, Robots>>,
    hits: Mutex<HashMap<String, u32>>,
    huge_sent: AtomicU64,
    connections: AtomicU64,
    /// Requests dropped unanswered: `/drop`, and the next one after `/then-drop-next`.
    dropped: AtomicU64,
}

/// A set of loopback servers, one per host, plus optionally one TLS server. Dropping it
/// stops them.
pub struct Servers {
    runtime: Option<tokio::runtime::Runtime>,
    hosts: Vec<SocketAddr>,
    tls: Option<(SocketAddr, Vec<u8>)>,
    state: Arc<State>,
}

impl Drop for Servers {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// The `n`th loopback address used for hosts: 127.0.0.2, 127.0.0.3, … (skipping .0 and .255).
pub fn host_ip(n: usize) -> Ipv4Addr {
    let n = n + 1; // 127.0.0.1 stays free for the proxy and other tools
    let low = (n % 254) + 1;
    let high = n / 254;
    Ipv4Addr::new(127, (high / 256) as u8, (high % 256) as u8, low as u8)
}

impl Servers {
    /// Starts `hosts` plain HTTP servers.
    pub fn start(hosts: usize) -> Servers {
        Servers::start_with_tls(hosts, false)
    }

    /// Starts `hosts` plain HTTP servers and, when `tls`, one HTTPS server (self-signed
    /// certificate for its IP address) on the next address.
    pub fn start_with_tls(hosts: usize, tls: bool) -> Servers {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .thread_name("conformance-server")
            .build()
            .expect("start the servers' runtime");
        let state = Arc::new(State::default());
        let mut addrs = Vec::with_capacity(hosts);
        for n in 0..hosts {
            let ip = host_ip(n);
            let listener = runtime
                .block_on(TcpListener::bind((ip, 0)))
                .unwrap_or_else(|e| panic!("bind {ip}: {e}"));
            addrs.push(listener.local_addr().expect("local address"));
            let state = state.clone();
            runtime.spawn(accept_plain(listener, state));
        }
        let tls = tls.then(|| {
            let ip = host_ip(hosts);
            let listener = runtime
                .block_on(TcpListener::bind((ip, 0)))
                .unwrap_or_else(|e| panic!("bind {ip}: {e}"));
            let addr = listener.local_addr().expect("local address");
            let (config, cert) = tls_config(ip);
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
            runtime.spawn(accept_tls(listener, acceptor, state.clone()));
            (addr, cert)
        });
        Servers {
            runtime: Some(runtime),
            hosts: addrs,
            tls,
            state,
        }
    }

    /// The base URL of host `n`, e.g. `http://127.0.0.2:40123`.
    pub fn base(&self, n: usize) -> String {
        format!("http://{}", self.hosts[n])
    }

    /// A URL on host `n`.
    pub fn url(&self, n: usize, path: &str) -> String {
        format!("{}{path}", self.base(n))
    }

    /// The address of host `n`.
    pub fn addr(&self, n: usize) -> SocketAddr {
        self.hosts[n]
    }

    /// A URL on the HTTPS server.
    pub fn tls_url(&self, path: &str) -> String {
        let (addr, _) = self.tls.as_ref().expect("started with TLS");
        format!("https://{addr}{path}")
    }

    /// The HTTPS server's self-signed certificate (DER), to trust it.
    pub fn tls_certificate(&self) -> Vec<u8> {
        self.tls.as_ref().expect("started with TLS").1.clone()
    }

    /// Sets what `/robots.txt` of host `n` answers.
    pub fn set_robots(&self, n: usize, robots: Robots) {
        self.state
            .robots
            .lock()
            .unwrap()
            .insert(self.hosts[n].ip(), robots);
    }

    /// Every request served so far, in order of arrival.
    pub fn log(&self) -> Vec<LogEntry> {
        let mut log = self.state.log.lock().unwrap().clone();
        log.sort_by_key(|e| e.arrived);
        log
    }

    /// Requests served so far whose path starts with `prefix`.
    pub fn hits(&self, prefix: &str) -> Vec<LogEntry> {
        self.log()
            .into_iter()
            .filter(|e| e.path.starts_with(prefix))
            .collect()
    }

    /// Body bytes written by `/huge` responses so far.
    pub fn huge_bytes_sent(&self) -> u64 {
        self.state.huge_sent.load(Ordering::SeqCst)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Requests dropped without a byte of an answer: `/drop`, and the request after a
    /// `/then-drop-next` response on the same connection.
    pub fn dropped(&self) -> u64 {
        self.state.dropped.load(Ordering::SeqCst)
    }
}

/// The log's `ended` is taken before the last write and `arrived` after the head was read,
/// so a gap seen in it is never longer than the one the client made; only the clocks'
/// granularity needs a margin.
const TOLERANCE: Duration = Duration::from_millis(1);

/// A log's requests by host (in the hosts' order), each host's in order of arrival.
fn by_host(log: &[LogEntry]) -> Vec<(IpAddr, Vec<&LogEntry>)> {
    let mut by_host: HashMap<IpAddr, Vec<&LogEntry>> = HashMap::new();
    for e in log {
        by_host.entry(e.host).or_default().push(e);
    }
    let mut hosts: Vec<_> = by_host.into_iter().collect();
    hosts.sort_by_key(|(h, _)| *h);
    for (_, entries) in &mut hosts {
        entries.sort_by_key(|e| e.arrived);
    }
    hosts
}

/// Politeness violations in a server log: two requests to one host whose gap, from the
/// end of one response to the arrival of the next request, is shorter than `delay`.
pub fn violations(log: &[LogEntry], delay: Duration) -> Vec<String> {
    let mut found = Vec::new();
    for (host, entries) in by_host(log) {
        for pair in entries.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            match a.ended {
                Some(end) if b.arrived + TOLERANCE >= end + delay => {}
                Some(end) => found.push(format!(
                    "{host}: {} arrived {:?} after the end of {} (delay {delay:?})",
                    b.path,
                    b.arrived.saturating_duration_since(end),
                    a.path
                )),
                None => found.push(format!(
                    "{host}: {} arrived while {} had no complete response",
                    b.path, a.path
                )),
            }
        }
    }
    found
}

/// Politeness violations in a server log, for a policy that lets `per_host` requests of a
/// host be in flight at once: a request that arrives while `per_host` earlier ones of its
/// host are still busy, with no complete response or one that ended less than `delay`
/// before. With `per_host` 1 it finds what [`violations`] finds, comparing each request with
/// every earlier one of its host rather than the one before.
pub fn violations_per_host(log: &[LogEntry], delay: Duration, per_host: usize) -> Vec<String> {
    let mut found = Vec::new();
    for (host, entries) in by_host(log) {
        for (i, b) in entries.iter().enumerate() {
            let busy: Vec<&str> = entries[..i]
                .iter()
                .filter(|a| {
                    a.ended
                        .is_none_or(|end| b.arrived + TOLERANCE < end + delay)
                })
                .map(|a| a.path.as_str())
                .collect();
            if busy.len() >= per_host {
                found.push(format!(
                    "{host}: {} arrived while {} were in flight or within the delay \
                     ({delay:?}, {per_host} at once)",
                    b.path,
                    busy.join(", ")
                ));
            }
        }
    }
    found
}

/// A TLS server config with a fresh self-signed certificate for `localhost` and `ip`, and
/// that certificate (DER), for a client to trust.
pub fn tls_config(ip: Ipv4Addr) -> (rustls::ServerConfig, Vec<u8>) {
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".to_string()]).expect("certificate params");
    params
        .subject_alt_names
        .push(rcgen::SanType::IpAddress(IpAddr::V4(ip)));
    let key = rcgen::KeyPair::generate().expect("key pair");
    let cert = params.self_signed(&key).expect("self-signed certificate");
    let der = cert.der().to_vec();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![rustls::pki_types::CertificateDer::from(der.clone())],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .expect("server certificate");
    (config, der)
}

async fn accept_plain(listener: TcpListener, state: Arc<State>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let host = stream.local_addr().map(|a| a.ip()).expect("local address");
        let id = state.connections.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(serve(stream, host, id, false, state.clone()));
    }
}

async fn accept_tls(listener: TcpListener, acceptor: tokio_rustls::TlsAcceptor, state: Arc<State>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let host = stream.local_addr().map(|a| a.ip()).expect("local address");
        let id = state.connections.fetch_add(1, Ordering::SeqCst);
        let acceptor = acceptor.clone();
        let state = state.clone();
        tokio::spawn(async move {
            if let Ok(tls) = acceptor.accept(stream).await {
                serve(tls, host, id, true, state).await;
            }
        });
    }
}

/// A connection that can be reset (closed with RST).
trait Resettable: AsyncRead + AsyncWrite + Unpin + Send {
    fn tcp(&self) -> &TcpStream;
}

impl Resettable for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl Resettable for tokio_rustls::server::TlsStream<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }
}

struct Req {
    path: String,
    headers: Vec<(String, String)>,
    close: bool,
}

async fn read_head<S: AsyncRead + Unpin>(reader: &mut BufReader<S>) -> Option<Req> {
    let mut line = String::new();
    // Skip blank lines between requests.
    loop {
        line.clear();
        if reader.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        if !line.trim().is_empty() {
            break;
        }
    }
    let mut parts = line.split_whitespace();
    let _method = parts.next()?;
    let mut path = parts.next()?.to_string();
    let version = parts.next().unwrap_or("HTTP/1.1").to_string();
    if let Some(rest) = path
        .strip_prefix("http://")
        .or_else(|| path.strip_prefix("https://"))
    {
        path = rest
            .find('/')
            .map_or("/".to_string(), |i| rest[i..].to_string());
    }
    let mut headers = Vec::new();
    let mut size = line.len();
    loop {
        line.clear();
        if reader.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        size += line.len();
        if size > 256 << 10 {
            return None;
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((n, v)) = l.split_once(':') {
            headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.to_ascii_lowercase())
    };
    let close = header("connection").is_some_and(|v| v.contains("close"))
        || (version == "HTTP/1.0"
            && !header("connection").is_some_and(|v| v.contains("keep-alive")));
    let length: usize = header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if length > 0 {
        let mut body = vec![0; length.min(1 << 20)];
        reader.read_exact(&mut body).await.ok()?;
    }
    Some(Req {
        path,
        headers,
        close,
    })
}

fn query<'a>(path: &'a str, key: &str) -> Option<&'a str> {
    let (_, q) = path.split_once('?')?;
    // `to=` takes the rest of the query, so URLs need no escaping.
    if key == "to" {
        return q.split_once("to=").map(|(_, v)| v);
    }
    q.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then_some(v)
    })
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        301 => "Moved Permanently",
        302 => "Found",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Whatever",
    }
}

fn response(status: u16, extra: &[(&str, String)], body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\ncontent-length: {}\r\n",
        reason(status),
        body.len()
    )
    .into_bytes();
    for (n, v) in extra {
        out.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// What happens to the next request on a connection.
#[derive(Clone, Copy, PartialEq)]
enum NextRequest {
    Served,
    /// Dropped without a byte of an answer.
    Dropped,
    /// Half a response head, then the connection closes.
    CutShort,
}

/// How a response ended.
enum Then {
    KeepAlive,
    /// Kept alive, and the next request read on the connection is answered so.
    Next(NextRequest),
    Close,
    Reset,
}

async fn serve<S: Resettable>(
    stream: S,
    host: IpAddr,
    connection: u64,
    tls: bool,
    state: Arc<State>,
) {
    let mut reader = BufReader::new(stream);
    let mut next = NextRequest::Served;
    while let Some(req) = read_head(&mut reader).await {
        if next == NextRequest::Dropped {
            // The server's idle timeout struck as the request arrived: the connection
            // closes, the request unanswered (and unlogged: it was never served).
            state.dropped.fetch_add(1, Ordering::SeqCst);
            return;
        }
        let arrived = Instant::now();
        let index = {
            let mut log = state.log.lock().unwrap();
            log.push(LogEntry {
                host,
                path: req.path.clone(),
                headers: req.headers.clone(),
                arrived,
                ended: None,
                connection,
                tls,
            });
            log.len() - 1
        };
        if next == NextRequest::CutShort {
            // The server began to answer, then went away (logged: it saw the request).
            let stream = reader.get_mut();
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-le").await;
            let _ = stream.flush().await;
            return;
        }
        let (bytes, then) = match route(&req, host, &state, &mut reader).await {
            Some(r) => r,
            None => return,
        };
        // Noted before the bytes go: a client may have read them, and a test the log,
        // before this task runs again.
        if !matches!(then, Then::Reset) {
            state.log.lock().unwrap()[index].ended = Some(Instant::now());
        }
        let stream = reader.get_mut();
        if stream.write_all(&bytes).await.is_err() || stream.flush().await.is_err() {
            return;
        }
        match then {
            Then::Reset => {
                let _ = reader.get_ref().tcp().set_zero_linger();
                return;
            }
            Then::Close => {
                let _ = reader.get_mut().shutdown().await;
                return;
            }
            Then::KeepAlive => {}
            Then::Next(what) => next = what,
        }
        if req.close {
            return;
        }
    }
}

/// The response to a request: its final bytes and how the connection goes on. Streaming
/// responses write their beginning themselves. `None`: the connection is dropped.
async fn route<S: Resettable>(
    req: &Req,
    host: IpAddr,
    state: &State,
    reader: &mut BufReader<S>,
) -> Option<(Vec<u8>, Then)> {
    let path = req.path.as_str();
    let route = path.split('?').next().unwrap_or("");
    let ok = |body: &[u8]| Some((response(200, &[], body), Then::KeepAlive));
    match route {
        "/robots.txt" => {
            let robots = state.robots.lock().unwrap().get(&host).cloned();
            let r = match robots.unwrap_or(Robots::NotFound) {
                Robots::NotFound => response(404, &[], b"no robots here"),
                Robots::Body(b) => {
                    response(200, &[("content-type", "text/plain".into())], b.as_bytes())
                }
                Robots::Status(s) => response(s, &[], b""),
                Robots::Redirect(to) => response(301, &[("location", to)], b""),
            };
            Some((r, Then::KeepAlive))
        }
        // Closes the connection after the response without saying so (no `connection:
        // close`), as servers do with idle keep-alive connections.
        "/then-close" => Some((response(200, &[], b"bye"), Then::Close)),
        // Keeps the connection open, then closes it when the next request arrives: the race
        // of a reused connection whose idle timeout ends as the request is sent.
        "/then-drop-next" => Some((
            response(200, &[], b"see you"),
            Then::Next(NextRequest::Dropped),
        )),
        // Keeps the connection open, then answers the next request on it with half a head.
        "/then-cut-next" => Some((
            response(200, &[], b"see you"),
            Then::Next(NextRequest::CutShort),
        )),
        // A fresh connection that closes as the request arrives, without an answer.
        "/drop" => {
            state.dropped.fetch_add(1, Ordering::SeqCst);
            None
        }
        "/echo" => {
            let text: String = req
                .headers
                .iter()
                .map(|(n, v)| format!("{n}: {v}\n"))
                .collect();
            ok(text.as_bytes())
        }
        "/redirect" => {
            let to = query(path, "to").unwrap_or("/").to_string();
            let status = query(path, "status")
                .and_then(|s| s.parse().ok())
                .unwrap_or(302);
            Some((response(status, &[("location", to)], b""), Then::KeepAlive))
        }
        "/delay" => {
            let ms: u64 = query(path, "ms").and_then(|s| s.parse().ok()).unwrap_or(50);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            ok(format!("waited {ms} ms").as_bytes())
        }
        "/gzip" => Some((
            response(200, &[("content-encoding", "gzip".into())], &gzip(TEXT)),
            Then::KeepAlive,
        )),
        "/deflate" => Some((
            response(200, &[("content-encoding", "deflate".into())], &zlib(TEXT)),
            Then::KeepAlive,
        )),
        "/br" => Some((
            response(200, &[("content-encoding", "br".into())], &brotli(TEXT)),
            Then::KeepAlive,
        )),
        "/bad-gzip" => Some((
            response(
                200,
                &[("content-encoding", "gzip".into())],
                b"this is not gzip at all, sorry",
            ),
            Then::KeepAlive,
        )),
        "/gzip-bomb" => Some((
            response(200, &[("content-encoding", "gzip".into())], gzip_bomb()),
            Then::KeepAlive,
        )),
        "/malformed-status" => Some((
            b"HTTP/1.1 2x0 Fine\r\ncontent-length: 2\r\n\r\nok".to_vec(),
            Then::Close,
        )),
        "/malformed-header" => Some((
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nthis line is no header\r\n\r\nok".to_vec(),
            Then::Close,
        )),
        "/many-headers" => {
            let count: usize = query(path, "n").and_then(|s| s.parse().ok()).unwrap_or(120);
            let headers: Vec<(String, String)> = (0..count)
                .map(|i| (format!("x-h{i}"), i.to_string()))
                .collect();
            let headers: Vec<(&str, String)> = headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.clone()))
                .collect();
            Some((response(200, &headers, b"ok"), Then::KeepAlive))
        }
        "/huge-header" => {
            let size: usize = query(path, "size")
                .and_then(|s| s.parse().ok())
                .unwrap_or(100_000);
            Some((
                response(200, &[("x-big", "a".repeat(size))], b"ok"),
                Then::KeepAlive,
            ))
        }
        "/reset" => {
            let mut bytes = b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n".to_vec();
            bytes.extend_from_slice(&[b'x'; 1000]);
            Some((bytes, Then::Reset))
        }
        "/stall" => {
            // Never answer; wait for the client to give up and close.
            let mut sink = [0u8; 1024];
            while matches!(reader.read(&mut sink).await, Ok(n) if n > 0) {}
            None
        }
        "/huge" => {
            let size: u64 = query(path, "size")
                .and_then(|s| s.parse().ok())
                .unwrap_or(2 << 30);
            let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {size}\r\n\r\n");
            let stream = reader.get_mut();
            stream.write_all(head.as_bytes()).await.ok()?;
            let chunk = vec![0u8; 64 << 10];
            let mut left = size;
            while left > 0 {
                let n = left.min(chunk.len() as u64) as usize;
                stream.write_all(&chunk[..n]).await.ok()?;
                state.huge_sent.fetch_add(n as u64, Ordering::SeqCst);
                left -= n as u64;
            }
            Some((Vec::new(), Then::KeepAlive))
        }
        _ if route.starts_with("/status/") => {
            let status: u16 = route["/status/".len()..].parse().unwrap_or(500);
            let mut extra = Vec::new();
            if let Some(after) = query(path, "retry_after") {
                extra.push(("retry-after", after.to_string()));
            }
            Some((
                response(status, &extra, format!("status {status}").as_bytes()),
                Then::KeepAlive,
            ))
        }
        _ if route.starts_with("/flaky/") => {
            // The first `n` hits of this path answer 503 with `Retry-After: after`.
            let n: u32 = query(path, "n").and_then(|s| s.parse().ok()).unwrap_or(1);
            let after = query(path, "after").unwrap_or("1").to_string();
            let seen = {
                let mut hits = state.hits.lock().unwrap();
                let c = hits.entry(format!("{host}{route}")).or_insert(0);
                *c += 1;
                *c
            };
            if seen <= n {
                Some((
                    response(503, &[("retry-after", after)], b"busy"),
                    Then::KeepAlive,
                ))
            } else {
                ok(b"finally")
            }
        }
        _ => ok(format!("ok {path}").as_bytes()),
    }
}

/// The text the encoded routes serve.
pub const TEXT: &[u8] =
    b"downpour decodes gzip, deflate and brotli bodies. downpour decodes them all.";

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).expect("compress");
    e.finish().expect("compress")
}

fn zlib(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).expect("compress");
    e.finish().expect("compress")
}

fn brotli(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut w = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
        w.write_all(data).expect("compress");
    }
    out
}

/// Decoded size of the gzip bomb: 256 MiB of zeros.
pub const BOMB_SIZE: u64 = 256 << 20;

/// A valid gzip stream of [`BOMB_SIZE`] zeros, about 1.6 MiB: one fixed-Huffman deflate
/// block of a literal zero and back-references of 258 bytes at distance 1.
pub fn gzip_bomb() -> &'static [u8] {
    static BOMB: OnceLock<Vec<u8>> = OnceLock::new();
    BOMB.get_or_init(|| {
        struct Bits {
            out: Vec<u8>,
            acc: u64,
            n: u32,
        }
        impl Bits {
            /// `value` in `len` bits, least significant first.
            fn put(&mut self, value: u64, len: u32) {
                self.acc |= value << self.n;
                self.n += len;
                while self.n >= 8 {
                    self.out.push(self.acc as u8);
                    self.acc >>= 8;
                    self.n -= 8;
                }
            }
            /// A Huffman code, most significant bit first.
            fn code(&mut self, code: u32, len: u32) {
                let reversed = code.reverse_bits() >> (32 - len);
                self.put(u64::from(reversed), len);
            }
        }
        let mut bits = Bits {
            out: vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255],
            acc: 0,
            n: 0,
        };
        bits.put(1, 1); // last block
        bits.put(1, 2); // fixed Huffman
        bits.code(0x30, 8); // literal 0
        let mut left = BOMB_SIZE - 1;
        while left >= 258 {
            bits.code(0b1100_0101, 8); // length 258 (code 285)
            bits.code(0, 5); // distance 1
            left -= 258;
        }
        for _ in 0..left {
            bits.code(0x30, 8);
        }
        bits.code(0, 7); // end of block
        if bits.n > 0 {
            bits.put(0, 8 - bits.n);
        }
        let mut out = bits.out;
        let mut crc = flate2::Crc::new();
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..(BOMB_SIZE >> 20) {
            crc.update(&zeros);
        }
        out.extend_from_slice(&crc.sum().to_le_bytes());
        out.extend_from_slice(&(BOMB_SIZE as u32).to_le_bytes());
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request to 127.0.0.1 at `path`, in flight from `arrived` ms to `ended` ms after `t0`.
    fn entry(t0: Instant, path: &str, arrived: u64, ended: Option<u64>) -> LogEntry {
        LogEntry {
            host: IpAddr::from([127, 0, 0, 1]),
            path: path.to_string(),
            headers: Vec::new(),
            arrived: t0 + Duration::from_millis(arrived),
            ended: ended.map(|e| t0 + Duration::from_millis(e)),
            connection: 0,
            tls: false,
        }
    }

    #[test]
    fn requests_at_once_count_against_the_per_host_limit() {
        let t0 = Instant::now();
        let two_at_once = [
            entry(t0, "/a", 0, Some(10)),
            entry(t0, "/b", 5, Some(20)),
            entry(t0, "/c", 12, Some(30)),
        ];
        assert_eq!(
            violations_per_host(&two_at_once, Duration::ZERO, 2),
            Vec::<String>::new()
        );
        assert_eq!(
            violations_per_host(&two_at_once, Duration::ZERO, 1).len(),
            2
        );
        assert_eq!(violations(&two_at_once, Duration::ZERO).len(), 2);
        let three_at_once = [
            entry(t0, "/a", 0, Some(10)),
            entry(t0, "/b", 2, Some(10)),
            entry(t0, "/c", 4, None),
        ];
        let found = violations_per_host(&three_at_once, Duration::ZERO, 2);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("/c arrived while /a, /b"), "{found:?}");
    }

    #[test]
    fn the_delay_counts_from_the_end_of_each_busy_request() {
        let t0 = Instant::now();
        let log = [
            entry(t0, "/a", 0, Some(10)),
            entry(t0, "/b", 1, Some(12)),
            entry(t0, "/c", 25, Some(30)),
        ];
        // /c came 15 ms after /a ended and 13 ms after /b: two at once within a 20 ms delay.
        assert_eq!(
            violations_per_host(&log, Duration::from_millis(20), 2).len(),
            1
        );
        assert_eq!(
            violations_per_host(&log, Duration::from_millis(10), 2),
            Vec::<String>::new()
        );
    }
}
