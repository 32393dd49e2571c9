//! # anytime-runtime
//!
//! The std side of the device: the frozen CLIP encoder (through tract), the last
//! transformer block (original and tuned), the training engine (CPU reference and
//! wgpu), the memory-mapped token store and the anytime learner.
//!
//! No tract type crosses this crate's public API.

/// Ends a function by running `$body` (an `#[inline(always)]` function at module level,
/// written once) on the function's arguments, compiled with AVX-512F or else with
/// `$narrow` (`"avx2"` or `"avx"`), the first of them the CPU has (checked at run time),
/// else as the baseline build. The bodies keep a fixed order of IEEE operations, so
/// every build gives the same bits, only with wider vectors.
macro_rules! widest_build {
    ($narrow:tt, $body:ident($($arg:ident: $ty:ty),* $(,)?) -> $ret:ty) => {{
        #[cfg(target_arch = "x86_64")]
        {
            /// The body with 512-bit vectors.
            ///
            /// # Safety
            /// The CPU has AVX-512F.
            #[target_feature(enable = "avx512f")]
            unsafe fn wide($($arg: $ty),*) -> $ret {
                $body($($arg),*)
            }
            /// The body with 256-bit vectors.
            ///
            /// # Safety
            /// The CPU has the `$narrow` extension.
            #[target_feature(enable = $narrow)]
            unsafe fn narrow($($arg: $ty),*) -> $ret {
                $body($($arg),*)
            }
            if is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU has AVX-512F (checked just above).
                return unsafe { wide($($arg),*) };
            }
            if is_x86_feature_detected!($narrow) {
                // SAFETY: the CPU has the extension (checked just above).
                return unsafe { narrow($($arg),*) };
            }
        }
        $body($($arg),*)
    }};
}

pub mod assets;
pub mod block;
pub mod encoder;
pub mod learner;
pub mod lines;
pub mod predict;
pub mod store;
pub mod train;
pub mod typicality;
