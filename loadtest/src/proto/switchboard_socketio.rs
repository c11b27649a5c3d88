//! Switchboard's own Socket.IO endpoint (`docs/SOCKETIO.md`), WebSocket transport: the
//! same Engine.IO / Socket.IO packets as [`super::SocketIo`], with Switchboard's event
//! vocabulary instead of the comparison server's: `join({channel})` acked with the
//! channel's position, `message:send({channel, data})` fanned out to the channel as
//! `message:new({channel, epoch, offset, data})` (the publisher included, as a
//! native subscriber gets its own publications), `typing:start({channel})`.

use super::{ConnCtx, In, Out, Protocol, SocketIo};

/// Switchboard's Socket.IO endpoint.
#[derive(Debug, Clone, Copy)]
pub struct SwitchboardSocketIo;

impl Protocol for SwitchboardSocketIo {
    fn name(&self) -> String {
        "switchboard-socketio".into()
    }

    fn path(&self, base: &str, ctx: &ConnCtx) -> String {
        SocketIo.path(base, ctx)
    }

    fn subprotocol(&self) -> Option<&'static str> {
        None
    }

    fn open(&self, ctx: &ConnCtx) -> Vec<Out> {
        SocketIo.open(ctx)
    }

    fn needs_opened(&self) -> bool {
        true
    }

    fn subscribe(&self, channel: &str, id: u32) -> Option<Out> {
        let arg = serde_json::json!({ "channel": channel });
        Some(Out::text(format!("42{id}[\"join\",{arg}]")))
    }

    fn publish(&self, channel: &str, _id: u32, stamp: &str) -> Out {
        let arg = serde_json::json!({ "channel": channel, "data": stamp });
        Out::text(format!("42[\"message:send\",{arg}]"))
    }

    fn typing(&self, channel: &str, _id: u32) -> Option<Out> {
        let arg = serde_json::json!({ "channel": channel });
        Some(Out::text(format!("42[\"typing:start\",{arg}]")))
    }

    fn incoming<'a>(&self, ctx: &ConnCtx, text: bool, payload: &'a [u8]) -> In<'a> {
        match payload {
            [b'4', b'3', rest @ ..] => {
                let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
                if rest[digits..].starts_with(b"[{\"error\"") {
                    return In::Refused(String::from_utf8_lossy(&rest[digits..]).into_owned());
                }
                match std::str::from_utf8(&rest[..digits])
                    .ok()
                    .and_then(|d| d.parse().ok())
                {
                    Some(id) => In::Reply(id),
                    None => In::Ignore,
                }
            }
            [b'4', b'2', rest @ ..] => {
                // 42["message:new",{…,"data":"<stamp>"}]: data is the last member and
                // the stamp has no escapes, so slice it out.
                if !rest.starts_with(b"[\"message:new\",") {
                    return In::Ignore;
                }
                let Some(body) = rest.strip_suffix(b"\"}]") else {
                    return In::Ignore;
                };
                let marker = b",\"data\":\"";
                match body.windows(marker.len()).rposition(|w| w == marker) {
                    Some(at) => In::Data(&body[at + marker.len()..]),
                    None => In::Ignore,
                }
            }
            _ => SocketIo.incoming(ctx, text, payload),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vocabulary_packets() {
        let p = SwitchboardSocketIo;
        let ctx = ConnCtx {
            token: Some("t".into()),
            channel: None,
        };
        assert_eq!(
            p.incoming(&ctx, true, br#"0{"sid":"x"}"#),
            In::Respond(Out::text(r#"40{"token":"t"}"#))
        );
        assert_eq!(
            p.incoming(&ctx, true, br#"437[{"epoch":"00","offset":0}]"#),
            In::Reply(7)
        );
        assert!(matches!(
            p.incoming(&ctx, true, br#"437[{"error":{"code":103}}]"#),
            In::Refused(_)
        ));
        assert_eq!(
            p.incoming(
                &ctx,
                true,
                br#"42["message:new",{"channel":"r","epoch":"0000000000000001","offset":3,"data":"1.2.3.xx"}]"#
            ),
            In::Data(b"1.2.3.xx")
        );
        assert_eq!(p.incoming(&ctx, true, b"2"), In::Respond(Out::text("3")));
        assert_eq!(
            p.subscribe("r", 5).unwrap(),
            Out::text(r#"425["join",{"channel":"r"}]"#)
        );
        assert_eq!(
            p.publish("r", 0, "s"),
            Out::text(r#"42["message:send",{"channel":"r","data":"s"}]"#)
        );
    }
}
