//! Security over real processes (issue 19): peers prove who they are with certificates from
//! the cluster CA, clients speak HTTPS, tokens decide what a client may do, and settings
//! that cannot work stop a node at start with one line.

mod common;

use common::{assert_start_failure, eventually, free_port, serve, Cluster, BINARY, WAIT};
use keel_core::{Message, MessageBody, NodeId, Term};
use keel_node::tls::{Identity, PEER_ALPN};
use keel_node::transport_http::{encode_frame, open_stream, STREAM_PATH};
use keel_server::auth::Role;
use keel_server::client::{Client, ClientError};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use reqwest::{Method, StatusCode};
use std::path::Path;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

const CLUSTER_ID: &str = "keel-local";

/// A client that dials a node as a peer would: trusts `ca`, presents `identity` (if any),
/// offers the peer ALPN.
fn peer_client(ca: &Path, identity: Option<(&Path, &Path)>) -> reqwest::Client {
    let roots = keel_node::tls::load_roots(ca).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(keel_node::tls::crypto_provider()).with_safe_default_protocol_versions().unwrap().with_root_certificates(roots);
    let mut config = match identity {
        Some((certificate, key)) => {
            let identity = Identity::load(certificate, key).unwrap();
            builder.with_client_auth_cert(identity.chain, identity.key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![PEER_ALPN.to_vec()];
    reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(5)).use_preconfigured_tls(config).build().unwrap()
}

fn vote_request(from: u64, to: u64, term: u64) -> Message {
    let body = MessageBody::RequestVote { pre_vote: false, last_log_index: keel_core::LogIndex(1_000_000), last_log_term: Term(term), leadership_transfer: false };
    Message { from: NodeId(from), to: NodeId(to), term: Term(term), body }
}

/// Term and leader, as every node reports them.
async fn term_and_leader(cluster: &Cluster) -> (u64, u64) {
    let leader = cluster.wait_for_leader().await;
    (cluster.status(leader).await["term"].as_u64().unwrap(), leader)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_without_the_right_certificate_are_refused_and_the_cluster_keeps_its_leader() {
    let cluster = Cluster::start_secure(3, &["--election-timeout-ms", "1000"]).await;
    let security = cluster.security.as_ref().unwrap();
    let before = term_and_leader(&cluster).await;
    let target = before.1;
    let url = format!("https://{}{STREAM_PATH}", cluster.addr(target));
    let claimed = NodeId(if target == 1 { 2 } else { 1 });
    // Each tries to open a stream as `claimed` and send it a vote request of a far higher
    // term: had any got through, the leader would have stepped down.
    let mut attempts = Vec::new();
    let other_ca = tempfile::tempdir().unwrap();
    let stranger = keel_node::certificates::DevCa::new().unwrap().issue_node(claimed, &["127.0.0.1".into()]).unwrap();
    let (stranger_certificate, stranger_key) = (other_ca.path().join("node.pem"), other_ca.path().join("node-key.pem"));
    std::fs::write(&stranger_certificate, &stranger.certificate_pem).unwrap();
    std::fs::write(&stranger_key, &stranger.key_pem).unwrap();
    attempts.push(("a certificate from another CA", peer_client(&security.ca_path(), Some((&stranger_certificate, &stranger_key)))));
    attempts.push(("no certificate", peer_client(&security.ca_path(), None)));
    let third = (1..=3).find(|id| *id != target && *id != claimed.0).unwrap();
    let (third_certificate, third_key) = security.node_files(third, "127.0.0.1");
    attempts.push(("another node's certificate", peer_client(&security.ca_path(), Some((&third_certificate, &third_key)))));
    for (what, client) in &attempts {
        match open_stream(client, &url, CLUSTER_ID, claimed).await {
            Ok(mut stream) => {
                let mut frame = Vec::new();
                encode_frame(&[vote_request(claimed.0, target, before.0 + 100)], &mut frame);
                let _ = stream.write_all(&frame).await;
                panic!("{what}: the stream was accepted");
            }
            Err(problem) => eprintln!("{what}: refused ({problem})"),
        }
    }
    // A client certificate of the CA is no peer either.
    let client_pem = security.dir.join("client.pem");
    let client_issued = security.ca.issue_client("someone").unwrap();
    std::fs::write(&client_pem, &client_issued.certificate_pem).unwrap();
    std::fs::write(security.dir.join("client-key.pem"), &client_issued.key_pem).unwrap();
    let as_client = peer_client(&security.ca_path(), Some((&client_pem, &security.dir.join("client-key.pem"))));
    assert!(open_stream(&as_client, &url, CLUSTER_ID, claimed).await.is_err(), "a client certificate");

    let log = cluster.log(target);
    assert!(log.contains("refused a connection from"), "failed handshakes are logged:\n{log}");
    assert!(log.contains(&format!("refused a stream claiming to be from node {claimed}")), "a wrong identity is logged:\n{log}");
    let after = term_and_leader(&cluster).await;
    assert_eq!(after, before, "the cluster kept its leader and term");
    // And it still works.
    cluster.client().put("still", b"here").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_to_a_tls_port_is_refused() {
    let cluster = Cluster::start_secure(3, &[]).await;
    let plain = reqwest::Client::builder().no_proxy().build().unwrap();
    for path in ["/v1/status", "/v1/kv/a", STREAM_PATH] {
        let answer = plain.get(format!("http://{}{path}", cluster.addr(1))).send().await.unwrap();
        assert_eq!(answer.status(), StatusCode::BAD_REQUEST, "{path}");
        let body: serde_json::Value = answer.json().await.unwrap();
        assert_eq!((body["error"].as_str(), body["outcome"].as_str()), (Some("tls_required"), Some("not_applied")), "{path}");
    }
    let stream = open_stream(&plain, &format!("http://{}{STREAM_PATH}", cluster.addr(2)), CLUSTER_ID, NodeId(1)).await;
    assert!(stream.is_err(), "no plaintext peer stream");
}

/// One request with `role`'s token (or `token` verbatim), to node `id`.
async fn call_as(cluster: &Cluster, id: u64, token: Option<&str>, method: Method, path: &str, body: Option<&str>) -> (StatusCode, serde_json::Value, reqwest::header::HeaderMap) {
    let ca = cluster.security.as_ref().unwrap().client(Role::Read).tls.unwrap();
    let http = reqwest::Client::builder().no_proxy().use_preconfigured_tls((*ca).clone()).build().unwrap();
    let mut request = http.request(method, format!("{}{path}", cluster.url(id)));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.body(body.to_string());
    }
    let answer = request.send().await.unwrap();
    let (status, headers) = (answer.status(), answer.headers().clone());
    let text = answer.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)), headers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_decide_what_a_client_may_do_and_nothing_refused_is_applied() {
    let cluster = Cluster::start_secure(3, &["--election-timeout-ms", "1000"]).await;
    let tokens = &cluster.security.as_ref().unwrap().tokens;
    let (leader, followers) = cluster.followers().await;
    let (read, readwrite, admin) = (tokens[&Role::Read].as_str(), tokens[&Role::Readwrite].as_str(), tokens[&Role::Admin].as_str());
    cluster.client().put("k", b"original").await.unwrap();
    let commit_before = cluster.status(leader).await["commit_index"].as_u64().unwrap();

    for node in [leader, followers[0]] {
        let (status, body, headers) = call_as(&cluster, node, None, Method::GET, "/v1/kv/k", None).await;
        assert_eq!((status, body["error"].as_str(), body["outcome"].as_str()), (StatusCode::UNAUTHORIZED, Some("unauthorized"), Some("not_applied")), "node {node}: no token");
        assert_eq!(headers["www-authenticate"], "Bearer");
        let (status, _, _) = call_as(&cluster, node, Some("keel_not-a-token"), Method::GET, "/v1/kv/k", None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "node {node}: an unknown token");
        let (status, body, _) = call_as(&cluster, node, Some(read), Method::GET, "/v1/kv/k", None).await;
        assert_eq!((status, body), (StatusCode::OK, serde_json::Value::String("original".into())), "node {node}: read may read");
        // A read token cannot write, directly or through a follower's forwarding.
        for (method, path, body) in [(Method::PUT, "/v1/kv/k", Some("changed")), (Method::DELETE, "/v1/kv/k", None), (Method::POST, "/v1/kv/k/cas", Some(r#"{"expected":"original","value":"changed"}"#)), (Method::POST, "/client/submit", Some(r#"{"command":"SET k changed"}"#))] {
            let (status, answer, _) = call_as(&cluster, node, Some(read), method.clone(), path, body).await;
            assert_eq!((status, answer["error"].as_str(), answer["outcome"].as_str()), (StatusCode::FORBIDDEN, Some("forbidden"), Some("not_applied")), "node {node}: read token {method} {path}");
        }
        // A readwrite token cannot change membership or move the leader.
        for (method, path, body) in [(Method::POST, "/v1/members", Some(r#"{"id":9,"address":"127.0.0.1:1"}"#)), (Method::DELETE, "/v1/members/3", None), (Method::POST, "/v1/members/3/promote", None), (Method::POST, "/v1/leader/transfer", Some("{}"))] {
            let (status, answer, _) = call_as(&cluster, node, Some(readwrite), method.clone(), path, body).await;
            assert_eq!((status, answer["error"].as_str()), (StatusCode::FORBIDDEN, Some("forbidden")), "node {node}: readwrite token {method} {path}");
        }
        let (status, _, _) = call_as(&cluster, node, Some(readwrite), Method::GET, "/v1/members", None).await;
        assert_eq!(status, StatusCode::OK, "listing members is a read");
    }
    let status = cluster.status(leader).await;
    assert_eq!(status["commit_index"].as_u64().unwrap(), commit_before, "nothing refused reached the log");
    assert_eq!(status["leader_id"].as_u64(), Some(leader), "no transfer happened");
    let (_, value, _) = call_as(&cluster, followers[1], Some(admin), Method::GET, "/v1/kv/k", None).await;
    assert_eq!(value, serde_json::Value::String("original".into()));

    // Rights that suffice: readwrite writes (through a follower too), admin transfers.
    let (status, _, _) = call_as(&cluster, followers[0], Some(readwrite), Method::PUT, "/v1/kv/k", Some("written")).await;
    assert_eq!(status, StatusCode::OK);
    let (status, answer, _) = call_as(&cluster, followers[0], Some(admin), Method::POST, "/v1/leader/transfer", Some(&format!(r#"{{"to":{}}}"#, followers[1]))).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert!(!cluster.log(leader).contains(admin) && !cluster.log(followers[0]).contains(readwrite), "tokens are never logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_reloaded_on_sighup_and_the_cli_sends_its_token() {
    let cluster = Cluster::start_secure(3, &[]).await;
    let security = cluster.security.as_ref().unwrap();
    let put = cluster.cli(&["put", "a", "1"]);
    assert!(put.status.success(), "{}", String::from_utf8_lossy(&put.stderr));
    let output = std::process::Command::new(BINARY).args(["get", "a"]).env("KEEL_ENDPOINTS", cluster.endpoints()).env("KEEL_CACERT", security.ca_path()).env_remove("KEEL_TOKEN").output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("401"), "{}", String::from_utf8_lossy(&output.stderr));

    // A token added to the file works once every node has re-read it.
    let added = keel_server::auth::add_token(&security.token_file, "late", Role::Read).unwrap();
    let endpoints: Vec<String> = cluster.ids().iter().map(|id| cluster.addr(*id)).collect();
    let late = {
        let mut client_security = security.client(Role::Read);
        client_security.token = Some(added);
        client_security
    };
    let mut client = Client::with_security(&endpoints, Duration::from_secs(3), &late);
    assert!(matches!(client.get("a", true).await, Err(ClientError::Refused { status: 401, .. })), "not before SIGHUP");
    for id in cluster.ids() {
        cluster.signal_node(id, "HUP");
    }
    eventually("every node accepts the new token", WAIT, || async {
        let mut accepted = 0;
        for endpoint in &endpoints {
            let mut one = Client::with_security(std::slice::from_ref(endpoint), Duration::from_secs(3), &late);
            accepted += usize::from(one.get("a", true).await == Ok(Some(b"1".to_vec())));
        }
        (accepted == endpoints.len()).then_some(())
    })
    .await;
}

/// A peer with a valid certificate is trusted to speak Raft, not to speak it well: garbage
/// and random frames close its streams and cost the nodes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_an_authenticated_peer_is_rejected_without_a_panic() {
    let mut cluster = Cluster::start_secure(3, &[]).await;
    let security = cluster.security.as_ref().unwrap();
    let leader = cluster.wait_for_leader().await;
    let peer = (1..=3).find(|id| *id != leader).unwrap();
    let (certificate, key) = security.node_files(peer, "127.0.0.1");
    let client = peer_client(&security.ca_path(), Some((&certificate, &key)));
    let mut rng = ChaCha8Rng::seed_from_u64(19);
    for target in cluster.ids().into_iter().filter(|id| *id != peer) {
        let url = format!("https://{}{STREAM_PATH}", cluster.addr(target));
        for round in 0..60 {
            let mut stream = open_stream(&client, &url, CLUSTER_ID, NodeId(peer)).await.expect("the peer's own certificate is accepted");
            let bytes: Vec<u8> = match round % 3 {
                // Any bytes at all.
                0 => (0..rng.gen_range(1..512)).map(|_| rng.gen()).collect(),
                // A frame of the right length holding random bytes.
                1 => {
                    let payload: Vec<u8> = (0..rng.gen_range(1..256)).map(|_| rng.gen()).collect();
                    [(payload.len() as u32).to_le_bytes().to_vec(), payload].concat()
                }
                // A well-formed frame whose messages are bit-flipped.
                _ => {
                    let mut frame = Vec::new();
                    encode_frame(&[vote_request(peer, target, rng.gen_range(0..4))], &mut frame);
                    for _ in 0..3 {
                        let at = rng.gen_range(4..frame.len());
                        frame[at] ^= 1 << rng.gen_range(0..8);
                    }
                    frame
                }
            };
            let _ = stream.write_all(&bytes).await;
            let _ = stream.shutdown().await;
        }
    }
    for id in cluster.ids() {
        let node = cluster.nodes.get_mut(&id).unwrap();
        assert!(node.child.as_mut().unwrap().try_wait().unwrap().is_none(), "node {id} still runs");
    }
    cluster.wait_for_leader().await;
    cluster.client().put("after-garbage", b"ok").await.unwrap();
    for id in cluster.ids() {
        assert!(!cluster.log(id).contains("panicked"), "node {id} logged a panic");
    }
}

#[test]
fn secure_settings_that_cannot_work_stop_the_node_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let ca = keel_node::certificates::DevCa::new().unwrap();
    std::fs::write(path("ca.pem"), ca.certificate_pem()).unwrap();
    let node1 = ca.issue_node(NodeId(1), &["127.0.0.1".into()]).unwrap();
    std::fs::write(path("node-1.pem"), &node1.certificate_pem).unwrap();
    std::fs::write(path("node-1-key.pem"), &node1.key_pem).unwrap();
    std::fs::write(path("tokens.toml"), "").unwrap();
    let data = path("data");
    let peers = |id: u64| format!("{id}=127.0.0.1:{}", free_port());
    let base = |id: u64| vec!["--id".to_string(), id.to_string(), "--data-dir".into(), data.clone(), "--peers".into(), peers(id)];
    let with = |id: u64, extra: &[&str]| {
        let mut args = base(id);
        args.extend(extra.iter().map(|arg| arg.to_string()));
        args
    };
    let run = |args: Vec<String>| serve(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let (cert, key, ca_path) = (path("node-1.pem"), path("node-1-key.pem"), path("ca.pem"));
    let peer = |id: u64, cert: &str, key: &str, ca: &str| with(id, &["--peer-cert", cert, "--peer-key", key, "--peer-ca", ca]);

    assert_start_failure(&run(peer(1, &cert, &path("missing-key.pem"), &ca_path)), "missing-key.pem");
    assert_start_failure(&run(peer(1, &cert, &key, &path("missing-ca.pem"))), "missing-ca.pem");
    assert_start_failure(&run(peer(2, &cert, &key, &ca_path)), "node-2.keel");
    let other_ca = path("other-ca.pem");
    std::fs::write(&other_ca, keel_node::certificates::DevCa::new().unwrap().certificate_pem()).unwrap();
    assert_start_failure(&run(peer(1, &cert, &key, &other_ca)), "peer certificate");
    assert_start_failure(&run(with(1, &["--peer-cert", &cert])), "go together");
    assert_start_failure(&run(with(1, &["--client-cert", &cert, "--client-key", &key])), "in clear");
    let mut tokens_in_clear = with(1, &["--auth-tokens", &path("tokens.toml"), "--listen", "0.0.0.0:0"]);
    tokens_in_clear.extend(["--peer-cert", &cert, "--peer-key", &key, "--peer-ca", &ca_path].map(String::from));
    assert_start_failure(&run(tokens_in_clear), "in clear");
    let mut empty_tokens = peer(1, &cert, &key, &ca_path);
    empty_tokens.extend(["--client-cert", &cert, "--client-key", &key, "--auth-tokens", &path("tokens.toml")].map(String::from));
    assert_start_failure(&run(empty_tokens), "tokens.toml");
    assert!(!Path::new(&data).join("cluster.json").exists(), "a node that refused to start founded nothing");
}

/// Regression: `keel serve` once read KEEL_TOKEN_FILE, the variable that holds a *client's*
/// token for `keel` commands, as its token list: a shell set up to call a secure cluster
/// (as `run_cluster.sh start --secure` tells you to) could then not start a plain node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_token_variables_do_not_configure_a_node() {
    let dir = tempfile::tempdir().unwrap();
    let address = format!("127.0.0.1:{}", free_port());
    let mut node = std::process::Command::new(BINARY)
        .args(["serve", "--id", "1", "--peers", &format!("1={address}"), "--data-dir", dir.path().join("data").to_str().unwrap()])
        .env("KEEL_TOKEN_FILE", dir.path().join("missing.token"))
        .env("KEEL_TOKEN", "keel_some-client-token")
        .env("KEEL_CACERT", dir.path().join("missing-ca.pem"))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let exited = std::sync::Mutex::new(None);
    let answered = eventually("the node answers in plain HTTP, without tokens", WAIT, || async {
        let answer = http.get(format!("http://{address}/v1/status")).send().await.ok().map(|answer| answer.status());
        answer.or_else(|| exited.lock().unwrap().take().map(|_| StatusCode::GONE))
    });
    let watching = async {
        loop {
            if let Ok(Some(status)) = node.try_wait() {
                *exited.lock().unwrap() = Some(status);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let answered = tokio::select! {
        answered = answered => answered,
        _ = watching => unreachable!(),
    };
    let _ = node.kill();
    let _ = node.wait();
    assert_eq!(answered, StatusCode::OK, "410 here means the node exited at start");
}

/// `keel bench` against a secure cluster: HTTPS to the leader and the token on every request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keel_bench_speaks_https_with_its_token() {
    let cluster = Cluster::start_secure(3, &[]).await;
    let output = cluster.cli(&["bench", "--clients", "2", "--duration", "1s", "--ratio-reads", "0.5", "--json"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("a JSON report");
    assert_eq!((report["tls"].as_bool(), report["token"].as_bool()), (Some(true), Some(true)));
    for kind in ["writes", "reads"] {
        assert!(report[kind]["ops"].as_u64().unwrap() > 0, "{kind} went through: {report}");
        assert_eq!(report[kind]["errors"], serde_json::json!({}), "no {kind} refused (401/403 would count as errors)");
    }
}
