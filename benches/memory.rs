//! Memory the core holds per queued request, measured with a counting global allocator.
//!
//! 1,000,000 requests over 100,000 hosts are enqueued into a stopped scheduler (so that all
//! of them stay queued: nothing is in flight and no action is pending). The figure is
//!
//! ```text
//! (live heap bytes after enqueueing − live heap bytes before − the URLs' own heap bytes) / 1,000,000
//! ```
//!
//! What is counted: every byte the core allocates for the requests (its slab of entries,
//! which holds each request *inline* — so the `Req` struct, i.e. the `Url` struct's 88
//! bytes, counts as core memory —, the policy's queues, the host table, robots.txt state),
//! including spare capacity of its `Vec`s and hash tables. What is not: the heap buffer of
//! each URL's serialization (`Url::parse`'s `String`, counted allocation by allocation as
//! the URLs are built), the allocator's own per-block overhead (shown apart, estimated
//! for glibc malloc), and the scheduler struct itself (on the stack).
//!
//! Run with `cargo bench --bench memory`.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use common::{epoch, scheduler, url, Make, Req};
use downpour::{Fifo, Polite, Scheduler};

const REQUESTS: usize = 1_000_000;
const HOSTS: usize = 100_000;
const TARGET: f64 = 250.0;

/// Counts live bytes (as requested), live blocks, and a glibc-style estimate of the
/// footprint; remembers the large blocks so the big tables can be named.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static BLOCKS: AtomicUsize = AtomicUsize::new(0);
static FOOTPRINT: AtomicUsize = AtomicUsize::new(0);

/// Blocks of at least this many bytes are tracked one by one.
const LARGE: usize = 256 << 10;
const SLOTS: usize = 64;
static LARGE_PTR: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];
static LARGE_SIZE: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];

/// glibc malloc: an 8-byte header, 16-byte granules, 32 bytes at least.
fn footprint(size: usize) -> usize {
    ((size + 8).div_ceil(16) * 16).max(32)
}

fn added(ptr: *mut u8, size: usize) {
    let live = LIVE.fetch_add(size, Relaxed) + size;
    PEAK.fetch_max(live, Relaxed);
    BLOCKS.fetch_add(1, Relaxed);
    FOOTPRINT.fetch_add(footprint(size), Relaxed);
    if size >= LARGE {
        for i in 0..SLOTS {
            if LARGE_PTR[i]
                .compare_exchange(0, ptr as usize, Relaxed, Relaxed)
                .is_ok()
            {
                LARGE_SIZE[i].store(size, Relaxed);
                break;
            }
        }
    }
}

fn removed(ptr: *mut u8, size: usize) {
    LIVE.fetch_sub(size, Relaxed);
    BLOCKS.fetch_sub(1, Relaxed);
    FOOTPRINT.fetch_sub(footprint(size), Relaxed);
    if size >= LARGE {
        for i in 0..SLOTS {
            if LARGE_PTR[i]
                .compare_exchange(ptr as usize, 0, Relaxed, Relaxed)
                .is_ok()
            {
                LARGE_SIZE[i].store(0, Relaxed);
                break;
            }
        }
    }
}

// SAFETY: every call is forwarded to `System` unchanged; the counters are bookkeeping only.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            added(ptr, layout.size());
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            added(ptr, layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        removed(ptr, layout.size());
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            removed(ptr, layout.size());
            added(new, new_size);
        }
        new
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

#[derive(Clone, Copy)]
struct Snapshot {
    live: usize,
    blocks: usize,
    footprint: usize,
}

fn snapshot() -> Snapshot {
    Snapshot {
        live: LIVE.load(Relaxed),
        blocks: BLOCKS.load(Relaxed),
        footprint: FOOTPRINT.load(Relaxed),
    }
}

fn large_blocks() -> Vec<usize> {
    let mut sizes: Vec<usize> = LARGE_SIZE
        .iter()
        .map(|s| s.load(Relaxed))
        .filter(|&s| s > 0)
        .collect();
    sizes.sort_unstable_by(|a, b| b.cmp(a));
    sizes
}

