//! Test support shared by the integration tests; each test file uses a different part.
#![allow(dead_code)]

pub mod db;
pub mod service;
pub mod synapse;
pub mod wait;
