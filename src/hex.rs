//! Lower-case hexadecimal, as the gateway writes ids, digests and trace context.

/// Append `bytes` as lower-case hex.
pub fn push(bytes: &[u8], out: &mut String) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    out.reserve(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 15)]));
    }
}

/// `bytes` as lower-case hex.
pub fn encode(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    push(bytes, &mut s);
    s
}

/// `s` with printable ASCII kept and `%`, every other byte, and the bytes of `also` written
/// as `%XX` (upper-case hex): text from the network or a certificate made safe for a header.
pub fn percent_encode(s: &str, also: &[u8]) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' && !also.contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decode hex (either case) that fills `out` exactly; `None` if it does not.
pub fn decode(s: &str, out: &mut [u8]) -> Option<()> {
    let b = s.as_bytes();
    if b.len() != out.len() * 2 {
        return None;
    }
    for (o, pair) in out.iter_mut().zip(b.chunks_exact(2)) {
        let h = (pair[0] as char).to_digit(16)?;
        let l = (pair[1] as char).to_digit(16)?;
        *o = (h * 16 + l) as u8;
    }
    Some(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_trip() {
        let mut out = [0u8; 3];
        assert_eq!(super::encode(&[0x00, 0xab, 0x7f]), "00ab7f");
        assert_eq!(super::decode("00AB7f", &mut out), Some(()));
        assert_eq!(out, [0x00, 0xab, 0x7f]);
        assert_eq!(super::decode("00ab7", &mut out), None);
        assert_eq!(super::decode("00ab7g", &mut out), None);
    }
}
