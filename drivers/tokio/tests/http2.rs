//! HTTP/2 over TLS (ALPN): requests to one origin share one connection, concurrently, and
//! the responses say HTTP/2; a stream the server refuses, or leaves out of its `GOAWAY`, goes
//! again at once. The servers are hyper's and h2's (and one written frame by frame), with
//! rustls offering `h2` only. With HTTP/2 not offered, HTTPS goes over HTTP/1.1 connections
//! kept alive (the driver's own), to a server offering `http/1.1`.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use downpour_conformance::{test_config, tls_config, Probe, ProbeResult};
use downpour_tokio::{ClientOptions, Config, Fetcher, Fifo, Proxy};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;

/// Listens on 127.0.0.1 with TLS offering `h2` only, and runs `serve` on each connection
/// (counted); returns the address, the certificate and the count of connections.
async fn h2_listener<F, S>(serve: S) -> (SocketAddr, Vec<u8>, Arc<AtomicUsize>)
where
    S: Fn(TlsStream<TcpStream>) -> F + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    tls_listener(b"h2", serve).await
}

/// Listens on 127.0.0.1 with TLS offering `alpn` only, and runs `serve` on each connection
/// (counted); returns the address, the certificate and the count of connections.
async fn tls_listener<F, S>(alpn: &[u8], serve: S) -> (SocketAddr, Vec<u8>, Arc<AtomicUsize>)
where
    S: Fn(TlsStream<TcpStream>) -> F + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let ip = Ipv4Addr::LOCALHOST;
    let (mut config, der) = tls_config(ip);
    config.alpn_protocols = vec![alpn.to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let count = connections.clone();
    let serve = Arc::new(serve);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            count.fetch_add(1, Ordering::SeqCst);
            let (acceptor, serve) = (acceptor.clone(), serve.clone());
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(tcp).await {
                    serve(tls).await;
                }
            });
        }
    });
    (addr, der, connections)
}

/// hyper's HTTP/2 server, answering with the version and the URI.
async fn h2_server() -> (SocketAddr, Vec<u8>, Arc<AtomicUsize>) {
    h2_listener(|tls| async move {
        let service = service_fn(
            |request: hyper::Request<hyper::body::Incoming>| async move {
                let text = format!("{:?} {}", request.version(), request.uri());
                Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from(
                    text,
                ))))
            },
        );
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(tls), service)
            .await;
    })
    .await
}

/// A FIFO fetcher that trusts `certificate`, and the requests it finishes.
fn fetcher_trusting(
    certificate: Vec<u8>,
    config: Config,
) -> (Fetcher<Probe>, Arc<Mutex<Vec<Probe>>>) {
    fetcher_with(certificate, config, true)
}

