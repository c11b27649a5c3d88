//! Token verification and minting (JWT via `jsonwebtoken`), and the worker threads
//! that answer the shards.
//!
//! Owns the accepted keys (HS256 secret, RS256 and ES256 public keys from PEM files),
//! the claim checks (exp, nbf with leeway, iss and aud when configured, `sub` required)
//! and the mapping of failures to error codes. An HS256 token is verified on the shard
//! that got it ([`ShardVerifier`], an HMAC: cheaper than the two thread wake-ups of a
//! round trip); a public-key token (RS256/ES256) goes over a bounded channel to this
//! module's threads and the verdict comes back through the shard's inbox, so a burst
//! of those never stalls a shard.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossbeam_channel::Receiver;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use switchboard_engine::auth::InlineVerifier;
use switchboard_engine::{AuthFailure, ConnKey, ControlRequest, Identity, ShardMsg, ShardSender};
use switchboard_protocol::ErrorCode;

use crate::config::AuthConfig;
use crate::router::Workers;
use crate::shards::send_patiently;

/// Claims Switchboard reads.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// User id.
    pub sub: String,
    /// Expiry, Unix seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
    /// Not before, Unix seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Issued at, Unix seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Issuer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Audience: one string or an array of them (RFC 7519 §4.1.3).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aud: Option<Audience>,
    /// Channel patterns (`room:*`) this token may subscribe and publish to; absent
    /// means every channel.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channels: Option<Vec<String>>,
    /// User-id patterns (`*` for anyone) this token may send direct messages to;
    /// absent means none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_to: Option<Vec<String>>,
    /// Whether this token may schedule messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<bool>,
    /// Every other claim (`role`, `team`, …), for the namespaces' access rules.
    #[serde(flatten)]
    pub extra: std::collections::BTreeMap<String, serde_json::Value>,
}

/// The `aud` claim in either of its standard shapes. The value is checked by
/// `jsonwebtoken`'s validation (any element may match); this type only lets a token
/// with an array audience deserialize.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    /// `"aud": "switchboard"`.
    One(String),
    /// `"aud": ["switchboard", "billing"]`.
    Many(Vec<String>),
}

/// Most custom claims, values per claim and bytes per value kept for access rules;
/// the rest of a token is ignored (a token is not a place to store data).
const MAX_CLAIMS: usize = 32;
const MAX_CLAIM_VALUES: usize = 64;
const MAX_CLAIM_BYTES: usize = 256;

/// The custom claims access rules can name: strings, numbers and booleans (as text),
/// and lists of them.
fn rule_claims(
    extra: std::collections::BTreeMap<String, serde_json::Value>,
) -> Vec<(Box<str>, Vec<Box<str>>)> {
    use serde_json::Value;
    let scalar = |v: &Value| -> Option<Box<str>> {
        let s = match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            _ => return None,
        };
        (s.len() <= MAX_CLAIM_BYTES).then(|| s.into())
    };
    extra
        .into_iter()
        .filter(|(k, _)| k.len() <= MAX_CLAIM_BYTES)
        .filter_map(|(k, v)| {
            let values: Vec<Box<str>> = match &v {
                Value::Array(list) => list
                    .iter()
                    .filter_map(scalar)
                    .take(MAX_CLAIM_VALUES)
                    .collect(),
                other => scalar(other).into_iter().collect(),
            };
            (!values.is_empty()).then(|| (k.into(), values))
        })
        .take(MAX_CLAIMS)
        .collect()
}

/// Parses a PEM public key.
type KeyParser = fn(&[u8]) -> jsonwebtoken::errors::Result<DecodingKey>;

/// Verifies tokens against the configured keys.
pub struct Verifier {
    keys: Vec<(Algorithm, DecodingKey, Validation)>,
    revocations: Arc<Revocations>,
}

/// Users whose tokens were revoked, and when (Unix ms): a token of theirs issued (`iat`)
/// in an earlier second is refused. Shared by the auth workers and the admin API.
#[derive(Debug, Default)]
pub struct Revocations(std::sync::RwLock<std::collections::HashMap<String, u64>>);

impl Revocations {
    /// Revoke `user`'s tokens issued before `at_ms`.
    pub fn revoke(&self, user: &str, at_ms: u64) {
        let mut map = self.0.write().unwrap_or_else(|e| e.into_inner());
        map.insert(user.to_string(), at_ms);
    }

