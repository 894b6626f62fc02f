//! `hyper-floor URLS OUTPUT [--concurrency N] [--threads N]`: what hyper does by itself over a
//! URL list, the floor under `downpour fetch` on tokio (which sends through the same hyper).
//!
//! Up to N keep-alive HTTP/1 connections made with hyper's `client::conn::http1`, one per host
//! at a time: each sends its host's URLs one after another and reads every body in full. The
//! connections are shared out over `--threads` current-thread runtimes, as `downpour fetch
//! --threads` shares out its fetchers. Nothing else: no pool, no scheduler, no retries, no
//! digest; one short line per URL (line, status, body size, or the error) is written once
//! all are done, so that the runner can count what came back.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::time::Instant;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::Uri;
use hyper_util::rt::TokioIo;

/// One host's URLs, in list order, with their line numbers.
struct Host {
    authority: String,
    urls: Vec<(u64, Uri)>,
}

/// What came back for one line.
enum Outcome {
    Response { status: u16, body_size: usize },
    Failed(String),
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
        panic!("usage: hyper-floor URLS OUTPUT [--concurrency N] [--threads N]")
    });
    let (hosts, mut results) = read_hosts(&input);
    let (concurrency, threads) = (concurrency.max(1), threads.max(1));

    // Connection k serves hosts k, k + N, ...; thread t runs connections t, t + threads, ...
    let mut per_thread: Vec<Vec<Vec<Host>>> = (0..threads).map(|_| Vec::new()).collect();
    let mut slots: Vec<Vec<Host>> = (0..concurrency).map(|_| Vec::new()).collect();
    for (i, host) in hosts.into_iter().enumerate() {
        slots[i % concurrency].push(host);
    }
    for (k, slot) in slots.into_iter().enumerate() {
        if !slot.is_empty() {
            per_thread[k % threads].push(slot);
        }
    }

    let started = Instant::now();
    let workers: Vec<_> = per_thread
        .into_iter()
        .map(|slots| {
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                runtime.block_on(async move {
                    let tasks: Vec<_> = slots.into_iter().map(|s| tokio::spawn(serve(s))).collect();
                    let mut done = Vec::new();
                    for task in tasks {
                        done.extend(task.await.expect("a connection's task panicked"));
                    }
                    done
                })
            })
        })
        .collect();
    for worker in workers {
        for (line, outcome) in worker.join().expect("a thread panicked") {
            results[(line - 1) as usize] = Some(outcome);
        }
    }
    let took = started.elapsed().as_secs_f64();

    let mut out = BufWriter::new(File::create(&output).expect("output file"));
    let (mut ok, mut failed) = (0u64, 0u64);
    for (i, outcome) in results.into_iter().enumerate() {
        let line = i + 1;
        match outcome {
            Some(Outcome::Response { status, body_size }) => {
                ok += 1;
                writeln!(
                    out,
                    r#"{{"line":{line},"status":{status},"body_size":{body_size}}}"#
                )
            }
            Some(Outcome::Failed(error)) => {
                failed += 1;
                writeln!(out, r#"{{"line":{line},"error":{error:?}}}"#)
            }
            // A line that is not a URL.
            None => continue,
        }
        .expect("output");
    }
    out.flush().expect("output");
    eprintln!(
        "hyper-floor: {ok} fetched, {failed} failed, {took:.1}s, {:.1}/s",
        (ok + failed) as f64 / took
    );
}

/// The list's URLs grouped by host (in order of first appearance), and a result slot per
/// line; a line that does not parse as an `http` URL with a host is left out.
fn read_hosts(path: &str) -> (Vec<Host>, Vec<Option<Outcome>>) {
    let mut hosts: Vec<Host> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut lines = 0u64;
    for line in BufReader::new(File::open(path).expect("URL file")).lines() {
        let line = line.expect("URL file");
        lines += 1;
        let Ok(uri) = line.trim().parse::<Uri>() else {
            continue;
        };
        let Some(authority) = uri.authority().map(|a| a.to_string()) else {
            continue;
        };
        if uri.scheme_str() != Some("http") {
            continue;
        }
        let i = *index.entry(authority.clone()).or_insert_with(|| {
            hosts.push(Host {
                authority,
                urls: Vec::new(),
            });
            hosts.len() - 1
        });
        hosts[i].urls.push((lines, uri));
    }
    let results = (0..lines).map(|_| None).collect();
    (hosts, results)
}

/// Fetches the URLs of each host in turn over one connection per host; a host whose
/// connection fails has the error for each of its URLs left.
async fn serve(hosts: Vec<Host>) -> Vec<(u64, Outcome)> {
    let mut done = Vec::new();
    for host in hosts {
        let mut urls = host.urls.into_iter();
        if let Err(error) = fetch_host(&host.authority, &mut urls, &mut done).await {
            done.extend(urls.map(|(line, _)| (line, Outcome::Failed(error.clone()))));
        }
    }
    done
}

async fn fetch_host(
    authority: &str,
    urls: &mut impl Iterator<Item = (u64, Uri)>,
    done: &mut Vec<(u64, Outcome)>,
) -> Result<(), String> {
    let tcp = tokio::net::TcpStream::connect(authority)
        .await
        .map_err(|e| format!("cannot connect to {authority}: {e}"))?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    for (line, uri) in urls.by_ref() {
        // Origin form on the wire, as a client that is not talking to a proxy sends it.
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let request = hyper::Request::get(path)
            .header(hyper::header::HOST, authority)
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        sender.ready().await.map_err(|e| e.to_string())?;
        let outcome = match sender.send_request(request).await {
            Ok(response) => {
                let status = response.status().as_u16();
                match response.into_body().collect().await {
                    Ok(body) => Outcome::Response {
                        status,
                        body_size: body.to_bytes().len(),
                    },
                    Err(e) => Outcome::Failed(e.to_string()),
                }
            }
            Err(e) => Outcome::Failed(e.to_string()),
        };
        let broken = matches!(outcome, Outcome::Failed(_));
        done.push((line, outcome));
        if broken {
            return Err("the connection broke".to_string());
        }
    }
    Ok(())
}
