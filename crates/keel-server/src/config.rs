//! `keel serve` settings: command-line flags, `KEEL_*` environment variables and an optional
//! TOML file, merged with precedence flag > environment > file > default, then validated
//! before anything starts (a bad setting is a one-line error and exit code 2).

use crate::security::SecuritySettings;
use clap::{Args, ValueEnum};
use keel_core::NodeId;
use keel_node::NodeConfig;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const DEFAULT_CLUSTER_ID: &str = "keel-local";
pub const DEFAULT_HEARTBEAT_MS: u64 = 50;
pub const DEFAULT_ELECTION_TIMEOUT_MS: u64 = 300;
pub const DEFAULT_SNAPSHOT_THRESHOLD: u64 = 10_000;
pub const DEFAULT_SNAPSHOT_THRESHOLD_BYTES: u64 = 64 << 20;
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 5_000;
pub const DEFAULT_VALUE_BYTES_MAX: usize = 1 << 20;
/// A value travels in one log entry and so in one peer request, whose body the HTTP
/// transport caps at 16 MiB; stay well below it.
pub const VALUE_BYTES_LIMIT: usize = 8 << 20;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `[NODE N] time LEVEL message key=value`
    #[default]
    Text,
    /// One JSON object per line, with a `node` field.
    Json,
}

/// The flags of `keel serve`. Every one can also come from its `KEEL_*` variable or from
/// the `--config` file (same name, `-` written `_`).
#[derive(Args, Clone, Debug, Default)]
pub struct ServeArgs {
    /// TOML file with any of the settings below, e.g. `id = 1`, `data_dir = "..."`,
    /// `peers = "1=127.0.0.1:7001,2=127.0.0.1:7002"`. Flags and environment override it.
    #[arg(long, env = "KEEL_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// This node's id; must be one of the ids in --peers.
    #[arg(long, env = "KEEL_ID", value_name = "N")]
    pub id: Option<u64>,
    /// Address to listen on, for clients and peers alike [default: this node's --peers address].
    #[arg(long, env = "KEEL_LISTEN", value_name = "HOST:PORT")]
    pub listen: Option<String>,
    /// Directory for the write-ahead log and snapshots (created if missing).
    #[arg(long, env = "KEEL_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// The founding members, this node included: `1=HOST:PORT,2=HOST:PORT,3=HOST:PORT`.
    /// Read only when the data directory is new (it then bootstraps a cluster of them);
    /// after that the members come from the replicated configuration.
    #[arg(long, env = "KEEL_PEERS", value_name = "ID=HOST:PORT,...")]
    pub peers: Option<String>,
    /// Start empty and wait to be added to the cluster this member belongs to
    /// (`keel member add ID HOST:PORT`), instead of founding one. Needs --listen.
    #[arg(long, env = "KEEL_JOIN", value_name = "HOST:PORT", conflicts_with = "peers")]
    pub join: Option<String>,
    /// Peers refuse messages stamped with another cluster id [default: keel-local].
    #[arg(long, env = "KEEL_CLUSTER_ID", value_name = "NAME")]
    pub cluster_id: Option<String>,
    /// Leader heartbeat interval in milliseconds [default: 50].
    #[arg(long, env = "KEEL_HEARTBEAT_MS", value_name = "MS")]
    pub heartbeat_ms: Option<u64>,
    /// Minimum election timeout in milliseconds; each election waits a random time in [T, 2T) [default: 300].
    #[arg(long, env = "KEEL_ELECTION_TIMEOUT_MS", value_name = "MS")]
    pub election_timeout_ms: Option<u64>,
    /// Take a snapshot after this many applied entries; 0 disables [default: 10000].
    #[arg(long, env = "KEEL_SNAPSHOT_THRESHOLD", value_name = "ENTRIES")]
    pub snapshot_threshold: Option<u64>,
    /// ... or once the entries applied since the last snapshot hold this many bytes, so large
    /// values are compacted before the log fills memory; 0 disables [default: 67108864].
    #[arg(long, env = "KEEL_SNAPSHOT_THRESHOLD_BYTES", value_name = "BYTES")]
    pub snapshot_threshold_bytes: Option<u64>,
    /// How long a client request may wait for commit or a read confirmation [default: 5000].
    #[arg(long, env = "KEEL_REQUEST_TIMEOUT_MS", value_name = "MS")]
    pub request_timeout_ms: Option<u64>,
    /// Largest value accepted, in bytes [default: 1048576; at most 8388608].
    #[arg(long, env = "KEEL_VALUE_BYTES_MAX", value_name = "BYTES")]
    pub value_bytes_max: Option<usize>,
    /// Log line format [default: text].
    #[arg(long, env = "KEEL_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Log filter, in `tracing` env-filter syntax (e.g. `info`, `debug`, `info,keel_node=debug`) [default: info].
    #[arg(long, env = "KEEL_LOG_LEVEL", value_name = "FILTER")]
    pub log_level: Option<String>,
    /// This node's certificate for peer mutual TLS: signed by --peer-ca, with the DNS name
    /// `node-<id>.keel` (`keel certs init` makes one). Needs --peer-key and --peer-ca.
    #[arg(long, env = "KEEL_PEER_CERT", value_name = "PEM", help_heading = "Security")]
    pub peer_cert: Option<PathBuf>,
    /// The private key of --peer-cert.
    #[arg(long, env = "KEEL_PEER_KEY", value_name = "PEM", help_heading = "Security")]
    pub peer_key: Option<PathBuf>,
    /// The cluster CA: peers must present a certificate it signed.
    #[arg(long, env = "KEEL_PEER_CA", value_name = "PEM", help_heading = "Security")]
    pub peer_ca: Option<PathBuf>,
    /// Serve the client API over HTTPS with this certificate (plain HTTP is then refused).
    /// Needs --client-key and peer TLS.
    #[arg(long, env = "KEEL_CLIENT_CERT", value_name = "PEM", help_heading = "Security")]
    pub client_cert: Option<PathBuf>,
    /// The private key of --client-cert.
    #[arg(long, env = "KEEL_CLIENT_KEY", value_name = "PEM", help_heading = "Security")]
    pub client_key: Option<PathBuf>,
    /// Require client certificates signed by this CA (client-certificate auth).
    #[arg(long, env = "KEEL_CLIENT_CA", value_name = "PEM", help_heading = "Security")]
    pub client_ca: Option<PathBuf>,
    /// Require bearer tokens listed in this file (hashed, with roles; `keel token add`
    /// makes them). Needs client TLS unless listening on loopback. Re-read on SIGHUP. (Not
    /// KEEL_TOKEN_FILE: that is a client's own token, which `keel` commands read.)
    #[arg(long, env = "KEEL_AUTH_TOKENS", value_name = "TOML", help_heading = "Security")]
    pub auth_tokens: Option<PathBuf>,
}

