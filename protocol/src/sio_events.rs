//! The Socket.IO event vocabulary: the events teams' front ends already emit, mapped
//! onto Switchboard commands (`docs/SOCKETIO.md`, "What events mean").
//!
//! Owns the table from event name to command and the translation of an event's first
//! argument into the native JSON envelope of that command (`{"id":…,"cmd":…,…}`), so
//! a Socket.IO event is decoded, checked and refused by exactly the rules a native
//! command is ([`crate::envelope::decode_request`]): no second set of rules to drift.
//! Does not own what commands do, or events outside the vocabulary (backend hooks).

use serde_json::value::RawValue;

/// How one event becomes a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    /// The native command.
    pub cmd: &'static str,
    /// The field a lone string argument fills (`join("room:1")`).
    pub shorthand: Option<&'static str>,
    /// Fields renamed from the event's names to the command's.
    pub renames: &'static [(&'static str, &'static str)],
    /// Fields the event implies (JSON members, with a leading comma).
    pub fixed: &'static str,
    /// `channels: [...]` makes one command per channel.
    pub many: bool,
}

const fn m(cmd: &'static str) -> Mapping {
    Mapping {
        cmd,
        shorthand: None,
        renames: &[],
        fixed: "",
        many: false,
    }
}

/// The mapping of `event`, if it is in the vocabulary.
pub fn mapping(event: &str) -> Option<Mapping> {
    let channel = Some("channel");
    Some(match event {
        "join" | "subscribe" | "presence:subscribe" => Mapping {
            shorthand: channel,
            many: true,
            ..m("subscribe")
        },
        "leave" | "unsubscribe" | "presence:unsubscribe" => Mapping {
            shorthand: channel,
            many: true,
            ..m("unsubscribe")
        },
        "message:send" => Mapping {
            renames: &[("to", "user")],
            ..m("publish")
        },
        "message:edit" => m("edit"),
        "message:delete" => m("delete"),
        "message:history" => Mapping {
            shorthand: channel,
            ..m("history")
        },
        "message:received" => Mapping {
            renames: &[("offset", "delivered")],
            ..m("receipt")
        },
        "message:read" => Mapping {
            renames: &[("offset", "read")],
            ..m("receipt")
        },
        "message:receipts" => Mapping {
            shorthand: channel,
            ..m("receipts")
        },
        "message:ack" => m("ack"),
        "message:schedule" => m("schedule"),
        "message:unschedule" => Mapping {
            renames: &[("id", "schedule")],
            ..m("unschedule")
        },
        "typing:start" => Mapping {
            shorthand: channel,
            fixed: ",\"typing\":true",
            ..m("typing")
        },
        "typing:stop" => Mapping {
            shorthand: channel,
            fixed: ",\"typing\":false",
            ..m("typing")
        },
        "presence:status" => Mapping {
            shorthand: Some("status"),
            ..m("status")
        },
        "presence:get" => Mapping {
            shorthand: channel,
            ..m("presence")
        },
        "presence:count" => Mapping {
            shorthand: channel,
            ..m("presence_count")
        },
        "notification:list" => m("notifications"),
        "notification:getUnreadCount" => Mapping {
            fixed: ",\"unread\":true,\"limit\":1",
            ..m("notifications")
        },
        "notification:read" => Mapping {
            renames: &[("id", "notification")],
            ..m("notifications_read")
        },
        "notification:readAll" => Mapping {
            fixed: ",\"all\":true",
            ..m("notifications_read")
        },
        "notification:subscribe" => Mapping {
            shorthand: Some("topic"),
            ..m("notifications_subscribe")
        },
        "notification:unsubscribe" => Mapping {
            shorthand: Some("topic"),
            ..m("notifications_unsubscribe")
        },
        "call:initiate" => m("call"),
        "call:accept" => m("call_accept"),
        "call:reject" => m("call_reject"),
        "call:end" => m("call_end"),
        "call:signal" => m("call_signal"),
        "call:quality" => m("call_quality"),
        _ => return None,
    })
}