    /// When `user`'s tokens were last revoked (Unix ms), if ever.
    pub fn revoked_at(&self, user: &str) -> Option<u64> {
        let map = self.0.read().unwrap_or_else(|e| e.into_inner());
        map.get(user).copied()
    }

    /// Whether a token of `user` issued at `iat` (Unix seconds) is revoked; a token
    /// without `iat` cannot show it is newer, so it is revoked too.
    pub fn is_revoked(&self, user: &str, iat: Option<u64>) -> bool {
        let map = self.0.read().unwrap_or_else(|e| e.into_inner());
        match map.get(user) {
            None => false,
            Some(&at_ms) => iat.is_none_or(|iat| iat < at_ms / 1000),
        }
    }
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field(
                "algorithms",
                &self.keys.iter().map(|k| k.0).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// A problem with configured keys (at start-up).
#[derive(Debug, thiserror::Error)]
#[error("{key}: {message}")]
pub struct KeyError {
    /// The config key.
    pub key: &'static str,
    /// What is wrong.
    pub message: String,
}

impl Verifier {
    /// Build from config; `secret` is the HS256 secret to use (configured or generated).
    pub fn new(cfg: &AuthConfig, secret: Option<&str>) -> Result<Verifier, KeyError> {
        let mut keys = Vec::new();
        let validation = |alg: Algorithm| {
            let mut v = Validation::new(alg);
            v.leeway = cfg.leeway_s;
            v.validate_nbf = true;
            v.validate_exp = true;
            let mut required: HashSet<String> = HashSet::from(["sub".to_string()]);
            if cfg.require_exp {
                required.insert("exp".into());
            }
            // A configured issuer or audience is a claim the token must carry:
            // without these, a token lacking `iss`/`aud` would pass unchecked.
            if cfg.issuer.is_some() {
                required.insert("iss".into());
            }
            if cfg.audience.is_some() {
                required.insert("aud".into());
            }
            v.required_spec_claims = required;
            match &cfg.issuer {
                Some(iss) => v.set_issuer(&[iss]),
                None => v.iss = None,
            }
            match &cfg.audience {
                Some(aud) => v.set_audience(&[aud]),
                None => v.validate_aud = false,
            }
            v
        };
        if let Some(secret) = secret {
            keys.push((
                Algorithm::HS256,
                DecodingKey::from_secret(secret.as_bytes()),
                validation(Algorithm::HS256),
            ));
        }
        let files: [(
            &'static str,
            &Option<std::path::PathBuf>,
            Algorithm,
            KeyParser,
        ); 2] = [
            (
                "auth.rsa_public_key_file",
                &cfg.rsa_public_key_file,
                Algorithm::RS256,
                DecodingKey::from_rsa_pem,
            ),
            (
                "auth.ec_public_key_file",
                &cfg.ec_public_key_file,
                Algorithm::ES256,
                DecodingKey::from_ec_pem,
            ),
        ];
        for (name, path, alg, parse) in files {
            let Some(path) = path else { continue };
            let pem = std::fs::read(path).map_err(|e| KeyError {
                key: name,
                message: format!("cannot read {}: {e}", path.display()),
            })?;
            let key = parse(&pem).map_err(|e| KeyError {
                key: name,
                message: format!("not a {alg:?} public key in PEM: {e}"),
            })?;
            keys.push((alg, key, validation(alg)));
        }
        Ok(Verifier {
            keys,
            revocations: Arc::default(),
        })
    }

    /// The revocations this verifier honours (the admin API adds to them).
    pub fn revocations(&self) -> &Arc<Revocations> {
        &self.revocations
    }

    /// Verify `token` and turn its claims into an identity.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthFailure> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthFailure {
            code: ErrorCode::Unauthorized,
            message: "malformed token".into(),
        })?;
        self.verify_with_header(token, &header)
    }

    /// [`Verifier::verify`] once the caller has read the token's header.
    fn verify_with_header(&self, token: &str, header: &Header) -> Result<Identity, AuthFailure> {
        let fail = |code, message: &str| AuthFailure {
            code,
            message: message.to_string(),
        };
        let Some((_, key, validation)) = self.keys.iter().find(|(alg, _, _)| *alg == header.alg)
        else {
            return Err(fail(
                ErrorCode::Unauthorized,
                "token algorithm not accepted",
            ));
        };
        let data =
            jsonwebtoken::decode::<Claims>(token, key, validation).map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => fail(ErrorCode::TokenExpired, "token expired"),
                ErrorKind::ImmatureSignature => {
                    fail(ErrorCode::Unauthorized, "token not yet valid")
                }
                ErrorKind::InvalidSignature => {
                    fail(ErrorCode::Unauthorized, "invalid token signature")
                }
                ErrorKind::InvalidIssuer => fail(ErrorCode::Unauthorized, "wrong token issuer"),
                ErrorKind::InvalidAudience => fail(ErrorCode::Unauthorized, "wrong token audience"),
                ErrorKind::MissingRequiredClaim(c) => AuthFailure {
                    code: ErrorCode::Unauthorized,
                    message: format!("token lacks the '{c}' claim"),
                },
                _ => fail(ErrorCode::Unauthorized, "malformed token"),
            })?;
        let claims = data.claims;
        if claims.sub.is_empty() {
            return Err(fail(ErrorCode::Unauthorized, "token has an empty 'sub'"));
        }
        if self.revocations.is_revoked(&claims.sub, claims.iat) {
            return Err(fail(
                ErrorCode::Unauthorized,
                "token revoked: get a new token",
            ));
        }
        Ok(Identity {
            user: claims.sub.into(),
            channels: claims.channels,
            expires_at: claims.exp,
            send_to: claims.send_to,
            schedule: claims.schedule.unwrap_or(false),
            claims: rule_claims(claims.extra),
        })
    }
}

