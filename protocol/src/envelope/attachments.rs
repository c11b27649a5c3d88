//! Attachment metadata a message may carry: `meta.attachments`, a list of
//! `{name, url, type?, size?}` describing files kept in the application's object
//! storage (any URL scheme: `https://`, `s3://`…).
//!
//! Owns the shape check, so what is stored with a message (and exported in a data
//! request) is what a client can rely on. The file itself never passes through the
//! server. Hot path: a publish whose `meta` does not mention `attachments` costs one
//! byte search; only one that does is parsed.

use super::types::{Format, Payload};

/// Most attachments on one message.
pub const MAX_ATTACHMENTS: usize = 32;

/// Why `meta.attachments` is refused, if it is.
pub fn check(meta: Payload<'_>) -> Result<(), &'static str> {
    if !meta.raw.windows(11).any(|w| w == b"attachments") {
        return Ok(());
    }
    let parsed: Option<serde_json::Value> = match meta.format {
        Format::MsgPack => rmp_serde::from_slice(meta.raw).ok(),
        Format::Json | Format::SocketIo => serde_json::from_slice(meta.raw).ok(),
    };
    // Not a map with an `attachments` key (the word was elsewhere): not ours to judge.
    let Some(found) = parsed.as_ref().and_then(|v| v.get("attachments")) else {
        return Ok(());
    };
    let Some(list) = found.as_array() else {
        return Err(SHAPE);
    };
    if list.len() > MAX_ATTACHMENTS {
        return Err("meta.attachments: at most 32 attachments");
    }
    for a in list {
        if !a.is_object() {
            return Err(SHAPE);
        }
        let text = |key: &str, max: usize| {
            a.get(key)
                .and_then(|v| v.as_str())
                .is_some_and(|s| !s.is_empty() && s.len() <= max)
        };
        if !text("name", 255) {
            return Err("meta.attachments[].name: a string of 1 to 255 bytes");
        }
        if !text("url", 2048) {
            return Err("meta.attachments[].url: a URL of 1 to 2048 bytes");
        }
        if a.get("type").is_some() && !text("type", 255) {
            return Err("meta.attachments[].type: a media type such as application/pdf");
        }
        if a.get("size").is_some_and(|v| v.as_u64().is_none()) {
            return Err("meta.attachments[].size: bytes, an integer from 0");
        }
    }
    Ok(())
}

const SHAPE: &str = "meta.attachments: a list of {name, url, type?, size?}";

#[cfg(test)]
mod tests {
    use super::*;

    fn json(s: &str) -> Result<(), &'static str> {
        check(Payload {
            format: Format::Json,
            raw: s.as_bytes(),
        })
    }

    #[test]
    fn attachments_are_checked_and_other_meta_is_not() {
        let good = r#"{"attachments":[{"name":"a.pdf","type":"application/pdf","size":3,"url":"https://x/a.pdf"}],"k":1}"#;
        assert_eq!(json(good), Ok(()));
        assert_eq!(json(r#"{"note":"no files"}"#), Ok(()));
        assert_eq!(
            json(r#""attachments""#),
            Ok(()),
            "a string that mentions it"
        );
        assert_eq!(json(r#"{"attachments":3}"#), Err(SHAPE));
        let no_url = r#"{"attachments":[{"name":"a","type":"t","size":1}]}"#;
        assert!(json(no_url).unwrap_err().contains(".url"));
        let s3 = r#"{"attachments":[{"name":"a","size":1,"url":"s3://bucket/k"}]}"#;
        assert_eq!(json(s3), Ok(()), "any scheme; type and size optional");
        let empty = r#"{"attachments":[{"name":"a","url":""}]}"#;
        assert!(json(empty).unwrap_err().contains(".url"));
        let odd = r#"{"attachments":[{"name":"a","url":"u","type":3}]}"#;
        assert!(json(odd).unwrap_err().contains(".type"));
        let negative = r#"{"attachments":[{"name":"a","type":"t","size":-1,"url":"https://x"}]}"#;
        assert!(json(negative).unwrap_err().contains(".size"));
        let mp = rmp_serde::to_vec_named(&serde_json::json!({"attachments": [{"name": "", "type": "t", "size": 1, "url": "https://x"}]})).unwrap();
        let r = check(Payload {
            format: Format::MsgPack,
            raw: &mp,
        });
        assert!(r.unwrap_err().contains(".name"));
    }
}