/// Why an event's arguments do not make a command (answered as a 104 error).
pub const BAD_ARGS: &str = "the event's first argument must be an object (or a string)";

/// The native JSON envelopes for `event` with request id `id` and arguments `args`
/// (its first argument an object, a string for a shorthand, or absent): one per
/// channel for `{channels: [...]}`, the last of them carrying `id` and the others
/// `others_id`. `None`: not in the vocabulary.
pub fn envelopes(
    event: &str,
    id: u32,
    others_id: u32,
    args: &[&RawValue],
) -> Option<Result<Vec<Vec<u8>>, &'static str>> {
    let map = mapping(event)?;
    Some(build(&map, id, others_id, args.first().copied()))
}

fn build(
    map: &Mapping,
    id: u32,
    others_id: u32,
    arg: Option<&RawValue>,
) -> Result<Vec<Vec<u8>>, &'static str> {
    let mut fields: Vec<(&str, &RawValue)> = Vec::new();
    let mut shorthand: Option<&RawValue> = None;
    match arg.map(|a| a.get().trim_start().as_bytes().first().copied()) {
        None | Some(Some(b'n')) => {} // no argument, or null
        Some(Some(b'{')) => {
            let arg = arg.expect("matched Some");
            fields = serde_json::from_str::<OrderedFields<'_>>(arg.get())
                .map_err(|_| BAD_ARGS)?
                .0;
        }
        Some(Some(b'"')) if map.shorthand.is_some() => shorthand = arg,
        _ => return Err(BAD_ARGS),
    }
    fn renamed<'k>(map: &Mapping, k: &'k str) -> &'k str {
        map.renames
            .iter()
            .find(|(from, _)| *from == k)
            .map_or(k, |(_, to)| to)
    }
    // A direct message (`message:send` to a user) is the `send` command.
    let cmd = if map.cmd == "publish" && fields.iter().any(|(k, _)| renamed(map, k) == "user") {
        "send"
    } else {
        map.cmd
    };
    let channels: Option<Vec<&RawValue>> = if map.many {
        match fields.iter().find(|(k, _)| *k == "channels") {
            Some((_, list)) => Some(serde_json::from_str(list.get()).map_err(|_| BAD_ARGS)?),
            None => None,
        }
    } else {
        None
    };
    let one = |id: u32, channel: Option<&RawValue>| {
        let mut out = Vec::with_capacity(64 + arg.map_or(0, |a| a.get().len()));
        out.extend_from_slice(b"{\"id\":");
        out.extend_from_slice(id.to_string().as_bytes());
        out.extend_from_slice(b",\"cmd\":\"");
        out.extend_from_slice(cmd.as_bytes());
        out.push(b'"');
        out.extend_from_slice(map.fixed.as_bytes());
        if let (Some(field), Some(value)) = (map.shorthand, shorthand) {
            push_member(&mut out, field, value.get());
        }
        if let Some(c) = channel {
            push_member(&mut out, "channel", c.get());
        }
        for (k, v) in &fields {
            if channel.is_some() && *k == "channels" {
                continue;
            }
            push_member(&mut out, renamed(map, k), v.get());
        }
        out.push(b'}');
        out
    };
    Ok(match channels {
        Some(list) if list.is_empty() => return Err("'channels' must not be empty"),
        Some(list) => {
            let last = list.len() - 1;
            list.iter()
                .enumerate()
                .map(|(i, c)| one(if i == last { id } else { others_id }, Some(c)))
                .collect()
        }
        None => vec![one(id, None)],
    })
}

fn push_member(out: &mut Vec<u8>, key: &str, value: &str) {
    out.push(b',');
    serde_json::to_writer(&mut *out, key).expect("writing to memory cannot fail");
    out.push(b':');
    out.extend_from_slice(value.as_bytes());
}

/// A JSON object's members in order, keys and values borrowed (a key written with
/// escapes names no vocabulary field: such an object is refused).
struct OrderedFields<'a>(Vec<(&'a str, &'a RawValue)>);

