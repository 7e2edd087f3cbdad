//! Routing: which route a request takes.
//!
//! Owns path normalisation ([`path`]) and the compiled route table ([`Table`]): built once
//! per config, read without locks, and able to explain why routes did not match.
//!
//! Precedence, most specific first:
//! 1. host: an exact host, then the longest matching `*.suffix`, then routes without a host;
//! 2. path: exact, then templates (more segments, then more literal segments first), then
//!    prefixes (longer first);
//! 3. routes with a `methods` list before routes without, then more header conditions first;
//! 4. file order.
//!
//! The first route in that order whose host, path, methods and headers all match wins.

mod host;
pub mod path;
mod table;

pub use host::{HostError, request_authority, route_host};
pub use table::{Explanation, Miss, RequestView, Table};
