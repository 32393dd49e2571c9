//! The reference every kernel is tested against: a plain triple loop, summed in f64.

use crate::view::MatRef;

/// `A·B` as a row-major `m × n` matrix, each element `Σ_p A[i, p]·B[p, j]` summed in f64
/// in order and rounded once.
///
/// # Panics
/// When the shapes do not chain.
pub fn matmul(a: MatRef<'_>, b: MatRef<'_>) -> Vec<f32> {
    let ((m, k), (k2, n)) = (a.shape(), b.shape());
    assert_eq!(k, k2, "reference matmul: {m}x{k} times {k2}x{n}");
    let mut c = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            let s: f64 = (0..k).map(|p| a.at(i, p) as f64 * b.at(p, j) as f64).sum();
            c[i * n + j] = s as f32;
        }
    }
    c
}
