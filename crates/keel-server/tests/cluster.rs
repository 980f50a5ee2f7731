//! The seed's Day 13 cluster tests, against real `keel serve` processes, through both the
//! v1 API and the seed's API; plus whole-cluster restart and bad input. Forwarding and
//! failover run twice: in plain HTTP, and with peer mTLS, client TLS and tokens on.

mod common;

use common::{decode, eventually, replay, Cluster, Reply, WAIT};
use keel_kv::Command;
use keel_server::client::ClientError;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// A slower election timeout for tests that are not about failover: a loaded machine then
/// does not start elections in the middle of them.
const STABLE: &[&str] = &["--election-timeout-ms", "1000"];

/// `address` is `host:port` (plain HTTP) or a URL's `scheme://host:port`.
async fn send(http: &reqwest::Client, address: &str, method: Method, path: &str, body: Option<Vec<u8>>) -> Reply {
    let base = if address.contains("://") { address.to_string() } else { format!("http://{address}") };
    let mut request = http.request(method, format!("{base}{path}"));
    if let Some(body) = body {
        request = request.body(body);
    }
    let response = request.send().await.unwrap_or_else(|error| panic!("{address}{path}: {error}"));
    let status = response.status();
    let headers = response.headers().clone();
    Reply { status, headers, body: response.bytes().await.unwrap().to_vec() }
}

fn command_body(command: &str) -> Option<Vec<u8>> {
    Some(json!({ "command": command }).to_string().into_bytes())
}

async fn submit(http: &reqwest::Client, address: &str, command: &str) -> Reply {
    send(http, address, Method::POST, "/client/submit", command_body(command)).await
}

async fn put(http: &reqwest::Client, address: &str, key: &str, value: &str) -> Reply {
    send(http, address, Method::PUT, &format!("/v1/kv/{key}"), Some(value.as_bytes().to_vec())).await
}

async fn get(http: &reqwest::Client, address: &str, key: &str) -> Reply {
    send(http, address, Method::GET, &format!("/v1/kv/{key}"), None).await
}

async fn seed_read(http: &reqwest::Client, address: &str, key: &str) -> Reply {
    send(http, address, Method::GET, &format!("/client/read/{key}"), None).await
}

