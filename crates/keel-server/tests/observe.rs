//! Watching a cluster (issue 20), over real processes: `/metrics` parses as the Prometheus
//! text format and reports what happened, `/ready` follows elections, `/v1/events` tells a
//! leader change, and the live view's data routes answer pages from other nodes.

mod common;

use common::{eventually, Cluster, WAIT};
use keel_server::client::Client;
use prometheus_parse::{LineInfo, Scrape, Value};
use reqwest::{Method, StatusCode};
use std::time::Duration;

/// `GET /metrics` of node `id`, checked line by line and parsed.
async fn scrape(cluster: &Cluster, id: u64) -> Scrape {
    let reply = cluster.call(id, Method::GET, "/metrics", None).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.headers["content-type"].to_str().unwrap().starts_with("application/openmetrics-text"));
    let text = reply.text();
    for line in text.lines().filter(|line| !line.is_empty() && *line != "# EOF") {
        assert!(!matches!(LineInfo::parse(line), LineInfo::Ignored), "not in the text format: {line:?}");
    }
    assert!(text.ends_with("# EOF\n"), "an OpenMetrics exposition ends with # EOF");
    Scrape::parse(text.lines().map(|line| Ok(line.to_string()))).expect("parses")
}

/// The value of the sample named `name` whose labels include `labels`.
fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let sample = scrape.samples.iter().find(|sample| sample.metric == name && labels.iter().all(|(key, value)| sample.labels.get(key) == Some(*value)))?;
    match &sample.value {
        Value::Counter(value) | Value::Gauge(value) | Value::Untyped(value) => Some(*value),
        Value::Histogram(buckets) => buckets.iter().map(|bucket| bucket.count).reduce(f64::max),
        Value::Summary(_) => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_count_what_happened() {
    let cluster = Cluster::start(3, &["--election-timeout-ms", "1000"]).await;
    let (leader, followers) = cluster.followers().await;
    let mut client = Client::new(&[cluster.addr(leader)], Duration::from_secs(10));
    for i in 0..5 {
        client.put(&format!("k{i}"), b"v").await.unwrap();
    }
    for _ in 0..3 {
        client.get("k0", false).await.unwrap();
    }
    let status = cluster.status(leader).await;
    let applied = cluster.wait_for_applied(status["last_log_index"].as_u64().unwrap()).await;

    let metrics = scrape(&cluster, leader).await;
    assert_eq!(value(&metrics, "keel_term", &[]), status["term"].as_f64());
    assert_eq!(value(&metrics, "keel_is_leader", &[]), Some(1.0));
    assert_eq!(value(&metrics, "keel_role", &[("role", "leader")]), Some(1.0));
    assert_eq!(value(&metrics, "keel_role", &[("role", "follower")]), Some(0.0));
    assert_eq!(value(&metrics, "keel_leader_id", &[]), Some(leader as f64));
    assert_eq!(value(&metrics, "keel_commit_index", &[]), Some(applied as f64));
    assert_eq!(value(&metrics, "keel_proposals_total", &[("outcome", "ok")]), Some(5.0), "five writes, all proposed here");
    assert_eq!(value(&metrics, "keel_reads_total", &[("consistency", "linearizable"), ("outcome", "ok")]), Some(3.0));
    assert_eq!(value(&metrics, "keel_elections_won_total", &[]), Some(1.0));
    assert!(value(&metrics, "keel_wal_fsync_seconds", &[]).unwrap() >= 1.0, "every write synced somewhere");
    assert_eq!(value(&metrics, "keel_http_request_duration_seconds", &[("route", "/v1/kv/:key"), ("method", "PUT"), ("status", "200")]), Some(5.0));
    for follower in &followers {
        let id = follower.to_string();
        assert_eq!(value(&metrics, "keel_follower_match_index", &[("follower", &id)]), Some(applied as f64), "follower {id}");
        assert_eq!(value(&metrics, "keel_follower_lag_entries", &[("follower", &id)]), Some(0.0));
    }

    let metrics = scrape(&cluster, followers[0]).await;
    assert_eq!(value(&metrics, "keel_is_leader", &[]), Some(0.0));
    assert_eq!(value(&metrics, "keel_leader_id", &[]), Some(leader as f64));
    assert!(value(&metrics, "keel_votes_granted_total", &[]).unwrap() + value(&metrics, "keel_votes_refused_total", &[]).unwrap() >= 1.0, "it answered the election");
    assert_eq!(value(&metrics, "keel_follower_match_index", &[]), None, "only the leader knows its followers' progress");
    assert_eq!(value(&metrics, "keel_proposals_total", &[]), None, "nothing was proposed on a follower");
}

async fn ready(cluster: &Cluster, id: u64) -> (StatusCode, serde_json::Value) {
    let reply = cluster.call(id, Method::GET, "/ready", None).await;
    (reply.status, reply.json())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_is_false_while_no_leader_can_be_elected_and_true_after() {
    let mut cluster = Cluster::start(3, &[]).await;
    for id in cluster.ids() {
        assert_eq!(ready(&cluster, id).await.0, StatusCode::OK, "node {id} is ready with a leader");
        assert_eq!(cluster.call(id, Method::GET, "/health", None).await.status, StatusCode::OK);
    }
    // Two of three down: the last one's elections cannot succeed.
    let (leader, followers) = cluster.followers().await;
    let survivor = followers[0];
    cluster.kill_node(leader);
    cluster.kill_node(followers[1]);
    let answer = eventually("the survivor to see it has no leader", WAIT, || async {
        let (status, body) = ready(&cluster, survivor).await;
        (status == StatusCode::SERVICE_UNAVAILABLE).then_some(body)
    })
    .await;
    assert_eq!((answer["ready"].as_bool(), answer["reason"].as_str()), (Some(false), Some("no_leader")));
    assert_eq!(cluster.call(survivor, Method::GET, "/health", None).await.status, StatusCode::OK, "it still serves");
    cluster.start_node(leader);
    cluster.wait_for_leader().await;
    eventually("the survivor to be ready again", WAIT, || async { (ready(&cluster, survivor).await.0 == StatusCode::OK).then_some(()) }).await;
}

/// Reads server-sent events from `response` until one satisfies `wanted`.
async fn next_event(response: &mut reqwest::Response, buffer: &mut String, mut wanted: impl FnMut(&serde_json::Value) -> bool) -> serde_json::Value {
    loop {
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            for line in block.lines() {
                if let Some(data) = line.strip_prefix("data: ") {
                    let event: serde_json::Value = serde_json::from_str(data).expect("events are JSON");
                    if wanted(&event) {
                        return event;
                    }
                }
            }
        }
        let chunk = tokio::time::timeout(WAIT, response.chunk()).await.expect("an event in time").expect("the stream").expect("not ended");
        buffer.push_str(&String::from_utf8_lossy(&chunk));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_tells_a_leader_change_and_the_votes_behind_it() {
    let mut cluster = Cluster::start(3, &[]).await;
    let (old_leader, followers) = cluster.followers().await;
    let url = format!("{}/v1/events", cluster.url(followers[0]));
    let mut response = cluster.http.get(&url).timeout(Duration::from_secs(60)).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    assert_eq!(response.headers()["access-control-allow-origin"], "*", "pages served by other nodes may listen");
    let mut buffer = String::new();
    let hello = next_event(&mut response, &mut buffer, |_| true).await;
    assert_eq!((hello["kind"].as_str(), hello["node"].as_u64()), (Some("hello"), Some(followers[0])));

    cluster.kill_node(old_leader);
    // Before it learns of the new leader, this follower took part in the election: it voted
    // (and the event names the rule), or it ran and won.
    let mut seen = Vec::new();
    let change = next_event(&mut response, &mut buffer, |event| {
        let is_change = event["kind"] == "role_changed" && event["leader"].as_u64().is_some_and(|leader| leader != old_leader);
        if !is_change {
            seen.push(event.clone());
        }
        is_change
    })
    .await;
    assert!(change["seq"].as_u64().unwrap() > 0 && change["at_ms"].as_u64().unwrap() > 0, "{change}");
    let winner = change["leader"].as_u64().unwrap();
    assert_eq!(winner, cluster.wait_for_leader().await);
    let voted = seen.iter().any(|event| event["kind"] == "vote" && event["granted"] == true && event["candidate"] == winner && event["rule"].as_str().is_some_and(|rule| rule.contains("§5.4.1")));
    let ran = seen.iter().any(|event| event["kind"] == "election_started") && winner == followers[0];
    assert!(voted || ran, "the follower's part in the election: {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_views_data_answers_pages_from_other_nodes_and_is_bounded() {
    let cluster = Cluster::start(3, &["--election-timeout-ms", "1000"]).await;
    let leader = cluster.wait_for_leader().await;
    cluster.client().put("a", b"1").await.unwrap();
    let log = cluster.call(leader, Method::GET, "/v1/log?tail=2", None).await;
    assert_eq!(log.headers["access-control-allow-origin"], "*");
    let log = log.json();
    let entries = log["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[1]["kind"], "command");
    assert_eq!(entries[1]["index"], log["last_log_index"]);
    assert_eq!(entries[0]["kind"], "noop", "the leader's no-op of its term (§8)");
    for bad in ["/v1/log?tail=0", "/v1/log?tail=65", "/v1/log?tail=x"] {
        assert_eq!(cluster.call(leader, Method::GET, bad, None).await.status, StatusCode::BAD_REQUEST, "{bad}");
    }
    let preflight = cluster.http.request(Method::OPTIONS, format!("{}/v1/status", cluster.url(leader))).send().await.unwrap();
    assert_eq!(preflight.status(), StatusCode::NO_CONTENT);
    assert_eq!(preflight.headers()["access-control-allow-headers"], "authorization");
    let value = cluster.call(leader, Method::GET, "/v1/kv/a", None).await;
    assert!(value.headers.get("access-control-allow-origin").is_none(), "values are not readable cross-origin");
    for (path, kind) in [("/ui", "text/html"), ("/ui/keel-ui.js", "text/javascript"), ("/ui/keel-ui.css", "text/css"), ("/ui/replay", "text/html"), ("/ui/keel-replay.js", "text/javascript")] {
        let page = cluster.call(leader, Method::GET, path, None).await;
        assert_eq!(page.status, StatusCode::OK, "{path}");
        assert!(page.headers["content-type"].to_str().unwrap().starts_with(kind), "{path}");
    }
}
