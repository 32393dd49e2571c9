//! The host simulator: datasets, token cache, evaluation protocols, methods,
//! metrics and plots. `cmd/simulate.rs` drives them.

pub mod audit;
pub mod cache;
pub mod dataset;
pub mod diet;
pub mod features;
pub mod learner;
pub mod method;
pub mod metrics;
pub mod none_probe;
pub mod plot;
pub mod protocol;
pub mod runner;
pub mod synthetic;
