//! The audit log's record format and hash chain.
//!
//! Each record carries the SHA-256 of the one before (`prev`) and its own `hash` over a
//! fixed, length-prefixed encoding of its fields and `prev`. Editing, deleting or reordering
//! any stored record breaks the chain at that record, which [`verify`] names. (Whoever can
//! rewrite the whole file can also rewrite every hash after an edit: copy the newest hash
//! elsewhere — `portcullis audit tail` prints it — to pin the chain's end.)

use serde::Serialize;

use super::{Store, StoreError};

/// One event to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// Unix time in milliseconds.
    pub time_ms: i64,
    /// The node (or `cli`) that recorded it.
    pub node: String,
    /// What happened: `config_applied`, `key_issued`, `auth_failure`, `admin_access`, …
    pub kind: String,
    /// Who did it: a consumer, a client address, `cli:USER`, `admin`.
    pub actor: String,
    /// Details, a JSON object.
    pub detail: String,
}

/// A stored record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditRecord {
    /// Position in the chain, from 1.
    pub seq: i64,
    /// Unix time in milliseconds.
    pub time_ms: i64,
    /// Recording node.
    pub node: String,
    /// Kind of event.
    pub kind: String,
    /// Who.
    pub actor: String,
    /// JSON details.
    pub detail: String,
    /// Hash of the record before (zeros for the first).
    #[serde(serialize_with = "hex")]
    pub prev: [u8; 32],
    /// Hash of this record.
    #[serde(serialize_with = "hex")]
    pub hash: [u8; 32],
}

fn hex<S: serde::Serializer>(b: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&to_hex(b))
}

/// Lower-case hex of a hash.
pub fn to_hex(b: &[u8; 32]) -> String {
    crate::hex::encode(b)
}

/// The hash of a record with these fields after `prev`.
pub fn chain_hash(prev: &[u8; 32], seq: i64, e: &AuditEvent) -> [u8; 32] {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(b"portcullis-audit-v1\0");
    ctx.update(prev);
    ctx.update(&seq.to_be_bytes());
    ctx.update(&e.time_ms.to_be_bytes());
    for field in [&e.node, &e.kind, &e.actor, &e.detail] {
        ctx.update(&(field.len() as u64).to_be_bytes());
        ctx.update(field.as_bytes());
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

impl AuditRecord {
    fn event(&self) -> AuditEvent {
        AuditEvent {
            time_ms: self.time_ms,
            node: self.node.clone(),
            kind: self.kind.clone(),
            actor: self.actor.clone(),
            detail: self.detail.clone(),
        }
    }
}

/// Where the chain breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broken {
    /// The first record that does not check out.
    pub seq: i64,
    /// Why.
    pub why: &'static str,
}

/// Check the whole chain: `Ok(number of records)` or the first bad record.
pub async fn verify(store: &dyn Store) -> Result<Result<u64, Broken>, StoreError> {
    let mut prev = [0u8; 32];
    let mut expect_seq = 1;
    let mut count = 0u64;
    // The first page starts below 1: a record slipped in before the first is found too.
    let mut after = i64::MIN;
    loop {
        let page = store.audit_after(after, 1000).await?;
        if page.is_empty() {
            return Ok(Ok(count));
        }
        for r in &page {
            if r.seq < expect_seq {
                return Ok(Err(Broken { seq: r.seq, why: "it is out of sequence (inserted)" }));
            }
            if r.seq != expect_seq {
                // A gap: the record before this one was removed.
                return Ok(Err(Broken { seq: r.seq, why: "the record before it is missing" }));
            }
            if r.prev != prev {
                return Ok(Err(Broken { seq: r.seq, why: "it does not follow the record before it" }));
            }
            if chain_hash(&prev, r.seq, &r.event()) != r.hash {
                return Ok(Err(Broken { seq: r.seq, why: "its content does not match its hash (edited)" }));
            }
            prev = r.hash;
            after = r.seq;
            expect_seq += 1;
            count += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_field_changes_the_hash() {
        let e = AuditEvent { time_ms: 1, node: "n".into(), kind: "k".into(), actor: "a".into(), detail: "{}".into() };
        let h = chain_hash(&[0; 32], 1, &e);
        assert_ne!(h, chain_hash(&[1; 32], 1, &e));
        assert_ne!(h, chain_hash(&[0; 32], 2, &e));
        for f in 0..5 {
            let mut x = e.clone();
            match f {
                0 => x.time_ms = 2,
                1 => x.node.push('x'),
                2 => x.kind.push('x'),
                3 => x.actor.push('x'),
                _ => x.detail.push(' '),
            }
            assert_ne!(h, chain_hash(&[0; 32], 1, &x), "field {f}");
        }
        // Length prefixes: moving a byte from one field to the next changes the hash.
        let moved = AuditEvent { node: "nk".into(), kind: String::new(), ..e.clone() };
        let e2 = AuditEvent { node: "n".into(), kind: "k".into(), ..e };
        assert_ne!(chain_hash(&[0; 32], 1, &moved), chain_hash(&[0; 32], 1, &e2));
    }
}
