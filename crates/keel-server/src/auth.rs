//! Bearer tokens with roles (`keel serve --auth-tokens FILE`).
//!
//! The token file holds no token, only the SHA-256 of each and its role, so a copy of the
//! file (or of a backup of it) opens nothing:
//!
//! ```toml
//! [[token]]
//! name = "ops"          # for the log and for people; never the token itself
//! role = "admin"        # read | readwrite | admin
//! sha256 = "9f86d0…"    # 64 hex digits: the SHA-256 of the token's UTF-8 bytes
//! ```
//!
//! `keel token add` makes a random token, appends its hash and prints the token once.
//! Tokens are random 256-bit strings, so a fast hash is enough (there is no password to
//! guess); each presented token is hashed and compared with *every* entry in constant time,
//! so the time taken says nothing about which entry, or how much of one, it matched.
//!
//! Rights (docs/API.md, "Authentication"): `read` reads and sees status; `readwrite` also
//! writes; `admin` also changes membership and moves leadership. A request without a valid
//! token gets 401, one with too little right 403, both `outcome: not_applied` and before its
//! body is read. The file is read again on SIGHUP (`keel serve`), so tokens rotate with no
//! restart. Tokens never reach a log line: only an entry's name does.

use crate::api_error::ApiError;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use keel_node::{ConnectionInfo, ConnectionSecurity};
use ring::digest::{digest, SHA256};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use subtle::ConstantTimeEq;
use tracing::{debug, info};

/// Entries a token file may hold.
pub const TOKENS_MAX: usize = 10_000;
/// Bytes a presented token may have; longer ones are refused unhashed.
pub const TOKEN_BYTES_MAX: usize = 256;

/// What a token may do; each includes the ones before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads, status, the member list.
    Read,
    /// Also writes: put, delete, compare-and-set.
    Readwrite,
    /// Also membership changes and leadership transfer.
    Admin,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Readwrite => "readwrite",
            Role::Admin => "admin",
        }
    }
}

