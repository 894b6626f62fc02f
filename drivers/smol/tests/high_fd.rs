//! Sockets numbered 1024 or more (past select's FD_SETSIZE) connect and fetch: libcurl must
//! wait with poll(), not select(). Alone in its test binary, so the 1,100 files it holds open
//! push only its own sockets up.

use std::sync::{Arc, Mutex};

use downpour_conformance::{test_config, Probe, Servers};
use downpour_smol::{ClientOptions, Fetcher, Fifo, Proxy};

const HELD: usize = 1_100;

#[test]
fn sockets_past_fd_setsize_fetch() {
    // Room for the held files, the servers and the connections.
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    assert_eq!(
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
        0
    );
    let want = 4_096.min(limit.rlim_max);
    if limit.rlim_cur < want {
        limit.rlim_cur = want;
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0);
    }
    assert!(
        want as usize > HELD + 200,
        "RLIMIT_NOFILE hard limit too low"
    );
    let held: Vec<std::fs::File> = (0..HELD)
        .map(|_| std::fs::File::open("/dev/null").unwrap())
        .collect();

    let servers = Servers::start(2);
    let options = ClientOptions {
        proxy: Proxy::None,
        ..Default::default()
    };
    let mut fetcher = Fetcher::with_options(test_config(), Fifo::new(), options).unwrap();
    let finished = Arc::new(Mutex::new(Vec::new()));
    let sink = finished.clone();
    fetcher.on_finished(move |p: Probe| sink.lock().unwrap().push(p));
    for i in 0..40 {
        fetcher
            .enqueue(Probe::new(
                &servers.url(i % 2, &format!("/echo?i={i}")),
                i as u64,
            ))
            .unwrap();
    }
    smol::block_on(fetcher.run());

    let finished = std::mem::take(&mut *finished.lock().unwrap());
    assert_eq!(finished.len(), 40);
    for p in &finished {
        let r = p.result();
        assert!(r.ok, "{}: {} {}", p.url, r.kind, r.error);
    }
    drop(held);
}
