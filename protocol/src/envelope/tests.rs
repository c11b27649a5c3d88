//! Tests of the envelopes in both formats.

use super::decode::*;
use super::encode::*;
use super::*;
use crate::frame::{check, take, Check, Role};
use crate::history::Page;
use bytes::Bytes;
use bytes::BytesMut;
use proptest::prelude::*;

fn payload_of(frame: &Bytes) -> Bytes {
    let mut buf = BytesMut::from(&frame[..]);
    let Check::Complete(h) = check(&buf, Role::Client, usize::MAX).unwrap() else {
        panic!()
    };
    take(&mut buf, &h).payload
}

#[test]
fn json_commands() {
    let r = decode_request(
        Format::Json,
        br#"{"id":7,"cmd":"publish","channel":"room:1","data":{"text":"hi"}}"#,
    )
    .unwrap();
    assert_eq!(r.id, 7);
    let Command::Publish { channel, data, .. } = r.command else {
        panic!()
    };
    assert_eq!(channel, "room:1");
    assert_eq!(data.raw, br#"{"text":"hi"}"#);
    let r = decode_request(
        Format::Json,
        br#"{"id":1,"cmd":"subscribe","channel":"a\u0062"}"#,
    )
    .unwrap();
    assert_eq!(
        r.command,
        Command::Subscribe {
            channel: "ab".into(),
            since: None
        }
    );
    let r = decode_request(Format::Json, br#"{"id":1,"cmd":"dance"}"#).unwrap();
    assert_eq!(r.command, Command::Invalid("unknown command"));
    let r = decode_request(Format::Json, br#"{"id":1,"cmd":"subscribe","channel":5}"#).unwrap();
    assert!(matches!(r.command, Command::Invalid(_)));
    assert!(decode_request(Format::Json, br#"{"cmd":"ping"}"#).is_err());
    assert!(decode_request(Format::Json, br#"[1,2]"#).is_err());
    assert!(decode_request(Format::Json, br#"{"id":-1,"cmd":"ping"}"#).is_err());
}

#[test]
fn msgpack_commands_keep_data_raw() {
    let data = rmp_serde::to_vec_named(&serde_json::json!({"text": "hi", "n": [1, 2, 3]})).unwrap();
    let meta = rmp_serde::to_vec_named(&serde_json::json!({"type": "image/png"})).unwrap();
    let req = Request {
        id: 42,
        command: Command::Publish {
            channel: "room:1".into(),
            data: Payload {
                format: Format::MsgPack,
                raw: &data,
            },
            key: Some("client-msg-17".into()),
            meta: Some(Payload {
                format: Format::MsgPack,
                raw: &meta,
            }),
            reply: false,
        },
    };
    let bytes = encode_request(Format::MsgPack, &req);
    let back = decode_request(Format::MsgPack, &bytes).unwrap();
    assert_eq!(back, req);
    for bad in [
        &br#"{"id":1,"cmd":"publish","channel":"a","data":1,"key":5}"#[..],
        br#"{"id":1,"cmd":"publish","channel":"a","data":1,"key":""}"#,
        br#"{"id":1,"cmd":"publish","channel":"a","data":1,"reply":0}"#,
    ] {
        assert!(matches!(
            decode_request(Format::Json, bad).unwrap().command,
            Command::Invalid(_)
        ));
    }
    // Unknown keys are skipped.
    let mut extra = rmp_serde::to_vec_named(
        &serde_json::json!({"id": 1, "cmd": "ping", "x": {"deep": [1, {"a": null}]}}),
    )
    .unwrap();
    assert_eq!(
        decode_request(Format::MsgPack, &extra).unwrap().command,
        Command::Ping
    );
    extra.push(0xc0);
    assert!(decode_request(Format::MsgPack, &extra).is_err());
}

#[test]
fn publication_same_and_cross_format() {
    let json = Payload {
        format: Format::Json,
        raw: br#"{"text":"hi","n":1}"#,
    };
    let pos = Position {
        epoch: 0xfeed_0000_0000_beef,
        offset: 12_345_678_901,
    };
    let f = encode_publication(Format::Json, "room:\"1\"", pos, json).unwrap();
    assert_eq!(f[0], 0x81);
    let v: serde_json::Value = serde_json::from_slice(&payload_of(&f)).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"push":"publication","channel":"room:\"1\"",
            "epoch":"feed00000000beef","offset":12_345_678_901_u64,"data":{"text":"hi","n":1}})
    );
    let p = payload_of(&f);
    let ServerMessage::Publication { position, .. } =
        decode_server_message(Format::Json, &p).unwrap()
    else {
        panic!()
    };
    assert_eq!(position, Some(pos));

    let f = encode_publication(Format::MsgPack, "room:1", pos, json).unwrap();
    assert_eq!(f[0], 0x82);
    let p = payload_of(&f);
    let ServerMessage::Publication {
        channel,
        position,
        data,
        ..
    } = decode_server_message(Format::MsgPack, &p).unwrap()
    else {
        panic!()
    };
    assert_eq!(channel, "room:1");
    assert_eq!(position, Some(pos));
    let v: serde_json::Value = rmp_serde::from_slice(data.raw).unwrap();
    assert_eq!(v, serde_json::json!({"text":"hi","n":1}));

    let mp = rmp_serde::to_vec(&serde_bytes::Bytes::new(&[1, 2, 3])).unwrap();
    let f = encode_publication(
        Format::Json,
        "c",
        pos,
        Payload {
            format: Format::MsgPack,
            raw: &mp,
        },
    )
    .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&payload_of(&f)).unwrap();
    assert_eq!(v["data"], serde_json::json!([1, 2, 3]));
}

#[test]
fn replies_decode() {
    for format in [Format::MsgPack, Format::Json] {
        let f = encode_error(format, 9, ErrorCode::PermissionDenied, "no");
        let p = payload_of(&f);
        assert_eq!(
            decode_server_message(format, &p).unwrap(),
            ServerMessage::Error {
                id: 9,
                code: 103,
                message: "no".into()
            }
        );
        let f = encode_disconnect(format, 4003, "slow consumer", true);
        let p = payload_of(&f);
        assert_eq!(
            decode_server_message(format, &p).unwrap(),
            ServerMessage::Disconnect {
                code: 4003,
                reason: "slow consumer".into(),
                reconnect: true
            }
        );
        let f = encode_result(format, 3, &Empty {});
        let p = payload_of(&f);
        assert!(matches!(
            decode_server_message(format, &p).unwrap(),
            ServerMessage::Result { id: 3, .. }
        ));
    }
}

/// The byte-level example in docs/PROTOCOL.md.
#[test]
fn documented_publication_frame() {
    let data = [0x81, 0xa4, b't', b'e', b'x', b't', 0xa2, b'h', b'i'];
    let f = encode_publication(
        Format::MsgPack,
        "room:1",
        Position {
            epoch: 0x0123_4567_89ab_cdef,
            offset: 7,
        },
        Payload {
            format: Format::MsgPack,
            raw: &data,
        },
    )
    .unwrap();
    let hex: Vec<String> = f.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        hex.join(" "),
        "82 4e 85 a4 70 75 73 68 ab 70 75 62 6c 69 63 61 74 69 6f 6e a7 63 68 61 6e 6e 65 6c \
         a6 72 6f 6f 6d 3a 31 a5 65 70 6f 63 68 b0 30 31 32 33 34 35 36 37 38 39 61 62 63 64 \
         65 66 a6 6f 66 66 73 65 74 07 a4 64 61 74 61 81 a4 74 65 78 74 a2 68 69"
    );
    let subscribe = [
        0x83, 0xa2, b'i', b'd', 0x01, 0xa3, b'c', b'm', b'd', 0xa9, b's', b'u', b'b', b's', b'c',
        b'r', b'i', b'b', b'e', 0xa7, b'c', b'h', b'a', b'n', b'n', b'e', b'l', 0xa6, b'r', b'o',
        b'o', b'm', b':', b'1',
    ];
    assert_eq!(subscribe.len(), 34);
    assert_eq!(
        decode_request(Format::MsgPack, &subscribe).unwrap(),
        Request {
            id: 1,
            command: Command::Subscribe {
                channel: "room:1".into(),
                since: None
            }
        }
    );
}

/// Malformed session, inbox, receipt, schedule, presence and typing commands are
/// answerable errors (the connection stays open), in both formats.
#[test]
fn malformed_new_commands_are_invalid_not_fatal() {
    let long = "d".repeat(129);
    let cases = [
        r#"{"id":1,"cmd":"connect","reconnect":5}"#.to_string(),
        format!(r#"{{"id":1,"cmd":"connect","token":"t","device":"{long}"}}"#),
        r#"{"id":1,"cmd":"connect","token":"t","device":""}"#.to_string(),
        r#"{"id":1,"cmd":"connect","reconnect":"x","positions":{"a":{"epoch":"zz","offset":1}}}"#
            .to_string(),
        r#"{"id":1,"cmd":"connect","reconnect":"x","positions":[1,2]}"#.to_string(),
        r#"{"id":1,"cmd":"send","data":1}"#.to_string(),
        r#"{"id":1,"cmd":"send","user":"u"}"#.to_string(),
        r#"{"id":1,"cmd":"send","user":"u","data":1,"key":""}"#.to_string(),
        r#"{"id":1,"cmd":"ack"}"#.to_string(),
        r#"{"id":1,"cmd":"ack","offset":"3"}"#.to_string(),
        r#"{"id":1,"cmd":"receipt","channel":"c"}"#.to_string(),
        r#"{"id":1,"cmd":"receipt","channel":"c","read":-1}"#.to_string(),
        r#"{"id":1,"cmd":"receipts"}"#.to_string(),
        r#"{"id":1,"cmd":"schedule","channel":"c","user":"u","data":1,"delay":1}"#.to_string(),
        r#"{"id":1,"cmd":"schedule","data":1,"delay":1}"#.to_string(),
        r#"{"id":1,"cmd":"schedule","channel":"c","data":1}"#.to_string(),
        r#"{"id":1,"cmd":"schedule","channel":"c","data":1,"at":1,"delay":1}"#.to_string(),
        r#"{"id":1,"cmd":"schedule","channel":"c","delay":1}"#.to_string(),
        r#"{"id":1,"cmd":"unschedule"}"#.to_string(),
        r#"{"id":1,"cmd":"status","status":""}"#.to_string(),
        r#"{"id":1,"cmd":"presence"}"#.to_string(),
        r#"{"id":1,"cmd":"presence_count","channel":7}"#.to_string(),
        r#"{"id":1,"cmd":"typing","channel":"c","typing":"yes"}"#.to_string(),
        r#"{"id":1,"cmd":"typing"}"#.to_string(),
        r#"{"id":1,"cmd":"notifications","limit":"x"}"#.to_string(),
        r#"{"id":1,"cmd":"notifications","unread":1}"#.to_string(),
        r#"{"id":1,"cmd":"notifications_read"}"#.to_string(),
        r#"{"id":1,"cmd":"notifications_read","all":false}"#.to_string(),
        r#"{"id":1,"cmd":"notifications_read","notification":1,"all":true}"#.to_string(),
        r#"{"id":1,"cmd":"notifications_subscribe"}"#.to_string(),
        r#"{"id":1,"cmd":"notifications_subscribe","topic":"a b"}"#.to_string(),
        r#"{"id":1,"cmd":"notifications_unsubscribe","topic":""}"#.to_string(),
        r#"{"id":1,"cmd":"call"}"#.to_string(),
        r#"{"id":1,"cmd":"call","user":"u","channel":"c"}"#.to_string(),
        r#"{"id":1,"cmd":"call","user":5}"#.to_string(),
        r#"{"id":1,"cmd":"call","user":"u","media":""}"#.to_string(),
        r#"{"id":1,"cmd":"call_accept"}"#.to_string(),
        r#"{"id":1,"cmd":"call_reject","call":"7"}"#.to_string(),
        r#"{"id":1,"cmd":"call_end","call":7,"reason":3}"#.to_string(),
        r#"{"id":1,"cmd":"call_signal","call":7}"#.to_string(),
        r#"{"id":1,"cmd":"call_signal","call":7,"to":1,"data":{}}"#.to_string(),
        r#"{"id":1,"cmd":"call_quality","data":{}}"#.to_string(),
    ];
    for json in &cases {
        let value: serde_json::Value = serde_json::from_str(json).unwrap();
        let mp = rmp_serde::to_vec_named(&value).unwrap();
        for (format, bytes) in [(Format::Json, json.as_bytes()), (Format::MsgPack, &mp[..])] {
            let r = decode_request(format, bytes).unwrap_or_else(|e| panic!("{json}: {e}"));
            assert!(
                matches!(r.command, Command::Invalid(_)),
                "{format:?} {json}: {:?}",
                r.command
            );
        }
    }
}

#[test]
fn stream_reply_and_recovery_commands() {
    let top = Position {
        epoch: 0xabc,
        offset: 9,
    };
    let json = Payload {
        format: Format::Json,
        raw: br#"{"t":"x"}"#,
    };
    let mp_raw = rmp_serde::to_vec(&7u8).unwrap();
    let mp = Payload {
        format: Format::MsgPack,
        raw: &mp_raw,
    };
    let pubs = [
        StoredPublication {
            event: None,
            offset: 8,
            from: None,
            meta: None,
            data: json,
            revises: None,
            revised: None,
        },
        StoredPublication {
            event: None,
            offset: 9,
            from: None,
            meta: Some(json),
            data: mp,
            revises: None,
            revised: None,
        },
    ];
    for out in [Format::MsgPack, Format::Json] {
        let f = encode_stream_reply(
            out,
            ReplyTo::Id(5),
            top,
            Some(true),
            pubs.iter().copied(),
            None,
        )
        .unwrap();
        let p = payload_of(&f);
        let v: serde_json::Value = match out {
            Format::Json => serde_json::from_slice(&p).unwrap(),
            Format::MsgPack => rmp_serde::from_slice(&p).unwrap(),
            Format::SocketIo => unreachable!("native formats only"),
        };
        assert_eq!(
            v,
            serde_json::json!({"id": 5, "result": {"epoch": "0000000000000abc", "offset": 9,
                "recovered": true, "publications": [{"offset": 8, "data": {"t": "x"}},
                {"offset": 9, "meta": {"t": "x"}, "data": 7}]}})
        );
        let f = encode_stream_reply(
            out,
            ReplyTo::Id(6),
            top,
            None,
            [].iter().copied(),
            Some("1.c"),
        )
        .unwrap();
        let p = payload_of(&f);
        let v: serde_json::Value = match out {
            Format::Json => serde_json::from_slice(&p).unwrap(),
            Format::MsgPack => rmp_serde::from_slice(&p).unwrap(),
            Format::SocketIo => unreachable!("native formats only"),
        };
        assert_eq!(
            v,
            serde_json::json!({"id": 6, "result": {"epoch": "0000000000000abc", "offset": 9,
                "publications": [], "cursor": "1.c"}})
        );
        let inbox = [StoredPublication {
            event: None,
            offset: 3,
            from: Some("al\"ice"),
            meta: None,
            data: mp,
            revises: None,
            revised: None,
        }];
        let to = ReplyTo::Push {
            push: "inbox",
            channel: "inbox:bob",
        };
        let f =
            encode_stream_reply(out, to, top, Some(false), inbox.iter().copied(), None).unwrap();
        let p = payload_of(&f);
        let v: serde_json::Value = match out {
            Format::Json => serde_json::from_slice(&p).unwrap(),
            Format::MsgPack => rmp_serde::from_slice(&p).unwrap(),
            Format::SocketIo => unreachable!("native formats only"),
        };
        assert_eq!(
            v,
            serde_json::json!({"push": "inbox", "channel": "inbox:bob",
                "epoch": "0000000000000abc", "offset": 9, "recovered": false,
                "publications": [{"offset": 3, "from": "al\"ice", "data": 7}]})
        );
        let f = encode_publication_full(out, "inbox:bob", top, Some("alice"), None, json).unwrap();
        let p = payload_of(&f);
        let v: serde_json::Value = match out {
            Format::Json => serde_json::from_slice(&p).unwrap(),
            Format::MsgPack => rmp_serde::from_slice(&p).unwrap(),
            Format::SocketIo => unreachable!("native formats only"),
        };
        assert_eq!(
            v,
            serde_json::json!({"push": "publication", "channel": "inbox:bob",
                "epoch": "0000000000000abc", "offset": 9, "from": "alice", "data": {"t": "x"}})
        );
    }
    for format in [Format::MsgPack, Format::Json] {
        let reqs = [
            Request {
                id: 1,
                command: Command::Subscribe {
                    channel: "a".into(),
                    since: Some(top),
                },
            },
            Request {
                id: 2,
                command: Command::History {
                    channel: "a".into(),
                    page: Page {
                        epoch: Some(7),
                        after: 2,
                        before: Some(9),
                        from_ms: Some(1),
                        to_ms: Some(5),
                        limit: 10,
                        reverse: true,
                    },
                },
            },
        ];
        for r in reqs {
            assert_eq!(
                decode_request(format, &encode_request(format, &r)).unwrap(),
                r
            );
        }
    }
    let bad = br#"{"id":1,"cmd":"subscribe","channel":"a","since":{"epoch":"xyz","offset":1}}"#;
    assert!(matches!(
        decode_request(Format::Json, bad).unwrap().command,
        Command::Invalid(_)
    ));
    let dflt = br#"{"id":1,"cmd":"history","channel":"a"}"#;
    assert_eq!(
        decode_request(Format::Json, dflt).unwrap().command,
        Command::History {
            channel: "a".into(),
            page: Page::default(),
        }
    );
}

#[test]
fn history_requests_are_checked_field_by_field() {
    let page = |json: &str| match decode_request(Format::Json, json.as_bytes())
        .unwrap()
        .command
    {
        Command::History { page, .. } => Ok(page),
        Command::Invalid(why) => Err(why),
        other => panic!("{other:?}"),
    };
    let since = page(r#"{"id":1,"cmd":"history","channel":"a","since":4,"reverse":true}"#);
    assert_eq!(since.unwrap().before, Some(4));
    let cursor = Page::default().next(9, 40).cursor("a");
    let json = format!(r#"{{"id":1,"cmd":"history","channel":"a","cursor":"{cursor}","limit":5}}"#);
    assert_eq!(
        page(&json).unwrap(),
        Page {
            limit: 5,
            ..Page::default().next(9, 40)
        }
    );
    for (bad, why) in [
        (r#""limit":-1"#, "'limit' must be an integer from 1 to 1000"),
        (r#""limit":0"#, "'limit' must be an integer from 1 to 1000"),
        (
            r#""limit":1001"#,
            "'limit' must be an integer from 1 to 1000",
        ),
        (r#""after":-5"#, "'after' must be an offset (integer)"),
        (r#""before":0"#, "'before' must be an offset from 1"),
        (r#""epoch":"xyz""#, "'epoch' must be 16 hex digits"),
        (
            r#""from_ms":"yesterday""#,
            "'from_ms' must be a time in Unix milliseconds",
        ),
        (
            r#""cursor":"nope""#,
            "unknown cursor: pass 'cursor' exactly as a history reply gave it",
        ),
        (r#""cursor":7"#, "'cursor' must be a string"),
        (
            r#""since":3,"after":2"#,
            "'since' cannot be combined with 'after' or 'before'",
        ),
    ] {
        let json = format!(r#"{{"id":1,"cmd":"history","channel":"a",{bad}}}"#);
        assert_eq!(page(&json), Err(why), "{bad}");
    }
    let mixed =
        format!(r#"{{"id":1,"cmd":"history","channel":"a","cursor":"{cursor}","after":1}}"#);
    assert_eq!(
        page(&mixed),
        Err("'cursor' continues a page: send it with 'limit' only")
    );
    let other = format!(r#"{{"id":1,"cmd":"history","channel":"b","cursor":"{cursor}"}}"#);
    assert_eq!(page(&other), Err("the cursor belongs to another channel"));
}

#[test]
fn value_len_rejects_lies() {
    assert!(msgpack_value_len(&[0xdd, 0xff, 0xff, 0xff, 0xff]).is_err());
    assert!(msgpack_value_len(&[0xda, 0x00, 0x05, b'a']).is_err());
    assert!(msgpack_value_len(&[0xc1]).is_err());
    assert_eq!(
        msgpack_value_len(&[0x92, 0x01, 0xa1, b'x', 0xff]).unwrap(),
        4
    );
}

fn arb_json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        "\\PC{0,20}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
            proptest::collection::btree_map("[a-z]{1,6}", inner, 0..6)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn request_roundtrip(id in any::<u32>(), channel in "[a-z:]{1,20}", value in arb_json(), json in any::<bool>(), offset in any::<u64>()) {
        let format = if json { Format::Json } else { Format::MsgPack };
        let raw = match format {
            Format::Json | Format::SocketIo => serde_json::to_vec(&value).unwrap(),
            Format::MsgPack => rmp_serde::to_vec_named(&value).unwrap(),
        };
        let req = Request { id, command: Command::Publish { channel: channel.clone().into(), data: Payload { format, raw: &raw }, key: None, meta: Some(Payload { format, raw: &raw }), reply: true } };
        let bytes = encode_request(format, &req);
        prop_assert_eq!(decode_request(format, &bytes).unwrap(), req);
        // The publication carries the same value to both formats.
        for out in [Format::MsgPack, Format::Json] {
            let pos = Position { epoch: offset.wrapping_mul(31), offset };
            let f = encode_publication_full(out, &channel, pos, None, Some(Payload { format, raw: &raw }), Payload { format, raw: &raw }).unwrap();
            let p = payload_of(&f);
            let ServerMessage::Publication { channel: c, position, data, meta } = decode_server_message(out, &p).unwrap() else { panic!() };
            let meta = meta.expect("meta travels");
            prop_assert_eq!(meta.raw, data.raw);
            prop_assert_eq!(position, Some(pos));
            prop_assert_eq!(&c, &channel);
            let back: serde_json::Value = match out {
                Format::Json | Format::SocketIo => serde_json::from_slice(data.raw).unwrap(),
                Format::MsgPack => rmp_serde::from_slice(data.raw).unwrap(),
            };
            prop_assert_eq!(&back, &value);
        }
    }

    #[test]
    fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        let _ = decode_request(Format::MsgPack, &bytes);
        let _ = decode_request(Format::Json, &bytes);
        let _ = decode_server_message(Format::MsgPack, &bytes);
    }
}

/// Issue 16, item 2: a payload the other format cannot read is refused at the edge,
/// and one stored before that rule (an old store file) is marked in a stream answer
/// instead of failing it whole.
#[test]
fn unreadable_payloads_are_refused_and_old_ones_marked() {
    let deep = "[".repeat(30_000) + &"]".repeat(30_000);
    let publish = format!(r#"{{"id":1,"cmd":"publish","channel":"room:a","data":{deep}}}"#);
    let req = decode_request(Format::Json, publish.as_bytes()).unwrap();
    assert!(matches!(
        req.command,
        Command::Invalid("payload nested deeper than 32 levels")
    ));
    let send = br#"{"id":2,"cmd":"send","user":"bob","data":1,"meta":"\ud800"}"#;
    assert!(matches!(
        decode_request(Format::Json, send).unwrap().command,
        Command::Invalid(_)
    ));
    let ext =
        rmp_serde::to_vec_named(&serde_json::json!({"id": 3, "cmd": "publish", "channel": "a"}))
            .unwrap();
    // The same map with one more key, `data`: a fixext1.
    let mut with_ext = vec![0x84];
    with_ext.extend_from_slice(&ext[1..]);
    with_ext.extend_from_slice(&[0xa4, b'd', b'a', b't', b'a', 0xd4, 5, 0]);
    assert!(matches!(
        decode_request(Format::MsgPack, &with_ext).unwrap().command,
        Command::Invalid(m) if m.contains("extension")
    ));

    let good = Payload {
        format: Format::Json,
        raw: b"\"ok\"",
    };
    let poisoned = Payload {
        format: Format::Json,
        raw: deep.as_bytes(),
    };
    let pubs = [1, 2, 3].map(|offset| StoredPublication {
        event: None,
        offset,
        from: None,
        meta: None,
        data: if offset == 2 { poisoned } else { good },
        revises: None,
        revised: None,
    });
    let top = Position {
        epoch: 1,
        offset: 3,
    };
    let f = encode_stream_reply(
        Format::MsgPack,
        ReplyTo::Id(5),
        top,
        None,
        pubs.iter().copied(),
        None,
    )
    .unwrap();
    let v: serde_json::Value = rmp_serde::from_slice(&payload_of(&f)).unwrap();
    assert_eq!(
        v["result"]["publications"],
        serde_json::json!([{"offset": 1, "data": "ok"},
            {"offset": 2, "data": null, "unreadable": UNREADABLE},
            {"offset": 3, "data": "ok"}])
    );
}

#[test]
fn socketio_replies_and_pushes_are_acks_and_events() {
    let text = |b: bytes::Bytes| String::from_utf8(payload_of(&b).to_vec()).unwrap();
    let sio = Format::SocketIo;
    let pos = Position {
        epoch: 0xabc,
        offset: 3,
    };
    assert_eq!(
        text(encode_result(
            sio,
            7,
            &serde_json::json!({"epoch": "x", "offset": 3})
        )),
        r#"437[{"epoch":"x","offset":3}]"#
    );
    assert!(
        encode_result(sio, sio::NO_ACK, &1).is_empty(),
        "no ack asked, none sent"
    );
    assert_eq!(
        text(encode_error(sio, 2, ErrorCode::PermissionDenied, "no")),
        r#"432[{"error":{"code":103,"message":"no"}}]"#
    );
    assert_eq!(
        text(encode_error(
            sio,
            sio::NO_ACK,
            ErrorCode::PermissionDenied,
            "no"
        )),
        r#"42["error",{"code":103,"message":"no"}]"#
    );
    let data = Payload {
        format: Format::MsgPack,
        raw: &[0x81, 0xa1, b't', 0x01],
    };
    assert_eq!(
        text(encode_publication_full(sio, "room:1", pos, Some("ann"), None, data).unwrap()),
        r#"42["message:new",{"channel":"room:1","epoch":"0000000000000abc","offset":3,"from":"ann","data":{"t":1}}]"#
    );
    // With recovery on, the offset rides as the last argument, and parses back (a
    // channel with a quote and a backslash, escaped in the JSON string).
    let named =
        encode_recoverable_publication(sio, "room:\"q\\", pos, None, None, data, Some("ev"));
    let named = text(named.unwrap());
    assert_eq!(named, r#"42["ev",{"t":1},"3.0000000000000abc.room:\"q\\"]"#);
    let v: Vec<serde_json::Value> = serde_json::from_str(&named[2..]).unwrap();
    assert_eq!(
        sio::parse_offset(v[2].as_str().unwrap()),
        Some(("room:\"q\\", pos))
    );
    let plain = encode_recoverable_publication(sio, "room:1", pos, None, None, data, None);
    assert!(text(plain.unwrap()).ends_with(r#""data":{"t":1}},"3.0000000000000abc.room:1"]"#));
    let native =
        encode_recoverable_publication(Format::Json, "room:1", pos, None, None, data, None);
    assert_eq!(
        native.unwrap(),
        encode_publication(Format::Json, "room:1", pos, data).unwrap()
    );
    for bad in [
        "",
        "3",
        "x.0000000000000abc.room:1",
        "3.abc.room:1",
        "3.0000000000000abc.",
        "3.0000000000000abc.a b",
    ] {
        assert_eq!(sio::parse_offset(bad), None, "{bad:?}");
    }
    let push =
        serde_json::json!({"push": "typing", "channel": "room:1", "user": "ann", "typing": true});
    let v: serde_json::Value = serde_json::from_str(&text(encode_push(sio, &push))[2..]).unwrap();
    assert_eq!(
        v,
        serde_json::json!(["typing:update", {"channel": "room:1", "user": "ann", "typing": true}])
    );
    assert!(encode_push(sio, &serde_json::json!({"push": "reconnect", "token": "t"})).is_empty());
    let pubs = [StoredPublication {
        event: None,
        offset: 3,
        from: None,
        meta: None,
        data,
        revises: None,
        revised: None,
    }];
    assert_eq!(
        text(
            encode_stream_reply(
                sio,
                ReplyTo::Id(4),
                pos,
                Some(true),
                pubs.iter().copied(),
                None
            )
            .unwrap()
        ),
        r#"434[{"epoch":"0000000000000abc","offset":3,"recovered":true,"publications":[{"offset":3,"data":{"t":1}}]}]"#
    );
    assert_eq!(
        text(
            encode_stream_reply(
                sio,
                ReplyTo::Push {
                    push: "subscribed",
                    channel: "room:1"
                },
                pos,
                None,
                pubs.iter().copied(),
                None
            )
            .unwrap()
        ),
        r#"42["subscribed",{"channel":"room:1","epoch":"0000000000000abc","offset":3,"publications":[{"offset":3,"data":{"t":1}}]}]"#
    );
    assert_eq!(text(encode_disconnect(sio, 4009, "kicked", false)), "41");
}
