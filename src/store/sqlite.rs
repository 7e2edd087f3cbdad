//! The embedded SQLite store: one file, WAL mode, created and migrated on first open.
//!
//! Schema versions are kept in `PRAGMA user_version`; each migration runs in a transaction,
//! so a crash leaves the old version intact. Writes are small and rare (CLI, admin API); a
//! running node reads a generation counter a few times a second and the full identity set
//! only when it changed.

use std::path::Path;
use std::time::Duration;

use sqlx::Row as _;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

use super::audit::{AuditEvent, AuditRecord, chain_hash};
use super::{BanRecord, Consumer, Identities, KeyRecord, QuotaDelta, Store, StoreError, StoreFuture, now};

/// Migrations, in order; entry `i` takes the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT INTO meta (key, value) VALUES ('generation', 0);
CREATE TABLE consumers (
    name    TEXT PRIMARY KEY,
    groups  TEXT NOT NULL,
    created INTEGER NOT NULL
);
CREATE TABLE api_keys (
    id       TEXT PRIMARY KEY,
    consumer TEXT NOT NULL REFERENCES consumers(name) ON DELETE CASCADE,
    digest   BLOB NOT NULL,
    created  INTEGER NOT NULL,
    revoked  INTEGER
);
CREATE INDEX api_keys_consumer ON api_keys(consumer);
"#,
    r#"
CREATE TABLE audit (
    seq     INTEGER PRIMARY KEY,
    time    INTEGER NOT NULL,
    node    TEXT NOT NULL,
    kind    TEXT NOT NULL,
    actor   TEXT NOT NULL,
    detail  TEXT NOT NULL,
    prev    BLOB NOT NULL,
    hash    BLOB NOT NULL
);
"#,
    r#"
INSERT INTO meta (key, value) VALUES ('bans_generation', 0);
CREATE TABLE bans (
    key      TEXT PRIMARY KEY,
    reason   TEXT NOT NULL,
    created  INTEGER NOT NULL,
    until    INTEGER NOT NULL,
    offences INTEGER NOT NULL
);
CREATE INDEX bans_until ON bans(until);
CREATE TABLE quota_usage (
    route  TEXT NOT NULL,
    key    TEXT NOT NULL,
    period INTEGER NOT NULL,
    used   INTEGER NOT NULL,
    PRIMARY KEY (route, key, period)
);
CREATE INDEX quota_usage_period ON quota_usage(period);
"#,
];

const BUMP: &str = "UPDATE meta SET value = value + 1 WHERE key = 'generation'";
const BUMP_BANS: &str = "UPDATE meta SET value = value + 1 WHERE key = 'bans_generation' RETURNING value";
/// Quota rows older than this (seconds) are deleted when usage is written.
const QUOTA_KEEP: i64 = 62 * 24 * 3600;

