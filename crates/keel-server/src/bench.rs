//! `keel bench`: a load generator to trust, in the spirit of `etcdctl check perf` and
//! redis-benchmark. Closed-loop clients (each waits for its answer before the next request)
//! against the leader's v1 API; latency per operation in an HDR histogram; a progress bar
//! while it runs; a table or JSON at the end. With TLS and a token (`ClientSecurity`) each
//! client's connection is HTTPS and every request carries the token, as a real client's.

use crate::client::{normalize_endpoint, Client};
use crate::security::ClientSecurity;
use crate::forward::LEADER_ADDR_HEADER;
use axum::http::header::{AUTHORIZATION, HOST};
use axum::http::{HeaderValue, Request, StatusCode};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Concurrent clients, each with its own connection.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// How long to run, e.g. `10s`, `500ms`, `1m`.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Fraction of operations that are reads (0.0 to 1.0).
    #[arg(long, default_value_t = 0.0)]
    pub ratio_reads: f64,
    /// Keys are `bench-0` .. `bench-(N-1)`, chosen uniformly.
    #[arg(long, default_value_t = 1000)]
    pub key_space: u64,
    /// Bytes per written value.
    #[arg(long, default_value_t = 16)]
    pub value_size: usize,
    /// Read with `stale` consistency instead of `linearizable` (ReadIndex).
    #[arg(long)]
    pub stale_reads: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// Write each key once instead, in order, as 16-byte keys `fill-00000000000` ..: the
    /// run ends when all `--key-space` keys are written (or at `--duration`). Loads a store
    /// of a known size, e.g. for a snapshot catch-up test. Writes only.
    #[arg(long)]
    pub fill: bool,
}

