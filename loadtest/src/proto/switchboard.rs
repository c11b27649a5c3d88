//! The Switchboard v1 protocol (docs/PROTOCOL.md), MessagePack or JSON.

use std::borrow::Cow;

use switchboard_protocol::envelope::{self, Command, Payload, Request, ServerMessage};
use switchboard_protocol::Format;

use super::{ConnCtx, In, Out, Protocol};

/// Id of the `connect` command.
const CONNECT_ID: u32 = 1;

/// Switchboard v1 in one format.
#[derive(Debug, Clone, Copy)]
pub struct Switchboard {
    format: Format,
    /// Publishes ask for their position (else `"reply": false`).
    reply: bool,
}

impl Switchboard {
    /// JSON if `json`, else MessagePack; `reply`: whether publishes ask for a position.
    pub fn new(json: bool, reply: bool) -> Self {
        Switchboard {
            format: if json { Format::Json } else { Format::MsgPack },
            reply,
        }
    }

    fn out(&self, req: &Request<'_>) -> Out {
        Out {
            text: self.format == Format::Json,
            bytes: envelope::encode_request(self.format, req),
        }
    }
}

impl Protocol for Switchboard {
    fn name(&self) -> String {
        format!(
            "switchboard/{}",
            if self.format == Format::Json {
                "json"
            } else {
                "msgpack"
            }
        )
    }

    fn path(&self, base: &str, _ctx: &ConnCtx) -> String {
        base.to_string()
    }

    fn subprotocol(&self) -> Option<&'static str> {
        Some(self.format.subprotocol())
    }

    fn open(&self, ctx: &ConnCtx) -> Vec<Out> {
        let token = ctx.token.as_deref().map(Cow::Borrowed);
        vec![self.out(&Request {
            id: CONNECT_ID,
            command: Command::Connect {
                token,
                reconnect: None,
                device: None,
                positions: Vec::new(),
            },
        })]
    }

    fn needs_opened(&self) -> bool {
        true
    }

    fn subscribe(&self, channel: &str, id: u32) -> Option<Out> {
        Some(self.out(&Request {
            id,
            command: Command::Subscribe {
                channel: channel.into(),
                since: None,
            },
        }))
    }

    fn typing(&self, channel: &str, id: u32) -> Option<Out> {
        Some(self.out(&Request {
            id,
            command: Command::Typing {
                channel: channel.into(),
                typing: true,
            },
        }))
    }

    fn publish(&self, channel: &str, id: u32, stamp: &str) -> Out {
        let raw = match self.format {
            Format::Json | Format::SocketIo => serde_json::to_vec(stamp).expect("string to JSON"),
            Format::MsgPack => {
                let mut v = Vec::with_capacity(stamp.len() + 5);
                rmp::encode::write_str(&mut v, stamp).expect("vec write");
                v
            }
        };
        let req = Request {
            id,
            command: Command::Publish {
                channel: channel.into(),
                data: Payload {
                    format: self.format,
                    raw: &raw,
                },
                key: None,
                meta: None,
                reply: self.reply,
            },
        };
        self.out(&req)
    }

    fn incoming<'a>(&self, _ctx: &ConnCtx, _text: bool, payload: &'a [u8]) -> In<'a> {
        match envelope::decode_server_message(self.format, payload) {
            Ok(ServerMessage::Publication { data, .. }) => {
                let text = match self.format {
                    Format::MsgPack => rmp::decode::read_str_from_slice(data.raw)
                        .ok()
                        .map(|(s, _)| s.as_bytes()),
                    // Stamps have no escapes: the bytes between the quotes are the text.
                    Format::Json | Format::SocketIo => data
                        .raw
                        .strip_prefix(b"\"")
                        .and_then(|r| r.strip_suffix(b"\"")),
                };
                match text {
                    Some(t) => In::Data(t),
                    None => In::Ignore,
                }
            }
            Ok(ServerMessage::Result { id: CONNECT_ID, .. }) => In::Opened,
            Ok(ServerMessage::Result { id, .. }) => In::Reply(id),
            Ok(ServerMessage::Error { code, message, .. }) => {
                In::Refused(format!("error {code}: {message}"))
            }
            Ok(ServerMessage::Disconnect { code, reason, .. }) => {
                In::Closing(format!("{code} {reason}"))
            }
            // Reconnect tokens, receipts, inbox backlogs: not measured here.
            Ok(ServerMessage::Other { .. }) | Err(_) => In::Ignore,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_round_trips_through_a_publication() {
        for json in [false, true] {
            let p = Switchboard::new(json, true);
            let out = p.publish("c", 5, "1.2.3.xx");
            let req = envelope::decode_request(p.format, &out.bytes).unwrap();
            let Command::Publish { data, .. } = req.command else {
                panic!()
            };
            let pos = switchboard_protocol::Position {
                epoch: 1,
                offset: 1,
            };
            let frame = envelope::encode_publication(p.format, "c", pos, data).unwrap();
            // Strip the 2-byte server frame header (payload < 126 bytes).
            let In::Data(text) = p.incoming(&ConnCtx::default(), json, &frame[2..]) else {
                panic!()
            };
            assert_eq!(text, b"1.2.3.xx");
        }
    }
}
