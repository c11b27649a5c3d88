//! Socket.IO v5 over Engine.IO v4, WebSocket transport only.
//!
//! Engine.IO packets are text frames starting with a type digit: `0` open (server sends
//! its sid and ping settings), `2` ping (answer `3`), `4` message. A Socket.IO packet
//! rides in a message: `40{auth}` connect to the main namespace (answered `40{"sid"}`
//! or `44{error}`), `42["event",…]` an event, `42<id>[…]` an event wanting an ack,
//! `43<id>[…]` the ack.
//!
//! Event vocabulary of the comparison server (`loadtest/servers/socketio-server.js`):
//! `join(room)` with an ack, `publish({room, data})` broadcast to the room as
//! `message(data)` (the publisher included).

use super::{ConnCtx, In, Out, Protocol};

/// Socket.IO v5 / Engine.IO v4.
#[derive(Debug, Clone, Copy)]
pub struct SocketIo;

impl Protocol for SocketIo {
    fn name(&self) -> String {
        "socketio".into()
    }

    fn path(&self, _base: &str, _ctx: &ConnCtx) -> String {
        "/socket.io/?EIO=4&transport=websocket".into()
    }

    fn subprotocol(&self) -> Option<&'static str> {
        None
    }

    fn open(&self, _ctx: &ConnCtx) -> Vec<Out> {
        // The server speaks first (`0{...}`); the namespace connect answers it.
        Vec::new()
    }

    fn needs_opened(&self) -> bool {
        true
    }

    fn subscribe(&self, channel: &str, id: u32) -> Option<Out> {
        Some(Out::text(format!(
            "42{id}[\"join\",{}]",
            serde_json::to_string(channel).expect("string")
        )))
    }

    fn publish(&self, channel: &str, _id: u32, stamp: &str) -> Out {
        let body = serde_json::json!({"room": channel, "data": stamp});
        Out::text(format!("42[\"publish\",{body}]"))
    }

    fn incoming<'a>(&self, ctx: &ConnCtx, _text: bool, payload: &'a [u8]) -> In<'a> {
        match payload {
            [b'0', ..] => {
                let auth = match &ctx.token {
                    Some(t) => serde_json::json!({"token": t}).to_string(),
                    None => String::new(),
                };
                In::Respond(Out::text(format!("40{auth}")))
            }
            [b'2', ..] => In::Respond(Out::text("3")),
            [b'1', ..] => In::Closing("engine.io close".into()),
            [b'4', b'0', ..] => In::Opened,
            [b'4', b'4', rest @ ..] => In::Refused(String::from_utf8_lossy(rest).into_owned()),
            [b'4', b'1', ..] => In::Closing("namespace disconnect".into()),
            [b'4', b'3', rest @ ..] => {
                let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
                match std::str::from_utf8(&rest[..digits])
                    .ok()
                    .and_then(|d| d.parse().ok())
                {
                    Some(id) => In::Reply(id),
                    None => In::Ignore,
                }
            }
            [b'4', b'2', rest @ ..] => {
                // 42["message","<stamp>"]: the stamp has no escapes, so slice it out.
                let Some(body) = rest.strip_prefix(b"[\"message\",\"") else {
                    return In::Ignore;
                };
                match body.strip_suffix(b"\"]") {
                    Some(stamp) => In::Data(stamp),
                    None => In::Ignore,
                }
            }
            _ => In::Ignore,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_io_and_socket_io_packets() {
        let p = SocketIo;
        let ctx = ConnCtx {
            token: Some("t".into()),
            channel: None,
        };
        assert_eq!(
            p.incoming(&ctx, true, br#"0{"sid":"x","pingInterval":25000}"#),
            In::Respond(Out::text(r#"40{"token":"t"}"#))
        );
        assert_eq!(p.incoming(&ctx, true, b"2"), In::Respond(Out::text("3")));
        assert_eq!(p.incoming(&ctx, true, br#"40{"sid":"y"}"#), In::Opened);
        assert!(matches!(
            p.incoming(&ctx, true, br#"44{"message":"no"}"#),
            In::Refused(_)
        ));
        assert_eq!(
            p.incoming(&ctx, true, br#"4317[{"ok":true}]"#),
            In::Reply(17)
        );
        assert_eq!(
            p.incoming(&ctx, true, br#"42["message","1.2.3.xx"]"#),
            In::Data(b"1.2.3.xx")
        );
        assert_eq!(
            p.subscribe("r", 5).unwrap(),
            Out::text(r#"425["join","r"]"#)
        );
        assert_eq!(
            p.publish("r", 0, "s"),
            Out::text(r#"42["publish",{"data":"s","room":"r"}]"#)
        );
    }
}
