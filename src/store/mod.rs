//! The store: durable state that is not config — consumers and API keys, bans, quota usage,
//! the audit log (later config history).
//!
//! Owns the [`Store`] trait every backend implements, the record types, and [`open`], which
//! picks the backend from `node.store`. SQLite ([`sqlite`]) is the embedded backend; a
//! PostgreSQL one will implement the same trait for clusters. Writers (the CLI today) bump a
//! generation number with every change; a running node polls it and reloads
//! what changed, so a revoked key is refused within a second.

pub mod audit;
pub mod sqlite;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::config::StoreUrl;

/// What a store operation returns.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened, read or written.
    #[error("store: {0}")]
    Db(#[from] sqlx::Error),
    /// The database was written by a newer Portcullis.
    #[error("store schema version {found} is newer than this Portcullis understands ({known})")]
    TooNew {
        /// Version in the file.
        found: i64,
        /// Newest version this build knows.
        known: i64,
    },
    /// A name or id that must be new already exists.
    #[error("{0} already exists")]
    Exists(String),
    /// A record the operation needs does not exist.
    #[error("{0} does not exist")]
    Missing(String),
    /// A stored value could not be read back.
    #[error("store holds an unreadable value: {0}")]
    Corrupt(String),
}

/// A consumer: an identity that may call APIs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Consumer {
    /// Unique name.
    pub name: String,
    /// Groups, for `allow.groups`.
    pub groups: Vec<String>,
    /// When it was added (Unix seconds).
    pub created: i64,
}

/// An API key record. The key itself is never stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KeyRecord {
    /// Public id (part of the key).
    pub id: String,
    /// The consumer it authenticates.
    pub consumer: String,
    /// SHA-256 of the whole key.
    #[serde(skip)]
    pub digest: [u8; 32],
    /// When it was issued (Unix seconds).
    pub created: i64,
    /// When it was revoked, if it was.
    pub revoked: Option<i64>,
}

/// Consumers and their usable keys, as a node needs them.
#[derive(Debug, Clone, Default)]
pub struct Identities {
    /// Every consumer.
    pub consumers: Vec<Consumer>,
    /// Keys not revoked.
    pub keys: Vec<KeyRecord>,
    /// The generation these were read at.
    pub generation: i64,
}

/// A ban in force (or remembered after it ended, for repeat offences).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BanRecord {
    /// What is banned: `ip:ADDRESS` or `consumer:NAME`.
    pub key: String,
    /// Why (the rule that fired, or an operator's words).
    pub reason: String,
    /// When it began (Unix milliseconds).
    pub created_ms: i64,
    /// When it ends (Unix milliseconds).
    pub until_ms: i64,
    /// How many bans this key has had in a row (the ban length doubles with each).
    pub offences: u32,
}

/// Requests to add to one quota counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaDelta {
    /// Route name.
    pub route: String,
    /// The quota key as text (`consumer:NAME`, `ip:ADDRESS`, `header:VALUE`).
    pub key: String,
    /// Start of the period (Unix seconds).
    pub period: i64,
    /// Requests to add.
    pub delta: u64,
}

/// A backend for durable state.
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Add a consumer; [`StoreError::Exists`] if the name is taken.
    fn add_consumer<'a>(&'a self, name: &'a str, groups: &'a [String]) -> StoreFuture<'a, Consumer>;
    /// Every consumer, by name.
    fn consumers(&self) -> StoreFuture<'_, Vec<Consumer>>;
    /// Remove a consumer and its keys; `false` if there was none.
    fn remove_consumer<'a>(&'a self, name: &'a str) -> StoreFuture<'a, bool>;
    /// Record a new key; [`StoreError::Missing`] if the consumer does not exist.
    fn add_key<'a>(&'a self, key: &'a KeyRecord) -> StoreFuture<'a, ()>;
    /// Keys (of one consumer, or all), revoked ones included, oldest first.
    fn keys<'a>(&'a self, consumer: Option<&'a str>) -> StoreFuture<'a, Vec<KeyRecord>>;
    /// Revoke a key; `false` if there is no such key or it was already revoked.
    fn revoke_key<'a>(&'a self, id: &'a str) -> StoreFuture<'a, bool>;
    /// A number that changes whenever consumers or keys change.
    fn generation(&self) -> StoreFuture<'_, i64>;
    /// Consumers and usable keys, read consistently.
    fn identities(&self) -> StoreFuture<'_, Identities>;
    /// Append one audit record to the hash chain; the record as stored.
    fn append_audit<'a>(&'a self, e: &'a audit::AuditEvent) -> StoreFuture<'a, audit::AuditRecord>;
    /// Audit records with `seq > after`, oldest first, at most `limit`.
    fn audit_after(&self, after: i64, limit: u32) -> StoreFuture<'_, Vec<audit::AuditRecord>>;
    /// The newest `n` audit records, oldest first.
    fn audit_last(&self, n: u32) -> StoreFuture<'_, Vec<audit::AuditRecord>>;
    /// Record (or replace) the ban of `ban.key` and forget bans that ended before
    /// `forget_before_ms`; the new bans generation.
    fn put_ban<'a>(&'a self, ban: &'a BanRecord, forget_before_ms: i64) -> StoreFuture<'a, i64>;
    /// Lift and forget the ban of `key`: whether there was one, and the new bans generation.
    fn remove_ban<'a>(&'a self, key: &'a str) -> StoreFuture<'a, (bool, i64)>;
    /// Bans ending after `until_after_ms` (longest first), with the generation they were read at.
    fn bans(&self, until_after_ms: i64) -> StoreFuture<'_, (Vec<BanRecord>, i64)>;
    /// A number that changes whenever bans change.
    fn bans_generation(&self) -> StoreFuture<'_, i64>;
    /// Requests counted against a quota key in one period.
    fn quota_used<'a>(&'a self, route: &'a str, key: &'a str, period: i64) -> StoreFuture<'a, u64>;
    /// Add requests to quota counters (in one transaction).
    fn add_quota_usage<'a>(&'a self, deltas: &'a [QuotaDelta]) -> StoreFuture<'a, ()>;
    /// Close every connection (waiting for ones in use), flushing what the backend buffers.
    fn close(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}

/// Open (creating and migrating if needed) the store `url` names.
pub async fn open(url: &StoreUrl) -> Result<Arc<dyn Store>, StoreError> {
    match url {
        StoreUrl::Sqlite(path) => Ok(Arc::new(sqlite::SqliteStore::open(path).await?)),
    }
}

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}