/// The same, offering HTTP/2 or not.
fn fetcher_with(
    certificate: Vec<u8>,
    config: Config,
    http2: bool,
) -> (Fetcher<Probe>, Arc<Mutex<Vec<Probe>>>) {
    let options = ClientOptions {
        proxy: Proxy::None,
        extra_root_certificates: vec![certificate],
        http2,
        ..Default::default()
    };
    let mut fetcher = Fetcher::with_options(config, Fifo::new(), options).unwrap();
    let finished = Arc::new(Mutex::new(Vec::new()));
    let sink = finished.clone();
    fetcher.on_finished(move |p: Probe| sink.lock().unwrap().push(p));
    (fetcher, finished)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_to_one_origin_share_one_http2_connection() {
    let (addr, certificate, connections) = h2_server().await;
    let config = Config {
        concurrency: 8,
        ..test_config()
    };
    let (mut fetcher, finished) = fetcher_trusting(certificate, config);
    // A first request opens the connection; the rest go over it, up to eight at once.
    fetcher
        .enqueue(Probe::new(&format!("https://{addr}/first"), 0))
        .unwrap();
    fetcher.run().await;
    for i in 1..=40 {
        fetcher
            .enqueue(Probe::new(&format!("https://{addr}/page/{i}"), i))
            .unwrap();
    }
    fetcher.run().await;

    let finished = finished.lock().unwrap();
    assert_eq!(finished.len(), 41);
    for p in finished.iter() {
        let r = p.result();
        assert!(r.ok, "{}: {r:?}", p.url);
        let body = String::from_utf8_lossy(&r.body);
        let expected = format!("HTTP/2.0 https://{addr}{}", p.url.path());
        assert_eq!(body, expected);
    }
    assert_eq!(
        connections.load(Ordering::SeqCst),
        1,
        "one connection for all"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_http2_https_requests_share_one_http1_connection() {
    let (addr, certificate, connections) = tls_listener(b"http/1.1", |tls| async move {
        let service = service_fn(
            |request: hyper::Request<hyper::body::Incoming>| async move {
                let host = request
                    .headers()
                    .get(http::header::HOST)
                    .map(|h| h.to_str().unwrap_or("?").to_string());
                let text = format!("{:?} {} {host:?}", request.version(), request.uri());
                Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from(
                    text,
                ))))
            },
        );
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(tls), service)
            .await;
    })
    .await;
    let config = Config {
        concurrency: 1,
        ..test_config()
    };
    let (mut fetcher, finished) = fetcher_with(certificate, config, false);
    for i in 0..10 {
        fetcher
            .enqueue(Probe::new(&format!("https://{addr}/page/{i}?q"), i))
            .unwrap();
    }
    fetcher.run().await;

    let finished = finished.lock().unwrap();
    assert_eq!(finished.len(), 10);
    for p in finished.iter() {
        let r = p.result();
        assert!(r.ok, "{}: {r:?}", p.url);
        let body = String::from_utf8_lossy(&r.body);
        let expected = format!("HTTP/1.1 {}?q Some({:?})", p.url.path(), addr.to_string());
        assert_eq!(body, expected);
    }
    assert_eq!(
        connections.load(Ordering::SeqCst),
        1,
        "one connection, kept alive, for all"
    );
}

/// Answers HTTP/2 requests on `tls` with their method and path (h2's server), counting them
/// in `streams`; refuses those counted below `refusals` (`RST_STREAM` with `REFUSED_STREAM`:
/// not processed, RFC 9113 8.7).
async fn answer_h2(tls: TlsStream<TcpStream>, streams: Arc<AtomicUsize>, refusals: usize) {
    let Ok(mut connection) = h2::server::handshake(tls).await else {
        return;
    };
    while let Some(Ok((request, mut respond))) = connection.accept().await {
        if streams.fetch_add(1, Ordering::SeqCst) < refusals {
            respond.send_reset(h2::Reason::REFUSED_STREAM);
            continue;
        }
        let text = format!("answered {} {}", request.method(), request.uri().path());
        let Ok(mut body) = respond.send_response(hyper::Response::new(()), false) else {
            continue;
        };
        let _ = body.send_data(Bytes::from(text), true);
    }
}

/// An HTTP/2 server that refuses the first `refusals` streams and answers the others;
/// returns its address, certificate and the count of streams it saw.
async fn refusing_h2_server(refusals: usize) -> (SocketAddr, Vec<u8>, Arc<AtomicUsize>) {
    let streams = Arc::new(AtomicUsize::new(0));
    let count = streams.clone();
    let (addr, der, _) = h2_listener(move |tls| answer_h2(tls, count.clone(), refusals)).await;
    (addr, der, streams)
}

