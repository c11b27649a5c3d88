//! The HTTP upgrade parser (`protocol::handshake::parse`) on arbitrary bytes.
//!
//! Checks: never panics; a complete upgrade consumed no more than it was given and
//! parses the same from exactly those bytes; its 101 response is well formed; an
//! error carries an HTTP status the engine answers with (400, 426, 431).
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_protocol::handshake::{self, HandshakeLimits, Parse};
use switchboard_protocol::Error;

fuzz_target!(|data: &[u8]| {
    let limits = HandshakeLimits::default();
    match handshake::parse(data, &limits) {
        Ok(Parse::Complete(up)) => {
            assert!(up.consumed <= data.len());
            assert!(up.consumed <= limits.max_request_bytes);
            let again = handshake::parse(&data[..up.consumed], &limits);
            assert_eq!(again, Ok(Parse::Complete(up.clone())));
            let response = up.response();
            assert!(response.starts_with(b"HTTP/1.1 101 "));
            assert!(response.ends_with(b"\r\n\r\n"));
        }
        Ok(Parse::Incomplete) => assert!(data.len() <= limits.max_request_bytes),
        Err(Error::Handshake { status, .. }) => {
            assert!(matches!(status, 400 | 426 | 431), "status {status}");
            let _ = handshake::error_response(status, "x");
        }
        Err(e) => panic!("a handshake error that is not an HTTP answer: {e:?}"),
    }
});
