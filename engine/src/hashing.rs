//! The hasher of the shard's per-message maps, keyed by channel and user names.
//!
//! Owns one choice: those maps hash with foldhash (the hasher hashbrown itself
//! defaults to) instead of std's SipHash-1-3. A publication looks names up several
//! times (audience, stream, history, delivery), and on names of 10-40 bytes SipHash
//! costs several times what foldhash does. The seed is random per process and per
//! map, so the names a client picks cannot be aimed at one bucket without seeing
//! hash values, which the server never shows. Does not own the maps.

/// Build-hasher of the shard's name-keyed maps.
pub type NameHasher = foldhash::fast::RandomState;

/// A `HashMap` hashed with [`NameHasher`].
pub type NameMap<K, V> = std::collections::HashMap<K, V, NameHasher>;
