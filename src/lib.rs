//! letta-matrix: a Matrix application service that gives every Letta agent its own Matrix user.
//!
//! Data flows one way: homeserver → `appservice` → `store` (inbox) → relay → `letta` → `matrix`
//! → homeserver. See docs/ARCHITECTURE.md.

pub mod app;
pub mod appservice;
pub mod check;
pub mod config;
pub mod error;
pub mod history;
pub mod letta;
pub mod matrix;
pub mod mcp;
pub mod namespace;
pub mod ops;
pub mod outbound;
pub mod registration;
pub mod relay;
pub mod server;
pub mod store;
pub mod sync;
pub mod telemetry;
pub mod tools;
