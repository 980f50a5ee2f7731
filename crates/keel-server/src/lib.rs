//! # keel-server: the `keel` binary's library
//!
//! The service layer of keel (see docs/API.md for the HTTP reference):
//! - [`server::Server`] runs one node ([`keel_node::RaftNode`] with a [`keel_node::FileStorage`]
//!   and the HTTP transport) behind one listener serving the v1 API (`api_v1.rs`), the seed's
//!   API (`api_seed.rs`) and peer traffic (`/raft/stream`).
//! - Followers forward v1 requests to the leader (`forward.rs`).
//! - [`config`] merges flags, `KEEL_*` variables and a TOML file; [`logging`] prefixes every
//!   line with `[NODE N]`.
//! - [`client::Client`] is the CLI's client: follows leader hints, retries only what is safe.

pub mod api_error;
pub mod auth;
mod api_members;
pub mod bootstrap;
pub mod bench;
mod api_seed;
mod api_watch;
mod api_v1;
pub mod cli;
pub mod client;
pub mod config;
pub mod forward;
pub mod logging;
pub mod metrics;
pub mod security;
pub mod server;

pub use config::ServerConfig;
pub use server::Server;
