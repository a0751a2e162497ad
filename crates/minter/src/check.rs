//! `vmgate admin --check`: what the configuration names, checked before the
//! minter starts (the schema and value checks ran when it loaded).

use vmgate_config::{check_secret_file, Problem};
use vmgate_tls::check::check_admin_listener;

use crate::config::MinterConfig;

/// Every problem found, each under its configuration key; empty when the
/// minter can start with this configuration.
pub fn check(cfg: &MinterConfig) -> Vec<Problem> {
    let mut p = check_admin_listener(
        "",
        &cfg.cert,
        &cfg.key,
        cfg.client_ca.as_deref(),
        cfg.token_file.as_deref(),
    );
    let key = check_secret_file("ticket_signing_key", &cfg.ticket_signing_key);
    if key.is_empty() {
        if let Err(e) = vmgate_ticket::SigningKey::load(&cfg.ticket_signing_key) {
            p.push(Problem::new("ticket_signing_key", e.to_string()));
        }
    }
    p.extend(key);
    p
}
