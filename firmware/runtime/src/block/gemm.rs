//! The one safe wrapper over `matrixmultiply::sgemm`.
//!
//! Matrices are row-major with an explicit row stride (`ld*`, in elements), so a block of
//! rows or columns inside a larger buffer (the CLS rows of a batch, the k/v columns of a
//! fused projection) is used in place; transposed operands are expressed as swapped
//! strides, never copied. `acc = false` overwrites `C`, `acc = true` adds to it.

/// Elements a strided `rows × cols` matrix spans (0 when empty).
fn span(rows: usize, cols: usize, row_stride: usize, col_stride: usize) -> usize {
    if rows == 0 || cols == 0 {
        0
    } else {
        (rows - 1) * row_stride + (cols - 1) * col_stride + 1
    }
}

/// `C[m×n] (+)= op(A)[m×k] · op(B)[k×n]` with general strides `(row, col)` per operand.
#[allow(clippy::too_many_arguments)]
fn gemm(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    a_strides: (usize, usize),
    b: &[f32],
    b_strides: (usize, usize),
    c: &mut [f32],
    ldc: usize,
    acc: bool,
) {
    assert!(
        span(m, k, a_strides.0, a_strides.1) <= a.len(),
        "gemm: A too short"
    );
    assert!(
        span(k, n, b_strides.0, b_strides.1) <= b.len(),
        "gemm: B too short"
    );
    assert!(span(m, n, ldc, 1) <= c.len(), "gemm: C too short");
    assert!(n <= ldc || m <= 1, "gemm: C rows overlap");
    if m == 0 || n == 0 {
        return;
    }
    let beta = if acc { 1.0 } else { 0.0 };
    if k == 0 {
        if !acc {
            for r in 0..m {
                c[r * ldc..r * ldc + n].fill(0.0);
            }
        }
        return;
    }
    let is = |x: usize| x as isize;
    // SAFETY: the asserts above bound every element sgemm reads in A and B and writes in
    // C by the slices' lengths; C's rows do not overlap (n <= ldc), and C is a unique
    // borrow, so it aliases neither A nor B.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr(),
            is(a_strides.0),
            is(a_strides.1),
            b.as_ptr(),
            is(b_strides.0),
            is(b_strides.1),
            beta,
            c.as_mut_ptr(),
            is(ldc),
            1,
        );
    }
}

/// `C (+)= A · B`: `A` is `[m, k]` (row stride `lda`), `B` is `[k, n]` (row stride `ldb`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul_nn(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
    acc: bool,
) {
    gemm(m, k, n, a, (lda, 1), b, (ldb, 1), c, ldc, acc);
}

/// `C (+)= A · Bᵀ`: `A` is `[m, k]`, `B` is stored `[n, k]` (a PyTorch `Linear` weight).
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul_nt(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
    acc: bool,
) {
    gemm(m, k, n, a, (lda, 1), b, (1, ldb), c, ldc, acc);
}

/// `C (+)= Aᵀ · B`: `A` is stored `[k, m]`, `B` is `[k, n]` (weight gradients `dYᵀ·X`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul_tn(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
    acc: bool,
) {
    gemm(m, k, n, a, (1, lda), b, (ldb, 1), c, ldc, acc);
}

/// Public entry for benchmarks: `C = A · B`, all contiguous row-major.
pub fn sgemm_nn(m: usize, k: usize, n: usize, a: &[f32], b: &[f32], c: &mut [f32]) {
    matmul_nn(m, k, n, a, k, b, n, c, n, false);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(
        m: usize,
        k: usize,
        n: usize,
        a: impl Fn(usize, usize) -> f32,
        b: impl Fn(usize, usize) -> f32,
    ) -> Vec<f32> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|p| a(i, p) * b(p, j)).sum();
            }
        }
        c
    }

    #[test]
    fn block_gemm_variants_match_naive() {
        let (m, k, n) = (5, 7, 3);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let bt: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.11).cos()).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.23).cos()).collect();
        let at: Vec<f32> = (0..k * m).map(|i| (i as f32 * 0.19).sin()).collect();
        let mut c = vec![1.0; m * n];
        matmul_nn(m, k, n, &a, k, &b, n, &mut c, n, false);
        let want = naive(m, k, n, |i, p| a[i * k + p], |p, j| b[p * n + j]);
        assert!(c.iter().zip(&want).all(|(x, y)| (x - y).abs() < 1e-5));
        matmul_nt(m, k, n, &a, k, &bt, k, &mut c, n, false);
        let want = naive(m, k, n, |i, p| a[i * k + p], |p, j| bt[j * k + p]);
        assert!(c.iter().zip(&want).all(|(x, y)| (x - y).abs() < 1e-5));
        let mut c2 = c.clone();
        matmul_tn(m, k, n, &at, m, &b, n, &mut c2, n, true);
        let want2 = naive(m, k, n, |i, p| at[p * m + i], |p, j| b[p * n + j]);
        assert!(c2
            .iter()
            .zip(c.iter().zip(&want2))
            .all(|(x, (c, y))| (x - c - y).abs() < 1e-5));
    }
}
