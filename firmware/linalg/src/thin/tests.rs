//! The thin kernels' builds against plain loops and against each other, bit for bit.

use super::avx2::{nn_avx2, nt_avx2};
use super::avx512::{nn_avx512, nt_avx512};
use super::*;

fn sines(len: usize, f: f32) -> Vec<f32> {
    (0..len).map(|i| (i as f32 * f).sin()).collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Whether the AVX-512 builds can run here (logging which, or why not, for `test`).
fn have_avx512(test: &str) -> bool {
    let ok = is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma");
    if ok {
        anytime_testkit::skip::ran(test, "thin GEMM AVX-512 builds");
    } else {
        let why = "thin GEMM AVX-512 builds: this CPU lacks AVX-512F";
        anytime_testkit::skip::not_here(test, why);
    }
    ok
}

/// Whether the AVX2 builds can run here (logging which, or why not, for `test`).
fn have_avx2(test: &str) -> bool {
    let ok = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
    if ok {
        anytime_testkit::skip::ran(test, "thin GEMM AVX2+FMA builds");
    } else {
        let why = "thin GEMM AVX2+FMA builds: this CPU lacks AVX2 or FMA (the kernel never runs)";
        anytime_testkit::skip::not_here(test, why);
    }
    ok
}

/// The AVX2 broadcast form against a plain loop (f32 rounding), for A row-major with
/// row, column and reduction tails, accumulating or not: the baseline the AVX-512
/// build is compared with bit for bit below.
#[test]
fn thin_avx2_broadcast_matches_a_plain_loop() {
    if !have_avx2("thin_avx2_broadcast_matches_a_plain_loop") {
        return;
    }
    for (m, k, n) in [
        (12, 50, 768),
        (13, 64, 50),
        (7, 3, 33),
        (1, 1, 7),
        (6, 12, 65),
    ] {
        let (lda, ldb, ldc) = (k + 2, n + 3, n + 1);
        let (a, b, c0) = (
            sines(m * lda, 0.37),
            sines(k * ldb, 0.11),
            sines(m * ldc, 0.05),
        );
        for acc in [false, true] {
            let mut got = c0.clone();
            let (am, bm) = (
                Mat {
                    ptr: a.as_ptr(),
                    ld: lda,
                },
                Mat {
                    ptr: b.as_ptr(),
                    ld: ldb,
                },
            );
            // SAFETY: the buffers cover the shapes; the CPU has AVX2 and FMA.
            unsafe { nn_avx2(m, k, am, bm, got.as_mut_ptr(), ldc, acc, (0, n)) };
            for i in 0..m {
                for j in 0..n {
                    let want: f32 = (0..k).map(|p| a[i * lda + p] * b[p * ldb + j]).sum();
                    let base = if acc { c0[i * ldc + j] } else { 0.0 };
                    let g = got[i * ldc + j] - base;
                    assert!(
                        anytime_testkit::close(g, want, 1e-4, 1e-4),
                        "{m}x{k}x{n} acc={acc} ({i},{j}): {g} vs {want}"
                    );
                }
            }
        }
    }
}

/// Column ranges covering `0..n`: whole, and split at a tile boundary and off one.
fn splits(n: usize) -> Vec<Vec<(usize, usize)>> {
    let mut out = vec![vec![(0, n)]];
    for cut in [16, 7] {
        if cut < n {
            out.push(vec![(0, cut), (cut, n)]);
        }
    }
    out
}

/// The AVX-512 broadcast form gives the AVX2 build's bits (both one `fma` chain per
/// element), for A row-major and transposed, with row and column tails, accumulating
/// or not, however the columns are split.
#[test]
fn thin_avx512_broadcast_gives_the_avx2_bits_for_any_strides_and_split() {
    if !have_avx512("thin_avx512_broadcast_gives_the_avx2_bits_for_any_strides_and_split") {
        return;
    }
    for (m, k, n) in [
        (12, 50, 768),
        (13, 64, 50),
        (7, 3, 33),
        (1, 1, 7),
        (6, 12, 65),
        (9, 200, 70),
        (32, 65, 129),
        (4, 128, 80),
    ] {
        let (lda, ldb, ldc) = (k + 2, n + 3, n + 1);
        let a = sines(m * lda, 0.37); // [m, k] row-major
        let mut at = vec![0.0; k * (m + 1)]; // the same A stored transposed, [k, m + 1]
        for i in 0..m {
            for p in 0..k {
                at[p * (m + 1) + i] = a[i * lda + p];
            }
        }
        let b = sines(k * ldb, 0.11);
        let c0 = sines(m * ldc, 0.05);
        let bm = Mat {
            ptr: b.as_ptr(),
            ld: ldb,
        };
        for acc in [false, true] {
            let mut want = c0.clone();
            let am = Mat {
                ptr: a.as_ptr(),
                ld: lda,
            };
            // SAFETY: the buffers cover the shapes; the CPU has AVX2 and FMA.
            unsafe { nn_avx2(m, k, am, bm, want.as_mut_ptr(), ldc, acc, (0, n)) };
            let forms = [
                Mat2 {
                    ptr: a.as_ptr(),
                    rs: lda,
                    cs: 1,
                },
                Mat2 {
                    ptr: at.as_ptr(),
                    rs: 1,
                    cs: m + 1,
                },
            ];
            for a2 in forms {
                for parts in splits(n) {
                    let mut got = c0.clone();
                    for cols in parts {
                        // SAFETY: as above, and the CPU has AVX-512F.
                        unsafe {
                            nn_avx512(
                                m,
                                k,
                                a2,
                                bm,
                                got.as_mut_ptr(),
                                ldc,
                                acc,
                                cols,
                                &mut crate::AlignedVec::new(),
                            )
                        };
                    }
                    assert_eq!(bits(&got), bits(&want), "{m}x{k}x{n} acc={acc}");
                }
            }
        }
    }
}

/// Both builds of the dot form against a plain loop (f32 rounding), and
/// bit-identical however the output columns are split, with row, column and
/// reduction tails (k mod 16 ≠ 0); the AVX-512 build where the CPU has it.
#[test]
fn thin_dot_form_builds_match_a_plain_loop_for_any_split() {
    const TEST: &str = "thin_dot_form_builds_match_a_plain_loop_for_any_split";
    if !have_avx2(TEST) {
        return;
    }
    type Build = unsafe fn(usize, usize, Mat, Mat, *mut f32, usize, bool, (usize, usize));
    let mut builds: Vec<(&str, Build)> = vec![("AVX2", nt_avx2)];
    if have_avx512(TEST) {
        builds.push(("AVX-512", nt_avx512));
    }
    for (name, build) in builds {
        for (m, k, n) in [
            (13, 77, 50),
            (4, 9, 31),
            (32, 768, 70),
            (1, 16, 7),
            (5, 33, 6),
        ] {
            let (lda, ldw, ldc) = (k + 2, k + 1, n + 1);
            let (a, w) = (sines(m * lda, 0.37), sines(n * ldw, 0.11));
            let c0 = sines(m * ldc, 0.05);
            let (am, wm) = (
                Mat {
                    ptr: a.as_ptr(),
                    ld: lda,
                },
                Mat {
                    ptr: w.as_ptr(),
                    ld: ldw,
                },
            );
            for acc in [false, true] {
                let mut first: Option<Vec<f32>> = None;
                for parts in splits(n) {
                    let mut got = c0.clone();
                    for cols in parts {
                        // SAFETY: the buffers cover the shapes; the CPU has the build's
                        // instructions.
                        unsafe { build(m, k, am, wm, got.as_mut_ptr(), ldc, acc, cols) };
                    }
                    match &first {
                        Some(f) => assert_eq!(bits(&got), bits(f), "{name} {m}x{k}x{n}: split"),
                        None => first = Some(got),
                    }
                }
                let got = first.unwrap();
                for i in 0..m {
                    for j in 0..n {
                        let want: f32 = (0..k).map(|p| a[i * lda + p] * w[j * ldw + p]).sum();
                        let base = if acc { c0[i * ldc + j] } else { 0.0 };
                        let g = got[i * ldc + j] - base;
                        assert!(
                            anytime_testkit::close(g, want, 1e-4, 1e-4),
                            "{name} {m}x{k}x{n} acc={acc} ({i},{j}): {g} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
