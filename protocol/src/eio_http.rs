//! The HTTP side of an Engine.IO endpoint (`/socket.io/` by default), sans-IO.
//!
//! Owns reading one request's head (method, the `EIO`/`transport`/`sid`/`token` query,
//! `Origin`, `Authorization`, `Content-Length`, keep-alive, whether it is a WebSocket
//! upgrade), the checks Engine.IO servers make before anything else (protocol version
//! 4, a known transport, a method that fits the request), and the bytes of the answers:
//! a polling payload, `ok` to a POST, a CORS preflight, an Engine.IO error
//! (`{"code":N,"message":…}` with status 400/403/413).
//!
//! Does not own sessions, the upgrade's `101` ([`crate::handshake`]) or the payloads'
//! packets ([`crate::engineio`]).

use crate::handshake::HandshakeLimits;

/// A request's method, as far as Engine.IO cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Opens a session (no `sid`) or waits for packets (a poll).
    Get,
    /// Sends packets.
    Post,
    /// A browser's CORS preflight.
    Options,
    /// Anything else: refused.
    Other,
}

/// The transport a request names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// HTTP long-polling.
    Polling,
    /// WebSocket.
    WebSocket,
}

/// Engine.IO's error codes, sent as `{"code":N,"message":…}` with status 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EioError {
    /// 0: a missing or unknown `transport`.
    UnknownTransport,
    /// 1: a `sid` that names no session (ended, timed out or never existed), or a
    /// polling request for a session that has moved to WebSocket.
    UnknownSid,
    /// 2: a method that cannot open a session (POST without `sid`).
    BadHandshakeMethod,
    /// 3: anything else malformed (a duplicate poll, a bad body, a bad query).
    BadRequest,
    /// 4: the origin is not allowed (status 403).
    Forbidden,
    /// 5: `EIO` is missing or not 4 (EIO=3 clients are Socket.IO 2.x).
    UnsupportedProtocolVersion,
}

impl EioError {
    /// The code in the JSON body.
    pub fn code(self) -> u8 {
        match self {
            EioError::UnknownTransport => 0,
            EioError::UnknownSid => 1,
            EioError::BadHandshakeMethod => 2,
            EioError::BadRequest => 3,
            EioError::Forbidden => 4,
            EioError::UnsupportedProtocolVersion => 5,
        }
    }

    /// The message in the JSON body (engine.io's own words, which clients show).
    pub fn message(self) -> &'static str {
        match self {
            EioError::UnknownTransport => "Transport unknown",
            EioError::UnknownSid => "Session ID unknown",
            EioError::BadHandshakeMethod => "Bad handshake method",
            EioError::BadRequest => "Bad request",
            EioError::Forbidden => "Forbidden",
            EioError::UnsupportedProtocolVersion => "Unsupported protocol version",
        }
    }

    /// The HTTP status.
    pub fn status(self) -> u16 {
        match self {
            EioError::Forbidden => 403,
            _ => 400,
        }
    }
}

/// One request's head, with what Engine.IO needs from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// Bytes of the head (request line and headers); the body follows.
    pub consumed: usize,
    /// The method.
    pub method: Method,
    /// The `transport` query parameter, checked.
    pub transport: Transport,
    /// The `sid` query parameter.
    pub sid: Option<String>,
    /// The `token` query parameter (JWT), percent-decoded.
    pub token: Option<String>,
    /// The token of `Authorization: Bearer …`.
    pub bearer: Option<String>,
    /// The `Origin` header.
    pub origin: Option<String>,
    /// `Content-Length` (0 when absent).
    pub content_length: usize,
    /// The client keeps the connection open after the answer (HTTP/1.1 default).
    pub keep_alive: bool,
    /// The request is a WebSocket upgrade (`Upgrade: websocket`).
    pub websocket: bool,
    /// `Access-Control-Request-Headers` of a preflight, echoed when allowed.
    pub request_headers: Option<String>,
}

/// Result of [`parse_head`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadParse {
    /// More bytes are needed (still within limits).
    Incomplete,
    /// A complete head the endpoint may serve.
    Complete(Head),
    /// A complete request refused before any session is looked at; `keep_alive` says
    /// whether the connection may carry the next request.
    Refused {
        /// Bytes of the head.
        consumed: usize,
        /// Why.
        error: EioError,
        /// The `Origin` header, for CORS on the error.
        origin: Option<String>,
    },
}