/// The `--config` file: the same settings as the flags.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    id: Option<u64>,
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    peers: Option<PeersValue>,
    join: Option<String>,
    cluster_id: Option<String>,
    heartbeat_ms: Option<u64>,
    election_timeout_ms: Option<u64>,
    snapshot_threshold: Option<u64>,
    snapshot_threshold_bytes: Option<u64>,
    request_timeout_ms: Option<u64>,
    value_bytes_max: Option<usize>,
    log_format: Option<LogFormat>,
    log_level: Option<String>,
    peer_cert: Option<PathBuf>,
    peer_key: Option<PathBuf>,
    peer_ca: Option<PathBuf>,
    client_cert: Option<PathBuf>,
    client_key: Option<PathBuf>,
    client_ca: Option<PathBuf>,
    auth_tokens: Option<PathBuf>,
}

/// `peers = "1=a:1,2=b:2"` or a table `[peers]` with `1 = "a:1"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum PeersValue {
    Text(String),
    Table(BTreeMap<String, String>),
}

/// A node's settings, resolved and validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    pub id: NodeId,
    pub listen: String,
    pub data_dir: PathBuf,
    /// `--peers`: the founding members' addresses, this node's included (empty when joining).
    pub peers: BTreeMap<NodeId, String>,
    /// `--join`: a member of the cluster to join.
    pub join: Option<String>,
    pub cluster_id: String,
    pub heartbeat_ms: u64,
    pub election_timeout_ms: u64,
    pub snapshot_threshold_entries: u64,
    pub snapshot_threshold_bytes: u64,
    pub request_timeout_ms: u64,
    pub value_bytes_max: usize,
    pub log_format: LogFormat,
    pub log_level: String,
    pub security: SecuritySettings,
}

