//! Scheduled messages kept in Redis, for nodes that share it: any node takes them,
//! lists and cancels them, and whichever node first finds one due fires it — so a
//! message scheduled through a node that is later killed still fires, once.
//!
//! Keys, all in the `{P}` slot: `{P}:sched:seq` (ids), `{P}:sched:due` (sorted set:
//! pending ids by due time), `{P}:sched:j:<n>` (hash: the job and its outcome; kept
//! [`KEEP_MS`] after it is settled), `{P}:sched:pending` (hash: pending jobs per owner),
//! `{P}:sched:recent` (list: the last 1,000 ids). Firing is claimed with a lease: the
//! claim moves the job's due time to now + [`LEASE_MS`], so no other node takes it
//! while the claimant publishes; a claimant that dies before marking it fired lets the
//! lease run out and another node fires it again, with the same idempotency key
//! (`schedule:<id>`, deduplicated through Redis across nodes within
//! `engine.dedupe_window_ms`). Ids are `2⁴⁰ + n`, apart from the node's own store's.
//!
//! A schedule request is acknowledged once Redis has the job; how durable that is
//! depends on Redis's persistence (DELIVERY.md). While Redis is away, scheduling is
//! refused with 111 (retry) and due jobs wait.
//!
//! Owns the keys and scripts. Does not own the worker thread or publishing (`super`).

use std::time::Duration;

use bytes::Bytes;
use redis::Value;
use switchboard_engine::auth::ScheduleJob;
use switchboard_engine::Refused;
use switchboard_protocol::{ErrorCode, Format, Position};

use super::{state_name, CancelError, Due, ScheduledView};
use crate::cluster::WorkerLink;

/// Ids of jobs kept in Redis start here.
pub const FIRST_ID: u64 = 1 << 40;
/// How long a claimant has to fire a job before another node may.
const LEASE_MS: u64 = 30_000;
/// How long a settled job stays listed.
const KEEP_MS: u64 = 7 * 24 * 3600 * 1000;
/// How long a worker waits for Redis.
const WITHIN: Duration = Duration::from_secs(3);

/// KEYS: seq, due, pending, recent. ARGV: job key prefix, due ms, owner, limit (0:
/// none), then the job's field/value pairs. Returns n, or -1 over the limit.
const ADD: &str = r"
local limit = tonumber(ARGV[4])
if limit > 0 and tonumber(redis.call('HGET', KEYS[3], ARGV[3]) or '0') >= limit then
  return -1
end
local n = redis.call('INCR', KEYS[1])
redis.call('HSET', ARGV[1] .. n, unpack(ARGV, 5))
redis.call('ZADD', KEYS[2], ARGV[2], n)
redis.call('HINCRBY', KEYS[3], ARGV[3], 1)
redis.call('LPUSH', KEYS[4], n)
redis.call('LTRIM', KEYS[4], 0, 999)
return n
";

/// KEYS: due. ARGV: job key prefix, now ms, lease end ms, most. Returns, per job
/// claimed: n, channel, sender, format, data, meta (empty: none).
const CLAIM: &str = r"
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2], 'LIMIT', 0, ARGV[4])
local out = {}
for _, n in ipairs(ids) do
  local j = redis.call('HMGET', ARGV[1] .. n, 'channel', 'sender', 'format', 'data', 'meta', 'state')
  if not j[1] or j[6] ~= '0' then
    redis.call('ZREM', KEYS[1], n)
  else
    redis.call('ZADD', KEYS[1], ARGV[3], n)
    table.insert(out, n)
    table.insert(out, j[1])
    table.insert(out, j[2] or '')
    table.insert(out, j[3])
    table.insert(out, j[4])
    table.insert(out, j[5] or '')
  end
end
return out
";

/// KEYS: due, pending. ARGV: job key prefix, n, state, settled ms, epoch, offset,
/// error, keep ms, owner that may cancel ('' anyone; only with state 2). Returns 0
/// when settled now, -1 when there is no such job (or not that owner's), else the
/// state it was already in.
const SETTLE: &str = r"
local k = ARGV[1] .. ARGV[2]
local j = redis.call('HMGET', k, 'owner', 'state')
if not j[1] or (ARGV[9] ~= '' and j[1] ~= ARGV[9]) then return -1 end
if j[2] ~= '0' then return tonumber(j[2]) end
redis.call('ZREM', KEYS[1], ARGV[2])
redis.call('HINCRBY', KEYS[2], j[1], -1)
redis.call('HSET', k, 'state', ARGV[3], 'settled', ARGV[4], 'epoch', ARGV[5],
  'offset', ARGV[6], 'error', ARGV[7])
