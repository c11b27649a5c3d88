//! JWT verification and claims parsing (`control_plane::auth::Verifier`), with
//! `auth.issuer`, `auth.audience` and `auth.require_exp` set.
//!
//! The fuzzer's bytes are used three ways (first byte): as a whole token; as the
//! claims of a token signed with the right key (so the claims parser is reached past
//! the signature); as header and claims, both signed. Checks: never panics; a token
//! without the right signature never passes; a token that passes has a non-empty
//! `sub` (the identity's user), the configured `iss`, the configured audience (alone
//! or in an array), an `exp` not in the past, and at most 32 custom claims kept.
#![no_main]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use ring::hmac;
use serde_json::Value;
use switchboard_control_plane::auth::Verifier;
use switchboard_control_plane::config::AuthConfig;

const SECRET: &str = "fuzzing-secret-0123456789";
const ISSUER: &str = "https://issuer.example";
const AUDIENCE: &str = "switchboard";

fn verifier() -> &'static Verifier {
    static V: std::sync::OnceLock<Verifier> = std::sync::OnceLock::new();
    V.get_or_init(|| {
        let cfg = AuthConfig {
            issuer: Some(ISSUER.into()),
            audience: Some(AUDIENCE.into()),
            leeway_s: 30,
            require_exp: true,
            ..AuthConfig::default()
        };
        Verifier::new(&cfg, Some(SECRET)).expect("verifier")
    })
}

fn signed(header: &[u8], claims: &[u8]) -> String {
    signed_raw(&format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    ))
}

/// `input` with its HS256 signature appended.
fn signed_raw(input: &str) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, SECRET.as_bytes());
    let sig = hmac::sign(&key, input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
}

fuzz_target!(|input: &[u8]| {
    let Some((&mode, bytes)) = input.split_first() else {
        return;
    };
    let (token, claims) = match mode % 3 {
        0 => (String::from_utf8_lossy(bytes).into_owned(), None),
        1 => (
            signed(br#"{"alg":"HS256","typ":"JWT"}"#, bytes),
            Some(bytes.to_vec()),
        ),
        _ => {
            let cut = bytes.iter().position(|&b| b == 0xff).unwrap_or(bytes.len());
            let (header, claims) = (&bytes[..cut], bytes.get(cut + 1..).unwrap_or(&[]));
            (signed(header, claims), Some(claims.to_vec()))
        }
    };
    let Ok(identity) = verifier().verify(&token) else {
        return;
    };
    // A raw token passes only if it is signed with the key (checked here on its own).
    let claims = claims.unwrap_or_else(|| {
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(
            parts.len(),
            3,
            "a token that is not three parts passed: {token:?}"
        );
        let signing_input = format!("{}.{}", parts[0], parts[1]);
        assert_eq!(
            signed_raw(&signing_input),
            token,
            "a token without the right signature passed: {token:?}"
        );
        URL_SAFE_NO_PAD
            .decode(parts[1])
            .expect("claims are base64url")
    });
    let claims: Value = serde_json::from_slice(&claims).expect("claims are JSON");
    assert!(!identity.user.is_empty());
    assert_eq!(claims["sub"].as_str(), Some(&*identity.user));
    assert_eq!(claims["iss"].as_str(), Some(ISSUER), "issuer not checked");
    let aud_ok = match &claims["aud"] {
        Value::String(a) => a == AUDIENCE,
        Value::Array(list) => list.iter().any(|a| a.as_str() == Some(AUDIENCE)),
        _ => false,
    };
    assert!(aud_ok, "audience not checked: {}", claims["aud"]);
    let exp = claims["exp"].as_u64().expect("exp is required");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(exp + 30 >= now, "an expired token passed");
    assert!(identity.claims.len() <= 32);
});
