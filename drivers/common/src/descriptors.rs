//! Room for a crawl's connections in the process's table of file descriptors, made once
//! before the crawl rather than while it opens its connections.
//!
//! Linux grows a process's descriptor table by doubling as descriptors are allocated, and
//! in a process of several threads each growth waits for an RCU grace period (tens of
//! milliseconds on a busy machine) while the thread that opens the socket is stalled. A
//! crawl that opens a thousand connections at once would stall that way two or three
//! times in its first round, and every connection of the round waits behind the stall.
//! One descriptor duplicated at the number the crawl will reach, then closed, grows the
//! table in one step; it never shrinks.

/// Descriptors a process holds besides the crawl's connections: its standard streams,
/// files, a Redis connection or two, the runtime's own.
pub const MARGIN: usize = 64;

/// Grows the descriptor table to hold descriptor numbers up to `connections` plus a margin
/// (the few a process has open besides), within the limit on open files (`ulimit -n`).
/// The target is absolute: several fetchers in one process each reserving their own
/// share reserve only the largest share, so a program running several calls it once with
/// the total, before it starts threads (then the growth costs nothing; later, it waits for
/// one grace period, once, where it is called). Best effort, and cheap when the table is
/// already that large: no descriptor in use is touched, and a failure is ignored (the
/// table then grows as it would have).
pub fn reserve(connections: usize) {
    #[cfg(unix)]
    {
        use rustix::process::{getrlimit, Resource};
        let wanted = connections.saturating_add(MARGIN) as u64;
        // A number at or beyond the soft limit would fail: the table never needs to pass it.
        let limit = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
        let Ok(highest) = i32::try_from(wanted.min(limit.saturating_sub(1))) else {
            return;
        };
        if highest <= 0 {
            return;
        }
        // Standard error is open in any process worth the effort; dropping the copy closes it.
        let _ = rustix::io::fcntl_dupfd_cloexec(std::io::stderr(), highest);
    }
    #[cfg(not(unix))]
    let _ = connections;
}

/// Raises the process's soft limit on open files (`ulimit -n`) to `wanted`, as far as the
/// hard limit allows, and returns the limit in force after (`None`: unlimited, or unknown on
/// this platform). For an application to call, as the `downpour` command does: a library
/// does not change the limits of the process it runs in.
pub fn raise_limit(wanted: u64) -> Option<u64> {
    #[cfg(unix)]
    {
        use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
        let limits = getrlimit(Resource::Nofile);
        let current = limits.current?;
        if current >= wanted {
            return Some(current);
        }
        let raised = limits.maximum.map_or(wanted, |hard| hard.min(wanted));
        let new = Rlimit {
            current: Some(raised),
            maximum: limits.maximum,
        };
        // Read back: some systems cap the limit below the hard one (macOS at OPEN_MAX),
        // silently or with an error.
        let _ = setrlimit(Resource::Nofile, new);
        getrlimit(Resource::Nofile).current
    }
    #[cfg(not(unix))]
    {
        let _ = wanted;
        None
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// The table's size, from `/proc/self/status` (`FDSize`).
    fn table_size() -> usize {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("FDSize:")).unwrap();
        line["FDSize:".len()..].trim().parse().unwrap()
    }

    #[test]
    fn the_table_is_grown_at_once_and_nothing_stays_open() {
        let before = table_size();
        let open_before = std::fs::read_dir("/proc/self/fd").unwrap().count();
        let connections = before * 4;
        reserve(connections);
        let after = table_size();
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .current
            .unwrap_or(u64::MAX) as usize;
        assert!(
            after >= (connections + MARGIN).min(limit - 1),
            "table of {before} grown to {after} for {connections} connections (limit {limit})"
        );
        assert_eq!(
            std::fs::read_dir("/proc/self/fd").unwrap().count(),
            open_before,
            "the copy is closed"
        );
    }

    #[test]
    fn the_limit_is_raised_as_far_as_the_hard_limit_and_never_lowered() {
        use rustix::process::{getrlimit, Resource};
        let before = getrlimit(Resource::Nofile);
        let Some(current) = before.current else {
            return; // Unlimited: nothing to raise.
        };
        assert_eq!(raise_limit(current / 2), Some(current), "never lowered");
        let hard = before.maximum.unwrap_or(u64::MAX);
        let wanted = current.saturating_add(1);
        let now = raise_limit(wanted).unwrap_or(u64::MAX);
        assert_eq!(now, wanted.min(hard));
        assert_eq!(getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX), now);
    }
}
