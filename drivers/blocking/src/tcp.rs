//! Plain TCP connections for ureq: connected as ureq's own `TcpConnector` connects them, with
//! buffers that grow as the connection needs them ([`GrowingBuffers`]), and reads that note
//! when their bytes arrived.
//!
//! A host's delay counts from the end of its last response. A worker reads that end when
//! the system runs it: when a thousand hosts connect at once, the first responses come back
//! while a thousand threads are still connecting, and are read milliseconds later. On
//! Linux, for a policy that paces hosts, each read is a `recvmsg` that also gets the time the
//! kernel received the bytes (`SO_TIMESTAMPNS`; see `downpour_common::arrival`), and the
//! hop ends then. Under TLS these are the reads of the TLS layer's ciphertext.

use std::cell::Cell;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

#[cfg(target_os = "linux")]
use downpour_common::arrival::{self, Seen};
use ureq::unversioned::transport::{
    Buffers, ConnectionDetails, Connector, Either, NextTimeout, ShutdownHandle, Transport,
};
use ureq::Timeout;

use crate::buffers::GrowingBuffers;

thread_local! {
    /// When the bytes of the last read on this thread arrived (or, for a read that found
    /// the end of the stream, when it did).
    static LAST_READ: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Forgets the last read on this thread: before a hop.
pub(crate) fn forget_last_read() {
    LAST_READ.set(None);
}

/// When the bytes of the last read on this thread arrived, since [`forget_last_read`].
pub(crate) fn last_read() -> Option<Instant> {
    LAST_READ.get()
}

/// The shortest time an address is given to connect when a host has several.
const MIN_PER_ADDRESS: Duration = Duration::from_millis(10);

/// Opens plain TCP connections; with `stamp`, on Linux, their reads note when the kernel
/// received their bytes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tcp {
    pub(crate) stamp: bool,
}

impl<In: Transport> Connector<In> for Tcp {
    type Out = Either<In, TcpConn>;

    fn connect(
        &self,
        details: &ConnectionDetails,
        chained: Option<In>,
    ) -> Result<Option<Self::Out>, ureq::Error> {
        if chained.is_some() {
            // A connection made before this one in the chain (a proxy's) is the one to use.
            return Ok(chained.map(Either::A));
        }
        let stream = connect(details)?;
        if details.config.no_delay() {
            stream.set_nodelay(true)?;
        }
        let conn = TcpConn::new(
            stream,
            GrowingBuffers::new(
                details.config.input_buffer_size(),
                details.config.output_buffer_size(),
            ),
            self.stamp,
        );
        (details.register_shutdown)(Arc::downgrade(&conn.stream) as Weak<dyn ShutdownHandle>)?;
        Ok(Some(Either::B(conn)))
    }
}

/// Connects to the first of the host's addresses that answers, as ureq does: each address
/// gets half of the time left for it and those after it (at least 10 ms); a refusal, or a
/// route the system does not have, moves on to the next address at once.
fn connect(details: &ConnectionDetails) -> Result<TcpStream, ureq::Error> {
    let started = Instant::now();
    let budget = details.timeout.not_zero().map(|t| *t);
    let count = details.addrs.len();
    let mut last = None;
    for (i, addr) in details.addrs.iter().enumerate() {
        let per_address = match budget {
            None => None,
            Some(budget) => {
                let left = budget.saturating_sub(started.elapsed());
                if left.is_zero() {
                    return Err(ureq::Error::Timeout(details.timeout.reason));
                }
                // Of 2^k - 1 shares for the k addresses left, this one gets 2^(k-1).
                let k = i32::try_from(count - i).unwrap_or(i32::MAX).min(30);
                let share = 2f64.powi(k - 1) / (2f64.powi(k) - 1.0);
                Some(left.mul_f64(share).max(MIN_PER_ADDRESS).min(left))
            }
        };
        match connect_one(*addr, per_address) {
            Ok(stream) => return Ok(stream),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
                ) =>
            {
                last = Some(ureq::Error::Timeout(Timeout::Connect));
            }
            Err(e) if concerns_this_address(&e) => last = Some(e.into()),
            Err(e) => return Err(e.into()),
        }
    }
    let spent = budget.is_some_and(|budget| started.elapsed() >= budget);
    if spent && matches!(last, Some(ureq::Error::Timeout(_))) {
        return Err(ureq::Error::Timeout(details.timeout.reason));
    }
    Err(last.unwrap_or_else(|| {
        io::Error::new(io::ErrorKind::ConnectionRefused, "no address to connect to").into()
    }))
}

