//! Per-user rate limits across nodes: what users' connections on one node took of
//! their per-user rules, told to every other node.
//!
//! Each shard reports its users' use every 250 ms (`switchboard_engine::cluster::
//! UserSpent`); the relay sends what it has as one message on `{P}:spent` (classic
//! pub/sub: every node hears it, one message per node per report, however many users)
//! and hands what other nodes report to each user's owner shard, which counts it
//! against the user's buckets there. So a user connected to several nodes has one
//! budget, overdrawn at most by one report interval of its other connections; while
//! Redis is away each node limits alone.
//!
//! Owns the message's format and topic. Does not own the buckets (the engine) or
//! Redis (`super::relay`).

use std::sync::Arc;

use switchboard_engine::cluster::UserSpent;
use switchboard_engine::limits::EVENTS;

/// The topic every node's reports go on.
pub fn topic(prefix: &str) -> String {
    format!("{{{prefix}}}:spent")
}

/// `S:<origin>\n`, then per user: its id (u16 length), its tier (u8 length, 0: none),
/// a byte with a bit per event taken, and a u32 count per set bit (little-endian).
pub fn encode(origin: &str, users: &[UserSpent]) -> Vec<u8> {
    let mut out = Vec::with_capacity(3 + origin.len() + users.len() * 24);
    out.extend_from_slice(b"S:");
    out.extend_from_slice(origin.as_bytes());
    out.push(b'\n');
    for u in users {
        let user = &u.user.as_bytes()[..u.user.len().min(u16::MAX as usize)];
        out.extend_from_slice(&(user.len() as u16).to_le_bytes());
        out.extend_from_slice(user);
        let tier = u.tier.as_deref().unwrap_or("").as_bytes();
        let tier = &tier[..tier.len().min(u8::MAX as usize)];
        out.push(tier.len() as u8);
        out.extend_from_slice(tier);
        let mask = u
            .counts
            .iter()
            .enumerate()
            .filter(|(_, &n)| n > 0)
            .fold(0u8, |m, (i, _)| m | 1 << i);
        out.push(mask);
        for &n in u.counts.iter().filter(|&&n| n > 0) {
            out.extend_from_slice(&n.to_le_bytes());
        }
    }
    out
}

/// A report: its origin and users; `None` if `b` is not one (or is cut short).
pub fn decode(b: &[u8]) -> Option<(&str, Vec<UserSpent>)> {
    let rest = b.strip_prefix(b"S:")?;
    let nl = rest.iter().position(|&c| c == b'\n')?;
    let origin = std::str::from_utf8(&rest[..nl]).ok()?;
    let mut rest = &rest[nl + 1..];
    let mut users = Vec::new();
    while !rest.is_empty() {
        let n = u16::from_le_bytes(rest.get(..2)?.try_into().ok()?) as usize;
        let user: Arc<str> = Arc::from(std::str::from_utf8(rest.get(2..2 + n)?).ok()?);
        rest = &rest[2 + n..];
        let t = *rest.first()? as usize;
        let tier = std::str::from_utf8(rest.get(1..1 + t)?).ok()?;
        let tier = (!tier.is_empty()).then(|| Arc::from(tier));
        rest = &rest[1 + t..];
        let mask = *rest.first()?;
        rest = &rest[1..];
        let mut counts = [0u32; EVENTS];
        for (i, c) in counts.iter_mut().enumerate() {
            if mask & (1 << i) != 0 {
                *c = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?);
                rest = &rest[4..];
            }
        }
        if mask >> EVENTS != 0 {
            return None;
        }
        users.push(UserSpent { user, tier, counts });
    }
    Some((origin, users))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_round_trip_and_refuse_garbage() {
        let users = vec![
            UserSpent {
                user: "ann".into(),
                tier: Some("gold".into()),
                counts: [3, 2, 0, 0, 0, 0, 1],
            },
            UserSpent {
                user: "bob".into(),
                tier: None,
                counts: [1, 0, 0, 0, 0, 0, 0],
            },
        ];
        let b = encode("n1", &users);
        let (origin, back) = decode(&b).unwrap();
        assert_eq!((origin, back), ("n1", users));
        assert!(decode(&b[..b.len() - 1]).is_none());
        assert!(decode(b"S:n1\n\x01\x00a\x00\xff").is_none());
        assert_eq!(decode(b"S:n1\n").unwrap().1, vec![]);
    }
}