/// The role a request needs: membership changes and transfers `admin`, other changes
/// `readwrite`, everything that only looks `read`.
pub fn required_role(method: &Method, path: &str) -> Role {
    let looks = method == Method::GET || method == Method::HEAD;
    let administers = path.starts_with("/v1/members") || path.starts_with("/v1/leader/");
    match (looks, administers) {
        (true, _) => Role::Read,
        (false, true) => Role::Admin,
        (false, false) => Role::Readwrite,
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    #[serde(default)]
    token: Vec<TokenEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    name: String,
    role: Role,
    sha256: String,
}

#[derive(Debug)]
struct Token {
    name: String,
    role: Role,
    hash: [u8; 32],
}

/// The tokens of one token file.
#[derive(Debug)]
pub struct Tokens {
    tokens: Vec<Token>,
}

impl Tokens {
    pub fn load(path: &Path) -> Result<Tokens, String> {
        let text = std::fs::read_to_string(path).map_err(|error| format!("cannot read token file {}: {error}", path.display()))?;
        Tokens::parse(&text).map_err(|problem| format!("token file {}: {problem}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Tokens, String> {
        let file: TokenFile = toml::from_str(text).map_err(|error| error.to_string().split_whitespace().collect::<Vec<_>>().join(" "))?;
        if file.token.is_empty() {
            return Err("no [[token]] entries: nobody could call the node".into());
        }
        if file.token.len() > TOKENS_MAX {
            return Err(format!("{} tokens; at most {TOKENS_MAX}", file.token.len()));
        }
        let mut tokens = Vec::with_capacity(file.token.len());
        for entry in file.token {
            let hash = parse_hash(&entry.sha256).ok_or_else(|| format!("token {:?}: sha256 must be 64 hex digits", entry.name))?;
            if tokens.iter().any(|token: &Token| token.hash == hash) {
                return Err(format!("token {:?}: the same token appears twice", entry.name));
            }
            tokens.push(Token { name: entry.name, role: entry.role, hash });
        }
        Ok(Tokens { tokens })
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The name and role of `token`'s entry, if any. Compares with every entry in constant
    /// time (see the module doc).
    pub fn find(&self, token: &str) -> Option<(&str, Role)> {
        let hash = sha256(token.as_bytes());
        let mut found = None;
        for entry in &self.tokens {
            if bool::from(entry.hash.ct_eq(&hash)) {
                found = Some((entry.name.as_str(), entry.role));
            }
        }
        found
    }
}

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    digest(&SHA256, bytes).as_ref().try_into().expect("SHA-256 is 32 bytes")
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn parse_hash(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut hash = [0u8; 32];
    for (i, byte) in hash.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(hash)
}

/// A new random token: 32 bytes from the system's CSPRNG, as 64 hex digits with a `keel_`
/// prefix (so a leaked one is easy to search for).
pub fn new_token() -> String {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new().fill(&mut bytes).expect("the system random source works");
    format!("keel_{}", hex(&bytes))
}

/// `keel token add`: appends an entry for a new token to `path` (created if missing) and
/// returns the token. The file is checked to parse with the new entry before it is written.
pub fn add_token(path: &Path, name: &str, role: Role) -> Result<String, String> {
    if name.is_empty() || name.contains(['"', '\\', '\n']) {
        return Err(format!("token name {name:?} must be non-empty, without quotes, backslashes or newlines"));
    }
    let existing = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => "# keel tokens: the SHA-256 of each token and its role (see `keel token add --help`).\n".to_string(),
        Err(error) => return Err(format!("cannot read token file {}: {error}", path.display())),
    };
    let token = new_token();
    let entry = format!("\n[[token]]\nname = \"{name}\"\nrole = \"{}\"\nsha256 = \"{}\"\n", role.name(), hex(&sha256(token.as_bytes())));
    let text = format!("{existing}{entry}");
    Tokens::parse(&text).map_err(|problem| format!("token file {}: {problem}", path.display()))?;
    write_private(path, &text)?;
    Ok(token)
}

/// Writes `text` to `path` readable by its owner only (it names who may do what).
pub fn write_private(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let write = || -> std::io::Result<()> {
        let temporary = path.with_extension("tmp");
        let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&temporary)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)
    };
    write().map_err(|error| format!("cannot write {}: {error}", path.display()))
}

/// The token to send, from `--token-file` or `KEEL_TOKEN` (the file wins).
pub fn client_token(token_file: Option<&PathBuf>) -> Result<Option<String>, String> {
    if let Some(path) = token_file {
        let text = std::fs::read_to_string(path).map_err(|error| format!("cannot read token file {}: {error}", path.display()))?;
        let token = text.trim().to_string();
        if token.is_empty() {
            return Err(format!("token file {} is empty", path.display()));
        }
        return Ok(Some(token));
    }
    Ok(std::env::var("KEEL_TOKEN").ok().map(|token| token.trim().to_string()).filter(|token| !token.is_empty()))
}

/// The access check in front of the client API (`server.rs` adds it when tokens are on).
pub struct Access {
    id: keel_core::NodeId,
    path: PathBuf,
    tokens: RwLock<Arc<Tokens>>,
}

impl Access {
    pub fn new(id: keel_core::NodeId, path: PathBuf, tokens: Tokens) -> Access {
        Access { id, path, tokens: RwLock::new(Arc::new(tokens)) }
    }

    /// Reads the token file again (SIGHUP); on a problem the old tokens stay.
    pub fn reload(&self) -> Result<usize, String> {
        let tokens = Tokens::load(&self.path)?;
        let count = tokens.len();
        *self.tokens.write().expect("tokens lock") = Arc::new(tokens);
        info!("[NODE {}] reloaded {count} tokens from {}", self.id, self.path.display());
        Ok(count)
    }

    fn check(&self, request: &Request) -> Result<(), ApiError> {
        let path = request.uri().path();
        let needed = required_role(request.method(), path);
        // A joining node asks a member for the cluster's description with its peer
        // certificate: that proves it one of ours, no token needed.
        if path == "/v1/cluster" && is_peer(request) {
            return Ok(());
        }
        let Some(token) = bearer_token(request) else {
            return Err(unauthorized("this node needs `Authorization: Bearer <token>` (see docs/API.md, \"Authentication\")"));
        };
        let tokens = self.tokens.read().expect("tokens lock").clone();
        let Some((name, role)) = tokens.find(token) else {
            debug!("[NODE {}] refused {} {path}: unknown token", self.id, request.method());
            return Err(unauthorized("the token is not valid here"));
        };
        if role < needed {
            debug!("[NODE {}] refused {} {path} to token {name:?}: role {} < {}", self.id, request.method(), role.name(), needed.name());
            return Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", format!("this request needs role {}; the token has role {}", needed.name(), role.name())));
        }
        Ok(())
    }
}

fn is_peer(request: &Request) -> bool {
    let connection = request.extensions().get::<ConnectInfo<ConnectionInfo>>();
    matches!(connection, Some(ConnectInfo(ConnectionInfo { security: ConnectionSecurity::Peer { .. }, .. })))
}

/// The token of `Authorization: Bearer`, or, for `GET /v1/events` only, of the query's
/// `access_token` (a browser's EventSource cannot set headers).
fn bearer_token(request: &Request) -> Option<&str> {
    let token = match request.headers().get(header::AUTHORIZATION) {
        Some(value) => {
            let (scheme, token) = value.to_str().ok()?.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then_some(token.trim())?
        }
        None if request.uri().path() == "/v1/events" => request.uri().query()?.split('&').find_map(|pair| pair.strip_prefix("access_token="))?,
        None => return None,
    };
    (!token.is_empty() && token.len() <= TOKEN_BYTES_MAX).then_some(token)
}

fn unauthorized(message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
}

/// The middleware: refuses (401/403) or passes the request on.
pub async fn check_access(State(access): State<Arc<Access>>, request: Request, next: Next) -> Response {
    match access.check(&request) {
        Ok(()) => next.run(request).await,
        Err(error) => {
            let mut response = error.into_response();
            if response.status() == StatusCode::UNAUTHORIZED {
                response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(entries: &[(&str, Role, &str)]) -> String {
        entries.iter().map(|(name, role, token)| format!("[[token]]\nname = \"{name}\"\nrole = \"{}\"\nsha256 = \"{}\"\n", role.name(), hex(&sha256(token.as_bytes())))).collect()
    }

    #[test]
    fn tokens_are_found_by_their_hash_with_their_role() {
        let tokens = Tokens::parse(&file(&[("reader", Role::Read, "r-token"), ("ops", Role::Admin, "a-token")])).unwrap();
        assert_eq!(tokens.find("r-token"), Some(("reader", Role::Read)));
        assert_eq!(tokens.find("a-token"), Some(("ops", Role::Admin)));
        assert_eq!(tokens.find("a-toke"), None);
        assert_eq!(tokens.find(""), None);
        assert_eq!(hex(&sha256(b"test")), "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", "SHA-256 of \"test\"");
    }

    #[test]
    fn bad_token_files_are_refused_with_a_reason() {
        assert!(Tokens::parse("").unwrap_err().contains("no [[token]]"));
        assert!(Tokens::parse("[[token]]\nname = \"x\"\nrole = \"root\"\nsha256 = \"00\"\n").is_err(), "unknown role");
        let short = "[[token]]\nname = \"x\"\nrole = \"read\"\nsha256 = \"abcd\"\n";
        assert!(Tokens::parse(short).unwrap_err().contains("64 hex"));
        let twice = file(&[("a", Role::Read, "same"), ("b", Role::Admin, "same")]);
        assert!(Tokens::parse(&twice).unwrap_err().contains("twice"));
        let token_in_clear = "[[token]]\nname = \"x\"\nrole = \"read\"\ntoken = \"secret\"\n";
        assert!(Tokens::parse(token_in_clear).is_err(), "unknown fields are refused");
    }

    #[test]
    fn roles_follow_the_route_and_method() {
        assert_eq!(required_role(&Method::GET, "/v1/kv/a"), Role::Read);
        assert_eq!(required_role(&Method::GET, "/v1/members"), Role::Read);
        assert_eq!(required_role(&Method::PUT, "/v1/kv/a"), Role::Readwrite);
        assert_eq!(required_role(&Method::DELETE, "/v1/kv/a"), Role::Readwrite);
        assert_eq!(required_role(&Method::POST, "/v1/kv/a/cas"), Role::Readwrite);
        assert_eq!(required_role(&Method::POST, "/client/submit"), Role::Readwrite);
        assert_eq!(required_role(&Method::POST, "/v1/members"), Role::Admin);
        assert_eq!(required_role(&Method::DELETE, "/v1/members/3"), Role::Admin);
        assert_eq!(required_role(&Method::POST, "/v1/members/3/promote"), Role::Admin);
        assert_eq!(required_role(&Method::POST, "/v1/leader/transfer"), Role::Admin);
        assert!(Role::Read < Role::Readwrite && Role::Readwrite < Role::Admin);
    }

    #[test]
    fn added_tokens_are_stored_hashed_and_work() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.toml");
        let admin = add_token(&path, "ops", Role::Admin).unwrap();
        let reader = add_token(&path, "dashboard", Role::Read).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&admin) && !text.contains(&reader), "the file holds no token");
        let tokens = Tokens::load(&path).unwrap();
        assert_eq!(tokens.find(&admin), Some(("ops", Role::Admin)));
        assert_eq!(tokens.find(&reader), Some(("dashboard", Role::Read)));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(add_token(&path, "with \"quote\"", Role::Read).is_err());
    }
}
