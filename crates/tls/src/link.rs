//! The gateway–agent link's TLS: which certificates an agent accepts from a
//! gateway, which a gateway accepts from an agent, and the start-time check
//! that refuses a single-CA layout.
//!
//! Two CAs, never one: the **agent CA** signs node certificates (serverAuth
//! only) and the **gateway-client CA** signs gateways' client certificates
//! (clientAuth only). An agent accepts a client only if its certificate
//! chains to the gateway-client CA *and* names clientAuth in its extended
//! key usage (webpki alone lets a certificate without the extension pass),
//! and, when configured, only the gateways it names. So a node's own
//! credentials, taken by whoever roots that node, open nothing on any other
//! node.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore,
    ServerConfig, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::{load_certs, load_key, load_roots, provider, Identity, TlsError};

/// DER content of the clientAuth key purpose, 1.3.6.1.5.5.7.3.2.
const CLIENT_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02];

/// The agent's QUIC server config: its own certificate `id`, and clients
/// accepted only with a certificate that chains to `gateway_ca`, carries
/// clientAuth and, if `allowed_gateways` is not empty, names one of them
/// (a DNS name or IP address in its subjectAltName).
///
/// Refused with [`TlsError::SharedCa`] if the agent's own certificate
/// chains to `gateway_ca`: then every node's certificate would be a key to
/// this node.
pub fn agent_server_config(
    id: &Identity,
    gateway_ca: &Path,
    allowed_gateways: &[String],
    alpn: &[&[u8]],
) -> Result<ServerConfig, TlsError> {
    let roots = Arc::new(load_roots(gateway_ca)?);
    let own = load_certs(&id.cert)?;
    if chains_to(&own, &roots) {
        return Err(TlsError::SharedCa {
            cert: id.cert.clone(),
            ca: gateway_ca.into(),
            fix: "the agent's own certificate chains to [tls] gateway_ca, so any node's \
                  certificate would open this node's consoles. Give gateways their own CA: \
                  issue their client certificates (clientAuth only) from a gateway-client CA, \
                  set gateway_ca to it, and keep agent certificates (serverAuth only) on the \
                  agent CA (see README.md, \"Certificates\")",
        });
    }
    let allowed = allowed_gateways
        .iter()
        .map(|n| ServerName::try_from(n.clone()).map_err(|_| TlsError::BadGatewayName(n.clone())))
        .collect::<Result<Vec<_>, _>>()?;
    let verifier = Arc::new(GatewayVerifier {
        inner: WebPkiClientVerifier::builder_with_provider(roots.clone(), provider()).build()?,
        roots,
        algs: provider().signature_verification_algorithms,
        allowed,
    });
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(own, load_key(&id.key)?)?;
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(cfg)
}

/// The gateway's QUIC client config: agents verified against `agent_ca`
/// (with serverAuth), the gateway presenting its client certificate `id`.
///
/// Refused with [`TlsError::SharedCa`] if `id` chains to `agent_ca`: that
/// is the single-CA layout, where agents would accept each other.
pub fn gateway_client_config(
    id: &Identity,
    agent_ca: &Path,
    alpn: &[&[u8]],
) -> Result<ClientConfig, TlsError> {
    let roots = load_roots(agent_ca)?;
    let own = load_certs(&id.cert)?;
    if chains_to(&own, &roots) {
        return Err(TlsError::SharedCa {
            cert: id.cert.clone(),
            ca: agent_ca.into(),
            fix: "the gateway's client certificate ([agents] cert) chains to [agents] ca, the CA \
                  that signs agents: with one CA for both, any node's certificate opens every \
                  node's consoles. Issue [agents] cert from a separate gateway-client CA \
                  (clientAuth only) that agents name in gateway_ca, and keep [agents] ca for \
                  the agent CA (see README.md, \"Certificates\")",
        });
    }
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(own, load_key(&id.key)?)?;
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(cfg)
}

