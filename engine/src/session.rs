//! Reconnect tokens: a signed, short-lived summary of a session a client can resume.
//!
//! Owns the token format and its checks. A token is
//! `v1.<base64url(JSON payload)>.<base64url(HMAC-SHA256(key, "v1." + payload))>`; the
//! payload holds what resuming needs without asking anyone: the user, the permissions
//! of the original JWT (its channel patterns, direct-message and scheduling rights,
//! its expiry), the device, the channels subscribed, and the token's own expiry. The
//! key is shared by every process using the same store (the store generates it once),
//! so a client resumes on any of them, or on this one after a restart.
//!
//! Signed and checked on the shard: an HMAC over a few hundred bytes costs about a
//! microsecond, less than handing the request to another thread.
//!
//! Does not own when tokens are issued (`core`: at `connect`, after each subscription
//! change, and again before the last one expires).

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::hmac;
use serde::{Deserialize, Serialize};
use switchboard_protocol::ErrorCode;

use crate::auth::{AuthFailure, Identity};
use crate::presence::ClientId;

/// Signs and checks reconnect tokens.
pub struct Sessions {
    key: hmac::Key,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sessions { key: <redacted> }")
    }
}

#[derive(Serialize, Deserialize)]
struct Payload<'a> {
    /// User id.
    #[serde(borrow)]
    u: std::borrow::Cow<'a, str>,
    /// Device id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    d: Option<String>,
    /// Channel patterns of the original token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    c: Option<Vec<String>>,
    /// Users the original token may send direct messages to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    s: Option<Vec<String>>,
    /// May schedule messages.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    k: bool,
    /// Expiry of the original token, Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    j: Option<u64>,
    /// Expiry of this token, Unix milliseconds.
    x: u64,
    /// The connection it was issued to (shard, slot, generation): a client resuming
    /// with it is told why that connection was closed, if the server closed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    o: Option<(u16, u32, u32)>,
    /// Channels subscribed.
    #[serde(default)]
    ch: Vec<String>,
    /// Other claims of the original token (for access rules).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    cl: Vec<(String, Vec<String>)>,
}

/// A session a reconnect token resumes.
#[derive(Debug)]
pub struct Resumed {
    /// The identity, as the original token granted it.
    pub identity: Arc<Identity>,
    /// The device id, if the session had one.
    pub device: Option<String>,
    /// The channels it had subscribed.
    pub channels: Vec<String>,
    /// When the token expires, Unix milliseconds.
    pub expires_ms: u64,
    /// The connection the token was issued to.
    pub origin: Option<ClientId>,
}

impl Sessions {
    /// Tokens signed with `secret` (at least 32 bytes of randomness).
    pub fn new(secret: &[u8]) -> Sessions {
        Sessions {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        }
    }

