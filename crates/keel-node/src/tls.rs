//! Mutual TLS between peers.
//!
//! Every node holds a certificate signed by the cluster's CA that names it: a DNS subject
//! alternative name `node-<id>.keel` ([`node_name`]). The same certificate serves both ends:
//! - **dialing** a peer, a node presents it as its client certificate, and accepts the
//!   peer's server certificate only if it chains to the CA *and* names the node it meant to
//!   reach ([`PeerTls::client_config`]): a certificate of another node, or of the right node
//!   from another CA, fails the handshake. The address it dialed plays no part, so peers can
//!   be reached by any IP or name.
//! - **accepting**, a node asks for a client certificate from the CA
//!   ([`PeerTls::server_config`]), and the listener records the one it got
//!   ([`ConnectionSecurity::Peer`]). `/raft/stream` then checks it names the node the stream
//!   claims to come from (`transport_http.rs`), before it reads a single frame.
//!
//! Peer connections are told apart from client connections on the same port by ALPN: a
//! peer offers [`PEER_ALPN`]; the listener (keel-server's `listener.rs`) reads the
//! ClientHello and picks the peer or the client configuration.

use keel_core::NodeId;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

/// The ALPN protocol a peer offers, so the listener knows to ask for its certificate.
pub const PEER_ALPN: &[u8] = b"keel-peer/1";
/// The ALPN protocol clients get: the server speaks HTTP/1.1 only.
pub const HTTP1_ALPN: &[u8] = b"http/1.1";

/// The DNS name a node's certificate must carry: `node-<id>.keel`.
pub fn node_name(id: NodeId) -> String {
    format!("node-{id}.keel")
}

/// The crypto rustls uses here: ring, which reqwest's rustls already brings.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// What the listener learned about a connection before any request on it; handlers find
/// it in the request's extensions as `axum::extract::ConnectInfo<ConnectionInfo>`.
#[derive(Clone, Debug)]
pub struct ConnectionInfo {
    pub remote: SocketAddr,
    pub security: ConnectionSecurity,
}

#[derive(Clone, Debug)]
pub enum ConnectionSecurity {
    /// Plain TCP.
    Plain,
    /// TLS with the client configuration; the client certificate, if one was asked for.
    Client { certificate: Option<CertificateDer<'static>> },
    /// TLS with the peer configuration: a certificate chained to the cluster CA (which node
    /// it names is checked per request).
    Peer { certificate: CertificateDer<'static> },
}

/// Reads every certificate in a PEM file.
pub fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certificates: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|error| format!("cannot read certificate file {}: {error}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|error| format!("certificate file {}: {error}", path.display()))?;
    if certificates.is_empty() {
        return Err(format!("certificate file {} holds no certificate", path.display()));
    }
    Ok(certificates)
}

/// Reads the first private key (PKCS#8, PKCS#1 or SEC1) in a PEM file.
pub fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|error| format!("cannot read a private key from {}: {error}", path.display()))
}

/// The CA certificates in a PEM file, as trust roots.
pub fn load_roots(path: &Path) -> Result<Arc<RootCertStore>, String> {
    let mut roots = RootCertStore::empty();
    for certificate in load_certificates(path)? {
        roots.add(certificate).map_err(|error| format!("CA file {}: {error}", path.display()))?;
    }
    Ok(Arc::new(roots))
}

/// A certificate chain and its key, checked to belong together.
#[derive(Debug)]
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Identity {
    pub fn load(certificate_path: &Path, key_path: &Path) -> Result<Identity, String> {
        let chain = load_certificates(certificate_path)?;
        let key = load_private_key(key_path)?;
        let identity = Identity { chain, key };
        identity.certified_key(&crypto_provider()).map_err(|error| format!("key {} does not match certificate {}: {error}", key_path.display(), certificate_path.display()))?;
        Ok(identity)
    }

    pub fn certified_key(&self, provider: &CryptoProvider) -> Result<rustls::sign::CertifiedKey, rustls::Error> {
        rustls::sign::CertifiedKey::from_der(self.chain.clone(), self.key.clone_key(), provider)
    }
}

/// Whether `certificate` names node `id` (see the module doc). Only the name is checked:
/// the chain was verified in the handshake.
pub fn certificate_names_node(certificate: &CertificateDer<'_>, id: NodeId) -> bool {
    let Ok(name) = ServerName::try_from(node_name(id)) else { return false };
    let Ok(end_entity) = webpki::EndEntityCert::try_from(certificate) else { return false };
    end_entity.verify_is_valid_for_subject_name(&name).is_ok()
}

