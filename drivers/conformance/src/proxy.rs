//! A real forward proxy for the tests: Debian's `tinyproxy`, started on a free port.

use std::net::{Ipv4Addr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running tinyproxy. Dropping it stops it.
pub struct Tinyproxy {
    child: Child,
    port: u16,
    dir: PathBuf,
    credentials: Option<(String, String)>,
}

impl Drop for Tinyproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Why the proxy cases cannot run.
pub fn missing_reason() -> Option<String> {
    match Command::new("tinyproxy").arg("-v").output() {
        Ok(_) => None,
        Err(e) => Some(format!(
            "tinyproxy is not on PATH ({e}); install it (Debian: apt-get install tinyproxy)"
        )),
    }
}

impl Tinyproxy {
    /// Starts tinyproxy on 127.0.0.1 and a free port, allowing CONNECT to any port, and
    /// requiring these credentials when given. Returns `None` (after printing why, loudly)
    /// when tinyproxy is not installed and `CI` is unset; panics in CI.
    pub fn start(credentials: Option<(&str, &str)>) -> Option<Tinyproxy> {
        if let Some(reason) = missing_reason() {
            if std::env::var_os("CI").is_some() {
                panic!("{reason}: the proxy cases must run in CI");
            }
            eprintln!("\n!!!!! SKIPPED: {reason} !!!!!\n");
            return None;
        }
        let port = crate::free_port();
        let dir =
            std::env::temp_dir().join(format!("downpour-tinyproxy-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("proxy directory");
        let mut conf = format!(
            "Port {port}\nListen 127.0.0.1\nTimeout 60\nMaxClients 200\nAllow 127.0.0.0/8\n\
             LogFile \"{log}\"\nLogLevel Info\nPidFile \"{pid}\"\nViaProxyName \"tinyproxy\"\n",
            log = dir.join("tinyproxy.log").display(),
            pid = dir.join("tinyproxy.pid").display(),
        );
        // No ConnectPort line: CONNECT is allowed to every port.
        if let Some((user, pass)) = credentials {
            conf.push_str(&format!("BasicAuth {user} {pass}\n"));
        }
        let conf_path = dir.join("tinyproxy.conf");
        std::fs::write(&conf_path, conf).expect("write the proxy config");
        let child = Command::new("tinyproxy")
            .arg("-d")
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tinyproxy");
        let proxy = Tinyproxy {
            child,
            port,
            dir,
            credentials: credentials.map(|(u, p)| (u.to_string(), p.to_string())),
        };
        // Ready once it accepts connections.
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "tinyproxy did not start listening within 20 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(proxy)
    }

    /// The proxy's URL, with its credentials when it has some.
    pub fn url(&self) -> String {
        match &self.credentials {
            Some((u, p)) => format!("http://{u}:{p}@127.0.0.1:{}", self.port),
            None => format!("http://127.0.0.1:{}", self.port),
        }
    }

    /// The proxy's URL without credentials.
    pub fn url_without_credentials(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// What tinyproxy logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("tinyproxy.log")).unwrap_or_default()
    }
}