/// Whether `chain` (leaf first) verifies to one of `roots`, whatever its
/// key usage says.
fn chains_to(chain: &[CertificateDer<'static>], roots: &RootCertStore) -> bool {
    /// Accepts any extended key usage: the question is the chain only.
    struct AnyPurpose;
    impl webpki::ExtendedKeyUsageValidator for AnyPurpose {
        fn validate(&self, _: webpki::KeyPurposeIdIter<'_, '_>) -> Result<(), webpki::Error> {
            Ok(())
        }
    }
    let Some((leaf, intermediates)) = chain.split_first() else {
        return false;
    };
    let Ok(leaf) = webpki::EndEntityCert::try_from(leaf) else {
        return false;
    };
    leaf.verify_for_usage(
        provider().signature_verification_algorithms.all,
        &roots.roots,
        intermediates,
        UnixTime::now(),
        AnyPurpose,
        None,
        None,
    )
    .is_ok()
}

/// The agent's check of a gateway's client certificate: webpki's (chain to
/// the gateway-client CA, validity, clientAuth if an EKU is present), then
/// clientAuth required to be present, then the optional name allow-list.
#[derive(Debug)]
struct GatewayVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    roots: Arc<RootCertStore>,
    algs: WebPkiSupportedAlgorithms,
    /// Empty: any gateway certificate from the CA.
    allowed: Vec<ServerName<'static>>,
}

/// Why a gateway certificate that chains to the CA was still refused.
#[derive(thiserror::Error)]
#[error("the certificate names none of this agent's allowed_gateways")]
struct NotAllowed;

