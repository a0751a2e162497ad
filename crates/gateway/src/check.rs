//! `vmgate gateway --check`: what the configuration names, checked before
//! the gateway starts (the schema and value checks ran when it loaded).

use vmgate_config::{check_writable_dir, Problem};
use vmgate_tls::check::{check_admin_listener, check_cert, check_identity, Role};

use crate::config::GatewayConfig;

/// Every problem found, each under its configuration key; empty when the
/// gateway can start with this configuration.
pub fn check(cfg: &GatewayConfig) -> Vec<Problem> {
    let mut p = check_identity(
        "tls.cert",
        &cfg.tls.cert,
        "tls.key",
        &cfg.tls.key,
        Role::Server,
    );
    if let Err(e) = vmgate_ticket::VerifyingKey::load(&cfg.ticket_public_key) {
        p.push(Problem::new("ticket_public_key", e.to_string()));
    }
    for k in &cfg.extra_ticket_public_keys {
        if let Err(e) = vmgate_ticket::VerifyingKey::load(k) {
            p.push(Problem::new("extra_ticket_public_keys", e.to_string()));
        }
    }
    p.extend(check_cert("agents.ca", &cfg.agents.ca, Role::Ca));
    let link = check_identity(
        "agents.cert",
        &cfg.agents.cert,
        "agents.key",
        &cfg.agents.key,
        Role::Client,
    );
    if link.is_empty() {
        // The same refusal the gateway makes at start (one CA for agents
        // and gateways).
        let id = vmgate_tls::Identity {
            cert: cfg.agents.cert.clone(),
            key: cfg.agents.key.clone(),
        };
        if let Err(e) = vmgate_tls::gateway_client_config(&id, &cfg.agents.ca, &[]) {
            p.push(Problem::new("agents.cert", e.to_string()));
        }
    }
    p.extend(link);
    if let Some(a) = &cfg.admin {
        p.extend(check_admin_listener(
            "admin",
            &a.cert,
            &a.key,
            a.client_ca.as_deref(),
            a.token_file.as_deref(),
        ));
    }
    if cfg.store.url.is_none() {
        let path = cfg.store.embedded_path();
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."));
        p.extend(check_writable_dir("store.path", dir));
    }
    if let Some(audit) = &cfg.audit {
        let dir = audit
            .path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."));
        p.extend(check_writable_dir("audit.path", dir));
    }
    p
}
