//! The HTTP/1.1 upgrade to WebSocket (RFC 6455 §4.2), server side.
//!
//! Owns parsing one upgrade request (via `httparse`, bounded in bytes and header count),
//! the checks a server must make, subprotocol negotiation and the bytes of the answer:
//! `101 Switching Protocols` or a short HTTP error. Does not own the handshake timeout
//! (the engine's clock) or the socket.

use base64::Engine as _;
use sha1::{Digest, Sha1};

use crate::envelope::{Format, SUBPROTOCOL_JSON, SUBPROTOCOL_MSGPACK};
use crate::Error;

const WS_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Bounds on an upgrade request.
#[derive(Debug, Clone, Copy)]
pub struct HandshakeLimits {
    /// Largest request (request line + headers) accepted, in bytes; more is a 431.
    pub max_request_bytes: usize,
    /// Most header lines accepted; more is a 431.
    pub max_headers: usize,
}

impl Default for HandshakeLimits {
    fn default() -> Self {
        HandshakeLimits {
            max_request_bytes: 8192,
            max_headers: 32,
        }
    }
}

/// A valid upgrade request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upgrade {
    /// Bytes of the request consumed; anything after them is already WebSocket data.
    pub consumed: usize,
    /// The negotiated envelope format.
    pub format: Format,
    /// Whether the client offered subprotocols (if not, the 101 names none).
    pub subprotocol_offered: bool,
    /// `Sec-WebSocket-Accept` value.
    pub accept: String,
    /// Token from `Authorization: Bearer …`, if present.
    pub bearer: Option<String>,
    /// The `Origin` header (browsers send it), if present.
    pub origin: Option<String>,
}

/// Result of [`parse`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parse {
    /// The request is not complete yet (and still within limits).
    Incomplete,
    /// A valid upgrade; answer with [`Upgrade::response`].
    Complete(Upgrade),
}

/// Parse the buffered bytes of an upgrade request.
///
/// Errors carry the HTTP status to answer: 400 (malformed or invalid request),
/// 426 (not a WebSocket upgrade, or a version other than 13), 431 (too large).
pub fn parse(buf: &[u8], limits: &HandshakeLimits) -> Result<Parse, Error> {
    let mut headers = vec![httparse::EMPTY_HEADER; limits.max_headers];
    let mut req = httparse::Request::new(&mut headers);
    let consumed = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() > limits.max_request_bytes {
                return Err(too_large());
            }
            return Ok(Parse::Incomplete);
        }
        Err(httparse::Error::TooManyHeaders) => return Err(too_large()),
        Err(_) => return Err(bad("malformed HTTP request")),
    };
    if consumed > limits.max_request_bytes {
        return Err(too_large());
    }
    if req.method != Some("GET") {
        return Err(bad("method must be GET"));
    }
    if req.version != Some(1) {
        return Err(bad("HTTP/1.1 required"));
    }

    let mut upgrade_ws = false;
    let mut connection_upgrade = false;
    let mut version = None;
    let mut key = None;
    let mut protocols: Option<Vec<&str>> = None;
    let mut bearer = None;
    let mut origin = None;
    for h in req.headers.iter() {
        let value = std::str::from_utf8(h.value).map_err(|_| bad("non-UTF-8 header value"))?;
        let name = h.name;
        if name.eq_ignore_ascii_case("upgrade") {
            upgrade_ws |= has_token(value, "websocket");
        } else if name.eq_ignore_ascii_case("connection") {
            connection_upgrade |= has_token(value, "upgrade");
        } else if name.eq_ignore_ascii_case("sec-websocket-version") {
            version = Some(value.trim());
        } else if name.eq_ignore_ascii_case("sec-websocket-key") {
            key = Some(value.trim());
        } else if name.eq_ignore_ascii_case("sec-websocket-protocol") {
            protocols
                .get_or_insert_with(Vec::new)
                .extend(value.split(',').map(str::trim).filter(|p| !p.is_empty()));
        } else if name.eq_ignore_ascii_case("origin") {
            origin = Some(value.trim().to_owned());
        } else if name.eq_ignore_ascii_case("authorization") {
            let v = value.trim();
            // `get`, not `[..7]`: a non-ASCII value may have no char boundary at 7.
            if let (Some(scheme), Some(token)) = (v.get(..7), v.get(7..)) {
                if scheme.eq_ignore_ascii_case("bearer ") && !token.trim().is_empty() {
                    bearer = Some(token.trim().to_owned());
                }
            }
        }
    }
    if !upgrade_ws {
        return Err(Error::Handshake {
            status: 426,
            reason: "this endpoint only speaks WebSocket",
        });
    }
    if !connection_upgrade {
        return Err(bad("Connection header must contain 'upgrade'"));
    }
    if version != Some("13") {
        return Err(Error::Handshake {
            status: 426,
            reason: "Sec-WebSocket-Version must be 13",
        });
    }
    let key = key.ok_or(bad("missing Sec-WebSocket-Key"))?;
    match base64::engine::general_purpose::STANDARD.decode(key) {
        Ok(raw) if raw.len() == 16 => {}
        _ => return Err(bad("Sec-WebSocket-Key must be 16 bytes in base64")),
    }
    let (format, subprotocol_offered) = match &protocols {
        // Clients that cannot set a subprotocol (command-line tools) may ask for JSON
        // in the query string.
        None if query_asks_json(req.path.unwrap_or("/")) => (Format::Json, false),
        None => (Format::MsgPack, false),
        Some(list) => {
            let chosen = list.iter().find_map(|p| match *p {
                SUBPROTOCOL_MSGPACK => Some(Format::MsgPack),
                SUBPROTOCOL_JSON => Some(Format::Json),
                _ => None,
            });
            match chosen {
                Some(f) => (f, true),
                None => return Err(bad(
                    "unsupported subprotocol: offer switchboard.v1.msgpack or switchboard.v1.json",
                )),
            }
        }
    };
    Ok(Parse::Complete(Upgrade {
        consumed,
        format,
        subprotocol_offered,
        accept: accept_key(key),
        bearer,
        origin,
    }))
}

