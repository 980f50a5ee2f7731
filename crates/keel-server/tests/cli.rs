//! `keel` as a user runs it, against a real 3-process cluster: put, get, kill the leader,
//! get again; and the other client commands.

mod common;

use common::Cluster;
use std::time::Instant;

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_put_get_survives_killing_the_leader() {
    let mut cluster = Cluster::start(3, &[]).await;
    let put = cluster.cli(&["put", "a", "1"]);
    assert!(put.status.success(), "{}", stderr(&put));
    assert_eq!(stdout(&put), "OK\n");
    let get = cluster.cli(&["get", "a"]);
    assert_eq!((get.status.code(), stdout(&get)), (Some(0), "1\n".to_string()), "{}", stderr(&get));

    let leader = cluster.cli(&["leader", "--quiet"]);
    let leader: u64 = stdout(&leader).trim().parse().expect("keel leader -q prints an id");
    assert_eq!(leader, cluster.wait_for_leader().await);
    let described = stdout(&cluster.cli(&["leader"]));
    assert!(described.contains(&format!("node {leader} at {}", cluster.addr(leader))), "{described}");

    cluster.kill_node(leader);
    let started = Instant::now();
    let get = cluster.cli(&["get", "a"]);
    let elapsed = started.elapsed();
    assert_eq!((get.status.code(), stdout(&get)), (Some(0), "1\n".to_string()), "{}", stderr(&get));
    // Printed, not asserted: wall-clock time on a shared test machine is not a verdict. The
    // 3 s failover bound is checked on simulated time by node_memory.rs
    // (`a_crashed_leader_is_replaced_and_linearizable_reads_resume_within_3_s`); this test
    // checks that the CLI finds the new leader before its own deadline.
    eprintln!("keel get after killing the leader took {elapsed:?}");

    let status = cluster.cli(&["status"]);
    assert_eq!(status.status.code(), Some(1), "an endpoint is down");
    let table = stdout(&status);
    for id in cluster.ids() {
        assert!(table.contains(&cluster.addr(id)), "{table}");
    }
    assert!(table.contains("leader") && table.contains("follower") && table.to_lowercase().contains("refused"), "{table}");
    assert!(table.lines().next().unwrap().starts_with("+--"), "{table}");

    let cas = cluster.cli(&["cas", "a", "--expected", "1", "--value", "2"]);
    assert_eq!((cas.status.code(), stdout(&cas)), (Some(0), "OK\n".to_string()), "{}", stderr(&cas));
    let cas = cluster.cli(&["cas", "a", "--expected", "1", "--value", "3"]);
    assert_eq!(cas.status.code(), Some(1));
    assert!(stderr(&cas).contains("\"2\""), "says the current value: {}", stderr(&cas));
    let cas = cluster.cli(&["cas", "fresh", "--absent", "--value", "new"]);
    assert_eq!(cas.status.code(), Some(0), "{}", stderr(&cas));
    let stale = cluster.cli(&["get", "fresh", "--consistency", "stale"]);
    assert!(stale.status.code() == Some(0) || stale.status.code() == Some(1), "a stale read may not have the write yet");
    let del = cluster.cli(&["del", "a"]);
    assert_eq!((del.status.code(), stdout(&del)), (Some(0), "1\n".to_string()));
    let del = cluster.cli(&["del", "a"]);
    assert_eq!(stdout(&del), "0\n");
    let missing = cluster.cli(&["get", "a"]);
    assert_eq!((missing.status.code(), stdout(&missing)), (Some(1), String::new()));
    assert!(stderr(&missing).contains("not found"), "{}", stderr(&missing));
    let too_long = cluster.cli(&["put", &"k".repeat(1025), "v"]);
    assert_eq!(too_long.status.code(), Some(1));
    assert!(stderr(&too_long).contains("bad_request"), "{}", stderr(&too_long));
    let usage = cluster.cli(&["cas", "a", "--value", "v"]);
    assert_eq!(usage.status.code(), Some(2));
    assert_eq!(stderr(&usage).trim().lines().count(), 1, "{}", stderr(&usage));

    // --endpoints overrides KEEL_ENDPOINTS; an unreachable-only list fails cleanly.
    let nowhere = std::process::Command::new(common::BINARY).args(["get", "x", "--endpoints", "127.0.0.1:1", "--timeout-ms", "500"]).output().unwrap();
    assert_eq!(nowhere.status.code(), Some(1));
    assert!(stderr(&nowhere).contains("unavailable"), "{}", stderr(&nowhere));
}

/// `keel bench` loads the cluster and reports what it measured; `--json` is machine-readable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_reports_reads_writes_and_percentiles() {
    let cluster = Cluster::start(3, &[]).await;
    cluster.wait_for_leader().await;
    let output = cluster.cli(&["bench", "--clients", "4", "--duration", "400ms", "--ratio-reads", "0.5", "--key-space", "10", "--json"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let report: serde_json::Value = serde_json::from_str(&stdout(&output)).expect("--json prints one JSON document");
    for kind in ["writes", "reads"] {
        let row = &report[kind];
        assert!(row["ops"].as_u64().unwrap() > 0, "{kind}: {report}");
        assert_eq!(row["errors"], serde_json::json!({}), "{kind}: {report}");
        let latency = &row["latency_ms"];
        let (p50, p99, max) = (latency["p50"].as_f64().unwrap(), latency["p99"].as_f64().unwrap(), latency["max"].as_f64().unwrap());
        assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "percentiles are ordered: {latency}");
    }
    assert_eq!(report["clients"], 4);
    assert_eq!(report["leader_address_at_end"], report["leader"]["address"], "no leader change: {report}");
    let usage = cluster.cli(&["bench", "--duration", "forever"]);
    assert_eq!(usage.status.code(), Some(2), "a bad duration is a usage error");
}