redis.call('HDEL', k, 'data', 'meta')
redis.call('PEXPIRE', k, ARGV[8])
return 0
";

/// KEYS: due, recent. ARGV: job key prefix, '1' for pending only. Returns, per job:
/// n, due, channel, sender, owner, state, settled, epoch, offset, error.
const LIST: &str = r"
local ids
if ARGV[2] == '1' then
  ids = redis.call('ZRANGE', KEYS[1], 0, 999)
else
  ids = redis.call('LRANGE', KEYS[2], 0, 999)
end
local out = {}
for _, n in ipairs(ids) do
  local j = redis.call('HMGET', ARGV[1] .. n, 'due', 'channel', 'sender', 'owner', 'state',
    'settled', 'epoch', 'offset', 'error')
  if j[1] then
    table.insert(out, n)
    for i = 1, 9 do table.insert(out, j[i] or '') end
  end
end
return out
";

/// The scheduled messages kept in Redis.
#[derive(Debug, Clone)]
pub struct SharedJobs {
    link: WorkerLink,
    /// `{P}:sched:`
    keys: String,
}

impl SharedJobs {
    /// Jobs under `[cluster] key_prefix`, reached through `link`.
    pub fn new(link: WorkerLink, prefix: &str) -> SharedJobs {
        SharedJobs {
            link,
            keys: format!("{{{prefix}}}:sched:"),
        }
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.keys)
    }

    fn eval(&self, script: &str, keys: &[&str], args: Vec<Vec<u8>>) -> Result<Value, String> {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(script).arg(keys.len());
        for k in keys {
            cmd.arg(self.key(k));
        }
        cmd.arg(self.key("j:"));
        for a in args {
            cmd.arg(a);
        }
        self.link.query(cmd, WITHIN)
    }

    /// Keep `job`; its id and due time. `limited`: at most `limit` pending per owner.
    pub(super) fn add(&self, job: &ScheduleJob, limit: i64) -> Result<(u64, u64), Refused> {
        let mut args: Vec<Vec<u8>> = vec![
            job.due_ms.to_string().into(),
            job.owner.as_bytes().to_vec(),
            limit.to_string().into(),
        ];
        let mut field = |name: &str, value: Vec<u8>| {
            args.push(name.as_bytes().to_vec());
            args.push(value);
        };
        field("due", job.due_ms.to_string().into());
        field("channel", job.channel.as_bytes().to_vec());
        field(
            "sender",
            job.from.as_deref().unwrap_or("").as_bytes().to_vec(),
        );
        field("format", job.format.index().to_string().into());
        field("data", job.data.to_vec());
        field("meta", job.meta.as_deref().unwrap_or(&[]).to_vec());
        field("owner", job.owner.as_bytes().to_vec());
        field("created", crate::clock::now_ms().to_string().into());
        field("state", b"0".to_vec());
        let unavailable = |e: String| Refused {
            code: ErrorCode::Unavailable,
            message: format!("cannot keep the scheduled message: {e}; retry"),
        };
        let v = self
            .eval(ADD, &["seq", "due", "pending", "recent"], args)
            .map_err(unavailable)?;
        match redis::from_redis_value::<i64>(v).map_err(|e| unavailable(e.to_string()))? {
            n if n > 0 => Ok((FIRST_ID + n as u64, job.due_ms)),
            _ => Err(Refused {
                code: ErrorCode::LimitExceeded,
                message: format!("at most {limit} pending scheduled messages"),
            }),
        }
    }

    /// Cancel job `id` (of `owner`, when given).
    pub(super) fn cancel(&self, id: u64, owner: Option<&str>) -> Result<(), CancelError> {
        let n = id - FIRST_ID;
        let args = settle_args(n, 2, Err(""), owner.unwrap_or(""));
        let v = self
            .eval(SETTLE, &["due", "pending"], args)
            .map_err(CancelError::Store)?;
        match redis::from_redis_value::<i64>(v).map_err(|e| CancelError::Store(e.to_string()))? {
            0 => Ok(()),
            -1 => Err(CancelError::NotFound),
            state => Err(CancelError::NotPending(state_name(state))),
        }
    }

    /// Mark job `id` fired (with its position) or failed; a job already settled stays
    /// as it is.
    pub(super) fn finish(&self, id: u64, result: Result<Position, &str>) {
        let state = if result.is_ok() { 1 } else { 3 };
        let args = settle_args(id - FIRST_ID, state, result, "");
        if let Err(e) = self.eval(SETTLE, &["due", "pending"], args) {
            // The lease runs out and it fires again; its key makes that a duplicate.
            tracing::warn!(
                id,
                "cannot record a scheduled message's outcome in Redis: {e}"
            );
        }
    }

    /// Claim up to 64 due jobs for this node to fire.
    pub(super) fn claim(&self) -> Result<Vec<Due>, String> {
        let now = crate::clock::now_ms();
        let args = vec![
            now.to_string().into(),
            (now + LEASE_MS).to_string().into(),
            b"64".to_vec(),
        ];
        let v = self.eval(CLAIM, &["due"], args)?;
        let flat: Vec<Vec<u8>> = redis::from_redis_value(v).map_err(|e| e.to_string())?;
        Ok(flat
            .chunks_exact(6)
            .filter_map(|j| {
                let text = |b: &[u8]| String::from_utf8(b.to_vec()).ok();
                let opt = |b: &[u8]| (!b.is_empty()).then(|| Bytes::copy_from_slice(b));
                Some(Due {
                    id: FIRST_ID + text(&j[0])?.parse::<u64>().ok()?,
                    channel: text(&j[1])?,
                    sender: text(&j[2]).filter(|s| !s.is_empty()),
                    format: format_of(&j[3]),
                    data: Bytes::copy_from_slice(&j[4]),
                    meta: opt(&j[5]),
                })
            })
            .collect())
    }

    /// Pending jobs by due time, or the last 1,000 of every state.
    pub(super) fn list(&self, pending_only: bool) -> Result<Vec<ScheduledView>, String> {
        let flag = if pending_only { b"1" } else { b"0" };
        let v = self.eval(LIST, &["due", "recent"], vec![flag.to_vec()])?;
        let flat: Vec<String> = redis::from_redis_value(v).map_err(|e| e.to_string())?;
        let num = |s: &str| s.parse::<u64>().ok();
        let mut views: Vec<ScheduledView> = flat
            .chunks_exact(10)
            .filter_map(|j| {
                let state = j[5].parse::<i64>().ok()?;
                Some(ScheduledView {
                    id: FIRST_ID + num(&j[0])?,
                    at: num(&j[1])?,
                    channel: j[2].clone(),
                    from: (!j[3].is_empty()).then(|| j[3].clone()),
                    owner: j[4].clone(),
                    state: state_name(state),
                    fired_at: num(&j[6]),
                    epoch: num(&j[7])
                        .filter(|_| state == 1)
                        .map(|e| epoch_hex(e as i64)),
                    offset: num(&j[8]).filter(|_| state == 1),
                    error: (!j[9].is_empty()).then(|| j[9].clone()),
                })
            })
            .collect();
        if pending_only {
            views.sort_by_key(|v| (v.at, v.id));
        }
        Ok(views)
    }
}

/// SETTLE's arguments after the key prefix.
fn settle_args(n: u64, state: i64, result: Result<Position, &str>, owner: &str) -> Vec<Vec<u8>> {
    let (epoch, offset, error) = match result {
        Ok(p) => (p.epoch.to_string(), p.offset.to_string(), String::new()),
        Err(e) => (String::new(), String::new(), e.to_string()),
    };
    vec![
        n.to_string().into(),
        state.to_string().into(),
        crate::clock::now_ms().to_string().into(),
        epoch.into(),
        offset.into(),
        error.into(),
        KEEP_MS.to_string().into(),
        owner.as_bytes().to_vec(),
    ]
}

fn format_of(b: &[u8]) -> Format {
    if b == Format::Json.index().to_string().as_bytes() {
        Format::Json
    } else {
        Format::MsgPack
    }
}

/// An epoch as the API shows it.
pub(super) fn epoch_hex(e: i64) -> String {
    Position {
        epoch: e as u64,
        offset: 0,
    }
    .epoch_hex()
    .as_str()
    .to_string()
}
