//! The HTTP client: one hop at a time over ureq, with TLS, proxies, limits and decoding.

use std::cell::{Cell, RefCell};
use std::error::Error as StdError;
use std::io::{self, Read};
use std::sync::Arc;
use std::time::{Duration, Instant};

use downpour::{Fetch, HopResponse, HopResult, TransportError, TransportErrorKind};
use downpour_common::MAX_RESENDS;
use http::header::{self, HeaderValue};
use http::Uri;
use ureq::tls::{Certificate, RootCerts, TlsConfig, TlsProvider};
use ureq::unversioned::transport::{
    Buffers, ConnectProxyConnector, ConnectionDetails, Connector, NextTimeout, RustlsConnector,
    Transport,
};
use ureq::Agent;

use crate::absolute::HttpProxyConnector;
use crate::resolver::CachingResolver;
use crate::tcp::{self, Tcp};

use crate::decode::{headers_to_send, Body, Coding};
use crate::proxy::{Rules, Target};
use crate::{ClientOptions, Error, Proxy};

/// How many bytes a worker reads from a body at a time.
const READ_CHUNK: usize = 64 << 10;

/// The output buffer of every connection: the request head is written through it a line at
/// a time, so it bounds the longest line (request line or header) a hop can send, and the
/// whole head through an HTTP proxy in absolute form (see [`check_head_size`]). Servers
/// refuse much shorter lines (8 KiB is common), and every pooled connection keeps its own
/// buffer, zeroed when it opens: ureq's default of 128 KiB made a thousand connections
/// cost 128 MiB before a byte was read.
pub(crate) const MAX_LINE: usize = 32 << 10;

/// Most agents (connection pools) the origins are spread over.
const MAX_SHARDS: usize = 256;

/// Sends hops. Shared by the worker threads; the agents pool connections for all of them.
///
/// ureq's pool scans its idle connections linearly (and, on every return, counts them per
/// origin in quadratic time), which is fine for tens of connections and ruinous for the
/// thousand hosts of a polite crawl. So origins are spread over many agents by a hash of
/// the host and port: each pool stays small, and an origin's connections stay together.
pub(crate) struct HttpClient {
    agents: Vec<Agent>,
    defaults: Defaults,
    rules: Option<Rules>,
    user_agent: HeaderValue,
}

