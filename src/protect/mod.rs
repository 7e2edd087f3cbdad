//! Protection at the edge: connection guards (head size and time limits, connection caps
//! per listener and per client IP, bans and IP rules), body limits, header hygiene, and the
//! detector that turns repeated security events into bans.
//!
//! Everything here runs before routing and treats every byte as hostile.

pub mod bans;
mod body;
pub mod detect;
pub(crate) mod head;
pub mod headers;
mod limiter;

pub use body::{BodyError, BodyProgress, LimitedBody};
pub use detect::Protection;
pub(crate) use head::{ConnState, GuardedIo, HeadLimits};
pub(crate) use limiter::{ConnLimiter, ConnPermit, Refused};

/// Answer a refused connection with a 403 problem+json without parsing anything, and close
/// it. One non-blocking write: a fresh socket's send buffer takes it whole, and nothing
/// waits on a client that does not read.
pub(crate) fn refuse_connection(stream: &tokio::net::TcpStream) {
    let id = crate::observe::new_request_id_string();
    let body = crate::error::problem_json(403, "Forbidden", "this client is not allowed to connect", &id);
    let head = format!(
        "HTTP/1.1 403 Forbidden\r\ncontent-type: application/problem+json\r\ncontent-length: {}\r\nx-request-id: {id}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.try_write(format!("{head}{body}").as_bytes());
    // A request already received would make the close a reset that can destroy the answer
    // before the client reads it: take what is there (one read, never waiting).
    let mut sink = [0u8; 4096];
    let _ = stream.try_read(&mut sink);
}
