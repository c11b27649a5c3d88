//! Config files and `SWITCHBOARD_SECTION__KEY` overrides (`Config::from_text`).
//!
//! The input is the text of a config file, then (after a NUL byte) environment lines
//! `NAME=VALUE`. Checks: never panics; an error has a message; a config that loads
//! passes its own validation again, and yields an engine config the engine accepts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_control_plane::config::Config;

fuzz_target!(|input: &[u8]| {
    let cut = input.iter().position(|&b| b == 0).unwrap_or(input.len());
    let Ok(text) = std::str::from_utf8(&input[..cut]) else {
        return; // a file that is not UTF-8 is refused by read_to_string
    };
    let env: Vec<(String, String)> = input
        .get(cut + 1..)
        .map(|rest| String::from_utf8_lossy(rest).into_owned())
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    match Config::from_text(text, None, &env) {
        Ok(config) => {
            config.validate().expect("a loaded config validates again");
            config
                .engine_config()
                .validate()
                .expect("a loaded config's engine settings are accepted");
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});
