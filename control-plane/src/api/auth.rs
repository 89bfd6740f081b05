//! Who may do what. Each request's bearer token is turned into a [`Caller`] once (by an
//! [`Authorizer`], before routing, which also lets the audit log name the caller); each handler
//! then asks the caller whether its [`Action`] is allowed: 401 for no or an unknown token, 403 for
//! a known token out of its scopes.
//!
//! Scopes do not imply one another except `admin`: a CI token that shifts weights and then polls
//! `GET /v1/nodes` needs `["weights", "read"]`.

use axum::http::{header, HeaderMap};
use futures::future::BoxFuture;
use sha2::{Digest, Sha256};
use sluice_shared::Kind;

use super::ApiError;
use crate::store::{Scope, Store, TokenRecord};

/// Every issued secret starts with this, so a leaked one is recognisable (and greppable).
pub const TOKEN_PREFIX: &str = "sluice_";

/// What a request wants to do, as precisely as a scoped token needs to judge it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action<'a> {
    /// A GET of config or status under /v1.
    Read,
    /// Create, replace or delete a resource.
    Write { kind: Kind, name: &'a str },
    /// Change only the weights of one route's backends.
    Weights { route: &'a str },
    /// Create, list or revoke tokens.
    Tokens,
    /// Read the audit log.
    Audit,
    /// Read certificates' private keys (an export with keys).
    ReadKeys,
}

impl std::fmt::Display for Action<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::Read => f.write_str("read config or status"),
            Action::Write { kind, name } => write!(f, "write {kind} {name}"),
            Action::Weights { route } => write!(f, "shift weights of route {route}"),
            Action::Tokens => f.write_str("manage tokens"),
            Action::Audit => f.write_str("read the audit log"),
            Action::ReadKeys => f.write_str("read private keys"),
        }
    }
}

/// The caller of one request, as its bearer token identifies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The configured admin token.
    Admin,
    Token(TokenRecord),
    /// No bearer token.
    Anonymous,
    /// A bearer token that is neither the admin token nor a stored one (or was revoked).
    InvalidToken,
}

impl Caller {
    /// The name the audit log records.
    pub fn who(&self) -> &str {
        match self {
            Caller::Admin => "admin",
            Caller::Token(t) => &t.name,
            Caller::Anonymous => "anonymous",
            Caller::InvalidToken => "invalid-token",
        }
    }

    /// Ok when the caller may write resources of every kind named `name` (`*`: any, `team-*`: a
    /// prefix), as a rollback, a release move or a prune does.
    pub fn permit_writes(&self, name: &str) -> Result<(), ApiError> {
        Kind::ALL.into_iter().try_for_each(|kind| self.permit(Action::Write { kind, name }))
    }

    /// Ok when the caller may do `action`; 401 or 403 otherwise.
    pub fn permit(&self, action: Action<'_>) -> Result<(), ApiError> {
        let token = match self {
            Caller::Admin => return Ok(()),
            Caller::Anonymous => return Err(ApiError::unauthorized("missing bearer token")),
            Caller::InvalidToken => return Err(ApiError::unauthorized("invalid or revoked token")),
            Caller::Token(t) => t,
        };
        if token.scopes.iter().any(|&s| scope_allows(s, &token.routes, action)) {
            return Ok(());
        }
        let scopes: Vec<_> = token.scopes.iter().map(|s| format!("{s:?}").to_lowercase()).collect();
        let mut message = format!("token {} (scopes: {}) may not {action}", token.name, scopes.join(", "));
        if matches!(action, Action::Weights { .. }) && token.scopes.contains(&Scope::Weights) {
            message.push_str(&format!(" (its routes: {})", token.routes.join(", ")));
        }
        Err(ApiError::forbidden(message))
    }
}

fn scope_allows(scope: Scope, routes: &[String], action: Action<'_>) -> bool {
    match (scope, action) {
        (Scope::Admin, _) => true,
        (Scope::Read, Action::Read) => true,
        (Scope::Write, Action::Write { .. } | Action::Weights { .. }) => true,
        (Scope::Weights, Action::Weights { route }) => routes.is_empty() || routes.iter().any(|r| r == route),
        _ => false,
    }
}

pub trait Authorizer: Send + Sync + 'static {
    /// `token` is the bearer token, `None` when the request has none. Errors only when the
    /// credentials cannot be checked (503); an unknown token is `Caller::InvalidToken`.
    fn identify<'a>(&'a self, token: Option<&'a str>) -> BoxFuture<'a, Result<Caller, ApiError>>;
}

/// Accepts exactly the admin token. An empty admin token accepts nothing.
pub struct AdminToken {
    token: Box<str>,
}

impl AdminToken {
    pub fn new(token: &str) -> Self {
        Self { token: token.into() }
    }

    fn matches(&self, token: &str) -> bool {
        !self.token.is_empty() && constant_time_eq(token.as_bytes(), self.token.as_bytes())
    }
}

impl Authorizer for AdminToken {
    fn identify<'a>(&'a self, token: Option<&'a str>) -> BoxFuture<'a, Result<Caller, ApiError>> {
        let caller = match token {
            None => Caller::Anonymous,
            Some(t) if self.matches(t) => Caller::Admin,
            Some(_) => Caller::InvalidToken,
        };
        Box::pin(async move { Ok(caller) })
    }
}

