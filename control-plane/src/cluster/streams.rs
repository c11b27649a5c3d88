//! Cluster-wide channel streams in Redis: one (epoch, offset) sequence per channel for
//! every node, its recent history, and the publication's way to the other nodes — in
//! one atomic script, one round trip per publication.
//!
//! Owns the keys and the script. A channel's keys share its hash tag,
//! `{P:ch:<channel>}`, so in a Redis Cluster each channel lives in one slot (channels
//! spread over the cluster) and its pub/sub topic (the same tag, sharded pub/sub)
//! goes to that slot's shard: `…:s` (hash: `e` the epoch as 16 hex digits, `o` the last
//! offset), `…:h` (list: the last `keep` records), `…:t` (the topic). A record is
//! `<epoch hex>:<offset>:<payload>` — binary-safe, the payload as the engine encoded
//! it. The script creates the epoch the first time (from the caller's random seed),
//! takes the next offset, appends and trims the history, and publishes the record, so
//! every node sees one order per channel.
//!
//! Groundwork for cross-node fan-out (issue 18): not yet on the publish path. Does
//! not own the link ([`super`]) or delivery.

use redis::RedisResult;
use switchboard_protocol::Position;

/// A channel's keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelKeys {
    /// The stream's epoch and last offset (hash).
    pub stream: String,
    /// Its recent records (list).
    pub history: String,
    /// Its pub/sub topic.
    pub topic: String,
}

impl ChannelKeys {
    /// The keys of `channel` under `prefix`.
    pub fn new(prefix: &str, channel: &str) -> ChannelKeys {
        let tag = format!("{{{prefix}:ch:{channel}}}");
        ChannelKeys {
            stream: format!("{tag}:s"),
            history: format!("{tag}:h"),
            topic: format!("{tag}:t"),
        }
    }
}

/// Sequence, keep and publish one publication (KEYS: stream, history, topic; ARGV:
/// epoch seed, keep, payload, whether to use sharded pub/sub).
const PUBLISH: &str = r"
local e = redis.call('HGET', KEYS[1], 'e')
if not e then
  e = ARGV[1]
  redis.call('HSET', KEYS[1], 'e', e)
end
local o = redis.call('HINCRBY', KEYS[1], 'o', 1)
local rec = e .. ':' .. o .. ':' .. ARGV[3]
local keep = tonumber(ARGV[2])
if keep > 0 then
  redis.call('RPUSH', KEYS[2], rec)
  redis.call('LTRIM', KEYS[2], -keep, -1)
end
if ARGV[4] == '1' then
  redis.call('SPUBLISH', KEYS[3], rec)
else
  redis.call('PUBLISH', KEYS[3], rec)
end
return {e, o}
";

/// The script, loaded once per link.
#[derive(Debug)]
pub struct Sequencer {
    script: redis::Script,
    sharded: bool,
}

impl Sequencer {
    /// A sequencer publishing with `PUBLISH` (or `SPUBLISH` on a Redis Cluster, 7.0+).
    pub fn new(sharded: bool) -> Sequencer {
        Sequencer {
            script: redis::Script::new(PUBLISH),
            sharded,
        }
    }

    /// Sequence `payload` on `keys`' channel, keep it among the last `keep`, and
    /// publish it; its position. `epoch_seed` is the epoch a new stream starts with.
    pub async fn publish<C: redis::aio::ConnectionLike>(
        &self,
        conn: &mut C,
        keys: &ChannelKeys,
        epoch_seed: u64,
        keep: usize,
        payload: &[u8],
    ) -> RedisResult<Position> {
        let seed = Position {
            epoch: epoch_seed,
            offset: 0,
        };
        let (epoch, offset): (String, u64) = self
            .script
            .key(&keys.stream)
            .key(&keys.history)
            .key(&keys.topic)
            .arg(seed.epoch_hex().as_str())
            .arg(keep)
            .arg(payload)
            .arg(if self.sharded { "1" } else { "0" })
            .invoke_async(conn)
            .await?;
        let epoch = Position::parse_epoch(&epoch).ok_or_else(|| {
            redis::RedisError::from((redis::ErrorKind::Parse, "not an epoch", epoch))
        })?;
        Ok(Position { epoch, offset })
    }
}

/// A record's position and payload; `None` if it is not one.
pub fn decode_record(record: &[u8]) -> Option<(Position, &[u8])> {
    let epoch = Position::parse_epoch(std::str::from_utf8(record.get(..16)?).ok()?)?;
    let rest = record.get(16..)?.strip_prefix(b":")?;
    let colon = rest.iter().position(|&b| b == b':')?;
    let offset = std::str::from_utf8(&rest[..colon]).ok()?.parse().ok()?;
    Some((Position { epoch, offset }, &rest[colon + 1..]))
}

/// A stream hash's epoch (hex) and last offset, as read.
type StreamTop = (Option<String>, Option<u64>);

/// The stream's latest position (`None`: no publication yet) and the kept records
/// after `after` (all kept ones without it), oldest first.
pub async fn history<C: redis::aio::ConnectionLike>(
    conn: &mut C,
    keys: &ChannelKeys,
    after: Option<Position>,
) -> RedisResult<(Option<Position>, Vec<(Position, Vec<u8>)>)> {
    let ((epoch, offset), records): (StreamTop, Vec<Vec<u8>>) = redis::pipe()
        .cmd("HMGET")
        .arg(&keys.stream)
        .arg("e")
        .arg("o")
        .cmd("LRANGE")
        .arg(&keys.history)
        .arg(0)
        .arg(-1)
        .query_async(conn)
        .await?;
    let top = match (epoch.as_deref().and_then(Position::parse_epoch), offset) {
        (Some(epoch), Some(offset)) => Some(Position { epoch, offset }),
        _ => None,
    };
    let kept = records
        .iter()
        .filter_map(|r| decode_record(r).map(|(p, d)| (p, d.to_vec())))
        .filter(|(p, _)| after.is_none_or(|a| p.epoch != a.epoch || p.offset > a.offset))
        .collect();
    Ok((top, kept))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_the_channels_slot_and_records_decode() {
        let k = ChannelKeys::new("sb", "room:1");
        assert_eq!(k.stream, "{sb:ch:room:1}:s");
        assert_eq!(k.history, "{sb:ch:room:1}:h");
        assert_eq!(k.topic, "{sb:ch:room:1}:t");
        let rec = b"00000000000000ab:42:\x00\xffdata:with:colons";
        let (pos, payload) = decode_record(rec).unwrap();
        assert_eq!(
            pos,
            Position {
                epoch: 0xab,
                offset: 42
            }
        );
        assert_eq!(payload, b"\x00\xffdata:with:colons");
        assert!(decode_record(b"short").is_none());
        assert!(decode_record(b"00000000000000ab:x:1").is_none());
    }
}
