//! What `--check` verifies of a configuration's certificates and keys,
//! before a service starts: each certificate parses and is valid now, a
//! leaf carries the key usage its role needs, a CA file holds CAs, and a
//! key is a private file that belongs to its certificate. Each problem is
//! reported under the configuration key that names the file.

use std::path::Path;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use vmgate_config::{check_secret_file, Problem};
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::time::ASN1Time;

/// What a certificate file is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A TLS server's certificate: needs serverAuth (or no EKU at all,
    /// which allows every use, for public certificates).
    Server,
    /// A TLS client's certificate (a gateway to its agents, an
    /// administrator): needs clientAuth.
    Client,
    /// A file of trusted CA certificates.
    Ca,
}

/// Checks the certificate file named by configuration key `key`.
pub fn check_cert(key: &str, path: &Path, role: Role) -> Vec<Problem> {
    let pem = match std::fs::read(path) {
        Ok(p) => p,
        Err(e) => return vec![Problem::new(key, format!("{}: {e}", path.display()))],
    };
    let ders: Vec<CertificateDer<'static>> =
        match CertificateDer::pem_slice_iter(&pem).collect::<Result<_, _>>() {
            Ok(d) => d,
            Err(e) => return vec![Problem::new(key, format!("{}: {e}", path.display()))],
        };
    if ders.is_empty() {
        return vec![Problem::new(
            key,
            format!("{}: no PEM certificate in it", path.display()),
        )];
    }
    let mut problems = Vec::new();
    let now = ASN1Time::now();
    for (i, der) in ders.iter().enumerate() {
        let cert = match X509Certificate::from_der(der) {
            Ok((_, c)) => c,
            Err(e) => {
                problems.push(Problem::new(
                    key,
                    format!(
                        "{}: certificate {} does not parse: {e}",
                        path.display(),
                        i + 1
                    ),
                ));
                continue;
            }
        };
        let subject = cert.subject().to_string();
        let validity = cert.validity();
        if now < validity.not_before {
            problems.push(Problem::new(
                key,
                format!(
                    "{}: {subject:?} is not valid before {}",
                    path.display(),
                    validity.not_before
                ),
            ));
        }
        if now > validity.not_after {
            problems.push(Problem::new(
                key,
                format!(
                    "{}: {subject:?} expired on {}",
                    path.display(),
                    validity.not_after
                ),
            ));
        }
        match role {
            Role::Ca if !cert.is_ca() => problems.push(Problem::new(
                key,
                format!(
                    "{}: {subject:?} is not a CA certificate (basicConstraints CA:FALSE or absent)",
                    path.display()
                ),
            )),
            Role::Server | Role::Client if i == 0 => {
                let eku = cert.extended_key_usage().ok().flatten().map(|e| e.value);
                let (need, has) = match role {
                    Role::Server => ("serverAuth", eku.is_none_or(|e| e.any || e.server_auth)),
                    _ => ("clientAuth", eku.is_some_and(|e| e.client_auth)),
                };
                if !has {
                    problems.push(Problem::new(
                        key,
                        format!(
                            "{}: {subject:?} lacks the {need} extended key usage this role needs",
                            path.display()
                        ),
                    ));
                }
            }
            _ => {}
        }
    }
    problems
}

/// Checks the private key file named by `key`: a private file (see
/// [`check_secret_file`]) holding a key that belongs to the first
/// certificate in `cert`.
pub fn check_key(key: &str, path: &Path, cert: &Path) -> Vec<Problem> {
    let mut problems = check_secret_file(key, path);
    if !problems.is_empty() {
        return problems;
    }
    let private = match crate::load_key(path) {
        Ok(k) => k,
        Err(e) => return vec![Problem::new(key, e.to_string())],
    };
    let signer = match rustls::crypto::ring::sign::any_supported_type(&private) {
        Ok(s) => s,
        Err(e) => return vec![Problem::new(key, format!("{}: {e}", path.display()))],
    };
    let Ok(certs) = crate::load_certs(cert) else {
        return problems; // the certificate's own check says why
    };
    let Ok((_, leaf)) = X509Certificate::from_der(&certs[0]) else {
        return problems;
    };
    if signer.public_key().as_deref() != Some(leaf.public_key().raw) {
        problems.push(Problem::new(
            key,
            format!(
                "{} is not the key of the certificate in {}",
                path.display(),
                cert.display()
            ),
        ));
    }
    problems
}