/// A SQLite-backed [`Store`].
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Open `path`, creating the file and its directory's schema if needed.
    pub async fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // Writes are rare; a committed revocation must survive a power cut.
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new().max_connections(4).connect_with(opts).await?;
        let store = SqliteStore { pool };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        // IMMEDIATE: a node and a CLI command opening a new file at once take turns.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let version: i64 = sqlx::query("PRAGMA user_version").fetch_one(&mut *tx).await?.try_get(0)?;
        let known = MIGRATIONS.len() as i64;
        if version > known {
            return Err(StoreError::TooNew { found: version, known });
        }
        for sql in &MIGRATIONS[version as usize..] {
            sqlx::raw_sql(*sql).execute(&mut *tx).await?;
        }
        if version < known {
            // PRAGMA takes no bound parameters; the value is our own constant.
            let set = sqlx::AssertSqlSafe(format!("PRAGMA user_version = {known}"));
            sqlx::query(set).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

fn consumer_row(row: &sqlx::sqlite::SqliteRow) -> Result<Consumer, StoreError> {
    let groups: String = row.try_get("groups")?;
    Ok(Consumer {
        name: row.try_get("name")?,
        groups: serde_json::from_str(&groups).map_err(|e| StoreError::Corrupt(format!("consumer groups: {e}")))?,
        created: row.try_get("created")?,
    })
}

fn key_row(row: &sqlx::sqlite::SqliteRow) -> Result<KeyRecord, StoreError> {
    let digest: Vec<u8> = row.try_get("digest")?;
    Ok(KeyRecord {
        id: row.try_get("id")?,
        consumer: row.try_get("consumer")?,
        digest: digest.try_into().map_err(|_| StoreError::Corrupt("a key digest is not 32 bytes".into()))?,
        created: row.try_get("created")?,
        revoked: row.try_get("revoked")?,
    })
}

fn audit_row(row: &sqlx::sqlite::SqliteRow) -> Result<AuditRecord, StoreError> {
    let hash32 = |name: &str| -> Result<[u8; 32], StoreError> {
        let v: Vec<u8> = row.try_get(name)?;
        v.try_into().map_err(|_| StoreError::Corrupt(format!("an audit `{name}` is not 32 bytes")))
    };
    Ok(AuditRecord {
        seq: row.try_get("seq")?,
        time_ms: row.try_get("time")?,
        node: row.try_get("node")?,
        kind: row.try_get("kind")?,
        actor: row.try_get("actor")?,
        detail: row.try_get("detail")?,
        prev: hash32("prev")?,
        hash: hash32("hash")?,
    })
}

fn ban_row(row: &sqlx::sqlite::SqliteRow) -> Result<BanRecord, StoreError> {
    let offences: i64 = row.try_get("offences")?;
    Ok(BanRecord {
        key: row.try_get("key")?,
        reason: row.try_get("reason")?,
        created_ms: row.try_get("created")?,
        until_ms: row.try_get("until")?,
        offences: u32::try_from(offences).unwrap_or(u32::MAX),
    })
}

impl Store for SqliteStore {
    fn put_ban<'a>(&'a self, ban: &'a BanRecord, forget_before_ms: i64) -> StoreFuture<'a, i64> {
        Box::pin(async move {
            let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
            sqlx::query(
                "INSERT INTO bans (key, reason, created, until, offences) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (key) DO UPDATE SET reason = excluded.reason, created = excluded.created, \
                 until = excluded.until, offences = excluded.offences",
            )
            .bind(&ban.key)
            .bind(&ban.reason)
            .bind(ban.created_ms)
            .bind(ban.until_ms)
            .bind(i64::from(ban.offences))
            .execute(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM bans WHERE until < $1").bind(forget_before_ms).execute(&mut *tx).await?;
            let generation: i64 = sqlx::query(BUMP_BANS).fetch_one(&mut *tx).await?.try_get(0)?;
            tx.commit().await?;
            Ok(generation)
        })
    }

    fn remove_ban<'a>(&'a self, key: &'a str) -> StoreFuture<'a, (bool, i64)> {
        Box::pin(async move {
            let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
            let done = sqlx::query("DELETE FROM bans WHERE key = $1").bind(key).execute(&mut *tx).await?;
            let generation: i64 = sqlx::query(BUMP_BANS).fetch_one(&mut *tx).await?.try_get(0)?;
            tx.commit().await?;
            Ok((done.rows_affected() > 0, generation))
        })
    }

    fn bans(&self, until_after_ms: i64) -> StoreFuture<'_, (Vec<BanRecord>, i64)> {
        Box::pin(async move {
            let mut tx = self.pool.begin().await?;
            let generation: i64 = sqlx::query("SELECT value FROM meta WHERE key = 'bans_generation'")
                .fetch_one(&mut *tx)
                .await?
                .try_get(0)?;
            let rows = sqlx::query(
                "SELECT key, reason, created, until, offences FROM bans WHERE until > $1 ORDER BY until DESC, key",
            )
            .bind(until_after_ms)
            .fetch_all(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok((rows.iter().map(ban_row).collect::<Result<_, _>>()?, generation))
        })
    }

    fn bans_generation(&self) -> StoreFuture<'_, i64> {
        Box::pin(async move {
            let row = sqlx::query("SELECT value FROM meta WHERE key = 'bans_generation'").fetch_one(&self.pool).await?;
            Ok(row.try_get(0)?)
        })
    }

    fn quota_used<'a>(&'a self, route: &'a str, key: &'a str, period: i64) -> StoreFuture<'a, u64> {
        Box::pin(async move {
            let row = sqlx::query("SELECT used FROM quota_usage WHERE route = $1 AND key = $2 AND period = $3")
                .bind(route)
                .bind(key)
                .bind(period)
                .fetch_optional(&self.pool)
                .await?;
            let used: i64 = match row {
                Some(r) => r.try_get(0)?,
                None => 0,
            };
            Ok(u64::try_from(used).unwrap_or(0))
        })
    }

    fn add_quota_usage<'a>(&'a self, deltas: &'a [QuotaDelta]) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
            for q in deltas {
                sqlx::query(
                    "INSERT INTO quota_usage (route, key, period, used) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (route, key, period) DO UPDATE SET used = used + excluded.used",
                )
                .bind(&q.route)
                .bind(&q.key)
                .bind(q.period)
                .bind(i64::try_from(q.delta).unwrap_or(i64::MAX))
                .execute(&mut *tx)
                .await?;
            }
            // Indexed by period: cheap when there is nothing to delete.
            sqlx::query("DELETE FROM quota_usage WHERE period < $1").bind(now() - QUOTA_KEEP).execute(&mut *tx).await?;
            tx.commit().await?;
            Ok(())
        })
    }

    fn append_audit<'a>(&'a self, e: &'a AuditEvent) -> StoreFuture<'a, AuditRecord> {
        Box::pin(async move {
            // IMMEDIATE: the node and CLI commands append to one chain, one at a time.
            let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
            let last =
                sqlx::query("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetch_optional(&mut *tx).await?;
            let (seq, prev) = match last {
                Some(row) => {
                    let seq: i64 = row.try_get("seq")?;
                    let h: Vec<u8> = row.try_get("hash")?;
                    let prev: [u8; 32] =
                        h.try_into().map_err(|_| StoreError::Corrupt("an audit hash is not 32 bytes".into()))?;
                    (seq + 1, prev)
                }
                None => (1, [0u8; 32]),
            };
            let hash = chain_hash(&prev, seq, e);
            sqlx::query("INSERT INTO audit (seq, time, node, kind, actor, detail, prev, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
                .bind(seq)
                .bind(e.time_ms)
                .bind(&e.node)
                .bind(&e.kind)
                .bind(&e.actor)
                .bind(&e.detail)
                .bind(&prev[..])
                .bind(&hash[..])
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(AuditRecord {
                seq,
                time_ms: e.time_ms,
                node: e.node.clone(),
                kind: e.kind.clone(),
                actor: e.actor.clone(),
                detail: e.detail.clone(),
                prev,
                hash,
            })
        })
    }

    fn audit_after(&self, after: i64, limit: u32) -> StoreFuture<'_, Vec<AuditRecord>> {
        Box::pin(async move {
            let rows = sqlx::query(
                "SELECT seq, time, node, kind, actor, detail, prev, hash FROM audit WHERE seq > $1 ORDER BY seq LIMIT $2",
            )
            .bind(after)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
            rows.iter().map(audit_row).collect()
        })
    }

    fn audit_last(&self, n: u32) -> StoreFuture<'_, Vec<AuditRecord>> {
        Box::pin(async move {
            let rows = sqlx::query(
                "SELECT seq, time, node, kind, actor, detail, prev, hash FROM audit ORDER BY seq DESC LIMIT $1",
            )
            .bind(i64::from(n))
            .fetch_all(&self.pool)
            .await?;
            let mut out: Vec<AuditRecord> = rows.iter().map(audit_row).collect::<Result<_, _>>()?;
            out.reverse();
            Ok(out)
        })
    }

    fn close(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        Box::pin(self.pool.close())
    }

    fn add_consumer<'a>(&'a self, name: &'a str, groups: &'a [String]) -> StoreFuture<'a, Consumer> {
        Box::pin(async move {
            let created = now();
            let groups_json = serde_json::to_string(groups).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let mut tx = self.pool.begin().await?;
            let done =
                sqlx::query("INSERT INTO consumers (name, groups, created) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
                    .bind(name)
                    .bind(groups_json)
                    .bind(created)
                    .execute(&mut *tx)
                    .await?;
            if done.rows_affected() == 0 {
                return Err(StoreError::Exists(format!("consumer `{name}`")));
            }
            sqlx::query(BUMP).execute(&mut *tx).await?;
            tx.commit().await?;
            Ok(Consumer { name: name.to_string(), groups: groups.to_vec(), created })
        })
    }

    fn consumers(&self) -> StoreFuture<'_, Vec<Consumer>> {
        Box::pin(async move {
            let rows =
                sqlx::query("SELECT name, groups, created FROM consumers ORDER BY name").fetch_all(&self.pool).await?;
            rows.iter().map(consumer_row).collect()
        })
    }

    fn remove_consumer<'a>(&'a self, name: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let mut tx = self.pool.begin().await?;
            let done = sqlx::query("DELETE FROM consumers WHERE name = $1").bind(name).execute(&mut *tx).await?;
            if done.rows_affected() == 0 {
                return Ok(false);
            }
            sqlx::query(BUMP).execute(&mut *tx).await?;
            tx.commit().await?;
            Ok(true)
        })
    }

    fn add_key<'a>(&'a self, key: &'a KeyRecord) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
            let exists = sqlx::query("SELECT 1 FROM consumers WHERE name = $1")
                .bind(&key.consumer)
                .fetch_optional(&mut *tx)
                .await?;
            if exists.is_none() {
                return Err(StoreError::Missing(format!("consumer `{}`", key.consumer)));
            }
            let done = sqlx::query(
                "INSERT INTO api_keys (id, consumer, digest, created, revoked) VALUES ($1, $2, $3, $4, NULL) ON CONFLICT DO NOTHING",
            )
            .bind(&key.id)
            .bind(&key.consumer)
            .bind(&key.digest[..])
            .bind(key.created)
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() == 0 {
                return Err(StoreError::Exists(format!("key `{}`", key.id)));
            }
            sqlx::query(BUMP).execute(&mut *tx).await?;
            tx.commit().await?;
            Ok(())
        })
    }

    fn keys<'a>(&'a self, consumer: Option<&'a str>) -> StoreFuture<'a, Vec<KeyRecord>> {
        Box::pin(async move {
            let rows = match consumer {
                Some(c) => {
                    sqlx::query("SELECT id, consumer, digest, created, revoked FROM api_keys WHERE consumer = $1 ORDER BY created, id")
                        .bind(c)
                        .fetch_all(&self.pool)
                        .await?
                }
                None => {
                    sqlx::query("SELECT id, consumer, digest, created, revoked FROM api_keys ORDER BY created, id")
                        .fetch_all(&self.pool)
                        .await?
                }
            };
            rows.iter().map(key_row).collect()
        })
    }

    fn revoke_key<'a>(&'a self, id: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let mut tx = self.pool.begin().await?;
            let done = sqlx::query("UPDATE api_keys SET revoked = $1 WHERE id = $2 AND revoked IS NULL")
                .bind(now())
                .bind(id)
                .execute(&mut *tx)
                .await?;
            if done.rows_affected() == 0 {
                return Ok(false);
            }
            sqlx::query(BUMP).execute(&mut *tx).await?;
            tx.commit().await?;
            Ok(true)
        })
    }

    fn generation(&self) -> StoreFuture<'_, i64> {
        Box::pin(async move {
            let row = sqlx::query("SELECT value FROM meta WHERE key = 'generation'").fetch_one(&self.pool).await?;
            Ok(row.try_get(0)?)
        })
    }

    fn identities(&self) -> StoreFuture<'_, Identities> {
        Box::pin(async move {
            // One read transaction: the generation matches what is read with it.
            let mut tx = self.pool.begin().await?;
            let generation: i64 =
                sqlx::query("SELECT value FROM meta WHERE key = 'generation'").fetch_one(&mut *tx).await?.try_get(0)?;
            let consumers = sqlx::query("SELECT name, groups, created FROM consumers ORDER BY name")
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(consumer_row)
                .collect::<Result<_, _>>()?;
            let keys = sqlx::query("SELECT id, consumer, digest, created, revoked FROM api_keys WHERE revoked IS NULL")
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(key_row)
                .collect::<Result<_, _>>()?;
            tx.commit().await?;
            Ok(Identities { consumers, keys, generation })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn consumers_keys_and_generation() {
        let dir = std::env::temp_dir().join(format!("portcullis-store-{}-{}", std::process::id(), fastrand::u64(..)));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("s.db");
        let s = SqliteStore::open(&path).await.expect("open");
        let g0 = s.generation().await.expect("gen");
        s.add_consumer("app1", &["partners".into()]).await.expect("add");
        assert!(matches!(s.add_consumer("app1", &[]).await, Err(StoreError::Exists(_))));
        let k = KeyRecord {
            id: "0123456789ab".into(),
            consumer: "app1".into(),
            digest: [7; 32],
            created: 1,
            revoked: None,
        };
        s.add_key(&k).await.expect("key");
        let orphan = KeyRecord { consumer: "nobody".into(), id: "0123456789ac".into(), ..k.clone() };
        assert!(matches!(s.add_key(&orphan).await, Err(StoreError::Missing(_))));
        let ids = s.identities().await.expect("ids");
        assert_eq!(ids.keys, vec![k.clone()]);
        assert_eq!(ids.consumers[0].groups, vec!["partners".to_string()]);
        assert!(ids.generation > g0);
        assert!(s.revoke_key(&k.id).await.expect("revoke"));
        assert!(!s.revoke_key(&k.id).await.expect("revoke twice"));
        assert!(s.identities().await.expect("ids").keys.is_empty());
        assert!(s.keys(Some("app1")).await.expect("keys")[0].revoked.is_some());
        // Reopening migrates nothing and keeps the data.
        drop(s);
        let s = SqliteStore::open(&path).await.expect("reopen");
        assert_eq!(s.consumers().await.expect("list").len(), 1);
        assert!(s.remove_consumer("app1").await.expect("remove"));
        assert!(s.keys(None).await.expect("keys").is_empty(), "keys go with their consumer");
        assert!(!s.remove_consumer("app1").await.expect("remove twice"));
        let _ = std::fs::remove_dir_all(dir);
    }
}