fn measure(name: &str, mut scheduler: Scheduler<Req>) {
    let now = epoch();
    // Nothing starts: every request stays queued.
    scheduler.stop();
    let large_before = large_blocks();
    let before = snapshot();
    PEAK.store(before.live, Relaxed);
    let mut url_bytes = 0usize;
    let mut url_blocks = 0usize;
    let mut url_footprint = 0usize;
    for i in 0..REQUESTS {
        let a = snapshot();
        let url = url(i, HOSTS);
        let b = snapshot();
        url_bytes += b.live - a.live;
        url_blocks += b.blocks - a.blocks;
        url_footprint += b.footprint - a.footprint;
        scheduler.enqueue(now, Req { url }).expect("valid request");
    }
    let after = snapshot();
    let peak = PEAK.load(Relaxed);
    let stats = scheduler.stats();
    assert_eq!(stats.unfinished, REQUESTS);
    assert_eq!(stats.in_flight, 0);

    let n = REQUESTS as f64;
    let core_bytes = after.live - before.live - url_bytes;
    let core_blocks = after.blocks - before.blocks - url_blocks;
    let core_footprint = after.footprint - before.footprint - url_footprint;
    let mut large = large_blocks();
    for b in &large_before {
        if let Some(i) = large.iter().position(|s| s == b) {
            large.remove(i);
        }
    }
    let large_total: usize = large.iter().sum();
    let per_request = core_bytes as f64 / n;

    println!("{name}");
    println!(
        "  queued: {} requests over {} hosts ({} waiting for robots.txt, {} queued in the policy)",
        stats.unfinished, stats.hosts, stats.waiting_robots, stats.queued
    );
    println!(
        "  URL heap (not counted):  {:>12} B in {} blocks = {:.1} B/request",
        url_bytes,
        url_blocks,
        url_bytes as f64 / n
    );
    println!(
        "  core, requested bytes:   {:>12} B in {} blocks = {:.1} B/request   <- the figure",
        core_bytes, core_blocks, per_request
    );
    println!(
        "    of which blocks >= {} KiB: {} B = {:.1} B/request: {:?}",
        LARGE >> 10,
        large_total,
        large_total as f64 / n,
        large
    );
    // The slab grows by doubling, so its block is a power of two of slots (requests and
    // robots.txt jobs) times the slot size.
    let entries = stats.unfinished + stats.robots_fetches as usize;
    let slots = entries.next_power_of_two();
    if let Some(&slab) = large.first().filter(|&&b| b % slots == 0) {
        println!(
            "    the largest is the slab (inferred): {} slots x {} B for {} entries ({:.1}% spare) = {:.1} B/request",
            slots,
            slab / slots,
            entries,
            100.0 * (slots - entries) as f64 / slots as f64,
            slab as f64 / n
        );
    }
    println!(
        "    of which smaller blocks:  {} B = {:.1} B/request ({:.2} blocks/request)",
        core_bytes - large_total,
        (core_bytes - large_total) as f64 / n,
        core_blocks as f64 / n
    );
    println!(
        "  core, est. glibc footprint (with block headers): {:.1} B/request",
        core_footprint as f64 / n
    );
    println!(
        "  peak during enqueueing (growth of tables): {:.1} B/request above the start, URLs included",
        (peak - before.live) as f64 / n
    );
    println!(
        "  target <= {TARGET} B/request: {}",
        if per_request <= TARGET {
            "met"
        } else {
            "MISSED"
        }
    );
    println!();
}

fn main() {
    // `cargo bench` passes `--bench`; a filter, if given, picks cases by name.
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let selected = |name: &str| filter.is_empty() || filter.iter().any(|f| name.contains(f));
    println!(
        "size_of::<Req>() = {} (inline in the core's slab, counted as core memory)",
        std::mem::size_of::<Req>()
    );
    println!();
    let cases: [(&str, Make); 3] = [
        ("polite_allow_all", || {
            scheduler(Polite::new().allow_all(true))
        }),
        // robots.txt enforced: each host's requests wait behind its robots.txt fetch.
        ("polite_robots", || scheduler(Polite::new())),
        ("fifo", || scheduler(Fifo::new())),
    ];
    for (name, make) in cases {
        if selected(name) {
            measure(&format!("{name}: 1M queued over 100k hosts"), make());
        }
    }
}
