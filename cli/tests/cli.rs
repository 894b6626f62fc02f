//! The `downpour` binary against loopback servers.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use downpour_common::store::partition_of;
use downpour_conformance::redis::RedisServer;
use downpour_conformance::{host_ip, violations, LogEntry, Robots, Servers, Tinyproxy};
use serde_json::Value;

/// A fresh directory `name` for this test process. The directories of earlier test
/// processes that are gone are removed first, so that runs do not pile them up in the
/// temporary directory (a failed test's files stay there until the next run).
fn scratch(name: &str) -> PathBuf {
    static SWEEP: std::sync::Once = std::sync::Once::new();
    SWEEP.call_once(remove_scratch_of_ended_runs);
    let dir = std::env::temp_dir().join(format!("downpour-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create a scratch directory");
    dir
}

fn remove_scratch_of_ended_runs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("downpour-cli-"))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        // Only where a process's liveness can be seen: elsewhere nothing is removed.
        let proc = Path::new("/proc");
        if pid != std::process::id() && proc.is_dir() && !proc.join(pid.to_string()).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// `program`, with stdin closed and no proxy from the environment.
fn command(program: &str) -> Command {
    let mut command = Command::new(program);
    command
        .stdin(Stdio::null())
        .env_remove("http_proxy")
        .env_remove("HTTP_PROXY")
        .env_remove("all_proxy")
        .env_remove("ALL_PROXY");
    command
}

fn downpour(args: &[&str]) -> Output {
    command(env!("CARGO_BIN_EXE_downpour"))
        .args(args)
        .output()
        .expect("run downpour")
}

/// Waits until `ready` holds, polling; fails the test after 20 s.
fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ready() {
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Sends SIGINT, as Ctrl-C does.
fn interrupt(child: &Child) {
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
}

fn records(stdout: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect()
}

fn by_line(records: &[Value], line: u64) -> &Value {
    let found: Vec<&Value> = records.iter().filter(|r| r["line"] == line).collect();
    assert_eq!(found.len(), 1, "one record for line {line}: {records:#?}");
    found[0]
}

#[test]
fn fetches_a_list_with_one_line_per_input_line() {
    let servers = Servers::start(2);
    let dir = scratch("list");
    let list = dir.join("urls.txt");
    let text = [
        "# a comment".to_string(),
        servers.url(0, "/a"),
        String::new(),
        servers.url(1, "/b"),
        servers.url(0, "/redirect?to=/c"),
        servers.url(1, "/status/404"),
        "not a url".to_string(),
        "ftp://example.com/file".to_string(),
        servers.url(0, "/status/500"),
    ]
    .join("\n");
    std::fs::write(&list, text).unwrap();
    let out = downpour(&[
        "fetch",
        list.to_str().unwrap(),
        "--delay",
        "0ms",
        "--allow-all",
        "--retries",
        "0",
        "--header",
        "x-missing",
    ]);
    assert!(out.status.success(), "{out:?}");
    let records = records(&out.stdout);
    assert_eq!(records.len(), 7, "{records:#?}");

    let a = by_line(&records, 2);
    assert_eq!(a["status"], 200);
    assert_eq!(a["final_url"], servers.url(0, "/a"));
    assert_eq!(a["body_size"], 5);
    assert_eq!(a["headers"]["content-length"], "5");
    assert_eq!(a["sha256"].as_str().unwrap().len(), 64);
    assert!(a["timings"]["total_ms"].as_f64().is_some());
    assert!(a["timings"]["start_offset_ms"].as_f64().is_some());
    assert!(a.get("error").is_none());
    assert_eq!(by_line(&records, 4)["status"], 200);

    let redirect = by_line(&records, 5);
    assert_eq!(redirect["status"], 200);
    assert_eq!(redirect["redirects"], 1);
    assert_eq!(redirect["final_url"], servers.url(0, "/c"));

    let missing = by_line(&records, 6);
    assert_eq!(missing["status"], 404);
    assert_eq!(missing["error"]["kind"], "status");
    assert_eq!(missing["error"]["message"], "HTTP 404 Not Found");

    let bad = by_line(&records, 7);
    assert_eq!(bad["error"]["kind"], "invalid_url");
    assert_eq!(bad["input"], "not a url");
    assert!(!bad["error"]["message"].as_str().unwrap().is_empty());
    assert_eq!(by_line(&records, 8)["error"]["kind"], "invalid_url");

    let failed = by_line(&records, 9);
    assert_eq!(failed["status"], 500);
    assert_eq!(failed["retries"], 0);
    assert_eq!(failed["error"]["kind"], "status");

    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("3 fetched, 4 failed"), "{stderr}");
}

#[test]
fn saves_bodies_by_digest_and_writes_to_a_file() {
    let servers = Servers::start(1);
    let dir = scratch("save");
    let list = dir.join("urls.txt");
    let bodies = dir.join("bodies");
    let output = dir.join("out.jsonl");
    let urls = [
        servers.url(0, "/one"),
        servers.url(0, "/two"),
        servers.url(0, "/status/404"),
    ];
    std::fs::write(&list, urls.join("\n")).unwrap();
    let run = || {
        downpour(&[
            "fetch",
            list.to_str().unwrap(),
            "--delay",
            "0ms",
            "--allow-all",
            "--quiet",
            "--save-bodies",
            bodies.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
        ])
    };
    let out = run();
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.is_empty());
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let records = records(&std::fs::read(&output).unwrap());
    assert_eq!(records.len(), 3);
    for line in [1, 2] {
        let r = by_line(&records, line);
        let digest = r["sha256"].as_str().unwrap();
        let saved = std::fs::read(bodies.join(digest)).expect("the body is saved");
        assert_eq!(
            saved,
            format!("ok /{}", ["one", "two"][line as usize - 1]).as_bytes()
        );
    }
    assert!(by_line(&records, 3).get("saved").is_none());
    assert_eq!(std::fs::read_dir(&bodies).unwrap().count(), 2);

    // A body cut short under its digest (a crash, a full disk) is written whole again.
    let one = bodies.join(by_line(&records, 1)["sha256"].as_str().unwrap());
    std::fs::write(&one, "ok").unwrap();
    assert!(run().status.success());
    assert_eq!(std::fs::read(&one).unwrap(), b"ok /one");
    assert_eq!(
        std::fs::read_dir(&bodies).unwrap().count(),
        2,
        "no part left"
    );

    // Part files that a killed run left (over an hour old) are removed; a recent one may be
    // another run's, writing now, and files not named as parts are not ours.
    let digest = "ab".repeat(32);
    let aged = |name: &str, hours: u64| {
        let path = bodies.join(name);
        std::fs::write(&path, "part").unwrap();
        let file = std::fs::File::options().write(true).open(&path).unwrap();
        let then = std::time::SystemTime::now() - Duration::from_secs(hours * 3600);
        file.set_modified(then).unwrap();
        path
    };
    let stale = aged(&format!(".{digest}.4242.7.part"), 2);
    let recent = aged(&format!(".{digest}.4243.0.part"), 0);
    let foreign = aged(".notes.1.2.part", 2);
    let out = run();
    assert!(out.status.success(), "{out:?}");
    assert!(!stale.exists(), "a stale part file was left");
    assert!(recent.exists(), "a recent part file was removed");
    assert!(foreign.exists(), "a file not named as a part was removed");
}

