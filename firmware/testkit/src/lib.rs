//! Test helpers shared by every crate of anytime-edge, taken only as a dev-dependency (so
//! the `no_std` core's own builds never see it; it depends on nothing):
//!
//! - [`float`]: comparisons where a non-finite value is a failure, never a pass
//!   (`fold(0.0, f32::max)` drops NaN, and `if err > tol` is false for NaN);
//! - [`skip`]: how a test that cannot run here says so where CI shows it.

pub mod float;
pub mod skip;

pub use float::{assert_close, close, max_abs, max_abs_diff};
