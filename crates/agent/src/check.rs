//! `vmgate agent --check`: what the configuration names, checked before the
//! agent starts (the schema and value checks ran when it loaded).

use vmgate_config::{check_writable_dir, Problem};
use vmgate_tls::check::{check_cert, check_identity, Role};

use crate::config::AgentConfig;

/// Every problem found, each under its configuration key; empty when the
/// agent can start with this configuration. QEMU's sockets are not checked:
/// a guest that is not running yet is not a configuration error.
pub fn check(cfg: &AgentConfig) -> Vec<Problem> {
    let t = &cfg.tls;
    let mut p = check_identity("tls.cert", &t.cert, "tls.key", &t.key, Role::Server);
    let ca = check_cert("tls.gateway_ca", &t.gateway_ca, Role::Ca);
    if p.is_empty() && ca.is_empty() {
        // The same refusals the agent makes at start: one CA for agents and
        // gateways, names in allowed_gateways that are no names.
        let id = vmgate_tls::Identity {
            cert: t.cert.clone(),
            key: t.key.clone(),
        };
        if let Err(e) =
            vmgate_tls::agent_server_config(&id, &t.gateway_ca, &t.allowed_gateways, &[])
        {
            p.push(Problem::new("tls.gateway_ca", e.to_string()));
        }
    }
    p.extend(ca);
    p.extend(check_writable_dir("log_dir", &cfg.log_dir));
    p
}