impl HttpClient {
    pub(crate) fn new(
        options: &ClientOptions,
        concurrency: usize,
        timeout: Duration,
        max_header_size: usize,
        user_agent: HeaderValue,
        stamp_arrivals: bool,
    ) -> Result<Self, Error> {
        // The crypto provider is chosen here, explicitly: ring, and nothing process-wide.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = if options.extra_root_certificates.is_empty() {
            RootCerts::WebPki
        } else {
            let mut certs: Vec<Certificate<'static>> = webpki_root_certs::TLS_SERVER_ROOT_CERTS
                .iter()
                .map(|c| Certificate::from_der(c.as_ref()))
                .collect();
            for der in &options.extra_root_certificates {
                // Refuse what rustls would silently ignore.
                let mut check = rustls::RootCertStore::empty();
                check
                    .add(rustls::pki_types::CertificateDer::from(der.as_slice()))
                    .map_err(|e| Error::Tls(format!("extra root certificate refused: {e}")))?;
                certs.push(Certificate::from_der(der).to_owned());
            }
            RootCerts::from(certs)
        };
        let tls = TlsConfig::builder()
            .provider(TlsProvider::Rustls)
            .unversioned_rustls_crypto_provider(provider)
            .root_certs(roots)
            .build();
        let shards = concurrency.clamp(1, MAX_SHARDS).next_power_of_two();
        let idle_total = concurrency.saturating_mul(2).max(16);
        let idle_per_agent = (idle_total / shards).max(options.pool_max_idle_per_host);
        let config = Agent::config_builder()
            // One hop, as it came: the scheduler follows redirects and judges statuses.
            .max_redirects(0)
            .http_status_as_error(false)
            .save_redirect_history(false)
            // The proxy is chosen per hop, never by ureq from the environment.
            .proxy(None)
            .tls_config(tls)
            .no_delay(true)
            .timeout_connect(Some(options.connect_timeout))
            .timeout_global(Some(timeout))
            .max_response_header_size(max_header_size)
            // The whole response head must fit in the input buffer; the body streams through.
            .input_buffer_size(max_header_size.saturating_add(4096))
            .output_buffer_size(MAX_LINE)
            .max_idle_connections(idle_per_agent)
            .max_idle_connections_per_host(options.pool_max_idle_per_host)
            .max_idle_age(options.pool_idle_timeout)
            // Headers are ours: User-Agent from the config, our Accept-Encoding.
            .user_agent(ureq::config::AutoHeaderValue::None)
            .accept(ureq::config::AutoHeaderValue::None)
            .accept_encoding(ureq::config::AutoHeaderValue::None)
            .build();
        let agents = (0..shards)
            .map(|_| {
                // ureq's default chain, with plain HTTP through a proxy taken first.
                // Framed by `Opened` and `Watch`, which note what a hop did with its connection.
                // Plain TCP is ours (`tcp`): buffers that grow, reads that know when their
                // bytes arrived.
                let tcp = Tcp {
                    stamp: stamp_arrivals,
                };
                let connector =
                    ().chain(Opened)
                        .chain(HttpProxyConnector { tcp })
                        .chain(ConnectProxyConnector::default())
                        .chain(tcp)
                        .chain(RustlsConnector::default())
                        .chain(Watch);
                Agent::with_parts(config.clone(), connector, CachingResolver::default())
            })
            .collect();
        let rules = match &options.proxy {
            Proxy::FromEnv => Rules::from_env(),
            Proxy::None => None,
            Proxy::Rules { http, https, no } => Rules::new(http.clone(), https.clone(), no),
        };
        Ok(HttpClient {
            agents,
            defaults: Defaults {
                timeout,
                max_header_size,
            },
            rules,
            user_agent,
        })
    }

    /// Fetches one hop, blocking until it is done, failed or timed out. Returns the result
    /// and when the hop ended: for a whole response, when its last bytes (or the close that
    /// ended it) arrived, since the host's delay counts from then; otherwise now (a body cut
    /// at its limit ends when its connection is closed: the server was sending until then).
    pub(crate) fn hop(&self, fetch: Fetch) -> (HopResult, Instant) {
        tcp::forget_last_read();
        let result = self.hop_result(fetch);
        let ended = match &result {
            HopResult::Response(r) if !r.truncated => tcp::last_read(),
            HopResult::Response(_) | HopResult::Failed(_) => None,
        };
        (result, ended.unwrap_or_else(Instant::now))
    }

    fn hop_result(&self, fetch: Fetch) -> HopResult {
        let proxy = match &fetch.proxy {
            Some(url) => Some(Target::from_url(url)),
            None => self
                .rules
                .as_ref()
                .and_then(|r| r.proxy_for(&fetch.url))
                .map(Target::from_url),
        };
        let proxy = match proxy.transpose() {
            Ok(p) => p,
            Err(e) => return HopResult::Failed(e),
        };
        match self.send(fetch, proxy.as_ref()) {
            Ok(response) => HopResult::Response(response),
            Err(mut e) => {
                if let Some(target) = &proxy {
                    e.message = target.scrub(e.message);
                }
                HopResult::Failed(e)
            }
        }
    }

    fn send(&self, fetch: Fetch, proxy: Option<&Target>) -> Result<HopResponse, TransportError> {
        let url = &fetch.url;
        let agent = self.agent_for(url);
        // The headers as given are kept (most often none: a copy that costs nothing) in case
        // the request goes again.
        let given = fetch.headers;
        let headers = headers_to_send(given.clone(), &self.user_agent);
        let uri = parse_uri(url)?;
        // Plain HTTP through a proxy goes in absolute form (see `absolute`).
        let form = match proxy {
            Some(target) if url.scheme() == "http" => Form::Absolute {
                proxy_credentials: target.credentials.as_ref(),
            },
            _ => Form::Origin,
        };
        check_head_size(&fetch.method, &uri, &headers, form)?;
        // Through a proxy: `CONNECT` for https (ureq's connector), absolute form for http
        // (ours, first in the chain). Either way the proxy is part of the pool's key.
        let ureq_proxy = match proxy {
            None => None,
            Some(target) => {
                let mut proxy_url = format!("http://{}", target.authority);
                if let Some((user, pass)) = &target.credentials {
                    proxy_url = format!(
                        "http://{}:{}@{}",
                        percent_encode(user),
                        percent_encode(pass),
                        target.authority
                    );
                }
                Some(ureq::Proxy::new(&proxy_url).map_err(|_| {
                    TransportError::new(
                        TransportErrorKind::Proxy,
                        format!("unusable proxy {}", target.redacted),
                    )
                })?)
            }
        };
        let limits = Limits {
            proxied: proxy.is_some(),
            max_body_size: fetch.max_body_size,
        };
        let hop = HopSettings {
            timeout: fetch.timeout,
            max_header_size: fetch.max_header_size,
            proxy: ureq_proxy,
        };
        let attempt = |uri: Uri, headers: http::HeaderMap, timeout: Duration| {
            let hop = HopSettings {
                timeout,
                proxy: hop.proxy.clone(),
                ..hop
            };
            let mut request = http::Request::new(());
            *request.method_mut() = fetch.method.clone();
            *request.uri_mut() = uri;
            *request.headers_mut() = headers;
            if fetch.body.is_empty() {
                self.run(agent, request, hop)
            } else {
                self.run(agent, request.map(|()| fetch.body.to_vec()), hop)
            }
        };
        let started = Instant::now();
        OPENED.set(false);
        ANSWERED.set(false);
        let mut response = attempt(uri, headers, hop.timeout);
        // A request that a pooled connection dropped before a byte of an answer came goes
        // again: the server may close an idle connection just as a request goes out on it
        // (its keep-alive timeout ending then), and never see the request; it may have
        // closed all its idle connections at once, and each resend may meet the next one.
        // Only requests that may be repeated (RFC 9110, 9.2.2); all attempts share the
        // hop's timeout.
        let mut resends = 0;
        while let Err(e) = &response {
            let left = hop.timeout.saturating_sub(started.elapsed());
            let dropped_on_reuse = !OPENED.get()
                && !ANSWERED.get()
                && classify(e, limits.proxied).kind == TransportErrorKind::Reset;
            if !fetch.method.is_idempotent()
                || !dropped_on_reuse
                || resends == MAX_RESENDS
                || left.is_zero()
            {
                break;
            }
            resends += 1;
            OPENED.set(false);
            ANSWERED.set(false);
            let headers = headers_to_send(given.clone(), &self.user_agent);
            response = attempt(parse_uri(url)?, headers, left);
        }
        receive(response, limits)
    }

    /// Sends a request; settings that differ from the agent's are set on the request only.
    fn run<B: ureq::AsSendBody>(
        &self,
        agent: &Agent,
        request: http::Request<B>,
        hop: HopSettings,
    ) -> Result<http::Response<ureq::Body>, ureq::Error> {
        if hop.proxy.is_none()
            && hop.timeout == self.defaults.timeout
            && hop.max_header_size == self.defaults.max_header_size
        {
            return agent.run(request);
        }
        let request = agent
            .configure_request(request)
            .timeout_global(Some(hop.timeout))
            .max_response_header_size(hop.max_header_size)
            .proxy(hop.proxy)
            .build();
        agent.run(request)
    }
}

