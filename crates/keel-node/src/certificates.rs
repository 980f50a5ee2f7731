//! A development CA and the certificates a keel cluster needs (`keel certs init`, tests).
//!
//! - The CA: a self-signed certificate, `CN=keel development CA`, valid for ten years.
//! - A node certificate: DNS name `node-<id>.keel` (its identity, `tls.rs`) plus the hosts
//!   it is reached at (IP addresses become IP SANs), usable as server and as client
//!   (peers dial each other with it); valid for a year.
//! - A client certificate: for `keel --cert/--key` against `--client-ca`; it names no node,
//!   so it can never pass as a peer.
//!
//! Keys are ECDSA P-256. This is for local clusters and tests; production certificates come
//! from the operator's own CA, and need only the node name above.

use crate::tls::node_name;
use keel_core::NodeId;
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType};
use std::net::IpAddr;
use time::{Duration, OffsetDateTime};

const CA_COMMON_NAME: &str = "keel development CA";
const CA_VALIDITY_DAYS: i64 = 3650;
const CERTIFICATE_VALIDITY_DAYS: i64 = 365;

/// A certificate and its private key, both PEM.
#[derive(Clone, Debug)]
pub struct Issued {
    pub certificate_pem: String,
    pub key_pem: String,
}

/// A CA that can issue keel certificates.
pub struct DevCa {
    issuer: Issuer<'static, KeyPair>,
    certificate_pem: String,
}

impl DevCa {
    /// A new CA with a fresh key.
    pub fn new() -> Result<DevCa, String> {
        let key = KeyPair::generate().map_err(|error| format!("generating the CA key: {error}"))?;
        let mut params = ca_params();
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::days(1);
        params.not_after = now + Duration::days(CA_VALIDITY_DAYS);
        let certificate = params.self_signed(&key).map_err(|error| format!("signing the CA certificate: {error}"))?;
        Ok(DevCa { certificate_pem: certificate.pem(), issuer: Issuer::new(params, key) })
    }

    /// The CA `keel certs init` made earlier, from its certificate and key. The issuer's
    /// name is rebuilt, not parsed: a CA from elsewhere would issue certificates that do not
    /// chain to it, which `PeerTls::load` reports.
    pub fn from_pem(certificate_pem: &str, key_pem: &str) -> Result<DevCa, String> {
        let key = KeyPair::from_pem(key_pem).map_err(|error| format!("the CA key: {error}"))?;
        Ok(DevCa { certificate_pem: certificate_pem.to_string(), issuer: Issuer::new(ca_params(), key) })
    }

    pub fn certificate_pem(&self) -> &str {
        &self.certificate_pem
    }

    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// Node `id`'s certificate, for `hosts` (names or IP addresses) besides its node name.
    pub fn issue_node(&self, id: NodeId, hosts: &[String]) -> Result<Issued, String> {
        let mut names = vec![node_name(id)];
        names.extend(hosts.iter().cloned());
        let mut params = leaf_params(&format!("keel node {id}"), &names)?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params)
    }

    /// A client certificate named `name` (its common name), for client-certificate auth.
    pub fn issue_client(&self, name: &str) -> Result<Issued, String> {
        let mut params = leaf_params(name, &[])?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params)
    }

    fn issue(&self, params: CertificateParams) -> Result<Issued, String> {
        let key = KeyPair::generate().map_err(|error| format!("generating a key: {error}"))?;
        let certificate = params.signed_by(&key, &self.issuer).map_err(|error| format!("signing a certificate: {error}"))?;
        Ok(Issued { certificate_pem: certificate.pem(), key_pem: key.serialize_pem() })
    }
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, CA_COMMON_NAME);
    params.distinguished_name.push(DnType::OrganizationName, "keel");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params
}

fn leaf_params(common_name: &str, names: &[String]) -> Result<CertificateParams, String> {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, common_name);
    for name in names {
        let san = match name.parse::<IpAddr>() {
            Ok(address) => SanType::IpAddress(address),
            Err(_) => SanType::DnsName(name.clone().try_into().map_err(|error| format!("{name:?} is not a DNS name: {error}"))?),
        };
        params.subject_alt_names.push(san);
    }
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::days(1);
    params.not_after = now + Duration::days(CERTIFICATE_VALIDITY_DAYS);
    Ok(params)
}
