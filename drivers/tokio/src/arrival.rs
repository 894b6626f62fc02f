//! When a connection's bytes arrived: the kernel's receive timestamps.
//!
//! A host's delay counts from the end of its last response. A connection's task reads that
//! end when the runtime gets to it: in a burst (a thousand hosts connecting at once, while
//! the first responses come back) that is milliseconds after the bytes came, and every one
//! of them delays the host's next request. On Linux each read of a [`TimedTcp`] also gets
//! the time the kernel received the last bytes it read (`SO_TIMESTAMPNS`), and that time is
//! kept instead (see `downpour_common::arrival` for how a stamp becomes an instant). It costs
//! a little per read (`recvmsg` rather than `read`, and what it reads into zeroed first), so
//! only a client whose policy paces hosts asks for it.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

#[cfg(target_os = "linux")]
use downpour_common::arrival::{self as linux, Seen};
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
    #[cfg(target_os = "linux")]
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
            #[cfg(target_os = "linux")]
            empty: Seen::now(),
            arrived: None,
            #[cfg(target_os = "linux")]
            control: if stamped {
                linux::control_buffer()
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
                let (n, stamp) = linux::recv_stamped(&fd, into, control)?;
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

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::time::Duration;

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
}
