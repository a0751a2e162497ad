//! Certificates, rustls configurations and QUIC endpoints.
//!
//! Two trust domains, never mixed:
//! * **public**: the gateway's HTTPS listener, trusted by browsers and the CLI;
//! * **internal**: gateway ↔ agent QUIC with mutual TLS. The agent accepts
//!   only clients whose certificate chains to the gateway CA it is given;
//!   the gateway accepts only agents that chain to the agent CA.
//!
//! [`pki`] makes certificates for the demo and tests; production installs
//! its own. Only the `ring` provider is compiled in.
#![forbid(unsafe_code)]

pub mod pki;
mod quic;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

pub use quic::{quic_client, quic_server, transport_config};
pub use rustls;

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
    let pem = std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.into(),
        source,
    })?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut &pem[..])
        .collect::<Result<_, _>>()
        .map_err(|source| TlsError::Read {
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
    let pem = std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.into(),
        source,
    })?;
    rustls_pemfile::private_key(&mut &pem[..])
        .map_err(|source| TlsError::Read {
            path: path.into(),
            source,
        })?
        .ok_or_else(|| TlsError::NoKey(path.into()))
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

/// Server config without client certificates (the public HTTPS listener).
pub fn server_config(id: &Identity, alpn: &[&[u8]]) -> Result<ServerConfig, TlsError> {
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(load_certs(&id.cert)?, load_key(&id.key)?)?;
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(cfg)
}

/// Server config that requires a client certificate chaining to `client_ca`.
pub fn mtls_server_config(
    id: &Identity,
    client_ca: &Path,
    alpn: &[&[u8]],
) -> Result<ServerConfig, TlsError> {
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(load_roots(client_ca)?), provider())
            .build()?;
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(load_certs(&id.cert)?, load_key(&id.key)?)?;
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(cfg)
}

/// Client config that trusts only `server_ca` and presents `id`.
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
