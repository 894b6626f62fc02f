//! The HTTP client: one hop at a time over isahc (libcurl), with TLS, proxies, limits and
//! decoding.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::future::Future;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use downpour::{Fetch, HopResponse, HopResult, TransportError, TransportErrorKind};
use futures_lite::{future, AsyncReadExt, AsyncWriteExt};
use http::header::{self, HeaderValue};
use http::{HeaderMap, Uri};
use isahc::auth::{Authentication, Credentials};
use isahc::config::{Configurable, RedirectPolicy, VersionNegotiation};
use isahc::error::ErrorKind;
use isahc::tls::{TlsConfig, TrustStore};
use isahc::AsyncBody;

use crate::decode::{headers_to_send, Body, Coding};
use crate::proxy::{Rules, Target};
use crate::{ClientOptions, Error, Proxy};

/// How many bytes are read from a body at a time, at first and at most: small bodies need
/// no large buffer, large ones get one.
const FIRST_CHUNK: usize = 8 << 10;
const MAX_CHUNK: usize = 64 << 10;
/// The smallest buffer, for bodies announced empty or tiny (a read of 0 bytes means the end).
const MIN_CHUNK: usize = 64;

/// Sends hops over a pool of isahc clients: each one is a libcurl agent thread with its own
/// multi handle and connection cache, so the pool spreads curl's work over several cores.
/// Cheap to clone: clones share the pool.
#[derive(Clone)]
pub(crate) struct HttpClient {
    agents: Arc<Agents>,
    rules: Option<Rules>,
    user_agent: HeaderValue,
}

/// The isahc clients, and which one serves which origin.
struct Agents {
    clients: Box<[isahc::HttpClient]>,
    /// Origin (and proxy) → client: the client an origin was first given, round-robin, so
    /// that its hops find its pooled connections; and the next client to give.
    assigned: Mutex<(HashMap<u64, usize>, usize)>,
}

/// How many origins [`Agents::assigned`] remembers before it starts over (an origin not
/// seen among so many others has likely no idle connection left in any cache).
const MAX_ASSIGNED: usize = 16 << 10;

impl Agents {
    /// The client for hops to this origin, through this proxy.
    fn pick(&self, uri: &Uri, proxy: Option<&Target>) -> &isahc::HttpClient {
        if self.clients.len() == 1 {
            return &self.clients[0];
        }
        let mut hasher = DefaultHasher::new();
        uri.scheme_str().hash(&mut hasher);
        uri.host().hash(&mut hasher);
        let default_port = match uri.scheme_str() {
            Some("https") => Some(443),
            _ => Some(80),
        };
        uri.port_u16().or(default_port).hash(&mut hasher);
        proxy.map(|t| &t.authority).hash(&mut hasher);
        let key = hasher.finish();
        let mut guard = self.assigned.lock().unwrap_or_else(|e| e.into_inner());
        let (assigned, next) = &mut *guard;
        if assigned.len() >= MAX_ASSIGNED && !assigned.contains_key(&key) {
            assigned.clear();
        }
        let count = self.clients.len();
        let index = *assigned.entry(key).or_insert_with(|| {
            let i = *next % count;
            *next = next.wrapping_add(1);
            i
        });
        &self.clients[index]
    }
}

