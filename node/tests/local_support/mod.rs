//! Helpers for the `starmesh local` tests: the binary as a child process
//! (`mesh`) and a minimal DevTools-protocol client for Chromium (`cdp`).

#![allow(dead_code)] // each test file uses a different part

pub mod cdp;
pub mod mesh;
