//! Portcullis: a security-first integration gateway.
//!
//! The request path, module by module (see `docs/architecture.md`):
//! [`server`] accepts and detects the protocol → [`protect`] guards the connection and the
//! request → [`router`] normalises the path and picks a route → [`upstream`] picks a target
//! and forwards over a pooled connection → the response streams back through [`body`].
//! [`config`] produces the immutable config every request reads; [`error`] is the one place
//! errors become responses; [`observe`] owns logs and ids; [`cli`] and [`demo`] are the
//! command line.

pub mod admin;
pub mod auth;
pub mod body;
pub mod cli;
pub mod clock;
pub mod config;
pub mod demo;
pub mod error;
pub mod health;
pub mod hex;
pub mod net;
pub mod observe;
pub mod protect;
pub mod ratelimit;
pub mod router;
pub mod server;
pub mod store;
pub mod tls;
pub mod upstream;
