//! The HTTP client: one hop at a time over hyper, with TLS, proxies, limits and decoding.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use downpour::{Fetch, HopResponse, HopResult, TransportError, TransportErrorKind, Url};
use downpour_common::MAX_RESENDS;
use http::header::{self, HeaderValue};
use http::{Extensions, HeaderMap, Method, Uri};
use http_body_util::{BodyExt, Full};
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tower_service::Service;

use crate::arrival::TimedTcp;
use crate::decode::{headers_to_send, Body, Coding};
use crate::pool::{Http1Pool, Lease, PoolError};
use crate::{ClientOptions, Error, Proxy};

type Stream = MaybeHttpsStream<TokioIo<TimedTcp>>;
pub(crate) type BoxError = Box<dyn StdError + Send + Sync>;
type HyperClient = Client<Connector, Full<Bytes>>;

/// Sends hops. Owned by the driver task; each hop future holds a cheap clone of
/// the right pooled client.
pub(crate) struct HttpClient {
    options: Arc<Built>,
    direct: Arc<HyperClient>,
    /// The direct hops that cannot become HTTP/2 go through the driver's own pool
    /// ([`Http1Pool`]); the others through hyper-util's.
    own: Arc<Http1Pool>,
    /// One pooled client per proxy (and its credentials), made on first use.
    proxied: HashMap<ProxyKey, (Arc<HyperClient>, Option<HeaderValue>)>,
    env: Option<Matcher>,
}

struct Built {
    tls: rustls::ClientConfig,
    http2: bool,
    connect_timeout: Duration,
    max_header_size: usize,
    pool_idle_timeout: Duration,
    pool_max_idle_per_host: usize,
    stamp_arrivals: bool,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct ProxyKey {
    uri: String,
    auth: Option<Vec<u8>>,
}

impl HttpClient {
    /// A client; with `stamp_arrivals`, its connections note when their bytes arrived (the
    /// policy paces hosts, see [`TimedTcp`]).
    pub(crate) fn new(
        options: &ClientOptions,
        max_header_size: usize,
        stamp_arrivals: bool,
    ) -> Result<Self, Error> {
        // The crypto provider is chosen here, explicitly, so that nothing depends on a
        // process-wide default being installed (or on which providers happen to be linked).
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        for der in &options.extra_root_certificates {
            roots
                .add(rustls::pki_types::CertificateDer::from(der.clone()))
                .map_err(|e| Error::Tls(format!("extra root certificate refused: {e}")))?;
        }
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let env = match &options.proxy {
            Proxy::FromEnv => Some(Matcher::from_env()),
            Proxy::None => None,
            Proxy::Rules { http, https, no } => {
                let mut b = Matcher::builder();
                if let Some(u) = http {
                    b = b.http(u.as_str());
                }
                if let Some(u) = https {
                    b = b.https(u.as_str());
                }
                Some(b.no(no.as_str()).build())
            }
        };
        let built = Arc::new(Built {
            tls,
            http2: options.http2,
            connect_timeout: options.connect_timeout,
            max_header_size,
            pool_idle_timeout: options.pool_idle_timeout,
            pool_max_idle_per_host: options.pool_max_idle_per_host,
            stamp_arrivals,
        });
        // One connector (and TLS configuration, with its session cache) for both.
        let direct_connector = connector(&built, None);
        let direct = Arc::new(build_client(&built, direct_connector.clone()));
        let own = Arc::new(Http1Pool::new(
            direct_connector,
            max_buf_size(&built),
            max_headers(&built),
            built.pool_idle_timeout,
            built.pool_max_idle_per_host,
        ));
        Ok(HttpClient {
            options: built,
            direct,
            own,
            proxied: HashMap::new(),
            env,
        })
    }

    /// Prepares one hop: picks the client (direct or through a proxy) and builds the request.
    /// The returned future does the I/O.
    pub(crate) fn hop(
        &mut self,
        fetch: Fetch,
        user_agent: &HeaderValue,
    ) -> impl Future<Output = (HopResult, Instant)> + Send + 'static {
        let prepared = self.prepare(fetch, user_agent);
        async move {
            match prepared {
                Ok((outgoing, limits)) => {
                    // Boxed: its state is about three kilobytes (reading and decoding the
                    // response, and the driver's own pool taking a connection; a connect's
                    // state is boxed apart), and the hop's future is moved several times on
                    // its way into the run loop's set (216 bytes this way).
                    let sending = Box::pin(send(outgoing, limits));
                    match tokio::time::timeout(limits.timeout, sending).await {
                        Ok((result, ended)) => (result, ended.unwrap_or_else(Instant::now)),
                        Err(_) => (
                            HopResult::Failed(TransportError::new(
                                TransportErrorKind::Timeout,
                                format!("no complete response within {:?}", limits.timeout),
                            )),
                            Instant::now(),
                        ),
                    }
                }
                Err(e) => (HopResult::Failed(e), Instant::now()),
            }
        }
    }

