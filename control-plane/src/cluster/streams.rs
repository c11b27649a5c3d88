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
//! A record's payload ([`encode_payload`]) carries what the engine needs to deliver
//! it on any node: format, sending time, sender, event name, author, the publication
//! it edits or deletes, metadata, data. An
//! idempotency key is remembered in Redis (`…:k:<key>`, for the dedupe window), so a
//! retry through any node gets the original position. Does not own the link
//! ([`super::relay`]) or delivery (the engine's owner shards).

use std::sync::Arc;

use bytes::Bytes;
use redis::RedisResult;
use switchboard_engine::cluster::{RemoteRecord, SharedPublish};
use switchboard_engine::journal::{revision_code, revision_of};
use switchboard_protocol::{Format, Position};

/// A channel's keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelKeys {
    /// The stream's epoch and last offset (hash).
    pub stream: String,
    /// Its recent records (list).
    pub history: String,
    /// Its pub/sub topic.
    pub topic: String,
    /// Its inbox cursors and receipts (hash, [`super::marks`]).
    pub marks: String,
}

impl ChannelKeys {
    /// The keys of `channel` under `prefix`.
    pub fn new(prefix: &str, channel: &str) -> ChannelKeys {
        let tag = format!("{{{prefix}:ch:{channel}}}");
        ChannelKeys {
            stream: format!("{tag}:s"),
            history: format!("{tag}:h"),
            topic: format!("{tag}:t"),
            marks: format!("{tag}:m"),
        }
    }
}

/// Sequence, keep and publish one publication (KEYS: stream, history, topic,
/// idempotency key; ARGV: epoch seed, keep, payload, sharded pub/sub, whether a key
/// was given, dedupe window ms, how long the stream outlives its last use ms (0:
/// forever)). Returns `{epoch, offset, duplicate}`.
const PUBLISH: &str = r"
if ARGV[5] == '1' then
  local seen = redis.call('GET', KEYS[4])
  if seen then
    local colon = string.find(seen, ':', 1, true)
    return {string.sub(seen, 1, colon - 1), tonumber(string.sub(seen, colon + 1)), 1}
  end
end
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
if ARGV[5] == '1' then
  redis.call('SET', KEYS[4], e .. ':' .. o, 'PX', ARGV[6])
end
local ttl = tonumber(ARGV[7])
if ttl and ttl > 0 then
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('PEXPIRE', KEYS[2], ttl)
end
if ARGV[4] == '1' then
  redis.call('SPUBLISH', KEYS[3], rec)
else
  redis.call('PUBLISH', KEYS[3], rec)
end
return {e, o, 0}
";

/// Start a new epoch at offset 0 and forget the old epoch's records (KEYS: stream,
/// history; ARGV: the new epoch).
const MOVE_EPOCH: &str = r"
redis.call('HSET', KEYS[1], 'e', ARGV[1], 'o', 0)
redis.call('DEL', KEYS[2])
return 1
";

/// The scripts, loaded once per link.
#[derive(Debug)]
pub struct Sequencer {
    script: redis::Script,
    mover: redis::Script,
    sharded: bool,
}

/// One publication for [`Sequencer::add`].
#[derive(Debug, Clone, Copy)]
pub struct Sequence<'a> {
    /// The channel's keys.
    pub keys: &'a ChannelKeys,
    /// The epoch a new stream starts with.
    pub epoch_seed: u64,
    /// Records kept.
    pub keep: u32,
    /// The record's payload ([`encode_payload`]).
    pub payload: &'a [u8],
    /// Idempotency key, and how long Redis remembers it.
    pub key: Option<(&'a str, u64)>,
    /// How long the stream outlives its last use, ms (0: forever).
    pub ttl_ms: u64,
}

impl Sequencer {
    /// A sequencer publishing with `PUBLISH` (or `SPUBLISH` on a Redis Cluster, 7.0+).
    pub fn new(sharded: bool) -> Sequencer {
        Sequencer {
            script: redis::Script::new(PUBLISH),
            mover: redis::Script::new(MOVE_EPOCH),
            sharded,
        }
    }