/// Checks a certificate and its key, named `<prefix>.<cert_key>` and
/// `<prefix>.<key_key>` in the configuration.
pub fn check_identity(
    cert_key: &str,
    cert: &Path,
    key_key: &str,
    key: &Path,
    role: Role,
) -> Vec<Problem> {
    let mut p = check_cert(cert_key, cert, role);
    p.extend(check_key(key_key, key, cert));
    p
}

/// Checks an administrators' listener (the gateway's `[admin]`, `vmgate
/// admin`): its server identity, the client CA if any, the token file if
/// any (a secret).
pub fn check_admin_listener(
    prefix: &str,
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
    token_file: Option<&Path>,
) -> Vec<Problem> {
    let k = |name: &str| {
        if prefix.is_empty() {
            name.to_string()
        } else {
            format!("{prefix}.{name}")
        }
    };
    let mut p = check_identity(&k("cert"), cert, &k("key"), key, Role::Server);
    if let Some(ca) = client_ca {
        p.extend(check_cert(&k("client_ca"), ca, Role::Ca));
    }
    if let Some(t) = token_file {
        p.extend(check_secret_file(&k("token_file"), t));
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{Ca, Purpose};
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn certificates_and_keys_are_checked_for_their_role() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("test CA").unwrap();
        let ca_pem = ca.write_cert(&dir.path().join("ca.pem")).unwrap();
        let server = ca
            .issue_to(dir.path(), "server", &["localhost"], Purpose::Server)
            .unwrap();
        let client = ca
            .issue_to(dir.path(), "client", &["gw"], Purpose::Client)
            .unwrap();

        assert_eq!(check_cert("tls.cert", &server.cert, Role::Server), vec![]);
        assert_eq!(
            check_cert("agents.cert", &client.cert, Role::Client),
            vec![]
        );
        assert_eq!(check_cert("agents.ca", &ca_pem, Role::Ca), vec![]);
        assert_eq!(check_key("tls.key", &server.key, &server.cert), vec![]);

        // A server certificate where a client one is needed, a leaf where a
        // CA is needed, another certificate's key.
        let p = check_cert("agents.cert", &server.cert, Role::Client);
        assert!(p.len() == 1 && p[0].message.contains("clientAuth"), "{p:?}");
        let p = check_cert("agents.ca", &server.cert, Role::Ca);
        assert!(p.len() == 1 && p[0].message.contains("not a CA"), "{p:?}");
        let p = check_key("tls.key", &client.key, &server.cert);
        assert!(
            p.len() == 1 && p[0].message.contains("is not the key"),
            "{p:?}"
        );

        // A key others can read; a file that is no certificate.
        std::fs::set_permissions(&server.key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let p = check_key("tls.key", &server.key, &server.cert);
        assert!(p.len() == 1 && p[0].message.contains("mode 644"), "{p:?}");
        let p = check_cert("tls.cert", &server.key, Role::Server);
        assert!(p.len() == 1 && p[0].key == "tls.cert", "{p:?}");
    }

    #[test]
    fn an_expired_certificate_is_a_problem() {
        let dir = tempfile::tempdir().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["old".to_string()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        let key = rcgen::KeyPair::generate().unwrap();
        let path = dir.path().join("old.pem");
        std::fs::write(&path, params.self_signed(&key).unwrap().pem()).unwrap();
        let p = check_cert("tls.cert", &path, Role::Server);
        assert!(p.len() == 1 && p[0].message.contains("expired"), "{p:?}");
    }
}
