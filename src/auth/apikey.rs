//! API keys: their format, how they are made, and how a presented key is checked.
//!
//! A key reads `pcl_<id>_<secret>`: `id` is 12 lower-case hex digits, public, used to find
//! the record; `secret` is 32 random bytes in unpadded base64url (43 characters). Only the
//! SHA-256 of the whole key is stored: keys carry 256 bits of entropy, so a fast hash leaves
//! nothing to guess offline and costs one digest per request (a password hash would make
//! every request a CPU-exhaustion lever). Digests are compared in constant time.

use base64::Engine as _;
use subtle::ConstantTimeEq;

/// Every key starts with this, so scanners (and people) can recognise a leaked one.
pub const PREFIX: &str = "pcl_";
const ID_LEN: usize = 12;
const SECRET_LEN: usize = 43;
/// Length of a whole key.
pub const KEY_LEN: usize = PREFIX.len() + ID_LEN + 1 + SECRET_LEN;

/// A freshly made key: shown once, then only `id` and `digest` are kept.
#[derive(Debug)]
pub struct NewKey {
    /// The public id.
    pub id: String,
    /// The whole key, to hand to the caller.
    pub key: String,
    /// SHA-256 of `key`.
    pub digest: [u8; 32],
}

/// Make a new random key.
pub fn generate() -> Result<NewKey, aws_lc_rs::error::Unspecified> {
    let mut id = [0u8; ID_LEN / 2];
    let mut secret = [0u8; 32];
    aws_lc_rs::rand::fill(&mut id)?;
    aws_lc_rs::rand::fill(&mut secret)?;
    let id = crate::hex::encode(&id);
    let key = format!("{PREFIX}{id}_{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret));
    let digest = digest(key.as_bytes());
    Ok(NewKey { id, key, digest })
}

/// SHA-256 of a whole key.
pub fn digest(key: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Whether `s` has the form of a key id.
pub fn valid_id(s: &str) -> bool {
    s.len() == ID_LEN && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The id of a presented key, if it has the form of one (nothing else is trusted yet).
pub fn parse_id(key: &[u8]) -> Option<&str> {
    if key.len() != KEY_LEN || !key.starts_with(PREFIX.as_bytes()) || key[PREFIX.len() + ID_LEN] != b'_' {
        return None;
    }
    let secret = &key[PREFIX.len() + ID_LEN + 1..];
    if !secret.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_') {
        return None;
    }
    let id = std::str::from_utf8(&key[PREFIX.len()..PREFIX.len() + ID_LEN]).ok()?;
    valid_id(id).then_some(id)
}

/// Whether a presented key matches a stored digest (constant time in the digest).
pub fn matches(key: &[u8], stored: &[u8; 32]) -> bool {
    digest(key).ct_eq(stored).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_and_match() {
        let k = generate().expect("random");
        assert_eq!(k.key.len(), KEY_LEN);
        assert_eq!(parse_id(k.key.as_bytes()), Some(k.id.as_str()));
        assert!(matches(k.key.as_bytes(), &k.digest));
        let mut other = k.key.clone().into_bytes();
        let last = other.len() - 1;
        other[last] = if other[last] == b'A' { b'B' } else { b'A' };
        assert!(!matches(&other, &k.digest));
        assert_ne!(generate().expect("random").key, k.key);
    }

    #[test]
    fn malformed_keys_have_no_id() {
        let k = generate().expect("random").key;
        for bad in [
            String::new(),
            k[..k.len() - 1].to_string(),
            format!("{k}x"),
            k.replacen("pcl_", "pck_", 1),
            k.replacen('_', "-", 2),
            format!("pcl_ABCDEF012345_{}", &k[17..]),
            format!("{}=", &k[..k.len() - 1]),
            format!("{}\n", &k[..k.len() - 1]),
        ] {
            assert_eq!(parse_id(bad.as_bytes()), None, "{bad:?}");
        }
    }
}
