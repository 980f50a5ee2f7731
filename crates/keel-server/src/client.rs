//! The HTTP client behind `keel put/get/del/cas/status/leader`.
//!
//! It talks to the v1 API of any endpoint it was given and retries only what is safe:
//! - 421 `not_leader` with a `leader_addr`: ask that address next, at once.
//! - a connection that could not be opened: try the next endpoint.
//! - a 5xx whose `outcome` is `not_applied` (no leader yet, leader unreachable, overloaded,
//!   shutting down...), and any failed read: wait a little (50 ms, doubling up to 500 ms)
//!   and try the next endpoint.
//! - a write whose outcome is `unknown` (timed out, connection lost mid-request) is never
//!   retried: the error says it may or may not have been applied.
//!
//! Everything stops at the overall deadline (`--timeout-ms`).
//!
//! With [`ClientSecurity`] it speaks HTTPS to every endpoint (and to the leaders they name)
//! and sends its token as `Authorization: Bearer`; a 401 or 403 is final.

use crate::forward::{error_chain, INDEX_HEADER};
use crate::security::ClientSecurity;
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

pub const DEFAULT_ENDPOINTS: &str = "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003";
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_millis(500);
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1000);

#[derive(Debug, PartialEq, Eq)]
pub enum ClientError {
    /// The key does not exist.
    NotFound,
    /// The server refused the request (bad input, too large...): nothing was applied.
    Refused { status: u16, code: String, message: String },
    /// A write may or may not have been applied.
    OutcomeUnknown(String),
    /// No endpoint gave an answer before the deadline; nothing was applied.
    Unavailable(String),
    /// The client could not be set up (an unreadable CA, certificate or token file).
    Setup(String),
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::NotFound => write!(f, "key not found"),
            ClientError::Refused { status, code, message } => write!(f, "refused ({status} {code}): {message}"),
            ClientError::OutcomeUnknown(problem) => write!(f, "outcome unknown, the write may or may not have been applied: {problem}"),
            ClientError::Unavailable(problem) => write!(f, "cluster unavailable (nothing was applied): {problem}"),
            ClientError::Setup(problem) => write!(f, "{problem}"),
        }
    }
}

impl std::error::Error for ClientError {}