impl HttpClient {
    pub(crate) fn new(
        options: &ClientOptions,
        concurrency: usize,
        user_agent: HeaderValue,
    ) -> Result<Self, Error> {
        let build = || {
            let mut builder = isahc::HttpClient::builder()
                // One hop, as it came: the scheduler follows redirects and decodes with a cap.
                .redirect_policy(RedirectPolicy::None)
                .automatic_decompression(false)
                // The proxy is chosen per hop; curl must not read the environment itself.
                .proxy(None)
                .connect_timeout(options.connect_timeout)
                .tcp_nodelay()
                .connection_cache_size(
                    concurrency
                        .saturating_mul(2)
                        .max(options.pool_max_idle_per_host),
                )
                // A request that a reused connection drops before any answer is sent again
                // by curl itself (any method, up to 5 times), as the other drivers do by
                // hand (idempotent methods, up to `MAX_RESENDS` times).
                .connection_cache_ttl(options.pool_idle_timeout)
                .version_negotiation(if options.http2 {
                    VersionNegotiation::latest_compatible()
                } else {
                    VersionNegotiation::http11()
                });
            if !options.extra_root_certificates.is_empty() {
                // The bundled web PKI roots and the extra ones, as one PEM bundle for curl.
                let store = webpki_root_certs::TLS_SERVER_ROOT_CERTS
                    .iter()
                    .map(|c| c.as_ref())
                    .chain(options.extra_root_certificates.iter().map(Vec::as_slice))
                    .fold(TrustStore::builder(), |b, der| b.certificate_from_der(der))
                    .build();
                let tls = TlsConfig::builder().trust_store(store).build();
                builder = builder.tls_config(tls);
            }
            builder.build()
        };
        // More agents than hops in flight would only idle.
        let clients = (0..options.clients.clamp(1, concurrency.max(1)))
            .map(|_| build())
            .collect::<Result<Box<[_]>, _>>()
            .map_err(|e| Error::Http(format!("cannot start the HTTP client: {e}")))?;
        let rules = match &options.proxy {
            Proxy::FromEnv => Rules::from_env(),
            Proxy::None => None,
            Proxy::Rules { http, https, no } => Rules::new(http.clone(), https.clone(), no),
        };
        Ok(HttpClient {
            agents: Arc::new(Agents {
                clients,
                assigned: Mutex::new((HashMap::new(), 0)),
            }),
            rules,
            user_agent,
        })
    }

    /// Prepares one hop; the returned future does the I/O, within the hop's timeout.
    pub(crate) fn hop(&self, fetch: Fetch) -> impl Future<Output = HopResult> + Send + 'static {
        let prepared = self.prepare(fetch);
        let client = match &prepared {
            Ok((request, _, proxy)) => self.agents.pick(request.uri(), proxy.as_ref()),
            Err(_) => &self.agents.clients[0],
        }
        .clone();
        async move {
            let (request, limits, proxy) = match prepared {
                Ok(p) => p,
                Err(e) => return HopResult::Failed(e),
            };
            let timeout = limits.timeout;
            let started = Instant::now();
            let https_target = match (&proxy, request.uri().scheme_str()) {
                (Some(_), Some("https")) => request.uri().authority().map(|a| {
                    let port = a.port_u16().unwrap_or(443);
                    format!("{}:{port}", a.host())
                }),
                _ => None,
            };
            // libcurl enforces the hop's timeout (set on the request), from connecting to
            // the last body byte, on its own agent thread: no timer per hop here.
            match send(client, request, limits).await {
                Ok(response) => HopResult::Response(response),
                Err(mut e) => {
                    if let (Some(target), Some(origin)) = (&proxy, &https_target) {
                        // libcurl reports a refused CONNECT as a receive error, like a
                        // reset inside the tunnel; asking the proxy again tells them apart.
                        if e.kind == TransportErrorKind::Reset {
                            let left = timeout.saturating_sub(started.elapsed());
                            if let Some(refusal) = connect_refusal(target, origin, left).await {
                                e = TransportError::new(
                                    TransportErrorKind::Proxy,
                                    format!("the proxy refused CONNECT to {origin}: {refusal}"),
                                );
                            }
                        }
                    }
                    if let Some(target) = &proxy {
                        e.message = target.scrub(e.message);
                    }
                    HopResult::Failed(e)
                }
            }
        }
    }

    #[allow(clippy::type_complexity)]
    fn prepare(
        &self,
        fetch: Fetch,
    ) -> Result<(http::Request<AsyncBody>, Limits, Option<Target>), TransportError> {
        let mut url = fetch.url.clone();
        url.set_fragment(None);
        let uri: Uri = url.as_str().parse().map_err(|e| {
            TransportError::new(
                TransportErrorKind::Other,
                format!("{} cannot be sent over HTTP: {e}", fetch.url),
            )
        })?;
        let proxy = match &fetch.proxy {
            Some(u) => Some(Target::from_url(u)?),
            None => self
                .rules
                .as_ref()
                .and_then(|r| r.proxy_for(&fetch.url))
                .map(Target::from_url)
                .transpose()?,
        };
        let headers = headers_to_send(fetch.headers, &self.user_agent);
        let body = if fetch.body.is_empty() {
            AsyncBody::empty()
        } else {
            AsyncBody::from(fetch.body.to_vec())
        };
        let mut builder = http::Request::builder()
            .method(fetch.method)
            .uri(uri)
            .timeout(fetch.timeout);
        builder = match &proxy {
            // curl sends plain HTTP to the proxy in absolute form and HTTPS through CONNECT.
            Some(target) => {
                let proxy_uri: Uri =
                    format!("http://{}", target.authority)
                        .parse()
                        .map_err(|_| {
                            TransportError::new(
                                TransportErrorKind::Proxy,
                                format!("unusable proxy {}", target.redacted),
                            )
                        })?;
                let b = builder.proxy(Some(proxy_uri));
                match &target.credentials {
                    Some((user, pass)) => b
                        .proxy_authentication(Authentication::basic())
                        .proxy_credentials(Credentials::new(user.clone(), pass.clone())),
                    None => b,
                }
            }
            // The client's own setting: no proxy (one request extension less to merge).
            None => builder,
        };
        let mut request = builder.body(body).map_err(|e| {
            TransportError::new(
                TransportErrorKind::Other,
                format!("{} cannot be sent over HTTP: {e}", fetch.url),
            )
        })?;
        *request.headers_mut() = headers;
        let limits = Limits {
            timeout: fetch.timeout,
            max_body_size: fetch.max_body_size,
            max_header_size: fetch.max_header_size,
            proxied: proxy.is_some(),
        };
        Ok((request, limits, proxy))
    }
}

