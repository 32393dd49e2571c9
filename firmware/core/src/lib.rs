//! # anytime-core
//!
//! The `no_std` heart of anytime-edge: everything that must run on the smallest
//! target and everything that is persisted. No allocation, no panics on bytes
//! read from flash, explicit integer widths in every stored structure.
#![cfg_attr(not(any(test, feature = "std")), no_std)]
#![forbid(unsafe_code)]

mod fmt;

pub mod codec;
pub mod crc32;
pub mod error;
pub mod flash;
pub mod mem_flash;
pub mod mixing;
pub mod ocw;
pub mod ring;
pub mod rng;
pub mod sampling;

pub use error::Error;