thread_local! {
    /// Whether the hop running on this thread tried to open a connection (rather than take
    /// one from the pool): set by [`Opened`], the first connector of every agent's chain.
    static OPENED: Cell<bool> = const { Cell::new(false) };
    /// Whether a byte of an answer came to the hop running on this thread: set by
    /// [`Watched`], around every connection.
    static ANSWERED: Cell<bool> = const { Cell::new(false) };
}

/// Notes that a connection is being opened: ureq runs the chain only when its pool has
/// none to give, and this runs first, so a connection that fails while it opens (a TLS
/// handshake cut short) counts as opened too.
#[derive(Debug)]
struct Opened;

impl<In: Transport> Connector<In> for Opened {
    type Out = In;

    fn connect(
        &self,
        _details: &ConnectionDetails,
        chained: Option<In>,
    ) -> Result<Option<In>, ureq::Error> {
        OPENED.set(true);
        Ok(chained)
    }
}

/// Wraps every connection made in a [`Watched`]; the last connector of the chain.
#[derive(Debug)]
struct Watch;

impl<In: Transport> Connector<In> for Watch {
    type Out = Watched<In>;

    fn connect(
        &self,
        _details: &ConnectionDetails,
        chained: Option<In>,
    ) -> Result<Option<Watched<In>>, ureq::Error> {
        Ok(chained.map(Watched))
    }
}

/// A connection that notes, for the hop using it, when input comes (after TLS: the
/// answer's bytes).
#[derive(Debug)]
struct Watched<T>(T);