/// An HTTP/2 server whose first connection sends `GOAWAY` with `last_stream_id` as the first
/// request's `HEADERS` arrive, then closes; later connections answer. Returns its address,
/// certificate and the count of requests it saw (the first one included).
async fn going_away_h2_server(last_stream_id: u32) -> (SocketAddr, Vec<u8>, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let streams = Arc::new(AtomicUsize::new(0));
    let count = streams.clone();
    let first = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let (addr, der, _) = h2_listener(move |mut tls| {
        let (count, first) = (count.clone(), first.clone());
        async move {
            if !first.swap(false, Ordering::SeqCst) {
                return answer_h2(tls, count, 0).await;
            }
            // By hand, frame by frame (RFC 9113, 4.1): the client's preface, then frames
            // until a HEADERS (type 1); the server's SETTINGS goes first.
            let mut preface = [0; 24];
            if tls.read_exact(&mut preface).await.is_err() {
                return;
            }
            let empty_settings = [0, 0, 0, 4, 0, 0, 0, 0, 0];
            if tls.write_all(&empty_settings).await.is_err() {
                return;
            }
            loop {
                let mut head = [0; 9];
                if tls.read_exact(&mut head).await.is_err() {
                    return;
                }
                let length = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
                let mut payload = vec![0; length];
                if tls.read_exact(&mut payload).await.is_err() {
                    return;
                }
                if head[3] == 1 {
                    break;
                }
            }
            count.fetch_add(1, Ordering::SeqCst);
            let mut go_away = vec![0, 0, 8, 7, 0, 0, 0, 0, 0];
            go_away.extend_from_slice(&last_stream_id.to_be_bytes());
            go_away.extend_from_slice(&0u32.to_be_bytes()); // NO_ERROR
            let _ = tls.write_all(&go_away).await;
            let _ = tls.flush().await;
            let _ = tls.shutdown().await;
        }
    })
    .await;
    (addr, der, streams)
}

/// Fetches `url` with `method` and retries off, trusting `certificate`: the outcome, which
/// counts no retry (a request sent again at once is none).
async fn fetch_once(certificate: Vec<u8>, url: &str, method: &http::Method) -> ProbeResult {
    let config = Config {
        max_retries: 0,
        ..test_config()
    };
    let (mut fetcher, finished) = fetcher_trusting(certificate, config);
    let mut probe = Probe::new(url, 0);
    probe.method = Some(method.clone());
    fetcher.enqueue(probe).unwrap();
    let stats = fetcher.run().await;
    let result = finished.lock().unwrap()[0].result().clone();
    assert_eq!((result.retries, stats.retries), (0, 0), "{result:?}");
    result
}

/// A stream the server refused was never processed: it goes again at once (no retry counted,
/// no back-off), even with retries off and even a POST; a server that keeps refusing fails
/// it, with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_http2_stream_is_sent_again_at_once() {
    for (method, refusals, ok) in [
        (http::Method::GET, 1, true),
        (http::Method::POST, 1, true),
        (
            http::Method::GET,
            2 * downpour_common::MAX_RESENDS as usize,
            false,
        ),
    ] {
        let (addr, certificate, streams) = refusing_h2_server(refusals).await;
        let result = fetch_once(certificate, &format!("https://{addr}/refused"), &method).await;
        assert_eq!(result.ok, ok, "{method} {refusals} refusals: {result:?}");
        if ok {
            assert_eq!(
                String::from_utf8_lossy(&result.body),
                format!("answered {method} /refused")
            );
            assert_eq!(
                streams.load(Ordering::SeqCst),
                2,
                "refused once, then answered"
            );
        } else {
            assert!(result.error.contains("refused"), "{result:?}");
            let sent = streams.load(Ordering::SeqCst);
            assert_eq!(
                sent,
                1 + downpour_common::MAX_RESENDS as usize,
                "sent {sent} times"
            );
        }
    }
}

/// A `GOAWAY` says which streams the server did not process: those above its last stream id
/// go again at once on a new connection (no retry counted, even a POST, RFC 9113 6.8); one
/// at or below it was seen by the server, and fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_above_a_goaways_last_id_is_sent_again_at_once() {
    for (last_stream_id, ok) in [(0, true), (1, false)] {
        let (addr, certificate, streams) = going_away_h2_server(last_stream_id).await;
        let url = format!("https://{addr}/away");
        let result = fetch_once(certificate, &url, &http::Method::POST).await;
        assert_eq!(result.ok, ok, "last stream id {last_stream_id}: {result:?}");
        if ok {
            assert_eq!(String::from_utf8_lossy(&result.body), "answered POST /away");
            assert_eq!(streams.load(Ordering::SeqCst), 2, "sent twice");
        } else {
            assert_eq!(streams.load(Ordering::SeqCst), 1, "sent once");
        }
    }
}
