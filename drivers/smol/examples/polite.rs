//! The original downpour example: fetch the URLs listed in a file, politely (one second
//! between requests to a host), printing each URL fetched.
//!
//! ```text
//! cargo run -p downpour-smol --example polite_smol -- urls.txt
//! ```

use std::time::Duration;

use downpour_smol::{Config, Context, Fetcher, Polite, Request, Response, Url};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Page {
    url: Url,
}

impl Request for Page {
    fn url(&self) -> &Url {
        &self.url
    }

    fn on_success(&mut self, _ctx: &mut Context<Self>, response: &Response) {
        println!("Successfully fetched {}", response.url);
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args().nth(1).unwrap_or_else(|| "urls.txt".into());
    let policy = Polite::new().delay(Duration::from_secs(1)).allow_all(true);
    let mut fetcher = Fetcher::new(Config::default(), policy)?;
    for line in std::fs::read_to_string(&path)?.lines() {
        match downpour_smol::parse_url(line) {
            Ok(url) => {
                fetcher.enqueue(Page { url })?;
            }
            Err(e) if !line.trim().is_empty() => eprintln!("skipped: {e}"),
            Err(_) => {}
        }
    }
    let stats = smol::block_on(fetcher.run());
    eprintln!("{} fetched, {} failed", stats.succeeded, stats.failed);
    Ok(())
}
