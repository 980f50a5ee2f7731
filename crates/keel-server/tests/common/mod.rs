//! A cluster of real `keel serve` processes for the integration tests, and HTTP helpers.
//! A secure cluster (`Cluster::start_secure`) runs every node with peer mutual TLS, HTTPS for
//! clients and tokens (a CA and certificates from keel-node's `certificates.rs`, tokens from
//! `keel_server::auth`), and every helper here then speaks HTTPS with the admin token.
//!
//! Every wait polls a condition and has a deadline that only guards against hangs; no test
//! sleeps in the hope that something happened meanwhile.

#![allow(dead_code)]

pub mod fabric;

use keel_core::{Entry, EntryKind};
use keel_kv::{Command, KvStore};
use keel_node::{FileStorage, FileStorageConfig, Storage};
use keel_server::auth::Role;
use keel_server::security::ClientSecurity;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fs::File;
use std::future::Future;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub const BINARY: &str = env!("CARGO_BIN_EXE_keel");
/// Hang guard for waits that normally take well under a second.
pub const WAIT: Duration = Duration::from_secs(20);

/// The log every node holds: the shortest one, which every other must extend with nothing
/// but no-ops (a leader elected by a hand-over at shutdown appends one that the nodes
/// stopped before it never got).
pub fn agreed_log(logs: &BTreeMap<u64, Vec<Entry>>) -> &Vec<Entry> {
    let shortest = logs.values().min_by_key(|log| log.len()).expect("some log");
    for (id, log) in logs {
        assert_eq!(&log[..shortest.len()], &shortest[..], "node {id}'s log agrees with the others");
        assert!(log[shortest.len()..].iter().all(|entry| entry.kind == EntryKind::Noop), "node {id}'s log goes on with more than no-ops: {:?}", &log[shortest.len()..]);
    }
    shortest
}

