//! Random identifiers: request ids, dev-mode secrets and API keys, store epochs.
//!
//! Owns turning the OS random source into hex strings. Does not own what the ids
//! mean.

/// Random hex string of `bytes` random bytes.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom::getrandom(&mut buf).expect("the OS random source is available");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}
