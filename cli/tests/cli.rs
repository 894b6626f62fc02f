//! The `downpour` binary against loopback servers.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use downpour_conformance::Servers;
use serde_json::Value;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("downpour-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create a scratch directory");
    dir
}

fn downpour(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_downpour"))
        .args(args)
        .stdin(Stdio::null())
        .env_remove("http_proxy")
        .env_remove("HTTP_PROXY")
        .env_remove("all_proxy")
        .env_remove("ALL_PROXY")
        .output()
        .expect("run downpour")
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
    let out = downpour(&[
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
    ]);
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

    let out = downpour(&["fetch", list, "--no-such-option"]);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
}

#[cfg(unix)]
#[test]
fn ctrl_c_stops_gracefully_and_reports_what_is_left() {
    let servers = Servers::start(1);
    let dir = scratch("interrupt");
    let list = dir.join("urls.txt");
    let urls: Vec<String> = (0..20)
        .map(|i| servers.url(0, &format!("/delay?ms=300&i={i}")))
        .collect();
    std::fs::write(&list, urls.join("\n")).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_downpour"))
        .args([
            "fetch",
            list.to_str().unwrap(),
            "--delay",
            "0ms",
            "--allow-all",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(800));
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
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
