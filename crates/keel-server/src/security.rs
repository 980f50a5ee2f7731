//! TLS and tokens, as a node serves them and as a client uses them.
//!
//! A node (docs/OPERATIONS.md, "Security"):
//! - `--peer-cert/--peer-key/--peer-ca`: peers speak mutual TLS (keel-node's `tls.rs`);
//!   `/raft/stream` takes only a peer certificate from the CA naming the stream's sender.
//!   Forwarding to the leader goes over the same mutual TLS.
//! - `--client-cert/--client-key`: the client API is served over HTTPS only (plain HTTP is
//!   answered 400 `tls_required`). Needs peer TLS too: the values clients send over TLS are
//!   replicated to the peers, and must not travel in clear there.
//! - `--client-ca`: clients must present a certificate from this CA (etcd's
//!   `--client-cert-auth`). With tokens on as well, the token decides the role.
//! - `--auth-tokens`: bearer tokens with roles (`auth.rs`). Refused without client TLS unless
//!   the node listens on a loopback address only: a token sent in clear is a token given away.
//!
//! Every file is read and checked when the node starts; a problem stops it with one line
//! (exit code 2).

use crate::auth::{self, Access, Tokens};
use crate::config::ServerConfig;
use keel_node::listener::ListenerTls;
use keel_node::tls::{self, Identity, PeerTls, HTTP1_ALPN};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The security settings of `keel serve`, as given (paths).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SecuritySettings {
    pub peer_cert: Option<PathBuf>,
    pub peer_key: Option<PathBuf>,
    pub peer_ca: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub client_ca: Option<PathBuf>,
    pub auth_tokens: Option<PathBuf>,
}

impl SecuritySettings {
    pub fn peer_tls(&self) -> bool {
        self.peer_cert.is_some()
    }

    pub fn client_tls(&self) -> bool {
        self.client_cert.is_some()
    }

    /// The combinations that make sense (see the module doc); `listen` is the address the
    /// node listens on.
    pub fn validate(&self, listen: &str) -> Result<(), String> {
        let peer = [&self.peer_cert, &self.peer_key, &self.peer_ca];
        if peer.iter().any(|path| path.is_some()) && !peer.iter().all(|path| path.is_some()) {
            return Err("--peer-cert, --peer-key and --peer-ca go together: give all three or none".into());
        }
        if self.client_cert.is_some() != self.client_key.is_some() {
            return Err("--client-cert and --client-key go together".into());
        }
        if self.client_tls() && !self.peer_tls() {
            return Err("--client-cert needs peer TLS too (--peer-cert, --peer-key, --peer-ca): values clients send over TLS would be replicated in clear".into());
        }
        if self.client_ca.is_some() && !self.client_tls() {
            return Err("--client-ca needs --client-cert and --client-key: client certificates are asked for in the TLS handshake".into());
        }
        if self.auth_tokens.is_some() && !self.client_tls() && !is_loopback(listen) {
            return Err(format!("--auth-tokens without client TLS on {listen}: tokens would cross the network in clear; add --client-cert/--client-key, or listen on a loopback address"));
        }
        Ok(())
    }
}

