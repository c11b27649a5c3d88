//! Bad input to the `switchboard-loadtest` command line gets a clear error and a
//! non-zero exit, never a panic or a silent success.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_switchboard-loadtest");

fn run(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_scenarios_and_overrides_name_the_problem() {
    let (code, err) = run(&["run", "no-such-scenario"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("no-such-scenario"), "{err}");
    let (code, err) = run(&["run", "fanout", "--set", "nope=1"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("nope"), "{err}");
    let (code, err) = run(&["run", "fanout", "--set", "url=ws://10.1.2.3:7400/"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("loopback"), "{err}");
    let (code, err) = run(&["run", "fanout", "--set", "connections"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("key=value"), "{err}");
}

#[test]
fn bad_result_files_are_refused() {
    let dir = std::env::temp_dir().join(format!("lt-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let garbage = dir.join("garbage.json");
    std::fs::write(&garbage, "{not json").unwrap();
    let g = garbage.to_str().unwrap();
    let (code, err) = run(&[
        "compare",
        g,
        g,
        "--html",
        dir.join("c.html").to_str().unwrap(),
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("not a loadtest result"), "{err}");
    let (code, err) = run(&["compare", "/nonexistent/a.json", g]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("/nonexistent/a.json"), "{err}");
    let (code, err) = run(&[
        "capacity",
        g,
        "--connections",
        "10",
        "--deliveries-per-s",
        "10",
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("not a loadtest result"), "{err}");
    // A valid result without server samples cannot fit a model.
    let empty = dir.join("empty.json");
    std::fs::write(
        &empty,
        serde_json::to_string(&switchboard_loadtest::report::RunResult::default()).unwrap(),
    )
    .unwrap();
    let (code, err) = run(&[
        "capacity",
        empty.to_str().unwrap(),
        "--connections",
        "10",
        "--deliveries-per-s",
        "10",
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("--server-pid"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn report_remakes_html_and_text_from_a_result_and_refuses_garbage() {
    let dir = std::env::temp_dir().join(format!("lt-report-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let result = dir.join("run-a.json");
    std::fs::write(
        &result,
        serde_json::to_string(&switchboard_loadtest::report::RunResult::default()).unwrap(),
    )
    .unwrap();
    let out = dir.join("out");
    let (code, err) = run(&[
        "report",
        result.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{err}");
    let page = std::fs::read_to_string(out.join("run-a.html")).unwrap();
    assert!(
        page.starts_with("<!DOCTYPE html>") || page.contains("<html"),
        "{page}"
    );
    let summary = std::fs::read_to_string(out.join("run-a.txt")).unwrap();
    assert!(summary.contains("connections  0 ok"), "{summary}");
    let garbage = dir.join("garbage.json");
    std::fs::write(&garbage, "{not json").unwrap();
    let (code, err) = run(&["report", garbage.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("not a loadtest result"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
