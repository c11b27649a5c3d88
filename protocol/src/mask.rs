//! Client-to-server masking (RFC 6455 §5.3), word at a time.
//!
//! Owns the XOR of a payload with its 4-byte key. Hot path: every client frame's
//! payload passes through [`apply`]; `benches/` measures it against the byte loop.

/// XOR `buf` with `key` in place, as if the key started at `buf[0]`.
///
/// Works 8 bytes at a time on a u64 built from the key (the payload's alignment does not
/// matter: `from_ne_bytes` on a chunk compiles to an unaligned load), then finishes the
/// tail byte by byte. The compiler vectorises the word loop.
#[inline]
pub fn apply(buf: &mut [u8], key: [u8; 4]) {
    let k32 = u32::from_ne_bytes(key) as u64;
    let k64 = k32 | (k32 << 32);
    let mut chunks = buf.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let v = u64::from_ne_bytes(word) ^ k64;
        chunk.copy_from_slice(&v.to_ne_bytes());
    }
    // The tail starts at a multiple of 8, so of 4: the key phase is 0 again.
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= key[i & 3];
    }
}

/// The plain byte-at-a-time loop, kept as the reference for tests and benches.
pub fn apply_bytewise(buf: &mut [u8], key: [u8; 4]) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b ^= key[i & 3];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn word_matches_bytewise(data in proptest::collection::vec(any::<u8>(), 0..300), key in any::<[u8; 4]>()) {
            let mut a = data.clone();
            let mut b = data.clone();
            apply(&mut a, key);
            apply_bytewise(&mut b, key);
            prop_assert_eq!(&a, &b);
            apply(&mut a, key);
            prop_assert_eq!(a, data);
        }
    }

    #[test]
    fn rfc_example() {
        // RFC 6455 §5.7: masked "Hello".
        let mut payload = [0x7f, 0x9f, 0x4d, 0x51, 0x58];
        apply(&mut payload, [0x37, 0xfa, 0x21, 0x3d]);
        assert_eq!(&payload, b"Hello");
    }
}
