//! `reqwest-loop URLS OUTPUT [--concurrency N] [--threads N]`: fetches every URL of a file
//! (one per line) with one `reqwest::Client` and `buffer_unordered(N)`, reads every body in
//! full and writes one JSON line per URL (line, url, status, content-type, body size and
//! SHA-256, or the error): the record `downpour fetch` writes, minus its timings. The runtime is tokio's current-thread
//! one by default, as in `downpour fetch`; `--threads N` (N > 1) uses the multi-thread one.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::time::Instant;

use futures::StreamExt;
use sha2::{Digest, Sha256};

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut positional = Vec::new();
    let mut concurrency = 64usize;
    let mut threads = 1usize;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--concurrency" => concurrency = args.next().expect("N").parse().expect("N"),
            "--threads" => threads = args.next().expect("N").parse().expect("N"),
            _ => positional.push(a),
        }
    }
    let [input, output] = <[String; 2]>::try_from(positional).unwrap_or_else(|_| {
        panic!("usage: reqwest-loop URLS OUTPUT [--concurrency N] [--threads N]")
    });
    let urls: Vec<String> = BufReader::new(File::open(&input).expect("URL file"))
        .lines()
        .map(|l| l.expect("URL file"))
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .collect();
    let mut out = BufWriter::new(File::create(&output).expect("output file"));

    let runtime = if threads > 1 {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    }
    .expect("runtime");

    let started = Instant::now();
    let (ok, failed) = runtime.block_on(async {
        let client = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client");
        let mut results = futures::stream::iter(urls.iter().enumerate())
            .map(|(i, url)| {
                let client = client.clone();
                async move {
                    let result = match client.get(url.as_str()).send().await {
                        Ok(response) => {
                            let status = response.status().as_u16();
                            let content_type = response
                                .headers()
                                .get(reqwest::header::CONTENT_TYPE)
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_owned);
                            response.bytes().await.map(|body| {
                                let sha256 = hex(&Sha256::digest(&body));
                                (status, content_type, body.len(), sha256)
                            })
                        }
                        Err(e) => Err(e),
                    };
                    (i, url, result)
                }
            })
            .buffer_unordered(concurrency);
        let (mut ok, mut failed) = (0u64, 0u64);
        while let Some((i, url, result)) = results.next().await {
            let line = match result {
                Ok((status, content_type, size, sha256)) => {
                    ok += 1;
                    serde_json::json!({
                        "line": i + 1,
                        "url": url,
                        "status": status,
                        "content_type": content_type,
                        "body_size": size,
                        "sha256": sha256,
                    })
                }
                Err(e) => {
                    failed += 1;
                    serde_json::json!({"line": i + 1, "url": url, "error": e.to_string()})
                }
            };
            serde_json::to_writer(&mut out, &line).expect("output");
            out.write_all(b"\n").expect("output");
        }
        (ok, failed)
    });
    out.flush().expect("output");
    let took = started.elapsed().as_secs_f64();
    eprintln!(
        "reqwest-loop: {ok} fetched, {failed} failed, {took:.1}s, {:.1}/s",
        (ok + failed) as f64 / took
    );
}