    /// A token for `identity` on `device` with `channels` subscribed, valid until
    /// `expires_ms` (Unix milliseconds) and never beyond the original token's expiry.
    pub fn issue<'c>(
        &self,
        identity: &Identity,
        device: Option<&str>,
        channels: impl Iterator<Item = &'c str>,
        expires_ms: u64,
        origin: Option<ClientId>,
    ) -> (String, u64) {
        let x = match identity.expires_at {
            Some(j) => expires_ms.min(j.saturating_mul(1000)),
            None => expires_ms,
        };
        let p = Payload {
            u: std::borrow::Cow::Borrowed(&identity.user),
            d: device.map(str::to_string),
            c: identity.channels.clone(),
            s: identity.send_to.clone(),
            k: identity.schedule,
            j: identity.expires_at,
            x,
            o: origin.map(|c| (c.shard, c.slot, c.gen)),
            ch: channels.map(str::to_string).collect(),
            cl: identity
                .claims
                .iter()
                .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
                .collect(),
        };
        let json = serde_json::to_vec(&p).expect("serialising to memory cannot fail");
        let mut token = String::with_capacity(8 + json.len() * 4 / 3 + 48);
        token.push_str("v1.");
        URL_SAFE_NO_PAD.encode_string(&json, &mut token);
        let tag = hmac::sign(&self.key, token.as_bytes());
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(tag.as_ref(), &mut token);
        (token, x)
    }

    /// Check `token` at `now_ms`: forged or malformed → 101, expired → 109.
    pub fn check(&self, token: &str, now_ms: u64) -> Result<Resumed, AuthFailure> {
        let invalid = |why: &str| AuthFailure {
            code: ErrorCode::Unauthorized,
            message: format!("reconnect token invalid: {why}"),
        };
        let (signed, tag) = token.rsplit_once('.').ok_or_else(|| invalid("malformed"))?;
        let body = signed
            .strip_prefix("v1.")
            .ok_or_else(|| invalid("unknown version"))?;
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| invalid("malformed signature"))?;
        hmac::verify(&self.key, signed.as_bytes(), &tag).map_err(|_| invalid("bad signature"))?;
        let json = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| invalid("malformed payload"))?;
        let p: Payload<'_> = serde_json::from_slice(&json).map_err(|_| invalid("bad payload"))?;
        if p.x <= now_ms {
            return Err(AuthFailure {
                code: ErrorCode::TokenExpired,
                message: "reconnect token expired; connect with a token".into(),
            });
        }
        Ok(Resumed {
            identity: Arc::new(Identity {
                user: p.u.as_ref().into(),
                channels: p.c,
                expires_at: p.j,
                send_to: p.s,
                schedule: p.k,
                claims: p
                    .cl
                    .into_iter()
                    .map(|(k, v)| (k.into(), v.into_iter().map(Into::into).collect()))
                    .collect(),
            }),
            device: p.d,
            channels: p.ch,
            expires_ms: p.x,
            origin: p.o.map(|(shard, slot, gen)| ClientId { shard, slot, gen }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> Identity {
        Identity {
            user: "ann".into(),
            channels: Some(vec!["room:*".into()]),
            expires_at: Some(4_000_000_000),
            send_to: Some(vec!["*".into()]),
            schedule: true,
            claims: vec![("team".into(), vec!["t1".into(), "t2".into()])],
        }
    }

    #[test]
    fn round_trip_expiry_and_forgery() {
        let s = Sessions::new(&[7u8; 32]);
        let (t, x) = s.issue(
            &identity(),
            Some("phone"),
            ["room:1", "room:2"].into_iter(),
            5_000,
            Some(ClientId {
                shard: 1,
                slot: 7,
                gen: 3,
            }),
        );
        assert_eq!(x, 5_000);
        let r = s.check(&t, 4_999).unwrap();
        assert_eq!(*r.identity, identity());
        assert_eq!(r.device.as_deref(), Some("phone"));
        assert_eq!(r.channels, ["room:1", "room:2"]);
        assert_eq!(r.origin.map(|c| c.to_string()).as_deref(), Some("1.7.3"));
        assert_eq!(
            s.check(&t, 5_000).unwrap_err().code,
            ErrorCode::TokenExpired
        );
        let other = Sessions::new(&[8u8; 32]);
        assert_eq!(
            other.check(&t, 1).unwrap_err().code,
            ErrorCode::Unauthorized
        );
        // A payload changed by the client (more channels, another user) fails the MAC.
        let (head, tag) = t.rsplit_once('.').unwrap();
        let forged_payload = URL_SAFE_NO_PAD.encode(br#"{"u":"root","x":99999999999999}"#);
        let forged = format!("v1.{forged_payload}.{tag}");
        assert_eq!(
            s.check(&forged, 1).unwrap_err().code,
            ErrorCode::Unauthorized
        );
        assert!(s.check(head, 1).is_err());
        assert!(s.check("garbage", 1).is_err());
    }

    #[test]
    fn never_outlives_the_original_token() {
        let s = Sessions::new(&[1u8; 32]);
        let mut id = identity();
        id.expires_at = Some(10);
        let (_, x) = s.issue(&id, None, std::iter::empty(), 60_000, None);
        assert_eq!(x, 10_000);
    }
}