fn connect_one(addr: SocketAddr, timeout: Option<Duration>) -> io::Result<TcpStream> {
    match timeout {
        Some(timeout) => TcpStream::connect_timeout(&addr, timeout),
        None => TcpStream::connect(addr),
    }
}

/// Whether the next of a host's addresses may still connect: this one refused, or the
/// system has no route to it (an IPv6 address without IPv6, typically).
fn concerns_this_address(e: &io::Error) -> bool {
    // Windows refuses a blocked address family (a VPN, a firewall) as WSAEACCES.
    #[cfg(windows)]
    if e.raw_os_error() == Some(10013) {
        return true;
    }
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
            | io::ErrorKind::NetworkDown
            | io::ErrorKind::AddrNotAvailable
    )
}

/// A plain TCP connection: see the [module docs](self).
pub(crate) struct TcpConn {
    /// Shared (weakly) with ureq's shutdown handle, which may shut it down from another
    /// thread.
    stream: Arc<TcpStream>,
    buffers: GrowingBuffers,
    /// The timeouts set on the socket, so that they are set again only when they change.
    read_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
    stamps: Option<Stamps>,
}

/// What stamped reads need.
#[cfg(target_os = "linux")]
struct Stamps {
    /// Room for the stamp that comes with a read.
    control: Vec<u8>,
    /// When the socket last held none of what the next read gets: the request went out, or
    /// a read emptied it.
    empty: Seen,
}

/// Reads are not stamped elsewhere.
#[cfg(not(target_os = "linux"))]
enum Stamps {}

impl TcpConn {
    fn new(stream: TcpStream, buffers: GrowingBuffers, stamp: bool) -> TcpConn {
        #[cfg(target_os = "linux")]
        let stamps = (stamp && arrival::enable_stamps(&stream).is_ok()).then(|| Stamps {
            control: arrival::control_buffer(),
            empty: Seen::now(),
        });
        #[cfg(not(target_os = "linux"))]
        let stamps = {
            let _ = stamp;
            None
        };
        TcpConn {
            stream: Arc::new(stream),
            buffers,
            read_timeout: None,
            write_timeout: None,
            stamps,
        }
    }
}

/// One read into `into`; when its bytes arrived.
fn read_once(
    stream: &TcpStream,
    stamps: &mut Option<Stamps>,
    into: &mut [u8],
) -> io::Result<(usize, Instant)> {
    #[cfg(target_os = "linux")]
    if let Some(stamps) = stamps {
        let (n, stamp) = arrival::recv_stamped(stream, into, &mut stamps.control)?;
        let at = if n > 0 {
            arrival::instant_of(stamp, &stamps.empty)
        } else {
            Instant::now()
        };
        if n < into.len() {
            // The read emptied the socket: what comes next comes after it.
            stamps.empty = Seen::now();
        }
        return Ok((n, at));
    }
    #[cfg(not(target_os = "linux"))]
    let _ = stamps;
    let n = { stream }.read(into)?;
    Ok((n, Instant::now()))
}

impl fmt::Debug for TcpConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpConn").finish_non_exhaustive()
    }
}

