//! `vmgate-bench aio`: gateway and agent in one process, through the
//! library API as `vmgate demo` does (QUIC with mutual TLS over loopback
//! between them), serving the bench guest whose channels lead to the byte
//! source. A process of its own so its memory can be measured alone.

use std::path::Path;

use anyhow::Result;
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;
use vmgate::state::State;

/// Runs until stdin closes; prints the gateway's URL once it listens.
pub async fn run(state_dir: &Path, agent_toml: &Path) -> Result<()> {
    let state = State::new(state_dir);
    let mut agent_cfg = vmgate_agent::AgentConfig::load(agent_toml)?;
    agent_cfg.listen = "127.0.0.1:0".parse()?;
    let shutdown = CancellationToken::new();
    let agent = vmgate_agent::Agent::bind(agent_cfg)?;
    let gw_cfg = crate::systems::gateway_config(&state, "127.0.0.1:0".parse()?, agent.local_addr());
    let gateway = vmgate_gateway::Gateway::bind(gw_cfg, shutdown.clone()).await?;
    println!("https://{}", gateway.local_addr());
    let agent_task = tokio::spawn(agent.run(shutdown.clone()));
    let gw_task = tokio::spawn(gateway.run());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut stdin = tokio::io::stdin();
    let mut sink = [0u8; 64];
    tokio::select! {
        _ = term.recv() => {}
        _ = async { while stdin.read(&mut sink).await.unwrap_or(0) > 0 {} } => {}
    }
    shutdown.cancel();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(3), async {
        let _ = agent_task.await;
        let _ = gw_task.await;
    })
    .await;
    Ok(())
}
