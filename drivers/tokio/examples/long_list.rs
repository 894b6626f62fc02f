//! A list of any length in bounded memory: a backlog of its URLs is enqueued, then each
//! request that finishes lets the next line in, through a `Handle`, from `on_finished`.
//! The file is read as the crawl goes, and the run ends when the list does.
//!
//! ```text
//! cargo run -p downpour-tokio --example long_list -- urls.txt
//! ```

use std::io::{BufRead, BufReader};
use std::time::Duration;

use downpour_tokio::{Config, Context, Fetcher, Polite, Request, Response, Url};
use serde::{Deserialize, Serialize};

/// URLs queued or in flight at most: enough to span many hosts, so that the polite policy
/// has hosts to take turns between.
const BACKLOG: usize = 10_000;

#[derive(Serialize, Deserialize)]
struct Page {
    url: Url,
}

impl Request for Page {
    fn url(&self) -> &Url {
        &self.url
    }

    fn on_success(&mut self, _ctx: &mut Context<Self>, response: &Response) {
        println!("{} {}", response.status.as_u16(), response.url);
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args().nth(1).unwrap_or_else(|| "urls.txt".into());
    let mut pages = BufReader::new(std::fs::File::open(&path)?)
        .lines()
        .map_while(Result::ok)
        .filter_map(|line| downpour_tokio::parse_url(&line).ok())
        .map(|url| Page { url });
    let policy = Polite::new().delay(Duration::from_secs(1));
    let mut fetcher = Fetcher::new(Config::default(), policy)?;
    for page in pages.by_ref().take(BACKLOG) {
        if let Err(refused) = fetcher.enqueue(page) {
            eprintln!("skipped: {refused}");
        }
    }
    let handle = fetcher.handle();
    fetcher.on_finished(move |_finished: Page| {
        // The next line the fetcher takes (a URL it could never fetch is refused at once).
        for page in pages.by_ref() {
            match handle.enqueue(page) {
                Ok(()) => break,
                Err(refused) => eprintln!("skipped: {refused}"),
            }
        }
    });
    let stats = fetcher.run().await;
    eprintln!("{} fetched, {} failed", stats.succeeded, stats.failed);
    Ok(())
}
