//! Bootstrap or join: where a node's first configuration comes from.
//!
//! A cluster's first configuration is written once, when a node starts on an empty data
//! directory, into `DATA_DIR/cluster.json`: the cluster id and the founding members with
//! their addresses (`--peers`), or, for a node started with `--join`, no members at all.
//! After that the members are the replicated configuration in the log and the snapshot
//! (thesis §4.1), which starts from that file:
//!
//! 1. Empty data directory, `--peers`: bootstrap a new cluster of those members.
//! 2. Empty data directory, `--join MEMBER`: ask MEMBER for the cluster id and the members'
//!    addresses, record an empty first configuration, and wait to be added (as a learner,
//!    `keel member add`); the leader's log or snapshot then makes this node a member.
//! 3. A data directory with `cluster.json`: use it. A `--peers` that disagrees is reported
//!    and ignored (as etcd ignores `--initial-cluster` once bootstrapped): editing it cannot
//!    change who votes. A `--cluster-id` that disagrees stops the node.
//! 4. A data directory with a log but no `cluster.json` (written by keel before membership
//!    changes): its first configuration was `--peers`; recorded now.
//!
//! The file is written to a temporary name, synced, and renamed, so it is whole or absent.

use keel_core::NodeId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

pub const CLUSTER_FILE: &str = "cluster.json";
/// The cluster file is a few hundred bytes; anything much larger is not ours.
const CLUSTER_FILE_BYTES_MAX: u64 = 64 * 1024;

/// What `cluster.json` holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    pub cluster_id: String,
    /// The founding members and their addresses; empty for a node that joined.
    pub members: BTreeMap<NodeId, String>,
}

/// How this start found its first configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Start {
    Bootstrapped,
    Joining,
    Recorded,
    Adopted,
}

/// The first configuration to start from, and addresses of members to reach before the
/// log has named any (a joining node's).
#[derive(Clone, Debug)]
pub struct FirstConfiguration {
    pub start: Start,
    pub cluster: ClusterFile,
    pub known_addresses: BTreeMap<NodeId, String>,
}

pub fn cluster_file_path(data_dir: &Path) -> PathBuf {
    data_dir.join(CLUSTER_FILE)
}

/// Reads `cluster.json`; `Ok(None)` if there is none.
pub fn read_cluster_file(data_dir: &Path) -> Result<Option<ClusterFile>, String> {
    let path = cluster_file_path(data_dir);
    let metadata = match std::fs::metadata(&path) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(format!("cannot read data dir {}: {error}", data_dir.display())),
    };
    if metadata.len() > CLUSTER_FILE_BYTES_MAX {
        return Err(format!("{} is {} bytes; a cluster file is at most {CLUSTER_FILE_BYTES_MAX}", path.display(), metadata.len()));
    }
    let text = std::fs::read(&path).map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    let file: ClusterFile = serde_json::from_slice(&text).map_err(|error| format!("{} is corrupt ({error}); restore it from a member's data directory (all founding members hold the same one)", path.display()))?;
    Ok(Some(file))
}

/// Writes `cluster.json` whole or not at all.
pub fn write_cluster_file(data_dir: &Path, file: &ClusterFile) -> Result<(), String> {
    std::fs::create_dir_all(data_dir).map_err(|error| format!("cannot create data dir {}: {error}", data_dir.display()))?;
    let path = cluster_file_path(data_dir);
    let temporary = data_dir.join(format!("{CLUSTER_FILE}.tmp"));
    let text = serde_json::to_vec_pretty(file).expect("a cluster file serializes");
    let write = || -> std::io::Result<()> {
        let mut out = std::fs::File::create(&temporary)?;
        out.write_all(&text)?;
        out.sync_all()?;
        std::fs::rename(&temporary, &path)?;
        std::fs::File::open(data_dir)?.sync_all()
    };
    write().map_err(|error| format!("cannot write {}: {error}", path.display()))
}

/// Whether `data_dir` holds nothing of a node yet (missing, or empty but for a stale
/// temporary cluster file).
pub fn is_empty_data_dir(data_dir: &Path) -> Result<bool, String> {
    let entries = match std::fs::read_dir(data_dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(true),
        Err(error) => return Err(format!("cannot read data dir {}: {error}", data_dir.display())),
    };
    for entry in entries {
        let entry = entry.map_err(|error| format!("cannot read data dir {}: {error}", data_dir.display()))?;
        if entry.file_name() != format!("{CLUSTER_FILE}.tmp").as_str() {
            return Ok(false);
        }
    }
    Ok(true)
}

/// What the member a node joins through says about the cluster (`GET /v1/cluster`).
#[derive(Clone, Debug)]
pub struct JoinInfo {
    pub cluster_id: String,
    pub addresses: BTreeMap<NodeId, String>,
}

