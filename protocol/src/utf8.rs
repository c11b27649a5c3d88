//! UTF-8 validation that can be fed a text message in pieces (fragments).
//!
//! Owns the up-to-3 bytes of a code point split across two fragments. Fails as soon as
//! a byte sequence is certainly invalid, without waiting for the final fragment
//! (a "fail fast" peer is closed with 1007 early). Uses `simdutf8` for the bulk.

use crate::Error;

/// Incremental validator; `Default` is the state before the first byte.
#[derive(Debug, Default, Clone)]
pub struct Utf8Validator {
    /// Bytes of a code point begun at the end of the previous piece.
    pending: [u8; 4],
    /// How many bytes of `pending` are in use (0..=3).
    pending_len: u8,
}

/// Validate a complete string in one go.
#[inline]
pub fn validate(bytes: &[u8]) -> Result<(), Error> {
    simdutf8::basic::from_utf8(bytes)
        .map(|_| ())
        .map_err(|_| Error::InvalidUtf8)
}

impl Utf8Validator {
    /// Validate the next piece. An incomplete code point at its end is kept for later.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<(), Error> {
        if self.pending_len > 0 {
            // Complete the pending code point with as few new bytes as it needs.
            let need = char_len(self.pending[0]).ok_or(Error::InvalidUtf8)?;
            let have = self.pending_len as usize;
            let take = (need - have).min(bytes.len());
            self.pending[have..have + take].copy_from_slice(&bytes[..take]);
            let now = have + take;
            match simdutf8::compat::from_utf8(&self.pending[..now]) {
                Ok(_) => self.pending_len = 0,
                Err(e) if e.error_len().is_none() && now < need => {
                    self.pending_len = now as u8;
                    return Ok(());
                }
                Err(_) => return Err(Error::InvalidUtf8),
            }
            bytes = &bytes[take..];
        }
        match simdutf8::compat::from_utf8(bytes) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_none() => {
                let tail = &bytes[e.valid_up_to()..];
                self.pending[..tail.len()].copy_from_slice(tail);
                self.pending_len = tail.len() as u8;
                Ok(())
            }
            Err(_) => Err(Error::InvalidUtf8),
        }
    }

    /// The message ended: a code point still incomplete is an error.
    pub fn finish(&self) -> Result<(), Error> {
        if self.pending_len == 0 {
            Ok(())
        } else {
            Err(Error::InvalidUtf8)
        }
    }
}

fn char_len(first: u8) -> Option<usize> {
    match first {
        0x00..=0x7f => Some(1),
        0xc2..=0xdf => Some(2),
        0xe0..=0xef => Some(3),
        0xf0..=0xf4 => Some(4),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn split_check(bytes: &[u8], cuts: &[usize]) -> bool {
        let mut v = Utf8Validator::default();
        let mut start = 0;
        for &c in cuts {
            let c = c.min(bytes.len()).max(start);
            if v.feed(&bytes[start..c]).is_err() {
                return false;
            }
            start = c;
        }
        v.feed(&bytes[start..]).is_ok() && v.finish().is_ok()
    }

    proptest! {
        #[test]
        fn pieces_agree_with_whole(bytes in proptest::collection::vec(any::<u8>(), 0..64),
                                   mut cuts in proptest::collection::vec(0usize..64, 0..5)) {
            cuts.sort();
            prop_assert_eq!(split_check(&bytes, &cuts), std::str::from_utf8(&bytes).is_ok());
        }

        #[test]
        fn valid_strings_pass_any_split(s in "\\PC{0,40}", mut cuts in proptest::collection::vec(0usize..160, 0..6)) {
            cuts.sort();
            prop_assert!(split_check(s.as_bytes(), &cuts));
        }
    }

    #[test]
    fn fails_fast_on_bad_byte() {
        let mut v = Utf8Validator::default();
        assert!(v.feed(b"ok \xce").is_ok());
        assert!(v.feed(b"\xba\xe1").is_ok());
        assert_eq!(v.feed(b"\xff"), Err(Error::InvalidUtf8));
    }

    #[test]
    fn truncated_at_end_fails() {
        let mut v = Utf8Validator::default();
        v.feed("é".as_bytes()[..1].as_ref()).unwrap();
        assert!(v.finish().is_err());
    }
}
