//! The gateway crate cannot mint, by construction: signing is
//! `vmgate-ticket`'s `mint` feature, which only this crate enables, and the
//! gateway depends neither on this crate nor on that feature. A gateway
//! source file naming `vmgate_ticket::SigningKey` or `vmgate_ticket::mint`
//! does not compile when the gateway is built (`cargo build -p
//! vmgate-gateway`); this test fails if a dependency change would let it.
//!
//! The agent cannot either: it links neither the ticket crate nor this one.
//!
//! It asks cargo for the dependency graph as a build of each crate alone
//! would resolve it (`cargo tree -p … -e features`), offline.

use std::process::Command;

/// `cargo tree` for `package`, inverted on `vmgate-ticket`, with the
/// features each edge turns on; normal and build dependencies only (what
/// the shipped code links).
fn ticket_features_as_seen_by(package: &str) -> String {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "tree",
            "--offline",
            "--manifest-path",
            concat!(env!("CARGO_MANIFEST_DIR"), "/../../Cargo.toml"),
            "-p",
            package,
            "-e",
            "features,normal,build",
            "-i",
            "vmgate-ticket",
        ])
        .output()
        .expect("running cargo tree");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_gateway_links_the_ticket_crate_without_signing() {
    let gateway = ticket_features_as_seen_by("vmgate-gateway");
    assert!(
        gateway.contains("vmgate-gateway v"),
        "the gateway should verify tickets with vmgate-ticket:\n{gateway}"
    );
    assert!(
        !gateway.contains(r#"vmgate-ticket feature "mint""#),
        "the gateway's build turns signing on:\n{gateway}"
    );
    assert!(
        !gateway.contains("vmgate-minter"),
        "the gateway depends on the minter:\n{gateway}"
    );
    // The check can fail: the minter's own build has the feature.
    let minter = ticket_features_as_seen_by("vmgate-minter");
    assert!(
        minter.contains(r#"vmgate-ticket feature "mint""#),
        "the minter should sign:\n{minter}"
    );
}

/// The agent, which only answers streams gateways open, links neither the
/// ticket crate nor the minter: nothing in it can sign, or even read, a
/// ticket.
#[test]
fn the_agent_links_neither_the_ticket_crate_nor_the_minter() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let tree = |package: &str| {
        let out = Command::new(&cargo)
            .args([
                "tree",
                "--offline",
                "--manifest-path",
                concat!(env!("CARGO_MANIFEST_DIR"), "/../../Cargo.toml"),
                "-p",
                package,
                "-e",
                "normal,build",
                "--prefix",
                "none",
            ])
            .output()
            .expect("running cargo tree");
        assert!(
            out.status.success(),
            "cargo tree failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let agent = tree("vmgate-agent");
    assert!(agent.starts_with("vmgate-agent v"), "{agent}");
    for crate_name in ["vmgate-ticket ", "vmgate-minter "] {
        assert!(
            !agent.lines().any(|l| l.starts_with(crate_name)),
            "the agent depends on {crate_name}:\n{agent}"
        );
    }
    // The check can fail: the gateway's tree has the ticket crate.
    assert!(
        tree("vmgate-gateway")
            .lines()
            .any(|l| l.starts_with("vmgate-ticket ")),
        "the gateway should verify tickets with vmgate-ticket"
    );
}
