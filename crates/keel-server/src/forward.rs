//! v1 requests that need the leader, received by a follower, are proxied to the leader as
//! they came (method, path and query, `Content-Type`, body) and its answer is passed back
//! (status, body, and the `Content-Type`, `Retry-After` and `X-Keel-Index` headers).
//!
//! The answer passed back also carries `X-Keel-Leader-Addr: <the leader's address>`, so a
//! client that sends many requests can go to the leader directly and save the hop
//! (`keel bench` does).
//!
//! With peer TLS on, the hop goes over the peers' mutual TLS (`security.rs`), checking the
//! leader's certificate names the leader. The client's `Authorization` goes along, so the
//! leader checks the token itself.
//!
//! The proxied request carries `X-Keel-Forwarded-By: <this node's id>`. A node receiving a
//! forwarded request never forwards it again: if it is not the leader (any more) it answers
//! 421 `not_leader` with its own hint, which the first node passes back. So a request
//! travels at most one extra hop, and clients following `leader_addr` converge.
//!
//! When the proxying itself fails, the outcome depends on how far the request got: a
//! connection that could not be opened carried nothing (`not_applied`); a timeout or a
//! connection broken mid-request may have delivered a write (`unknown`).

use crate::api_error::ApiError;
use crate::server::{AppState, Incoming};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use keel_core::NodeId;
use keel_node::{Outcome, PeerTls};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::debug;

pub const FORWARDED_HEADER: &str = "x-keel-forwarded-by";
pub const INDEX_HEADER: &str = "x-keel-index";
/// On an answer a follower passed back from the leader: where the leader is.
pub const LEADER_ADDR_HEADER: &str = "x-keel-leader-addr";

/// The leader answers a timed-out request itself after `request_timeout`; wait a little
/// longer for that answer before giving up on the hop.
const FORWARD_MARGIN: Duration = Duration::from_secs(1);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// The clients followers use to reach the leader: kept-alive connections, never a proxy;
/// with peer TLS, one per leader, each checking it reaches that node.
pub struct Forwarder {
    plain: reqwest::Client,
    tls: Option<Arc<PeerTls>>,
    secure: Mutex<BTreeMap<NodeId, reqwest::Client>>,
}

impl Forwarder {
    pub fn new(tls: Option<Arc<PeerTls>>) -> Forwarder {
        Forwarder { plain: client(None), tls, secure: Mutex::new(BTreeMap::new()) }
    }

    /// The scheme and client for a request to `leader`.
    fn client_for(&self, leader: NodeId) -> (&'static str, reqwest::Client) {
        let Some(tls) = &self.tls else { return ("http", self.plain.clone()) };
        let mut secure = self.secure.lock().expect("forwarding clients lock");
        let client = secure.entry(leader).or_insert_with(|| client(Some(tls.client_config(leader))));
        ("https", client.clone())
    }
}

fn client(tls: Option<rustls::ClientConfig>) -> reqwest::Client {
    let mut builder = reqwest::Client::builder().connect_timeout(CONNECT_TIMEOUT).tcp_nodelay(true).pool_idle_timeout(Some(Duration::from_secs(30))).no_proxy();
    if let Some(tls) = tls {
        builder = builder.use_preconfigured_tls(tls);
    }
    builder.build().expect("building the forwarding HTTP client")
}

pub(crate) async fn proxy<L>(state: &AppState, leader: NodeId, incoming: &Incoming<L>, is_write: bool) -> Response {
    let Some(address) = state.address_of(leader) else {
        return ApiError::no_leader().into_response();
    };
    let path = incoming.uri.path_and_query().map(|path| path.as_str()).unwrap_or("/");
    debug!("[NODE {}] forwarding {} {path} to the leader, node {leader} at {address}", state.id, incoming.method);
    let (scheme, client) = state.forwarder.client_for(leader);
    let mut request = client
        .request(incoming.method.clone(), format!("{scheme}://{address}{path}"))
        .timeout(state.request_timeout + FORWARD_MARGIN)
        .header(FORWARDED_HEADER, state.id.to_string())
        .body(incoming.body.clone());
    for name in [header::CONTENT_TYPE, header::AUTHORIZATION] {
        if let Some(value) = incoming.headers.get(&name) {
            request = request.header(name, value.clone());
        }
    }
    let response = match request.send().await {
        Ok(response) => response,
        Err(error) => return forward_failure(state, leader, address, &error, is_write).into_response(),
    };
    let status = response.status();
    let mut headers = HeaderMap::new();
    for name in [header::CONTENT_TYPE, header::RETRY_AFTER, HeaderName::from_static(INDEX_HEADER)] {
        if let Some(value) = response.headers().get(&name) {
            headers.insert(name, value.clone());
        }
    }
    // A 421 means the node no longer leads: it names no leader, its body's hint does.
    if status != StatusCode::MISDIRECTED_REQUEST {
        if let Ok(value) = HeaderValue::from_str(&address) {
            headers.insert(HeaderName::from_static(LEADER_ADDR_HEADER), value);
        }
    }
    match response.bytes().await {
        Ok(body) => (status, headers, body).into_response(),
        Err(error) => forward_failure(state, leader, address, &error, is_write).into_response(),
    }
}

fn forward_failure(state: &AppState, leader: NodeId, address: String, error: &reqwest::Error, is_write: bool) -> ApiError {
    let detail = error_chain(error);
    let error = if error.is_connect() {
        ApiError::unavailable("leader_unreachable", format!("cannot reach the leader, node {leader} at {address}: {detail}"))
    } else if error.is_timeout() {
        ApiError::timeout(is_write)
    } else {
        let outcome = if is_write { Outcome::Unknown } else { Outcome::NotApplied };
        ApiError::new(StatusCode::BAD_GATEWAY, "forward_failed", format!("forwarding to the leader, node {leader} at {address}, failed: {detail}")).with_outcome(outcome)
    };
    debug!("[NODE {}] {}", state.id, error.message);
    error.with_leader(Some(leader), Some(address))
}

/// `reqwest`'s message hides the cause ("error sending request"); the transport's helper
/// adds the sources.
pub use keel_node::transport_http::error_chain;
