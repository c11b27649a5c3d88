//! A client no one here wrote: Python `websockets` (installed by `.ci/run`) talks to the
//! real server with the JSON subprotocol. Missing Python or the package is a failure,
//! never a skip.

mod common;

use std::process::Command;

use common::*;

#[test]
fn python_websockets_client() {
    let server = start(|_| {});
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/py_client.py");
    let url = format!("ws://{}/", server.ws_addr());
    let output = Command::new("python3")
        .args([script, &url, &token("py-user", Some(&["room:*"]))])
        .output()
        .expect("python3 must be installed to run this test (bash .ci/run installs what it needs)");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("No module named 'websockets'"),
        "the Python `websockets` package is missing: run `bash .ci/run` or `pip install -r control-plane/tests/clients/requirements.txt`"
    );
    assert!(
        output.status.success(),
        "python client failed:\n{stderr}\n{}",
        String::from_utf8_lossy(&output.stdout)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("py_client ok"));
    server.shutdown();
    server.wait();
}