/// The listener's configuration for client connections: `identity` as the server
/// certificate, HTTP/1.1, and with `client_ca` a client certificate from it required
/// (etcd's `--client-cert-auth`).
pub fn client_server_config(identity: &Identity, client_ca: Option<Arc<RootCertStore>>) -> Result<Arc<ServerConfig>, String> {
    let provider = crypto_provider();
    let builder = ServerConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions().map_err(|error| error.to_string())?;
    let builder = match client_ca {
        Some(roots) => builder.with_client_cert_verifier(WebPkiClientVerifier::builder_with_provider(roots, provider).build().map_err(|error| error.to_string())?),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(identity.chain.clone(), identity.key.clone_key()).map_err(|error| error.to_string())?;
    config.alpn_protocols = vec![HTTP1_ALPN.to_vec()];
    Ok(Arc::new(config))
}

/// One node's peer TLS settings: its identity and the cluster CA.
#[derive(Debug)]
pub struct PeerTls {
    id: NodeId,
    identity: Identity,
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
}

impl PeerTls {
    /// Loads node `id`'s certificate, key and the cluster CA, and checks what would otherwise
    /// fail only at the first handshake: the key matches, and the certificate chains to the
    /// CA, is valid now, may serve as client and server, and names node `id`.
    pub fn load(id: NodeId, certificate_path: &Path, key_path: &Path, ca_path: &Path) -> Result<PeerTls, String> {
        let identity = Identity::load(certificate_path, key_path)?;
        let roots = load_roots(ca_path)?;
        let tls = PeerTls { id, identity, roots, provider: crypto_provider() };
        tls.check_own_certificate().map_err(|problem| format!("peer certificate {}: {problem}", certificate_path.display()))?;
        Ok(tls)
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    fn check_own_certificate(&self) -> Result<(), String> {
        let (end_entity, intermediates) = self.identity.chain.split_first().expect("load_certificates returns at least one");
        let name = ServerName::try_from(node_name(self.id)).expect("node names are valid DNS names");
        let as_server = WebPkiServerVerifier::builder_with_provider(self.roots.clone(), self.provider.clone()).build().map_err(|error| error.to_string())?;
        as_server.verify_server_cert(end_entity, intermediates, &name, &[], UnixTime::now()).map_err(|error| format!("not usable as node {}'s certificate under the peer CA (it must chain to the CA and carry the DNS name {}): {error}", self.id, node_name(self.id)))?;
        let as_client = WebPkiClientVerifier::builder_with_provider(self.roots.clone(), self.provider.clone()).build().map_err(|error| error.to_string())?;
        as_client.verify_client_cert(end_entity, intermediates, UnixTime::now()).map_err(|error| format!("not usable as a client certificate under the peer CA (extended key usage clientAuth is needed): {error}"))?;
        Ok(())
    }

    /// The listener's configuration for peer connections: this node's certificate, and a
    /// client certificate from the CA required.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, String> {
        let verifier = WebPkiClientVerifier::builder_with_provider(self.roots.clone(), self.provider.clone()).build().map_err(|error| error.to_string())?;
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|error| error.to_string())?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.identity.chain.clone(), self.identity.key.clone_key())
            .map_err(|error| error.to_string())?;
        config.alpn_protocols = vec![PEER_ALPN.to_vec()];
        Ok(Arc::new(config))
    }

    /// The configuration for dialing node `peer`: offers [`PEER_ALPN`], presents this node's
    /// certificate, and accepts only a server certificate from the CA that names `peer`.
    pub fn client_config(&self, peer: NodeId) -> ClientConfig {
        let expected = ServerName::try_from(node_name(peer)).expect("node names are valid DNS names");
        self.dialing_config(Arc::new(NodeVerifier { inner: self.server_verifier(), expected }))
    }

    /// The configuration for asking a member we know only by address (`--join`): offers
    /// [`PEER_ALPN`] with this node's certificate, and accepts a server certificate from the
    /// CA that is valid for the host dialed (a node's certificate lists its hosts).
    pub fn client_config_by_host(&self) -> ClientConfig {
        self.dialing_config(self.server_verifier())
    }

    /// Dialing a peer: this node's certificate, the peer ALPN, and `verifier` for theirs.
    fn dialing_config(&self, verifier: Arc<dyn ServerCertVerifier>) -> ClientConfig {
        let mut config = ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(self.identity.chain.clone(), self.identity.key.clone_key())
            .expect("the identity was checked at load");
        config.alpn_protocols = vec![PEER_ALPN.to_vec()];
        config
    }

    /// webpki's check of a server certificate against the cluster CA, for the name dialed.
    fn server_verifier(&self) -> Arc<WebPkiServerVerifier> {
        WebPkiServerVerifier::builder_with_provider(self.roots.clone(), self.provider.clone()).build().expect("the roots were checked at load")
    }
}

