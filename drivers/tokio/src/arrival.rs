//! When a connection's bytes arrived: the kernel's receive timestamps.
//!
//! A host's delay counts from the end of its last response. A connection's task reads that
//! end when the runtime gets to it: in a burst (a thousand hosts connecting at once, while
//! the first responses come back) that is milliseconds after the bytes came, and every one
//! of them delays the host's next request. On Linux each read of a [`TimedTcp`] also gets
//! the time the kernel received the last bytes it read (`SO_TIMESTAMPNS`), and that time is
//! kept instead. It costs a little per read (`recvmsg` rather than `read`, and the buffer
//! zeroed), so only a client whose policy paces hosts asks for it.
//!
//! The kernel stamps in wall-clock time. The stamp's age (wall clock now minus the stamp) is
//! taken from the monotonic clock's now, and the result is held between the last time a read
//! found the socket empty (the bytes came after it) and now. Both clocks are read at that
//! time too: if they have not advanced alike since (a step of the wall clock, or a suspend,
//! which only the wall clock counts), the stamp's age means nothing and the bytes arrived
//! when they were read. Elsewhere, or without a stamp, likewise.
//!
//! A stamp is the arrival of the last segment a read returned. When a segment was lost and
//! the next one came first, the end is when that later segment (holding the response's last
//! bytes) came, before the retransmission completed it: still after the server sent its
//! last bytes, so the delay still counts from no earlier than the response's end.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use hyper_util::client::legacy::connect::{Connected, Connection};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A TCP stream that knows when the bytes of its last read arrived.
pub(crate) struct TimedTcp {
    stream: TcpStream,
    /// Whether the kernel stamps what this socket receives.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    stamped: bool,
    /// When a read last found nothing to read: whatever it reads next came after this.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    empty: Seen,
    /// When the bytes of the last read that brought any arrived, when stamps are on.
    arrived: Option<Instant>,
    /// Room for the timestamp that comes with a read.
    #[cfg(target_os = "linux")]
    control: Vec<u8>,
}

impl TimedTcp {
    /// Wraps a connected stream; with `stamp`, asks the kernel to stamp what it receives (if
    /// it cannot, or without `stamp`, reads are timed when they happen, and cost no more than
    /// a plain stream's).
    pub(crate) fn new(stream: TcpStream, stamp: bool) -> TimedTcp {
        #[cfg(target_os = "linux")]
        let stamped = stamp && linux::enable_stamps(&stream).is_ok();
        #[cfg(not(target_os = "linux"))]
        let stamped = {
            let _ = stamp;
            false
        };
        TimedTcp {
            stream,
            stamped,
            empty: Seen::now(),
            arrived: None,
            #[cfg(target_os = "linux")]
            control: if stamped {
                nix::cmsg_space!(nix::sys::time::TimeSpec)
            } else {
                Vec::new()
            },
        }
    }

    /// When the bytes of the last read that brought any arrived: `None` when stamps are off
    /// (then they arrived when they were read).
    pub(crate) fn arrived(&self) -> Option<Instant> {
        self.arrived
    }

    #[cfg(target_os = "linux")]
    fn poll_read_stamped(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        use std::os::fd::AsRawFd;
        use tokio::io::Interest;
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            std::task::ready!(self.stream.poll_read_ready(cx))?;
            let fd = self.stream.as_raw_fd();
            // Zeroed first (the kernel writes only into initialised bytes), so a read takes
            // at most 16 KiB rather than zeroing the whole of hyper's buffer every time.
            let into = buf.initialize_unfilled_to(buf.remaining().min(16 << 10));
            let control = &mut self.control;
            match self.stream.try_io(Interest::READABLE, || {
                linux::recv_stamped(fd, into, control)
            }) {
                Ok((n, stamp)) => {
                    buf.advance(n);
                    if n > 0 {
                        self.arrived = Some(linux::instant_of(stamp, &self.empty));
                    }
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Readiness is cleared; anything read from now on came after this read
                    // found the socket empty.
                    self.empty = Seen::now();
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

/// A moment by both clocks: the monotonic one, and the wall clock the kernel stamps with.
#[derive(Clone, Copy)]
struct Seen {
    mono: Instant,
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    wall: std::time::SystemTime,
}

impl Seen {
    fn now() -> Seen {
        Seen {
            mono: Instant::now(),
            wall: std::time::SystemTime::now(),
        }
    }
}

impl Connection for TimedTcp {
    fn connected(&self) -> Connected {
        self.stream.connected()
    }
}

impl AsyncRead for TimedTcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        #[cfg(target_os = "linux")]
        if this.stamped {
            return this.poll_read_stamped(cx, buf);
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TimedTcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use std::io::{self, IoSliceMut};
    use std::os::fd::RawFd;
    use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

    use nix::sys::socket::{self, sockopt, ControlMessageOwned, MsgFlags};

    use super::Seen;
    use tokio::net::TcpStream;

    pub(super) fn enable_stamps(stream: &TcpStream) -> io::Result<()> {
        socket::setsockopt(stream, sockopt::ReceiveTimestampns, &true).map_err(io::Error::from)
    }

    /// Reads into `buf`; returns how many bytes, and when the kernel received the last of
    /// them (wall clock), if it said.
    pub(super) fn recv_stamped(
        fd: RawFd,
        buf: &mut [u8],
        control: &mut [u8],
    ) -> io::Result<(usize, Option<SystemTime>)> {
        let mut iov = [IoSliceMut::new(buf)];
        let msg = socket::recvmsg::<()>(fd, &mut iov, Some(control), MsgFlags::empty())
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

    /// The instant of a wall-clock stamp, no earlier than when the socket was last seen
    /// `empty` and no later than now; now if the two clocks have not advanced alike since.
    pub(super) fn instant_of(stamp: Option<SystemTime>, empty: &Seen) -> Instant {
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
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    #[test]
    fn a_stamp_becomes_an_instant_within_its_bounds() {
        let fifty_ms = Duration::from_millis(50);
        let empty = Seen {
            mono: Instant::now() - fifty_ms,
            wall: SystemTime::now() - fifty_ms,
        };
        let ten_ms_ago = SystemTime::now() - Duration::from_millis(10);
        let at = linux::instant_of(Some(ten_ms_ago), &empty);
        let age = Instant::now() - at;
        assert!(
            age >= Duration::from_millis(10) && age < fifty_ms,
            "{age:?}"
        );
        // A stamp from before the socket was last seen empty: then, never earlier.
        let an_hour_ago = SystemTime::now() - Duration::from_secs(3600);
        assert_eq!(linux::instant_of(Some(an_hour_ago), &empty), empty.mono);
        // A stamp in the future, or none: now.
        let before = Instant::now();
        let future = SystemTime::now() + Duration::from_secs(3600);
        assert!(linux::instant_of(Some(future), &empty) >= before);
        assert!(linux::instant_of(None, &empty) >= before);
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
            assert!(linux::instant_of(Some(ten_ms_ago), &empty) >= before);
        }
    }
}
