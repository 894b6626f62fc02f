//! What every downpour driver shares, whatever its HTTP client: response bodies read and
//! decoded (gzip, deflate, brotli) under one size cap, so a decompression bomb stops at the
//! cap; and proxy rules (`http_proxy`, `https_proxy`, `all_proxy`, `no_proxy`, in either
//! case), with credentials kept out of every message.
//!
//! The drivers re-export the core; this crate is an implementation detail of theirs.

#![forbid(unsafe_code)]

pub mod decode;
pub mod proxy;
