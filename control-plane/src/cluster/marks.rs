//! Inbox cursors and read receipts shared by every node, in Redis.
//!
//! Owns the key and the script. Per channel, under its hash tag: `…:m` (hash:
//! `<kind>|<device or user>` → `<epoch hex>:<delivered>:<read>:<at ms>`). A mark moved
//! on a node is merged by one script — within an epoch each offset only rises; a newer
//! epoch replaces an older one — and, when that changed anything, published on the
//! channel's topic (`M:<origin>\n<field>\n<value>`), so every node with the channel
//! raises its copy (and pushes a receipt to its subscribers); the node that moved it
//! skips its own. A node reading a channel's stream reads its marks with it, so a
//! device's cursor acknowledged on one node holds on every other.
//!
//! Does not own the link ([`super::link`]) or the marks' meaning (the engine).

use std::sync::Arc;

use switchboard_engine::journal::{MarkKind, MarkRecord};
use switchboard_protocol::Position;

/// Merge one mark (KEYS: marks hash, topic; ARGV: field, epoch hex, delivered, read,
/// at ms, origin node, sharded pub/sub).
const MERGE: &str = r"
local old = redis.call('HGET', KEYS[1], ARGV[1])
local e, d, r, at = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
if old then
  local oe, od, orr, oat = string.match(old, '^(%x+):(%d+):(%d+):(%d+)$')
  if oe == e then
    d = math.max(d, tonumber(od))
    r = math.max(r, tonumber(orr))
    at = math.max(at, tonumber(oat))
  elseif oat and tonumber(oat) > at then
    return 0
  end
end
local new = e .. ':' .. string.format('%d', d) .. ':' .. string.format('%d', r) .. ':' .. string.format('%d', at)
if new == old then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], new)
-- Kept 30 days after the last change, as on one node.
redis.call('PEXPIRE', KEYS[1], 2592000000)
local pub = 'PUBLISH'
if ARGV[7] == '1' then pub = 'SPUBLISH' end
redis.call(pub, KEYS[2], 'M:' .. ARGV[6] .. '\n' .. ARGV[1] .. '\n' .. new)
return 1
";

/// The merge script.
#[derive(Debug)]
pub struct Marks {
    script: redis::Script,
}

impl Default for Marks {
    fn default() -> Self {
        Marks {
            script: redis::Script::new(MERGE),
        }
    }
}

impl Marks {
    /// Load the script (once per link; on a Redis Cluster, on every master).
    pub async fn load<C: redis::aio::ConnectionLike>(
        &self,
        conn: &mut C,
    ) -> redis::RedisResult<()> {
        redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(MERGE)
            .query_async::<redis::Value>(conn)
            .await
            .map(|_| ())
    }

    /// The merge of `m`, moved on node `origin`, into the hash `key` (published on
    /// `topic`).
    pub fn cmd(
        &self,
        key: &str,
        topic: &str,
        m: &MarkRecord,
        origin: &str,
        sharded: bool,
    ) -> redis::Cmd {
        let e = Position {
            epoch: m.epoch,
            offset: 0,
        };
        let mut c = redis::cmd("EVALSHA");
        c.arg(self.script.get_hash())
            .arg(2)
            .arg(key)
            .arg(topic)
            .arg(field(m.kind, &m.who))
            .arg(e.epoch_hex().as_str())
            .arg(m.delivered)
            .arg(m.read)
            .arg(m.at_ms)
            .arg(origin)
            .arg(if sharded { "1" } else { "0" });
        c
    }
}

fn field(kind: MarkKind, who: &str) -> String {
    format!("{}|{who}", kind.code())
}

/// One entry of a channel's marks hash as the engine keeps it.
pub fn parse(channel: &Arc<str>, field: &str, value: &str) -> Option<MarkRecord> {
    let (kind, who) = field.split_once('|')?;
    let kind = MarkKind::from_code(kind.parse().ok()?)?;
    let mut v = value.split(':');
    let epoch = Position::parse_epoch(v.next()?)?;
    let delivered = v.next()?.parse().ok()?;
    let read = v.next()?.parse().ok()?;
    let at_ms = v.next()?.parse().ok()?;
    Some(MarkRecord {
        channel: channel.clone(),
        kind,
        who: who.into(),
        epoch,
        delivered,
        read,
        at_ms,
    })
}

/// A mark record from a topic (`M:…`): its origin node and the mark; `None` if `b` is
/// not one.
pub fn decode<'b>(channel: &Arc<str>, b: &'b [u8]) -> Option<(&'b str, MarkRecord)> {
    let rest = std::str::from_utf8(b.strip_prefix(b"M:")?).ok()?;
    let mut parts = rest.splitn(3, '\n');
    let (origin, field, value) = (parts.next()?, parts.next()?, parts.next()?);
    Some((origin, parse(channel, field, value)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_parse_and_records_decode() {
        let ch: Arc<str> = "inbox:bob".into();
        let m = parse(&ch, "0|phone", "00000000000000ab:3:3:99").unwrap();
        assert_eq!(
            (m.kind, &*m.who, m.epoch, m.read, m.at_ms),
            (MarkKind::Cursor, "phone", 0xab, 3, 99)
        );
        let (origin, r) = decode(&ch, b"M:n2\n1|bob\n00000000000000ab:5:4:7").unwrap();
        assert_eq!(origin, "n2");
        assert_eq!((r.kind, r.delivered, r.read), (MarkKind::Receipt, 5, 4));
        assert!(decode(&ch, b"M:n2\n9|bob\n00000000000000ab:5:4:7").is_none());
        assert!(decode(&ch, b"V:join\nbob\nonline").is_none());
    }
}