    fn prepare(
        &mut self,
        fetch: Fetch,
        user_agent: &HeaderValue,
    ) -> Result<(Outgoing, Limits), TransportError> {
        let uri: Uri = fetch.url.as_str().parse().map_err(|e| {
            TransportError::new(
                TransportErrorKind::Other,
                format!("{} cannot be sent over HTTP: {e}", fetch.url),
            )
        })?;
        let proxy = match &fetch.proxy {
            Some(url) => Some(ProxyTarget::from_url(url)?),
            None => self
                .env
                .as_ref()
                .and_then(|m| m.intercept(&uri))
                .map(|i| ProxyTarget {
                    uri: strip_credentials(i.uri()),
                    auth: i.basic_auth().cloned(),
                }),
        };
        // Plain HTTP is always HTTP/1.1; over TLS it is when HTTP/2 is not offered.
        let own = (proxy.is_none()
            && fetch.method != Method::CONNECT
            && (uri.scheme_str() == Some("http") || !self.options.http2))
            .then(|| Arc::clone(&self.own));
        let (client, http_auth) = match proxy {
            None => (&self.direct, None),
            Some(target) => {
                let key = ProxyKey {
                    uri: target.uri.to_string(),
                    auth: target.auth.as_ref().map(|a| a.as_bytes().to_vec()),
                };
                let options = &self.options;
                let (client, auth) = self.proxied.entry(key).or_insert_with(|| {
                    (
                        Arc::new(build_client(options, connector(options, Some(&target)))),
                        target.auth.clone(),
                    )
                });
                // A plain-HTTP request goes to the proxy in absolute form and carries the
                // credentials itself; an HTTPS one sends them in the CONNECT only.
                let auth = if uri.scheme_str() == Some("http") {
                    auth.clone()
                } else {
                    None
                };
                (&*client, auth)
            }
        };
        let body = Full::new(fetch.body);
        // The copy keeps the headers as given (most often none, a copy that costs nothing),
        // and is boxed so that the hop's future stays small.
        let resend = Box::new(Resend {
            client: Arc::clone(client),
            own: own.clone(),
            method: fetch.method.clone(),
            url: fetch.url,
            given: fetch.headers.clone(),
            user_agent: user_agent.clone(),
            http_auth: http_auth.clone(),
            body: body.clone(),
        });
        let headers = with_proxy_auth(headers_to_send(fetch.headers, user_agent), http_auth);
        let limits = Limits {
            timeout: fetch.timeout,
            max_body_size: fetch.max_body_size,
            max_header_size: fetch.max_header_size,
        };
        // The request is made here, lazily (nothing is sent before the hop is polled).
        let request = request_of(fetch.method, uri, headers, body);
        let sending = match own {
            Some(pool) => Sending::Own(pool, request),
            None => Sending::Pooled(client.request(request)),
        };
        Ok((Outgoing { sending, resend }, limits))
    }
}

/// The credentials for a plain-HTTP proxy, added to a request's headers.
fn with_proxy_auth(mut headers: HeaderMap, http_auth: Option<HeaderValue>) -> HeaderMap {
    if let Some(mut auth) = http_auth {
        auth.set_sensitive(true);
        headers.insert(header::PROXY_AUTHORIZATION, auth);
    }
    headers
}

fn request_of(
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Full<Bytes>,
) -> http::Request<Full<Bytes>> {
    let mut request = http::Request::new(body);
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.headers_mut() = headers;
    request
}

/// A hop's request on its way, with what it takes to send it again.
struct Outgoing {
    sending: Sending,
    resend: Box<Resend>,
}

/// A request through hyper-util's pooled client (made, sent when polled), or one for the
/// driver's own pool (sent by [`Sending::sent`]). Unboxed: it lives in the hop's sending
/// state, which is boxed already.
#[allow(clippy::large_enum_variant)]
enum Sending {
    Pooled(ResponseFuture),
    Own(Arc<Http1Pool>, http::Request<Full<Bytes>>),
}

impl Sending {
    /// The response's head, and the connection it came on when it is the driver's own.
    async fn sent(
        self,
    ) -> Result<(http::Response<hyper::body::Incoming>, Option<Lease>), SendFailure> {
        match self {
            Sending::Pooled(response) => response
                .await
                .map(|r| (r, None))
                .map_err(SendFailure::Pooled),
            Sending::Own(pool, request) => pool
                .send(request)
                .await
                .map(|(r, lease)| (r, Some(lease)))
                .map_err(SendFailure::Own),
        }
    }
}

/// Why a request got no response head.
enum SendFailure {
    Pooled(hyper_util::client::legacy::Error),
    Own(PoolError),
}