impl ServerConfig {
    /// Defaults for everything but the identity (for tests and embedding).
    pub fn new(id: NodeId, data_dir: impl Into<PathBuf>, peers: BTreeMap<NodeId, String>) -> ServerConfig {
        let listen = peers.get(&id).cloned().unwrap_or_default();
        ServerConfig {
            id,
            listen,
            data_dir: data_dir.into(),
            peers,
            join: None,
            cluster_id: DEFAULT_CLUSTER_ID.to_string(),
            heartbeat_ms: DEFAULT_HEARTBEAT_MS,
            election_timeout_ms: DEFAULT_ELECTION_TIMEOUT_MS,
            snapshot_threshold_entries: DEFAULT_SNAPSHOT_THRESHOLD,
            snapshot_threshold_bytes: DEFAULT_SNAPSHOT_THRESHOLD_BYTES,
            request_timeout_ms: DEFAULT_REQUEST_TIMEOUT_MS,
            value_bytes_max: DEFAULT_VALUE_BYTES_MAX,
            log_format: LogFormat::Text,
            log_level: "info".to_string(),
            security: SecuritySettings::default(),
        }
    }

    /// Merges flags and environment (already in `args`, by clap) over the `--config` file
    /// over the defaults, and validates the result.
    pub fn resolve(args: ServeArgs) -> Result<ServerConfig, String> {
        let file = match &args.config {
            Some(path) => read_file_config(path)?,
            None => FileConfig::default(),
        };
        let id = args.id.or(file.id).ok_or("missing --id (or KEEL_ID, or `id` in the config file)")?;
        let data_dir = args.data_dir.or(file.data_dir).ok_or("missing --data-dir (or KEEL_DATA_DIR, or `data_dir` in the config file)")?;
        let join = args.join.or(file.join);
        let peers = match (args.peers, file.peers) {
            (Some(text), _) | (None, Some(PeersValue::Text(text))) => parse_peers(&text)?,
            (None, Some(PeersValue::Table(table))) => peers_from_table(table)?,
            // A node whose data directory holds its configuration needs neither.
            (None, None) if join.is_some() || crate::bootstrap::cluster_file_path(&data_dir).exists() => BTreeMap::new(),
            (None, None) => return Err("missing --peers (or KEEL_PEERS, or `peers` in the config file) to found a cluster, or --join MEMBER to join one".into()),
        };
        let mut config = ServerConfig::new(NodeId(id), data_dir, peers);
        config.join = join;
        if let Some(listen) = args.listen.or(file.listen) {
            config.listen = listen;
        } else if config.listen.is_empty() && config.peers.is_empty() && config.join.is_none() {
            // A founding member restarted without --peers: its address is recorded.
            let recorded = crate::bootstrap::read_cluster_file(&config.data_dir)?.and_then(|cluster| cluster.members.get(&config.id).cloned());
            config.listen = recorded.ok_or("missing --listen (this node's address is not in its data directory's first configuration)")?;
        }
        config.cluster_id = args.cluster_id.or(file.cluster_id).unwrap_or(config.cluster_id);
        config.heartbeat_ms = args.heartbeat_ms.or(file.heartbeat_ms).unwrap_or(config.heartbeat_ms);
        config.election_timeout_ms = args.election_timeout_ms.or(file.election_timeout_ms).unwrap_or(config.election_timeout_ms);
        config.snapshot_threshold_entries = args.snapshot_threshold.or(file.snapshot_threshold).unwrap_or(config.snapshot_threshold_entries);
        config.snapshot_threshold_bytes = args.snapshot_threshold_bytes.or(file.snapshot_threshold_bytes).unwrap_or(config.snapshot_threshold_bytes);
        config.request_timeout_ms = args.request_timeout_ms.or(file.request_timeout_ms).unwrap_or(config.request_timeout_ms);
        config.value_bytes_max = args.value_bytes_max.or(file.value_bytes_max).unwrap_or(config.value_bytes_max);
        config.log_format = args.log_format.or(file.log_format).unwrap_or(config.log_format);
        config.log_level = args.log_level.or(file.log_level).unwrap_or(config.log_level);
        config.security = SecuritySettings {
            peer_cert: args.peer_cert.or(file.peer_cert),
            peer_key: args.peer_key.or(file.peer_key),
            peer_ca: args.peer_ca.or(file.peer_ca),
            client_cert: args.client_cert.or(file.client_cert),
            client_key: args.client_key.or(file.client_key),
            client_ca: args.client_ca.or(file.client_ca),
            auth_tokens: args.auth_tokens.or(file.auth_tokens),
        };
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), String> {
        if let Some(join) = &self.join {
            check_address("--join", join)?;
            if !self.peers.is_empty() {
                return Err("--join and --peers exclude each other: a joining node learns the members from the cluster".into());
            }
            if self.listen.is_empty() {
                return Err("--join needs --listen: the address the cluster will reach this node at".into());
            }
        } else if !self.peers.is_empty() && !self.peers.contains_key(&self.id) {
            let ids: Vec<String> = self.peers.keys().map(|id| id.to_string()).collect();
            return Err(format!("--id {} is not in --peers (ids: {})", self.id, ids.join(", ")));
        }
        check_address("--listen", &self.listen)?;
        if self.cluster_id.is_empty() {
            return Err("--cluster-id must not be empty".into());
        }
        if self.request_timeout_ms == 0 {
            return Err("--request-timeout-ms must be at least 1".into());
        }
        if self.value_bytes_max == 0 || self.value_bytes_max > VALUE_BYTES_LIMIT {
            return Err(format!("--value-bytes-max must be between 1 and {VALUE_BYTES_LIMIT}, not {}", self.value_bytes_max));
        }
        self.security.validate(&self.listen)?;
        self.node_config().validate()
    }

