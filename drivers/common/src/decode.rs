//! Response bodies: read with a cap, decoded (gzip, deflate, brotli) with the same cap.

use std::io::{self, Write};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::HeaderMap;

/// The headers a hop sends: the fetch's own, with a `User-Agent` and the `Accept-Encoding`
/// that [`Body`] decodes where it gave none.
pub fn headers_to_send(mut headers: HeaderMap, user_agent: &HeaderValue) -> HeaderMap {
    if !headers.contains_key(header::USER_AGENT) {
        headers.insert(header::USER_AGENT, user_agent.clone());
    }
    if !headers.contains_key(header::ACCEPT_ENCODING) {
        headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("gzip, deflate, br"),
        );
    }
    headers
}

/// Collects at most `cap` bytes; sets `truncated` (and refuses the rest) past that.
struct Capped {
    buf: Vec<u8>,
    cap: usize,
    truncated: bool,
}

impl Capped {
    fn new(cap: u64) -> Self {
        Capped {
            buf: Vec::new(),
            cap: usize::try_from(cap).unwrap_or(usize::MAX),
            truncated: false,
        }
    }

    /// Appends what fits; returns whether everything did.
    fn push(&mut self, data: &[u8]) -> bool {
        let room = self.cap - self.buf.len();
        if data.len() > room {
            self.buf.extend_from_slice(&data[..room]);
            self.truncated = true;
            false
        } else {
            self.buf.extend_from_slice(data);
            true
        }
    }
}

impl Write for Capped {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.push(data) {
            Ok(data.len())
        } else {
            Err(io::Error::other("decoded body larger than the limit"))
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The content codings a response can be decoded from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    Identity,
    Gzip,
    Deflate,
    Brotli,
}

impl Coding {
    /// The coding named by `Content-Encoding`, or `None` when it is one we do not decode
    /// (the body is then passed through as it came).
    pub fn of(headers: &HeaderMap) -> Option<Coding> {
        let mut values = headers.get_all(http::header::CONTENT_ENCODING).iter();
        let Some(value) = values.next() else {
            return Some(Coding::Identity);
        };
        if values.next().is_some() {
            return None;
        }
        let value = value.to_str().ok()?.trim();
        if value.contains(',') {
            return None;
        }
        match value.to_ascii_lowercase().as_str() {
            "" | "identity" => Some(Coding::Identity),
            "gzip" | "x-gzip" => Some(Coding::Gzip),
            "deflate" => Some(Coding::Deflate),
            "br" => Some(Coding::Brotli),
            _ => None,
        }
    }
}

enum State {
    Identity,
    Gzip(flate2::write::GzDecoder<Capped>),
    /// Deflate, before its first bytes tell zlib-wrapped from raw.
    DeflateUnknown(Capped, Vec<u8>),
    Zlib(flate2::write::ZlibDecoder<Capped>),
    RawDeflate(flate2::write::DeflateDecoder<Capped>),
    Brotli(Box<brotli_decompressor::DecompressorWriter<Capped>>),
    Done,
}

/// A body being read: feed it frames, then [`finish`](Body::finish).
pub struct Body {
    state: State,
    /// The identity body collects here.
    plain: Capped,
}

/// The body could not be decoded.
#[derive(Debug)]
pub struct DecodeError(pub String);

impl Body {
    pub fn new(coding: Coding, cap: u64) -> Self {
        let state = match coding {
            Coding::Identity => State::Identity,
            Coding::Gzip => State::Gzip(flate2::write::GzDecoder::new(Capped::new(cap))),
            Coding::Deflate => State::DeflateUnknown(Capped::new(cap), Vec::new()),
            Coding::Brotli => State::Brotli(Box::new(
                brotli_decompressor::DecompressorWriter::new(Capped::new(cap), 8192),
            )),
        };
        Body {
            state,
            plain: Capped::new(cap),
        }
    }

    /// Whether the cap is reached: stop reading.
    pub fn is_full(&self) -> bool {
        match &self.state {
            State::Identity | State::Done => self.plain.truncated,
            State::Gzip(d) => d.get_ref().truncated,
            State::DeflateUnknown(c, _) => c.truncated,
            State::Zlib(d) => d.get_ref().truncated,
            State::RawDeflate(d) => d.get_ref().truncated,
            State::Brotli(d) => d.get_ref().truncated,
        }
    }

    /// Feeds raw bytes from the wire.
    pub fn feed(&mut self, data: &[u8]) -> Result<(), DecodeError> {
        let result = match &mut self.state {
            State::Identity | State::Done => {
                self.plain.push(data);
                Ok(())
            }
            State::Gzip(d) => d.write_all(data),
            State::Zlib(d) => d.write_all(data),
            State::RawDeflate(d) => d.write_all(data),
            State::Brotli(d) => d.write_all(data),
            State::DeflateUnknown(_, head) => {
                head.extend_from_slice(data);
                if head.len() < 2 {
                    return Ok(());
                }
                let State::DeflateUnknown(out, head) =
                    std::mem::replace(&mut self.state, State::Done)
                else {
                    unreachable!("matched above")
                };
                // RFC 9110 says "deflate" is zlib-wrapped; some servers send raw deflate.
                let zlib =
                    head[0] & 0x0f == 8 && (u16::from(head[0]) << 8 | u16::from(head[1])) % 31 == 0;
                if zlib {
                    let mut d = flate2::write::ZlibDecoder::new(out);
                    let r = d.write_all(&head);
                    self.state = State::Zlib(d);
                    r
                } else {
                    let mut d = flate2::write::DeflateDecoder::new(out);
                    let r = d.write_all(&head);
                    self.state = State::RawDeflate(d);
                    r
                }
            }
        };
        match result {
            Ok(()) => Ok(()),
            Err(_) if self.is_full() => Ok(()),
            Err(e) => Err(DecodeError(format!("cannot decode the body: {e}"))),
        }
    }

