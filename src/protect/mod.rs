//! Protection at the edge: connection guards (head size and time limits, connection caps
//! per listener and per client IP), body limits, and header hygiene.
//!
//! Everything here runs before routing and treats every byte as hostile.

mod body;
pub(crate) mod head;
pub mod headers;
mod limiter;

pub use body::{BodyError, BodyProgress, LimitedBody};
pub(crate) use head::{ConnState, GuardedIo, HeadLimits};
pub(crate) use limiter::{ConnLimiter, ConnPermit};
