//! # anytime-linalg
//!
//! The linear algebra of the CPU training path, apart from the model that uses it:
//!
//! - [`Gemm`]: `C (+)= A·B` over borrowed matrix views ([`MatRef`], [`MatMut`]) that carry
//!   their shape and strides, on `matrixmultiply` or, on x86-64, the thin kernels of
//!   `thin/` (one file per instruction set, checked against [`reference`]); which kernels
//!   run is the [`GemmOptions`] a caller passes, never a process-wide switch;
//! - [`sums`]: f64 reductions over f32 data in a fixed order;
//! - [`simd`] and [`build_of!`]: one kernel body compiled for AVX-512, AVX2/AVX and the
//!   baseline, the widest the CPU has picked at run time;
//! - [`AlignedVec`]: `f32` buffers that start on cache lines (on 2 MiB boundaries when
//!   large), where the kernels stream them from.
//!
//! Every result is deterministic: the same inputs give the same bits on any thread count.

/// Ends a function by running `$body` (an `#[inline(always)]` function at module level,
/// written once) on the function's arguments, compiled as `$build` says (a
/// [`simd::Build`]): with AVX-512F, with `$narrow` (`"avx2"` or `"avx"`), or as the
/// baseline build. Panics when the CPU lacks the build's instructions. The bodies keep a
/// fixed order of IEEE operations, so every build gives the same bits, only with wider
/// vectors; [`simd::Build::widest`] picks the build a caller runs, and tests run each.
#[macro_export]
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

pub mod aligned;
pub mod gemm;
pub mod reference;
pub mod simd;
pub mod sums;
#[cfg(target_arch = "x86_64")]
mod thin;
pub mod view;

pub use aligned::{AlignedVec, Placement};
pub use gemm::{Gemm, GemmOptions, Scratch};
pub use view::{MatMut, MatRef};
