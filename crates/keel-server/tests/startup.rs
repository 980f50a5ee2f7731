//! `keel serve` at start and stop: one-line errors with exit code 2, configuration from
//! environment and file, log format, and a clean exit on SIGTERM.

mod common;

use common::{assert_start_failure, eventually, free_port, serve, BINARY, WAIT};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn bad_starts_fail_with_one_line_and_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let peers = format!("1=127.0.0.1:{}", free_port());
    assert_start_failure(&serve(&["--bogus"]), "--bogus");
    assert_start_failure(&serve(&["--id", "x"]), "--id");
    assert_start_failure(&serve(&["--data-dir", data, "--peers", &peers]), "--id");
    assert_start_failure(&serve(&["--id", "4", "--data-dir", data, "--peers", &peers]), "not in --peers");
    assert_start_failure(&serve(&["--id", "1", "--data-dir", data, "--peers", "1=nowhere"]), "HOST:PORT");
    assert_start_failure(&serve(&["--id", "1", "--data-dir", data, "--peers", &peers, "--heartbeat-ms", "500"]), "election timeout");
    let file = dir.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let under_file = file.join("data");
    assert_start_failure(&serve(&["--id", "1", "--data-dir", under_file.to_str().unwrap(), "--peers", &peers]), "data dir");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_peers = format!("1={}", taken.local_addr().unwrap());
    assert_start_failure(&serve(&["--id", "1", "--data-dir", data, "--peers", &taken_peers]), "cannot listen");
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "id = 1\nelection_timeout = 5\n").unwrap();
    assert_start_failure(&serve(&["--config", config.to_str().unwrap()]), "election_timeout");
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn terminate(mut running: Running) -> Option<i32> {
    Command::new("kill").args(["-TERM", &running.0.id().to_string()]).status().unwrap();
    let started = Instant::now();
    loop {
        if let Some(status) = running.0.try_wait().unwrap() {
            return status.code();
        }
        assert!(started.elapsed() < WAIT, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(10));
    }
}

async fn wait_leader(address: &str) -> serde_json::Value {
    let http = reqwest::Client::new();
    eventually("the single node leads", WAIT, || async {
        let status: serde_json::Value = http.get(format!("http://{address}/v1/status")).send().await.ok()?.json().await.ok()?;
        (status["role"] == "leader").then_some(status)
    })
    .await
}

/// Settings from the environment override the config file; text logs start with `[NODE 1]`;
/// a second node on the same data directory is refused; SIGTERM exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_overrides_the_config_file_and_text_logs_carry_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let address = format!("127.0.0.1:{}", free_port());
    let config = dir.path().join("keel.toml");
    std::fs::write(&config, format!("id = 2\ncluster_id = \"from-file\"\n[peers]\n1 = \"{address}\"\n2 = \"127.0.0.1:1\"\n")).unwrap();
    let log = dir.path().join("node.log");
    let data = dir.path().join("data");
    let child = Command::new(BINARY)
        .args(["serve", "--config", config.to_str().unwrap()])
        .env("KEEL_ID", "1")
        .env("KEEL_PEERS", format!("1={address}"))
        .env("KEEL_DATA_DIR", &data)
        .stderr(std::fs::File::create(&log).unwrap())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let running = Running(child);
    let status = wait_leader(&address).await;
    assert_eq!(status["id"], 1, "KEEL_ID overrides the file's id");
    assert_eq!(status["cluster_id"], "from-file", "the file's cluster_id is used");
    let put = reqwest::Client::new().put(format!("http://{address}/v1/kv/k")).body("v").send().await.unwrap();
    assert_eq!(put.status(), 200);

    let second = serve(&["--id", "1", "--data-dir", data.to_str().unwrap(), "--peers", &format!("1=127.0.0.1:{}", free_port())]);
    assert_start_failure(&second, "data dir");

    assert_eq!(terminate(running), Some(0));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("became LEADER"), "{text}");
    for line in text.lines() {
        assert!(line.starts_with("[NODE 1] "), "every line is prefixed: {line:?}");
        assert!(!line[9..].contains("[NODE 1]"), "the prefix is not repeated: {line:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let address = format!("127.0.0.1:{}", free_port());
    let log = dir.path().join("node.log");
    let child = Command::new(BINARY)
        .args(["serve", "--id", "7", "--peers", &format!("7={address}"), "--log-format", "json"])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .stderr(std::fs::File::create(&log).unwrap())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let running = Running(child);
    wait_leader(&address).await;
    assert_eq!(terminate(running), Some(0));
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<serde_json::Value> = text.lines().map(|line| serde_json::from_str(line).unwrap_or_else(|error| panic!("{error}: {line:?}"))).collect();
    assert!(lines.iter().all(|line| line["node"] == 7 && line["level"].is_string() && line["timestamp"].is_string()), "{text}");
    assert!(lines.iter().any(|line| line["message"].as_str().unwrap().starts_with("became LEADER")), "{text}");
}
