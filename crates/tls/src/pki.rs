//! Certificates for the demo and tests: two CAs (public, internal) and the
//! leaf certificates the components need, written as PEM files.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};

use crate::{Identity, TlsError};

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

    /// A leaf for `names` (DNS names or IP addresses), usable as a server
    /// and a client certificate. Returns (cert PEM, key PEM).
    pub fn issue(&self, names: &[&str]) -> Result<(String, String), TlsError> {
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
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// Issues a leaf and writes `<dir>/<stem>.pem` and `<dir>/<stem>.key`.
    pub fn issue_to(&self, dir: &Path, stem: &str, names: &[&str]) -> Result<Identity, TlsError> {
        let (cert, key) = self.issue(names)?;
        let id = Identity {
            cert: dir.join(format!("{stem}.pem")),
            key: dir.join(format!("{stem}.key")),
        };
        write(&id.cert, cert.as_bytes(), 0o644)?;
        write(&id.key, key.as_bytes(), 0o600)?;
        Ok(id)
    }

    /// Writes the CA certificate (never its key) to `path`.
    pub fn write_cert(&self, path: &Path) -> Result<PathBuf, TlsError> {
        write(path, self.cert_pem().as_bytes(), 0o644)?;
        Ok(path.into())
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The agent accepts a gateway certificate from its gateway CA and
    /// refuses one from another CA, over a real QUIC handshake.
    #[tokio::test]
    async fn mutual_tls_accepts_only_the_configured_ca() {
        let dir = tempfile::tempdir().unwrap();
        let internal = Ca::new("internal").unwrap();
        let rogue = Ca::new("rogue").unwrap();
        let ca = internal.write_cert(&dir.path().join("ca.pem")).unwrap();
        let agent_id = internal
            .issue_to(dir.path(), "agent", &["localhost"])
            .unwrap();
        let gw_id = internal.issue_to(dir.path(), "gw", &["gateway"]).unwrap();
        let rogue_id = rogue.issue_to(dir.path(), "rogue", &["gateway"]).unwrap();

        let server = crate::quic_server(
            "127.0.0.1:0".parse().unwrap(),
            crate::mtls_server_config(&agent_id, &ca, &[b"t"]).unwrap(),
        )
        .unwrap();
        let addr = server.local_addr().unwrap();
        tokio::spawn(async move {
            while let Some(inc) = server.accept().await {
                tokio::spawn(async move {
                    if let Ok(conn) = inc.await {
                        let _ = conn.accept_bi().await;
                    }
                });
            }
        });

        let good =
            crate::quic_client(crate::mtls_client_config(&gw_id, &ca, &[b"t"]).unwrap()).unwrap();
        let conn = good.connect(addr, "localhost").unwrap().await.unwrap();
        let (mut tx, _rx) = conn.open_bi().await.unwrap();
        tx.write_all(b"x").await.unwrap();

        let bad = crate::quic_client(crate::mtls_client_config(&rogue_id, &ca, &[b"t"]).unwrap())
            .unwrap();
        // TLS 1.3: the client's certificate is checked after the client
        // thinks the handshake is done, so the refusal shows on first use.
        let refused = async {
            let conn = bad.connect(addr, "localhost").unwrap().await?;
            let (mut tx, mut rx) = conn.open_bi().await?;
            tx.write_all(b"x").await?;
            rx.read_to_end(10).await?;
            Ok::<_, Box<dyn std::error::Error>>(())
        };
        assert!(
            refused.await.is_err(),
            "a rogue CA's client must be refused"
        );
    }
}
