//! # anytime-runtime
//!
//! The std side of the device: the frozen CLIP encoder (through tract), the last
//! transformer block (original and tuned), the training engine (CPU reference and
//! wgpu), the memory-mapped token store and the anytime learner.
//!
//! No tract type crosses this crate's public API.

/// Ends a function by running `$body` (an `#[inline(always)]` function at module level,
/// written once) on the function's arguments, compiled as `$build` says (a
/// [`simd::Build`]): with AVX-512F, with `$narrow` (`"avx2"` or `"avx"`), or as the
/// baseline build. Panics when the CPU lacks the build's instructions. The bodies keep a
/// fixed order of IEEE operations, so every build gives the same bits, only with wider
/// vectors; [`simd::Build::widest`] picks the build a caller runs, and tests run each.
macro_rules! build_of {
    ($build:expr, $narrow:tt, $body:ident($($arg:ident: $ty:ty),* $(,)?) -> $ret:ty) => {{
        let build: $crate::simd::Build = $build;
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
            match build {
                $crate::simd::Build::Avx512 => {
                    assert!(is_x86_feature_detected!("avx512f"), "this CPU lacks AVX-512F");
                    // SAFETY: the CPU has AVX-512F (checked just above).
                    return unsafe { wide($($arg),*) };
                }
                $crate::simd::Build::Narrow => {
                    assert!(is_x86_feature_detected!($narrow), "this CPU lacks {}", $narrow);
                    // SAFETY: the CPU has the extension (checked just above).
                    return unsafe { narrow($($arg),*) };
                }
                $crate::simd::Build::Baseline => {}
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        assert_eq!(build, $crate::simd::Build::Baseline, "x86-64 builds on another CPU");
        $body($($arg),*)
    }};
}

pub mod assets;
pub mod block;
pub mod encoder;
pub mod learner;
pub mod lines;
pub mod predict;
pub(crate) mod simd;
pub mod store;
pub mod train;
pub mod typicality;