/// An answer the caller interprets.
pub struct Answer {
    pub status: StatusCode,
    pub index: Option<u64>,
    pub body: bytes::Bytes,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

#[derive(Debug, Default, Deserialize)]
struct ErrorBody {
    #[serde(default)]
    error: String,
    #[serde(default)]
    message: String,
    leader_addr: Option<String>,
    outcome: Option<String>,
}

/// What to do after one attempt.
enum Step {
    Done(Answer),
    Fail(ClientError),
    Redirect(String),
    Retry(String),
}

/// The outcome of a compare-and-set that was applied.
#[derive(Debug, PartialEq, Eq)]
pub struct CasOutcome {
    pub succeeded: bool,
    pub index: u64,
    pub current: Option<String>,
}

pub struct Client {
    endpoints: Vec<String>,
    http: reqwest::Client,
    scheme: &'static str,
    /// `Bearer <token>`, if there is a token.
    authorization: Option<reqwest::header::HeaderValue>,
    deadline: Duration,
    /// Tried first: the endpoint that answered last, or the leader one named.
    preferred: Option<String>,
    next_endpoint: usize,
}

/// `http://host:port/` or `https://host:port/` → `host:port`.
pub fn normalize_endpoint(endpoint: &str) -> String {
    let endpoint = endpoint.trim();
    let endpoint = endpoint.strip_prefix("http://").or_else(|| endpoint.strip_prefix("https://")).unwrap_or(endpoint);
    endpoint.trim_end_matches('/').to_string()
}

/// Whether any endpoint asks for HTTPS.
pub fn wants_https(endpoints: &[String]) -> bool {
    endpoints.iter().any(|endpoint| endpoint.trim().starts_with("https://"))
}

/// Percent-encodes everything but RFC 3986's unreserved characters, so any key fits in
/// one path segment (`/` becomes `%2F`).
pub fn encode_key(key: &str) -> String {
    let mut encoded = String::with_capacity(key.len());
    for byte in key.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

impl Client {
    pub fn new(endpoints: &[String], deadline: Duration) -> Client {
        Client::with_security(endpoints, deadline, &ClientSecurity::default())
    }

    pub fn with_security(endpoints: &[String], deadline: Duration, security: &ClientSecurity) -> Client {
        let endpoints: Vec<String> = endpoints.iter().map(|endpoint| normalize_endpoint(endpoint)).filter(|endpoint| !endpoint.is_empty()).collect();
        assert!(!endpoints.is_empty(), "at least one endpoint");
        let mut builder = reqwest::Client::builder().connect_timeout(CONNECT_TIMEOUT).no_proxy();
        if let Some(tls) = &security.tls {
            builder = builder.use_preconfigured_tls((**tls).clone());
        }
        let http = builder.build().expect("building the HTTP client");
        let authorization = security.token.as_ref().and_then(|token| reqwest::header::HeaderValue::from_str(&format!("Bearer {token}")).ok()).map(|mut value| {
            value.set_sensitive(true);
            value
        });
        Client { endpoints, http, scheme: security.scheme(), authorization, deadline, preferred: None, next_endpoint: 0 }
    }

    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    pub async fn put(&mut self, key: &str, value: &[u8]) -> Result<u64, ClientError> {
        let answer = self.request(Method::PUT, &format!("/v1/kv/{}", encode_key(key)), Some(value.to_vec()), true).await?;
        Ok(answer.json()["index"].as_u64().unwrap_or_default())
    }

    /// `None` when the key does not exist.
    pub async fn get(&mut self, key: &str, stale: bool) -> Result<Option<Vec<u8>>, ClientError> {
        let consistency = if stale { "stale" } else { "linearizable" };
        let path = format!("/v1/kv/{}?consistency={consistency}", encode_key(key));
        match self.request(Method::GET, &path, None, false).await {
            Ok(answer) => Ok(Some(answer.body.to_vec())),
            Err(ClientError::NotFound) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Whether the key existed.
    pub async fn delete(&mut self, key: &str) -> Result<bool, ClientError> {
        let answer = self.request(Method::DELETE, &format!("/v1/kv/{}", encode_key(key)), None, true).await?;
        Ok(answer.json()["deleted"].as_bool().unwrap_or(false))
    }

    pub async fn cas(&mut self, key: &str, expected: Option<&str>, value: Option<&str>) -> Result<CasOutcome, ClientError> {
        let body = json!({ "expected": expected, "value": value }).to_string().into_bytes();
        let answer = self.request(Method::POST, &format!("/v1/kv/{}/cas", encode_key(key)), Some(body), true).await?;
        let json = answer.json();
        Ok(CasOutcome {
            succeeded: json["succeeded"].as_bool().unwrap_or(false),
            index: json["index"].as_u64().unwrap_or_default(),
            current: json["current"].as_str().map(str::to_string),
        })
    }

    /// `(id, address, term)` of the leader, as the first endpoint that knows one says.
    pub async fn leader(&mut self) -> Result<(u64, String, u64), ClientError> {
        let started = Instant::now();
        let mut backoff = BACKOFF_MIN;
        loop {
            let answer = self.request(Method::GET, "/v1/cluster", None, false).await?;
            let json = answer.json();
            if let (Some(id), Some(address)) = (json["leader_id"].as_u64(), json["leader_addr"].as_str()) {
                return Ok((id, address.to_string(), json["term"].as_u64().unwrap_or_default()));
            }
            if started.elapsed() + backoff >= self.deadline {
                return Err(ClientError::Unavailable("no leader is known".into()));
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
            self.rotate();
        }
    }

    /// `GET /v1/status` of one endpoint, no retries; an owned future, to run many at once.
    /// `GET /v1/members` (served by the leader).
    pub async fn members(&mut self) -> Result<Value, ClientError> {
        let answer = self.request(Method::GET, "/v1/members", None, false).await?;
        Ok(answer.json())
    }

    /// A membership change or a transfer: `POST`/`DELETE` on `path`. A 409 (a conflict with
    /// the cluster's state) is an error here, with its reason.
    pub async fn change(&mut self, method: Method, path: &str, body: Option<Value>) -> Result<Value, ClientError> {
        let answer = self.request(method, path, body.map(|body| body.to_string().into_bytes()), true).await?;
        if answer.status == StatusCode::CONFLICT {
            let error: ErrorBody = serde_json::from_slice(&answer.body).unwrap_or_default();
            return Err(ClientError::Refused { status: 409, code: error.error, message: error.message });
        }
        Ok(answer.json())
    }

    pub fn status_of(&self, endpoint: &str) -> impl std::future::Future<Output = Result<Value, String>> + Send + 'static {
        let mut request = self.http.get(format!("{}://{endpoint}/v1/status", self.scheme)).timeout(self.deadline.min(Duration::from_secs(3)));
        if let Some(authorization) = &self.authorization {
            request = request.header(reqwest::header::AUTHORIZATION, authorization.clone());
        }
        async move {
            let response = request.send().await.map_err(|error| short_error(&error))?;
            if !response.status().is_success() {
                return Err(format!("answered {}", response.status()));
            }
            response.json().await.map_err(|error| short_error(&error))
        }
    }

    fn rotate(&mut self) {
        self.preferred = None;
        self.next_endpoint = (self.next_endpoint + 1) % self.endpoints.len();
    }

    fn target(&self) -> String {
        self.preferred.clone().unwrap_or_else(|| self.endpoints[self.next_endpoint].clone())
    }

    /// Sends the request, following hints and retrying as the module doc says.
    pub async fn request(&mut self, method: Method, path: &str, body: Option<Vec<u8>>, is_write: bool) -> Result<Answer, ClientError> {
        let started = Instant::now();
        let mut backoff = BACKOFF_MIN;
        let mut redirects = 0;
        loop {
            let target = self.target();
            let remaining = self.deadline.saturating_sub(started.elapsed());
            if remaining.is_zero() {
                return Err(ClientError::Unavailable(format!("no answer within {:?}", self.deadline)));
            }
            let problem = match self.attempt(&target, method.clone(), path, body.clone(), is_write, remaining).await {
                Step::Done(answer) => {
                    self.preferred = Some(target);
                    return Ok(answer);
                }
                Step::Fail(error) => return Err(error),
                Step::Redirect(leader) if redirects < self.endpoints.len() + 1 => {
                    redirects += 1;
                    self.preferred = Some(normalize_endpoint(&leader));
                    continue;
                }
                Step::Redirect(leader) => format!("redirected too often (last to {leader})"),
                Step::Retry(problem) => problem,
            };
            redirects = 0;
            self.rotate();
            if started.elapsed() + backoff >= self.deadline {
                return Err(ClientError::Unavailable(format!("{target}: {problem}")));
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    async fn attempt(&self, target: &str, method: Method, path: &str, body: Option<Vec<u8>>, is_write: bool, timeout: Duration) -> Step {
        let mut request = self.http.request(method, format!("{}://{target}{path}", self.scheme)).timeout(timeout);
        if let Some(authorization) = &self.authorization {
            request = request.header(reqwest::header::AUTHORIZATION, authorization.clone());
        }
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = match request.send().await {
            Ok(response) => response,
            Err(error) if error.is_connect() || !is_write => return Step::Retry(short_error(&error)),
            Err(error) => return Step::Fail(ClientError::OutcomeUnknown(format!("{target}: {}", short_error(&error)))),
        };
        let status = response.status();
        let index = response.headers().get(INDEX_HEADER).and_then(|value| value.to_str().ok()).and_then(|value| value.parse().ok());
        let body = match response.bytes().await {
            Ok(body) => body,
            Err(error) if !is_write => return Step::Retry(short_error(&error)),
            Err(error) => return Step::Fail(ClientError::OutcomeUnknown(format!("{target}: {}", short_error(&error)))),
        };
        classify(Answer { status, index, body }, is_write)
    }
}

fn classify(answer: Answer, is_write: bool) -> Step {
    let status = answer.status;
    if status.is_success() || status == StatusCode::CONFLICT {
        return Step::Done(answer);
    }
    let error: ErrorBody = serde_json::from_slice(&answer.body).unwrap_or_default();
    if status == StatusCode::NOT_FOUND && error.error == "not_found" {
        return Step::Fail(ClientError::NotFound);
    }
    if status == StatusCode::GONE {
        return Step::Retry(format!("{}: {}", error.error, error.message)); // A removed node: ask another.
    }
    if status == StatusCode::MISDIRECTED_REQUEST {
        return match error.leader_addr {
            Some(leader) => Step::Redirect(leader),
            None => Step::Retry(error.message),
        };
    }
    if status.is_server_error() {
        let unknown = error.outcome.as_deref() != Some("not_applied");
        if is_write && unknown {
            return Step::Fail(ClientError::OutcomeUnknown(format!("{} {}: {}", status.as_u16(), error.error, error.message)));
        }
        return Step::Retry(format!("{} {}: {}", status.as_u16(), error.error, error.message));
    }
    Step::Fail(ClientError::Refused { status: status.as_u16(), code: error.error, message: error.message })
}

/// The innermost cause is the useful part ("Connection refused (os error 111)").
fn short_error(error: &reqwest::Error) -> String {
    let chain = error_chain(error);
    chain.rsplit(": ").next().unwrap_or(&chain).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_encoded_into_one_segment() {
        assert_eq!(encode_key("plain-key_1.x~"), "plain-key_1.x~");
        assert_eq!(encode_key("a/b c"), "a%2Fb%20c");
        assert_eq!(encode_key("é"), "%C3%A9");
    }

    #[test]
    fn endpoints_are_normalized() {
        assert_eq!(normalize_endpoint(" http://127.0.0.1:7001/ "), "127.0.0.1:7001");
        assert_eq!(normalize_endpoint("https://127.0.0.1:7001"), "127.0.0.1:7001");
        assert!(wants_https(&["127.0.0.1:1".into(), " https://h:2".into()]));
        assert!(!wants_https(&["http://h:1".into()]));
        assert_eq!(normalize_endpoint("localhost:7002"), "localhost:7002");
    }

    fn answer(status: u16, body: &str) -> Answer {
        Answer { status: StatusCode::from_u16(status).unwrap(), index: None, body: body.to_string().into() }
    }

    #[test]
    fn only_safe_failures_are_retried() {
        let unknown = r#"{"error":"timeout","message":"m","outcome":"unknown"}"#;
        assert!(matches!(classify(answer(503, unknown), true), Step::Fail(ClientError::OutcomeUnknown(_))));
        assert!(matches!(classify(answer(503, unknown), false), Step::Retry(_)), "reads are always safe to retry");
        let no_leader = r#"{"error":"no_leader","message":"m","outcome":"not_applied"}"#;
        assert!(matches!(classify(answer(503, no_leader), true), Step::Retry(_)));
        let redirect = r#"{"error":"not_leader","message":"m","leader_addr":"127.0.0.1:7002","outcome":"not_applied"}"#;
        assert!(matches!(classify(answer(421, redirect), true), Step::Redirect(address) if address == "127.0.0.1:7002"));
        assert!(matches!(classify(answer(400, r#"{"error":"bad_request","message":"m"}"#), true), Step::Fail(ClientError::Refused { status: 400, .. })));
        assert!(matches!(classify(answer(404, r#"{"error":"not_found","message":"m"}"#), false), Step::Fail(ClientError::NotFound)));
        assert!(matches!(classify(answer(409, r#"{"succeeded":false}"#), true), Step::Done(_)));
        assert!(matches!(classify(answer(502, "garbage"), true), Step::Fail(ClientError::OutcomeUnknown(_))), "no outcome: assume unknown");
    }
}
