//! The `keel` command line: `keel serve` runs a node; the other subcommands are clients.
//!
//! Exit codes: 0 success; 1 the request failed (key not found, compare-and-set mismatch,
//! refused, cluster unavailable); 2 bad usage or a node that cannot start; 3 a write whose
//! outcome is unknown (it may or may not have been applied).

use crate::auth::Role;
use crate::client::{Client, ClientError, DEFAULT_ENDPOINTS};
use crate::config::{ServeArgs, ServerConfig};
use crate::security::ClientSecurity;
use keel_core::NodeId;
use keel_node::certificates::DevCa;
use std::path::{Path, PathBuf};
use crate::server::Server;
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::Value;
use std::io::Write;
use std::time::Duration;
use tracing::info;

pub const EXIT_FAILED: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_OUTCOME_UNKNOWN: u8 = 3;

#[derive(Parser, Debug)]
#[command(name = "keel", version, about = "keel: a strongly consistent, replicated key-value store built on Raft.")]
pub struct Cli {
    #[command(subcommand)]
    pub command: CommandLine,
}

#[derive(Subcommand, Debug)]
pub enum CommandLine {
    /// Run a node: serves the client API and peer traffic on one address.
    Serve(ServeArgs),
    /// Set KEY to VALUE.
    Put {
        #[command(flatten)]
        client: ClientArgs,
        key: String,
        value: String,
    },
    /// Print the value of KEY (exit code 1 if it does not exist).
    Get {
        #[command(flatten)]
        client: ClientArgs,
        key: String,
        /// `linearizable` reads through the leader (ReadIndex); `stale` reads any node's applied state.
        #[arg(long, value_enum, default_value_t = ReadConsistency::Linearizable)]
        consistency: ReadConsistency,
    },
    /// Delete KEY; prints 1 if it existed, else 0.
    Del {
        #[command(flatten)]
        client: ClientArgs,
        key: String,
    },
    /// Compare-and-set: set KEY to --value (or delete it) only if it currently holds --expected (or is --absent).
    Cas {
        #[command(flatten)]
        client: ClientArgs,
        key: String,
        /// The value KEY must hold now.
        #[arg(long, required_unless_present = "absent", conflicts_with = "absent")]
        expected: Option<String>,
        /// KEY must not exist now.
        #[arg(long)]
        absent: bool,
        /// The new value.
        #[arg(long, required_unless_present = "delete", conflicts_with = "delete")]
        value: Option<String>,
        /// Delete KEY instead of setting a new value.
        #[arg(long)]
        delete: bool,
    },
    /// A table of every endpoint's status (like `etcdctl endpoint status -w table`).
    Status {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Load the cluster and report throughput and latency percentiles (reads and writes).
    Bench {
        #[command(flatten)]
        client: ClientArgs,
        #[command(flatten)]
        bench: crate::bench::BenchArgs,
    },
    /// Print the current leader; `keel leader transfer [--to N]` hands leadership over.
    Leader {
        #[command(flatten)]
        client: ClientArgs,
        /// Print only the leader's id.
        #[arg(long, short)]
        quiet: bool,
        #[command(subcommand)]
        action: Option<LeaderCommand>,
    },
    /// List, add, promote or remove cluster members (thesis ch. 4).
    Member {
        #[command(subcommand)]
        action: MemberCommand,
    },
    /// Make a development CA and node certificates for peer and client TLS.
    Certs {
        #[command(subcommand)]
        action: CertsCommand,
    },
    /// Make bearer tokens for `keel serve --auth-tokens`.
    Token {
        #[command(subcommand)]
        action: TokenCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum CertsCommand {
    /// Create DIR/ca.pem and ca-key.pem, node-N.pem and node-N-key.pem for N in 1..=--nodes,
    /// and client.pem and client-key.pem (a client certificate, for --client-ca). Refuses to
    /// overwrite an existing CA.
    Init {
        dir: PathBuf,
        #[arg(long, default_value_t = 3)]
        nodes: u64,
        /// Host names or IP addresses every node certificate is also valid for (HTTPS
        /// clients check the host they dial).
        #[arg(long, value_delimiter = ',', default_value = "127.0.0.1,localhost")]
        hosts: Vec<String>,
    },
    /// Issue DIR/node-ID.pem and node-ID-key.pem from the CA in DIR (made by `init`), for a
    /// node joining later.
    Node {
        dir: PathBuf,
        id: u64,
        #[arg(long, value_delimiter = ',', default_value = "127.0.0.1,localhost")]
        hosts: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Make a random token with ROLE, append its SHA-256 to --file (created if missing, mode
    /// 0600) and print the token: it is shown this once. Nodes re-read the file on SIGHUP.
    Add {
        #[arg(long, value_name = "TOML")]
        file: PathBuf,
        #[arg(long, value_enum)]
        role: Role,
        /// A name for the token, shown in logs instead of it.
        #[arg(long)]
        name: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum LeaderCommand {
    /// Hand leadership to another voter (the most caught-up one, or --to N), e.g. before
    /// maintenance; returns once it leads.
    Transfer {
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long, value_name = "ID")]
        to: Option<u64>,
    },
}

#[derive(Subcommand, Debug)]
pub enum MemberCommand {
    /// A table of the members: role, address, and on the leader each one's match index and lag.
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Add node ID, listening at HOST:PORT, as a learner: it catches up without voting.
    /// Start it first with `keel serve --id ID --listen HOST:PORT --join MEMBER`.
    Add {
        #[command(flatten)]
        client: ClientArgs,
        id: u64,
        address: String,
    },
    /// Make a caught-up learner a voter (refused while it lags).
    Promote {
        #[command(flatten)]
        client: ClientArgs,
        id: u64,
    },
    /// Remove a voter or learner (the leader too: it steps down once the change commits).
    Remove {
        #[command(flatten)]
        client: ClientArgs,
        id: u64,
    },
}

#[derive(Args, Debug, Clone)]
pub struct ClientArgs {
    /// Nodes to talk to, comma separated; leader hints are followed from there.
    #[arg(long, env = "KEEL_ENDPOINTS", value_delimiter = ',', default_value = DEFAULT_ENDPOINTS)]
    pub endpoints: Vec<String>,
    /// Give up after this long, retries included.
    #[arg(long, env = "KEEL_TIMEOUT_MS", default_value_t = 10_000, value_name = "MS")]
    pub timeout_ms: u64,
    /// CA certificate to verify the nodes' HTTPS certificates with; implies https://.
    #[arg(long, env = "KEEL_CACERT", value_name = "PEM")]
    pub cacert: Option<PathBuf>,
    /// Client certificate, for nodes that require one (--client-ca); implies https://.
    #[arg(long = "cert", id = "tls_cert", env = "KEEL_CERT", value_name = "PEM", requires = "tls_key")]
    pub cert: Option<PathBuf>,
    /// The private key of --cert.
    #[arg(long = "key", id = "tls_key", env = "KEEL_KEY", value_name = "PEM", requires = "tls_cert")]
    pub key: Option<PathBuf>,
    /// File holding the bearer token to send (else the KEEL_TOKEN variable, if set).
    #[arg(long, env = "KEEL_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
}

impl ClientArgs {
    pub fn security(&self) -> Result<ClientSecurity, ClientError> {
        let https = crate::client::wants_https(&self.endpoints);
        ClientSecurity::load(https, self.cacert.as_deref(), self.cert.as_deref(), self.key.as_deref(), self.token_file.as_ref()).map_err(ClientError::Setup)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ReadConsistency {
    Linearizable,
    Stale,
}

/// clap's error, on one line (its usage block dropped), for exit code 2.
pub fn one_line_usage_error(error: &clap::Error) -> String {
    let rendered = error.render().to_string();
    let before_usage = rendered.split("\nUsage:").next().unwrap_or(&rendered);
    let text = before_usage.split_whitespace().collect::<Vec<_>>().join(" ");
    format!("keel: {text} (see --help)")
}

/// `keel serve`: runs until SIGTERM or ctrl-c (exit 0) or until the node fails (exit 1).
pub async fn serve(args: ServeArgs) -> u8 {
    let config = match ServerConfig::resolve(args) {
        Ok(config) => config,
        Err(problem) => return start_failure(&problem),
    };
    if let Err(problem) = crate::logging::init(config.id, config.log_format, &config.log_level) {
        return start_failure(&problem);
    }
    let listener = match crate::server::bind(&config.listen).await {
        Ok(listener) => listener,
        Err(error) => return start_failure(&format!("cannot listen on {}: {error}", config.listen)),
    };
    let id = config.id;
    let hand_over_wait = Duration::from_millis(4 * config.election_timeout_ms);
    let mut server = match Server::start(config, listener).await {
        Ok(server) => server,
        Err(problem) => return start_failure(&problem),
    };
    let access = server.access();
    let result = tokio::select! {
        signal = shutdown_signal(id, access) => {
            info!("[NODE {id}] received {signal}");
            // A rolling restart should cost no election: a leader hands over first.
            server.hand_over_leadership(hand_over_wait).await;
            server.shutdown().await
        }
        result = server.stopped() => result,
    };
    match result {
        Ok(()) => 0,
        Err(problem) => {
            eprintln!("keel serve: node {id} failed: {problem}");
            EXIT_FAILED
        }
    }
}

fn start_failure(problem: &str) -> u8 {
    eprintln!("keel serve: {}", problem.split_whitespace().collect::<Vec<_>>().join(" "));
    EXIT_USAGE
}

/// Waits for SIGTERM or SIGINT; on the way, SIGHUP re-reads the token file.
async fn shutdown_signal(id: NodeId, access: Option<std::sync::Arc<crate::auth::Access>>) -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    let mut hangup = signal(SignalKind::hangup()).expect("installing the SIGHUP handler");
    loop {
        tokio::select! {
            _ = terminate.recv() => return "SIGTERM",
            _ = tokio::signal::ctrl_c() => return "SIGINT",
            _ = hangup.recv() => match access.as_ref().map(|access| access.reload()) {
                Some(Ok(_)) => {}
                None => info!("[NODE {id}] SIGHUP: no token file to reload"),
                Some(Err(problem)) => tracing::error!("[NODE {id}] SIGHUP: kept the old tokens: {problem}"),
            },
        }
    }
}

/// Runs a client subcommand; returns the exit code.
pub async fn run_client(command: CommandLine) -> u8 {
    let result = match command {
        CommandLine::Serve(_) => unreachable!("serve is not a client command"),
        CommandLine::Put { client, key, value } => put(&client, &key, &value).await,
        CommandLine::Get { client, key, consistency } => get(&client, &key, consistency).await,
        CommandLine::Del { client, key } => del(&client, &key).await,
        CommandLine::Cas { client, key, expected, value, .. } => cas(&client, &key, expected.as_deref(), value.as_deref()).await,
        CommandLine::Status { client } => return status(&client).await,
        CommandLine::Certs { action } => return certs(action),
        CommandLine::Token { action: TokenCommand::Add { file, role, name } } => {
            return match crate::auth::add_token(&file, &name, role) {
                Ok(token) => {
                    println!("{token}");
                    eprintln!("keel: added token {name:?} (role {}) to {}; this is the only time it is shown", role.name(), file.display());
                    0
                }
                Err(problem) => {
                    eprintln!("keel token add: {problem}");
                    EXIT_FAILED
                }
            };
        }
        CommandLine::Bench { client, bench } => {
            let security = match client.security() {
                Ok(security) => security,
                Err(error) => {
                    eprintln!("keel bench: {error}");
                    return EXIT_USAGE;
                }
            };
            return match crate::bench::run(&client.endpoints, &security, bench).await {
                Ok(()) => 0,
                Err(problem) => {
                    eprintln!("keel bench: {problem}");
                    EXIT_FAILED
                }
            };
        }
        CommandLine::Leader { action: Some(LeaderCommand::Transfer { client, to }), .. } => transfer(&client, to).await,
        CommandLine::Leader { client, quiet, action: None } => leader(&client, quiet).await,
        CommandLine::Member { action } => member(action).await,
    };
    match result {
        Ok(()) => 0,
        Err(error) => {
            eprintln!("keel: {error}");
            match error {
                ClientError::OutcomeUnknown(_) => EXIT_OUTCOME_UNKNOWN,
                ClientError::Setup(_) => EXIT_USAGE,
                _ => EXIT_FAILED,
            }
        }
    }
}

fn client(args: &ClientArgs) -> Result<Client, ClientError> {
    Ok(Client::with_security(&args.endpoints, Duration::from_millis(args.timeout_ms), &args.security()?))
}

/// `keel certs init|node`.
fn certs(action: CertsCommand) -> u8 {
    let result = match action {
        CertsCommand::Init { dir, nodes, hosts } => certs_init(&dir, nodes, &hosts),
        CertsCommand::Node { dir, id, hosts } => certs_node(&dir, id, &hosts),
    };
    match result {
        Ok(()) => 0,
        Err(problem) => {
            eprintln!("keel certs: {problem}");
            EXIT_FAILED
        }
    }
}

fn certs_init(dir: &Path, nodes: u64, hosts: &[String]) -> Result<(), String> {
    if dir.join("ca.pem").exists() || dir.join("ca-key.pem").exists() {
        return Err(format!("{} already holds a CA; use `keel certs node` to issue more", dir.display()));
    }
    std::fs::create_dir_all(dir).map_err(|error| format!("cannot create {}: {error}", dir.display()))?;
    let ca = DevCa::new()?;
    write_pem(dir, "ca", ca.certificate_pem(), &ca.key_pem())?;
    for id in 1..=nodes {
        certs_node_with(&ca, dir, id, hosts)?;
    }
    let client = ca.issue_client("keel client")?;
    write_pem(dir, "client", &client.certificate_pem, &client.key_pem)?;
    println!("wrote a CA, {nodes} node certificates and a client certificate to {}", dir.display());
    Ok(())
}

fn certs_node(dir: &Path, id: u64, hosts: &[String]) -> Result<(), String> {
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).map_err(|error| format!("cannot read {}: {error}", dir.join(name).display()));
    let ca = DevCa::from_pem(&read("ca.pem")?, &read("ca-key.pem")?)?;
    certs_node_with(&ca, dir, id, hosts)?;
    println!("wrote {}", dir.join(format!("node-{id}.pem")).display());
    Ok(())
}

fn certs_node_with(ca: &DevCa, dir: &Path, id: u64, hosts: &[String]) -> Result<(), String> {
    if id == 0 {
        return Err("node ids start at 1".into());
    }
    let issued = ca.issue_node(NodeId(id), hosts)?;
    write_pem(dir, &format!("node-{id}"), &issued.certificate_pem, &issued.key_pem)
}

/// `DIR/NAME.pem` (readable by all) and `DIR/NAME-key.pem` (by its owner only).
fn write_pem(dir: &Path, name: &str, certificate: &str, key: &str) -> Result<(), String> {
    let path = dir.join(format!("{name}.pem"));
    std::fs::write(&path, certificate).map_err(|error| format!("cannot write {}: {error}", path.display()))?;
    crate::auth::write_private(&dir.join(format!("{name}-key.pem")), key)
}

async fn put(args: &ClientArgs, key: &str, value: &str) -> Result<(), ClientError> {
    client(args)?.put(key, value.as_bytes()).await?;
    println!("OK");
    Ok(())
}

async fn get(args: &ClientArgs, key: &str, consistency: ReadConsistency) -> Result<(), ClientError> {
    let value = client(args)?.get(key, consistency == ReadConsistency::Stale).await?.ok_or(ClientError::NotFound)?;
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(&value).and_then(|()| stdout.write_all(b"\n"));
    Ok(())
}

async fn del(args: &ClientArgs, key: &str) -> Result<(), ClientError> {
    let existed = client(args)?.delete(key).await?;
    println!("{}", u8::from(existed));
    Ok(())
}

async fn cas(args: &ClientArgs, key: &str, expected: Option<&str>, value: Option<&str>) -> Result<(), ClientError> {
    let outcome = client(args)?.cas(key, expected, value).await?;
    if outcome.succeeded {
        println!("OK");
        return Ok(());
    }
    let current = match outcome.current {
        Some(current) => format!("{current:?}"),
        None => "absent".to_string(),
    };
    Err(ClientError::Refused { status: 409, code: "cas_failed".into(), message: format!("compare-and-set failed: the current value is {current}") })
}

async fn leader(args: &ClientArgs, quiet: bool) -> Result<(), ClientError> {
    let (id, address, term) = client(args)?.leader().await?;
    if quiet {
        println!("{id}");
    } else {
        println!("node {id} at {address} leads (term {term})");
    }
    Ok(())
}

async fn transfer(args: &ClientArgs, to: Option<u64>) -> Result<(), ClientError> {
    let body = to.map(|to| serde_json::json!({ "to": to }));
    let answer = client(args)?.change(reqwest::Method::POST, "/v1/leader/transfer", body).await?;
    println!("node {} leads (term {})", answer["leader_id"], answer["term"]);
    Ok(())
}

async fn member(action: MemberCommand) -> Result<(), ClientError> {
    let (args, method, path, body) = match action {
        MemberCommand::List { client: args } => {
            let members = client(&args)?.members().await?;
            print!("{}", members_table(&members));
            return Ok(());
        }
        MemberCommand::Add { client, id, address } => (client, reqwest::Method::POST, "/v1/members".to_string(), Some(serde_json::json!({ "id": id, "address": address }))),
        MemberCommand::Promote { client, id } => (client, reqwest::Method::POST, format!("/v1/members/{id}/promote"), None),
        MemberCommand::Remove { client, id } => (client, reqwest::Method::DELETE, format!("/v1/members/{id}"), None),
    };
    let members = client(&args)?.change(method, &path, body).await?;
    print!("{}", members_table(&members));
    Ok(())
}

/// `GET /v1/members` as a table.
fn members_table(members: &Value) -> String {
    let header = ["ID", "ADDRESS", "ROLE", "LEADER", "MATCH", "LAG", "ACTIVE"];
    let text = |value: &Value| match value {
        Value::Null => "-".to_string(),
        Value::String(text) => text.clone(),
        other => other.to_string(),
    };
    let rows: Vec<Vec<String>> = members["members"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|member| {
            let leader = if member["is_leader"] == Value::Bool(true) { "*" } else { "" };
            vec![text(&member["id"]), text(&member["address"]), text(&member["role"]), leader.to_string(), text(&member["match_index"]), text(&member["lag"]), text(&member["active"])]
        })
        .collect();
    let joint = if members["joint"] == Value::Bool(true) { " (joint configuration: a change of voters is in progress)" } else { "" };
    format!("{}term {}, configuration at index {}{joint}\n", render_table(&header, &rows), text(&members["term"]), text(&members["configuration_index"]))
}

async fn status(args: &ClientArgs) -> u8 {
    let client = match client(args) {
        Ok(client) => client,
        Err(error) => {
            eprintln!("keel: {error}");
            return EXIT_USAGE;
        }
    };
    let answers = probe_all(&client).await;
    let header = ["ENDPOINT", "ID", "MEMBER", "ROLE", "TERM", "LEADER", "COMMIT", "APPLIED", "LAST LOG", "SNAPSHOT", "ERRORS"];
    let rows: Vec<Vec<String>> = client.endpoints().iter().zip(&answers).map(|(endpoint, answer)| status_row(endpoint, answer)).collect();
    print!("{}", render_table(&header, &rows));
    if answers.iter().all(Result::is_ok) {
        0
    } else {
        EXIT_FAILED
    }
}

/// Every endpoint at once; answers in endpoint order.
async fn probe_all(client: &Client) -> Vec<Result<Value, String>> {
    let probes: Vec<_> = client.endpoints().iter().map(|endpoint| tokio::spawn(client.status_of(endpoint))).collect();
    let mut answers = Vec::new();
    for probe in probes {
        answers.push(probe.await.unwrap_or_else(|error| Err(format!("probe failed: {error}"))));
    }
    answers
}

fn status_row(endpoint: &str, answer: &Result<Value, String>) -> Vec<String> {
    let field = |status: &Value, name: &str| match &status[name] {
        Value::Null => "-".to_string(),
        Value::String(text) => text.clone(),
        other => other.to_string(),
    };
    match answer {
        Ok(status) => {
            let mut errors = status["stopped"].as_str().map(|reason| format!("stopped: {reason}")).unwrap_or_default();
            if status["removed"] == Value::Bool(true) {
                errors = format!("removed from the cluster {errors}").trim().to_string();
            }
            let mut row = vec![endpoint.to_string()];
            row.extend(["id", "member", "role", "term", "leader_id", "commit_index", "applied_index", "last_log_index", "snapshot_index"].iter().map(|name| field(status, name)));
            row.push(errors);
            row
        }
        Err(problem) => {
            let mut row = vec![endpoint.to_string()];
            row.extend(std::iter::repeat_n("-".to_string(), 9));
            row.push(problem.clone());
            row
        }
    }
}

/// An ASCII table in etcdctl's `-w table` style.
pub fn render_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|title| title.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line: String = widths.iter().map(|width| format!("+{}", "-".repeat(width + 2))).collect::<String>() + "+\n";
    let render_row = |cells: Vec<String>| -> String {
        let mut text = String::new();
        for (width, cell) in widths.iter().zip(cells) {
            let padding = width - cell.chars().count();
            text.push_str(&format!("| {}{} ", cell, " ".repeat(padding)));
        }
        text + "|\n"
    };
    let mut table = line.clone();
    table.push_str(&render_row(header.iter().map(|title| title.to_string()).collect()));
    table.push_str(&line);
    for row in rows {
        table.push_str(&render_row(row.clone()));
    }
    table.push_str(&line);
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_valid() {
        Cli::command().debug_assert();
    }

    #[test]
    fn usage_errors_are_one_line() {
        let error = Cli::try_parse_from(["keel", "serve", "--bogus"]).unwrap_err();
        let line = one_line_usage_error(&error);
        assert!(!line.contains('\n') && line.contains("--bogus"), "{line}");
        let error = Cli::try_parse_from(["keel", "cas", "k", "--value", "v"]).unwrap_err();
        assert!(one_line_usage_error(&error).contains("--expected"), "says what is missing");
    }

    #[test]
    fn table_is_aligned() {
        let table = render_table(&["A", "LONGER"], &[vec!["xyz".into(), "1".into()]]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 5);
        assert!(lines.iter().all(|line| line.len() == lines[0].len()), "{table}");
        assert_eq!(lines[1], "| A   | LONGER |");
    }
}