/// Sets a socket timeout when it differs from the one set before.
fn update_timeout(
    stream: &TcpStream,
    set: fn(&TcpStream, Option<Duration>) -> io::Result<()>,
    previous: &mut Option<Duration>,
    wanted: Option<Duration>,
) -> io::Result<()> {
    if *previous != wanted {
        match set(stream, wanted) {
            Ok(()) => *previous = wanted,
            // macOS refuses a new timeout once the peer closed with part of the request
            // unread; its early answer may still be there to read, so the read says.
            Err(e) if cfg!(target_os = "macos") && e.kind() == io::ErrorKind::InvalidInput => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A socket's timed-out read or write, as ureq reports it.
fn timed_out(e: io::Error, reason: Timeout) -> ureq::Error {
    match e.kind() {
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => ureq::Error::Timeout(reason),
        _ => e.into(),
    }
}

impl Transport for TcpConn {
    fn buffers(&mut self) -> &mut dyn Buffers {
        &mut self.buffers
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), ureq::Error> {
        let timeout = timeout.for_write();
        if timeout.after.is_zero() {
            return Err(ureq::Error::Timeout(timeout.reason));
        }
        update_timeout(
            &self.stream,
            TcpStream::set_write_timeout,
            &mut self.write_timeout,
            timeout.not_zero().map(|t| *t),
        )?;
        let output = &self.buffers.output()[..amount];
        (&*self.stream)
            .write_all(output)
            .map_err(|e| timed_out(e, timeout.reason))?;
        #[cfg(target_os = "linux")]
        if let Some(stamps) = &mut self.stamps {
            // The answer to what just went out comes after this.
            stamps.empty = Seen::now();
        }
        Ok(())
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, ureq::Error> {
        let timeout = timeout.for_read();
        if timeout.after.is_zero() {
            return Err(ureq::Error::Timeout(timeout.reason));
        }
        let limit = timeout.not_zero().map(|t| *t);
        update_timeout(
            &self.stream,
            TcpStream::set_read_timeout,
            &mut self.read_timeout,
            limit,
        )?;
        let started = Instant::now();
        let result = loop {
            match read_once(
                &self.stream,
                &mut self.stamps,
                self.buffers.input_append_buf(),
            ) {
                // A signal: Linux does not restart a socket read that has a timeout. Again,
                // with what is left of it; without one, the caller hears of the signal.
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                    let Some(limit) = limit else { break Err(e) };
                    let left = limit.saturating_sub(started.elapsed());
                    if left.is_zero() {
                        break Err(io::ErrorKind::TimedOut.into());
                    }
                    if let Err(e) = update_timeout(
                        &self.stream,
                        TcpStream::set_read_timeout,
                        &mut self.read_timeout,
                        Some(left),
                    ) {
                        break Err(e);
                    }
                }
                result => break result,
            }
        };
        let result = result.map(|(n, at)| {
            self.buffers.input_appended(n);
            LAST_READ.set(Some(at));
            n
        });
        let n = result.map_err(|e| timed_out(e, timeout.reason))?;
        Ok(n > 0)
    }

    fn is_open(&mut self) -> bool {
        probe(&self.stream).unwrap_or(false)
    }
}

/// Whether an idle connection is still open: nothing to read (the server sent nothing
/// unasked, and did not close it).
fn probe(stream: &TcpStream) -> io::Result<bool> {
    stream.set_nonblocking(true)?;
    let mut byte = [0u8];
    let open = match (&*stream).read(&mut byte) {
        Err(e) => e.kind() == io::ErrorKind::WouldBlock,
        Ok(_) => false,
    };
    stream.set_nonblocking(false)?;
    Ok(open)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn five_seconds() -> NextTimeout {
        NextTimeout {
            after: ureq::unversioned::transport::time::Duration::from_secs(5),
            ..NextTimeout::default()
        }
    }

    /// A connection to a fresh listener, and the server's end of it.
    fn pair(stamp: bool) -> (TcpConn, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (
            TcpConn::new(client, GrowingBuffers::new(68 << 10, 32 << 10), stamp),
            server,
        )
    }

    const REQUEST: &[u8] = b"GET / HTTP/1.1\r\n\r\n";

    /// Writes [`REQUEST`] through the connection, and forgets the reads before it.
    fn send_request(conn: &mut TcpConn) {
        conn.buffers().output()[..REQUEST.len()].copy_from_slice(REQUEST);
        conn.transmit_output(REQUEST.len(), five_seconds()).unwrap();
        forget_last_read();
    }

    /// Reads from the connection until `len` bytes came, consuming them.
    fn read_answer(conn: &mut TcpConn, len: usize) -> Vec<u8> {
        let mut read = Vec::new();
        while read.len() < len {
            assert!(conn.await_input(five_seconds()).unwrap());
            let input = conn.buffers().input();
            read.extend_from_slice(input);
            let n = input.len();
            conn.buffers().input_consume(n);
        }
        read
    }

    /// Reads [`REQUEST`] on the server's end.
    fn receive_request(server: &mut TcpStream) {
        let mut got = [0u8; REQUEST.len()];
        server.read_exact(&mut got).unwrap();
        assert_eq!(got, REQUEST);
    }

    /// Sends a request through the connection and reads what the server answered with
    /// `answer`, `late` after it came; returns what was read, and how long before the end
    /// of the read its bytes arrived, by the connection's account.
    fn exchange(
        conn: &mut TcpConn,
        server: &mut TcpStream,
        answer: &[u8],
        late: Duration,
    ) -> (Vec<u8>, Duration) {
        send_request(conn);
        receive_request(server);
        server.write_all(answer).unwrap();
        std::thread::sleep(late);
        let read = read_answer(conn, answer.len());
        let age = Instant::now() - last_read().expect("a read noted no time");
        (read, age)
    }

    /// With stamps, bytes that waited in the socket arrived when they came, not when a
    /// worker got to them; without, when they were read.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_response_read_late_arrived_when_it_came() {
        let (mut conn, mut server) = pair(true);
        assert!(conn.stamps.is_some(), "the kernel refused SO_TIMESTAMPNS");
        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        // The system turns stamping on a moment after the first socket asks: until then a
        // read is timed when it happens.
        let mut tries = 0;
        loop {
            let (read, age) = exchange(&mut conn, &mut server, answer, Duration::from_millis(60));
            assert_eq!(read, answer);
            if age >= Duration::from_millis(50) {
                break;
            }
            tries += 1;
            assert!(
                tries < 20,
                "a response read 60 ms late arrived {age:?} before"
            );
        }
        let (mut plain, mut server) = pair(false);
        let (read, age) = exchange(&mut plain, &mut server, answer, Duration::from_millis(60));
        assert_eq!(read, answer);
        assert!(age < Duration::from_millis(50), "{age:?}");
    }

    /// A large answer comes whole through a buffer that grows, and its arrival is that of
    /// its last bytes: after the request went out.
    #[test]
    fn a_large_answer_comes_whole_and_ends_after_the_request() {
        let (mut conn, server) = pair(true);
        let answer: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let writer = std::thread::spawn({
            let mut server = server.try_clone().unwrap();
            let answer = answer.clone();
            move || {
                receive_request(&mut server);
                server.write_all(&answer).unwrap();
            }
        });
        let before = Instant::now();
        send_request(&mut conn);
        let read = read_answer(&mut conn, answer.len());
        writer.join().unwrap();
        assert_eq!(read, answer);
        assert!(last_read().unwrap() >= before);
        // The server closes: the end of the stream is a read of nothing.
        drop(server);
        assert!(!conn.await_input(five_seconds()).unwrap());
        assert!(!conn.is_open());
    }

    /// A read that waits longer than its timeout fails as ureq's timeout.
    #[test]
    fn a_silent_server_times_the_read_out() {
        let (mut conn, _server) = pair(true);
        let timeout = NextTimeout {
            after: ureq::unversioned::transport::time::Duration::from_millis(50),
            reason: Timeout::Global,
            ..NextTimeout::default()
        };
        let started = Instant::now();
        let err = conn.await_input(timeout).unwrap_err();
        assert!(
            matches!(err, ureq::Error::Timeout(Timeout::Global)),
            "{err:?}"
        );
        assert!(started.elapsed() >= Duration::from_millis(45));
        assert!(conn.is_open());
    }
}
