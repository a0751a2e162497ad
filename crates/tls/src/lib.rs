//! Certificates, rustls configurations, QUIC endpoints and the TCP + TLS
//! link ([`TcpLinkClient`], [`TcpLinkServer`]).
//!
//! Three certificate authorities, never one:
//! * **public**: the gateway's HTTPS listener, trusted by browsers and the CLI;
//! * **agent CA**: signs node certificates (serverAuth only); gateways
//!   verify agents against it;
//! * **gateway-client CA**: signs gateways' client certificates (clientAuth
//!   only); agents accept a QUIC client only with one of these ([`link`]).
//!
//! A node's own certificate is therefore no key to any other node, and a
//! configuration that mixes the two internal CAs is refused at start.
//! (The admin listeners' CAs are separate again; see SECURITY.md.)
//!
//! [`pki`] makes certificates for the demo and tests; production installs
//! its own. Only the `ring` provider is compiled in.
#![forbid(unsafe_code)]

pub mod check;
mod link;
pub mod pki;
mod quic;
mod tcp;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

pub use link::{agent_server_config, gateway_client_config};
pub use quic::{
    link_client, link_server, quic_client, quic_server, transport_config, LinkClient, LinkServer,
};
pub use rustls;
pub use tcp::{
    raise_open_files, ReadAhead, TcpLinkAccepted, TcpLinkClient, TcpLinkError, TcpLinkServer,
    TcpLinkStream, READ_AHEAD,
};

/// Why TLS material could not be loaded or used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A PEM file holds no certificate.
    #[error("{0}: no certificate found (expected PEM 'BEGIN CERTIFICATE')")]
    NoCertificate(PathBuf),
    /// A PEM file holds no private key.
    #[error("{0}: no private key found (expected PEM 'BEGIN PRIVATE KEY')")]
    NoKey(PathBuf),
    /// A PEM file is malformed.
    #[error("{path}: {source}")]
    Pem {
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    /// The gateway–agent link's two CAs are one: a certificate that must
    /// not be trusted by `ca` chains to it.
    #[error("{cert} chains to {ca}: {fix}")]
    SharedCa {
        cert: PathBuf,
        ca: PathBuf,
        fix: &'static str,
    },
    /// An `allowed_gateways` entry is neither a DNS name nor an IP address.
    #[error("allowed_gateways: {0:?} is not a DNS name or an IP address")]
    BadGatewayName(String),
    /// rustls refused the material (key does not match, bad CA, ...).
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client-certificate verifier could not be built from the CA.
    #[error("client CA: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// rcgen failed to make a certificate.
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    /// The rustls config is not usable for QUIC (TLS 1.3 suites missing).
    #[error("QUIC TLS configuration: {0}")]
    Quic(String),
    /// The QUIC socket could not be bound.
    #[error("QUIC endpoint: {0}")]
    Bind(std::io::Error),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads every certificate in a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            path: path.into(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(path.into()));
    }
    Ok(certs)
}

/// Reads the first private key in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    match PrivateKeyDer::from_pem_slice(&read(path)?) {
        Ok(key) => Ok(key),
        Err(rustls_pki_types::pem::Error::NoItemsFound) => Err(TlsError::NoKey(path.into())),
        Err(source) => Err(TlsError::Pem {
            path: path.into(),
            source,
        }),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.into(),
        source,
    })
}

/// A root store holding the CA certificates of a PEM file.
pub fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert)?;
    }
    Ok(roots)
}

/// A certificate chain and its key, as paths.
#[derive(Debug, Clone)]
pub struct Identity {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A server certificate and key that can be replaced while the server runs
/// (the gateway's public listener, on SIGHUP): handshakes after
/// [`ReloadableCert::reload`] present the new certificate, connections
/// already up keep theirs.
#[derive(Debug)]
pub struct ReloadableCert {
    current: std::sync::RwLock<Arc<rustls::sign::CertifiedKey>>,
}

impl ReloadableCert {
    /// Loads `id`: the certificate chain and a key that belongs to it.
    pub fn load(id: &Identity) -> Result<Arc<ReloadableCert>, TlsError> {
        Ok(Arc::new(ReloadableCert {
            current: std::sync::RwLock::new(certified_key(id)?),
        }))
    }

    /// Replaces the certificate with `id`'s; on any error the one in use
    /// stays.
    pub fn reload(&self, id: &Identity) -> Result<(), TlsError> {
        let new = certified_key(id)?;
        *self.current.write().expect("certificate lock") = new;
        Ok(())
    }
}

fn certified_key(id: &Identity) -> Result<Arc<rustls::sign::CertifiedKey>, TlsError> {
    let key = provider()
        .key_provider
        .load_private_key(load_key(&id.key)?)?;
    let certified = rustls::sign::CertifiedKey::new(load_certs(&id.cert)?, key);
    certified.keys_match()?;
    Ok(Arc::new(certified))
}

impl rustls::server::ResolvesServerCert for ReloadableCert {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.current.read().expect("certificate lock").clone())
    }
}

/// Server config without client certificates presenting `cert`, which can
/// be replaced while it runs (the public HTTPS listener).
pub fn reloadable_server_config(
    cert: Arc<ReloadableCert>,
    alpn: &[&[u8]],
) -> Result<ServerConfig, TlsError> {
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(cfg)
}

/// Server config without client certificates (the public HTTPS listener).
pub fn server_config(id: &Identity, alpn: &[&[u8]]) -> Result<ServerConfig, TlsError> {
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(load_certs(&id.cert)?, load_key(&id.key)?)?;
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(cfg)
}

/// Client config that trusts only `server_ca` and presents `id` (an
/// administrator's client certificate; gateways use
/// [`gateway_client_config`]).
pub fn mtls_client_config(
    id: &Identity,
    server_ca: &Path,
    alpn: &[&[u8]],
) -> Result<ClientConfig, TlsError> {
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(load_roots(server_ca)?)
        .with_client_auth_cert(load_certs(&id.cert)?, load_key(&id.key)?)?;
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(cfg)
}

/// Client config trusting the CAs in `roots` (the CLI talking to a gateway).
pub fn client_config(roots: RootCertStore, alpn: &[&[u8]]) -> Result<ClientConfig, TlsError> {
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(cfg)
}
