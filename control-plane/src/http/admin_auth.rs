//! Admin tokens: who may call `/admin/*`.
//!
//! An admin token is a JWT signed (HS256) with `admin.jwt_secret` — a key of its own,
//! not the clients' — carrying `sub` (who acts, recorded in the audit log), `exp`, and
//! `role` (a string or a list) containing `admin.role` (default `admin`). No token or
//! a bad one: 401; a valid one without the role: 403; no admin key configured: 403.
//!
//! Owns [`AdminAuth`] and the token check. Does not own the routes
//! ([`super::admin_api`]) or reading admin queries and bodies ([`super::requests`]).

// The handlers' helpers return the HTTP error as `Err(Response)` to be sent as is; it is
// built once per refused request, so its size does not matter.
#![allow(clippy::result_large_err)]

use super::errors::error;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

/// Checks admin tokens.
pub struct AdminAuth {
    key: DecodingKey,
    role: String,
}

impl std::fmt::Debug for AdminAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminAuth")
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum Roles {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
pub(super) struct AdminClaims {
    sub: String,
    #[serde(default)]
    role: Option<Roles>,
}

/// Who is acting.
#[derive(Debug, Clone)]
pub struct Admin {
    /// The token's `sub`.
    pub name: String,
}

impl AdminAuth {
    /// Tokens signed with `secret`, needing `role`.
    pub fn new(secret: &str, role: &str) -> AdminAuth {
        AdminAuth {
            key: DecodingKey::from_secret(secret.as_bytes()),
            role: role.to_string(),
        }
    }

    pub(super) fn verify(&self, headers: &HeaderMap) -> Result<Admin, Response> {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .ok_or_else(|| {
                error(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "an admin token is required (Authorization: Bearer <JWT>)",
                )
            })?;
        let mut v = Validation::new(Algorithm::HS256);
        v.set_required_spec_claims(&["exp", "sub"]);
        v.leeway = 5;
        let data = jsonwebtoken::decode::<AdminClaims>(token, &self.key, &v).map_err(|e| {
            let (code, why) = match e.kind() {
                ErrorKind::ExpiredSignature => ("token_expired", "the admin token has expired"),
                ErrorKind::InvalidSignature => ("unauthorized", "bad admin token signature"),
                _ => ("unauthorized", "invalid admin token"),
            };
            tracing::warn!(target: "security", reason = why, "admin token refused");
            error(StatusCode::UNAUTHORIZED, code, why)
        })?;
        let claims = data.claims;
        let has_role = match &claims.role {
            Some(Roles::One(r)) => *r == self.role,
            Some(Roles::Many(rs)) => rs.contains(&self.role),
            None => false,
        };
        if !has_role {
            tracing::warn!(target: "security", sub = %claims.sub, "admin token without the admin role");
            return Err(error(
                StatusCode::FORBIDDEN,
                "forbidden",
                &format!("the token's role does not include {:?}", self.role),
            ));
        }
        Ok(Admin { name: claims.sub })
    }
}