/// The `n`th key of `--fill`: 16 bytes.
pub fn fill_key(n: u64) -> String {
    format!("fill-{n:011}")
}

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(text.len()));
    let value: f64 = number.parse().map_err(|_| format!("bad duration {text:?}: expected e.g. 10s, 500ms, 2m"))?;
    let seconds = match unit {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" => value * 60.0,
        _ => return Err(format!("bad duration unit in {text:?}: use ms, s or m")),
    };
    if !(seconds > 0.0 && seconds <= 3600.0) {
        return Err("duration must be between 1ms and 1h".into());
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Results of one kind of operation.
struct Tally {
    latency_us: Histogram<u64>,
    errors: BTreeMap<String, u64>,
}

impl Tally {
    fn new() -> Tally {
        Tally { latency_us: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds"), errors: BTreeMap::new() }
    }

    fn merge(&mut self, other: &Tally) {
        self.latency_us.add(&other.latency_us).expect("same bounds");
        for (kind, count) in &other.errors {
            *self.errors.entry(kind.clone()).or_default() += count;
        }
    }

    fn summary(&self, elapsed: Duration) -> serde_json::Value {
        let ms = |quantile: f64| self.latency_us.value_at_quantile(quantile) as f64 / 1000.0;
        json!({
            "ops": self.latency_us.len(),
            "ops_per_s": (self.latency_us.len() as f64 / elapsed.as_secs_f64()).round(),
            "errors": self.errors,
            "latency_ms": { "p50": ms(0.5), "p90": ms(0.9), "p99": ms(0.99), "p99.9": ms(0.999), "max": self.latency_us.max() as f64 / 1000.0 },
        })
    }
}

/// A tiny per-client PRNG (xorshift64*): the load pattern needs no cryptographic quality.
struct Dice(u64);

impl Dice {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// How each client connects: TLS or not, and the `Authorization` header to send.
#[derive(Clone)]
struct Dialer {
    tls: Option<tokio_rustls::TlsConnector>,
    authorization: Option<HeaderValue>,
}

impl Dialer {
    fn new(security: &ClientSecurity) -> Dialer {
        let authorization = security.token.as_ref().and_then(|token| HeaderValue::from_str(&format!("Bearer {token}")).ok());
        Dialer { tls: security.tls.clone().map(tokio_rustls::TlsConnector::from), authorization }
    }
}

pub async fn run(endpoints: &[String], security: &ClientSecurity, args: BenchArgs) -> Result<(), String> {
    if args.clients == 0 || args.key_space == 0 || !(0.0..=1.0).contains(&args.ratio_reads) {
        return Err("--clients and --key-space must be at least 1, --ratio-reads within 0..1".into());
    }
    if args.fill && args.ratio_reads > 0.0 {
        return Err("--fill writes only: leave --ratio-reads at 0".into());
    }
    let mut discovery = Client::with_security(endpoints, Duration::from_secs(10), security);
    let (leader_id, leader_addr, _) = discovery.leader().await.map_err(|error| format!("no leader: {error}"))?;
    let leader = Leader::follow(endpoints, security, normalize_endpoint(&leader_addr));
    let dialer = Dialer::new(security);
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + args.duration;
    let next_key = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..args.clients).map(|n| tokio::spawn(worker(n as u64, leader.clone(), dialer.clone(), args.clone(), deadline, done.clone(), next_key.clone()))).collect();
    let progress = progress_bar(&args, done.clone(), started);
    let (mut writes, mut reads) = (Tally::new(), Tally::new());
    for worker in workers {
        let (worker_writes, worker_reads) = worker.await.map_err(|error| format!("client task failed: {error}"))?;
        writes.merge(&worker_writes);
        reads.merge(&worker_reads);
    }
    let elapsed = started.elapsed();
    if let Some(progress) = progress {
        progress.finish_and_clear();
    }
    let report = json!({
        "leader": { "id": leader_id, "address": leader_addr },
        "tls": security.tls.is_some(),
        "token": security.token.is_some(),
        // Where the clients were sending at the end (another node if the leader moved).
        "leader_address_at_end": leader.address(),
        "clients": args.clients,
        "duration_s": elapsed.as_secs_f64(),
        "ratio_reads": args.ratio_reads,
        "key_space": args.key_space,
        "fill": args.fill,
        "value_size": args.value_size,
        "read_consistency": if args.stale_reads { "stale" } else { "linearizable" },
        "writes": writes.summary(elapsed),
        "reads": reads.summary(elapsed),
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report).expect("json"));
    } else {
        print_table(&report);
    }
    Ok(())
}

/// One closed-loop client. Each has its own HTTP/1.1 connection, opened before its first
/// request and again after a failure: hyper's connection API rather than a pooled client,
/// because on a small machine the load generator shares the cores with the nodes, and
/// every microsecond it spends per request (URL parsing, pool checkout) is taken from them.
async fn worker(n: u64, leader: Leader, dialer: Dialer, args: BenchArgs, deadline: Instant, done: Arc<AtomicU64>, next_key: Arc<AtomicU64>) -> (Tally, Tally) {
    let (mut writes, mut reads) = (Tally::new(), Tally::new());
    let mut dice = Dice(0x9E37_79B9_7F4A_7C15 ^ (n + 1).wrapping_mul(0xD1B5_4A32_D192_ED03));
    let value = Bytes::from(vec![b'v'; args.value_size]);
    let consistency = if args.stale_reads { "stale" } else { "linearizable" };
    let mut connection = connect(&dialer, leader.address()).await.ok();
    while Instant::now() < deadline {
        let key = if args.fill {
            let n = next_key.fetch_add(1, Ordering::Relaxed);
            if n >= args.key_space {
                break;
            }
            fill_key(n)
        } else {
            format!("bench-{}", dice.next() % args.key_space)
        };
        let is_read = dice.unit() < args.ratio_reads;
        let request = if is_read {
            Request::get(format!("/v1/kv/{key}?consistency={consistency}")).body(Full::new(Bytes::new()))
        } else {
            Request::put(format!("/v1/kv/{key}")).body(Full::new(value.clone()))
        };
        let mut request = request.expect("a valid request");
        if let Some(authorization) = &dialer.authorization {
            request.headers_mut().insert(AUTHORIZATION, authorization.clone());
        }
        let began = Instant::now();
        let mut forwarded_by_follower = None;
        let outcome = match tokio::time::timeout(REQUEST_TIMEOUT, send(&leader, &dialer, &mut connection, request)).await {
            Ok(Ok(answer)) => {
                forwarded_by_follower = answer.leader_addr;
                if answer.status.is_success() || (is_read && answer.status == StatusCode::NOT_FOUND) {
                    Ok(())
                } else {
                    Err(format!("http {}", answer.status.as_u16()))
                }
            }
            Ok(Err(kind)) => Err(kind.to_string()),
            Err(_) => {
                // The answer may still come on this connection: start afresh.
                connection = None;
                Err("timeout".to_string())
            }
        };
        let tally = if is_read { &mut reads } else { &mut writes };
        match outcome {
            Ok(()) => {
                tally.latency_us.saturating_record(began.elapsed().as_micros().max(1) as u64);
                done.fetch_add(1, Ordering::Relaxed);
                if let Some(address) = forwarded_by_follower {
                    // Go to the leader the follower named directly from now on.
                    connection = connect(&dialer, address).await.ok();
                    leader.lost();
                }
            }
            Err(kind) => {
                *tally.errors.entry(kind).or_default() += 1;
                // A node that is down refuses at once, one without a leader answers 503 at
                // once: pause rather than count a storm. Without a connection, have the
                // leader looked up again meanwhile.
                if connection.is_none() {
                    leader.lost();
                }
                tokio::time::sleep(ERROR_PAUSE).await;
            }
        }
    }
    (writes, reads)
}

/// How long one request may take before it counts as a `timeout` error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// After a failed request, its client waits this long before the next.
const ERROR_PAUSE: Duration = Duration::from_millis(50);
/// How long one lookup of the leader may try the endpoints in turn.
const LOOKUP_DEADLINE: Duration = Duration::from_secs(1);

/// Where the clients send their requests: the leader found at the start, and whichever
/// node `--endpoints` name as leader after a client failed to reach it or was forwarded
/// (a client that was forwarded goes on to the leader the answer named at once).
#[derive(Clone)]
struct Leader {
    address: watch::Receiver<String>,
    lost: Arc<Notify>,
}

impl Leader {
    /// Starts the task that looks the leader up again when a client reports it lost; it
    /// ends with the last client.
    fn follow(endpoints: &[String], security: &ClientSecurity, address: String) -> Leader {
        let (publish, receiver) = watch::channel(address);
        let lost = Arc::new(Notify::new());
        let leader = Leader { address: receiver, lost: lost.clone() };
        // One client for every lookup: it moves on past endpoints that failed.
        let mut discovery = Client::with_security(endpoints, LOOKUP_DEADLINE, security);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = lost.notified() => {}
                    _ = publish.closed() => break,
                }
                // Clients only read the latest address; none waits for a change.
                if let Ok((_, address, _)) = discovery.leader().await {
                    publish.send_replace(normalize_endpoint(&address));
                }
            }
        });
        leader
    }

    fn address(&self) -> String {
        self.address.borrow().clone()
    }

    fn lost(&self) {
        self.lost.notify_one();
    }
}

