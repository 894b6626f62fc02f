//! When a connection's bytes arrived: the kernel's receive timestamps.
//!
//! A host's delay counts from the end of its last response. A connection's task reads that
//! end when the runtime gets to it: in a burst (a thousand hosts connecting at once, while
//! the first responses come back) that is milliseconds after the bytes came, and every one
//! of them delays the host's next request. On Linux each read of a [`TimedTcp`] also gets
//! the time the kernel received the last bytes it read (`SO_TIMESTAMPNS`), and that time is
//! kept instead. It costs a little per read (`recvmsg` rather than `read`, and what it reads
//! into zeroed first), so only a client whose policy paces hosts asks for it.
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
    /// How much of the reader's buffer a stamped read zeroes and reads into: see
    /// [`FIRST_WINDOW`].
    #[cfg(target_os = "linux")]
    window: usize,
}

/// A stamped read zeroes what it reads into first (the kernel writes only into initialised
/// bytes): a page to begin with, doubled each time a read fills it, up to [`MAX_WINDOW`]. A
/// small response then costs a page of zeroing rather than the 8 KiB or more that hyper's
/// buffer has free, and a large body is read [`MAX_WINDOW`] at a time. The window is the
/// connection's and does not shrink: after a large body, each read zeroes [`MAX_WINDOW`].
#[cfg(target_os = "linux")]
const FIRST_WINDOW: usize = 4 << 10;
#[cfg(target_os = "linux")]
const MAX_WINDOW: usize = 16 << 10;

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
            #[cfg(target_os = "linux")]
            window: FIRST_WINDOW,
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
            let into = buf.initialize_unfilled_to(buf.remaining().min(self.window));
            let asked = into.len();
            let control = &mut self.control;
            let mut short = None;
            let read = self.stream.try_io(Interest::READABLE, || {
                let (n, stamp) = linux::recv_stamped(fd, into, control)?;
                if n > 0 && n < asked {
                    // Fewer bytes than asked for: the read drained the socket (bytes that
                    // come later raise a new edge). Told to tokio as WouldBlock, so that it
                    // clears the readiness (as its own streams do after a short read, and
                    // not if an event came meanwhile) and the next read waits for the
                    // reactor rather than finding out with a syscall.
                    short = Some((n, stamp));
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                Ok((n, stamp))
            });
            let (n, stamp) = match (read, short) {
                (_, Some(short)) => short,
                (Ok(read), None) => read,
                (Err(e), None) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Readiness is cleared (unless an event came meanwhile); anything read
                    // from now on came after this read found the socket empty.
                    self.empty = Seen::now();
                    continue;
                }
                (Err(e), None) if e.kind() == io::ErrorKind::Interrupted => continue,
                (Err(e), None) => return Poll::Ready(Err(e)),
            };
            buf.advance(n);
            if n > 0 {
                // Bounded by the last time the socket was seen empty, before this read.
                self.arrived = Some(linux::instant_of(stamp, &self.empty));
                if n == asked {
                    self.window = (self.window * 2).min(MAX_WINDOW);
                }
            }
            if short.is_some() {
                self.empty = Seen::now();
            }
            return Poll::Ready(Ok(()));
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
        // Without the addresses, which hyper-util asks the kernel for (two syscalls on every
        // connection) and nothing here reads.
        Connected::new()
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

    /// A stamped stream over loopback, and the server's end of it.
    async fn pair() -> (TimedTcp, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let timed = TimedTcp::new(client, true);
        assert!(timed.stamped, "the kernel refused SO_TIMESTAMPNS");
        (timed, server)
    }

    /// A body that is all there reads a page first, then twice as much each time a read
    /// fills what it asked for, up to 16 KiB; every byte comes.
    #[tokio::test]
    async fn a_stamped_read_takes_a_page_first_and_doubles_up_to_16_kib() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut timed, mut server) = pair().await;
        let body: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let sent = body.clone();
        // Written by a task of its own: a small send buffer cannot then hang the test.
        let writer = tokio::spawn(async move {
            server.write_all(&sent).await.unwrap();
        });
        let mut got = Vec::new();
        let mut sizes = Vec::new();
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = timed.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
            sizes.push(n);
            assert!(timed.arrived().is_some());
        }
        writer.await.unwrap();
        assert_eq!(got, body);
        assert_eq!(&sizes[..3], &[4 << 10, 8 << 10, 16 << 10], "{sizes:?}");
        assert!(sizes.iter().all(|&n| n <= 16 << 10), "{sizes:?}");
    }

    /// A read that empties the socket clears tokio's readiness without another syscall:
    /// bytes that come after it must still wake the reader, and arrive no earlier than it.
    #[tokio::test]
    async fn bytes_after_a_short_read_wake_the_reader() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut timed, mut server) = pair().await;
        let mut buf = [0u8; 1024];
        for round in 0..5u8 {
            server.write_all(&[round; 3]).await.unwrap();
            let n = tokio::time::timeout(Duration::from_secs(5), timed.read(&mut buf))
                .await
                .expect("bytes after a short read woke nobody")
                .unwrap();
            assert_eq!(&buf[..n], &[round; 3]);
            let after_the_read = Instant::now();
            // Nothing more is there: the next read waits, and the bytes written while it
            // waits end it, stamped after the short read.
            let written = tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                server.write_all(b"next").await.unwrap();
                server
            });
            let n = tokio::time::timeout(Duration::from_secs(5), timed.read(&mut buf))
                .await
                .expect("bytes after a short read woke nobody")
                .unwrap();
            assert_eq!(&buf[..n], b"next");
            let arrived = timed.arrived().unwrap();
            assert!(
                arrived >= after_the_read + Duration::from_millis(15),
                "arrived {:?} after the short read",
                arrived - after_the_read
            );
            server = written.await.unwrap();
        }
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