    /// Load the scripts (once per link; on a Redis Cluster, on every master).
    pub async fn load<C: redis::aio::ConnectionLike>(&self, conn: &mut C) -> RedisResult<()> {
        for code in [PUBLISH, MOVE_EPOCH] {
            redis::cmd("SCRIPT")
                .arg("LOAD")
                .arg(code)
                .query_async::<redis::Value>(conn)
                .await?;
        }
        Ok(())
    }

    /// One publication's script call (by hash: [`Sequencer::load`] first); its answer
    /// parses with [`parse_sequenced`].
    pub fn cmd(&self, s: Sequence<'_>) -> redis::Cmd {
        let seed = Position {
            epoch: s.epoch_seed,
            offset: 0,
        };
        let key = match s.key {
            Some((k, _)) => format!("{}:k:{k}", s.keys.stream),
            None => format!("{}:k", s.keys.stream),
        };
        let mut c = redis::cmd("EVALSHA");
        c.arg(self.script.get_hash())
            .arg(4)
            .arg(&s.keys.stream)
            .arg(&s.keys.history)
            .arg(&s.keys.topic)
            .arg(key)
            .arg(seed.epoch_hex().as_str())
            .arg(s.keep)
            .arg(s.payload)
            .arg(if self.sharded { "1" } else { "0" })
            .arg(if s.key.is_some() { "1" } else { "0" })
            .arg(s.key.map_or(1, |(_, ms)| ms.max(1)))
            .arg(s.ttl_ms);
        c
    }

    /// A move of `keys`' channel to `epoch` (offset 0).
    pub fn move_cmd(&self, keys: &ChannelKeys, epoch: u64) -> redis::Cmd {
        let e = Position { epoch, offset: 0 };
        let mut c = redis::cmd("EVALSHA");
        c.arg(self.mover.get_hash())
            .arg(2)
            .arg(&keys.stream)
            .arg(&keys.history)
            .arg(e.epoch_hex().as_str());
        c
    }

    /// How a record goes to a channel's topic: `SPUBLISH` on a Redis Cluster.
    pub fn publish_cmd(&self) -> &'static str {
        if self.sharded {
            "SPUBLISH"
        } else {
            "PUBLISH"
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
        self.load(conn).await?;
        let s = Sequence {
            keys,
            epoch_seed,
            keep: keep.min(u32::MAX as usize) as u32,
            payload,
            key: None,
            ttl_ms: 0,
        };
        let answer: redis::Value = self.cmd(s).query_async(conn).await?;
        parse_sequenced(answer).map(|(p, _)| p)
    }
}

/// A script answer: the position, and whether it was a retry's (the key was seen).
pub fn parse_sequenced(v: redis::Value) -> RedisResult<(Position, bool)> {
    let (epoch, offset, dup): (String, u64, u8) = redis::from_redis_value(v)?;
    let epoch = Position::parse_epoch(&epoch)
        .ok_or_else(|| redis::RedisError::from((redis::ErrorKind::Parse, "not an epoch", epoch)))?;
    Ok((Position { epoch, offset }, dup == 1))
}

/// A u16-length-prefixed string (empty for `None`).
fn put_str(out: &mut Vec<u8>, s: Option<&str>) {
    let s = s.unwrap_or("").as_bytes();
    let n = s.len().min(u16::MAX as usize);
    out.extend_from_slice(&(n as u16).to_le_bytes());
    out.extend_from_slice(&s[..n]);
}

/// A record's payload: version, format, sending time, sender, event, (version 2:
/// author, revision), metadata, data. Version 1 — what nodes of builds before authors
/// and revisions read — when the publication has neither, so a rolling upgrade keeps
/// delivering anonymous publications both ways; version 2 otherwise.
pub fn encode_payload(p: &SharedPublish, sent_ms: u64) -> Vec<u8> {
    let meta = p.meta.as_deref();
    let v2 = p.author.is_some() || p.revises.is_some();
    let mut out = Vec::with_capacity(
        40 + p.from.as_deref().map_or(0, str::len)
            + p.event.as_deref().map_or(0, str::len)
            + p.author.as_deref().map_or(0, str::len)
            + meta.map_or(0, <[u8]>::len)
            + p.data.len(),
    );
    out.push(if v2 { 2 } else { 1 });
    out.push(p.format.index() as u8);
    out.extend_from_slice(&sent_ms.to_le_bytes());
    put_str(&mut out, p.from.as_deref());
    put_str(&mut out, p.event.as_deref());
    if v2 {
        put_str(&mut out, p.author.as_deref());
        match p.revises {
            Some(r) => {
                out.push(1);
                out.extend_from_slice(&revision_code(r).to_le_bytes());
            }
            None => out.push(0),
        }
    }
    match meta {
        Some(m) => {
            out.extend_from_slice(&(m.len() as u32).to_le_bytes());
            out.extend_from_slice(m);
        }
        None => out.extend_from_slice(&u32::MAX.to_le_bytes()),
    }
    out.extend_from_slice(&p.data);
    out
}