/// Steps 1 to 4 of the module doc. `join` is the answer of the member named by `--join`
/// (fetched by the caller only when the data directory is empty).
pub fn first_configuration(data_dir: &Path, cluster_id: &str, peers: Option<&BTreeMap<NodeId, String>>, join: Option<JoinInfo>) -> Result<FirstConfiguration, String> {
    if let Some(recorded) = read_cluster_file(data_dir)? {
        if recorded.cluster_id != cluster_id {
            return Err(format!("data dir {} belongs to cluster {:?}, not {cluster_id:?} (--cluster-id)", data_dir.display(), recorded.cluster_id));
        }
        if let Some(peers) = peers.filter(|peers| **peers != recorded.members) {
            tracing::warn!(
                "--peers ({}) differs from this node's first configuration ({}); ignored: the members come from the replicated configuration (see `keel member list`)",
                describe(peers),
                describe(&recorded.members)
            );
        }
        return Ok(FirstConfiguration { start: Start::Recorded, cluster: recorded, known_addresses: peers.cloned().unwrap_or_default() });
    }
    let empty = is_empty_data_dir(data_dir)?;
    let (start, cluster, known_addresses) = match (join, peers) {
        (Some(join), _) if empty => {
            if join.cluster_id != cluster_id {
                return Err(format!("the member to join belongs to cluster {:?}, not {cluster_id:?} (--cluster-id)", join.cluster_id));
            }
            (Start::Joining, ClusterFile { cluster_id: cluster_id.to_string(), members: BTreeMap::new() }, join.addresses)
        }
        (Some(_), _) => return Err(format!("--join needs an empty data dir, and {} holds a node's data", data_dir.display())),
        (None, Some(peers)) => {
            let start = if empty { Start::Bootstrapped } else { Start::Adopted };
            (start, ClusterFile { cluster_id: cluster_id.to_string(), members: peers.clone() }, peers.clone())
        }
        (None, None) => return Err(format!("data dir {} is new: give --peers to start a new cluster, or --join MEMBER to join one", data_dir.display())),
    };
    write_cluster_file(data_dir, &cluster)?;
    Ok(FirstConfiguration { start, cluster, known_addresses })
}

pub fn describe(peers: &BTreeMap<NodeId, String>) -> String {
    peers.iter().map(|(id, address)| format!("{id}={address}")).collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peers(text: &str) -> BTreeMap<NodeId, String> {
        crate::config::parse_peers(text).unwrap()
    }

    #[test]
    fn a_new_directory_bootstraps_once_and_then_keeps_its_first_configuration() {
        let dir = tempfile::tempdir().unwrap();
        let founders = peers("1=a:1,2=b:2,3=c:3");
        let first = first_configuration(dir.path(), "prod", Some(&founders), None).unwrap();
        assert_eq!((first.start, first.cluster.members.clone()), (Start::Bootstrapped, founders.clone()));
        let edited = peers("1=a:1,2=b:2,3=c:3,4=d:4");
        let again = first_configuration(dir.path(), "prod", Some(&edited), None).unwrap();
        assert_eq!((again.start, again.cluster.members), (Start::Recorded, founders), "an edited --peers is ignored");
        let error = first_configuration(dir.path(), "other", Some(&edited), None).unwrap_err();
        assert!(error.contains("belongs to cluster \"prod\""), "{error}");
    }

    #[test]
    fn a_joining_node_records_no_members_and_never_bootstraps_later() {
        let dir = tempfile::tempdir().unwrap();
        let join = JoinInfo { cluster_id: "prod".into(), addresses: peers("1=a:1") };
        let first = first_configuration(dir.path(), "prod", None, Some(join.clone())).unwrap();
        assert_eq!(first.start, Start::Joining);
        assert!(first.cluster.members.is_empty());
        assert_eq!(first.known_addresses, peers("1=a:1"));
        let restarted = first_configuration(dir.path(), "prod", Some(&peers("4=d:4")), None).unwrap();
        assert!(restarted.cluster.members.is_empty(), "a --peers given later does not make it found a cluster");
        let wrong_cluster = JoinInfo { cluster_id: "test".into(), ..join };
        let fresh = tempfile::tempdir().unwrap();
        assert!(first_configuration(fresh.path(), "prod", None, Some(wrong_cluster)).is_err());
    }

    #[test]
    fn old_data_directories_are_adopted_and_bad_files_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("wal-00000001.log"), b"x").unwrap();
        let first = first_configuration(dir.path(), "prod", Some(&peers("1=a:1")), None).unwrap();
        assert_eq!(first.start, Start::Adopted);
        assert!(first_configuration(dir.path(), "prod", None, Some(JoinInfo { cluster_id: "prod".into(), addresses: BTreeMap::new() })).is_ok(), "recorded wins over --join");
        let fresh = tempfile::tempdir().unwrap();
        std::fs::write(fresh.path().join("wal-00000001.log"), b"x").unwrap();
        assert!(first_configuration(fresh.path(), "prod", None, Some(JoinInfo { cluster_id: "prod".into(), addresses: BTreeMap::new() })).is_err(), "--join on a used dir");
        std::fs::write(cluster_file_path(fresh.path()), b"{not json").unwrap();
        let error = first_configuration(fresh.path(), "prod", None, None).unwrap_err();
        assert!(error.contains("corrupt"), "{error}");
    }
}