/// The path of the request buffered in `buf`, once its request line is complete
/// (`None` before). Cheap: it looks only at the first line.
pub fn request_path(buf: &[u8]) -> Option<&[u8]> {
    let line_end = buf.iter().position(|&b| b == b'\n')?;
    let line = &buf[..line_end];
    let start = line.iter().position(|&b| b == b' ')? + 1;
    let len = line[start..].iter().position(|&b| b == b' ')?;
    Some(&line[start..start + len])
}

/// Parse a request's head. Errors (malformed HTTP, too large) carry an HTTP status
/// like [`crate::handshake::parse`]'s; Engine.IO's own refusals are
/// [`HeadParse::Refused`].
pub fn parse_head(buf: &[u8], limits: &HandshakeLimits) -> Result<HeadParse, crate::Error> {
    let mut headers = vec![httparse::EMPTY_HEADER; limits.max_headers];
    let mut req = httparse::Request::new(&mut headers);
    let consumed = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() > limits.max_request_bytes {
                return Err(too_large());
            }
            return Ok(HeadParse::Incomplete);
        }
        Err(httparse::Error::TooManyHeaders) => return Err(too_large()),
        Err(_) => {
            return Err(crate::Error::Handshake {
                status: 400,
                reason: "malformed HTTP request",
            })
        }
    };
    if consumed > limits.max_request_bytes {
        return Err(too_large());
    }
    let method = match req.method {
        Some("GET") => Method::Get,
        Some("POST") => Method::Post,
        Some("OPTIONS") => Method::Options,
        _ => Method::Other,
    };
    let mut keep_alive = req.version == Some(1);
    let mut websocket = false;
    let mut origin = None;
    let mut bearer = None;
    let mut content_length = 0usize;
    let mut chunked = false;
    let mut request_headers = None;
    for h in req.headers.iter() {
        let Ok(value) = std::str::from_utf8(h.value) else {
            continue;
        };
        let name = h.name;
        if name.eq_ignore_ascii_case("upgrade") {
            websocket |= value
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("websocket"));
        } else if name.eq_ignore_ascii_case("connection") {
            for t in value.split(',') {
                if t.trim().eq_ignore_ascii_case("close") {
                    keep_alive = false;
                } else if t.trim().eq_ignore_ascii_case("keep-alive") {
                    keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case("origin") {
            origin = Some(value.trim().to_owned());
        } else if name.eq_ignore_ascii_case("content-length") {
            content_length = match value.trim().parse() {
                Ok(n) => n,
                Err(_) => return Ok(refused(consumed, EioError::BadRequest, origin)),
            };
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = true;
        } else if name.eq_ignore_ascii_case("access-control-request-headers") {
            request_headers = Some(value.trim().to_owned());
        } else if name.eq_ignore_ascii_case("authorization") {
            let v = value.trim();
            if let (Some(scheme), Some(token)) = (v.get(..7), v.get(7..)) {
                if scheme.eq_ignore_ascii_case("bearer ") && !token.trim().is_empty() {
                    bearer = Some(token.trim().to_owned());
                }
            }
        }
    }
    if chunked {
        // Clients send polling bodies with a length; a chunked body is not read.
        return Ok(refused(consumed, EioError::BadRequest, origin));
    }
    let query = req
        .path
        .unwrap_or("/")
        .split_once('?')
        .map_or("", |(_, q)| q);
    let mut eio = None;
    let mut transport = None;
    let mut sid = None;
    let mut token = None;
    for kv in query.split('&') {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        match k {
            "EIO" => eio = Some(v),
            "transport" => transport = Some(v),
            "sid" => sid = Some(percent_decode(v)),
            "token" => token = Some(percent_decode(v)),
            _ => {}
        }
    }
    if method == Method::Options {
        // A preflight carries no Engine.IO query of its own worth checking.
        return Ok(HeadParse::Complete(Head {
            consumed,
            method,
            transport: Transport::Polling,
            sid: None,
            token: None,
            bearer: None,
            origin,
            content_length,
            keep_alive,
            websocket: false,
            request_headers,
        }));
    }
    let transport = match transport {
        Some("polling") => Transport::Polling,
        Some("websocket") => Transport::WebSocket,
        _ => return Ok(refused(consumed, EioError::UnknownTransport, origin)),
    };
    if eio != Some("4") {
        return Ok(refused(
            consumed,
            EioError::UnsupportedProtocolVersion,
            origin,
        ));
    }
    let bad_method = match (transport, method) {
        (_, Method::Other) => true,
        (Transport::Polling, Method::Post) => sid.is_none(),
        (Transport::WebSocket, Method::Get) => false,
        (Transport::WebSocket, _) => true,
        _ => false,
    };
    if bad_method {
        let error = if sid.is_none() {
            EioError::BadHandshakeMethod
        } else {
            EioError::BadRequest
        };
        return Ok(refused(consumed, error, origin));
    }
    if transport == Transport::WebSocket && !websocket {
        return Ok(refused(consumed, EioError::BadRequest, origin));
    }
    Ok(HeadParse::Complete(Head {
        consumed,
        method,
        transport,
        sid,
        token,
        bearer,
        origin,
        content_length,
        keep_alive,
        websocket,
        request_headers,
    }))
}

fn refused(consumed: usize, error: EioError, origin: Option<String>) -> HeadParse {
    HeadParse::Refused {
        consumed,
        error,
        origin,
    }
}

fn too_large() -> crate::Error {
    crate::Error::Handshake {
        status: 431,
        reason: "request headers too large",
    }
}

/// `%XX` and `+` decoded; invalid escapes kept as they are.
fn percent_decode(s: &str) -> String {
    if !s.contains(['%', '+']) {
        return s.to_owned();
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

/// CORS headers for `origin` when it is allowed (credentials included, as
/// `withCredentials` clients need), else nothing.
fn cors(origin: Option<&str>, out: &mut Vec<u8>) {
    if let Some(o) = origin {
        out.extend_from_slice(b"Access-Control-Allow-Origin: ");
        out.extend_from_slice(o.as_bytes());
        out.extend_from_slice(b"\r\nAccess-Control-Allow-Credentials: true\r\nVary: Origin\r\n");
    }
}

fn head(
    status: u16,
    content_type: &str,
    len: usize,
    origin: Option<&str>,
    keep_alive: bool,
) -> Vec<u8> {
    let phrase = match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        403 => "Forbidden",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let mut out = Vec::with_capacity(192 + len);
    out.extend_from_slice(format!("HTTP/1.1 {status} {phrase}\r\n").as_bytes());
    if !content_type.is_empty() {
        out.extend_from_slice(b"Content-Type: ");
        out.extend_from_slice(content_type.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("Content-Length: {len}\r\n").as_bytes());
    out.extend_from_slice(b"Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n");
    if !keep_alive {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    cors(origin, &mut out);
    out
}

/// A `200` carrying `payload` (a polling payload, or `ok` to a POST) as text.
pub fn ok_response(payload: &[u8], origin: Option<&str>, keep_alive: bool) -> Vec<u8> {
    let mut out = head(
        200,
        "text/plain; charset=UTF-8",
        payload.len(),
        origin,
        keep_alive,
    );
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(payload);
    out
}

/// An Engine.IO error: its status and `{"code":N,"message":…}`.
pub fn error_response(error: EioError, origin: Option<&str>, keep_alive: bool) -> Vec<u8> {
    let body = format!(
        "{{\"code\":{},\"message\":\"{}\"}}",
        error.code(),
        error.message()
    );
    let mut out = head(
        error.status(),
        "application/json",
        body.len(),
        origin,
        keep_alive,
    );
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body.as_bytes());
    out
}

/// Any other refusal with a status and a reason as JSON (`413` for an oversized body,
/// `429` for a flood, `503` when full).
pub fn status_response(
    status: u16,
    reason: &str,
    origin: Option<&str>,
    keep_alive: bool,
) -> Vec<u8> {
    let body = serde_json::json!({ "code": 3, "message": reason }).to_string();
    let mut out = head(status, "application/json", body.len(), origin, keep_alive);
    if status == 429 || status == 503 {
        out.extend_from_slice(b"Retry-After: 1\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body.as_bytes());
    out
}

/// The answer to a CORS preflight from an allowed `origin`.
pub fn preflight_response(
    origin: Option<&str>,
    request_headers: Option<&str>,
    keep_alive: bool,
) -> Vec<u8> {
    let mut out = head(204, "", 0, origin, keep_alive);
    out.extend_from_slice(b"Access-Control-Allow-Methods: GET, POST, OPTIONS\r\n");
    if let Some(h) = request_headers {
        if h.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
            out.extend_from_slice(b"Access-Control-Allow-Headers: ");
            out.extend_from_slice(h.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(b"Access-Control-Max-Age: 600\r\n\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(req: &str) -> HeadParse {
        parse_head(req.as_bytes(), &HandshakeLimits::default()).unwrap()
    }

    fn refusal(req: &str) -> EioError {
        match parse(req) {
            HeadParse::Refused { error, .. } => error,
            other => panic!("{req}: {other:?}"),
        }
    }

    #[test]
    fn polling_requests_parse() {
        let HeadParse::Complete(h) = parse(
            "POST /socket.io/?EIO=4&transport=polling&sid=ab%2Bc&token=x.y.z HTTP/1.1\r\nHost: h\r\nOrigin: https://app.example\r\nContent-Length: 5\r\n\r\n4hi",
        ) else {
            panic!()
        };
        assert_eq!(h.method, Method::Post);
        assert_eq!(h.transport, Transport::Polling);
        assert_eq!(h.sid.as_deref(), Some("ab+c"));
        assert_eq!(h.token.as_deref(), Some("x.y.z"));
        assert_eq!(h.origin.as_deref(), Some("https://app.example"));
        assert_eq!(h.content_length, 5);
        assert!(h.keep_alive && !h.websocket);
        assert_eq!(
            parse("GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: h"),
            HeadParse::Incomplete
        );
        let HeadParse::Complete(h) = parse(
            "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        ) else {
            panic!()
        };
        assert!(h.websocket);
        assert_eq!(
            request_path(b"GET /socket.io/?EIO=4 HTTP/1.1\r\n"),
            Some(&b"/socket.io/?EIO=4"[..])
        );
        assert_eq!(request_path(b"GET /socket.io/"), None);
    }

    #[test]
    fn the_conformance_suites_refusals() {
        let r = |q: &str, m: &str| refusal(&format!("{m} /socket.io/?{q} HTTP/1.1\r\n\r\n"));
        assert_eq!(
            r("transport=polling", "GET"),
            EioError::UnsupportedProtocolVersion
        );
        assert_eq!(
            r("EIO=abc&transport=polling", "GET"),
            EioError::UnsupportedProtocolVersion
        );
        assert_eq!(
            r("EIO=3&transport=polling", "GET"),
            EioError::UnsupportedProtocolVersion
        );
        assert_eq!(r("EIO=4", "GET"), EioError::UnknownTransport);
        assert_eq!(r("EIO=4&transport=abc", "GET"), EioError::UnknownTransport);
        assert_eq!(
            r("EIO=4&transport=polling", "POST"),
            EioError::BadHandshakeMethod
        );
        assert_eq!(
            r("EIO=4&transport=polling", "PUT"),
            EioError::BadHandshakeMethod
        );
        assert_eq!(r("EIO=4&transport=websocket", "GET"), EioError::BadRequest);
        let body = String::from_utf8(error_response(EioError::UnknownSid, None, true)).unwrap();
        assert!(body.starts_with("HTTP/1.1 400 Bad Request\r\n"));
        assert!(body.ends_with("\r\n\r\n{\"code\":1,\"message\":\"Session ID unknown\"}"));
        assert!(!body.contains("Connection: close"));
    }

    #[test]
    fn answers_carry_cors_for_allowed_origins() {
        let ok = String::from_utf8(ok_response(b"2", Some("https://a.example"), false)).unwrap();
        assert!(ok.contains("Access-Control-Allow-Origin: https://a.example\r\n"));
        assert!(ok.contains("Access-Control-Allow-Credentials: true\r\n"));
        assert!(ok.contains("Connection: close\r\n"));
        assert!(ok.ends_with("Content-Length: 1\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\nAccess-Control-Allow-Origin: https://a.example\r\nAccess-Control-Allow-Credentials: true\r\nVary: Origin\r\n\r\n2"));
        let pre = String::from_utf8(preflight_response(
            Some("https://a.example"),
            Some("content-type"),
            true,
        ))
        .unwrap();
        assert!(pre.starts_with("HTTP/1.1 204 No Content\r\n"));
        assert!(pre.contains("Access-Control-Allow-Headers: content-type\r\n"));
        let too_big =
            String::from_utf8(status_response(413, "payload too large", None, false)).unwrap();
        assert!(too_big.starts_with("HTTP/1.1 413 Payload Too Large\r\n"));
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b+c"), "a b c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(percent_decode("%e2%82%ac"), "€");
    }
}