/// The `Sec-WebSocket-Accept` value for a client key.
pub fn accept_key(key: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(WS_GUID);
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

impl Upgrade {
    /// The bytes of the `101 Switching Protocols` answer.
    pub fn response(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(160);
        out.extend_from_slice(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ");
        out.extend_from_slice(self.accept.as_bytes());
        if self.subprotocol_offered {
            out.extend_from_slice(b"\r\nSec-WebSocket-Protocol: ");
            out.extend_from_slice(self.format.subprotocol().as_bytes());
        }
        out.extend_from_slice(b"\r\n\r\n");
        out
    }
}

/// The bytes of an HTTP error answer: status line, a few headers, a one-line body.
pub fn error_response(status: u16, reason: &str) -> Vec<u8> {
    let phrase = match status {
        400 => "Bad Request",
        403 => "Forbidden",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let extra = match status {
        426 => "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n",
        429 | 503 => "Retry-After: 1\r\n",
        _ => "",
    };
    format!(
        "HTTP/1.1 {status} {phrase}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\nX-Content-Type-Options: nosniff\r\nCache-Control: no-store\r\n{extra}\r\n{reason}\n",
        reason.len() + 1
    )
    .into_bytes()
}

fn query_asks_json(path: &str) -> bool {
    path.split_once('?')
        .is_some_and(|(_, q)| q.split('&').any(|kv| kv == "format=json"))
}

fn has_token(value: &str, token: &str) -> bool {
    value
        .split(',')
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

fn bad(reason: &'static str) -> Error {
    Error::Handshake {
        status: 400,
        reason,
    }
}

fn too_large() -> Error {
    Error::Handshake {
        status: 431,
        reason: "request headers too large",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQ: &str = "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n";

    fn req(extra: &str) -> String {
        format!("{REQ}{extra}\r\n")
    }

    #[test]
    fn rfc_accept_key() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn accepts_and_negotiates() {
        let Parse::Complete(u) = parse(req("").as_bytes(), &HandshakeLimits::default()).unwrap()
        else {
            panic!()
        };
        assert_eq!(u.format, Format::MsgPack);
        assert!(!u.subprotocol_offered);
        let resp = String::from_utf8(u.response()).unwrap();
        assert!(resp.starts_with("HTTP/1.1 101"));
        assert!(!resp.contains("Sec-WebSocket-Protocol"));

        let r = req("Sec-WebSocket-Protocol: chat, switchboard.v1.json\r\nAuthorization: Bearer abc.def\r\n");
        let Parse::Complete(u) = parse(r.as_bytes(), &HandshakeLimits::default()).unwrap() else {
            panic!()
        };
        assert_eq!(u.format, Format::Json);
        assert_eq!(u.bearer.as_deref(), Some("abc.def"));
        assert!(String::from_utf8(u.response())
            .unwrap()
            .contains("Sec-WebSocket-Protocol: switchboard.v1.json\r\n"));
        assert_eq!(u.consumed, r.len());
    }

    #[test]
    fn non_ascii_authorization_is_not_a_bearer_token() {
        // Found by fuzz/fuzz_targets/handshake.rs: byte 7 inside a two-byte char panicked.
        for value in [
            "Bearer\u{e9}x",
            "B\u{e9}arer x",
            "\u{e9}\u{e9}\u{e9}\u{e9}",
            "Bearer  ",
        ] {
            let r = req(&format!("Authorization: {value}\r\n"));
            let Parse::Complete(u) = parse(r.as_bytes(), &HandshakeLimits::default()).unwrap()
            else {
                panic!()
            };
            assert_eq!(u.bearer, None, "{value}");
        }
    }

    #[test]
    fn query_selects_json_without_subprotocol() {
        let r = req("").replace("GET /ws ", "GET /?format=json ");
        let Parse::Complete(u) = parse(r.as_bytes(), &HandshakeLimits::default()).unwrap() else {
            panic!()
        };
        assert_eq!((u.format, u.subprotocol_offered), (Format::Json, false));
        let r = req("Sec-WebSocket-Protocol: switchboard.v1.msgpack\r\n")
            .replace("GET /ws ", "GET /?format=json ");
        let Parse::Complete(u) = parse(r.as_bytes(), &HandshakeLimits::default()).unwrap() else {
            panic!()
        };
        assert_eq!(u.format, Format::MsgPack, "an offered subprotocol wins");
    }

    #[test]
    fn incomplete_then_too_large() {
        let limits = HandshakeLimits {
            max_request_bytes: 64,
            max_headers: 32,
        };
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\nHost: x\r\n", &limits),
            Ok(Parse::Incomplete)
        );
        let long = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(100));
        assert_eq!(
            parse(long.as_bytes(), &limits).unwrap_err().http_status(),
            431
        );
        let many: String = (0..40).map(|i| format!("H{i}: v\r\n")).collect();
        let r = req(&many);
        assert_eq!(
            parse(r.as_bytes(), &HandshakeLimits::default())
                .unwrap_err()
                .http_status(),
            431
        );
    }

    #[test]
    fn refusals_have_statuses() {
        let l = HandshakeLimits::default();
        let status = |s: &str| parse(s.as_bytes(), &l).unwrap_err().http_status();
        assert_eq!(status("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), 426);
        assert_eq!(
            status(&format!("{}\r\n", REQ.replace("Version: 13", "Version: 8"))),
            426
        );
        assert_eq!(
            status(&format!(
                "{}\r\n",
                REQ.replace("dGhlIHNhbXBsZSBub25jZQ==", "short")
            )),
            400
        );
        assert_eq!(status(&format!("{}\r\n", REQ.replace("GET", "POST"))), 400);
        assert_eq!(status(&req("Sec-WebSocket-Protocol: chat\r\n")), 400);
        assert_eq!(status("\x00\x01garbage\r\n\r\n"), 400);
        let body = String::from_utf8(error_response(426, "nope")).unwrap();
        assert!(body.starts_with("HTTP/1.1 426 Upgrade Required\r\n"));
        assert!(body.contains("Sec-WebSocket-Version: 13"));
    }
}
