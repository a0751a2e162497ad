//! The `vmgate` command: agent, gateway, demo and the client commands, as
//! thin wiring over the component crates.
#![forbid(unsafe_code)]

pub mod admin_client;
pub mod audio;
pub mod channel;
pub mod client;
pub mod console;
pub mod demo;
pub mod local;
pub mod media;
pub mod state;
pub mod terminal;
pub mod tickets;
pub mod vnc;
