//! A network for fault tests: each node in a network namespace of its own, all joined by a
//! bridge, so iptables inside one namespace can cut that node off. The test process reaches
//! every node through the bridge's address, as a client would.
//!
//! Needs root, `ip` (iproute2) and `iptables`; `.ci/run` runs as root and installs them.
//! Everything is named after the test process and a count of fabrics made in it, so runs (and
//! tests of one run) cannot collide, and deleted on drop.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// Every node listens on this port, in its own namespace.
pub const PORT: u16 = 7001;

pub fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|output| output.stdout == b"0\n").unwrap_or(false)
}

pub struct Fabric {
    tag: u32,
    subnet: String,
    nodes: u64,
}

impl Fabric {
    pub fn new(nodes: u64) -> Fabric {
        static MADE: AtomicU32 = AtomicU32::new(0);
        let made = MADE.fetch_add(1, Ordering::SeqCst);
        assert!(made < 10, "at most 10 fabrics per test process");
        let pid = std::process::id();
        let fabric = Fabric { tag: pid % 1_000 * 10 + made, subnet: format!("10.{}.{}", 213 + made, pid % 250), nodes };
        fabric.run(&["ip", "link", "add", &fabric.bridge(), "type", "bridge"]);
        fabric.run(&["ip", "addr", "add", &format!("{}.254/24", fabric.subnet), "dev", &fabric.bridge()]);
        fabric.run(&["ip", "link", "set", &fabric.bridge(), "up"]);
        for id in 1..=nodes {
            let (namespace, outside, inside) = (fabric.namespace(id), format!("kv{}o{id}", fabric.tag), format!("kv{}i{id}", fabric.tag));
            fabric.run(&["ip", "netns", "add", &namespace]);
            fabric.run(&["ip", "link", "add", &outside, "type", "veth", "peer", "name", &inside]);
            fabric.run(&["ip", "link", "set", &inside, "netns", &namespace]);
            fabric.run(&["ip", "link", "set", &outside, "master", &fabric.bridge()]);
            fabric.run(&["ip", "link", "set", &outside, "up"]);
            fabric.run(&["ip", "netns", "exec", &namespace, "ip", "addr", "add", &format!("{}/24", fabric.ip(id)), "dev", &inside]);
            fabric.run(&["ip", "netns", "exec", &namespace, "ip", "link", "set", &inside, "up"]);
            fabric.run(&["ip", "netns", "exec", &namespace, "ip", "link", "set", "lo", "up"]);
        }
        fabric
    }

    fn bridge(&self) -> String {
        format!("kb{}", self.tag)
    }

    pub fn namespace(&self, id: u64) -> String {
        format!("keel-test-{}-{id}", self.tag)
    }

    pub fn ip(&self, id: u64) -> String {
        format!("{}.{id}", self.subnet)
    }

    pub fn address(&self, id: u64) -> String {
        format!("{}:{PORT}", self.ip(id))
    }

    /// A command that runs `program` inside node `id`'s namespace (`ip netns exec` execs
    /// it, so the child's pid is the program's).
    pub fn command(&self, id: u64, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.namespace(id), program]);
        command
    }

    fn run(&self, command: &[&str]) {
        let output = Command::new(command[0]).args(&command[1..]).output().unwrap_or_else(|error| panic!("{}: {error} (is it installed?)", command.join(" ")));
        assert!(output.status.success(), "{} failed: {}", command.join(" "), String::from_utf8_lossy(&output.stderr));
    }

    fn drop_both_ways(&self, id: u64, other: &str) {
        let namespace = self.namespace(id);
        self.run(&["ip", "netns", "exec", &namespace, "iptables", "-A", "INPUT", "-s", other, "-j", "DROP"]);
        self.run(&["ip", "netns", "exec", &namespace, "iptables", "-A", "OUTPUT", "-d", other, "-j", "DROP"]);
    }

    /// Drops every packet between node `id` and the rest of the subnet, clients included,
    /// both ways: dropped, not refused, so nothing tells a sender.
    pub fn cut_off(&self, id: u64) {
        self.drop_both_ways(id, &format!("{}.0/24", self.subnet));
    }

    /// Drops every packet between node `id` and the other nodes, both ways; clients (the
    /// bridge's address) still reach it. A leader cut off like this keeps taking requests
    /// it cannot commit or confirm.
    pub fn isolate_from_peers(&self, id: u64) {
        for other in (1..=self.nodes).filter(|other| *other != id) {
            self.drop_both_ways(id, &self.ip(other));
        }
    }

    pub fn heal(&self, id: u64) {
        self.run(&["ip", "netns", "exec", &self.namespace(id), "iptables", "-F"]);
    }

    /// Established connections that node `from` opened to node `id`'s port, seen from `id`.
    pub fn established_from(&self, id: u64, from: u64) -> usize {
        let filter = format!("( sport = :{PORT} and dst {} )", self.ip(from));
        let output = Command::new("ip").args(["netns", "exec", &self.namespace(id), "ss", "-Htn", "state", "established", &filter]).output().expect("ss (iproute2)");
        assert!(output.status.success(), "ss failed: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).lines().filter(|line| !line.trim().is_empty()).count()
    }
}

impl Drop for Fabric {
    fn drop(&mut self) {
        for id in 1..=self.nodes {
            let _ = Command::new("ip").args(["netns", "del", &self.namespace(id)]).output();
        }
        let _ = Command::new("ip").args(["link", "del", &self.bridge()]).output();
    }
}