impl<T: Transport> Transport for Watched<T> {
    fn buffers(&mut self) -> &mut dyn Buffers {
        self.0.buffers()
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), ureq::Error> {
        self.0.transmit_output(amount, timeout)
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, ureq::Error> {
        let progress = self.0.await_input(timeout)?;
        if progress {
            ANSWERED.set(true);
        }
        Ok(progress)
    }

    fn is_open(&mut self) -> bool {
        self.0.is_open()
    }

    fn is_tls(&self) -> bool {
        self.0.is_tls()
    }
}

/// What one hop may set differently from the agent.
struct HopSettings {
    timeout: Duration,
    max_header_size: usize,
    proxy: Option<ureq::Proxy>,
}

/// The agent's settings for every hop.
#[derive(Clone, Copy)]
struct Defaults {
    timeout: Duration,
    max_header_size: usize,
}

impl HttpClient {
    /// The agent whose pool holds this origin's connections.
    fn agent_for(&self, url: &downpour::Url) -> &Agent {
        // FNV-1a over the host and port: stable, and spread well enough.
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        let port = url.port_or_known_default().unwrap_or(0).to_le_bytes();
        for &b in url.host_str().unwrap_or("").as_bytes().iter().chain(&port) {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        &self.agents[(hash as usize) & (self.agents.len() - 1)]
    }
}

#[derive(Clone, Copy)]
struct Limits {
    proxied: bool,
    max_body_size: u64,
}

fn parse_uri(url: &downpour::Url) -> Result<Uri, TransportError> {
    let mut url = url.clone();
    url.set_fragment(None);
    url.as_str().parse().map_err(|e| {
        TransportError::new(
            TransportErrorKind::Other,
            format!("{url} cannot be sent over HTTP: {e}"),
        )
    })
}

/// How a request's target is written.
enum Form<'a> {
    /// `/path?query`, to the origin (or through a `CONNECT` tunnel).
    Origin,
    /// The whole URL, to an HTTP proxy, whose credentials (if any) the head carries.
    Absolute {
        proxy_credentials: Option<&'a (String, String)>,
    },
}

/// Refuses a request the output buffer cannot carry, with the reason (ureq would only say
/// its output overflowed): a line longer than [`MAX_LINE`] or, in absolute form, whose head
/// is rewritten in one piece, a head longer than that.
fn check_head_size(
    method: &http::Method,
    uri: &Uri,
    headers: &http::HeaderMap,
    form: Form<'_>,
) -> Result<(), TransportError> {
    let too_long = |what: String| {
        TransportError::new(
            TransportErrorKind::Other,
            format!("{what}, longer than the {MAX_LINE} bytes this driver can send"),
        )
    };
    // `METHOD target HTTP/1.1\r\n`, with the whole URL as the target through a proxy.
    let target = match form {
        Form::Absolute { .. } => uri.to_string().len(),
        Form::Origin => uri.path_and_query().map_or(1, |p| p.as_str().len()),
    };
    let request_line = method.as_str().len() + target + 12;
    if request_line > MAX_LINE {
        return Err(too_long(format!(
            "the URL is too long: its request line is {request_line} bytes"
        )));
    }
    let mut head = request_line;
    for (name, value) in headers {
        // `name: value\r\n`, and the last one goes out with the blank line that ends the head.
        let line = name.as_str().len() + value.len() + 4;
        if line + 2 > MAX_LINE {
            return Err(too_long(format!("the header {name} is {line} bytes")));
        }
        head += line;
    }
    let Form::Absolute { proxy_credentials } = form else {
        return Ok(());
    };
    // The lines the client adds: `Host`, `Content-Length`, `Authorization` for credentials
    // in the URL, `Proxy-Authorization`, and the blank line.
    let authority = uri.authority().map_or("", |a| a.as_str());
    let (userinfo, host) = authority.rsplit_once('@').unwrap_or(("", authority));
    head += "Host: \r\n".len() + host.len() + "Content-Length: 18446744073709551615\r\n".len() + 2;
    if !userinfo.is_empty() {
        head += "Authorization: Basic \r\n".len() + base64_len(userinfo.len());
    }
    if let Some((user, password)) = proxy_credentials {
        head +=
            "Proxy-Authorization: Basic \r\n".len() + base64_len(user.len() + 1 + password.len());
    }
    if head > MAX_LINE {
        return Err(too_long(format!(
            "the request head is {head} bytes, sent through an HTTP proxy in one piece"
        )));
    }
    Ok(())
}

/// The length of `n` bytes in base64, padded.
fn base64_len(n: usize) -> usize {
    n.div_ceil(3) * 4
}

/// Reads the response: its head, then the body up to the cap, decoded.
fn receive(
    response: Result<http::Response<ureq::Body>, ureq::Error>,
    limits: Limits,
) -> Result<HopResponse, TransportError> {
    let response = response.map_err(|e| classify(&e, limits.proxied))?;
    let (parts, body) = response.into_parts();
    let mut headers = parts.headers;
    let coding = Coding::of(&headers);
    let mut decoded = Body::new(coding.unwrap_or(Coding::Identity), limits.max_body_size);
    let mut reader = body.into_reader();
    thread_local! {
        // Each worker reads every body through the same buffer.
        static CHUNK: RefCell<Vec<u8>> = RefCell::new(vec![0u8; READ_CHUNK]);
    }
    CHUNK.with(|chunk| -> Result<(), TransportError> {
        let mut chunk = chunk.borrow_mut();
        while !decoded.is_full() {
            match reader.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => decoded
                    .feed(&chunk[..n])
                    .map_err(|e| TransportError::new(TransportErrorKind::Decode, e.0))?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(classify(&ureq::Error::from(e), false)),
            }
        }
        Ok(())
    })?;
    // Dropping a reader before the end of its body closes that connection.
    drop(reader);
    let (body, truncated) = decoded
        .finish()
        .map_err(|e| TransportError::new(TransportErrorKind::Decode, e.0))?;
    if matches!(
        coding,
        Some(Coding::Gzip | Coding::Deflate | Coding::Brotli)
    ) {
        // The body handed on is decoded: these described the bytes on the wire.
        headers.remove(header::CONTENT_ENCODING);
        headers.remove(header::CONTENT_LENGTH);
    }
    Ok(HopResponse {
        status: parts.status,
        version: parts.version,
        headers,
        body,
        truncated,
    })
}