    /// The body read (at most the cap) and whether it was cut.
    pub fn finish(mut self) -> Result<(Bytes, bool), DecodeError> {
        let full = self.is_full();
        let bad = |e: io::Error| DecodeError(format!("cannot decode the body: {e}"));
        let out = match std::mem::replace(&mut self.state, State::Done) {
            State::Identity | State::Done => self.plain,
            State::DeflateUnknown(out, head) => {
                if head.is_empty() {
                    out
                } else {
                    return Err(DecodeError("deflate body too short".into()));
                }
            }
            State::Gzip(d) if full => d.get_ref_owned(),
            State::Zlib(d) if full => d.get_ref_owned(),
            State::RawDeflate(d) if full => d.get_ref_owned(),
            State::Brotli(d) if full => d.get_ref_owned(),
            State::Gzip(d) => d.finish().map_err(bad)?,
            State::Zlib(d) => d.finish().map_err(bad)?,
            State::RawDeflate(d) => d.finish().map_err(bad)?,
            State::Brotli(d) => d.into_inner().map_err(|_| {
                DecodeError("cannot decode the body: brotli stream is incomplete".into())
            })?,
        };
        let truncated = out.truncated;
        Ok((Bytes::from(out.buf), truncated))
    }
}

/// Taking the output of a decoder that stopped at the cap, without finishing the stream.
trait IntoCapped {
    fn get_ref_owned(self) -> Capped;
}

impl IntoCapped for flate2::write::GzDecoder<Capped> {
    fn get_ref_owned(mut self) -> Capped {
        std::mem::replace(self.get_mut(), Capped::new(0))
    }
}

impl IntoCapped for flate2::write::ZlibDecoder<Capped> {
    fn get_ref_owned(mut self) -> Capped {
        std::mem::replace(self.get_mut(), Capped::new(0))
    }
}

impl IntoCapped for flate2::write::DeflateDecoder<Capped> {
    fn get_ref_owned(mut self) -> Capped {
        std::mem::replace(self.get_mut(), Capped::new(0))
    }
}

impl IntoCapped for Box<brotli_decompressor::DecompressorWriter<Capped>> {
    fn get_ref_owned(mut self) -> Capped {
        std::mem::replace(self.get_mut(), Capped::new(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn decode(coding: Coding, cap: u64, wire: &[u8]) -> (Bytes, bool) {
        let mut body = Body::new(coding, cap);
        for chunk in wire.chunks(1000) {
            body.feed(chunk).unwrap();
            if body.is_full() {
                break;
            }
        }
        body.finish().unwrap()
    }

    #[test]
    fn identity_is_cut_at_the_cap() {
        assert_eq!(
            decode(Coding::Identity, 10, b"0123456789"),
            ("0123456789".into(), false)
        );
        assert_eq!(
            decode(Coding::Identity, 4, b"0123456789"),
            ("0123".into(), true)
        );
    }

    #[test]
    fn gzip_bomb_stops_at_the_cap() {
        let bomb = gzip(&vec![0u8; 50 << 20]);
        let (body, truncated) = decode(Coding::Gzip, 1 << 20, &bomb);
        assert!(truncated);
        assert_eq!(body.len(), 1 << 20);
    }

    #[test]
    fn gzip_deflate_and_brotli_decode() {
        let text = b"hello hello hello hello";
        assert_eq!(decode(Coding::Gzip, 100, &gzip(text)).0, &text[..]);
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(text).unwrap();
        assert_eq!(
            decode(Coding::Deflate, 100, &z.finish().unwrap()).0,
            &text[..]
        );
        let mut d = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        d.write_all(text).unwrap();
        assert_eq!(
            decode(Coding::Deflate, 100, &d.finish().unwrap()).0,
            &text[..]
        );
    }

    #[test]
    fn garbage_is_a_decode_error() {
        let mut body = Body::new(Coding::Gzip, 100);
        let fed = body.feed(b"definitely not gzip at all");
        assert!(fed.is_err() || body.finish().is_err());
    }

    #[test]
    fn codings_are_recognised() {
        let mut h = HeaderMap::new();
        assert_eq!(Coding::of(&h), Some(Coding::Identity));
        h.insert(http::header::CONTENT_ENCODING, "GZIP".parse().unwrap());
        assert_eq!(Coding::of(&h), Some(Coding::Gzip));
        h.insert(http::header::CONTENT_ENCODING, "zstd".parse().unwrap());
        assert_eq!(Coding::of(&h), None);
    }
}