/// A whole record (`<epoch>:<offset>:<payload>`) as the engine delivers it; `None` if
/// it is not one.
pub fn decode(record: &[u8]) -> Option<RemoteRecord> {
    let (position, payload) = decode_record(record)?;
    let (&version, rest) = payload.split_first()?;
    if version != 1 && version != 2 {
        return None;
    }
    let (&format, rest) = rest.split_first()?;
    let format = *Format::ALL.get(format as usize)?;
    let sent_ms = u64::from_le_bytes(rest.get(..8)?.try_into().ok()?);
    let rest = &rest[8..];
    let (from, rest) = take_str(rest)?;
    let (event, rest) = take_str(rest)?;
    let (author, revises, rest) = if version == 2 {
        let (author, rest) = take_str(rest)?;
        let (&has, rest) = rest.split_first()?;
        match has {
            0 => (author, None, rest),
            1 => {
                let code = i64::from_le_bytes(rest.get(..8)?.try_into().ok()?);
                (author, Some(revision_of(code)), &rest[8..])
            }
            _ => return None,
        }
    } else {
        (None, None, rest)
    };
    let meta_len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?);
    let rest = &rest[4..];
    let (meta, data) = if meta_len == u32::MAX {
        (None, rest)
    } else {
        let n = meta_len as usize;
        (Some(Bytes::copy_from_slice(rest.get(..n)?)), &rest[n..])
    };
    Some(RemoteRecord {
        position,
        sent_ms,
        format,
        data: Bytes::copy_from_slice(data),
        meta,
        from,
        event,
        author,
        revises,
    })
}

