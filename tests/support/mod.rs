//! Test support shared by the integration tests; each test file uses a different part.
#![allow(dead_code)]

pub mod chat;
pub mod db;
pub mod letta_server;
pub mod proxy;
pub mod service;
pub mod stack;
pub mod synapse;
pub mod wait;

/// Runs one check against a fresh SQLite file and a fresh PostgreSQL database.
#[macro_export]
macro_rules! on_both_engines {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test] async fn $name() { super::$name(super::TestDatabase::sqlite()).await })*
        }
        mod postgres {
            $(#[tokio::test] async fn $name() { super::$name(super::TestDatabase::postgres().await).await })*
        }
    };
}