impl SendFailure {
    /// Whether the request went out on a reused connection that closed or reset before a
    /// byte of an answer came: the server closed the idle connection as the request went
    /// out, and never saw it.
    fn dropped_on_reuse(&self) -> bool {
        match self {
            SendFailure::Pooled(e) => Carried::dropped_on_reuse(e),
            SendFailure::Own(e) => {
                e.on_reuse_unanswered && classify(&*e.error).kind == TransportErrorKind::Reset
            }
        }
    }

    /// Whether an HTTP/2 server said it did not process the request (see
    /// [`unprocessed_stream`]); the driver's own connections are HTTP/1.1.
    fn unprocessed(&self) -> bool {
        match self {
            SendFailure::Pooled(e) => unprocessed_stream(e),
            SendFailure::Own(_) => false,
        }
    }

    fn classify(&self) -> TransportError {
        match self {
            SendFailure::Pooled(e) => classify(e),
            SendFailure::Own(e) => classify(&*e.error),
        }
    }
}

/// A copy of a request, sent again when a reused connection drops it before a byte of an
/// answer (see [`SendFailure::dropped_on_reuse`]; idempotent requests only), since a server may
/// close an idle connection just as a request goes out on it (its keep-alive timeout ending
/// then) and never see the request; or when an HTTP/2 server did not process its stream.
/// At most [`MAX_RESENDS`] times, within the hop's timeout (the whole hop runs under it).
/// The scheduler counts no retry, since the server answered nothing.
struct Resend {
    client: Arc<HyperClient>,
    /// The driver's own pool, when the request went through it.
    own: Option<Arc<Http1Pool>>,
    method: Method,
    /// Parsed again if the request goes again: cheaper than a copy of the parsed one.
    url: Url,
    given: HeaderMap,
    user_agent: HeaderValue,
    http_auth: Option<HeaderValue>,
    body: Full<Bytes>,
}

impl Resend {
    /// The request again; `None` in the case that cannot be, the URL no longer parsing.
    fn send(&self) -> Option<Sending> {
        let uri = self.url.as_str().parse().ok()?;
        let headers = with_proxy_auth(
            headers_to_send(self.given.clone(), &self.user_agent),
            self.http_auth.clone(),
        );
        let request = request_of(self.method.clone(), uri, headers, self.body.clone());
        Some(match &self.own {
            Some(pool) => Sending::Own(Arc::clone(pool), request),
            None => Sending::Pooled(self.client.request(request)),
        })
    }
}

/// What a connection has carried: how many responses (one makes it a reused connection),
/// whether a byte came since a request last went out on it, and when the last bytes came.
#[derive(Clone)]
pub(crate) struct Carried(Arc<Traffic>);

struct Traffic {
    responses: AtomicU64,
    answered: AtomicBool,
    opened: Instant,
    /// Nanoseconds from `opened` to the end of the last read that brought bytes, plus one
    /// (0: none yet).
    last_read: AtomicU64,
}

impl Carried {
    fn new() -> Self {
        Carried(Arc::new(Traffic {
            responses: AtomicU64::new(0),
            answered: AtomicBool::new(false),
            opened: Instant::now(),
            last_read: AtomicU64::new(0),
        }))
    }

    /// Counts a response that came on its connection, and returns the connection's record
    /// (one of hyper-util's, where the connector's record rides in the response).
    fn counted(response: &http::Response<hyper::body::Incoming>) -> Option<Carried> {
        let carried = response.extensions().get::<Carried>()?;
        carried.count();
        Some(carried.clone())
    }

