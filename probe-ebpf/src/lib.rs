//! Empty library target: `probe-user` build-depends on this crate so cargo reruns its build
//! script (which compiles the programs in `main.rs` for the BPF target) when they change.
#![no_std]
