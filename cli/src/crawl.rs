//! A crawl kept in Redis (`--redis`): seeding it once from the URL file, and counting what
//! is left. The fetcher does the rest (`Fetcher::with_redis`).
//!
//! Seeding writes the requests of the input straight into the inboxes of their hosts'
//! partitions (the layout of `downpour_common::store`, the JSON the drivers store), with
//! the crawl's settings and a marker `{prefix}:seeded`, in one `MULTI`/`EXEC` that watches
//! the marker: all or nothing, and once. A worker started with the same file while the
//! crawl is seeded, or again after a crash, resumes it instead.

use std::collections::BTreeMap;
use std::time::Duration;

use downpour_common::store::{partition_of, redacted_url, Keys, RedisOptions, FORMAT};
use redis::{Connection, Value};

use crate::input::Line;
use crate::record::Record;

/// Most values in one `RPUSH`.
const CHUNK: usize = 1000;

/// A sync connection to the crawl's Redis, for seeding and counting.
pub struct Crawl {
    options: RedisOptions,
    keys: Keys,
    connection: Connection,
}

/// The input's part in the crawl.
pub enum Seeding {
    /// This worker seeded the crawl: the records of the lines that are not URLs, and how
    /// many requests it wrote.
    Seeded {
        invalid: Vec<Record>,
        requests: usize,
    },
    /// The crawl was seeded before (by another worker, or an earlier run).
    Resumed,
}

impl Crawl {
    /// Connects, or says in one line why it cannot.
    pub fn connect(options: &RedisOptions) -> Result<Crawl, String> {
        let url = redacted_url(&options.url);
        let client = redis::Client::open(options.url.as_str())
            .map_err(|e| format!("invalid --redis URL {url}: {e}"))?;
        let connection = client
            .get_connection_with_timeout(Duration::from_secs(5))
            .and_then(|c| {
                // A server that stops answering fails the command rather than hanging.
                c.set_read_timeout(Some(Duration::from_secs(60)))?;
                c.set_write_timeout(Some(Duration::from_secs(60)))?;
                Ok(c)
            })
            .map_err(|e| format!("cannot reach Redis at {url}: {e}"))?;
        Ok(Crawl {
            keys: Keys::new(&options.prefix, options.partitions),
            options: options.clone(),
            connection,
        })
    }

    /// The marker of a seeded crawl: `{prefix}:seeded`, next to `{prefix}:meta`.
    fn marker(&self) -> String {
        format!("{{{}}}:seeded", self.options.prefix)
    }

    fn failed(&self, e: redis::RedisError) -> String {
        format!(
            "Redis at {} failed while seeding the crawl `{}`: {e}",
            redacted_url(&self.options.url),
            self.options.prefix
        )
    }

    /// Whether the crawl is seeded already; an error if it was started with another
    /// number of partitions.
    pub fn is_seeded(&mut self) -> Result<bool, String> {
        let marker = self.marker();
        let (exists, stored): (bool, Option<String>) = redis::pipe()
            .cmd("EXISTS")
            .arg(&marker)
            .cmd("HGET")
            .arg(self.keys.meta())
            .arg("partitions")
            .query(&mut self.connection)
            .map_err(|e| self.failed(e))?;
        match stored {
            Some(stored) if stored != self.options.partitions.to_string() => {
                Err(self.mismatch(&stored))
            }
            _ => Ok(exists),
        }
    }

    fn mismatch(&self, stored: &str) -> String {
        format!(
            "the crawl `{}` was started with --partitions {stored}; this worker was given {}",
            self.options.prefix, self.options.partitions
        )
    }

    /// Seeds the crawl with the lines of the input, unless it is seeded already (checked
    /// again inside the transaction: of several workers started together, one seeds).
    pub fn seed(&mut self, lines: Vec<Line>) -> Result<Seeding, String> {
        let mut invalid = Vec::new();
        let mut by_partition: BTreeMap<u32, Vec<String>> = BTreeMap::new();
        let mut requests = 0;
        for line in lines {
            match line {
                Line::Invalid(record) => invalid.push(record),
                Line::Request(request) => {
                    let partition = partition_of(
                        request.url.host_str().unwrap_or(""),
                        self.options.partitions,
                    );
                    let json = serde_json::to_string(&request)
                        .map_err(|e| format!("cannot serialize line {}: {e}", request.line))?;
                    by_partition.entry(partition).or_default().push(json);
                    requests += 1;
                }
            }
        }
        let marker = self.marker();
        let meta = self.keys.meta();
        let keys = self.keys.clone();
        let partitions = self.options.partitions;
        let outcome = redis::transaction(
            &mut self.connection,
            &[&marker, &meta],
            |connection, pipe| {
                let seeded: bool = redis::cmd("EXISTS").arg(&marker).query(connection)?;
                if seeded {
                    return Ok(Some(Err(None)));
                }
                let stored: Option<String> = redis::cmd("HGET")
                    .arg(&meta)
                    .arg("partitions")
                    .query(connection)?;
                if let Some(stored) = stored.filter(|s| *s != partitions.to_string()) {
                    return Ok(Some(Err(Some(stored))));
                }
                pipe.cmd("HSETNX")
                    .arg(&meta)
                    .arg("format")
                    .arg(FORMAT)
                    .ignore();
                pipe.cmd("HSETNX")
                    .arg(&meta)
                    .arg("partitions")
                    .arg(partitions)
                    .ignore();
                for (partition, items) in &by_partition {
                    let inbox = keys.partition(*partition).inbox;
                    for chunk in items.chunks(CHUNK) {
                        pipe.cmd("RPUSH").arg(&inbox).arg(chunk).ignore();
                    }
                }
                pipe.cmd("SET").arg(&marker).arg(requests).ignore();
                // Nil: the marker or the settings changed since WATCH; look again.
                let reply: Value = pipe.query(connection)?;
                Ok((reply != Value::Nil).then_some(Ok(())))
            },
        )
        .map_err(|e| self.failed(e))?;
        match outcome {
            Ok(()) => Ok(Seeding::Seeded { invalid, requests }),
            Err(None) => Ok(Seeding::Resumed),
            Err(Some(stored)) => Err(self.mismatch(&stored)),
        }
    }

    /// How many requests the whole crawl still holds (stored and in inboxes, all partitions).
    pub fn unfinished(&mut self) -> Result<u64, String> {
        let mut pipe = redis::pipe();
        for p in 0..self.options.partitions {
            let keys = self.keys.partition(p);
            pipe.cmd("HLEN").arg(&keys.requests);
            pipe.cmd("LLEN").arg(&keys.inbox);
        }
        let counts: Vec<u64> = pipe
            .query(&mut self.connection)
            .map_err(|e| format!("cannot read the crawl's size: {e}"))?;
        Ok(counts.iter().sum())
    }

    /// Connects again (for the end of a long run, when the first connection may be gone).
    pub fn reconnect(&mut self) -> Result<(), String> {
        *self = Crawl::connect(&self.options)?;
        Ok(())
    }
}