    /// Counts a response that came on the connection.
    pub(crate) fn count(&self) {
        self.0.responses.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether the connection had carried responses before, and nothing came since the last
    /// request went out on it.
    pub(crate) fn reused_unanswered(&self) -> bool {
        self.0.responses.load(Ordering::Relaxed) > 0 && !self.0.answered.load(Ordering::Relaxed)
    }

    /// When the last read on the connection brought bytes or its end: once a response's body
    /// is complete, the time its last bytes (or the close that ended it) came, or a later
    /// read's on HTTP/2; never before the server sent them.
    fn last_read(&self) -> Option<Instant> {
        match self.0.last_read.load(Ordering::Relaxed) {
            0 => None,
            n => Some(self.0.opened + Duration::from_nanos(n - 1)),
        }
    }

    /// Whether a request failed, closed or reset, on a connection that had carried
    /// responses before, and before a single byte of an answer came: the server closed the
    /// idle connection as the request went out, and never saw it.
    fn dropped_on_reuse(error: &hyper_util::client::legacy::Error) -> bool {
        let unanswered_on_reuse = error.connect_info().is_some_and(|connected| {
            let mut extras = Extensions::new();
            connected.get_extras(&mut extras);
            extras
                .get::<Carried>()
                .is_some_and(Carried::reused_unanswered)
        });
        unanswered_on_reuse
            && !error.is_connect()
            && classify(error).kind == TransportErrorKind::Reset
    }

    /// A request (or part of one) goes out: what comes next answers it.
    fn wrote(&self) {
        if self.0.answered.load(Ordering::Relaxed) {
            self.0.answered.store(false, Ordering::Relaxed);
        }
    }

    /// A read brought bytes that arrived `at`, or the end of the stream (`bytes` false).
    fn read(&self, bytes: bool, at: Instant) {
        if bytes && !self.0.answered.load(Ordering::Relaxed) {
            self.0.answered.store(true, Ordering::Relaxed);
        }
        let since = at.saturating_duration_since(self.0.opened).as_nanos();
        let since = u64::try_from(since).unwrap_or(u64::MAX - 1);
        self.0.last_read.store(since + 1, Ordering::Relaxed);
    }
}

#[derive(Clone, Copy)]
struct Limits {
    timeout: Duration,
    max_body_size: u64,
    max_header_size: usize,
}

/// Sends a hop and reads its response; returns the result and, for a whole response, when
/// its last bytes (or the close that ended it) came: the driver may get to it later, and the
/// host's delay counts from then. A body cut at its limit ends now, when its connection was
/// closed: the server was sending until then.
async fn send(outgoing: Outgoing, limits: Limits) -> (HopResult, Option<Instant>) {
    let mut carried = None;
    let result = receive(outgoing, limits, &mut carried).await;
    let ended = match &result {
        HopResult::Response(r) if !r.truncated => carried.and_then(|c| c.last_read()),
        HopResult::Response(_) | HopResult::Failed(_) => None,
    };
    (result, ended)
}

async fn receive(outgoing: Outgoing, limits: Limits, carried: &mut Option<Carried>) -> HopResult {
    let mut sent = outgoing.sending.sent().await;
    let mut resends = 0;
    let (response, mut lease) = loop {
        match sent {
            Ok(r) => break r,
            Err(e) => {
                // Several idle connections to a host may have been closed together: each
                // resend may meet the next of them, and a fresh one ends it; only a request
                // that may be repeated goes again (RFC 9110, 9.2.2), since the server may
                // have seen it. A stream an HTTP/2 server refused, or left out of its
                // GOAWAY, was not processed: any request goes again (RFC 9113, 8.7).
                let resend = &outgoing.resend;
                let goes_again = resends < MAX_RESENDS
                    && ((resend.method.is_idempotent() && e.dropped_on_reuse()) || e.unprocessed());
                let again = if goes_again { resend.send() } else { None };
                match again {
                    Some(again) => {
                        resends += 1;
                        sent = again.sent().await;
                    }
                    None => return HopResult::Failed(e.classify()),
                }
            }
        }
    };
    *carried = match &lease {
        Some(lease) => Some(lease.carried().clone()),
        None => Carried::counted(&response),
    };
    let (parts, mut incoming) = response.into_parts();
    let head = head_size(&parts.headers);
    if head > limits.max_header_size {
        return HopResult::Failed(TransportError::new(
            TransportErrorKind::Protocol,
            format!(
                "response head of {head} bytes is larger than the limit of {} bytes",
                limits.max_header_size
            ),
        ));
    }
    let mut headers = parts.headers;
    let coding = Coding::of(&headers);
    let mut body = Body::new(coding.unwrap_or(Coding::Identity), limits.max_body_size);
    while !body.is_full() {
        match incoming.frame().await {
            None => {
                // The body is whole: its connection may carry the next request.
                if let Some(lease) = lease.take() {
                    lease.give_back();
                }
                break;
            }
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    if let Err(e) = body.feed(&data) {
                        return HopResult::Failed(TransportError::new(
                            TransportErrorKind::Decode,
                            e.0,
                        ));
                    }
                }
            }
            Some(Err(e)) => return HopResult::Failed(classify(&e)),
        }
    }
    // Dropping the rest of an unfinished body closes that connection; the pool keeps the others.
    drop(incoming);
    let (body, truncated) = match body.finish() {
        Ok(b) => b,
        Err(e) => {
            return HopResult::Failed(TransportError::new(TransportErrorKind::Decode, e.0));
        }
    };
    if matches!(
        coding,
        Some(Coding::Gzip | Coding::Deflate | Coding::Brotli)
    ) {
        // The body handed on is decoded: these described the bytes on the wire.
        headers.remove(header::CONTENT_ENCODING);
        headers.remove(header::CONTENT_LENGTH);
    }
    HopResult::Response(HopResponse {
        status: parts.status,
        version: parts.version,
        headers,
        body,
        truncated,
    })
}

