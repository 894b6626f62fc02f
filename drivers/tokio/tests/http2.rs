//! HTTP/2 over TLS (ALPN): requests to one origin share one connection, concurrently, and
//! the responses say HTTP/2. The server is hyper's, with rustls offering `h2` only.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use downpour_conformance::{test_config, tls_config, Probe};
use downpour_tokio::{ClientOptions, Config, Fetcher, Fifo, Proxy};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};

/// Starts the server on 127.0.0.1; returns its address, its certificate and the count of
/// connections it accepted.
async fn h2_server() -> (SocketAddr, Vec<u8>, Arc<AtomicUsize>) {
    let ip = Ipv4Addr::LOCALHOST;
    let (mut config, der) = tls_config(ip);
    config.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let count = connections.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            count.fetch_add(1, Ordering::SeqCst);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = service_fn(
                    |request: hyper::Request<hyper::body::Incoming>| async move {
                        let text = format!("{:?} {}", request.version(), request.uri());
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            Bytes::from(text),
                        )))
                    },
                );
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (addr, der, connections)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_to_one_origin_share_one_http2_connection() {
    let (addr, certificate, connections) = h2_server().await;
    let options = ClientOptions {
        proxy: Proxy::None,
        extra_root_certificates: vec![certificate],
        ..Default::default()
    };
    let config = Config {
        concurrency: 8,
        ..test_config()
    };
    let mut fetcher = Fetcher::with_options(config, Fifo::new(), options).unwrap();
    let finished = Arc::new(Mutex::new(Vec::new()));
    let sink = finished.clone();
    fetcher.on_finished(move |p: Probe| sink.lock().unwrap().push(p));
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