/// Whether `address` (`host:port`) is a loopback address: 127.0.0.0/8, ::1 or `localhost`.
fn is_loopback(address: &str) -> bool {
    let host = crate::config::host_of(address);
    host.eq_ignore_ascii_case("localhost") || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// A node's security, loaded and checked.
#[derive(Default)]
pub struct NodeSecurity {
    pub peer: Option<Arc<PeerTls>>,
    pub client_tls: Option<Arc<rustls::ServerConfig>>,
    pub access: Option<Arc<Access>>,
}

impl NodeSecurity {
    pub fn load(config: &ServerConfig) -> Result<NodeSecurity, String> {
        let settings = &config.security;
        settings.validate(&config.listen)?;
        let peer = match (&settings.peer_cert, &settings.peer_key, &settings.peer_ca) {
            (Some(cert), Some(key), Some(ca)) => Some(Arc::new(PeerTls::load(config.id, cert, key, ca)?)),
            _ => None,
        };
        let client_tls = match (&settings.client_cert, &settings.client_key) {
            (Some(cert), Some(key)) => {
                let identity = Identity::load(cert, key)?;
                let client_ca = settings.client_ca.as_deref().map(tls::load_roots).transpose()?;
                Some(tls::client_server_config(&identity, client_ca).map_err(|error| format!("client TLS: {error}"))?)
            }
            _ => None,
        };
        let access = match &settings.auth_tokens {
            Some(path) => Some(Arc::new(Access::new(config.id, path.clone(), Tokens::load(path)?))),
            None => None,
        };
        Ok(NodeSecurity { peer, client_tls, access })
    }

    pub fn listener_tls(&self) -> Result<ListenerTls, String> {
        let peer = self.peer.as_ref().map(|peer| peer.server_config()).transpose().map_err(|error| format!("peer TLS: {error}"))?;
        Ok(ListenerTls { peer, client: self.client_tls.clone() })
    }

    /// How clients reach this node's API.
    pub fn client_scheme(&self) -> &'static str {
        if self.client_tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// One line for the log: what is on.
    pub fn describe(&self) -> String {
        let on = |yes: bool| if yes { "on" } else { "off" };
        format!("peer mTLS {}, client TLS {}, tokens {}", on(self.peer.is_some()), on(self.client_tls.is_some()), on(self.access.is_some()))
    }
}

/// How a client (`keel`, `keel bench`) talks to the nodes.
#[derive(Clone, Debug, Default)]
pub struct ClientSecurity {
    /// `Some` for `https://`: the CA to trust and the certificate to present, if any.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Sent as `Authorization: Bearer`.
    pub token: Option<String>,
}

impl ClientSecurity {
    /// From the client flags. TLS is on with `https` (an `https://` endpoint) or any of the
    /// TLS files; without `--cacert` the usual public roots are trusted.
    pub fn load(https: bool, cacert: Option<&Path>, cert: Option<&Path>, key: Option<&Path>, token_file: Option<&PathBuf>) -> Result<ClientSecurity, String> {
        let token = auth::client_token(token_file)?;
        if !(https || cacert.is_some() || cert.is_some()) {
            return Ok(ClientSecurity { tls: None, token });
        }
        let roots = match cacert {
            Some(path) => tls::load_roots(path)?,
            None => Arc::new(rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() }),
        };
        let builder = rustls::ClientConfig::builder_with_provider(tls::crypto_provider()).with_safe_default_protocol_versions().map_err(|error| error.to_string())?.with_root_certificates(roots);
        let mut config = match (cert, key) {
            (Some(cert), Some(key)) => {
                let identity = Identity::load(cert, key)?;
                builder.with_client_auth_cert(identity.chain, identity.key).map_err(|error| format!("client certificate {}: {error}", cert.display()))?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => return Err("--cert and --key go together".into()),
        };
        config.alpn_protocols = vec![HTTP1_ALPN.to_vec()];
        Ok(ClientSecurity { tls: Some(Arc::new(config)), token })
    }

    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(name: &str) -> Option<PathBuf> {
        Some(PathBuf::from(name))
    }

    fn peer() -> SecuritySettings {
        SecuritySettings { peer_cert: path("n.pem"), peer_key: path("n-key.pem"), peer_ca: path("ca.pem"), ..SecuritySettings::default() }
    }

    #[test]
    fn settings_that_would_leak_or_fail_later_are_refused() {
        assert_eq!(SecuritySettings::default().validate("0.0.0.0:7001"), Ok(()));
        assert_eq!(peer().validate("10.0.0.1:7001"), Ok(()));
        let partial = SecuritySettings { peer_ca: None, ..peer() };
        assert!(partial.validate("h:1").unwrap_err().contains("go together"));
        let client_only = SecuritySettings { client_cert: path("c.pem"), client_key: path("c-key.pem"), ..SecuritySettings::default() };
        assert!(client_only.validate("h:1").unwrap_err().contains("in clear"));
        let client = SecuritySettings { client_cert: path("c.pem"), client_key: path("c-key.pem"), ..peer() };
        assert_eq!(client.validate("h:1"), Ok(()));
        let ca_alone = SecuritySettings { client_ca: path("ca.pem"), ..peer() };
        assert!(ca_alone.validate("h:1").is_err());

        let tokens_in_clear = SecuritySettings { auth_tokens: path("tokens.toml"), ..peer() };
        assert!(tokens_in_clear.validate("10.0.0.1:7001").unwrap_err().contains("in clear"));
        assert!(tokens_in_clear.validate("0.0.0.0:7001").is_err());
        for loopback in ["127.0.0.1:7001", "localhost:7001", "[::1]:7001", "127.0.0.2:1"] {
            assert_eq!(tokens_in_clear.validate(loopback), Ok(()), "{loopback}");
        }
        let tokens_over_tls = SecuritySettings { auth_tokens: path("tokens.toml"), ..client };
        assert_eq!(tokens_over_tls.validate("10.0.0.1:7001"), Ok(()));
    }
}
