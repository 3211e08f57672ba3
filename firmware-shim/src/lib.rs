//! mctc-shim: the part of mctc that must behave identically in the Linux agent
//! and inside a payment terminal's or locker's firmware.
//!
//! No std, no alloc, no IO: capacities are named constants and a full buffer
//! is an `Err`, never a panic.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