/// Polls `check` until it returns `Some`, panicking with `what` after `deadline`.
pub async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(started.elapsed() < deadline, "timed out after {deadline:?} waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `GET /v1/status` of the node at `url` (`scheme://host:port`), if it answers within 2 s.
pub async fn try_status_at(http: &reqwest::Client, url: &str) -> Option<Value> {
    let response = http.get(format!("{url}/v1/status")).timeout(Duration::from_secs(2)).send().await.ok()?;
    response.json().await.ok()
}

/// The leader, and its term, that every node in `nodes` (id, URL) names, provided it is
/// one of them and says itself that it leads in that term.
pub async fn agreed_leader_at(http: &reqwest::Client, nodes: &[(u64, String)]) -> Option<(u64, u64)> {
    let mut leaders = Vec::new();
    for (_, address) in nodes {
        let status = try_status_at(http, address).await?;
        leaders.push((status["leader_id"].as_u64()?, status["term"].as_u64()?));
    }
    let (leader, term) = *leaders.first()?;
    let (_, leader_address) = nodes.iter().find(|(id, _)| *id == leader)?;
    if leaders.iter().any(|other| *other != (leader, term)) {
        return None;
    }
    let leader_status = try_status_at(http, leader_address).await?;
    (leader_status["role"] == "leader" && leader_status["term"].as_u64() == Some(term)).then_some((leader, term))
}

/// `keel serve ARGS` run to its end.
pub fn serve(args: &[&str]) -> std::process::Output {
    std::process::Command::new(BINARY).arg("serve").args(args).env_remove("KEEL_LOG_FORMAT").output().unwrap()
}

/// A start refused as documented: exit code 2 and one line on stderr that names `expected`.
pub fn assert_start_failure(output: &std::process::Output, expected: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "exit code 2: {stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "a one-line error: {stderr:?}");
    assert!(stderr.contains(expected), "{stderr:?} should mention {expected:?}");
}

/// Ports below Linux's ephemeral range (32768+), so they do not collide with the source
/// ports of outgoing connections; checked free by binding them.
pub fn free_port() -> u16 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let clock = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    let seed = std::process::id() as u64 * 7919 + clock / 1000;
    loop {
        let counter = NEXT.fetch_add(1, Ordering::SeqCst);
        let port = 20_000 + ((seed + counter * 104_729) % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

pub struct Node {
    pub id: u64,
    pub port: u16,
    pub child: Option<Child>,
    /// Set for a node restarted empty to join the cluster through this member: it then
    /// starts with `--join` until its data directory records its first configuration.
    pub join_via: Option<String>,
}

/// A secure cluster's CA, certificates and tokens.
pub struct Security {
    pub dir: PathBuf,
    pub ca: keel_node::certificates::DevCa,
    pub token_file: PathBuf,
    /// A token of each role.
    pub tokens: BTreeMap<Role, String>,
}

impl Security {
    fn new(dir: PathBuf) -> Security {
        std::fs::create_dir_all(&dir).unwrap();
        let ca = keel_node::certificates::DevCa::new().unwrap();
        std::fs::write(dir.join("ca.pem"), ca.certificate_pem()).unwrap();
        let token_file = dir.join("tokens.toml");
        let tokens = [Role::Read, Role::Readwrite, Role::Admin].into_iter().map(|role| (role, keel_server::auth::add_token(&token_file, role.name(), role).unwrap())).collect();
        Security { dir, ca, token_file, tokens }
    }

    pub fn ca_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// Node `id`'s certificate and key, issued for `host` on first use.
    pub fn node_files(&self, id: u64, host: &str) -> (PathBuf, PathBuf) {
        let (certificate, key) = (self.dir.join(format!("node-{id}.pem")), self.dir.join(format!("node-{id}-key.pem")));
        if !certificate.exists() {
            let issued = self.ca.issue_node(keel_core::NodeId(id), &[host.to_string()]).unwrap();
            std::fs::write(&certificate, issued.certificate_pem).unwrap();
            std::fs::write(&key, issued.key_pem).unwrap();
        }
        (certificate, key)
    }

    /// How a client with a token of `role` calls the cluster.
    pub fn client(&self, role: Role) -> ClientSecurity {
        let ca = self.ca_path();
        let mut security = ClientSecurity::load(true, Some(&ca), None, None, None).unwrap();
        security.token = Some(self.tokens[&role].clone());
        security
    }
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub nodes: BTreeMap<u64, Node>,
    pub extra_args: Vec<String>,
    /// HTTP(S) for the helpers; with security, it sends the admin token.
    pub http: reqwest::Client,
    pub security: Option<Security>,
    /// With a fabric, each node runs in a network namespace of its own (see fabric.rs);
    /// without, all on 127.0.0.1. Last, so it is dropped after the processes.
    pub fabric: Option<fabric::Fabric>,
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|error| panic!("not JSON ({error}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Asserts an error reply in the documented shape and returns its `error` code.
    pub fn error_code(&self) -> String {
        let json = self.json();
        for field in ["error", "message", "leader_hint", "leader_addr", "outcome"] {
            assert!(json.get(field).is_some(), "error reply without {field:?}: {json}");
        }
        json["error"].as_str().expect("error is a string").to_string()
    }
}

impl Cluster {
    /// Starts `size` nodes and waits for a leader.
    pub async fn start(size: u64, extra_args: &[&str]) -> Cluster {
        let cluster = Cluster::spawn(size, extra_args);
        cluster.wait_for_leader().await;
        cluster
    }

    /// Starts `size` nodes with TLS and tokens on, and waits for a leader.
    pub async fn start_secure(size: u64, extra_args: &[&str]) -> Cluster {
        let cluster = Cluster::spawn_with(size, extra_args, None, true);
        cluster.wait_for_leader().await;
        cluster
    }

    /// Starts the processes without waiting for anything.
    pub fn spawn(size: u64, extra_args: &[&str]) -> Cluster {
        Cluster::spawn_with(size, extra_args, None, false)
    }

    /// Like `spawn`, each node in a network namespace of its own (needs root; see fabric.rs).
    pub fn spawn_on_fabric(size: u64, extra_args: &[&str]) -> Cluster {
        Cluster::spawn_with(size, extra_args, Some(fabric::Fabric::new(size)), false)
    }

    pub fn spawn_with(size: u64, extra_args: &[&str], fabric: Option<fabric::Fabric>, secure: bool) -> Cluster {
        let port = |_| if fabric.is_some() { fabric::PORT } else { free_port() };
        let nodes = (1..=size).map(|id| (id, Node { id, port: port(id), child: None, join_via: None })).collect();
        let dir = tempfile::tempdir().unwrap();
        let security = secure.then(|| Security::new(dir.path().join("security")));
        let mut http = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(15));
        if let Some(security) = &security {
            let admin = security.client(Role::Admin);
            http = http.use_preconfigured_tls((*admin.tls.unwrap()).clone());
            let mut headers = reqwest::header::HeaderMap::new();
            headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {}", admin.token.unwrap()).parse().unwrap());
            http = http.default_headers(headers);
        }
        let http = http.build().unwrap();
        let extra_args = extra_args.iter().map(|arg| arg.to_string()).collect();
        let mut cluster = Cluster { dir, nodes, extra_args, http, security, fabric };
        for id in 1..=size {
            cluster.start_node(id);
        }
        cluster
    }

    pub fn ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    pub fn running(&self) -> Vec<u64> {
        self.nodes.values().filter(|node| node.child.is_some()).map(|node| node.id).collect()
    }

    pub fn addr(&self, id: u64) -> String {
        match &self.fabric {
            Some(fabric) => fabric.address(id),
            None => format!("127.0.0.1:{}", self.nodes[&id].port),
        }
    }

    pub fn scheme(&self) -> &'static str {
        if self.security.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// `scheme://host:port` of node `id`.
    pub fn url(&self, id: u64) -> String {
        format!("{}://{}", self.scheme(), self.addr(id))
    }

    /// How a client of this cluster calls it (the admin token, in a secure cluster).
    pub fn client_security(&self) -> ClientSecurity {
        self.security.as_ref().map(|security| security.client(Role::Admin)).unwrap_or_default()
    }

    pub fn endpoints(&self) -> String {
        self.ids().iter().map(|id| self.addr(*id)).collect::<Vec<_>>().join(",")
    }

    pub fn peers(&self) -> String {
        self.ids().iter().map(|id| format!("{id}={}", self.addr(*id))).collect::<Vec<_>>().join(",")
    }

    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("node{id}"))
    }

    pub fn log_path(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("node{id}.log"))
    }

    pub fn log(&self, id: u64) -> String {
        std::fs::read_to_string(self.log_path(id)).unwrap_or_default()
    }

    pub fn start_node(&mut self, id: u64) {
        assert!(self.nodes[&id].child.is_none(), "node {id} already runs");
        let log = File::options().create(true).append(true).open(self.log_path(id)).unwrap();
        let mut command = match &self.fabric {
            Some(fabric) => fabric.command(id, BINARY),
            None => std::process::Command::new(BINARY),
        };
        let joining = self.nodes[&id].join_via.clone().filter(|_| !self.data_dir(id).join("cluster.json").exists());
        let membership = match &joining {
            Some(via) => vec!["--join".to_string(), via.clone(), "--listen".to_string(), self.addr(id)],
            None => vec!["--peers".to_string(), self.peers()],
        };
        let security = self.security_args(id);
        let child = command
            .arg("serve")
            .args(["--id", &id.to_string(), "--data-dir", self.data_dir(id).to_str().unwrap()])
            .args(&membership)
            .args(&security)
            .args(&self.extra_args)
            .env("KEEL_LOG_LEVEL", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawning keel serve");
        self.nodes.get_mut(&id).unwrap().child = Some(child);
    }

    /// The TLS and token flags of node `id` in a secure cluster.
    fn security_args(&self, id: u64) -> Vec<String> {
        let Some(security) = &self.security else { return Vec::new() };
        let address = self.addr(id);
        let host = address.rsplit_once(':').unwrap().0;
        let (certificate, key) = security.node_files(id, host);
        let path = |path: &PathBuf| path.to_str().unwrap().to_string();
        let (certificate, key, ca, tokens) = (path(&certificate), path(&key), path(&security.ca_path()), path(&security.token_file));
        [["--peer-cert", &certificate], ["--peer-key", &key], ["--peer-ca", &ca], ["--client-cert", &certificate], ["--client-key", &key], ["--auth-tokens", &tokens]].iter().flatten().map(|arg| arg.to_string()).collect()
    }

    /// SIGKILL: a crash.
    pub fn kill_node(&mut self, id: u64) {
        let mut child = self.nodes.get_mut(&id).unwrap().child.take().expect("node runs");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Sends `signal` (`STOP`, `CONT`...) to a running node.
    pub fn signal_node(&self, id: u64, signal: &str) {
        let child = self.nodes[&id].child.as_ref().expect("node runs");
        let status = std::process::Command::new("kill").args([&format!("-{signal}"), &child.id().to_string()]).status().unwrap();
        assert!(status.success(), "kill -{signal} node {id}");
    }

    /// SIGTERM; waits for the exit and returns its code.
    pub fn terminate_node(&mut self, id: u64) -> Option<i32> {
        let mut child = self.nodes.get_mut(&id).unwrap().child.take().expect("node runs");
        let status = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
        assert!(status.success());
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.code();
            }
            if started.elapsed() > WAIT {
                child.kill().unwrap();
                panic!("node {id} did not exit within {WAIT:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub async fn call(&self, id: u64, method: Method, path: &str, body: Option<Vec<u8>>) -> Reply {
        self.call_at(&self.addr(id), method, path, body).await
    }

    pub async fn call_at(&self, address: &str, method: Method, path: &str, body: Option<Vec<u8>>) -> Reply {
        let mut request = self.http.request(method.clone(), format!("{}://{address}{path}", self.scheme()));
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = request.send().await.unwrap_or_else(|error| panic!("{method} {address}{path}: {error}"));
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.bytes().await.unwrap().to_vec();
        Reply { status, headers, body }
    }

    pub async fn try_status(&self, id: u64) -> Option<Value> {
        try_status_at(&self.http, &self.url(id)).await
    }

    pub async fn status(&self, id: u64) -> Value {
        self.call(id, Method::GET, "/v1/status", None).await.json()
    }

    /// The leader every running node agrees on (and which says it leads).
    pub async fn wait_for_leader(&self) -> u64 {
        self.wait_for_leader_among(&self.running()).await
    }

    pub async fn wait_for_leader_among(&self, ids: &[u64]) -> u64 {
        let nodes: Vec<(u64, String)> = ids.iter().map(|id| (*id, self.url(*id))).collect();
        eventually("one leader that every running node knows", WAIT, || async { agreed_leader_at(&self.http, &nodes).await.map(|(leader, _)| leader) }).await
    }

    pub async fn followers(&self) -> (u64, Vec<u64>) {
        let leader = self.wait_for_leader().await;
        (leader, self.running().into_iter().filter(|id| *id != leader).collect())
    }

    /// Waits until every running node applied the same index, which is at least `index`;
    /// returns it.
    pub async fn wait_for_applied(&self, index: u64) -> u64 {
        let ids = self.running();
        eventually(&format!("every node applied index {index}"), WAIT, || async {
            let mut applied = Vec::new();
            for id in &ids {
                let status = self.try_status(*id).await?;
                applied.push((status["applied_index"].as_u64()?, status["last_log_index"].as_u64()?));
            }
            let first = applied[0];
            (first.0 >= index && first.0 == first.1 && applied.iter().all(|other| *other == first)).then_some(first.0)
        })
        .await
    }

    /// This node's own value, without asking the leader.
    /// A membership change or transfer through the API (via `keel`'s client, which follows
    /// the leader), retried while the cluster says "not yet": a change or transfer in
    /// flight, a learner still catching up, no leader. After an attempt whose outcome is
    /// unknown, an "already done" answer means it was done.
    pub async fn change_membership(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        use keel_server::client::{Client, ClientError};
        let endpoints: Vec<String> = self.running().iter().map(|id| self.addr(*id)).collect();
        let mut client = Client::with_security(&endpoints, Duration::from_secs(3), &self.client_security());
        let started = Instant::now();
        let mut uncertain = false;
        loop {
            match client.change(method.clone(), path, body.clone()).await {
                Ok(answer) => return answer,
                Err(ClientError::Refused { code, .. }) if uncertain && (code == "already_member" || code == "unknown_member") => return Value::Null,
                Err(ClientError::Refused { status: 409, code, .. }) if code != "already_member" && code != "address_in_use" => {}
                Err(ClientError::Unavailable(_)) => {}
                Err(ClientError::OutcomeUnknown(_)) => uncertain = true,
                Err(error) => panic!("{method} {path}: {error}"),
            }
            assert!(started.elapsed() < 3 * WAIT, "{method} {path} not accepted within {:?}", 3 * WAIT);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A new node slot `id`, started empty to join through a running member, then added
    /// as a learner and promoted once caught up (what `run_cluster.sh addnode` does).
    pub async fn add_node(&mut self, id: u64) {
        assert!(!self.nodes.contains_key(&id), "node {id} exists");
        let via = self.addr(*self.running().first().expect("a member runs"));
        let port = free_port();
        self.nodes.insert(id, Node { id, port, child: None, join_via: Some(via) });
        self.start_node(id);
        let address = self.addr(id);
        self.change_membership(Method::POST, "/v1/members", Some(serde_json::json!({ "id": id, "address": address }))).await;
        self.change_membership(Method::POST, &format!("/v1/members/{id}/promote"), None).await;
    }

    /// Removes member `id` through the API; the process keeps running (the caller stops it).
    pub async fn remove_member(&self, id: u64) {
        self.change_membership(Method::DELETE, &format!("/v1/members/{id}"), None).await;
    }

    pub async fn stale_get(&self, id: u64, key: &str) -> Option<Vec<u8>> {
        let reply = self.call(id, Method::GET, &format!("/v1/kv/{}?consistency=stale", keel_server::client::encode_key(key)), None).await;
        match reply.status {
            StatusCode::OK => Some(reply.body),
            StatusCode::NOT_FOUND => None,
            other => panic!("stale read on node {id}: {other} {}", reply.text()),
        }
    }

    pub fn client(&self) -> keel_server::client::Client {
        let endpoints: Vec<String> = self.ids().iter().map(|id| self.addr(*id)).collect();
        keel_server::client::Client::with_security(&endpoints, Duration::from_secs(15), &self.client_security())
    }

    /// Stops every node with SIGTERM (asserting a clean exit) and reads each one's log from
    /// its data directory.
    /// SIGTERMs every node (a leader hands over first, so the last leader's log may end
    /// with one more no-op: see `agreed_log`) and reads every log.
    pub fn stop_and_read_logs(&mut self) -> BTreeMap<u64, Vec<Entry>> {
        for id in self.running() {
            assert_eq!(self.terminate_node(id), Some(0), "node {id} exits cleanly on SIGTERM");
        }
        self.ids().into_iter().map(|id| (id, read_log(&self.data_dir(id)))).collect()
    }

    /// `keel` as a client, with this cluster's endpoints.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        let mut command = std::process::Command::new(BINARY);
        command.args(args).env("KEEL_ENDPOINTS", self.endpoints()).env("KEEL_TIMEOUT_MS", "15000");
        if let Some(security) = &self.security {
            command.env("KEEL_CACERT", security.ca_path()).env("KEEL_TOKEN", &security.tokens[&Role::Admin]);
        }
        command.output().expect("running keel")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in self.nodes.values_mut() {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if std::thread::panicking() {
            for id in self.ids() {
                eprintln!("----- node {id} log -----\n{}", self.log(id));
            }
        }
    }
}

/// A stopped node's log, as its storage recovers it (no snapshot expected in these tests).
pub fn read_log(dir: &std::path::Path) -> Vec<Entry> {
    let storage = FileStorage::open(dir, FileStorageConfig::default()).unwrap_or_else(|error| panic!("opening {}: {error}", dir.display()));
    let state = storage.initial_state().unwrap();
    assert!(state.snapshot.is_none(), "these tests keep the whole log");
    state.entries
}

/// The state a log leads to when every entry in it is applied.
pub fn replay(entries: &[Entry]) -> KvStore {
    use keel_core::StateMachine;
    let mut store = KvStore::new();
    for entry in entries {
        store.apply(entry);
    }
    store
}

pub fn decode(entry: &Entry) -> Option<Command> {
    match &entry.kind {
        EntryKind::Noop | EntryKind::Config(_) => None,
        EntryKind::Command(bytes) => Some(Command::decode(bytes).expect("a valid command")),
    }
}