/// A u16-length-prefixed string (`None` when empty).
fn take_str(b: &[u8]) -> Option<(Option<Arc<str>>, &[u8])> {
    let n = u16::from_le_bytes(b.get(..2)?.try_into().ok()?) as usize;
    let s = std::str::from_utf8(b.get(2..2 + n)?).ok()?;
    let s = (!s.is_empty()).then(|| Arc::from(s));
    Some((s, &b[2 + n..]))
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

/// Read a channel's stream: its position (the epoch created from `epoch_seed` if it
/// has none, so every node starts its subscribers in the epoch publications will
/// use) and its kept records, oldest first.
pub async fn read<C: redis::aio::ConnectionLike>(
    conn: &mut C,
    keys: &ChannelKeys,
    epoch_seed: u64,
    ttl_ms: u64,
) -> RedisResult<(Position, Vec<RemoteRecord>, Vec<(String, String)>)> {
    let seed = Position {
        epoch: epoch_seed,
        offset: 0,
    };
    let ((epoch, offset), records, marks): Read = redis::pipe()
        .cmd("HSETNX")
        .arg(&keys.stream)
        .arg("e")
        .arg(seed.epoch_hex().as_str())
        .ignore()
        .cmd("PEXPIRE")
        .arg(&keys.stream)
        .arg(ttl_ms.max(1))
        .ignore()
        .cmd("HMGET")
        .arg(&keys.stream)
        .arg("e")
        .arg("o")
        .cmd("LRANGE")
        .arg(&keys.history)
        .arg(0)
        .arg(-1)
        .cmd("HGETALL")
        .arg(&keys.marks)
        .query_async(conn)
        .await?;
    let epoch = epoch
        .as_deref()
        .and_then(Position::parse_epoch)
        .ok_or_else(|| {
            redis::RedisError::from((redis::ErrorKind::Parse, "stream without an epoch"))
        })?;
    let top = Position {
        epoch,
        offset: offset.unwrap_or(0),
    };
    let kept = records.iter().filter_map(|r| decode(r)).collect();
    Ok((top, kept, marks))
}

/// What a channel's read gets: the stream's top, its records, its marks.
type Read = (StreamTop, Vec<Vec<u8>>, Vec<(String, String)>);

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

/// The channel a topic belongs to (`{P:ch:<channel>}:t`), under `prefix`.
pub fn channel_of<'t>(prefix: &str, topic: &'t str) -> Option<&'t str> {
    topic
        .strip_prefix('{')?
        .strip_prefix(prefix)?
        .strip_prefix(":ch:")?
        .strip_suffix("}:t")
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

    #[test]
    fn payloads_carry_what_delivery_needs_and_bad_ones_are_refused() {
        let p = SharedPublish {
            channel: "room:1".into(),
            data: Bytes::from_static(b"\x81\xa1n\x01"),
            meta: Some(Bytes::from_static(b"\xc0")),
            format: Format::MsgPack,
            from: Some("ann".into()),
            event: Some("analysis_progress".into()),
            author: None,
            revises: None,
            key: None,
            keep: 64,
            ttl_ms: 0,
            sync: false,
            stored: false,
            created: std::time::Instant::now(),
            reply: switchboard_engine::PublishReply::None,
        };
        let mut rec = b"00000000000000ab:7:".to_vec();
        rec.extend(encode_payload(&p, 1_234));
        let r = decode(&rec).unwrap();
        assert_eq!(
            r.position,
            Position {
                epoch: 0xab,
                offset: 7
            }
        );
        assert_eq!(r.sent_ms, 1_234);
        assert_eq!(r.format, Format::MsgPack);
        assert_eq!(&r.data[..], b"\x81\xa1n\x01");
        assert_eq!(r.meta.as_deref(), Some(&b"\xc0"[..]));
        assert_eq!(r.from.as_deref(), Some("ann"));
        assert_eq!(r.event.as_deref(), Some("analysis_progress"));
        // Without metadata, sender or event.
        let bare = SharedPublish {
            meta: None,
            from: None,
            event: None,
            format: Format::Json,
            data: Bytes::from_static(b"{}"),
            ..p
        };
        let mut rec = b"00000000000000ab:8:".to_vec();
        rec.extend(encode_payload(&bare, 5));
        let r = decode(&rec).unwrap();
        assert!(r.meta.is_none() && r.from.is_none() && r.event.is_none());
        assert_eq!(&r.data[..], b"{}");
        // Truncated or of another version: not a record.
        for cut in 20..rec.len() - 2 {
            let _ = decode(&rec[..cut]);
        }
        assert!(decode(&rec[..25]).is_none());
        let mut other = rec.clone();
        other[19] = 3;
        assert!(decode(&other).is_none());
        assert_eq!(
            rec[19], 1,
            "version 1 without author or revision (older nodes read it)"
        );
        // An author and a revision: version 2, carried.
        let edit = SharedPublish {
            author: Some("ann".into()),
            revises: Some(switchboard_protocol::Revision {
                target: 5,
                delete: true,
            }),
            ..bare
        };
        let mut rec = b"00000000000000ab:9:".to_vec();
        rec.extend(encode_payload(&edit, 6));
        assert_eq!(rec[19], 2);
        let r = decode(&rec).unwrap();
        assert_eq!(r.author.as_deref(), Some("ann"));
        assert_eq!(
            r.revises,
            Some(switchboard_protocol::Revision {
                target: 5,
                delete: true
            })
        );
        assert_eq!((&r.data[..], r.sent_ms), (&b"{}"[..], 6));
        for cut in 20..rec.len() - 2 {
            let _ = decode(&rec[..cut]);
        }
    }

    #[test]
    fn topics_name_their_channel() {
        let k = ChannelKeys::new("sb", "room:{odd}:1");
        assert_eq!(channel_of("sb", &k.topic), Some("room:{odd}:1"));
        assert_eq!(channel_of("other", &k.topic), None);
        assert_eq!(channel_of("sb", "{sb}:control"), None);
    }
}