impl<'de> serde::Deserialize<'de> for OrderedFields<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = OrderedFields<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = a.next_entry::<&'de str, &'de RawValue>()? {
                    out.push((k, v));
                }
                Ok(OrderedFields(out))
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{decode_request, Command, Format};

    fn one(event: &str, args: &str) -> Command<'static> {
        let args: Vec<&RawValue> = serde_json::from_str(args).unwrap();
        let mut envs = envelopes(event, 7, 99, &args).unwrap().unwrap();
        assert_eq!(envs.len(), 1);
        let env: &'static [u8] = Box::leak(envs.remove(0).into_boxed_slice());
        let req = decode_request(Format::Json, env).unwrap();
        assert_eq!(req.id, 7);
        req.command
    }

    #[test]
    fn events_become_the_native_commands() {
        assert!(matches!(
            one("join", r#"["room:1"]"#),
            Command::Subscribe { ref channel, since: None } if channel == "room:1"
        ));
        assert!(matches!(
            one("subscribe", r#"[{"channel":"room:1","since":{"epoch":"0000000000000001","offset":4}}]"#),
            Command::Subscribe { since: Some(p), .. } if p.offset == 4
        ));
        match one(
            "message:send",
            r#"[{"channel":"room:1","data":{"text":"hi"}}]"#,
        ) {
            Command::Publish { channel, data, .. } => {
                assert_eq!(channel, "room:1");
                assert_eq!(data.raw, br#"{"text":"hi"}"#);
                assert_eq!(data.format, Format::Json);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            one("message:send", r#"[{"to":"bob","data":1}]"#),
            Command::Send { ref user, .. } if user == "bob"
        ));
        assert!(matches!(
            one("message:read", r#"[{"channel":"room:1","offset":9}]"#),
            Command::Receipt {
                read: Some(9),
                delivered: None,
                ..
            }
        ));
        assert!(matches!(
            one("typing:stop", r#"["room:1"]"#),
            Command::Typing { typing: false, .. }
        ));
        assert!(matches!(
            one("notification:readAll", "[]"),
            Command::NotificationsRead { notification: None }
        ));
        assert!(matches!(
            one("notification:read", r#"[{"id":5}]"#),
            Command::NotificationsRead {
                notification: Some(5)
            }
        ));
        assert!(matches!(
            one("call:accept", r#"[{"call":3}]"#),
            Command::CallAction { call: 3, .. }
        ));
        // The native rules refuse what they refuse for native clients.
        assert!(matches!(
            one("message:send", r#"[{"channel":"room:1"}]"#),
            Command::Invalid(_)
        ));
        assert!(matches!(
            one("join", r#"[{"channel":5}]"#),
            Command::Invalid(_)
        ));
    }

    #[test]
    fn many_channels_make_many_commands_the_last_acked() {
        let args: Vec<&RawValue> = serde_json::from_str(r#"[{"channels":["a:1","b:2"]}]"#).unwrap();
        let envs = envelopes("join", 7, 99, &args).unwrap().unwrap();
        let reqs: Vec<_> = envs
            .iter()
            .map(|e| decode_request(Format::Json, e).unwrap())
            .collect();
        assert_eq!((reqs[0].id, reqs[1].id), (99, 7));
        assert!(matches!(&reqs[1].command, Command::Subscribe { channel, .. } if channel == "b:2"));
        let empty: Vec<&RawValue> = serde_json::from_str(r#"[{"channels":[]}]"#).unwrap();
        assert!(envelopes("join", 7, 99, &empty).unwrap().is_err());
    }

    #[test]
    fn other_events_are_not_vocabulary_and_bad_arguments_are_refused() {
        assert!(envelopes("document:analyze", 1, 2, &[]).is_none());
        let args: Vec<&RawValue> = serde_json::from_str("[42]").unwrap();
        assert_eq!(
            envelopes("join", 1, 2, &args).unwrap().unwrap_err(),
            BAD_ARGS
        );
        let args: Vec<&RawValue> = serde_json::from_str(r#"["x"]"#).unwrap();
        assert_eq!(
            envelopes("message:send", 1, 2, &args).unwrap().unwrap_err(),
            BAD_ARGS
        );
    }
}
