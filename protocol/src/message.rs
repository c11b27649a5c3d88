//! Reassembly of fragmented messages and the rules of close frames.
//!
//! Owns the state between the first and the final fragment of one message: its opcode,
//! bytes so far and UTF-8 state. Does not own frame parsing ([`crate::frame`]).
//! The state is boxed and exists only while a message is fragmented, so an idle
//! connection pays one pointer for it.

use bytes::{Bytes, BytesMut};

use crate::close::CloseCode;
use crate::frame::{Frame, OpCode};
use crate::utf8::{self, Utf8Validator};
use crate::Error;

/// A complete message or control frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A text message, validated UTF-8.
    Text(Bytes),
    /// A binary message.
    Binary(Bytes),
    /// A ping; answer with a pong carrying the same payload.
    Ping(Bytes),
    /// A pong.
    Pong(Bytes),
    /// A close frame: the peer's code (None if it sent none) and UTF-8 reason.
    Close {
        /// Close code sent by the peer, if any.
        code: Option<u16>,
        /// Reason, validated UTF-8.
        reason: Bytes,
    },
}

/// Per-connection reassembly state.
#[derive(Debug, Default)]
pub struct MessageAssembler {
    /// Present only between a non-final data frame and the final continuation.
    partial: Option<Box<Partial>>,
}

#[derive(Debug)]
struct Partial {
    /// Text or binary: what the first fragment said.
    text: bool,
    /// Payload of the fragments so far.
    buf: BytesMut,
    /// UTF-8 state across fragments (text only).
    utf8: Utf8Validator,
}

impl MessageAssembler {
    /// Whether a fragmented message is in progress.
    pub fn in_progress(&self) -> bool {
        self.partial.is_some()
    }

    /// Feed one frame; returns a message when one is complete.
    pub fn push(
        &mut self,
        frame: Frame,
        max_message_bytes: usize,
    ) -> Result<Option<Message>, Error> {
        match frame.opcode {
            OpCode::Ping => Ok(Some(Message::Ping(frame.payload))),
            OpCode::Pong => Ok(Some(Message::Pong(frame.payload))),
            OpCode::Close => parse_close(frame.payload).map(Some),
            OpCode::Text | OpCode::Binary => {
                if self.partial.is_some() {
                    return Err(Error::Protocol("new message before the previous one ended"));
                }
                if frame.payload.len() > max_message_bytes {
                    return Err(Error::TooBig {
                        limit: max_message_bytes,
                    });
                }
                let text = frame.opcode == OpCode::Text;
                if frame.fin {
                    if text {
                        utf8::validate(&frame.payload)?;
                        return Ok(Some(Message::Text(frame.payload)));
                    }
                    return Ok(Some(Message::Binary(frame.payload)));
                }
                let mut utf8 = Utf8Validator::default();
                if text {
                    utf8.feed(&frame.payload)?;
                }
                self.partial = Some(Box::new(Partial {
                    text,
                    buf: BytesMut::from(&frame.payload[..]),
                    utf8,
                }));
                Ok(None)
            }
            OpCode::Continuation => {
                let Some(p) = self.partial.as_mut() else {
                    return Err(Error::Protocol("continuation frame without a message"));
                };
                if p.buf.len() + frame.payload.len() > max_message_bytes {
                    return Err(Error::TooBig {
                        limit: max_message_bytes,
                    });
                }
                if p.text {
                    p.utf8.feed(&frame.payload)?;
                }
                p.buf.extend_from_slice(&frame.payload);
                if !frame.fin {
                    return Ok(None);
                }
                let p = self.partial.take().expect("checked above");
                if p.text {
                    p.utf8.finish()?;
                    Ok(Some(Message::Text(p.buf.freeze())))
                } else {
                    Ok(Some(Message::Binary(p.buf.freeze())))
                }
            }
        }
    }
}

fn parse_close(payload: Bytes) -> Result<Message, Error> {
    match payload.len() {
        0 => Ok(Message::Close {
            code: None,
            reason: Bytes::new(),
        }),
        1 => Err(Error::Protocol("close frame with a 1-byte payload")),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            if !CloseCode::is_valid_received(code) {
                return Err(Error::Protocol("invalid close code"));
            }
            let reason = payload.slice(2..);
            utf8::validate(&reason)?;
            Ok(Message::Close {
                code: Some(code),
                reason,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(fin: bool, opcode: OpCode, payload: &[u8]) -> Frame {
        Frame {
            fin,
            opcode,
            payload: Bytes::copy_from_slice(payload),
        }
    }

    #[test]
    fn reassembles_text_across_fragments() {
        let mut a = MessageAssembler::default();
        let s = "héllo wörld".as_bytes();
        assert_eq!(a.push(frame(false, OpCode::Text, &s[..2]), 100), Ok(None));
        // A ping between fragments is allowed.
        assert_eq!(
            a.push(frame(true, OpCode::Ping, b"p"), 100),
            Ok(Some(Message::Ping(Bytes::from_static(b"p"))))
        );
        assert_eq!(
            a.push(frame(false, OpCode::Continuation, &s[2..8]), 100),
            Ok(None)
        );
        assert_eq!(
            a.push(frame(true, OpCode::Continuation, &s[8..]), 100),
            Ok(Some(Message::Text(Bytes::copy_from_slice(s))))
        );
        assert!(!a.in_progress());
    }

    #[test]
    fn violations() {
        let mut a = MessageAssembler::default();
        assert!(matches!(
            a.push(frame(true, OpCode::Continuation, b"x"), 100),
            Err(Error::Protocol(_))
        ));
        a.push(frame(false, OpCode::Binary, b"x"), 100).unwrap();
        assert!(matches!(
            a.push(frame(true, OpCode::Text, b"x"), 100),
            Err(Error::Protocol(_))
        ));

        let mut a = MessageAssembler::default();
        a.push(frame(false, OpCode::Binary, &[0; 60]), 100).unwrap();
        assert_eq!(
            a.push(frame(true, OpCode::Continuation, &[0; 60]), 100),
            Err(Error::TooBig { limit: 100 })
        );

        let mut a = MessageAssembler::default();
        assert_eq!(
            a.push(frame(true, OpCode::Text, b"\xff"), 100),
            Err(Error::InvalidUtf8)
        );
        a.push(frame(false, OpCode::Text, b"a\xce"), 100).unwrap();
        assert_eq!(
            a.push(frame(true, OpCode::Continuation, b""), 100),
            Err(Error::InvalidUtf8)
        );
    }

    #[test]
    fn close_frames() {
        let mut a = MessageAssembler::default();
        assert_eq!(
            a.push(
                frame(true, OpCode::Close, &[0x03, 0xe8, b'b', b'y', b'e']),
                100
            ),
            Ok(Some(Message::Close {
                code: Some(1000),
                reason: Bytes::from_static(b"bye")
            }))
        );
        assert!(a.push(frame(true, OpCode::Close, &[0x03]), 100).is_err());
        assert!(a
            .push(frame(true, OpCode::Close, &1005u16.to_be_bytes()), 100)
            .is_err());
        assert_eq!(
            a.push(frame(true, OpCode::Close, &[0x03, 0xe8, 0xff]), 100),
            Err(Error::InvalidUtf8)
        );
    }
}
