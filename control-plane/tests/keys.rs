//! RS256 and ES256 tokens verified against public keys from PEM files (test-only keys in
//! tests/keys/, made with openssl), through the real server.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

fn keys_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/keys")
}

fn sign(alg: Algorithm, key: EncodingKey, sub: &str) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    jsonwebtoken::encode(
        &Header::new(alg),
        &json!({"sub": sub, "exp": exp, "channels": ["room:*"]}),
        &key,
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs256_and_es256_from_key_files() {
    let dir = keys_dir();
    let server = start(|c| {
        c.auth.rsa_public_key_file = Some(dir.join("rsa.pub.pem"));
        c.auth.ec_public_key_file = Some(dir.join("ec.pub.pem"));
    });
    let rsa = EncodingKey::from_rsa_pem(&std::fs::read(dir.join("rsa.key.pem")).unwrap()).unwrap();
    let ec = EncodingKey::from_ec_pem(&std::fs::read(dir.join("ec.key.pem")).unwrap()).unwrap();

    let c = Client::connect(
        server.ws_addr(),
        Fmt::MsgPack,
        &sign(Algorithm::RS256, rsa, "rsa-user"),
    )
    .await;
    assert!(c.shard < 2);
    let mut c = Client::open(server.ws_addr(), Fmt::Json).await;
    let r = c
        .call(json!({"cmd": "connect", "token": sign(Algorithm::ES256, ec, "ec-user")}))
        .await;
    assert_eq!(r["result"]["user"], "ec-user", "{r}");
    // HS256 still works alongside, since a secret is configured too.
    let _ = Client::connect(server.ws_addr(), Fmt::Json, &token("hs-user", None)).await;

    // An RS256 token signed by a key we do not know is refused.
    let other = EncodingKey::from_secret(b"not an rsa key at all, so the header lies");
    let forged = jsonwebtoken::encode(
        &Header::new(Algorithm::HS384),
        &json!({"sub": "x", "exp": 9_999_999_999u64}),
        &other,
    )
    .unwrap();
    let mut c = Client::open(server.ws_addr(), Fmt::Json).await;
    let r = c.call(json!({"cmd": "connect", "token": forged})).await;
    assert_eq!(r["error"]["message"], "token algorithm not accepted", "{r}");
    server.shutdown();
    server.wait();
}

#[test]
fn unreadable_or_wrong_key_file_is_a_startup_error() {
    let mut cfg = switchboard_control_plane::Config::default();
    cfg.engine.io = io_under_test();
    cfg.engine.listen = "127.0.0.1:0".parse().unwrap();
    cfg.admin.listen = "127.0.0.1:0".parse().unwrap();
    cfg.auth.rsa_public_key_file = Some(keys_dir().join("ec.pub.pem"));
    let e = switchboard_control_plane::Server::start(cfg.clone())
        .unwrap_err()
        .to_string();
    assert!(e.contains("auth.rsa_public_key_file"), "{e}");
    cfg.auth.rsa_public_key_file = Some("/nonexistent/key.pem".into());
    let e = switchboard_control_plane::Server::start(cfg)
        .unwrap_err()
        .to_string();
    assert!(e.contains("auth.rsa_public_key_file"), "{e}");
}
