//! Property tests of the agent's configuration parser and validator: any
//! text is parsed or refused, never a panic, and a valid configuration
//! survives being written back and read again.

use proptest::prelude::*;
use vmgate_agent::AgentConfig;

const GOOD: &str = r#"
node = "node-a"
listen = "127.0.0.1:7443"
log_dir = "/tmp"
[tls]
cert = "a.pem"
key = "a.key"
gateway_ca = "gateway-client-ca.pem"
[[guest]]
name = "demo"
vnc = "/run/vnc.sock"
serial = [{ name = "serial0", path = "/run/s0.sock" }]
channel = [{ name = "test.echo", path = "/run/echo.sock" }]
"#;

proptest! {
    #[test]
    fn any_text_parses_or_is_refused(text in "\\PC{0,400}") {
        if let Ok(cfg) = toml::from_str::<AgentConfig>(&text) {
            let _ = cfg.validate();
        }
    }

    #[test]
    fn a_mangled_line_never_panics(line in 0usize..16, junk in "\\PC{0,40}") {
        let text: String = GOOD
            .lines()
            .enumerate()
            .map(|(i, l)| if i == line { junk.clone() } else { l.to_string() })
            .collect::<Vec<_>>()
            .join("\n");
        if let Ok(cfg) = toml::from_str::<AgentConfig>(&text) {
            let _ = cfg.validate();
        }
    }

    #[test]
    fn valid_guest_names_round_trip(name in "[A-Za-z0-9._:-]{1,128}") {
        let text = GOOD.replace("\"demo\"", &format!("{name:?}"));
        let cfg: AgentConfig = toml::from_str(&text).unwrap();
        prop_assert!(cfg.validate().is_ok());
        let back: AgentConfig = toml::from_str(&toml::to_string(&cfg).unwrap()).unwrap();
        prop_assert_eq!(&back.guests[0].name, &name);
    }
}
