//! When a connection's bytes arrived: the kernel's receive timestamps (Linux).
//!
//! A host's delay counts from the end of its last response. A driver reads that end when it
//! gets to it: in a burst (a thousand hosts connecting at once, while the first responses
//! come back) that is milliseconds after the bytes came, and every one of them delays the
//! host's next request. With `SO_TIMESTAMPNS` on a socket, each `recvmsg` also gets the time
//! the kernel received the last bytes it read, and the drivers keep that time instead.
//!
//! The kernel stamps in wall-clock time. The stamp's age (wall clock now minus the stamp) is
//! taken from the monotonic clock's now, and the result is held between the last time the
//! reader knew the socket held nothing of what it reads (a read found it empty, or the
//! request went out: the bytes came after it) and now. Both clocks are read at that time
//! too: if they have not advanced alike since (a step of the wall clock, or a suspend, which
//! only the wall clock counts), the stamp's age means nothing and the bytes arrived when
//! they were read. Without a stamp, likewise.
//!
//! A stamp is the arrival of the last segment a read returned. When a segment was lost and
//! the next one came first, the end is when that later segment (holding the response's last
//! bytes) came, before the retransmission completed it: still after the server sent its
//! last bytes, so the delay still counts from no earlier than the response's end.

use std::io::{self, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::socket::{self, sockopt, ControlMessageOwned, MsgFlags};

/// A moment by both clocks: the monotonic one, and the wall clock the kernel stamps with.
#[derive(Clone, Copy, Debug)]
pub struct Seen {
    mono: Instant,
    wall: SystemTime,
}

impl Seen {
    /// Now.
    pub fn now() -> Seen {
        Seen {
            mono: Instant::now(),
            wall: SystemTime::now(),
        }
    }
}

/// Asks the kernel to stamp what this socket receives.
pub fn enable_stamps(socket: &impl AsFd) -> io::Result<()> {
    socket::setsockopt(socket, sockopt::ReceiveTimestampns, &true).map_err(io::Error::from)
}

/// Room for the stamp that comes with a read: pass it to every [`recv_stamped`].
pub fn control_buffer() -> Vec<u8> {
    nix::cmsg_space!(nix::sys::time::TimeSpec)
}

/// Reads into `buf` (one `recvmsg`); returns how many bytes, and when the kernel received the
/// last of them (wall clock), if it said. `control` comes from [`control_buffer`].
pub fn recv_stamped(
    socket: &impl AsRawFd,
    buf: &mut [u8],
    control: &mut [u8],
) -> io::Result<(usize, Option<SystemTime>)> {
    let mut iov = [IoSliceMut::new(buf)];
    let msg = socket::recvmsg::<()>(
        socket.as_raw_fd(),
        &mut iov,
        Some(control),
        MsgFlags::empty(),
    )
    .map_err(io::Error::from)?;
    let stamp = msg.cmsgs().ok().and_then(|mut messages| {
        messages.find_map(|m| match m {
            ControlMessageOwned::ScmTimestampns(ts) => {
                let secs = u64::try_from(ts.tv_sec()).ok()?;
                let nanos = u32::try_from(ts.tv_nsec()).ok()?;
                // No stamp comes as zero (bytes that came before stamps were asked for).
                if (secs, nanos) == (0, 0) || nanos >= 1_000_000_000 {
                    return None;
                }
                UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
            }
            _ => None,
        })
    });
    Ok((msg.bytes, stamp))
}

/// The instant of a wall-clock stamp, no earlier than `empty` (when the socket was last known
/// to hold none of these bytes) and no later than now; now if the two clocks have not
/// advanced alike since.
pub fn instant_of(stamp: Option<SystemTime>, empty: &Seen) -> Instant {
    // The wall clock first: its now is then the earlier one, the age comes out a little
    // short, and the arrival a little late rather than early.
    let wall = SystemTime::now();
    let now = Instant::now();
    let elapsed = now.saturating_duration_since(empty.mono);
    // Within a millisecond, and what NTP's slewing (at most 0.05%) can account for.
    let slack = Duration::from_millis(1) + elapsed / 1000;
    let alike = wall
        .duration_since(empty.wall)
        .is_ok_and(|on_the_wall| on_the_wall.abs_diff(elapsed) <= slack);
    if !alike {
        return now;
    }
    let arrived = stamp
        .and_then(|s| wall.duration_since(s).ok())
        .and_then(|age| now.checked_sub(age))
        .unwrap_or(now);
    arrived.max(empty.mono).min(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_becomes_an_instant_within_its_bounds() {
        let fifty_ms = Duration::from_millis(50);
        let empty = Seen {
            mono: Instant::now() - fifty_ms,
            wall: SystemTime::now() - fifty_ms,
        };
        let ten_ms_ago = SystemTime::now() - Duration::from_millis(10);
        let at = instant_of(Some(ten_ms_ago), &empty);
        let age = Instant::now() - at;
        assert!(
            age >= Duration::from_millis(10) && age < fifty_ms,
            "{age:?}"
        );
        // A stamp from before the socket was last seen empty: then, never earlier.
        let an_hour_ago = SystemTime::now() - Duration::from_secs(3600);
        assert_eq!(instant_of(Some(an_hour_ago), &empty), empty.mono);
        // A stamp in the future, or none: now.
        let before = Instant::now();
        let future = SystemTime::now() + Duration::from_secs(3600);
        assert!(instant_of(Some(future), &empty) >= before);
        assert!(instant_of(None, &empty) >= before);
    }

    /// When the wall clock stepped (or the machine slept) since the socket was seen empty, a
    /// stamp's age says nothing: the bytes arrived when they were read.
    #[test]
    fn a_stamp_is_not_trusted_across_a_step_of_the_wall_clock() {
        let fifty_ms = Duration::from_millis(50);
        let ten_ms_ago = SystemTime::now() - Duration::from_millis(10);
        for wall in [
            SystemTime::now() - fifty_ms - Duration::from_secs(2),
            SystemTime::now() - fifty_ms + Duration::from_secs(2),
            SystemTime::now() + Duration::from_secs(3600),
        ] {
            let empty = Seen {
                mono: Instant::now() - fifty_ms,
                wall,
            };
            let before = Instant::now();
            assert!(instant_of(Some(ten_ms_ago), &empty) >= before);
        }
    }

    /// Bytes that waited in the socket before they were read are stamped when they came.
    #[test]
    fn bytes_read_late_are_stamped_when_they_came() {
        use std::io::Write;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        enable_stamps(&client).unwrap();
        let mut control = control_buffer();
        let mut buf = [0u8; 64];
        // The first socket to ask turns stamping on for the whole system, a moment later:
        // until then bytes come unstamped.
        let mut unstamped = 0;
        loop {
            server.write_all(b".").unwrap();
            let (n, stamp) = recv_stamped(&client, &mut buf, &mut control).unwrap();
            assert_eq!(&buf[..n], b".");
            if stamp.is_some() {
                break;
            }
            unstamped += 1;
            assert!(unstamped < 1000, "the kernel never stamped a read");
            std::thread::sleep(Duration::from_millis(1));
        }
        let empty = Seen::now();
        server.write_all(b"hello").unwrap();
        std::thread::sleep(Duration::from_millis(60));
        let (n, stamp) = recv_stamped(&client, &mut buf, &mut control).unwrap();
        assert_eq!(&buf[..n], b"hello");
        let age = Instant::now() - instant_of(stamp, &empty);
        assert!(age >= Duration::from_millis(50), "stamped {age:?} ago");
    }
}