#[derive(Clone, Copy)]
struct Limits {
    timeout: Duration,
    max_body_size: u64,
    max_header_size: usize,
    proxied: bool,
}

async fn send(
    client: isahc::HttpClient,
    request: http::Request<AsyncBody>,
    limits: Limits,
) -> Result<HopResponse, TransportError> {
    let response = client
        .send_async(request)
        .await
        .map_err(|e| classify(&e, limits.proxied))?;
    let (parts, mut incoming) = response.into_parts();
    let head = head_size(&parts.headers);
    if head > limits.max_header_size {
        return Err(TransportError::new(
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
    // The bytes announced on the wire, if any: a small body gets a buffer of its size
    // (zeroing a large one for every small response costs more than the read).
    // A transfer coding overrides it (curl hands over the decoded chunks).
    let expected: Option<u64> = headers
        .get(header::CONTENT_LENGTH)
        .filter(|_| !headers.contains_key(header::TRANSFER_ENCODING))
        .and_then(|v| v.to_str().ok()?.parse().ok());
    let first = expected.map_or(FIRST_CHUNK, |n| {
        usize::try_from(n)
            .unwrap_or(usize::MAX)
            .clamp(MIN_CHUNK, FIRST_CHUNK)
    });
    let mut chunk = vec![0u8; first];
    let mut received: u64 = 0;
    // Once the announced bytes are in, the body is complete: curl has handed them all over
    // and returns the connection to its cache on its own, so the end of the transfer (one
    // more wakeup from the agent thread) is not awaited.
    while !body.is_full() && expected != Some(received) {
        match incoming.read(&mut chunk).await {
            Ok(0) => break,
            Ok(n) => {
                received += n as u64;
                body.feed(&chunk[..n])
                    .map_err(|e| TransportError::new(TransportErrorKind::Decode, e.0))?;
                // A full buffer with more to come: read the rest in larger chunks.
                if n == chunk.len() && n < MAX_CHUNK && expected.is_none_or(|e| received < e) {
                    let rest = expected.map_or(MAX_CHUNK as u64, |e| e - received);
                    let size = usize::try_from(rest).unwrap_or(MAX_CHUNK).min(MAX_CHUNK);
                    chunk.resize(size.max(n), 0);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(classify(&isahc::Error::from(e), false)),
        }
    }
    // Dropping an unfinished body aborts that transfer and closes its connection.
    drop(incoming);
    let (body, truncated) = body
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

/// Asks the proxy for a tunnel to `origin` (`host:port`) and returns its status line when
/// it refuses; `None` when it accepts or cannot be asked within `timeout`.
async fn connect_refusal(target: &Target, origin: &str, timeout: Duration) -> Option<String> {
    let ask = async {
        let authority = target.authority.clone();
        let addrs: Vec<std::net::SocketAddr> =
            blocking::unblock(move || authority.to_socket_addrs().map(Iterator::collect))
                .await
                .ok()?;
        let mut stream = async_io::Async::<TcpStream>::connect(*addrs.first()?)
            .await
            .ok()?;
        let mut head = format!("CONNECT {origin} HTTP/1.1\r\nHost: {origin}\r\n");
        if let Some((user, pass)) = &target.credentials {
            let auth = crate::proxy::base64(format!("{user}:{pass}").as_bytes());
            head.push_str(&format!("Proxy-Authorization: Basic {auth}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).await.ok()?;
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while !line.ends_with(b"\r\n") && line.len() < 1024 {
            if stream.read(&mut byte).await.ok()? == 0 {
                break;
            }
            line.push(byte[0]);
        }
        let line = String::from_utf8_lossy(&line).trim().to_string();
        let code: u16 = line.split_whitespace().nth(1)?.parse().ok()?;
        (!(200..300).contains(&code)).then_some(line)
    };
    let give_up = async {
        async_io::Timer::after(timeout.min(Duration::from_secs(5))).await;
        None
    };
    future::or(ask, give_up).await
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

/// Sorts an isahc failure into a [`TransportErrorKind`], with its causes in the message.
/// Through a proxy, failing to connect (or to resolve) is the proxy's failure.
fn classify(error: &isahc::Error, proxied: bool) -> TransportError {
    use TransportErrorKind as K;
    let mut messages = vec![error.to_string()];
    let mut source: Option<&(dyn StdError + 'static)> = error.source();
    while let Some(e) = source {
        let text = e.to_string();
        if !messages.iter().any(|m| m.contains(&text)) {
            messages.push(text);
        }
        source = e.source();
    }
    let text = messages.join(": ");
    let lower = text.to_ascii_lowercase();
    let kind = match error.kind() {
        _ if lower.contains("connect tunnel failed") || lower.contains("proxy connect aborted") => {
            K::Proxy
        }
        ErrorKind::NameResolution => K::Dns,
        ErrorKind::ConnectionFailed if lower.contains("ssl") || lower.contains("tls") => K::Tls,
        ErrorKind::ConnectionFailed => K::Connect,
        ErrorKind::Timeout => K::Timeout,
        ErrorKind::BadServerCertificate
        | ErrorKind::BadClientCertificate
        | ErrorKind::TlsEngine
        | ErrorKind::InvalidTlsConfiguration => K::Tls,
        ErrorKind::ProtocolViolation => K::Protocol,
        ErrorKind::InvalidContentEncoding => K::Decode,
        _ if lower.contains("too large") || lower.contains("header") => K::Protocol,
        ErrorKind::Io => K::Reset,
        _ => K::Other,
    };
    let kind = match kind {
        K::Connect | K::Dns if proxied => K::Proxy,
        k => k,
    };
    TransportError::new(kind, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_origin_keeps_its_agent_and_origins_are_dealt_in_turn() {
        let options = ClientOptions {
            clients: 2,
            proxy: Proxy::None,
            ..Default::default()
        };
        let client = HttpClient::new(&options, 8, HeaderValue::from_static("t")).unwrap();
        let agents = &client.agents;
        assert_eq!(agents.clients.len(), 2);
        let index = |url: &str| {
            let picked = agents.pick(&url.parse().unwrap(), None);
            agents
                .clients
                .iter()
                .position(|c| std::ptr::eq(c, picked))
                .unwrap()
        };
        let a = index("http://a.example/1");
        let b = index("http://b.example/1");
        assert_ne!(a, b);
        assert_eq!(index("http://a.example/2"), a);
        assert_eq!(index("http://b.example:80/2"), b);
        // Another scheme (or port) is another origin: the third, dealt to the first agent.
        assert_eq!(index("https://a.example/"), a);
        assert_eq!(index("http://a.example:8080/"), b);
        // Never more agents than hops at once.
        let one = HttpClient::new(&options, 1, HeaderValue::from_static("t")).unwrap();
        assert_eq!(one.agents.clients.len(), 1);
    }

    #[test]
    fn head_size_counts_names_and_values() {
        let mut h = HeaderMap::new();
        h.insert("x-a", HeaderValue::from_static("bb"));
        assert_eq!(head_size(&h), 17 + 3 + 2 + 4 + 2);
    }
}
