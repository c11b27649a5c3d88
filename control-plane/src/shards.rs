//! Messages from the control plane's threads to the shards.
//!
//! Owns sending to a shard's inbox patiently (a full inbox of a running shard drains
//! within microseconds) and answering a connection's command from a worker. Does not
//! own what is sent.

use std::time::{Duration, Instant};

use switchboard_engine::mesh::ReplyBody;
use switchboard_engine::metrics::{CommandKind, COMMANDS};
use switchboard_engine::{ConnKey, Refused, ShardMsg, ShardSender};

/// Answer command `req_id` (of kind `command`) of connection `conn` on `shard`.
pub fn reply(
    shards: &ShardSender,
    shard: u16,
    conn: ConnKey,
    req_id: u32,
    command: CommandKind,
    result: Result<ReplyBody, Refused>,
) {
    let msg = ShardMsg::Reply {
        conn,
        req_id,
        command,
        result,
    };
    let what = COMMANDS[command as usize];
    send_patiently(shards, shard, msg, what);
}

/// Send `msg` to `shard`, waiting while its inbox is full. A full inbox of a running
/// shard drains within microseconds; one full for seconds belongs to a shard that has
/// stopped, and the message (`what`) is dropped with a warning: the connection, if it
/// still exists, ends by its own timeouts.
pub fn send_patiently(shards: &ShardSender, shard: u16, msg: ShardMsg, what: &str) {
    let mut msg = msg;
    let deadline = Instant::now() + Duration::from_secs(5);
    while let Err(back) = shards.send(shard as usize, msg) {
        if Instant::now() > deadline {
            tracing::warn!(shard, "shard inbox full for 5 s; dropping {what}");
            break;
        }
        msg = back;
        std::thread::sleep(Duration::from_micros(200));
    }
}
