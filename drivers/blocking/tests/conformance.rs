//! The driver conformance suite, run on the blocking driver.

use std::sync::{Arc, Mutex};

use downpour_blocking::{ClientOptions, Fetcher, Proxy, Scheduler, Url};
use downpour_conformance::{Driver, Probe, Run, RunOutcome};

#[derive(Clone)]
struct Blocking;

impl Driver for Blocking {
    fn run(&self, run: Run) -> RunOutcome {
        let proxy = match run.options.proxy {
            None => Proxy::None,
            Some(rules) => Proxy::Rules {
                http: rules.http.map(|u| Url::parse(&u).expect("proxy URL")),
                https: rules.https.map(|u| Url::parse(&u).expect("proxy URL")),
                no: rules.no,
            },
        };
        let options = ClientOptions {
            proxy,
            extra_root_certificates: run.options.extra_root_certificates,
            ..ClientOptions::default()
        };
        let scheduler = Scheduler::with_policy(run.config, run.policy).expect("config");
        let mut fetcher = Fetcher::from_scheduler(scheduler, options).expect("fetcher");
        let finished = Arc::new(Mutex::new(Vec::new()));
        let handle = fetcher.handle();
        let stop_after = run.options.stop_after;
        let sink = finished.clone();
        fetcher.on_finished(move |probe: Probe| {
            let mut finished = sink.lock().unwrap();
            finished.push(probe);
            if stop_after == Some(finished.len()) {
                handle.stop();
            }
        });
        let refused = fetcher
            .extend(run.requests)
            .into_iter()
            .map(|e| {
                let why = e.reason.to_string();
                (e.request, why)
            })
            .collect();
        let stats = fetcher.run();
        let unfinished = fetcher.take_unfinished();
        let finished = std::mem::take(&mut *finished.lock().unwrap());
        RunOutcome {
            finished,
            refused,
            unfinished,
            stats,
        }
    }
}

downpour_conformance::suite!(Blocking);
