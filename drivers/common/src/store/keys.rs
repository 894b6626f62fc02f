//! Where a crawl lives in Redis: the key layout and the partition of each host.
//!
//! For a prefix `P` and `N` partitions:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{P}:meta` | hash | `format` and `partitions`, fixed when the crawl starts |
//! | `{P:p}:requests` | hash | every unfinished request of partition `p`: id → entry |
//! | `{P:p}:inbox` | list | entries for `p` sent by others (or enqueued), not yet taken |
//! | `{P:p}:lease` | string | the token of the worker running `p`, with a time to live |
//! | `{P:p}:epoch` | integer | how many times `p` was taken: tells a worker whether someone else held it |
//! | `{P:p}:seq` | integer | ids of requests taken from the inbox |
//! | `{P:p}:rejected` | hash | entries that could not be read back (id → the text), for inspection |
//!
//! An entry is the JSON of a request, or [`HAND_OFF`] followed by the JSON of a
//! [`HandOff`](downpour::HandOff): a request that a redirect took from another partition to a
//! host of `p`, with where it is and what it visited.
//!
//! All keys of one partition share the hash tag `{P:p}`, so on Redis Cluster one
//! partition lives on one node and its scripts touch one slot.

pub use downpour::partition_of;

/// The version of this layout, stored in `{P}:meta`.
pub const FORMAT: &str = "2";

/// The layouts this version reads: format 1 is format 2 without hand-offs.
pub const READABLE_FORMATS: [&str; 2] = ["1", "2"];

/// The start of an entry that holds a hand-off rather than a request (no JSON text starts
/// with it).
pub const HAND_OFF: &str = "hand-off ";

/// The keys of one crawl (one prefix).
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
    partitions: u32,
}

/// The keys of one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionKeys {
    /// Unfinished requests (hash).
    pub requests: String,
    /// Requests sent here, not yet taken (list).
    pub inbox: String,
    /// The running worker's token (string with a TTL).
    pub lease: String,
    /// Times the partition was taken (integer).
    pub epoch: String,
    /// Ids for requests taken from the inbox (integer).
    pub seq: String,
    /// Entries that could not be read back (hash).
    pub rejected: String,
}

impl Keys {
    /// The layout for `prefix` (checked by [`RedisOptions::validate`](super::RedisOptions::validate)).
    pub fn new(prefix: &str, partitions: u32) -> Keys {
        Keys {
            prefix: prefix.to_string(),
            partitions,
        }
    }

    /// How many partitions the crawl has.
    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// The crawl's settings (hash).
    pub fn meta(&self) -> String {
        format!("{{{}}}:meta", self.prefix)
    }

    /// The keys of partition `p`.
    pub fn partition(&self, p: u32) -> PartitionKeys {
        let tag = format!("{{{}:{p}}}", self.prefix);
        PartitionKeys {
            requests: format!("{tag}:requests"),
            inbox: format!("{tag}:inbox"),
            lease: format!("{tag}:lease"),
            epoch: format!("{tag}:epoch"),
            seq: format!("{tag}:seq"),
            rejected: format!("{tag}:rejected"),
        }
    }

    /// The partition that owns `host`.
    pub fn partition_of(&self, host: &str) -> u32 {
        partition_of(host, self.partitions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_a_partition_share_one_hash_tag() {
        let keys = Keys::new("crawl", 4);
        let p = keys.partition(3);
        for key in [
            &p.requests,
            &p.inbox,
            &p.lease,
            &p.epoch,
            &p.seq,
            &p.rejected,
        ] {
            assert!(key.starts_with("{crawl:3}:"), "{key}");
        }
        assert_eq!(keys.meta(), "{crawl}:meta");
    }

    #[test]
    fn partitions_are_stable_and_spread() {
        // Fixed values: changing the hash would split a running crawl's hosts differently.
        assert_eq!(partition_of("example.com", 1), 0);
        assert_eq!(partition_of("example.com", 7), 1);
        assert_eq!(
            partition_of("example.com", 7),
            partition_of("EXAMPLE.com", 7)
        );
        let mut counts = [0u32; 4];
        for i in 0..4000 {
            counts[partition_of(&format!("host{i}.test"), 4) as usize] += 1;
        }
        for count in counts {
            assert!((800..1200).contains(&count), "{counts:?}");
        }
    }
}
