//! The common HTTP/1.1 exchange without hyper's server and client: a request without a body for
//! a service that runs, sent over the client connection's kept connection to that service, and
//! the service's answer streamed back as it arrives. It is most of what a browser sends, and
//! hyper's general machinery (a header map and a task hand-off per message, each way) cost the
//! proxy about twice nginx's CPU per request.
//!
//! It takes only what it can do right and hands everything else to hyper ([`super::serve`])
//! with the bytes read so far, for the rest of the client connection: a request with a body or
//! `Transfer-Encoding`, an upgrade, `Expect`, HTTP/1.0, a host that is not a running service, a
//! head that httparse will not read. A service it cannot connect to goes there too, before
//! anything was sent, so the page for it is hyper's path's. What the service sees is the same on
//! both paths: origin-form request line, hop-by-hop fields out, `X-Forwarded-*` and `Forwarded`
//! in (one formatter, [`super::forward::Forwarded`]).
//!
//! Responses are framed per RFC 9112 §6.3: none for `HEAD`, 1xx, 204 and 304; chunked bodies
//! pass through as they are, their end found by [`chunked`]; a `Content-Length` body is copied
//! to its length; anything else is read until the service closes, and the client connection is
//! closed after it. 1xx answers other than 101 are passed on before the final one.
//!
//! [`codec`] reads and writes the heads, [`chunked`] finds where a body ends, [`conn`] is the
//! client connection's loop, and [`Prefixed`] hands the connection to hyper's path.

mod chunked;
mod codec;
mod conn;
mod prefixed;
#[cfg(test)]
mod tests;

use hyper::Response;

use super::Body;
pub(crate) use conn::serve;
pub(crate) use prefixed::Prefixed;

/// Largest request or response head taken (hyper's path answers a larger request with 431).
const MAX_HEAD: usize = 64 * 1024;
/// Most header fields in a head (hyper's default too).
const MAX_HEADERS: usize = 100;
/// Bytes read from a socket at a time.
const READ_CHUNK: usize = 16 * 1024;
/// Longest line of a chunked body's framing (size and extensions, or a trailer field).
const MAX_CHUNK_LINE: usize = 4096;

/// Where a routed request goes.
pub(crate) trait Target {
    fn port(&self) -> u16;
    /// The page for a service that dropped the connection before answering.
    fn unreachable(&self, cause: &str) -> Response<Body>;
}

/// How the fast path left the client connection.
pub(crate) enum Outcome<S> {
    /// Closed or finished with.
    Done,
    /// Hyper's path takes over, reading what was already read first.
    Fallback(Prefixed<S>),
}