    /// The driver's settings, with `--peers` as the first configuration (`Server::start`
    /// replaces it with the one the data directory records).
    pub fn node_config(&self) -> NodeConfig {
        let mut config = NodeConfig::new(self.id, self.peers.keys().copied().collect());
        config.member_addresses = self.peers.clone();
        config.heartbeat_ms = self.heartbeat_ms;
        config.election_timeout_ms = self.election_timeout_ms;
        config.snapshot_threshold_entries = self.snapshot_threshold_entries;
        config.snapshot_threshold_bytes = self.snapshot_threshold_bytes;
        config
    }

    /// This node's address as its peers know it.
    pub fn advertised_address(&self) -> &str {
        self.peers.get(&self.id).map(String::as_str).unwrap_or(&self.listen)
    }
}

fn read_file_config(path: &Path) -> Result<FileConfig, String> {
    let text = std::fs::read_to_string(path).map_err(|error| format!("cannot read config file {}: {error}", path.display()))?;
    toml::from_str(&text).map_err(|error| format!("config file {}: {}", path.display(), one_line(&error.to_string())))
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `1=127.0.0.1:7001,2=127.0.0.1:7002`.
pub fn parse_peers(text: &str) -> Result<BTreeMap<NodeId, String>, String> {
    let mut peers = BTreeMap::new();
    for item in text.split(',').map(str::trim).filter(|item| !item.is_empty()) {
        let (id, address) = item.split_once('=').ok_or_else(|| format!("--peers item {item:?} is not ID=HOST:PORT"))?;
        insert_peer(&mut peers, id, address.trim())?;
    }
    if peers.is_empty() {
        return Err("--peers is empty".into());
    }
    Ok(peers)
}

fn peers_from_table(table: BTreeMap<String, String>) -> Result<BTreeMap<NodeId, String>, String> {
    let mut peers = BTreeMap::new();
    for (id, address) in table {
        insert_peer(&mut peers, &id, &address)?;
    }
    if peers.is_empty() {
        return Err("peers table is empty".into());
    }
    Ok(peers)
}

fn insert_peer(peers: &mut BTreeMap<NodeId, String>, id: &str, address: &str) -> Result<(), String> {
    let id: u64 = id.trim().parse().map_err(|_| format!("peer id {id:?} is not a number"))?;
    if id == 0 {
        return Err("peer id 0 is reserved; ids start at 1".into());
    }
    check_address(&format!("peer {id}"), address)?;
    if peers.insert(NodeId(id), address.to_string()).is_some() {
        return Err(format!("peer id {id} appears twice in --peers"));
    }
    Ok(())
}

/// The host of `host:port`, an IPv6 address without its brackets (`[::1]:7001` → `::1`).
pub(crate) fn host_of(address: &str) -> &str {
    let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
    host.trim_start_matches('[').trim_end_matches(']')
}

pub(crate) fn check_address(what: &str, address: &str) -> Result<(), String> {
    let valid = match address.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && !host.contains('/') && port.parse::<u16>().is_ok(),
        None => false,
    };
    if valid {
        Ok(())
    } else {
        Err(format!("{what} address {address:?} is not HOST:PORT"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(peers: &str) -> ServeArgs {
        ServeArgs { id: Some(1), data_dir: Some("/tmp/x".into()), peers: Some(peers.into()), ..ServeArgs::default() }
    }

    #[test]
    fn peers_parse_and_reject_garbage() {
        let peers = parse_peers("1=127.0.0.1:7001, 2=localhost:7002,3=[::1]:7003").unwrap();
        assert_eq!(peers.len(), 3);
        assert_eq!(peers[&NodeId(3)], "[::1]:7003");
        for bad in ["", "1", "1=host", "x=h:1", "0=h:1", "1=h:1,1=h:2", "1=h:99999", "1=:80"] {
            assert!(parse_peers(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn defaults_and_validation() {
        let config = ServerConfig::resolve(args("1=127.0.0.1:7001,2=127.0.0.1:7002")).unwrap();
        assert_eq!(config.listen, "127.0.0.1:7001", "listen defaults to this node's peer address");
        assert_eq!(config.cluster_id, DEFAULT_CLUSTER_ID);
        assert_eq!(config.request_timeout_ms, DEFAULT_REQUEST_TIMEOUT_MS);
        let error = ServerConfig::resolve(args("2=127.0.0.1:7002")).unwrap_err();
        assert!(error.contains("not in --peers"), "{error}");
        let too_fast = ServeArgs { heartbeat_ms: Some(200), ..args("1=h:1") };
        assert!(ServerConfig::resolve(too_fast).is_err(), "election timeout below 2 x heartbeat");
        let huge = ServeArgs { value_bytes_max: Some(VALUE_BYTES_LIMIT + 1), ..args("1=h:1") };
        assert!(ServerConfig::resolve(huge).is_err());
    }

    #[test]
    fn file_is_overridden_by_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keel.toml");
        let text = "id = 2\ndata_dir = \"/var/keel\"\ncluster_id = \"prod\"\nheartbeat_ms = 40\nlog_format = \"json\"\n[peers]\n1 = \"10.0.0.1:7001\"\n2 = \"10.0.0.2:7001\"\n";
        std::fs::write(&path, text).unwrap();
        let from_file = ServerConfig::resolve(ServeArgs { config: Some(path.clone()), ..ServeArgs::default() }).unwrap();
        assert_eq!((from_file.id, from_file.cluster_id.as_str(), from_file.heartbeat_ms), (NodeId(2), "prod", 40));
        assert_eq!(from_file.log_format, LogFormat::Json);
        assert_eq!(from_file.listen, "10.0.0.2:7001");
        let overridden = ServeArgs { config: Some(path), id: Some(1), heartbeat_ms: Some(60), ..ServeArgs::default() };
        let merged = ServerConfig::resolve(overridden).unwrap();
        assert_eq!((merged.id, merged.heartbeat_ms, merged.cluster_id.as_str()), (NodeId(1), 60, "prod"));
    }

    #[test]
    fn the_byte_threshold_for_snapshots_reaches_the_node() {
        let config = ServerConfig::resolve(args("1=h:1")).unwrap();
        assert_eq!(config.node_config().snapshot_threshold_bytes, DEFAULT_SNAPSHOT_THRESHOLD_BYTES);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keel.toml");
        std::fs::write(&path, "snapshot_threshold_bytes = 1000\n").unwrap();
        let from_file = ServerConfig::resolve(ServeArgs { config: Some(path.clone()), ..args("1=h:1") }).unwrap();
        assert_eq!(from_file.node_config().snapshot_threshold_bytes, 1000);
        let flag = ServerConfig::resolve(ServeArgs { config: Some(path), snapshot_threshold_bytes: Some(0), ..args("1=h:1") }).unwrap();
        assert_eq!(flag.node_config().snapshot_threshold_bytes, 0, "0 switches it off");
    }

    #[test]
    fn unknown_file_keys_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keel.toml");
        std::fs::write(&path, "id = 1\nheartbeat = 40\n").unwrap();
        let error = ServerConfig::resolve(ServeArgs { config: Some(path), ..ServeArgs::default() }).unwrap_err();
        assert!(error.contains("heartbeat") && !error.contains('\n'), "{error}");
    }
}