/// Sign an HS256 token (the `token` subcommand, dev mode, tests).
pub fn mint(
    secret: &str,
    sub: &str,
    channels: Option<Vec<String>>,
    ttl: Duration,
    cfg: &AuthConfig,
) -> String {
    mint_with(secret, sub, ttl, cfg, |c| c.channels = channels)
}

/// [`mint`] with the claims adjusted by `edit` (direct-message and scheduling rights).
pub fn mint_with(
    secret: &str,
    sub: &str,
    ttl: Duration,
    cfg: &AuthConfig,
    edit: impl FnOnce(&mut Claims),
) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let claims = Claims {
        sub: sub.to_string(),
        exp: Some(now + ttl.as_secs()),
        nbf: None,
        iat: Some(now),
        iss: cfg.issuer.clone(),
        aud: cfg.audience.clone().map(Audience::One),
        channels: None,
        send_to: None,
        schedule: None,
        extra: Default::default(),
    };
    let mut claims = claims;
    edit(&mut claims);
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("HS256 signing cannot fail")
}

/// An admin token (`/admin/*`): `sub`, `exp`, and `role`, signed with the admin key.
pub fn mint_admin(secret: &str, sub: &str, ttl: Duration, role: &str) -> String {
    mint_with(secret, sub, ttl, &AuthConfig::default(), |c| {
        c.extra.insert("role".into(), serde_json::json!(role));
    })
}

/// Counters of the auth workers.
#[derive(Debug, Default)]
pub struct AuthStats {
    /// Tokens accepted.
    pub accepted: AtomicU64,
    /// Tokens refused.
    pub refused: AtomicU64,
}

