//! A control panel embeds the console page: framing by allowed origins
//! only, events to the panel, commands from it and from nobody else. Real
//! gateway, agent and guest; headless Chromium (tests/browser/embed.mjs).

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::Stack;

#[tokio::test]
async fn a_panel_frames_the_console_gets_its_events_and_commands_it_and_no_other_site_can() {
    let stack = Stack::start_secure_with(|cfg| {
        cfg.embed.frame_ancestors = vec!["http://localhost:8080".into()];
    })
    .await;
    let t = stack.ticket(&stack.name, &["serial0"], false);
    let t2 = stack.ticket(&stack.name, &["serial0"], true);
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(
        dir.join("node_modules/playwright-core").exists(),
        "run scripts/setup (npm packages of tests/browser)"
    );
    let output = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new("node")
            .arg(dir.join("embed.mjs"))
            .env("VMGATE_URL", &t.url)
            .env("VMGATE_URL2", &t2.url)
            .stderr(Stdio::inherit())
            .output(),
    )
    .await
    .expect("the browser script finished")
    .expect("running node");
    let r: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    });
    assert_eq!(r["ok"], true, "{r:#}");
    // Events come from the gateway's origin, to the panel.
    assert_eq!(
        r["connectedFrom"].as_str().unwrap(),
        format!("https://{}", stack.gw_addr),
        "{r:#}"
    );
    assert_eq!(r["pasted"], true, "{r:#}");
    // The other site's frame told it to disconnect: still connected.
    assert_eq!(r["afterForeignCommand"], "connected", "{r:#}");
    assert_eq!(r["disconnected"]["code"], 1000, "{r:#}");
    assert_eq!(
        r["disconnected"]["reason"], "closed by the embedding page",
        "{r:#}"
    );
    // A site not in frame_ancestors cannot frame the page.
    assert_eq!(r["evilFramed"], false, "{r:#}");
    assert_eq!(r["cspRefusal"], true, "{r:#}");
    assert_eq!(r["evilEvents"], 0, "{r:#}");
}