/// Sorts a ureq failure into a [`TransportErrorKind`], with its causes in the message.
/// Through a proxy, failing to connect (or to resolve) is the proxy's failure.
fn classify(error: &ureq::Error, proxied: bool) -> TransportError {
    use TransportErrorKind as K;
    let mut messages = vec![error.to_string()];
    let mut source = error.source();
    let mut tls = false;
    while let Some(e) = source {
        let text = e.to_string();
        if !messages.iter().any(|m| m.contains(&text)) {
            messages.push(text);
        }
        tls |= e.downcast_ref::<rustls::Error>().is_some();
        source = e.source();
    }
    let kind = match error {
        ureq::Error::HostNotFound => K::Dns,
        ureq::Error::ConnectionFailed => K::Connect,
        ureq::Error::Timeout(_) => K::Timeout,
        ureq::Error::Protocol(_) | ureq::Error::LargeResponseHeader(..) => K::Protocol,
        ureq::Error::Tls(_) | ureq::Error::Rustls(_) | ureq::Error::Pem(_) => K::Tls,
        ureq::Error::ConnectProxyFailed(_) | ureq::Error::InvalidProxyUrl => K::Proxy,
        ureq::Error::Io(e) if tls || io_inner_is_tls(e) => K::Tls,
        // The system resolver's failure has no kind of its own.
        ureq::Error::Io(e) if e.to_string().contains("failed to lookup address") => K::Dns,
        ureq::Error::Io(e) => io_kind(e),
        _ if tls => K::Tls,
        _ => K::Other,
    };
    let kind = match kind {
        K::Connect | K::Dns if proxied => K::Proxy,
        k => k,
    };
    TransportError::new(kind, messages.join(": "))
}

fn io_inner_is_tls(e: &io::Error) -> bool {
    e.get_ref()
        .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
}

fn io_kind(e: &io::Error) -> TransportErrorKind {
    use TransportErrorKind as K;
    match e.kind() {
        io::ErrorKind::ConnectionRefused
        | io::ErrorKind::AddrNotAvailable
        | io::ErrorKind::NetworkUnreachable
        | io::ErrorKind::HostUnreachable => K::Connect,
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::UnexpectedEof => K::Reset,
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => K::Timeout,
        io::ErrorKind::InvalidData => K::Protocol,
        _ => K::Other,
    }
}

/// Percent-encodes a user name or password for a URL's user info.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_encoding_keeps_unreserved() {
        assert_eq!(percent_encode("a-b_c.d~e"), "a-b_c.d~e");
        assert_eq!(percent_encode("p@ss:w/rd"), "p%40ss%3Aw%2Frd");
    }
}