/// A client's connection and the node it goes to.
struct Connection {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    host: HeaderValue,
}

async fn connect(dialer: &Dialer, address: String) -> Result<Connection, &'static str> {
    let host = HeaderValue::from_str(&address).map_err(|_| "connection")?;
    let stream = tokio::net::TcpStream::connect(&address).await.map_err(|_| "connection")?;
    stream.set_nodelay(true).map_err(|_| "connection")?;
    let sender = match &dialer.tls {
        Some(tls) => {
            let name = server_name(&address).ok_or("connection")?;
            let stream = tls.connect(name, stream).await.map_err(|_| "tls")?;
            handshake(stream).await?
        }
        None => handshake(stream).await?,
    };
    Ok(Connection { sender, host })
}

/// The HTTP/1.1 handshake; the connection's task ends when `sender` is dropped or the
/// server closes it.
async fn handshake(stream: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, &'static str> {
    let (sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.map_err(|_| "connection")?;
    tokio::spawn(connection);
    Ok(sender)
}

/// The host of `host:port` (an IP address or a DNS name), as TLS checks it.
fn server_name(address: &str) -> Option<rustls_pki_types::ServerName<'static>> {
    rustls_pki_types::ServerName::try_from(crate::config::host_of(address).to_string()).ok()
}

/// What came back for one request.
struct Answer {
    status: StatusCode,
    /// `X-Keel-Leader-Addr`: a follower forwarded the request to the leader there.
    leader_addr: Option<String>,
}

/// Sends `request` on the client's connection (opening one to the leader if it has none)
/// and reads the whole answer. On a failure the connection is dropped, to be opened again
/// next time.
async fn send(leader: &Leader, dialer: &Dialer, connection: &mut Option<Connection>, mut request: Request<Full<Bytes>>) -> Result<Answer, &'static str> {
    if connection.as_ref().is_none_or(|open| open.sender.is_closed()) {
        *connection = Some(connect(dialer, leader.address()).await?);
    }
    let open = connection.as_mut().expect("connected above");
    request.headers_mut().insert(HOST, open.host.clone());
    let answer = async {
        open.sender.ready().await?;
        let response = open.sender.send_request(request).await?;
        let status = response.status();
        let leader_addr = response.headers().get(LEADER_ADDR_HEADER).and_then(|value| value.to_str().ok()).map(normalize_endpoint);
        response.into_body().collect().await?;
        Ok::<Answer, hyper::Error>(Answer { status, leader_addr })
    };
    answer.await.map_err(|_| {
        *connection = None;
        "connection"
    })
}

