//! Certificates for the demo and tests: the CAs of the three trust domains
//! (public, agent, gateway-client; see the crate docs) and leaf certificates
//! with one purpose each, written as PEM files.
//!
//! Production installs its own certificates; it must keep the same shape,
//! which [`crate::agent_server_config`] and [`crate::gateway_client_config`]
//! check at start.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};

use crate::{Identity, TlsError};

/// What a leaf certificate may be used for: exactly one TLS purpose, so a
/// server's certificate never works as a client's and the other way round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// `serverAuth` only: an agent, a gateway's HTTPS or admin listener.
    Server,
    /// `clientAuth` only: a gateway towards agents, an administrator.
    Client,
}

/// A CA able to sign leaves.
pub struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    /// A new self-signed CA.
    pub fn new(common_name: &str) -> Result<Ca, TlsError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Ca { cert, key })
    }

    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    /// A leaf for `names` (DNS names or IP addresses, also the subject's
    /// common name), carrying the extended key usage of `purpose` and no
    /// other. Returns (cert PEM, key PEM).
    pub fn issue(&self, names: &[&str], purpose: Purpose) -> Result<(String, String), TlsError> {
        self.issue_with(
            names,
            vec![match purpose {
                Purpose::Server => ExtendedKeyUsagePurpose::ServerAuth,
                Purpose::Client => ExtendedKeyUsagePurpose::ClientAuth,
            }],
        )
    }

    /// A leaf with the given extended key usages (none: no EKU extension).
    /// Tests use it to make certificates of the old, mixed shape.
    pub fn issue_with(
        &self,
        names: &[&str],
        ekus: Vec<ExtendedKeyUsagePurpose>,
    ) -> Result<(String, String), TlsError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().copied().unwrap_or("vmgate"),
        );
        for n in names {
            params.subject_alt_names.push(match n.parse() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName((*n).try_into()?),
            });
        }
        params.extended_key_usages = ekus;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// Issues a leaf and writes `<dir>/<stem>.pem` and `<dir>/<stem>.key`.
    pub fn issue_to(
        &self,
        dir: &Path,
        stem: &str,
        names: &[&str],
        purpose: Purpose,
    ) -> Result<Identity, TlsError> {
        let (cert, key) = self.issue(names, purpose)?;
        write_identity(dir, stem, &cert, &key)
    }

    /// Writes the CA certificate (never its key) to `path`.
    pub fn write_cert(&self, path: &Path) -> Result<PathBuf, TlsError> {
        write(path, self.cert_pem().as_bytes(), 0o644)?;
        Ok(path.into())
    }
}

/// Writes a leaf as `<dir>/<stem>.pem` (0644) and `<dir>/<stem>.key` (0600).
pub fn write_identity(dir: &Path, stem: &str, cert: &str, key: &str) -> Result<Identity, TlsError> {
    let id = Identity {
        cert: dir.join(format!("{stem}.pem")),
        key: dir.join(format!("{stem}.key")),
    };
    write(&id.cert, cert.as_bytes(), 0o644)?;
    write(&id.key, key.as_bytes(), 0o600)?;
    Ok(id)
}

/// The gateway–agent link's credentials, as files: two CAs and a leaf
/// from each.
#[derive(Debug, Clone)]
pub struct LinkFiles {
    /// `agent-ca.pem`: signs agents (serverAuth); gateways' `[agents] ca`.
    pub agent_ca: PathBuf,
    /// `gateway-client-ca.pem`: signs gateways' client certificates
    /// (clientAuth); agents' `[tls] gateway_ca`.
    pub gateway_ca: PathBuf,
    /// `agent.{pem,key}`: an agent's certificate for `agent_names`.
    pub agent: Identity,
    /// `gateway-client.{pem,key}`: a gateway's client certificate.
    pub gateway: Identity,
}

/// Makes the agent CA and the gateway-client CA, an agent certificate for
/// `agent_names` and a gateway client certificate for `gateway_names`, and
/// writes them into `dir` (the CA keys are not kept).
pub fn write_link(
    dir: &Path,
    agent_names: &[&str],
    gateway_names: &[&str],
) -> Result<LinkFiles, TlsError> {
    let agents = Ca::new("vmgate agent CA")?;
    let gateways = Ca::new("vmgate gateway-client CA")?;
    Ok(LinkFiles {
        agent_ca: agents.write_cert(&dir.join("agent-ca.pem"))?,
        gateway_ca: gateways.write_cert(&dir.join("gateway-client-ca.pem"))?,
        agent: agents.issue_to(dir, "agent", agent_names, Purpose::Server)?,
        gateway: gateways.issue_to(dir, "gateway-client", gateway_names, Purpose::Client)?,
    })
}

fn write(path: &Path, data: &[u8], mode: u32) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| TlsError::Read {
        path: path.into(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(err)?;
    f.write_all(data).map_err(err)
}