/// The size of a response head as it came on the wire (status line, headers, blank line).
fn head_size(headers: &HeaderMap) -> usize {
    let status_line = "HTTP/1.1 200 OK\r\n".len();
    status_line
        + headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 4)
            .sum::<usize>()
        + 2
}

/// Whether the server said that it did not process the request's HTTP/2 stream, so that it
/// may go again at once: it refused the stream (`REFUSED_STREAM`, RFC 9113 8.7), or sent a
/// `GOAWAY` whose last stream id is below it (6.8). h2 gives a stream the error of a
/// received `GOAWAY` only then: a stream at or below the last id that the connection's end
/// cuts short fails as a broken pipe.
fn unprocessed_stream(error: &(dyn StdError + 'static)) -> bool {
    let mut source = Some(error);
    while let Some(e) = source {
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            return h2.is_remote()
                && (h2.is_go_away() || h2.reason() == Some(h2::Reason::REFUSED_STREAM));
        }
        source = e.source();
    }
    false
}

/// Sorts a failure into a [`TransportErrorKind`], with its causes in the message.
fn classify(error: &(dyn StdError + 'static)) -> TransportError {
    let mut kind = None;
    let mut source: Option<&(dyn StdError + 'static)> = Some(error);
    let mut messages: Vec<String> = Vec::new();
    while let Some(e) = source {
        let text = e.to_string();
        if !messages.iter().any(|m| m.contains(&text)) {
            messages.push(text.clone());
        }
        if kind.is_none() {
            kind = kind_of(e, &text);
        }
        source = e.source();
    }
    TransportError::new(
        kind.unwrap_or(TransportErrorKind::Other),
        messages.join(": "),
    )
}

fn kind_of(e: &(dyn StdError + 'static), text: &str) -> Option<TransportErrorKind> {
    use TransportErrorKind as K;
    if e.downcast_ref::<ProxyConnectError>().is_some() || text.starts_with("tunnel error") {
        return Some(K::Proxy);
    }
    if e.downcast_ref::<rustls::Error>().is_some() {
        return Some(K::Tls);
    }
    if let Some(h) = e.downcast_ref::<hyper::Error>() {
        if h.is_parse() || h.is_parse_status() {
            return Some(K::Protocol);
        }
        // Closed: the connection ended before it took the request.
        if h.is_incomplete_message() || h.is_canceled() || h.is_closed() {
            return Some(K::Reset);
        }
        if h.is_timeout() {
            return Some(K::Timeout);
        }
        return None;
    }
    if let Some(h2) = e.downcast_ref::<h2::Error>() {
        // A stream reset or a connection going away; anything else of HTTP/2's is the I/O
        // error below it, or a broken exchange.
        if h2.is_reset() || h2.is_go_away() {
            return Some(K::Reset);
        }
        if !h2.is_io() {
            return Some(K::Protocol);
        }
        return None;
    }
    if let Some(mut io) = e.downcast_ref::<io::Error>() {
        // Connectors wrap I/O errors in I/O errors; the innermost one says what happened.
        while let Some(inner) = io.get_ref().and_then(|i| i.downcast_ref::<io::Error>()) {
            io = inner;
        }
        if io
            .get_ref()
            .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
        {
            return Some(K::Tls);
        }
        return match io.kind() {
            io::ErrorKind::ConnectionRefused
            | io::ErrorKind::AddrNotAvailable
            | io::ErrorKind::NetworkUnreachable
            | io::ErrorKind::HostUnreachable => Some(K::Connect),
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof => Some(K::Reset),
            io::ErrorKind::TimedOut => Some(K::Timeout),
            _ => None,
        };
    }
    if text == "dns error" || text.starts_with("dns error") {
        return Some(K::Dns);
    }
    if text.contains("tcp connect error") {
        return Some(K::Connect);
    }
    if text.contains("HTTP connect timeout") || text.contains("connect timeout") {
        return Some(K::Timeout);
    }
    None
}

/// A proxy to go through: where, and the credentials for `Proxy-Authorization`.
struct ProxyTarget {
    uri: Uri,
    auth: Option<HeaderValue>,
}

impl ProxyTarget {
    fn from_url(url: &Url) -> Result<Self, TransportError> {
        let bad = |what: &str| {
            TransportError::new(
                TransportErrorKind::Proxy,
                format!("unusable proxy {}: {what}", redact(url)),
            )
        };
        if url.scheme() != "http" {
            return Err(bad("only http:// proxies are supported"));
        }
        let host = url.host_str().ok_or_else(|| bad("no host"))?;
        let port = url.port_or_known_default().unwrap_or(80);
        let uri: Uri = format!("http://{host}:{port}")
            .parse()
            .map_err(|_| bad("not a valid URI"))?;
        let auth = if url.username().is_empty() {
            None
        } else {
            let user = percent_decode(url.username());
            let pass = percent_decode(url.password().unwrap_or(""));
            let mut value = HeaderValue::from_str(&format!(
                "Basic {}",
                base64(format!("{user}:{pass}").as_bytes())
            ))
            .map_err(|_| bad("credentials cannot be sent"))?;
            value.set_sensitive(true);
            Some(value)
        };
        Ok(ProxyTarget { uri, auth })
    }
}

/// A proxy URL fit for messages: the credentials replaced.
pub(crate) fn redact(url: &Url) -> String {
    let mut url = url.clone();
    if !url.username().is_empty() || url.password().is_some() {
        let _ = url.set_username("***");
        let _ = url.set_password(None);
    }
    url.to_string()
}

fn strip_credentials(uri: &Uri) -> Uri {
    let Some(authority) = uri.authority() else {
        return uri.clone();
    };
    let host_port = authority
        .as_str()
        .rsplit_once('@')
        .map_or(authority.as_str(), |(_, hp)| hp);
    format!("{}://{host_port}", uri.scheme_str().unwrap_or("http"))
        .parse()
        .unwrap_or_else(|_| uri.clone())
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
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

fn base64(input: &[u8]) -> String {
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

/// The largest response head hyper reads, with room for the first bytes of the body.
fn max_buf_size(options: &Built) -> usize {
    options.max_header_size.saturating_add(4096).max(8192)
}

/// hyper allocates this many header slots for every response head it parses: a count in
/// proportion to the size cap (1,024 at 64 KiB) rather than one no head can reach, which
/// cost a 512 KiB allocation per response.
fn max_headers(options: &Built) -> usize {
    (options.max_header_size / 64).clamp(100, 1024)
}

fn build_client(options: &Built, connector: Connector) -> HyperClient {
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(options.pool_idle_timeout)
        .pool_max_idle_per_host(options.pool_max_idle_per_host)
        .http1_max_buf_size(max_buf_size(options))
        .http1_max_headers(max_headers(options))
        .http2_max_header_list_size(u32::try_from(options.max_header_size).unwrap_or(u32::MAX))
        .retry_canceled_requests(true);
    builder.build(connector)
}

/// Connects to origins directly, or through `proxy`.
fn connector(options: &Built, proxy: Option<&ProxyTarget>) -> Connector {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(options.connect_timeout));
    let http = TimedConnector {
        tcp: http,
        stamp: options.stamp_arrivals,
    };
    let https = |inner| {
        let b = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(options.tls.clone())
            .https_or_http()
            .enable_http1();
        if options.http2 {
            b.enable_http2().wrap_connector(inner)
        } else {
            b.wrap_connector(inner)
        }
    };
    match proxy {
        None => Connector::Direct(https(http)),
        Some(target) => {
            let mut tunnel = Tunnel::new(target.uri.clone(), http.clone());
            if let Some(auth) = &target.auth {
                tunnel = tunnel.with_auth(auth.clone());
            }
            Connector::Proxy {
                plain: http,
                proxy: target.uri.clone(),
                tunnel: Box::new(https_tunnel(options, tunnel)),
            }
        }
    }
}

fn https_tunnel(
    options: &Built,
    tunnel: Tunnel<TimedConnector>,
) -> HttpsConnector<Tunnel<TimedConnector>> {
    let b = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(options.tls.clone())
        .https_or_http()
        .enable_http1();
    if options.http2 {
        b.enable_http2().wrap_connector(tunnel)
    } else {
        b.wrap_connector(tunnel)
    }
}

/// Connects directly, or through a proxy: CONNECT for `https`, absolute-form for `http`.
#[derive(Clone)]
pub(crate) enum Connector {
    Direct(HttpsConnector<TimedConnector>),
    Proxy {
        plain: TimedConnector,
        proxy: Uri,
        tunnel: Box<HttpsConnector<Tunnel<TimedConnector>>>,
    },
}

/// hyper's TCP connector, with streams that know when their bytes arrived ([`TimedTcp`]) if
/// `stamp`.
#[derive(Clone)]
pub(crate) struct TimedConnector {
    tcp: HttpConnector,
    stamp: bool,
}

impl Service<Uri> for TimedConnector {
    type Response = TokioIo<TimedTcp>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<TokioIo<TimedTcp>, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.tcp.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let connecting = self.tcp.call(dst);
        let stamp = self.stamp;
        Box::pin(async move {
            let tcp = connecting.await?.into_inner();
            Ok(TokioIo::new(TimedTcp::new(tcp, stamp)))
        })
    }
}

impl Service<Uri> for Connector {
    type Response = TokioIo<Conn>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<TokioIo<Conn>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Both connectors are always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        match self {
            Connector::Direct(c) => {
                let fut = c.call(dst);
                Box::pin(async move { Ok(Conn::open(fut.await?, false)) })
            }
            Connector::Proxy { tunnel, .. } if dst.scheme_str() == Some("https") => {
                let fut = tunnel.call(dst);
                Box::pin(async move { Ok(Conn::open(fut.await?, false)) })
            }
            Connector::Proxy { plain, proxy, .. } => {
                let fut = plain.call(proxy.clone());
                Box::pin(async move {
                    let io = fut
                        .await
                        .map_err(|e| -> BoxError { Box::new(ProxyConnectError(e.to_string())) })?;
                    Ok(Conn::open(MaybeHttpsStream::Http(io), true))
                })
            }
        }
    }
}

/// The proxy itself could not be reached.
#[derive(Debug)]
struct ProxyConnectError(String);

impl fmt::Display for ProxyConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot connect to the proxy: {}", self.0)
    }
}

