//! The live view and the replay in a real browser: headless Chromium (Debian's `chromium`),
//! driven by `tests/ui/browser_test.mjs` (playwright-core), against a real 3-node cluster.
//! The page must show three nodes and exactly one leader; after the leader is killed, a new
//! leader in a higher term; and a simulator trace must replay with the rule behind a vote.
//! Screenshots are kept under `target/tmp/ui-browser/` (test artefacts, not in the repo).
//!
//! Needs `node`, Chromium at /usr/bin/chromium (or `KEEL_CHROMIUM`), and `npm ci` run in
//! `tests/ui/`: `.ci/run` installs all three. Without them the test fails, saying what is
//! missing, rather than pass having checked nothing.

mod common;

use common::Cluster;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// One finding of the script may take this long (a page load, an election, a browser start).
const LINE_WAIT: Duration = Duration::from_secs(60);

fn ui_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ui")
}

fn check_tools() {
    let chromium = std::env::var("KEEL_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(Path::new(&chromium).exists(), "no Chromium at {chromium}: apt-get install chromium (as .ci/run does), or set KEEL_CHROMIUM");
    assert!(Command::new("node").arg("--version").output().is_ok_and(|output| output.status.success()), "no `node` on PATH (Node.js runs the browser script)");
    assert!(ui_dir().join("node_modules/playwright-core").exists(), "playwright-core is not installed: npm ci --prefix {}", ui_dir().display());
}

/// `key=value` pairs of a finding line, after its first word.
fn fields(line: &str) -> std::collections::BTreeMap<String, String> {
    line.split_whitespace().skip(1).filter_map(|pair| pair.split_once('=')).map(|(key, value)| (key.to_string(), value.to_string())).collect()
}

struct Script {
    lines: mpsc::Receiver<String>,
    child: std::process::Child,
}

impl Script {
    /// The next line that starts with `word`, failing on the script's ERROR lines.
    fn expect(&mut self, word: &str) -> String {
        loop {
            let line = self.lines.recv_timeout(LINE_WAIT).unwrap_or_else(|_| panic!("no {word} line from the browser script within {LINE_WAIT:?}"));
            assert!(!line.starts_with("ERROR"), "the browser script failed: {line}");
            if line.starts_with(word) {
                return line;
            }
        }
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_view_shows_one_leader_then_the_failover_and_a_trace_replays() {
    check_tools();
    let artefacts = Path::new(env!("CARGO_TARGET_TMPDIR")).join("ui-browser");
    std::fs::create_dir_all(&artefacts).unwrap();
    let trace_path = artefacts.join("trace-seed-42.json");
    let mut config = keel_sim::SimConfig::new(42, 3);
    config.trace_until_ms = Some(2_000);
    let (_, trace) = keel_sim::run_seed_traced(config);
    std::fs::write(&trace_path, serde_json::to_string(&trace).unwrap()).unwrap();

    let mut cluster = Cluster::start(3, &[]).await;
    // The page comes from the leader, which is then killed: the hard case, where the page
    // must go on with the nodes it reads directly.
    let page_node = cluster.wait_for_leader().await;
    let mut child = Command::new("node")
        .arg(ui_dir().join("browser_test.mjs"))
        .arg(format!("{}/ui", cluster.url(page_node)))
        .arg(&trace_path)
        .arg(&artefacts)
        .current_dir(ui_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("running node");
    let stdout = child.stdout.take().unwrap();
    let (send, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            eprintln!("browser: {line}");
            let _ = send.send(line);
        }
    });
    let mut script = Script { lines, child };

    let live = fields(&script.expect("LIVE"));
    assert_eq!((live["nodes"].as_str(), live["leaders"].as_str()), ("3", "1"), "three nodes, exactly one leader");
    let (old_leader, old_term): (u64, u64) = (live["leader"].parse().unwrap(), live["term"].parse().unwrap());
    assert_eq!(old_leader, cluster.wait_for_leader().await, "the page shows the cluster's leader");

    cluster.kill_node(old_leader);
    let survivor = cluster.running()[0];
    writeln!(script.child.stdin.as_mut().unwrap(), "{}/ui/replay", cluster.url(survivor)).unwrap();
    let failover = fields(&script.expect("FAILOVER"));
    let (new_leader, new_term): (u64, u64) = (failover["leader"].parse().unwrap(), failover["term"].parse().unwrap());
    assert_ne!(new_leader, old_leader);
    assert!(new_term > old_term, "term {new_term} after {old_term}");
    assert_eq!(failover["leaders"], "1");
    assert_eq!(new_leader, cluster.wait_for_leader().await, "the page shows the new leader");
    eprintln!("the page showed the failover {} ms after the kill", failover["ms"]);

    let replay = script.expect("REPLAY");
    let replay_fields = fields(&replay);
    assert_eq!(replay_fields["nodes"], "3");
    assert!(replay_fields["decisions"].parse::<u64>().unwrap() > 0);
    assert!(replay.contains("rule=§"), "a vote in the replay names its rule: {replay}");
    for shot in ["live-before.png", "live-after-failover.png", "replay.png"] {
        assert!(artefacts.join(shot).metadata().is_ok_and(|file| file.len() > 1000), "screenshot {shot}");
    }
}
