//! Shared test support. Each test file uses part of it, so unused items are expected.
#![allow(dead_code)]

pub(crate) mod browser;
pub(crate) mod bus;
pub(crate) mod cluster;
pub(crate) mod demo;
pub(crate) mod http;
pub(crate) mod load;
pub(crate) mod redis;