impl StdError for ProxyConnectError {}

/// A connection, marked as going to a proxy when requests on it must use absolute form. Its
/// bytes pass in tokio's terms, where a read shows how much it read, and are noted in its
/// [`Carried`]: a write clears `answered`, a read of any byte sets it, and every read that
/// brings bytes or the stream's end is timed. hyper sees it through a [`TokioIo`].
pub(crate) struct Conn {
    io: TokioIo<Stream>,
    proxied: bool,
    carried: Carried,
}

impl Conn {
    fn open(inner: Stream, proxied: bool) -> TokioIo<Conn> {
        TokioIo::new(Conn {
            io: TokioIo::new(inner),
            proxied,
            carried: Carried::new(),
        })
    }

    /// What the connection has carried.
    pub(crate) fn carried(&self) -> &Carried {
        &self.carried
    }

    /// When the bytes of the last read arrived at the socket (under TLS: the last TCP read's
    /// bytes, no earlier than the plaintext's); `None` when stamps are off.
    fn arrived(&self) -> Option<Instant> {
        match self.io.inner() {
            MaybeHttpsStream::Http(tcp) => tcp.inner().arrived(),
            MaybeHttpsStream::Https(tls) => tls.inner().get_ref().0.inner().inner().arrived(),
        }
    }
}