/// rustls shows [`CertificateError::Other`] with `Debug`, in the agent's
/// log and in the reason the gateway receives: make that the sentence.
impl std::fmt::Debug for NotAllowed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl ClientCertVerifier for GatewayVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let cert = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|_| CertificateError::BadEncoding)?;
        // An EKU-less certificate passes webpki's client check (RFC 5280
        // reads a missing extension as "any purpose"): that would let an old
        // all-purpose certificate from this CA in, so clientAuth must be there.
        cert.verify_for_usage(
            self.algs.all,
            &self.roots.roots,
            intermediates,
            now,
            webpki::KeyUsage::required(CLIENT_AUTH),
            None,
            None,
        )
        .map_err(|_| CertificateError::InvalidPurpose)?;
        if !self.allowed.is_empty()
            && !self
                .allowed
                .iter()
                .any(|n| cert.verify_is_valid_for_subject_name(n).is_ok())
        {
            return Err(CertificateError::Other(rustls::OtherError(Arc::new(NotAllowed))).into());
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use rcgen::ExtendedKeyUsagePurpose as Eku;
    use tokio::sync::mpsc;

    use super::*;
    use crate::pki::{write_identity, Ca, Purpose};

    const ALPN: &[&[u8]] = &[b"t"];

    /// What the agent side saw of one connection: a finished handshake, or
    /// the handshake's error.
    type Seen = Result<(), String>;

    /// An agent-like QUIC server with `cfg`: every connection that passes
    /// the handshake gets one stream echoed; every handshake's outcome is
    /// reported on the channel.
    fn serve(cfg: ServerConfig) -> (SocketAddr, mpsc::UnboundedReceiver<Seen>) {
        let server = crate::quic_server("127.0.0.1:0".parse().unwrap(), cfg).unwrap();
        let addr = server.local_addr().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(inc) = server.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    match inc.await {
                        Ok(conn) => {
                            let _ = tx.send(Ok(()));
                            if let Ok((mut s, mut r)) = conn.accept_bi().await {
                                let got = r.read_to_end(64).await.unwrap_or_default();
                                let _ = s.write_all(&got).await;
                                let _ = s.finish();
                                let _ = s.stopped().await;
                            }
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e.to_string()));
                        }
                    }
                });
            }
        });
        (addr, rx)
    }

    /// A QUIC client with `cfg` connects to `addr` and echoes one message:
    /// the echo, or how the connection ended.
    async fn echo(cfg: ClientConfig, addr: SocketAddr) -> Result<Vec<u8>, quinn::ConnectionError> {
        let client = crate::quic_client(cfg).unwrap();
        let attempt = async {
            // TLS 1.3: the client's certificate is checked after the
            // client has finished its part of the handshake, so a refusal
            // may only show once the stream is used.
            let conn = client.connect(addr, "localhost").unwrap().await?;
            let (mut tx, mut rx) = conn.open_bi().await?;
            let used = async {
                tx.write_all(b"ping").await.ok()?;
                tx.finish().ok()?;
                rx.read_to_end(64).await.ok()
            };
            match used.await {
                Some(v) => Ok(v),
                None => Err(conn.closed().await),
            }
        };
        tokio::time::timeout(Duration::from_secs(10), attempt)
            .await
            .expect("a handshake neither finished nor failed in 10 s")
    }

    /// The TLS alert the server closed the connection with.
    fn alert(e: &quinn::ConnectionError) -> Option<u8> {
        match e {
            quinn::ConnectionError::ConnectionClosed(c) => {
                let code = u64::from(c.error_code);
                (0x100..0x200).contains(&code).then(|| (code - 0x100) as u8)
            }
            _ => None,
        }
    }

    /// What the server said about the next handshake.
    async fn seen(rx: &mut mpsc::UnboundedReceiver<Seen>) -> Seen {
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("the server saw no handshake")
            .expect("server gone")
    }

    /// The three-CA layout of two nodes and a gateway.
    struct Layout {
        dir: tempfile::TempDir,
        agent_ca: std::path::PathBuf,
        gateway_ca: std::path::PathBuf,
        agents: Ca,
        gateways: Ca,
        node_a: Identity,
        node_b: Identity,
        gateway: Identity,
    }

    fn layout() -> Layout {
        let dir = tempfile::tempdir().unwrap();
        let agents = Ca::new("agents").unwrap();
        let gateways = Ca::new("gateway clients").unwrap();
        let d = dir.path();
        Layout {
            agent_ca: agents.write_cert(&d.join("agent-ca.pem")).unwrap(),
            gateway_ca: gateways.write_cert(&d.join("gw-ca.pem")).unwrap(),
            node_a: agents
                .issue_to(d, "node-a", &["localhost"], Purpose::Server)
                .unwrap(),
            node_b: agents
                .issue_to(d, "node-b", &["localhost"], Purpose::Server)
                .unwrap(),
            gateway: gateways
                .issue_to(d, "gw", &["gw-1"], Purpose::Client)
                .unwrap(),
            dir,
            agents,
            gateways,
        }
    }

    /// Hole 1: root on node A takes A's certificate and key and connects to
    /// node B's agent as a client. B refuses it in the certificate check
    /// (unknown CA); the gateway's certificate, to the same server, in the
    /// same test, opens a working stream.
    #[tokio::test]
    async fn another_agents_certificate_is_refused_and_the_gateways_is_accepted() {
        let l = layout();
        let (addr, mut seen_by_b) =
            serve(agent_server_config(&l.node_b, &l.gateway_ca, &[], ALPN).unwrap());

        let gw = gateway_client_config(&l.gateway, &l.agent_ca, ALPN).unwrap();
        assert_eq!(echo(gw, addr).await.unwrap(), b"ping");
        assert_eq!(seen(&mut seen_by_b).await, Ok(()));

        // The attacker builds the config by hand (our own builder refuses
        // node A's certificate as a gateway's: see the single-CA test). It
        // fails twice over: the agent CA is not the gateway-client CA, and
        // the certificate is serverAuth only; webpki checks the purpose
        // first.
        let stolen = crate::mtls_client_config(&l.node_a, &l.agent_ca, ALPN).unwrap();
        let err = echo(stolen, addr)
            .await
            .expect_err("node A's cert opened node B");
        assert_eq!(alert(&err), Some(43), "not refused for its purpose: {err}");
        let server_side = seen(&mut seen_by_b).await.unwrap_err();
        assert!(
            server_side.contains("invalid peer certificate")
                && server_side
                    .contains("does not allow extended key usage for client authentication"),
            "{server_side}"
        );
        // Even an all-purpose certificate from the agent CA is refused: its
        // CA is not the gateway-client CA (unknown_ca).
        let (c, k) = l
            .agents
            .issue_with(&["localhost"], vec![Eku::ServerAuth, Eku::ClientAuth])
            .unwrap();
        let all = write_identity(l.dir.path(), "node-a-all", &c, &k).unwrap();
        let cfg = crate::mtls_client_config(&all, &l.agent_ca, ALPN).unwrap();
        let err = echo(cfg, addr)
            .await
            .expect_err("an agent-CA cert opened node B");
        assert_eq!(alert(&err), Some(48), "not refused as unknown CA: {err}");
        let server_side = seen(&mut seen_by_b).await.unwrap_err();
        assert!(server_side.contains("UnknownIssuer"), "{server_side}");
        assert!(matches!(
            gateway_client_config(&l.node_a, &l.agent_ca, ALPN),
            Err(TlsError::SharedCa { .. })
        ));

        // A foreign CA's client certificate likewise; the good one still works.
        let rogue = Ca::new("rogue").unwrap();
        let rogue_id = rogue
            .issue_to(l.dir.path(), "rogue", &["gw-1"], Purpose::Client)
            .unwrap();
        let cfg = crate::mtls_client_config(&rogue_id, &l.agent_ca, ALPN).unwrap();
        let err = echo(cfg, addr)
            .await
            .expect_err("a rogue CA's client got in");
        assert_eq!(alert(&err), Some(48), "{err}");
        assert!(seen(&mut seen_by_b).await.is_err());
        let gw = gateway_client_config(&l.gateway, &l.agent_ca, ALPN).unwrap();
        assert_eq!(echo(gw, addr).await.unwrap(), b"ping");
    }

    /// A certificate from the gateway-client CA opens an agent only if it
    /// says clientAuth: serverAuth-only is refused by webpki's EKU check,
    /// an EKU-less one by ours; both in the certificate check.
    #[tokio::test]
    async fn a_gateway_ca_certificate_must_carry_client_auth() {
        let l = layout();
        let (addr, mut seen) =
            serve(agent_server_config(&l.node_b, &l.gateway_ca, &[], ALPN).unwrap());
        for (stem, ekus) in [("server-only", vec![Eku::ServerAuth]), ("no-eku", vec![])] {
            let (cert, key) = l.gateways.issue_with(&["gw-1"], ekus).unwrap();
            let id = write_identity(l.dir.path(), stem, &cert, &key).unwrap();
            let cfg = crate::mtls_client_config(&id, &l.agent_ca, ALPN).unwrap();
            let err = echo(cfg, addr).await.expect_err(stem);
            // unsupported_certificate: the purpose, not the chain.
            assert_eq!(alert(&err), Some(43), "{stem}: {err}");
            let server_side = self::seen(&mut seen).await.unwrap_err();
            assert!(
                server_side.contains("invalid peer certificate"),
                "{server_side}"
            );
        }
        let (cert, key) = l
            .gateways
            .issue_with(&["gw-1"], vec![Eku::ServerAuth, Eku::ClientAuth])
            .unwrap();
        let both = write_identity(l.dir.path(), "both", &cert, &key).unwrap();
        for id in [&l.gateway, &both] {
            let cfg = gateway_client_config(id, &l.agent_ca, ALPN).unwrap();
            assert_eq!(echo(cfg, addr).await.unwrap(), b"ping");
            assert_eq!(self::seen(&mut seen).await, Ok(()));
        }
    }

    /// `allowed_gateways` admits the named gateway and refuses another
    /// certificate from the same CA, in the certificate check.
    #[tokio::test]
    async fn allowed_gateways_admits_only_the_named_gateways() {
        let l = layout();
        let other = l
            .gateways
            .issue_to(l.dir.path(), "gw2", &["gw-2"], Purpose::Client)
            .unwrap();
        let allowed = vec!["gw-1".to_string(), "10.0.0.9".to_string()];
        let (addr, mut seen) =
            serve(agent_server_config(&l.node_b, &l.gateway_ca, &allowed, ALPN).unwrap());
        let cfg = gateway_client_config(&other, &l.agent_ca, ALPN).unwrap();
        let err = echo(cfg, addr).await.expect_err("gw-2 is not allowed");
        // certificate_unknown, with the reason in the agent's log.
        assert_eq!(alert(&err), Some(46), "{err}");
        let server_side = self::seen(&mut seen).await.unwrap_err();
        assert!(server_side.contains("allowed_gateways"), "{server_side}");
        let cfg = gateway_client_config(&l.gateway, &l.agent_ca, ALPN).unwrap();
        assert_eq!(echo(cfg, addr).await.unwrap(), b"ping");
        assert_eq!(self::seen(&mut seen).await, Ok(()));

        let bad = vec!["not a name".to_string()];
        let e = agent_server_config(&l.node_b, &l.gateway_ca, &bad, ALPN).unwrap_err();
        assert!(e.to_string().contains("not a name"), "{e}");
    }

    /// The old layout, one CA for agents and gateways with all-purpose
    /// leaves, is refused at start on both sides, saying what to change.
    #[tokio::test]
    async fn a_single_ca_layout_is_refused_at_start_on_both_sides() {
        let l = layout();
        let one = Ca::new("internal").unwrap();
        let ca = one
            .write_cert(&l.dir.path().join("internal-ca.pem"))
            .unwrap();
        let mixed = vec![Eku::ServerAuth, Eku::ClientAuth];
        let (c, k) = one.issue_with(&["localhost"], mixed.clone()).unwrap();
        let agent = write_identity(l.dir.path(), "old-agent", &c, &k).unwrap();
        let (c, k) = one.issue_with(&["vmgate-gateway"], mixed).unwrap();
        let gw = write_identity(l.dir.path(), "old-gw", &c, &k).unwrap();

        let e = agent_server_config(&agent, &ca, &[], ALPN).unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, TlsError::SharedCa { .. }), "{text}");
        assert!(
            text.contains("gateway_ca") && text.contains("gateway-client CA"),
            "{text}"
        );
        assert!(
            text.contains("internal-ca.pem") && text.contains("old-agent.pem"),
            "{text}"
        );
        let e = gateway_client_config(&gw, &ca, ALPN).unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, TlsError::SharedCa { .. }), "{text}");
        assert!(
            text.contains("[agents] ca") && text.contains("gateway-client CA"),
            "{text}"
        );
        // An agent certificate with serverAuth only is still refused if its
        // CA is the gateway CA: the chain decides, not the purpose.
        let own = l
            .gateways
            .issue_to(l.dir.path(), "same", &["localhost"], Purpose::Server)
            .unwrap();
        assert!(agent_server_config(&own, &l.gateway_ca, &[], ALPN).is_err());
        // The three-CA layout starts.
        agent_server_config(&l.node_a, &l.gateway_ca, &[], ALPN).unwrap();
        gateway_client_config(&l.gateway, &l.agent_ca, ALPN).unwrap();
    }

    /// Rotation with overlap: a CA file is a PEM bundle and every CA in it
    /// is trusted, on both sides; a CA taken out of the bundle is trusted
    /// no more.
    #[tokio::test]
    async fn every_ca_in_a_bundle_is_trusted_so_cas_rotate_with_overlap() {
        let l = layout();
        let d = l.dir.path();
        let (agents2, gateways2) = (
            Ca::new("agents 2").unwrap(),
            Ca::new("gateway clients 2").unwrap(),
        );
        let bundle = |name: &str, cas: &[&Ca]| {
            let path = d.join(name);
            let pem: String = cas.iter().map(|c| c.cert_pem()).collect();
            std::fs::write(&path, pem).unwrap();
            path
        };
        let agent_cas = bundle("agent-cas.pem", &[&l.agents, &agents2]);
        let gateway_cas = bundle("gw-cas.pem", &[&l.gateways, &gateways2]);
        let node_new = agents2
            .issue_to(d, "node-new", &["localhost"], Purpose::Server)
            .unwrap();
        let gw_new = gateways2
            .issue_to(d, "gw-new", &["gw-2"], Purpose::Client)
            .unwrap();

        // An agent trusting both gateway-client CAs admits gateways from
        // either; a gateway trusting both agent CAs reaches agents from
        // either.
        for node in [&l.node_a, &node_new] {
            let (addr, mut seen_by) =
                serve(agent_server_config(node, &gateway_cas, &[], ALPN).unwrap());
            for gw in [&l.gateway, &gw_new] {
                let cfg = gateway_client_config(gw, &agent_cas, ALPN).unwrap();
                assert_eq!(echo(cfg, addr).await.unwrap(), b"ping");
                assert_eq!(seen(&mut seen_by).await, Ok(()));
            }
        }

        // The old gateway-client CA removed: its gateways are refused.
        let only_new = bundle("gw-cas-new.pem", &[&gateways2]);
        let (addr, mut seen_by) =
            serve(agent_server_config(&node_new, &only_new, &[], ALPN).unwrap());
        let old = gateway_client_config(&l.gateway, &agent_cas, ALPN).unwrap();
        let err = echo(old, addr)
            .await
            .expect_err("a retired CA's gateway got in");
        assert_eq!(alert(&err), Some(48), "not refused as unknown CA: {err}");
        assert!(seen(&mut seen_by).await.is_err());
        let new = gateway_client_config(&gw_new, &agent_cas, ALPN).unwrap();
        assert_eq!(echo(new, addr).await.unwrap(), b"ping");
    }
}