fn index_of(reply: &Reply) -> u64 {
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    reply.json()["index"].as_u64().expect("an index")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_is_elected_and_every_node_agrees() {
    let cluster = Cluster::start(3, STABLE).await;
    let leader = cluster.wait_for_leader().await;
    let mut leaders = 0;
    for id in cluster.ids() {
        let status = cluster.status(id).await;
        assert_eq!(status["id"], id);
        assert_eq!(status["leader_id"], leader);
        if status["role"] == "leader" {
            leaders += 1;
        }
        let seed_status = cluster.call(id, Method::GET, "/client/status", None).await.json();
        assert_eq!(seed_status["node_id"], id);
        assert_eq!(seed_status["state"], if id == leader { "Leader" } else { "Follower" });
        for field in ["term", "commit_index", "last_applied", "log_length"] {
            assert!(seed_status[field].is_u64(), "/client/status has {field}: {seed_status}");
        }
        let seed_leader = cluster.call(id, Method::GET, "/client/leader", None).await.json();
        assert_eq!(seed_leader, json!({ "leader_id": leader, "node_id": id, "is_leader": id == leader }));
        let members = cluster.call(id, Method::GET, "/v1/cluster", None).await.json();
        assert_eq!(members["leader_id"], leader);
        assert_eq!(members["leader_addr"], cluster.addr(leader));
        assert_eq!(members["members"].as_array().unwrap().len(), 3);
    }
    assert_eq!(leaders, 1, "exactly one leader");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_writes_through_both_apis_replicate() {
    let cluster = Cluster::start(3, STABLE).await;
    let leader = cluster.wait_for_leader().await;
    let mut writes = JoinSet::new();
    for i in 0..20u64 {
        let (http, address) = (cluster.http.clone(), cluster.addr(1 + i % 3));
        writes.spawn(async move { index_of(&put(&http, &address, &format!("v1-{i}"), &format!("value-{i}")).await) });
        let (http, address) = (cluster.http.clone(), cluster.addr(leader));
        writes.spawn(async move { index_of(&submit(&http, &address, &format!("SET seed-{i} value {i}")).await) });
    }
    let mut indexes: Vec<u64> = writes.join_all().await;
    indexes.sort();
    indexes.dedup();
    assert_eq!(indexes.len(), 40, "every write got its own log index");
    let last = cluster.wait_for_applied(*indexes.last().unwrap()).await;
    assert!(last >= 41);
    for id in cluster.ids() {
        for i in 0..20 {
            assert_eq!(get(&cluster.http, &cluster.addr(id), &format!("v1-{i}")).await.text(), format!("value-{i}"));
            assert_eq!(cluster.stale_get(id, &format!("seed-{i}")).await.unwrap(), format!("value {i}").into_bytes());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_rapid_fire_writes_get_increasing_indexes() {
    let cluster = Cluster::start(3, STABLE).await;
    let (leader, followers) = cluster.followers().await;
    let mut previous = 0;
    for i in 0..100 {
        let index = index_of(&submit(&cluster.http, &cluster.addr(leader), &format!("SET rapid {i}")).await);
        assert!(index > previous, "indexes increase: {index} after {previous}");
        previous = index;
    }
    for i in 0..100 {
        let index = index_of(&put(&cluster.http, &cluster.addr(followers[0]), "rapid-v1", &i.to_string()).await);
        assert!(index > previous, "indexes increase: {index} after {previous}");
        previous = index;
    }
    assert_eq!(seed_read(&cluster.http, &cluster.addr(leader), "rapid").await.json()["value"], "99");
    assert_eq!(get(&cluster.http, &cluster.addr(followers[1]), "rapid-v1").await.text(), "99");
}

/// Each writer counts its key up 1..=20 in sequence; each reader reads the keys
/// linearizably over and over, through every node. A reader must never see a key go
/// backwards (a linearizable read reflects every write acknowledged before it started).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reads_and_writes_never_go_backwards() {
    let cluster = Cluster::start(3, STABLE).await;
    let leader = cluster.wait_for_leader().await;
    let writers_done = Arc::new(AtomicBool::new(false));
    let mut writers = JoinSet::new();
    for writer in 0..5u64 {
        let (http, addresses) = (cluster.http.clone(), cluster.ids().iter().map(|id| cluster.addr(*id)).collect::<Vec<_>>());
        writers.spawn(async move {
            for count in 1..=20u64 {
                let address = &addresses[(count % 3) as usize];
                index_of(&put(&http, address, &format!("counter-{writer}"), &count.to_string()).await);
            }
        });
    }
    let mut readers = JoinSet::new();
    for reader in 0..4u64 {
        let (http, addresses, done) = (cluster.http.clone(), cluster.ids().iter().map(|id| cluster.addr(*id)).collect::<Vec<_>>(), writers_done.clone());
        let leader_address = cluster.addr(leader);
        readers.spawn(async move {
            let mut seen = [0u64; 5];
            let mut reads = 0;
            while !done.load(Ordering::SeqCst) || reads == 0 {
                for writer in 0..5 {
                    let value = if reader == 0 {
                        // The seed API, on the leader.
                        let reply = seed_read(&http, &leader_address, &format!("counter-{writer}")).await;
                        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
                        reply.json()["value"].as_str().map(|text| text.parse().unwrap()).unwrap_or(0)
                    } else {
                        let reply = get(&http, &addresses[(reads + writer) % 3], &format!("counter-{writer}")).await;
                        match reply.status {
                            StatusCode::OK => reply.text().parse().unwrap(),
                            StatusCode::NOT_FOUND => 0,
                            other => panic!("read failed: {other} {}", reply.text()),
                        }
                    };
                    assert!(value >= seen[writer], "reader {reader} saw counter-{writer} go back from {} to {value}", seen[writer]);
                    seen[writer] = value;
                }
                reads += 1;
            }
            reads
        });
    }
    writers.join_all().await;
    writers_done.store(true, Ordering::SeqCst);
    let reads = readers.join_all().await;
    assert!(reads.iter().all(|count| *count > 0));
    for writer in 0..5 {
        assert_eq!(get(&cluster.http, &cluster.addr(leader), &format!("counter-{writer}")).await.text(), "20");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_redirect_the_seed_api_and_forward_the_v1_api() {
    followers_redirect_and_forward(Cluster::start(3, STABLE).await).await;
}

/// The same over HTTPS with a token: forwarding goes over the peers' mutual TLS and the
/// leader checks the token the follower passed on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_redirect_and_forward_with_tls_and_tokens() {
    followers_redirect_and_forward(Cluster::start_secure(3, STABLE).await).await;
}

async fn followers_redirect_and_forward(cluster: Cluster) {
    let (leader, followers) = cluster.followers().await;
    let follower = cluster.url(followers[0]);

    // Seed API: leader-only, 421 with the hint.
    let refused = submit(&cluster.http, &follower, "SET k v").await;
    assert_eq!(refused.status, StatusCode::MISDIRECTED_REQUEST);
    assert_eq!(refused.error_code(), "not_leader");
    assert_eq!(refused.json()["leader_hint"], leader);
    assert_eq!(refused.json()["leader_addr"], cluster.addr(leader));
    assert_eq!(refused.json()["outcome"], "not_applied");
    let refused_read = seed_read(&cluster.http, &follower, "k").await;
    assert_eq!((refused_read.status, refused_read.error_code()), (StatusCode::MISDIRECTED_REQUEST, "not_leader".to_string()));
    assert_eq!(refused_read.json()["leader_hint"], leader);
    assert!(seed_read(&cluster.http, &cluster.url(leader), "k").await.json()["value"].is_null(), "the refused write was not applied");

    // v1 API: the follower forwards, and says where the leader is.
    let forwarded = put(&cluster.http, &follower, "k", "forwarded").await;
    assert_eq!(forwarded.headers["x-keel-leader-addr"].to_str().unwrap(), cluster.addr(leader));
    let index = index_of(&forwarded);
    let read = get(&cluster.http, &follower, "k").await;
    assert_eq!((read.status, read.text()), (StatusCode::OK, "forwarded".to_string()));
    assert!(read.headers["x-keel-index"].to_str().unwrap().parse::<u64>().unwrap() >= index);
    let cas = |expected: Value, value: Value| {
        let body = json!({ "expected": expected, "value": value }).to_string().into_bytes();
        send(&cluster.http, &follower, Method::POST, "/v1/kv/k/cas", Some(body))
    };
    let won = cas(json!("forwarded"), json!("swapped")).await;
    assert_eq!((won.status, won.json()["succeeded"].clone()), (StatusCode::OK, json!(true)));
    let lost = cas(json!("forwarded"), json!("again")).await;
    assert_eq!(lost.status, StatusCode::CONFLICT);
    assert_eq!((lost.json()["succeeded"].clone(), lost.json()["current"].clone()), (json!(false), json!("swapped")));
    let deleted = send(&cluster.http, &follower, Method::DELETE, "/v1/kv/k", None).await;
    assert_eq!(deleted.json()["deleted"], true);
    let deleted_again = send(&cluster.http, &follower, Method::DELETE, "/v1/kv/k", None).await;
    assert_eq!(deleted_again.json()["deleted"], false);
    let absent = cas(Value::Null, json!("created")).await;
    assert_eq!(absent.json()["succeeded"], true, "null expected: the key must be absent");

    // A stale read is served by the follower itself, once it applied the write.
    eventually("the follower applies the write", WAIT, || async { (cluster.stale_get(followers[1], "k").await == Some(b"created".to_vec())).then_some(()) }).await;
}

/// Kills the leader's process while a client keeps writing: a new leader takes over,
/// writes continue, and once the old leader is back every node holds the same log and state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_failover_with_writes_in_flight_keeps_every_acknowledged_write() {
    failover_with_writes_in_flight(Cluster::start(3, &[]).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_failover_with_tls_and_tokens_keeps_every_acknowledged_write() {
    failover_with_writes_in_flight(Cluster::start_secure(3, &[]).await).await;
}

async fn failover_with_writes_in_flight(mut cluster: Cluster) {
    let old_leader = cluster.wait_for_leader().await;
    let old_term = cluster.status(old_leader).await["term"].as_u64().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let unknown = Arc::new(Mutex::new(Vec::new()));
    let mut client = cluster.client();
    let writer = {
        let (stop, acknowledged, unknown) = (stop.clone(), acknowledged.clone(), unknown.clone());
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let key = format!("failover-{i}");
                match client.put(&key, key.as_bytes()).await {
                    Ok(_) => acknowledged.lock().unwrap().push(key),
                    Err(ClientError::OutcomeUnknown(_)) => unknown.lock().unwrap().push(key),
                    Err(error) => panic!("write {key} failed: {error}"),
                }
                i += 1;
            }
        })
    };
    let count = || acknowledged.lock().unwrap().len();
    eventually("10 writes before the crash", WAIT, || async { (count() >= 10).then_some(()) }).await;
    cluster.kill_node(old_leader);
    let at_kill = count();
    let survivors: Vec<u64> = cluster.running();
    let new_leader = cluster.wait_for_leader_among(&survivors).await;
    assert_ne!(new_leader, old_leader);
    assert!(cluster.status(new_leader).await["term"].as_u64().unwrap() > old_term);
    eventually("20 more writes after the crash", WAIT, || async { (count() >= at_kill + 20).then_some(()) }).await;
    stop.store(true, Ordering::SeqCst);
    writer.await.expect("the writer never failed");

    cluster.start_node(old_leader);
    let applied = cluster.wait_for_applied(0).await;
    let acknowledged = acknowledged.lock().unwrap().clone();
    for id in cluster.ids() {
        for key in &acknowledged {
            assert_eq!(cluster.stale_get(id, key).await, Some(key.clone().into_bytes()), "node {id} has {key}");
        }
    }
    let logs = cluster.stop_and_read_logs();
    let first = common::agreed_log(&logs);
    // Stopping appends nothing but the no-op of a leader elected by the hand-over (SIGTERM
    // on a leader transfers leadership first).
    assert!(first.last().unwrap().index.0 >= applied, "every node holds what was applied");
    let after_stop: Vec<_> = first.iter().filter(|entry| entry.index.0 > applied).collect();
    assert!(after_stop.iter().all(|entry| entry.kind == keel_core::EntryKind::Noop), "stopping appended more than hand-over no-ops: {after_stop:?}");
    let state = replay(first);
    for key in unknown.lock().unwrap().iter() {
        eprintln!("write {key} had an unknown outcome; applied: {}", state.get(key).is_some());
    }
}

/// Day 13's last test: 50 concurrent writes to one key. Every node ends with the value of
/// the last such entry in the log, and every log is the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_writes_to_one_key_leave_every_node_with_the_last_logged_value() {
    let mut cluster = Cluster::start(3, STABLE).await;
    let leader = cluster.wait_for_leader().await;
    let mut writes = JoinSet::new();
    for writer in 0..50 {
        let (http, address) = (cluster.http.clone(), cluster.addr(leader));
        writes.spawn(async move { (index_of(&submit(&http, &address, &format!("SET contested_key writer_{writer}")).await), writer) });
    }
    let replies = writes.join_all().await;
    let (last_index, last_writer) = *replies.iter().max().unwrap();
    cluster.wait_for_applied(last_index).await;
    let expected = format!("writer_{last_writer}").into_bytes();
    for id in cluster.ids() {
        assert_eq!(cluster.stale_get(id, "contested_key").await, Some(expected.clone()), "node {id}");
    }

    let logs = cluster.stop_and_read_logs();
    let log = common::agreed_log(&logs);
    let contested: Vec<(u64, Vec<u8>)> = log
        .iter()
        .filter_map(|entry| match decode(entry) {
            Some(Command::Set { key, value }) if key == "contested_key" => Some((entry.index.0, value)),
            _ => None,
        })
        .collect();
    assert_eq!(contested.len(), 50, "each write is in the log once");
    assert_eq!(contested.last().unwrap(), &(last_index, expected.clone()), "the last entry is the reply with the highest index");
    let noops = log.iter().filter(|entry| decode(entry).is_none()).count();
    assert_eq!(log.len(), 50 + noops, "the log holds the writes and each leader's no-op");
    assert_eq!(replay(log).get("contested_key"), Some(&expected[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linearizable_reads_refuse_followers_see_writes_and_time_out_without_a_majority() {
    let mut cluster = Cluster::start(3, &["--election-timeout-ms", "1000", "--request-timeout-ms", "1500"]).await;
    let (leader, followers) = cluster.followers().await;
    let (leader_address, follower_address) = (cluster.addr(leader), cluster.addr(followers[0]));

    // Not the leader (seed API).
    let refused = seed_read(&cluster.http, &follower_address, "missing").await;
    assert_eq!((refused.status, refused.error_code()), (StatusCode::MISDIRECTED_REQUEST, "not_leader".to_string()));

    // A missing key.
    let missing = seed_read(&cluster.http, &leader_address, "missing").await.json();
    assert_eq!((missing["key"].clone(), missing["value"].clone()), (json!("missing"), Value::Null));
    assert!(missing["read_index"].as_u64().unwrap() >= 1);
    for address in [&leader_address, &follower_address] {
        let missing = get(&cluster.http, address, "missing").await;
        assert_eq!((missing.status, missing.error_code()), (StatusCode::NOT_FOUND, "not_found".to_string()));
        assert!(missing.headers.contains_key("x-keel-index"));
    }

    // After writes: the latest value, on the leader and through a follower.
    for i in 1..=5 {
        let index = index_of(&submit(&cluster.http, &leader_address, &format!("SET latest {i}")).await);
        let read = seed_read(&cluster.http, &leader_address, "latest").await.json();
        assert_eq!(read["value"], i.to_string());
        assert!(read["read_index"].as_u64().unwrap() >= index);
        assert_eq!(get(&cluster.http, &follower_address, "latest").await.text(), i.to_string());
    }

    // No majority: the leader cannot confirm it still leads, so it must not answer.
    for follower in followers {
        cluster.kill_node(follower);
    }
    let started = Instant::now();
    let read = get(&cluster.http, &leader_address, "latest").await;
    assert_eq!(read.status, StatusCode::SERVICE_UNAVAILABLE, "{}", read.text());
    assert!(["timeout", "leadership_lost", "no_leader"].contains(&read.error_code().as_str()), "{}", read.text());
    assert_eq!(read.json()["outcome"], "not_applied", "a read never applies anything");
    assert!(started.elapsed() < Duration::from_millis(1500 + 2000), "answered within the request timeout");
    let seed = seed_read(&cluster.http, &leader_address, "latest").await;
    assert_eq!(seed.status, StatusCode::SERVICE_UNAVAILABLE, "{}", seed.text());
    let write = put(&cluster.http, &leader_address, "latest", "lost").await;
    assert_eq!(write.status, StatusCode::SERVICE_UNAVAILABLE, "a write without a majority is never acknowledged: {}", write.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_cluster_restart_keeps_all_data() {
    let mut cluster = Cluster::start(3, STABLE).await;
    let mut client = cluster.client();
    for i in 0..30 {
        client.put(&format!("durable-{i}"), format!("value-{i}").as_bytes()).await.unwrap();
    }
    assert!(client.delete("durable-0").await.unwrap());
    assert!(client.cas("durable-1", Some("value-1"), Some("swapped")).await.unwrap().succeeded);
    for id in cluster.ids() {
        assert_eq!(cluster.terminate_node(id), Some(0), "node {id} exits cleanly on SIGTERM");
    }
    for id in cluster.ids() {
        cluster.start_node(id);
    }
    cluster.wait_for_leader().await;
    let mut client = cluster.client();
    assert_eq!(client.get("durable-0", false).await.unwrap(), None);
    assert_eq!(client.get("durable-1", false).await.unwrap(), Some(b"swapped".to_vec()));
    for i in 2..30 {
        assert_eq!(client.get(&format!("durable-{i}"), false).await.unwrap(), Some(format!("value-{i}").into_bytes()));
    }
    let applied = cluster.wait_for_applied(0).await;
    for id in cluster.ids() {
        assert_eq!(cluster.stale_get(id, "durable-29").await, Some(b"value-29".to_vec()), "node {id} applied up to {applied}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_get_their_documented_status_and_the_cluster_keeps_serving() {
    let cluster = Cluster::start(3, &["--election-timeout-ms", "1000", "--value-bytes-max", "1024"]).await;
    let (leader, followers) = cluster.followers().await;
    let term = cluster.status(leader).await["term"].clone();
    for address in [cluster.addr(leader), cluster.addr(followers[0])] {
        let call = |method: Method, path: String, body: Option<Vec<u8>>| {
            let (http, address) = (cluster.http.clone(), address.clone());
            async move { send(&http, &address, method, &path, body).await }
        };
        let expect = |reply: Reply, status: u16, code: &str| {
            assert_eq!(reply.status.as_u16(), status, "{}", reply.text());
            assert_eq!(reply.error_code(), code, "{}", reply.text());
            assert_eq!(reply.json()["outcome"], "not_applied");
        };
        // The seed API (on a follower the input is checked before the leader question).
        expect(call(Method::POST, "/client/submit".into(), Some(b"{not json".to_vec())).await, 400, "bad_request");
        expect(call(Method::POST, "/client/submit".into(), command_body("GET x")).await, 400, "bad_request");
        expect(call(Method::POST, "/client/submit".into(), command_body("SET")).await, 400, "bad_request");
        expect(call(Method::POST, "/client/submit".into(), Some(br#"{"cmd": "SET a b"}"#.to_vec())).await, 400, "bad_request");
        expect(call(Method::POST, "/client/submit".into(), command_body(&format!("SET big {}", "x".repeat(1025)))).await, 413, "too_large");
        expect(call(Method::POST, "/client/submit".into(), Some(vec![b'x'; 200_000])).await, 413, "too_large");
        expect(call(Method::POST, "/client/submit".into(), command_body(&format!("SET {} v", "k".repeat(1025)))).await, 400, "bad_request");
        // The v1 API.
        expect(call(Method::PUT, "/v1/kv/big".into(), Some(vec![b'x'; 1025])).await, 413, "too_large");
        expect(call(Method::PUT, "/v1/kv/big".into(), Some(vec![b'x'; 5 << 20])).await, 413, "too_large");
        expect(call(Method::PUT, format!("/v1/kv/{}", "k".repeat(1025)), Some(b"v".to_vec())).await, 400, "bad_request");
        expect(call(Method::GET, format!("/v1/kv/{}", "k".repeat(1025)), None).await, 400, "bad_request");
        expect(call(Method::PUT, "/v1/kv/".into(), Some(b"v".to_vec())).await, 400, "bad_request");
        expect(call(Method::GET, "/v1/kv/a?consistency=sometimes".into(), None).await, 400, "bad_request");
        expect(call(Method::POST, "/v1/kv/a/cas".into(), Some(b"[1,2".to_vec())).await, 400, "bad_request");
        expect(call(Method::POST, "/v1/kv/a/cas".into(), Some(br#"{"value": "v"}"#.to_vec())).await, 400, "bad_request");
        expect(call(Method::POST, "/v1/kv/a/cas".into(), Some(br#"{"expected": 5, "value": "v"}"#.to_vec())).await, 400, "bad_request");
        // Each route's body limit: a compare-and-set's is 2 × 1024 + 64 KiB; a body a route
        // ignores may still be at most 64 KiB.
        expect(call(Method::POST, "/v1/kv/a/cas".into(), Some(vec![b'x'; 100_000])).await, 413, "too_large");
        expect(call(Method::DELETE, "/v1/kv/a".into(), Some(vec![b'x'; 100_000])).await, 413, "too_large");
        // Routes.
        expect(call(Method::GET, "/nope".into(), None).await, 404, "unknown_route");
        expect(call(Method::GET, "/v1/kv/a/b/c".into(), None).await, 404, "unknown_route");
        expect(call(Method::POST, "/v1/status".into(), None).await, 405, "method_not_allowed");
        expect(call(Method::PATCH, "/v1/kv/a".into(), None).await, 405, "method_not_allowed");
        // The limits themselves are allowed.
        index_of(&call(Method::PUT, format!("/v1/kv/{}", "k".repeat(1024)), Some(vec![b'v'; 1024])).await);
    }
    // Garbage on the peer route is refused and does not disturb the node.
    let garbage = cluster.call(leader, Method::GET, "/raft/stream?protocol=garbage", None).await;
    assert_eq!(garbage.status, StatusCode::UPGRADE_REQUIRED);

    let mut client = cluster.client();
    client.put("still", b"serving").await.unwrap();
    for id in cluster.ids() {
        assert_eq!(get(&cluster.http, &cluster.addr(id), "still").await.text(), "serving");
    }
    assert_eq!(cluster.status(leader).await["term"], term, "no election was caused");
}
