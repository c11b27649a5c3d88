//! A model endpoint's answers (`ai::chat_wire`): whole chat completions, error bodies
//! and streamed server-sent events, cut into pieces at the input's first byte.
//!
//! Checks: never panics; a stream's text is the concatenation of its deltas, however
//! its bytes arrive.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_control_plane::ai::chat_wire::{
    parse_completion, status_error, ModelError, StreamParser,
};

fuzz_target!(|input: &[u8]| {
    let Some((&step, body)) = input.split_first() else {
        return;
    };
    let _ = parse_completion(body);
    let _ = status_error(u16::from(step) + 300, None, body);
    let mut whole = StreamParser::new();
    let mut whole_text = String::new();
    let whole_result = whole.feed(body, &mut |d| whole_text.push_str(d));
    let mut parts = StreamParser::new();
    let mut parts_text = String::new();
    let mut parts_result: Result<(), ModelError> = Ok(());
    for piece in body.chunks(usize::from(step.max(1))) {
        parts_result = parts.feed(piece, &mut |d| parts_text.push_str(d));
        if parts_result.is_err() {
            break;
        }
    }
    assert_eq!(whole_result.is_ok(), parts_result.is_ok());
    if whole_result.is_ok() {
        assert_eq!(whole_text, parts_text);
        assert_eq!(whole.into_completion().content, whole_text);
    }
});