fn progress_bar(args: &BenchArgs, done: Arc<AtomicU64>, started: Instant) -> Option<ProgressBar> {
    if args.json {
        return None;
    }
    let total_ms = args.duration.as_millis() as u64;
    let bar = ProgressBar::new(total_ms);
    bar.set_style(ProgressStyle::with_template("{bar:40} {elapsed}/{msg}").expect("valid template"));
    let ticker = bar.clone();
    let duration = args.duration;
    tokio::spawn(async move {
        while !ticker.is_finished() {
            let elapsed = started.elapsed();
            let rate = done.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64().max(0.001);
            ticker.set_position((elapsed.as_millis() as u64).min(total_ms));
            ticker.set_message(format!("{}s  {rate:.0} ops/s", duration.as_secs()));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    Some(bar)
}

fn print_table(report: &serde_json::Value) {
    println!(
        "keel bench: {} clients for {:.1} s against leader {} ({}), {:.0}% reads ({}), {} keys, {}-byte values",
        report["clients"],
        report["duration_s"].as_f64().unwrap_or_default(),
        report["leader"]["id"],
        report["leader"]["address"].as_str().unwrap_or_default(),
        report["ratio_reads"].as_f64().unwrap_or_default() * 100.0,
        report["read_consistency"].as_str().unwrap_or_default(),
        report["key_space"],
        report["value_size"],
    );
    let at_end = report["leader_address_at_end"].as_str().unwrap_or_default();
    if at_end != normalize_endpoint(report["leader"]["address"].as_str().unwrap_or_default()) {
        println!("The leader moved during the run; the clients ended on {at_end}.");
    }
    println!("{:<7} {:>9} {:>10} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9}", "", "ops", "ops/s", "errors", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms");
    for kind in ["writes", "reads"] {
        let row = &report[kind];
        let errors: u64 = row["errors"].as_object().map(|map| map.values().filter_map(|v| v.as_u64()).sum()).unwrap_or_default();
        let latency = &row["latency_ms"];
        println!(
            "{:<7} {:>9} {:>10} {:>8} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
            kind,
            row["ops"].as_u64().unwrap_or_default(),
            row["ops_per_s"].as_f64().unwrap_or_default() as u64,
            errors,
            latency["p50"].as_f64().unwrap_or_default(),
            latency["p90"].as_f64().unwrap_or_default(),
            latency["p99"].as_f64().unwrap_or_default(),
            latency["p99.9"].as_f64().unwrap_or_default(),
            latency["max"].as_f64().unwrap_or_default(),
        );
        if let Some(kinds) = row["errors"].as_object().filter(|map| !map.is_empty()) {
            println!("        errors by kind: {}", serde_json::Value::Object(kinds.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An address nothing listens on: connecting to it is refused at once.
    fn dead_address() -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().to_string()
    }

    /// Serves `app` on a fresh local port; returns its address.
    async fn serve(app: axum::Router) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move { axum::serve(listener, app).await });
        address
    }

    /// One writing client against `leader` for `duration`.
    async fn one_writer(leader: Leader, duration: Duration) -> Tally {
        let args = BenchArgs { clients: 1, duration, ratio_reads: 0.0, key_space: 10, value_size: 16, stale_reads: false, json: true, fill: false };
        let (writes, reads) = worker(0, leader, Dialer::new(&ClientSecurity::default()), args, Instant::now() + duration, Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0))).await;
        assert!(reads.latency_us.is_empty() && reads.errors.is_empty(), "a writer only writes");
        writes
    }

    #[test]
    fn fill_keys_are_16_bytes_in_order() {
        assert_eq!((fill_key(0), fill_key(999_999)), ("fill-00000000000".to_string(), "fill-00000999999".to_string()));
        assert!(fill_key(1) < fill_key(10));
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("10h").is_err());
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("fast").is_err());
    }

    /// A client whose node is down counts `connection` errors and pauses between tries:
    /// at most one try per `ERROR_PAUSE` (a client without the pause tries thousands
    /// of times a second). Wall-clock bound, but a slower machine only lowers the count.
    #[tokio::test]
    async fn a_client_pauses_between_failed_connections() {
        let address = dead_address();
        let leader = Leader::follow(std::slice::from_ref(&address), &ClientSecurity::default(), address.clone());
        let writes = one_writer(leader, Duration::from_millis(300)).await;
        let errors = writes.errors.get("connection").copied().unwrap_or_default();
        let tries_max = (300 / ERROR_PAUSE.as_millis() + 1) as u64;
        assert!((1..=tries_max).contains(&errors), "{errors} connection errors in 300 ms (at most {tries_max})");
        assert_eq!(writes.latency_us.len(), 0);
    }

    /// A client that cannot reach the leader it was given has the leader looked up again
    /// through the endpoints (here the dead node is listed first) and goes on there.
    #[tokio::test]
    async fn clients_follow_the_leader_the_endpoints_name() {
        let dead_address = dead_address();
        // The live node names itself leader; /v1/cluster is only asked once a client failed.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let live = listener.local_addr().unwrap().to_string();
        let cluster = json!({ "leader_id": 2, "leader_addr": live.clone(), "term": 3 });
        let app = axum::Router::new()
            .route("/v1/cluster", axum::routing::get(move || async move { axum::Json(cluster) }))
            .route("/v1/kv/{key}", axum::routing::put(|| async { axum::Json(json!({ "index": 1 })) }));
        tokio::spawn(async move { axum::serve(listener, app).await });

        let leader = Leader::follow(&[dead_address.clone(), live.clone()], &ClientSecurity::default(), dead_address);
        let writes = one_writer(leader.clone(), Duration::from_secs(2)).await;
        assert!(writes.errors.get("connection").copied().unwrap_or_default() >= 1);
        assert!(!writes.latency_us.is_empty(), "no write reached the live node: {:?}", writes.errors);
        assert_eq!(leader.address(), live);
    }

    /// A node that stays up but no longer leads forwards the requests and names the leader
    /// in `X-Keel-Leader-Addr`: the client goes there directly after the first answer,
    /// and the shared address moves too (the lookup through the endpoints agrees).
    #[tokio::test]
    async fn a_forwarded_client_goes_to_the_leader_it_names() {
        let (at_leader, at_follower) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let leader_count = at_leader.clone();
        let live = serve(axum::Router::new().route(
            "/v1/kv/{key}",
            axum::routing::put(move || async move {
                leader_count.fetch_add(1, Ordering::Relaxed);
                axum::Json(json!({ "index": 1 }))
            }),
        ))
        .await;
        let (named, cluster) = (live.clone(), json!({ "leader_id": 2, "leader_addr": live.clone(), "term": 3 }));
        let follower_count = at_follower.clone();
        let follower = serve(
            axum::Router::new().route("/v1/cluster", axum::routing::get(move || async move { axum::Json(cluster) })).route(
                "/v1/kv/{key}",
                axum::routing::put(move || async move {
                    follower_count.fetch_add(1, Ordering::Relaxed);
                    ([(LEADER_ADDR_HEADER, named)], axum::Json(json!({ "index": 1 })))
                }),
            ),
        )
        .await;

        let leader = Leader::follow(std::slice::from_ref(&follower), &ClientSecurity::default(), follower.clone());
        let writes = one_writer(leader.clone(), Duration::from_millis(300)).await;
        assert!(writes.errors.is_empty(), "{:?}", writes.errors);
        assert_eq!(at_follower.load(Ordering::Relaxed), 1, "only the first request goes through the follower");
        assert!(at_leader.load(Ordering::Relaxed) >= 1);
        let mut shared = leader.address.clone();
        let moved = tokio::time::timeout(Duration::from_secs(10), shared.wait_for(|address| *address == live)).await;
        assert!(moved.is_ok(), "the shared address stayed at {}", leader.address());
    }

    #[test]
    fn tallies_merge_counts_and_errors() {
        let mut a = Tally::new();
        a.latency_us.record(100).unwrap();
        a.errors.insert("http 503".into(), 2);
        let mut b = Tally::new();
        b.latency_us.record(300).unwrap();
        b.errors.insert("http 503".into(), 1);
        a.merge(&b);
        assert_eq!(a.latency_us.len(), 2);
        assert_eq!(a.errors["http 503"], 3);
        let summary = a.summary(Duration::from_secs(1));
        assert_eq!(summary["ops"], 2);
        assert_eq!(summary["ops_per_s"], 2.0);
    }
}