impl Connection for Conn {
    fn connected(&self) -> Connected {
        // Made anew rather than extended: the one extra that hyper puts into every
        // response's extensions is then the count, and not the addresses (unused here).
        let mut connected = Connected::new().extra(self.carried.clone());
        if self.io.inner().connected().is_negotiated_h2() {
            connected = connected.negotiated_h2();
        }
        if self.proxied {
            connected = connected.proxy(true);
        }
        connected
    }
}

impl tokio::io::AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let (before, room) = (buf.filled().len(), buf.remaining() > 0);
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) {
            let bytes = buf.filled().len() > before;
            // Nothing read into room for something: the stream ended, which may end a body.
            if bytes || room {
                let arrived = if bytes { self.arrived() } else { None };
                self.carried
                    .read(bytes, arrived.unwrap_or_else(Instant::now));
            }
        }
        polled
    }
}

impl tokio::io::AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.carried.wrote();
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.carried.wrote();
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}

#[cfg(test)]
impl HttpClient {
    /// The driver's own pool (the pool's tests).
    pub(crate) fn own_pool(&self) -> Arc<Http1Pool> {
        Arc::clone(&self.own)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"Aladdin:opensesame"), "QWxhZGRpbjpvcGVuc2VzYW1l");
    }

    #[test]
    fn proxy_credentials_become_a_header_and_are_redacted() {
        let url = Url::parse("http://us%40er:p%3Ass@proxy.example:3128").unwrap();
        let target = ProxyTarget::from_url(&url).unwrap();
        assert_eq!(target.uri.to_string(), "http://proxy.example:3128/");
        let auth = target.auth.unwrap();
        assert_eq!(auth, format!("Basic {}", base64(b"us@er:p:ss")).as_str());
        assert!(auth.is_sensitive());
        assert!(!redact(&url).contains("p%3Ass"));
        assert!(!format!("{:?}", auth).contains("Basic"));
    }

    #[derive(serde::Serialize, serde::Deserialize)]
    struct Page {
        url: Url,
    }

    impl downpour::Request for Page {
        fn url(&self) -> &Url {
            &self.url
        }
    }

    /// When a hop ended, and when the server began and finished sending its response, and when
    /// the hop was polled again: the response (head, then 30 ms later its 2-byte body) comes
    /// while nobody polls the hop, as when the run loop is busy with others; with
    /// `runtime_blocked`, while nothing at all runs on the runtime (its connection's task
    /// cannot read either), as when the one thread is busy connecting to a thousand hosts.
    struct Late {
        result: HopResult,
        ended: Instant,
        head_written: Instant,
        body_written: Instant,
        polled: Instant,
    }

    fn hop_polled_late(max_body_size: u64, runtime_blocked: bool) -> Late {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (asked_tx, asked_rx) = tokio::sync::oneshot::channel();
        let server = std::thread::spawn(move || {
            let (mut socket, _) = listener.accept().unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.ends_with(b"\r\n\r\n") {
                let n = socket.read(&mut buf).unwrap();
                assert!(n > 0, "the request was cut");
                request.extend_from_slice(&buf[..n]);
            }
            asked_tx.send(()).unwrap();
            // The client is asleep by now, with the hop not polled.
            std::thread::sleep(Duration::from_millis(30));
            let head_written = Instant::now();
            socket
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
                .unwrap();
            std::thread::sleep(Duration::from_millis(30));
            // Before the write: the client cannot read the body earlier.
            let body_written = Instant::now();
            socket.write_all(b"ok").unwrap();
            // Held open until the client is done, so that no close is read after the body.
            let _ = socket.read(&mut buf);
            (head_written, body_written)
        });

        let url = Url::parse(&format!("http://127.0.0.1:{port}/")).unwrap();
        let mut scheduler =
            downpour::Scheduler::new(downpour::Config::default(), downpour::Fifo::new()).unwrap();
        scheduler.enqueue(Instant::now(), Page { url }).unwrap();
        let mut fetch = std::iter::from_fn(|| scheduler.poll_action())
            .find_map(|a| match a {
                downpour::Action::Fetch(f) => Some(f),
                _ => None,
            })
            .expect("a fetch");
        fetch.max_body_size = max_body_size;
        let options = ClientOptions {
            proxy: Proxy::None,
            ..ClientOptions::default()
        };
        let runtime = crate::test_runtime();
        let (result, ended, polled) = runtime.block_on(async {
            let mut client = HttpClient::new(&options, 65_536, true).unwrap();
            let mut hop = Box::pin(client.hop(fetch, &HeaderValue::from_static("test")));
            // Polled until the request went out; the response comes 30 ms later.
            tokio::select! {
                biased;
                asked = asked_rx => asked.unwrap(),
                _ = &mut hop => panic!("the hop ended before its response was written"),
            }
            if runtime_blocked {
                std::thread::sleep(Duration::from_millis(400));
            } else {
                // Busy elsewhere: the connection's own task reads the response meanwhile.
                tokio::time::sleep(Duration::from_millis(400)).await;
            }
            let polled = Instant::now();
            let (result, ended) = hop.await;
            (result, ended, polled)
        });
        // Closes the pooled connection, which the server waits for.
        drop(runtime);
        let (head_written, body_written) = server.join().unwrap();
        Late {
            result,
            ended,
            head_written,
            body_written,
            polled,
        }
    }

    /// A whole response ends when its last bytes came, not when its hop was polled again: the
    /// host's delay counts from then.
    #[test]
    fn a_hop_ends_when_its_last_bytes_came_not_when_it_was_polled() {
        let late = hop_polled_late(1024, false);
        assert_whole_and_ended_within(&late, Duration::from_millis(200));
    }

    /// The hop read its whole 2-byte body, and ended no earlier than the body was written
    /// and less than `within` after.
    fn assert_whole_and_ended_within(late: &Late, within: Duration) {
        match &late.result {
            HopResult::Response(r) => assert_eq!(&r.body[..], b"ok"),
            HopResult::Failed(e) => panic!("{e}"),
        }
        let (ended, written) = (late.ended, late.body_written);
        assert!(
            ended >= written,
            "ended {:?} before the body was written ({:?} after the head)",
            written - ended,
            ended.saturating_duration_since(late.head_written)
        );
        assert!(
            ended < written + within,
            "ended {:?} after the body was written, as late as the poll ({:?} after)",
            ended - written,
            late.polled - written
        );
    }

    /// A body cut at its limit ends when the hop gave up on it and closed its connection (the
    /// server was still sending), not when its first bytes came.
    #[test]
    fn a_body_cut_at_its_limit_ends_when_the_hop_gave_up_on_it() {
        let late = hop_polled_late(1, false);
        match &late.result {
            HopResult::Response(r) => assert!(r.truncated && &r.body[..] == b"o"),
            HopResult::Failed(e) => panic!("{e}"),
        }
        assert!(
            late.ended >= late.polled,
            "ended {:?} before the hop was polled and gave up",
            late.polled - late.ended
        );
    }

    /// On Linux a response ends when the kernel received its last bytes, even when nothing
    /// read them until much later.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_hop_ends_when_its_last_bytes_arrived_even_if_nothing_read_them_then() {
        let late = hop_polled_late(1024, true);
        assert_whole_and_ended_within(&late, Duration::from_millis(100));
    }

    #[test]
    fn head_size_counts_names_and_values() {
        let mut h = HeaderMap::new();
        h.insert("x-a", HeaderValue::from_static("bb"));
        assert_eq!(head_size(&h), 17 + 3 + 2 + 4 + 2);
    }
}