/// Verifies a server certificate as webpki does, but for the name of the node we meant to
/// reach rather than the host in the URL.
#[derive(Debug)]
struct NodeVerifier {
    inner: Arc<WebPkiServerVerifier>,
    expected: ServerName<'static>,
}

impl ServerCertVerifier for NodeVerifier {
    fn verify_server_cert(&self, end_entity: &CertificateDer<'_>, intermediates: &[CertificateDer<'_>], _dialed: &ServerName<'_>, ocsp_response: &[u8], now: UnixTime) -> Result<ServerCertVerified, rustls::Error> {
        self.inner.verify_server_cert(end_entity, intermediates, &self.expected, ocsp_response, now)
    }

    fn verify_tls12_signature(&self, message: &[u8], certificate: &CertificateDer<'_>, signature: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, certificate, signature)
    }

    fn verify_tls13_signature(&self, message: &[u8], certificate: &CertificateDer<'_>, signature: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, certificate, signature)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certificates::{DevCa, Issued};
    use std::path::PathBuf;

    struct Files(tempfile::TempDir);

    impl Files {
        fn write(&self, name: &str, text: &str) -> PathBuf {
            let path = self.0.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        }

        fn issued(&self, name: &str, issued: &Issued) -> (PathBuf, PathBuf) {
            (self.write(&format!("{name}.pem"), &issued.certificate_pem), self.write(&format!("{name}-key.pem"), &issued.key_pem))
        }
    }

    fn files() -> Files {
        Files(tempfile::tempdir().unwrap())
    }

    #[test]
    fn a_node_certificate_loads_only_for_its_own_id_and_its_own_ca() {
        let files = files();
        let ca = DevCa::new().unwrap();
        let ca_path = files.write("ca.pem", ca.certificate_pem());
        let (certificate, key) = files.issued("node-2", &ca.issue_node(NodeId(2), &["127.0.0.1".into(), "localhost".into()]).unwrap());
        assert!(PeerTls::load(NodeId(2), &certificate, &key, &ca_path).is_ok());

        let error = PeerTls::load(NodeId(3), &certificate, &key, &ca_path).unwrap_err();
        assert!(error.contains("node-3.keel"), "another node's certificate: {error}");
        let other_ca = files.write("other-ca.pem", DevCa::new().unwrap().certificate_pem());
        assert!(PeerTls::load(NodeId(2), &certificate, &key, &other_ca).is_err(), "another CA");
        let (_, other_key) = files.issued("node-2b", &ca.issue_node(NodeId(2), &[]).unwrap());
        let error = PeerTls::load(NodeId(2), &certificate, &other_key, &ca_path).unwrap_err();
        assert!(error.contains("does not match"), "a key of another certificate: {error}");
        let (client, client_key) = files.issued("client", &ca.issue_client("ops").unwrap());
        assert!(PeerTls::load(NodeId(2), &client, &client_key, &ca_path).is_err(), "a client certificate names no node");
        let garbage = files.write("garbage.pem", "not a certificate");
        assert!(PeerTls::load(NodeId(2), &garbage, &key, &ca_path).unwrap_err().contains("no certificate"));
        assert!(PeerTls::load(NodeId(2), &certificate, &key, &files.0.path().join("missing.pem")).is_err());
    }

    #[test]
    fn certificates_name_exactly_their_node() {
        let ca = DevCa::new().unwrap();
        let node = ca.issue_node(NodeId(7), &[]).unwrap();
        let certificate = CertificateDer::from_pem_slice(node.certificate_pem.as_bytes()).unwrap();
        assert!(certificate_names_node(&certificate, NodeId(7)));
        assert!(!certificate_names_node(&certificate, NodeId(17)));
        assert!(!certificate_names_node(&certificate, NodeId(1)));
        let client = CertificateDer::from_pem_slice(ca.issue_client("ops").unwrap().certificate_pem.as_bytes()).unwrap();
        assert!(!certificate_names_node(&client, NodeId(7)));
        assert!(!certificate_names_node(&CertificateDer::from(vec![0x30, 0x03, 1, 2, 3]), NodeId(7)), "garbage names nobody");
    }

    /// `keel certs node` issues from a CA read back from its files.
    #[test]
    fn a_ca_read_back_from_pem_issues_certificates_that_chain_to_it() {
        let files = files();
        let ca = DevCa::new().unwrap();
        let ca_path = files.write("ca.pem", ca.certificate_pem());
        let again = DevCa::from_pem(ca.certificate_pem(), &ca.key_pem()).unwrap();
        let (certificate, key) = files.issued("node-4", &again.issue_node(NodeId(4), &[]).unwrap());
        PeerTls::load(NodeId(4), &certificate, &key, &ca_path).unwrap();
    }
}