#[test]
fn reads_stdin_and_obeys_robots_by_default() {
    use std::io::Write;
    let servers = Servers::start(1);
    servers.set_robots(
        0,
        downpour_conformance::Robots::Body("User-agent: *\nDisallow: /private\n".into()),
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_downpour"))
        .args(["fetch", "-", "--delay", "0ms", "--no-proxy-env"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let urls = format!(
        "{}\n{}\n",
        servers.url(0, "/public"),
        servers.url(0, "/private")
    );
    child
        .stdin
        .take()
        .unwrap()
        .write_all(urls.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let records = records(&out.stdout);
    assert_eq!(by_line(&records, 1)["status"], 200);
    assert_eq!(by_line(&records, 2)["error"]["kind"], "disallowed");
}

#[test]
fn a_list_longer_than_the_backlog_is_read_as_the_crawl_goes() {
    let servers = Servers::start(2);
    let dir = scratch("backlog");
    let list = dir.join("urls.txt");
    // 24 URLs over two hosts, each answered after 100 ms, with a line that is not a URL and
    // one that is not UTF-8 among them.
    let mut text = Vec::new();
    for i in 0..24 {
        text.extend(servers.url(i % 2, &format!("/delay?ms=100&i={i}")).bytes());
        text.push(b'\n');
        if i == 10 {
            text.extend(b"not a url\n\xff\xfe\n# a comment\n\n");
        }
    }
    std::fs::write(&list, &text).unwrap();
    let out = downpour(&[
        "fetch",
        list.to_str().unwrap(),
        "--policy",
        "fifo",
        "--concurrency",
        "64",
        "--backlog",
        "3",
    ]);
    assert!(out.status.success(), "{out:?}");
    let records = records(&out.stdout);
    assert_eq!(records.len(), 26, "one record per line: {records:#?}");
    assert_eq!(by_line(&records, 12)["error"]["kind"], "invalid_url");
    let not_utf8 = by_line(&records, 13);
    assert_eq!(not_utf8["error"]["kind"], "invalid_url");
    assert!(
        not_utf8["error"]["message"]
            .as_str()
            .unwrap()
            .contains("UTF-8"),
        "{not_utf8}"
    );
    for line in (1..=11).chain(16..=28) {
        assert_eq!(by_line(&records, line)["status"], 200, "line {line}");
    }
    // At most 3 at once at the servers, though 64 were allowed: the fourth URL is read only
    // once a response has come back, which is after the server wrote it.
    let log = servers.hits("/delay");
    assert_eq!(log.len(), 24);
    let at_once = most_at_once(&log, |_| true);
    assert!(at_once <= 3, "{at_once} requests at once: {log:#?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("24 fetched, 2 failed"), "{stderr}");
}

/// A list file of `urls`, one per line, in a scratch directory named `name`.
fn list_file(name: &str, urls: &[String]) -> PathBuf {
    let list = scratch(name).join("urls.txt");
    std::fs::write(&list, urls.join("\n")).unwrap();
    list
}

/// After a run of a list of `lines` `/delay` URLs: it succeeded, every line has one record,
/// each a 200, and the servers saw each URL once. Returns the servers' log of them.
fn fetched_once_each(out: &Output, servers: &Servers, lines: u64) -> Vec<LogEntry> {
    assert!(out.status.success(), "{out:?}");
    let records = records(&out.stdout);
    assert_eq!(
        lines_recorded(&records),
        (1..=lines).map(|l| (l, 1)).collect()
    );
    assert!(records.iter().all(|r| r["status"] == 200), "{records:#?}");
    let log = servers.hits("/delay");
    assert_eq!(log.len() as u64, lines, "{log:#?}");
    log
}

/// The most requests of `log` in progress at one time, over `of` (arrival counts as start).
fn most_at_once(log: &[LogEntry], of: impl Fn(&LogEntry) -> bool) -> usize {
    log.iter()
        .filter(|r| of(r))
        .map(|request| {
            log.iter()
                .filter(|other| {
                    of(other)
                        && other.arrived <= request.arrived
                        && other.ended.is_none_or(|ended| ended > request.arrived)
                })
                .count()
        })
        .max()
        .unwrap_or(0)
}

/// Two of the first four hosts of [`Servers`]: one of thread 0 and one of thread 1 of two.
fn hosts_of_two_threads() -> (usize, usize) {
    let thread_of: Vec<u32> = (0..4)
        .map(|i| partition_of(&host_ip(i).to_string(), 2))
        .collect();
    let of = |t| {
        thread_of
            .iter()
            .position(|&p| p == t)
            .expect("a host of each thread")
    };
    (of(0), of(1))
}

#[test]
fn threads_each_fetch_their_own_hosts_with_their_share_of_the_concurrency() {
    let servers = Servers::start(4);
    let (a, b) = hosts_of_two_threads();
    // Pairs of one host in a row: fifo with a concurrency of 2 on one thread would fetch
    // each pair at once.
    let urls: Vec<String> = (0..16)
        .map(|i| {
            let host = if i / 2 % 2 == 0 { a } else { b };
            servers.url(host, &format!("/delay?ms=100&i={i}"))
        })
        .collect();
    let list = list_file("threads", &urls);
    let out = downpour(&[
        "fetch",
        list.to_str().unwrap(),
        "--policy",
        "fifo",
        "--concurrency",
        "2",
        "--threads",
        "2",
    ]);
    let log = fetched_once_each(&out, &servers, 16);
    // Each thread has a concurrency of 1 and owns one host ...
    for host in [a, b] {
        let at_once = most_at_once(&log, |r| r.host == host_ip(host));
        assert_eq!(at_once, 1, "host {host}: {log:#?}");
    }
    // ... and the two threads fetch at the same time.
    assert_eq!(most_at_once(&log, |_| true), 2, "{log:#?}");
}

#[test]
fn threads_waiting_for_lines_are_fed_and_lose_nothing() {
    let servers = Servers::start(6);
    let urls: Vec<String> = (0..60)
        .map(|i| servers.url(i % 6, &format!("/delay?ms=10&i={i}")))
        .collect();
    let list = list_file("threads-backlog", &urls);
    // Three threads and a backlog of 2: at every moment at least one thread has nothing to
    // do and waits until the feed gives it a line of one of its hosts.
    let out = downpour(&[
        "fetch",
        list.to_str().unwrap(),
        "--delay",
        "30ms",
        "--allow-all",
        "--threads",
        "3",
        "--backlog",
        "2",
    ]);
    let log = fetched_once_each(&out, &servers, 60);
    assert_eq!(
        violations(&log, Duration::from_millis(30)),
        Vec::<String>::new()
    );
    assert!(most_at_once(&log, |_| true) <= 2, "{log:#?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("60 fetched, 0 failed"), "{stderr}");
}

#[test]
fn a_redirect_to_a_host_of_another_thread_is_fetched_by_that_thread() {
    redirected_to_another_thread("threads-redirect", |list| {
        downpour(&[
            "fetch",
            list.to_str().unwrap(),
            "--delay",
            "150ms",
            "--allow-all",
            "--threads",
            "2",
        ])
    });
}

/// Thread 0's host redirects to thread 1's, which has requests of its own: were both threads
/// to fetch host b, it would see two requests at once, or too close together. `run` runs the
/// command on the list, with a delay of 150 ms and two threads.
fn redirected_to_another_thread(name: &str, run: impl FnOnce(&Path) -> Output) {
    let servers = Servers::start(4);
    let (a, b) = hosts_of_two_threads();
    let urls: Vec<String> = (0..4)
        .flat_map(|i| {
            let moved = servers.url(b, &format!("/delay?ms=40&moved={i}"));
            [
                servers.url(a, &format!("/redirect?to={moved}")),
                servers.url(b, &format!("/delay?ms=40&own={i}")),
            ]
        })
        .collect();
    let list = list_file(name, &urls);
    let out = run(&list);
    let log = fetched_once_each(&out, &servers, 8);
    assert_eq!(
        violations(&servers.log(), Duration::from_millis(150)),
        Vec::<String>::new()
    );
    assert_eq!(most_at_once(&log, |r| r.host == host_ip(b)), 1, "{log:#?}");
    let records = records(&out.stdout);
    for line in [1, 3, 5, 7] {
        let record = by_line(&records, line);
        assert_eq!(record["redirects"], 1, "{record}");
        let i = (line - 1) / 2;
        let moved = servers.url(b, &format!("/delay?ms=40&moved={i}"));
        assert_eq!(record["final_url"], moved.as_str(), "{record}");
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("8 fetched, 0 failed"), "{stderr}");
}

#[cfg(unix)]
#[test]
fn reads_a_list_from_a_named_pipe_once() {
    use std::io::Write;
    let servers = Servers::start(1);
    let dir = scratch("fifo");
    let fifo = dir.join("urls");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let urls: String = (0..5)
        .map(|i| servers.url(0, &format!("/p/{i}")) + "\n")
        .collect();
    // As `<(command)` does: a writer that can write the list once.
    let writer = {
        let fifo = fifo.clone();
        std::thread::spawn(move || {
            let mut pipe = std::fs::OpenOptions::new().write(true).open(fifo).unwrap();
            pipe.write_all(urls.as_bytes()).unwrap();
        })
    };
    let out = downpour(&["fetch", fifo.to_str().unwrap(), "--policy", "fifo"]);
    writer.join().unwrap();
    assert!(out.status.success(), "{out:?}");
    let records = records(&out.stdout);
    assert_eq!(records.len(), 5, "every URL of the pipe: {records:#?}");
    for line in 1..=5 {
        assert_eq!(by_line(&records, line)["status"], 200);
    }
}

/// Runs the command under a limit on open files set by the shell (`ulimit` with its flags).
#[cfg(unix)]
fn downpour_with_ulimit(ulimit: &str, args: &[&str]) -> Output {
    command("sh")
        .arg("-c")
        .arg(format!("ulimit {ulimit} && exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_downpour"))
        .args(args)
        .output()
        .expect("run downpour under sh")
}

#[cfg(unix)]
#[test]
fn the_open_file_limit_is_raised_for_the_concurrency_or_a_warning_says_why_not() {
    let servers = Servers::start(1);
    let list = list_file("ulimit", &[servers.url(0, "/a"), servers.url(0, "/b")]);
    let output = list.with_file_name("out.jsonl");
    let args = [
        "fetch",
        list.to_str().unwrap(),
        "--delay",
        "0ms",
        "--allow-all",
        "--concurrency",
        "500",
        "--output",
        output.to_str().unwrap(),
    ];
    // A soft limit below what 500 connections need, under a high hard limit: raised, quietly.
    let out = downpour_with_ulimit("-S -n 128", &args);
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("warning"), "{stderr}");
    let fetched = |output: &Path| {
        let records = records(&std::fs::read(output).unwrap());
        assert_eq!(records.len(), 2, "{records:?}");
        for r in &records {
            assert_eq!(r["status"], 200, "{r}");
        }
    };
    fetched(&output);
    std::fs::remove_file(&output).unwrap();
    // A hard limit below it: the run goes on, and says why connections may fail.
    let out = downpour_with_ulimit("-n 128", &args);
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning: --concurrency 500 needs more than the 128 open files"),
        "{stderr}"
    );
    fetched(&output);
}

#[test]
fn an_unreadable_list_fails_with_one_line() {
    let dir = scratch("missing");
    let missing = dir.join("no-such-file.txt");
    let out = downpour(&["fetch", missing.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("cannot read URL file"), "{stderr}");
    assert!(stderr.contains("no-such-file.txt"), "{stderr}");
}

#[test]
fn bad_option_values_fail_clearly() {
    let dir = scratch("options");
    let list = dir.join("urls.txt");
    std::fs::write(&list, "http://127.0.0.1:9/\n").unwrap();
    let list = list.to_str().unwrap();

    let out = downpour(&["fetch", list, "--concurrency", "0"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("concurrency must be at least 1"),
        "{stderr}"
    );

    let out = downpour(&["fetch", list, "--delay", "soon"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("soon"));

    let out = downpour(&["fetch", list, "--max-body-size", "0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("max_body_size"));

    let out = downpour(&["fetch", list, "--threads", "5", "--concurrency", "4"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--threads 5 is more than --concurrency 4"),
        "{stderr}"
    );

    let out = downpour(&[
        "fetch",
        list,
        "--threads",
        "2",
        "--redis",
        "redis://127.0.0.1:9/",
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--threads 2 is more than --partitions 1"),
        "{stderr}"
    );

    let out = downpour(&["fetch", list, "--threads", "0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--threads"));

    let out = downpour(&["fetch", list, "--no-such-option"]);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
}

#[cfg(unix)]
#[test]
fn ctrl_c_stops_gracefully_and_reports_what_is_left() {
    let servers = Servers::start(4);
    let (a, b) = hosts_of_two_threads();
    let urls: Vec<String> = (0..20)
        .map(|i| servers.url([a, b][i % 2], &format!("/delay?ms=300&i={i}")))
        .collect();
    let list = list_file("interrupt", &urls);
    let child = Command::new(env!("CARGO_BIN_EXE_downpour"))
        .args([
            "fetch",
            list.to_str().unwrap(),
            "--delay",
            "0ms",
            "--allow-all",
            // Most lines are still unread at the stop: they get their records too.
            "--backlog",
            "2",
            // Each thread is fed the other's lines too, up to the stop.
            "--threads",
            "2",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("two requests at the server", || {
        servers.hits("/delay").len() >= 2
    });
    interrupt(&child);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{out:?}");
    let records = records(&out.stdout);
    assert_eq!(records.len(), 20, "one record per line, fetched or not");
    let left = records
        .iter()
        .filter(|r| r["error"]["kind"] == "not_fetched")
        .count();
    assert!(left > 0 && left < 20, "{records:#?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{left} URLs were not fetched")),
        "{stderr}"
    );
}

#[test]
fn version_and_summary_name_the_driver() {
    let out = downpour(&["--version"]);
    assert!(out.status.success(), "{out:?}");
    let version = String::from_utf8_lossy(&out.stdout);
    let driver = ["tokio", "smol", "blocking"]
        .into_iter()
        .find(|d| version.contains(&format!("({d} driver)")))
        .unwrap_or_else(|| panic!("no driver in {version:?}"));

    let servers = Servers::start(1);
    let dir = scratch("driver");
    let list = dir.join("urls.txt");
    std::fs::write(&list, servers.url(0, "/a")).unwrap();
    let out = downpour(&["fetch", list.to_str().unwrap(), "--allow-all"]);
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("({driver} driver)")), "{stderr}");
}

fn read_warc(path: &Path) -> Vec<warc::Record<warc::BufferedBody>> {
    let records: Result<Vec<_>, _> = if path.to_string_lossy().ends_with(".gz") {
        warc::WarcReader::from_path_gzip(path)
            .unwrap()
            .iter_records()
            .collect()
    } else {
        // Not `WarcReader::from_path`: it asks to create the file without write access,
        // which fails.
        let file = std::fs::File::open(path).unwrap();
        warc::WarcReader::new(BufReader::new(file))
            .iter_records()
            .collect()
    };
    records.unwrap_or_else(|e| panic!("{} is not a valid WARC file: {e}", path.display()))
}

/// The status code and the body of an `application/http` block.
fn http_status_and_body(block: &[u8]) -> (u16, &[u8]) {
    let end = block
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP head");
    let head = std::str::from_utf8(&block[..end]).unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, &block[end + 4..])
}

#[test]
fn writes_warc_files_that_the_warc_crate_reads() {
    use warc::{RecordType, WarcHeader};
    let servers = Servers::start(1);
    let dir = scratch("warc");
    let list = dir.join("urls.txt");
    let urls = [
        servers.url(0, "/one"),
        servers.url(0, "/gzip"),
        servers.url(0, "/redirect?to=/two"),
        servers.url(0, "/status/404"),
        "not a url".to_string(),
    ];
    std::fs::write(&list, urls.join("\n")).unwrap();
    for name in ["crawl.warc", "crawl.warc.gz"] {
        let path = dir.join(name);
        let out = downpour(&[
            "fetch",
            list.to_str().unwrap(),
            "--delay",
            "0ms",
            "--allow-all",
            "--retries",
            "0",
            "--warc",
            path.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{out:?}");
        assert_eq!(records(&out.stdout).len(), 5);

        let warc = read_warc(&path);
        assert_eq!(warc.len(), 5, "a warcinfo and four responses");
        assert_eq!(warc[0].warc_type(), &RecordType::WarcInfo);
        assert_eq!(warc[0].warc_version(), "1.1");
        let info = String::from_utf8_lossy(warc[0].body());
        assert!(info.contains("software: downpour/"), "{info}");
        assert_eq!(warc[0].header(WarcHeader::Filename).as_deref(), Some(name));

        let mut ids: Vec<&str> = warc.iter().map(|r| r.warc_id()).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 5, "unique record ids");

        let response = |path: &str| {
            let url = servers.url(0, path);
            let found: Vec<_> = warc
                .iter()
                .filter(|r| r.header(WarcHeader::TargetURI).as_deref() == Some(url.as_str()))
                .collect();
            assert_eq!(found.len(), 1, "one record for {url}");
            let r = found[0];
            assert_eq!(r.warc_type(), &RecordType::Response);
            assert_eq!(
                r.header(WarcHeader::ContentType).as_deref(),
                Some("application/http; msgtype=response")
            );
            assert_eq!(
                r.header(WarcHeader::WarcInfoID).as_deref(),
                Some(warc[0].warc_id())
            );
            assert!(r
                .header(WarcHeader::BlockDigest)
                .is_some_and(|d| d.starts_with("sha1:") && d.len() == 37));
            r
        };
        let one = response("/one");
        assert_eq!(http_status_and_body(one.body()), (200, &b"ok /one"[..]));
        assert_eq!(
            one.header(WarcHeader::PayloadDigest).as_deref(),
            Some("sha1:TNHY4A57JGFA4WVBI775FB5YZZP7YMCG")
        );
        // The redirect's target is archived under its own URL.
        let two = response("/two");
        assert_eq!(http_status_and_body(two.body()), (200, &b"ok /two"[..]));
        assert_eq!(
            two.header(WarcHeader::PayloadDigest).as_deref(),
            Some("sha1:I5UDGDUOBVFAAK52RNEPQZBA2J5WKXRL")
        );
        let missing = response("/status/404");
        assert_eq!(
            http_status_and_body(missing.body()),
            (404, &b"status 404"[..])
        );
        // Stored decoded, and says so.
        let gzip = response("/gzip");
        assert_eq!(
            http_status_and_body(gzip.body()),
            (200, downpour_conformance::TEXT)
        );
        let head = String::from_utf8_lossy(gzip.body()).to_lowercase();
        assert!(!head.contains("\r\ncontent-encoding:"), "{head}");
        assert!(
            head.contains(&format!(
                "\r\ncontent-length: {}\r\n",
                downpour_conformance::TEXT.len()
            )),
            "{head}"
        );
    }
}

#[test]
fn an_unwritable_warc_file_fails_with_one_line() {
    let dir = scratch("warc-unwritable");
    let list = dir.join("urls.txt");
    std::fs::write(&list, "http://127.0.0.1:9/\n").unwrap();
    let target = dir.join("no-such-dir").join("crawl.warc");
    let out = downpour(&[
        "fetch",
        list.to_str().unwrap(),
        "--warc",
        target.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("cannot create WARC file"), "{stderr}");
}

/// A list of 3 URLs that stall (the server never answers) and 5 that would not.
fn stalling_list(servers: &Servers, name: &str) -> PathBuf {
    let list = scratch(name).join("urls.txt");
    let mut urls: Vec<String> = (0..3)
        .map(|i| servers.url(0, &format!("/stall?i={i}")))
        .collect();
    urls.extend((0..5).map(|i| servers.url(0, &format!("/a?i={i}"))));
    std::fs::write(&list, urls.join("\n")).unwrap();
    list
}

/// The 3 stalling URLs in flight at once, never retried, the rest waiting.
const STALLING_ARGS: &[&str] = &[
    "--delay",
    "0ms",
    "--per-host",
    "3",
    "--concurrency",
    "3",
    "--retries",
    "0",
    "--timeout",
    "60s",
];

/// A thread that reads the child's stderr to its end (and returns it), passing on each line
/// as it comes.
fn read_stderr(child: &mut Child) -> (JoinHandle<String>, mpsc::Receiver<String>) {
    let stderr = child.stderr.take().unwrap();
    let (lines, stderr_lines) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            all.push_str(&line);
            all.push('\n');
            let _ = lines.send(line);
        }
        all
    });
    (reader, stderr_lines)
}

/// Once the 3 stalling URLs are in flight: a Ctrl-C, which they hold up (the command is still
/// running after its note that it is stopping), then a second. Returns the thread that
/// collects the command's stderr, to the end.
fn interrupt_while_stalled(child: &mut Child, servers: &Servers) -> JoinHandle<String> {
    let (reader, stderr_lines) = read_stderr(child);
    wait_for("three stalled requests", || {
        servers.hits("/stall").len() == 3
    });
    interrupt(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let line = stderr_lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("a note that the run is stopping");
        if line.contains("stopping") {
            break;
        }
    }
    // The stalled fetches hold the graceful stop: the command is still running.
    assert!(
        child.try_wait().unwrap().is_none(),
        "exited on the first Ctrl-C"
    );
    interrupt(child);
    reader
}

#[cfg(unix)]
#[test]
fn a_second_ctrl_c_aborts_the_fetches_in_flight() {
    let servers = Servers::start(1);
    let list = stalling_list(&servers, "interrupt-twice");
    let mut child = Command::new(env!("CARGO_BIN_EXE_downpour"))
        .args(["fetch", list.to_str().unwrap(), "--allow-all"])
        .args(STALLING_ARGS)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let reader = interrupt_while_stalled(&mut child, &servers);
    let stopped = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(10),
            "still running 10 s after the second Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(status.code(), Some(130));
    let mut stdout = Vec::new();
    std::io::Read::read_to_end(&mut child.stdout.take().unwrap(), &mut stdout).unwrap();
    let records = records(&stdout);
    assert_eq!(records.len(), 8, "one record per line: {records:#?}");
    let kinds = |kind: &str| {
        records
            .iter()
            .filter(|r| r["error"]["kind"] == kind)
            .count()
    };
    assert_eq!(kinds("interrupted"), 3, "{records:#?}");
    assert_eq!(kinds("not_fetched"), 5, "{records:#?}");
    let stderr = reader.join().unwrap();
    assert!(stderr.contains("aborting"), "{stderr}");
    assert!(stderr.contains("5 URLs were not fetched"), "{stderr}");
}

/// Whether the server saw this path come through tinyproxy (its `Via` header).
fn came_through_tinyproxy(servers: &Servers, path: &str) -> bool {
    let hits = servers.hits(path);
    assert_eq!(hits.len(), 1, "{path} fetched once");
    hits[0]
        .headers
        .iter()
        .any(|(name, value)| name == "via" && value.contains("tinyproxy"))
}

#[test]
fn fetches_through_a_proxy_given_or_from_the_environment() {
    let Some(proxy) = Tinyproxy::start(None) else {
        return;
    };
    let servers = Servers::start(1);
    let dir = scratch("proxy");
    let run = |path: &str, extra: &[&str], env_proxy: Option<&str>| {
        let list = dir.join("urls.txt");
        std::fs::write(&list, servers.url(0, path)).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_downpour"));
        command
            .args([
                "fetch",
                list.to_str().unwrap(),
                "--allow-all",
                "--retries",
                "0",
            ])
            .args(extra)
            .stdin(Stdio::null());
        for name in [
            "http_proxy",
            "HTTP_PROXY",
            "all_proxy",
            "ALL_PROXY",
            "no_proxy",
            "NO_PROXY",
        ] {
            command.env_remove(name);
        }
        if let Some(url) = env_proxy {
            command.env("http_proxy", url);
        }
        let out = command.output().unwrap();
        assert!(out.status.success(), "{out:?}");
        let records = records(&out.stdout);
        assert_eq!(records.len(), 1);
        records[0].clone()
    };

    let given = run("/given", &["--proxy", &proxy.url()], None);
    assert_eq!(given["status"], 200, "{given:#}");
    assert!(came_through_tinyproxy(&servers, "/given"));
    assert!(proxy.log().contains("/given"), "{}", proxy.log());

    let from_env = run("/from-env", &[], Some(&proxy.url()));
    assert_eq!(from_env["status"], 200, "{from_env:#}");
    assert!(came_through_tinyproxy(&servers, "/from-env"));

    let ignored = run("/env-ignored", &["--no-proxy-env"], Some(&proxy.url()));
    assert_eq!(ignored["status"], 200, "{ignored:#}");
    assert!(!came_through_tinyproxy(&servers, "/env-ignored"));
}

#[test]
fn a_proxy_that_is_not_listening_gives_an_error_record() {
    let servers = Servers::start(1);
    let closed = downpour_conformance::free_port();
    let dir = scratch("proxy-closed");
    let list = dir.join("urls.txt");
    std::fs::write(&list, servers.url(0, "/a")).unwrap();
    let out = downpour(&[
        "fetch",
        list.to_str().unwrap(),
        "--allow-all",
        "--retries",
        "0",
        "--proxy",
        &format!("http://127.0.0.1:{closed}"),
    ]);
    assert!(out.status.success(), "{out:?}");
    let records = records(&out.stdout);
    assert_eq!(records.len(), 1);
    let kind = records[0]["error"]["kind"].as_str().unwrap_or_default();
    assert!(["proxy", "connect"].contains(&kind), "{records:#?}");
    assert!(
        servers.hits("/a").is_empty(),
        "the origin was reached directly"
    );
}

#[test]
fn robots_attempts_bounds_the_wait_for_an_unavailable_robots_txt() {
    let servers = Servers::start(1);
    servers.set_robots(0, Robots::Status(503));
    let dir = scratch("robots");
    let list = dir.join("urls.txt");
    std::fs::write(
        &list,
        [servers.url(0, "/a"), servers.url(0, "/b")].join("\n"),
    )
    .unwrap();
    let started = Instant::now();
    let out = downpour(&[
        "fetch",
        list.to_str().unwrap(),
        "--delay",
        "0ms",
        "--no-proxy-env",
        "--robots-attempts",
        "2",
        "--robots-retry-delay",
        "100ms",
    ]);
    assert!(out.status.success(), "{out:?}");
    // The defaults (3 attempts, 30 s doubling) would take 90 s.
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    let records = records(&out.stdout);
    for line in [1, 2] {
        assert_eq!(
            by_line(&records, line)["error"]["kind"],
            "robots_unavailable",
            "{records:#?}"
        );
    }
    assert_eq!(servers.hits("/robots.txt").len(), 2, "two attempts");
    assert!(servers.hits("/a").is_empty() && servers.hits("/b").is_empty());
}

#[test]
fn robots_options_need_robots_obeyed() {
    let dir = scratch("robots-options");
    let list = dir.join("urls.txt");
    std::fs::write(&list, "http://127.0.0.1:9/\n").unwrap();
    let list = list.to_str().unwrap();
    for extra in [
        &["--allow-all", "--robots-attempts", "1"][..],
        &["--policy", "fifo", "--robots-retry-delay", "1s"][..],
        &["--robots-attempts", "0"][..],
    ] {
        let out = downpour(&[&["fetch", list][..], extra].concat());
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains("robots"), "{stderr}");
    }
}

// ----- Redis (`--redis`): a real redis-server on a free port -----

/// `downpour fetch LIST --redis URL --prefix PREFIX …`, not yet started.
fn redis_worker(redis: &RedisServer, prefix: &str, list: &Path, extra: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_downpour"));
    command
        .args(["fetch", list.to_str().unwrap(), "--redis", &redis.url()])
        .args(["--prefix", prefix, "--allow-all", "--no-proxy-env"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// How many records each input line got.
fn lines_recorded(records: &[Value]) -> BTreeMap<u64, usize> {
    let mut lines = BTreeMap::new();
    for r in records {
        *lines.entry(r["line"].as_u64().unwrap()).or_default() += 1;
    }
    lines
}

/// Waits for a child, failing the test (and killing it) after 60 s.
fn finish(mut child: Child, what: &str) -> Output {
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{what} still running after 60 s: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// A Redis that evicts keys when full (`allkeys-lru` under a `maxmemory`) could lose the
/// crawl's requests: the command says so once at start, and crawls; with `noeviction` it
/// says nothing. (The line is the command's own: its fetchers connect before it shows the
/// store's log, and the store's unit tests cover theirs.)
#[test]
fn redis_that_evicts_keys_is_named_a_risk_once() {
    let redis = RedisServer::start();
    let servers = Servers::start(2);
    let dir = scratch("redis-evicts");
    let list = dir.join("urls.txt");
    let text: Vec<String> = (0..6)
        .map(|i| servers.url(i % 2, &format!("/page/{i}")))
        .collect();
    std::fs::write(&list, text.join("\n")).unwrap();
    let configure = |policy: &str| {
        let mut c = redis.connection().unwrap();
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("maxmemory")
            .arg("512mb")
            .arg("maxmemory-policy")
            .arg(policy)
            .query(&mut c)
            .unwrap();
    };
    configure("allkeys-lru");
    let out = redis_worker(
        &redis,
        "evicts",
        &list,
        &["--delay", "0ms", "--threads", "2", "--partitions", "2"],
    )
    .output()
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(records(&out.stdout).len(), 6);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.matches("maxmemory-policy allkeys-lru").count(),
        1,
        "{stderr}"
    );
    assert!(stderr.contains("requests are then lost"), "{stderr}");

    configure("noeviction");
    let again = redis_worker(&redis, "keeps", &list, &["--delay", "0ms"])
        .output()
        .unwrap();
    assert!(again.status.success(), "{again:?}");
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(!stderr.contains("maxmemory-policy"), "{stderr}");
}

#[test]
fn redis_seeds_a_crawl_once_and_runs_it_to_the_end() {
    let redis = RedisServer::start();
    let servers = Servers::start(3);
    let dir = scratch("redis-seed");
    let list = dir.join("urls.txt");
    let mut text: Vec<String> = (0..12)
        .map(|i| servers.url(i % 3, &format!("/page/{i}")))
        .collect();
    text.insert(5, "not a url".to_string());
    std::fs::write(&list, text.join("\n")).unwrap();

    let worker = || {
        redis_worker(
            &redis,
            "seed",
            &list,
            &["--delay", "0ms", "--partitions", "2"],
        )
    };
    let out = worker().output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let records = records(&out.stdout);
    let lines = lines_recorded(&records);
    assert_eq!(lines.len(), 13, "{records:#?}");
    assert!(lines.values().all(|&n| n == 1), "{lines:?}");
    assert_eq!(by_line(&records, 6)["error"]["kind"], "invalid_url");
    assert_eq!(by_line(&records, 1)["status"], 200);
    // The records of requests restored from Redis are complete.
    assert!(by_line(&records, 1)["headers"]["content-length"].is_string());
    assert!(by_line(&records, 1)["timings"]["start_offset_ms"].is_number());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("seeded crawl `seed` with 12 URLs"),
        "{stderr}"
    );
    assert_eq!(redis.unfinished("seed", 2), 0);
    assert_eq!(servers.hits("/page/").len(), 12);

    // Once seeded, the file is not read again (a missing one is fine): nothing left to do.
    // The output may be a pipe (appended to, with Redis).
    std::fs::remove_file(&list).unwrap();
    let again = worker().args(["-o", "/dev/stdout"]).output().unwrap();
    assert!(again.status.success(), "{again:?}");
    assert!(again.stdout.is_empty(), "{again:?}");
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(
        stderr.contains("crawl `seed` already seeded: resuming it"),
        "{stderr}"
    );
    assert_eq!(servers.hits("/page/").len(), 12, "nothing fetched twice");

    // Another number of partitions than the crawl's is refused at start.
    let other = redis_worker(&redis, "seed", &list, &["--partitions", "3"])
        .output()
        .unwrap();
    assert_eq!(other.status.code(), Some(2), "{other:?}");
    let stderr = String::from_utf8_lossy(&other.stderr);
    assert!(stderr.contains("--partitions 2"), "{stderr}");
}

/// Lines written at the end of a seeded crawl's list are added to the crawl by the next
/// worker started with it, and fetched; a list that is not the crawl's is refused.
#[test]
fn redis_lines_written_at_the_end_of_a_seeded_crawls_list_are_added_to_it() {
    let redis = RedisServer::start();
    let servers = Servers::start(2);
    let dir = scratch("redis-grow");
    let list = dir.join("urls.txt");
    let mut text: Vec<String> = (0..10)
        .map(|i| servers.url(i % 2, &format!("/page/{i}")))
        .collect();
    std::fs::write(&list, text.join("\n")).unwrap();
    let worker = |list: &Path| redis_worker(&redis, "grow", list, &["--delay", "0ms"]);
    let first = worker(&list).output().unwrap();
    assert!(first.status.success(), "{first:?}");
    assert_eq!(lines_recorded(&records(&first.stdout)).len(), 10);

    // Five lines more, one of them not a URL (the file had no newline at its end).
    text.extend((10..14).map(|i| servers.url(i % 2, &format!("/page/{i}"))));
    text.insert(12, "not a url".to_string());
    std::fs::write(&list, text.join("\n") + "\n").unwrap();
    let second = worker(&list).output().unwrap();
    assert!(second.status.success(), "{second:?}");
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        stderr.contains("added 4 URLs to crawl `grow`: lines 11 to 15 of its list"),
        "{stderr}"
    );
    let added = records(&second.stdout);
    let lines = lines_recorded(&added);
    assert_eq!(
        lines.keys().copied().collect::<Vec<_>>(),
        [11, 12, 13, 14, 15]
    );
    assert!(lines.values().all(|&n| n == 1), "{lines:?}");
    assert_eq!(by_line(&added, 13)["error"]["kind"], "invalid_url");
    assert_eq!(by_line(&added, 15)["status"], 200);
    let hits = servers.hits("/page/");
    assert_eq!(hits.len(), 14, "each URL fetched once: {hits:?}");

    // The same list again: nothing to add, nothing to fetch.
    let third = worker(&list).output().unwrap();
    assert!(third.status.success(), "{third:?}");
    assert!(third.stdout.is_empty(), "{third:?}");
    let stderr = String::from_utf8_lossy(&third.stderr);
    assert!(stderr.contains("already seeded: resuming it"), "{stderr}");

    // A last line without a newline may be half written: it waits for its newline.
    let half = servers.url(0, "/page/1");
    std::fs::write(&list, text.join("\n") + "\n" + &half).unwrap();
    let fourth = worker(&list).output().unwrap();
    assert!(fourth.status.success(), "{fourth:?}");
    assert!(fourth.stdout.is_empty(), "{fourth:?}");
    let stderr = String::from_utf8_lossy(&fourth.stderr);
    assert!(
        stderr.contains("line 16 of the list has no newline at its end: it is not added"),
        "{stderr}"
    );
    text.push(servers.url(0, "/page/15"));
    std::fs::write(&list, text.join("\n") + "\n").unwrap();
    let fifth = worker(&list).output().unwrap();
    assert!(fifth.status.success(), "{fifth:?}");
    let stderr = String::from_utf8_lossy(&fifth.stderr);
    assert!(
        stderr.contains("added 1 URLs to crawl `grow`: lines 16 to 16"),
        "{stderr}"
    );
    assert_eq!(by_line(&records(&fifth.stdout), 16)["status"], 200);

    // No list (`-` with nothing on stdin) resumes the crawl as it is.
    let none = worker(Path::new("-")).output().unwrap();
    assert!(none.status.success(), "{none:?}");
    let stderr = String::from_utf8_lossy(&none.stderr);
    assert!(
        stderr.contains("resuming it without checking the list (its list is empty)"),
        "{stderr}"
    );

    // Piped in, a last line without a newline waits for it too.
    let mut piped = worker(Path::new("-"))
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = piped.stdin.take().unwrap();
    let cut = text.join("\n") + "\n" + &servers.url(1, "/page/9");
    std::io::Write::write_all(&mut stdin, cut.as_bytes()).unwrap();
    drop(stdin);
    let piped = finish(piped, "the piped worker");
    assert!(piped.status.success(), "{piped:?}");
    let stderr = String::from_utf8_lossy(&piped.stderr);
    assert!(
        stderr.contains("line 17 of the list has no newline at its end: it is not added"),
        "{stderr}"
    );

    // Another list, or the crawl's cut short, is refused before anything is stored.
    let other = dir.join("other.txt");
    let mut changed = text.clone();
    changed[3] = servers.url(1, "/other");
    std::fs::write(&other, changed.join("\n")).unwrap();
    let refused = worker(&other).output().unwrap();
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("was seeded from another list: the first 16 lines of this one differ"),
        "{stderr}"
    );
    std::fs::write(&other, text[..12].join("\n")).unwrap();
    let refused = worker(&other).output().unwrap();
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("from a list of 16 lines, and this one has fewer"),
        "{stderr}"
    );
    assert_eq!(redis.unfinished("grow", 1), 0);
    assert_eq!(servers.hits("/page/").len(), 15);
    assert!(servers.hits("/other").is_empty());

    // `>>` onto a list without a final newline goes on with its last line: refused, and
    // told why.
    let glued = dir.join("glued.txt");
    std::fs::write(&glued, text[..2].join("\n")).unwrap();
    let seeded = redis_worker(&redis, "glued", &glued, &["--delay", "0ms"])
        .output()
        .unwrap();
    assert!(seeded.status.success(), "{seeded:?}");
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&glued)
        .unwrap();
    std::io::Write::write_all(&mut file, b"/more\n").unwrap();
    let refused = redis_worker(&redis, "glued", &glued, &[]).output().unwrap();
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("line 2 had no newline at its end: text written right after it"),
        "{stderr}"
    );
}

/// A worker started while another adds lines to a seeded crawl waits for it rather than
/// joining, and adds what the other did not: here the other is killed mid-way.
#[cfg(unix)]
#[test]
fn redis_a_worker_killed_while_adding_lines_is_followed_by_the_next() {
    let redis = RedisServer::start();
    let servers = Servers::start(2);
    let dir = scratch("redis-grow-kill");
    let list = dir.join("urls.txt");
    let urls: Vec<String> = (0..10)
        .map(|i| servers.url(i % 2, &format!("/page/{i}")))
        .collect();
    std::fs::write(&list, urls[..3].join("\n") + "\n").unwrap();
    let args = ["--delay", "0ms", "--lease-ttl", "1s"];
    let first = redis_worker(&redis, "grow-kill", &list, &args)
        .output()
        .unwrap();
    assert!(first.status.success(), "{first:?}");

    // A worker adds lines 4 and 5 from a pipe that then pauses: it holds the lease, and
    // stores what it read so far (a slow list is stored as it comes).
    let given = urls[..5].join("\n") + "\n";
    let (mut adder, stdin, stored) =
        seeding_from_stdin_until(&redis, "grow-kill", &given, &args, 5);
    assert_eq!(stored, 5, "lines 4 and 5 stored");
    // The whole list, to a worker started now; then the adder dies.
    std::fs::write(&list, urls.join("\n") + "\n").unwrap();
    let next = redis_worker(&redis, "grow-kill", &list, &args)
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    adder.kill().unwrap(); // SIGKILL
    let adder = adder.wait_with_output().unwrap();
    drop(stdin);
    let next = finish(next, "the next worker");
    assert!(next.status.success(), "{next:?}");
    let stderr = String::from_utf8_lossy(&next.stderr);
    assert!(
        stderr.contains("another worker is adding to crawl `grow-kill`: waiting for it"),
        "{stderr}"
    );
    assert!(
        stderr.contains("added 5 URLs to crawl `grow-kill`: lines 6 to 10 of its list"),
        "{stderr}"
    );
    let mut all = records(&first.stdout);
    all.extend(records(&adder.stdout));
    all.extend(records(&next.stdout));
    let lines = lines_recorded(&all);
    assert_eq!(
        lines.keys().copied().collect::<Vec<_>>(),
        (1..=10).collect::<Vec<_>>()
    );
    assert!(lines.values().all(|&n| n == 1), "{lines:?}");
    assert_eq!(servers.hits("/page/").len(), 10);
    assert_eq!(redis.unfinished("grow-kill", 1), 0);
}

#[test]
fn redis_two_workers_share_one_crawl_and_write_every_url_once() {
    let redis = RedisServer::start();
    let servers = Servers::start(6);
    let dir = scratch("redis-two");
    let list = dir.join("urls.txt");
    let mut text: Vec<String> = (0..36)
        .map(|i| servers.url(i % 6, &format!("/delay?ms=20&i={i}")))
        .collect();
    text.push("not a url".to_string());
    std::fs::write(&list, text.join("\n")).unwrap();

    let workers: Vec<Child> = (0..2)
        .map(|_| {
            redis_worker(
                &redis,
                "two",
                &list,
                &["--delay", "50ms", "--partitions", "2", "--lease-ttl", "2s"],
            )
            .spawn()
            .unwrap()
        })
        .collect();
    let outs: Vec<Output> = workers
        .into_iter()
        .map(|child| finish(child, "a worker"))
        .collect();
    let mut all = Vec::new();
    let mut seeded = 0;
    for out in &outs {
        assert!(out.status.success(), "{out:?}");
        all.extend(records(&out.stdout));
        let stderr = String::from_utf8_lossy(&out.stderr);
        if stderr.contains("seeded crawl `two` with 36 URLs") {
            seeded += 1;
        } else {
            assert!(stderr.contains("already seeded: resuming it"), "{stderr}");
        }
    }
    assert_eq!(seeded, 1, "seeded once");
    let lines = lines_recorded(&all);
    assert_eq!(lines.len(), 37, "{all:#?}");
    assert!(lines.values().all(|&n| n == 1), "{lines:?}");
    assert_eq!(redis.unfinished("two", 2), 0);
}

#[test]
fn redis_threads_are_workers_of_one_crawl_at_once() {
    let redis = RedisServer::start();
    let servers = Servers::start(6);
    let urls: Vec<String> = (0..36)
        .map(|i| servers.url(i % 6, &format!("/delay?ms=20&i={i}")))
        .collect();
    let list = list_file("redis-threads", &urls);
    let mut worker = redis_worker(
        &redis,
        "threads",
        &list,
        &["--delay", "50ms", "--partitions", "2", "--threads", "2"],
    );
    let out = finish(worker.spawn().unwrap(), "the worker");
    let log = fetched_once_each(&out, &servers, 36);
    assert_eq!(redis.unfinished("threads", 2), 0);
    assert_eq!(
        violations(&log, Duration::from_millis(50)),
        Vec::<String>::new()
    );
    // The two partitions were fetched at the same time, not one after the other.
    let partition = |r: &LogEntry| partition_of(&r.host.to_string(), 2);
    let overlap = log.iter().any(|r| {
        log.iter().any(|other| {
            partition(other) != partition(r)
                && other.arrived <= r.arrived
                && other.ended.is_none_or(|ended| ended > r.arrived)
        })
    });
    assert!(overlap, "{log:#?}");
}

/// With Redis, the threads are workers of partitions: a redirect to a host of the other
/// partition goes through its inbox, and that worker fetches it.
#[test]
fn redis_a_redirect_to_a_host_of_another_partition_is_fetched_by_its_worker() {
    let redis = RedisServer::start();
    redirected_to_another_thread("redis-redirect", |list| {
        let mut worker = redis_worker(
            &redis,
            "redirect",
            list,
            &["--delay", "150ms", "--partitions", "2", "--threads", "2"],
        );
        finish(worker.spawn().unwrap(), "the worker")
    });
    assert_eq!(redis.unfinished("redirect", 2), 0);
}

/// A worker killed mid-crawl and started again: every URL gets a record. The WARC file, like
/// the output, lives as long as the crawl: each record is out before its URL leaves Redis,
/// and the run again appends its records (and a `warcinfo` of its own) to the first run's.
#[cfg(unix)]
#[test]
fn redis_a_killed_worker_started_again_leaves_no_url_out() {
    use warc::{RecordType, WarcHeader};
    let redis = RedisServer::start();
    let servers = Servers::start(2);
    let dir = scratch("redis-kill");
    let list = dir.join("urls.txt");
    let text: Vec<String> = (0..20)
        .map(|i| servers.url(i % 2, &format!("/delay?ms=20&i={i}")))
        .collect();
    std::fs::write(&list, text.join("\n")).unwrap();
    let archive = dir.join("crawl.warc.gz");
    // A slow polite crawl: about 10 fetches per host, 100 ms apart.
    let args = [
        "--delay",
        "100ms",
        "--lease-ttl",
        "1s",
        "--warc",
        archive.to_str().unwrap(),
    ];

    let mut first = redis_worker(&redis, "kill", &list, &args).spawn().unwrap();
    // Killed at a random point, after 1 to 12 fetches.
    let kill_after = 1
        + (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos() as usize)
            % 12;
    wait_for("fetches before the kill", || {
        servers.hits("/delay").len() >= kill_after
    });
    first.kill().unwrap(); // SIGKILL
    let first = first.wait_with_output().unwrap();
    assert!(redis.unfinished("kill", 1) > 0, "killed before the end");

    let second = finish(
        redis_worker(&redis, "kill", &list, &args).spawn().unwrap(),
        "the second worker",
    );
    assert!(second.status.success(), "{second:?}");
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("already seeded: resuming it"), "{stderr}");
    let mut all = records(&first.stdout);
    all.extend(records(&second.stdout));
    let lines = lines_recorded(&all);
    // At least once: a fetch in flight at the kill may be recorded by both.
    assert_eq!(
        lines.len(),
        20,
        "every URL recorded: {lines:?} (killed after {kill_after})"
    );
    assert_eq!(redis.unfinished("kill", 1), 0);

    let warc = read_warc(&archive);
    let infos = warc
        .iter()
        .filter(|r| r.warc_type() == &RecordType::WarcInfo)
        .count();
    assert_eq!(infos, 2, "one warcinfo per run");
    let archived: BTreeSet<String> = warc
        .iter()
        .filter(|r| r.warc_type() == &RecordType::Response)
        .map(|r| r.header(WarcHeader::TargetURI).unwrap().to_string())
        .collect();
    for record in &all {
        let url = record["final_url"].as_str().unwrap();
        assert!(archived.contains(url), "{url} recorded, not archived");
    }
    assert_eq!(archived.len(), 20, "{archived:?}");
}

/// A worker seeding crawl `prefix` from stdin, which gives it `list` and then nothing
/// more, once it stored a chunk of it; with its stdin, and how many lines it stored.
fn seeding_from_stdin(
    redis: &RedisServer,
    prefix: &str,
    list: &str,
    args: &[&str],
) -> (Child, std::process::ChildStdin, u64) {
    seeding_from_stdin_until(redis, prefix, list, args, 0)
}

/// The same, once its progress reached line `lines` (of a crawl seeded before, for one).
fn seeding_from_stdin_until(
    redis: &RedisServer,
    prefix: &str,
    list: &str,
    args: &[&str],
    lines: u64,
) -> (Child, std::process::ChildStdin, u64) {
    let mut worker = redis_worker(redis, prefix, Path::new("-"), args)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = worker.stdin.take().unwrap();
    std::io::Write::write_all(&mut stdin, list.as_bytes()).unwrap();
    let mut connection = redis.connection().unwrap();
    let mut stored = None;
    wait_for("a chunk stored", || {
        stored = redis::cmd("HGET")
            .arg(format!("{{{prefix}}}:seeding"))
            .arg("lines")
            .query::<Option<u64>>(&mut connection)
            .unwrap();
        stored >= Some(lines)
    });
    (worker, stdin, stored.unwrap())
}

/// A worker of crawl `prefix` run to its end on the list `text`, its records written to a
/// file (more than a pipe holds while `finish` waits): its output and records.
fn run_to_the_end(
    redis: &RedisServer,
    prefix: &str,
    dir: &Path,
    text: &[String],
    args: &[&str],
) -> (Output, Vec<Value>) {
    let list = dir.join("urls.txt");
    std::fs::write(&list, text.join("\n")).unwrap();
    let output = dir.join("records.jsonl");
    let out = finish(
        redis_worker(redis, prefix, &list, args)
            .args(["-o", output.to_str().unwrap()])
            .spawn()
            .unwrap(),
        "the worker with the whole list",
    );
    assert!(out.status.success(), "{out:?}");
    let records = records(&std::fs::read(&output).unwrap());
    (out, records)
}

/// Seeding stores the list a chunk at a time with its progress: a worker killed while it
/// seeds leaves what it stored, a worker with another list is refused, and one with the same
/// list goes on from the first line not stored. Every line gets one record.
#[test]
fn redis_a_worker_killed_while_seeding_is_followed_from_where_it_stopped() {
    let redis = RedisServer::start();
    let servers = Servers::start(3);
    let dir = scratch("redis-seed-kill");
    let text: Vec<String> = (0..3000)
        .map(|i| match i {
            7 | 2500 => format!("not a url {i}"),
            _ => servers.url(i % 3, &format!("/page/{i}")),
        })
        .collect();
    let args = ["--delay", "0ms", "--partitions", "2", "--lease-ttl", "1s"];

    // The first worker reads its list from stdin, which gives it 2,100 lines, then nothing.
    let given = text[..2100].join("\n") + "\n";
    let (mut first, stdin, stored) = seeding_from_stdin(&redis, "slow", &given, &args);
    first.kill().unwrap(); // SIGKILL
    let first = first.wait_with_output().unwrap();
    drop(stdin);
    assert!((1..=2100).contains(&stored), "{stored}");
    let mut connection = redis.connection().unwrap();
    let seeded: bool = redis::cmd("EXISTS")
        .arg("{slow}:seeded")
        .query(&mut connection)
        .unwrap();
    assert!(!seeded, "the list was not all read");

    // Another list (line 5 differs) is refused once the dead worker's lease ran out.
    let other = dir.join("other.txt");
    let mut changed = text.clone();
    changed[4] = servers.url(0, "/elsewhere");
    std::fs::write(&other, changed.join("\n")).unwrap();
    let refused = finish(
        redis_worker(&redis, "slow", &other, &args).spawn().unwrap(),
        "the worker with another list",
    );
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("is being seeded from another list"),
        "{stderr}"
    );
    assert!(refused.stdout.is_empty(), "{refused:?}");

    // The same list with CRLF line endings is the same list.
    let crlf: Vec<String> = text.iter().map(|line| format!("{line}\r")).collect();
    let (second, seconds) = run_to_the_end(&redis, "slow", &dir, &crlf, &args);
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        stderr.contains(&format!(
            "went on seeding crawl `slow` from line {}",
            stored + 1
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("seeded crawl `slow` with 2998 URLs"),
        "{stderr}"
    );
    let mut all = records(&first.stdout);
    assert_eq!(all.len(), 1, "the first worker wrote line 8's record only");
    all.extend(seconds);
    let lines = lines_recorded(&all);
    assert_eq!(lines.len(), 3000);
    assert!(lines.values().all(|&n| n == 1), "{lines:?}");
    assert_eq!(by_line(&all, 8)["error"]["kind"], "invalid_url");
    assert_eq!(by_line(&all, 2501)["error"]["kind"], "invalid_url");
    let hits = servers.hits("/page/");
    assert_eq!(hits.len(), 2998, "each URL fetched once");
    // No lease left; the progress stays, with the whole list: a later worker checks its
    // list against it.
    let left: Vec<String> = redis::cmd("KEYS")
        .arg("{slow}:seeding*")
        .query(&mut connection)
        .unwrap();
    assert_eq!(left, ["{slow}:seeding"]);
    let seeded: (u64, u64) = redis::cmd("HMGET")
        .arg("{slow}:seeding")
        .arg(&["lines", "requests"])
        .query(&mut connection)
        .unwrap();
    assert_eq!(seeded, (3000, 2998));
    assert_eq!(redis.unfinished("slow", 2), 0);
}

/// Ctrl-C while seeding stores what was read, lets the seeding lease go and ends the
/// command (130): the next worker goes on at once rather than after the lease's time.
/// Whether the program piping the list in ends too (its end then is no end of the list: the
/// crawl is not marked seeded) or not (the list is read on a thread: the seeding sees the
/// Ctrl-C all the same). A run again with the same `--output` appends to it.
#[test]
fn redis_ctrl_c_while_seeding_lets_the_next_worker_go_on_at_once() {
    let redis = RedisServer::start();
    let servers = Servers::start(2);
    for list_ends_too in [true, false] {
        let prefix = if list_ends_too { "ended" } else { "blocked" };
        let dir = scratch(&format!("redis-seed-ctrl-c-{prefix}"));
        // Bad lines in the first chunk and after it: each gets one record in all.
        let text: Vec<String> = (0..2200)
            .map(|i| match i {
                7 | 2050 => format!("not a url {i}"),
                _ => servers.url(i % 2, &format!("/{prefix}/{i}")),
            })
            .collect();
        // A lease that would keep the next worker waiting past the test's patience.
        let args = ["--delay", "0ms", "--lease-ttl", "5m"];
        // The output file of the run to the end, which appends to it.
        let output = dir.join("records.jsonl");
        let first_args = [&args[..], &["-o", output.to_str().unwrap()]].concat();
        // 2,100 lines, and the first characters of the next: the program piping the list in
        // is cut short, and that cut line is not the list's.
        let given = text[..2100].join("\n") + "\n" + &text[2100][..12];
        let (first, stdin, _) = seeding_from_stdin(&redis, prefix, &given, &first_args);
        interrupt(&first);
        if list_ends_too {
            drop(stdin);
        }
        let first = finish(first, "the interrupted worker");
        assert_eq!(first.status.code(), Some(130), "{first:?}");
        let mut connection = redis.connection().unwrap();
        let stored: u64 = redis::cmd("HGET")
            .arg(format!("{{{prefix}}}:seeding"))
            .arg("lines")
            .query(&mut connection)
            .unwrap();
        let stderr = String::from_utf8_lossy(&first.stderr);
        let said =
            format!("stopped while seeding crawl `{prefix}`; lines 1 to {stored} are stored");
        assert!(stderr.contains(&said), "{stderr}");
        for (key, kept) in [("seeded", false), ("seeding:lease", false)] {
            let exists: bool = redis::cmd("EXISTS")
                .arg(format!("{{{prefix}}}:{key}"))
                .query(&mut connection)
                .unwrap();
            assert_eq!(exists, kept, "{prefix}: {key}");
        }

        let (second, records) = run_to_the_end(&redis, prefix, &dir, &text, &args);
        let stderr = String::from_utf8_lossy(&second.stderr);
        assert!(!stderr.contains("waiting"), "{stderr}");
        let went_on = format!("went on seeding crawl `{prefix}` from line {}", stored + 1);
        assert!(stderr.contains(&went_on), "{stderr}");
        let seeded = format!("seeded crawl `{prefix}` with 2198 URLs");
        assert!(stderr.contains(&seeded), "{stderr}");
        let lines = lines_recorded(&records);
        assert_eq!(lines.len(), 2200, "{prefix}");
        assert!(lines.values().all(|&n| n == 1), "{prefix}: {lines:?}");
        for line in [8, 2051] {
            assert_eq!(by_line(&records, line)["error"]["kind"], "invalid_url");
        }
    }
}

/// Ctrl-C while a worker waits for another's seeding, even with its Redis command held up
/// (`CLIENT PAUSE`): the wait ends (130) and says so, where a signal on the thread in that
/// read failed it with EINTR (exit 2, "Interrupted system call").
#[test]
fn redis_ctrl_c_while_waiting_for_the_seeding_ends_the_wait() {
    let redis = RedisServer::start();
    let dir = scratch("redis-seed-wait");
    let list = dir.join("urls.txt");
    std::fs::write(&list, "http://127.0.0.1:9/x\n").unwrap();
    let mut connection = redis.connection().unwrap();
    // Another worker holds the lease.
    redis::cmd("SET")
        .arg("{wait}:seeding:lease")
        .arg("another")
        .arg("PX")
        .arg(60_000)
        .query::<()>(&mut connection)
        .unwrap();
    let mut worker = redis_worker(&redis, "wait", &list, &[]).spawn().unwrap();
    let (reader, stderr_lines) = read_stderr(&mut worker);
    loop {
        let line = stderr_lines
            .recv_timeout(Duration::from_secs(20))
            .expect("a note that the worker waits");
        if line.contains("waiting for it") {
            break;
        }
    }
    redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(1500)
        .arg("ALL")
        .query::<()>(&mut connection)
        .unwrap();
    // A look at the lease goes every 100 ms: one is held up when the signal comes.
    std::thread::sleep(Duration::from_millis(300));
    interrupt(&worker);
    let out = finish(worker, "the waiting worker");
    assert_eq!(out.status.code(), Some(130), "{out:?}");
    let stderr = reader.join().unwrap();
    assert!(
        stderr.contains("stopped while waiting for another worker to seed crawl `wait`"),
        "{stderr}"
    );
    let holder: String = redis::cmd("GET")
        .arg("{wait}:seeding:lease")
        .query(&mut connection)
        .unwrap();
    assert_eq!(holder, "another", "the other worker's lease is left alone");
}

/// The seeding lease is renewed while a piped list is slow to come, even past the lease's
/// time; and let go when the seeding fails (a list that cannot be read, an output that
/// cannot be written).
#[test]
fn redis_seeding_keeps_its_lease_through_a_slow_list_and_lets_it_go_on_failure() {
    let redis = RedisServer::start();
    let servers = Servers::start(1);
    let dir = scratch("redis-seed-slow");
    let args = ["--delay", "0ms", "--lease-ttl", "1s"];
    let mut worker = redis_worker(&redis, "slow-list", Path::new("-"), &args)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = worker.stdin.take().unwrap();
    let lines = |range: std::ops::Range<usize>| -> String {
        range
            .map(|i| servers.url(0, &format!("/slow/{i}")) + "\n")
            .collect()
    };
    std::io::Write::write_all(&mut stdin, lines(0..5).as_bytes()).unwrap();
    // The producer pauses for twice the lease's time.
    std::thread::sleep(Duration::from_secs(2));
    std::io::Write::write_all(&mut stdin, lines(5..10).as_bytes()).unwrap();
    drop(stdin);
    let out = finish(worker, "the worker with a slow list");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(lines_recorded(&records(&out.stdout)).len(), 10);
    assert_eq!(servers.hits("/slow/").len(), 10);

    // A list that cannot be read, or an output that cannot be written (its reader gone):
    // the worker fails, and the lease is not left behind.
    let unreadable = redis_worker(&redis, "unreadable", &dir, &args)
        .output()
        .unwrap();
    let mut unwritable = redis_worker(&redis, "unwritable", Path::new("-"), &args)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    drop(unwritable.stdout.take());
    let mut stdin = unwritable.stdin.take().unwrap();
    std::io::Write::write_all(&mut stdin, b"not a url\n").unwrap();
    drop(stdin);
    let unwritable = finish(unwritable, "the worker that cannot write");
    for (prefix, failed) in [("unreadable", unreadable), ("unwritable", unwritable)] {
        assert_ne!(failed.status.code(), Some(0), "{prefix}: {failed:?}");
        let lease: bool = redis::cmd("EXISTS")
            .arg(format!("{{{prefix}}}:seeding:lease"))
            .query(&mut redis.connection().unwrap())
            .unwrap();
        assert!(!lease, "{prefix}: the lease was let go");
    }
}

#[test]
fn redis_unreachable_fails_at_start_with_one_line() {
    let closed = downpour_conformance::free_port();
    let dir = scratch("redis-unreachable");
    let list = dir.join("urls.txt");
    std::fs::write(&list, "http://127.0.0.1:9/\n").unwrap();
    let started = Instant::now();
    let out = downpour(&[
        "fetch",
        list.to_str().unwrap(),
        "--redis",
        &format!("redis://127.0.0.1:{closed}/"),
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("cannot reach Redis at redis://127.0.0.1:"),
        "{stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));

    // The Redis options need `--redis`.
    let out = downpour(&["fetch", list.to_str().unwrap(), "--partitions", "2"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--partitions only applies with --redis"));
}

#[cfg(unix)]
#[test]
fn redis_keeps_what_ctrl_c_leaves_even_the_fetches_aborted_by_the_second() {
    let redis = RedisServer::start();
    let servers = Servers::start(1);
    let list = stalling_list(&servers, "redis-interrupt");
    let mut child = redis_worker(&redis, "stop", &list, STALLING_ARGS)
        .spawn()
        .unwrap();
    let reader = interrupt_while_stalled(&mut child, &servers);
    let out = finish(child, "the worker after the second Ctrl-C");
    assert_eq!(out.status.code(), Some(130), "{out:?}");
    assert!(
        records(&out.stdout).is_empty(),
        "no record: all stays in Redis"
    );
    let stderr = reader.join().unwrap();
    assert!(stderr.contains("8 left in Redis"), "{stderr}");
    assert_eq!(redis.unfinished("stop", 1), 8);
}
