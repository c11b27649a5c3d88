//! Tests of notify.

use super::*;
use serde_json::json;

fn n(kind: &str, data: Value, key: Option<&str>) -> NewNotification {
    NewNotification {
        to: Recipients::Users(vec!["u".into()]),
        kind: kind.into(),
        data,
        key: key.map(String::from),
    }
}

#[test]
fn progress_payloads_are_typed() {
    assert!(check(&n("progress", json!({"percent": 40}), Some("a"))).is_ok());
    let done = json!({"percent": 100, "state": "complete"});
    assert!(check(&n("progress", done, Some("a"))).is_ok());
    for (data, key, field) in [
        (json!({"percent": 40}), None, "key"),
        (json!({"percent": 140}), Some("a"), "data.percent"),
        (json!({"percent": "40"}), Some("a"), "data.percent"),
        (
            json!({"percent": 1, "state": "paused"}),
            Some("a"),
            "data.state",
        ),
    ] {
        let e = check(&n("progress", data, key)).unwrap_err();
        assert!(e.starts_with(field), "{e}");
    }
    assert!(check(&n("", json!(1), None))
        .unwrap_err()
        .starts_with("kind"));
    let big = json!("x".repeat(MAX_DATA_BYTES));
    assert!(check(&n("k", big, None)).unwrap_err().starts_with("data"));
    let mut none = n("k", json!(1), None);
    none.to = Recipients::Users(vec![]);
    assert!(check(&none).unwrap_err().starts_with("users"));
    none.to = Recipients::Topic("a b".into());
    assert!(check(&none).unwrap_err().starts_with("topic"));
}