impl AuthStats {
    /// Count a verdict; a refusal is logged (never the token itself: only why).
    fn count(&self, shard: u16, conn: ConnKey, result: &Result<Identity, AuthFailure>) {
        let counter = match result {
            Ok(_) => &self.accepted,
            Err(f) => {
                tracing::info!(
                    target: "security",
                    client = %format_args!("{shard}.{}.{}", conn.slot, conn.gen),
                    code = f.code as u16,
                    reason = %f.message,
                    "token refused"
                );
                &self.refused
            }
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The shards' own verifier: HS256 tokens are checked on the shard that got them
/// (an HMAC costs less than the two thread wake-ups of asking an auth thread);
/// public-key tokens go to the auth threads.
#[derive(Debug)]
pub struct ShardVerifier {
    /// The keys and claim checks (shared with the auth threads).
    pub verifier: Arc<Verifier>,
    /// Verdict counters (shared with the auth threads).
    pub stats: Arc<AuthStats>,
}

impl InlineVerifier for ShardVerifier {
    fn verify_inline(
        &self,
        token: &str,
        shard: u16,
        conn: ConnKey,
    ) -> Option<Result<Identity, AuthFailure>> {
        // Public-key tokens, and malformed ones (the threads say why), go on.
        let header = jsonwebtoken::decode_header(token).ok()?;
        if header.alg != Algorithm::HS256 {
            return None;
        }
        let result = self.verifier.verify_with_header(token, &header);
        self.stats.count(shard, conn, &result);
        Some(result)
    }
}

/// Start `threads` workers answering shards' token checks until every sender is gone;
/// scheduling requests go on to `scheduler`.
pub fn spawn_workers(
    threads: usize,
    requests: Receiver<ControlRequest>,
    verifier: Arc<Verifier>,
    shards: ShardSender,
    stats: Arc<AuthStats>,
    workers: Workers,
) -> std::io::Result<Vec<std::thread::JoinHandle<()>>> {
    (0..threads)
        .map(|i| {
            let (rx, verifier, shards, stats, workers) = (
                requests.clone(),
                verifier.clone(),
                shards.clone(),
                stats.clone(),
                workers.clone(),
            );
            std::thread::Builder::new()
                .name(format!("auth-{i}"))
                .spawn(move || {
                    while let Ok(req) = rx.recv() {
                        let (shard, msg) = match req {
                            ControlRequest::Authenticate {
                                shard,
                                conn,
                                req_id,
                                token,
                            } => {
                                let result = verifier.verify(&token);
                                stats.count(shard, conn, &result);
                                let msg = ShardMsg::AuthDone {
                                    conn,
                                    req_id,
                                    result: result.map(Arc::new),
                                };
                                (shard, msg)
                            }
                            other => {
                                // The workers answer the shard themselves.
                                workers.route(other);
                                continue;
                            }
                        };
                        send_patiently(&shards, shard, msg, "an auth verdict");
                    }
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "test-secret-0123456789";

    fn cfg() -> AuthConfig {
        AuthConfig::default()
    }

    #[test]
    fn shards_verify_hs256_and_hand_on_the_rest() {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        use base64::Engine as _;
        let stats = Arc::new(AuthStats::default());
        let v = ShardVerifier {
            verifier: Arc::new(Verifier::new(&cfg(), Some(SECRET)).unwrap()),
            stats: stats.clone(),
        };
        let conn = ConnKey { slot: 1, gen: 1 };
        let good = mint(SECRET, "ann", None, Duration::from_secs(60), &cfg());
        let verdict = v
            .verify_inline(&good, 0, conn)
            .expect("HS256: on the shard");
        assert_eq!(&*verdict.unwrap().user, "ann");
        let forged = mint(
            "another-secret-0123456789",
            "ann",
            None,
            Duration::from_secs(60),
            &cfg(),
        );
        let verdict = v
            .verify_inline(&forged, 0, conn)
            .expect("HS256: on the shard");
        assert_eq!(verdict.unwrap_err().code, ErrorCode::Unauthorized);
        // A public-key token (its header names RS256) and a malformed one go on to the
        // auth threads, which say why.
        let rs256 = format!(
            "{}.e30.sig",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","typ":"JWT"}"#)
        );
        assert!(v.verify_inline(&rs256, 0, conn).is_none());
        assert!(v.verify_inline("not a token", 0, conn).is_none());
        assert_eq!(
            (
                stats.accepted.load(Ordering::Relaxed),
                stats.refused.load(Ordering::Relaxed)
            ),
            (1, 1)
        );
    }

    #[test]
    fn accepts_and_refuses() {
        let v = Verifier::new(&cfg(), Some(SECRET)).unwrap();
        let t = mint(
            SECRET,
            "alice",
            Some(vec!["room:*".into()]),
            Duration::from_secs(60),
            &cfg(),
        );
        let id = v.verify(&t).unwrap();
        assert_eq!(&*id.user, "alice");
        assert!(id.may_use("room:1") && !id.may_use("admin"));

        let forged = mint(
            "another-secret-0123456789",
            "alice",
            None,
            Duration::from_secs(60),
            &cfg(),
        );
        assert_eq!(
            v.verify(&forged).unwrap_err().message,
            "invalid token signature"
        );
        assert_eq!(
            v.verify("not.a.token").unwrap_err().code,
            ErrorCode::Unauthorized
        );
        assert_eq!(v.verify("").unwrap_err().code, ErrorCode::Unauthorized);

        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let expired = Claims {
            sub: "a".into(),
            exp: Some(now - 3600),
            nbf: None,
            iat: None,
            iss: None,
            aud: None,
            channels: None,
            send_to: None,
            schedule: None,
            extra: Default::default(),
        };
        let t = jsonwebtoken::encode(
            &Header::default(),
            &expired,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        assert_eq!(v.verify(&t).unwrap_err().code, ErrorCode::TokenExpired);

        let no_exp = Claims {
            exp: None,
            ..expired.clone()
        };
        let t = jsonwebtoken::encode(
            &Header::default(),
            &no_exp,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        assert!(v.verify(&t).unwrap_err().message.contains("exp"));

        let future = Claims {
            exp: Some(now + 7200),
            nbf: Some(now + 3600),
            ..expired
        };
        let t = jsonwebtoken::encode(
            &Header::default(),
            &future,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        assert_eq!(v.verify(&t).unwrap_err().message, "token not yet valid");
    }

    #[test]
    fn issuer_and_audience() {
        let mut c = cfg();
        c.issuer = Some("https://issuer".into());
        c.audience = Some("switchboard".into());
        let v = Verifier::new(&c, Some(SECRET)).unwrap();
        assert!(v
            .verify(&mint(SECRET, "a", None, Duration::from_secs(60), &c))
            .is_ok());
        let other = AuthConfig {
            issuer: Some("https://evil".into()),
            ..c.clone()
        };
        assert_eq!(
            v.verify(&mint(SECRET, "a", None, Duration::from_secs(60), &other))
                .unwrap_err()
                .message,
            "wrong token issuer"
        );
        let other = AuthConfig {
            audience: Some("else".into()),
            ..c
        };
        assert_eq!(
            v.verify(&mint(SECRET, "a", None, Duration::from_secs(60), &other))
                .unwrap_err()
                .message,
            "wrong token audience"
        );
    }

    /// A configured issuer and audience must be present, and a standard array `aud`
    /// holding the configured value is accepted (issue 16, item 3).
    #[test]
    fn issuer_and_audience_are_required_and_arrays_accepted() {
        let mut c = cfg();
        c.issuer = Some("https://issuer".into());
        c.audience = Some("switchboard".into());
        let v = Verifier::new(&c, Some(SECRET)).unwrap();
        let with =
            |edit: fn(&mut Claims)| mint_with(SECRET, "a", Duration::from_secs(60), &c, edit);
        assert_eq!(
            v.verify(&with(|c| c.iss = None)).unwrap_err().message,
            "token lacks the 'iss' claim"
        );
        assert_eq!(
            v.verify(&with(|c| c.aud = None)).unwrap_err().message,
            "token lacks the 'aud' claim"
        );
        let many =
            with(|c| c.aud = Some(Audience::Many(vec!["billing".into(), "switchboard".into()])));
        assert_eq!(&*v.verify(&many).unwrap().user, "a");
        let wrong = with(|c| c.aud = Some(Audience::Many(vec!["billing".into()])));
        assert_eq!(
            v.verify(&wrong).unwrap_err().message,
            "wrong token audience"
        );
        // Without a configured audience, any `aud` shape is accepted and ignored.
        let open = Verifier::new(&cfg(), Some(SECRET)).unwrap();
        assert!(open.verify(&many).is_ok());
    }

    #[test]
    fn algorithm_must_be_configured() {
        let v = Verifier::new(&cfg(), None).unwrap();
        let t = mint(SECRET, "a", None, Duration::from_secs(60), &cfg());
        assert_eq!(
            v.verify(&t).unwrap_err().message,
            "token algorithm not accepted"
        );
        let mut c = cfg();
        c.rsa_public_key_file = Some("/nonexistent.pem".into());
        assert_eq!(
            Verifier::new(&c, None).unwrap_err().key,
            "auth.rsa_public_key_file"
        );
    }
}