/// The admin token plus the tokens in the store, looked up on every request (no cache, so a
/// revocation holds at once on every replica).
pub struct StoredTokens {
    admin: AdminToken,
    store: Store,
}

impl StoredTokens {
    pub fn new(admin_token: &str, store: Store) -> Self {
        Self { admin: AdminToken::new(admin_token), store }
    }
}

impl Authorizer for StoredTokens {
    fn identify<'a>(&'a self, token: Option<&'a str>) -> BoxFuture<'a, Result<Caller, ApiError>> {
        Box::pin(async move {
            let token = match token {
                None => return Ok(Caller::Anonymous),
                Some(t) if self.admin.matches(t) => return Ok(Caller::Admin),
                // Not one of ours: no need to ask the database.
                Some(t) if !t.starts_with(TOKEN_PREFIX) => return Ok(Caller::InvalidToken),
                Some(t) => t,
            };
            let hash = secret_sha256(token);
            // The lookup is by hash, so its timing tells nothing about any stored secret; the
            // final comparison is constant-time all the same.
            match self.store.token_by_hash(&hash).await? {
                Some(t) if constant_time_eq(t.secret_sha256.as_bytes(), hash.as_bytes()) => Ok(Caller::Token(t)),
                _ => Ok(Caller::InvalidToken),
            }
        })
    }
}

/// Hex SHA-256: how a secret is stored and looked up. The secrets are 256 random bits, so a
/// plain (unsalted, fast) hash is enough: there is nothing to brute-force.
pub fn secret_sha256(secret: &str) -> String {
    Sha256::digest(secret.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// A fresh secret: the prefix and 256 bits from the OS-seeded CSPRNG, as hex.
pub fn new_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{TOKEN_PREFIX}{hex}")
}

/// The token of `Authorization: Bearer TOKEN`; `None` when absent or of another scheme.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

/// Compares without an early exit, so response time does not reveal how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(scopes: &[Scope], routes: &[&str]) -> Caller {
        Caller::Token(TokenRecord {
            name: "t".into(),
            scopes: scopes.to_vec(),
            routes: routes.iter().map(|r| r.to_string()).collect(),
            created_ms: 0,
            secret_sha256: String::new(),
        })
    }

    #[tokio::test]
    async fn admin_token() {
        let auth = AdminToken::new("s3cret");
        assert_eq!(auth.identify(Some("s3cret")).await.unwrap(), Caller::Admin);
        assert_eq!(auth.identify(Some("s3cre")).await.unwrap(), Caller::InvalidToken);
        assert_eq!(auth.identify(None).await.unwrap(), Caller::Anonymous);
        let empty = AdminToken::new("");
        assert_eq!(empty.identify(Some("")).await.unwrap(), Caller::InvalidToken);
        assert_eq!(Caller::Anonymous.permit(Action::Read).unwrap_err().status, 401);
        assert_eq!(Caller::InvalidToken.permit(Action::Read).unwrap_err().status, 401);
        assert!(Caller::Admin.permit(Action::Tokens).is_ok());
    }

    #[test]
    fn scope_boundaries() {
        let write = Action::Write { kind: Kind::Cluster, name: "c" };
        let (api, web) = (Action::Weights { route: "api" }, Action::Weights { route: "web" });
        let table: [(Caller, [bool; 6]); 6] = [
            //                                   read   write  w(api) w(web) tokens audit
            (token(&[Scope::Admin], &[]), [true, true, true, true, true, true]),
            (token(&[Scope::Read], &[]), [true, false, false, false, false, false]),
            (token(&[Scope::Write], &[]), [false, true, true, true, false, false]),
            (token(&[Scope::Weights], &[]), [false, false, true, true, false, false]),
            (token(&[Scope::Weights], &["api"]), [false, false, true, false, false, false]),
            (token(&[Scope::Weights, Scope::Read], &["api"]), [true, false, true, false, false, false]),
        ];
        for (caller, expected) in table {
            let actions = [Action::Read, write, api, web, Action::Tokens, Action::Audit];
            for (action, allowed) in actions.into_iter().zip(expected) {
                let got = caller.permit(action);
                assert_eq!(got.is_ok(), allowed, "{caller:?} {action}");
                if let Err(e) = got {
                    assert_eq!(e.status, 403);
                }
            }
        }
    }

    #[test]
    fn secrets_are_long_random_and_hashed() {
        let (a, b) = (new_secret(), new_secret());
        assert_ne!(a, b);
        assert!(a.starts_with(TOKEN_PREFIX) && a.len() == TOKEN_PREFIX.len() + 64);
        assert_eq!(secret_sha256(&a).len(), 64);
        assert_ne!(secret_sha256(&a), a);
    }

    #[test]
    fn bearer_parsing() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer_token(&h), None);
        h.insert(header::AUTHORIZATION, "bearer  abc ".parse().unwrap());
        assert_eq!(bearer_token(&h), Some("abc"));
        h.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer_token(&h), None);
    }
}
