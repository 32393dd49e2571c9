//! Weighted PCA through the small Gram matrix: the top-k eigenvectors of `G = Xw Xwᵀ`
//! (N×N: Householder tridiagonalisation, then implicit QL) mapped to D-space directions
//! `V = Xwᵀ u / ‖·‖`, re-orthonormalised.

/// QL iterations allowed per eigenvalue before it is left as it stands (a finite matrix
/// needs a handful; the bound only stops non-finite input from looping).
const MAX_QL_ITERATIONS: u32 = 64;

/// Eigen-decomposition of the symmetric `n×n` matrix `a` (row-major, destroyed; only its
/// lower triangle is read). On
/// return `a` holds the orthonormal eigenvectors as columns and `lambda[..n]` the matching
/// eigenvalues, in no particular order; `off` (`n`) is work space. Values are stored in
/// `f32`, every product and sum is formed in `f64`. Returns the QL iterations taken.
pub(crate) fn sym_eigen(a: &mut [f32], lambda: &mut [f32], off: &mut [f32], n: usize) -> u32 {
    let (a, d, e) = (&mut a[..n * n], &mut lambda[..n], &mut off[..n]);
    tridiagonalise(a, d, e, n);
    implicit_ql(a, d, e, n)
}

/// Householder reduction `A = Q T Qᵀ`, from the last row up: `d` gets T's diagonal, `e[i]`
/// its entry `(i, i−1)` for `i ≥ 1` (`e[0]` is left undefined), and `a` is overwritten by
/// `Q`.
fn tridiagonalise(a: &mut [f32], d: &mut [f32], e: &mut [f32], n: usize) {
    let at = |r: usize, c: usize| r * n + c;
    for i in (1..n).rev() {
        let l = i - 1;
        // `h` = ½‖u‖² of this step's reflector (0: the row needs none); kept in `d[i]`
        // until the accumulation below reads it (`d[0]` is never read there).
        let mut h = 0.0f64;
        let scale: f64 = (0..=l).map(|k| f64::from(a[at(i, k)]).abs()).sum();
        if l == 0 || scale == 0.0 {
            e[i] = a[at(i, l)];
        } else {
            for k in 0..=l {
                let x = f64::from(a[at(i, k)]) / scale;
                a[at(i, k)] = x as f32;
                h += x * x;
            }
            let f = f64::from(a[at(i, l)]);
            let g = if f >= 0.0 {
                -libm::sqrt(h)
            } else {
                libm::sqrt(h)
            };
            e[i] = (scale * g) as f32;
            h -= f * g;
            a[at(i, l)] = (f - g) as f32;
            // p = A u / h (kept in e[..=l]) and K = uᵀp / 2h; u / h goes to column i.
            let mut f = 0.0f64;
            for j in 0..=l {
                a[at(j, i)] = (f64::from(a[at(i, j)]) / h) as f32;
                let mut g = 0.0f64;
                for k in 0..=j {
                    g += f64::from(a[at(j, k)]) * f64::from(a[at(i, k)]);
                }
                for k in j + 1..=l {
                    g += f64::from(a[at(k, j)]) * f64::from(a[at(i, k)]);
                }
                let p = g / h;
                e[j] = p as f32;
                f += p * f64::from(a[at(i, j)]);
            }
            let hh = f / (h + h);
            // A ← A − u qᵀ − q uᵀ with q = p − K u, on the lower triangle.
            for j in 0..=l {
                let f = f64::from(a[at(i, j)]);
                let g = f64::from(e[j]) - hh * f;
                e[j] = g as f32;
                for k in 0..=j {
                    let v =
                        f64::from(a[at(j, k)]) - (f * f64::from(e[k]) + g * f64::from(a[at(i, k)]));
                    a[at(j, k)] = v as f32;
                }
            }
        }
        d[i] = h as f32;
    }
    // Q = P₁ ⋯ P_{n−1}, built in place from the stored reflectors.
    for i in 0..n {
        if d[i] != 0.0 {
            for j in 0..i {
                let mut g = 0.0f64;
                for k in 0..i {
                    g += f64::from(a[at(i, k)]) * f64::from(a[at(k, j)]);
                }
                for k in 0..i {
                    let v = f64::from(a[at(k, j)]) - g * f64::from(a[at(k, i)]);
                    a[at(k, j)] = v as f32;
                }
            }
        }
        d[i] = a[at(i, i)];
        a[at(i, i)] = 1.0;
        for j in 0..i {
            a[at(j, i)] = 0.0;
            a[at(i, j)] = 0.0;
        }
    }
}

/// Implicit QL with Wilkinson shifts on the tridiagonal `(d, e)` of [`tridiagonalise`]:
/// `d` ends as the eigenvalues, the rotations are applied to the columns of `z`. Returns
/// the iterations taken.
fn implicit_ql(z: &mut [f32], d: &mut [f32], e: &mut [f32], n: usize) -> u32 {
    if n == 0 {
        return 0;
    }
    let mut total = 0;
    // e[i] couples d[i] and d[i + 1] from here on.
    e.copy_within(1..n, 0);
    e[n - 1] = 0.0;
    for l in 0..n {
        let mut iterations = 0;
        loop {
            // The first negligible coupling at or after l splits the matrix.
            let mut m = l;
            while m + 1 < n {
                let dd = f64::from(d[m]).abs() + f64::from(d[m + 1]).abs();
                if f64::from(e[m]).abs() <= f64::from(f32::EPSILON) * dd {
                    break;
                }
                m += 1;
            }
            if m == l || iterations == MAX_QL_ITERATIONS {
                break;
            }
            iterations += 1;
            total += 1;
            let dl = f64::from(d[l]);
            let g = (f64::from(d[l + 1]) - dl) / (2.0 * f64::from(e[l]));
            let r = libm::hypot(g, 1.0);
            let mut g = f64::from(d[m]) - dl + f64::from(e[l]) / (g + libm::copysign(r, g));
            let (mut s, mut c, mut p) = (1.0f64, 1.0f64, 0.0f64);
            let mut split = false;
            for i in (l..m).rev() {
                let f = s * f64::from(e[i]);
                let b = c * f64::from(e[i]);
                let r = libm::hypot(f, g);
                e[i + 1] = r as f32;
                if r == 0.0 {
                    // The coupling underflowed: the matrix splits at i + 1.
                    d[i + 1] = (f64::from(d[i + 1]) - p) as f32;
                    e[m] = 0.0;
                    split = true;
                    break;
                }
                s = f / r;
                c = g / r;
                let g1 = f64::from(d[i + 1]) - p;
                let r = (f64::from(d[i]) - g1) * s + 2.0 * c * b;
                p = s * r;
                d[i + 1] = (g1 + p) as f32;
                g = c * r - b;
                for k in 0..n {
                    let zi = f64::from(z[k * n + i]);
                    let zj = f64::from(z[k * n + i + 1]);
                    z[k * n + i + 1] = (s * zi + c * zj) as f32;
                    z[k * n + i] = (c * zi - s * zj) as f32;
                }
            }
            if !split {
                d[l] = (f64::from(d[l]) - p) as f32;
                e[l] = g as f32;
                e[m] = 0.0;
            }
        }
    }
    total
}

/// Dot product accumulated in f64.
#[inline]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
}

/// A direction whose length before orthogonalisation (√λ) is at most this share of the
/// first's lies beyond the data's rank (the `f32` round-off of the centred tokens, far below
/// any weighted direction of real data; FORMAT.md §2).
const RANK_RTOL: f32 = 1e-6;

/// Modified Gram–Schmidt (two passes) on the `k` rows of `v` (`k×d`), whose lengths before
/// it are `norms` (the first the largest); rows beyond the data's rank ([`RANK_RTOL`]) or
/// that vanish in it (dependent on earlier rows) are set to zero.
pub(crate) fn orthonormalise(v: &mut [f32], k: usize, d: usize, norms: &[f32]) {
    for j in 0..k {
        for _pass in 0..2 {
            for i in 0..j {
                let (done, rest) = v.split_at_mut(j * d);
                let vi = &done[i * d..(i + 1) * d];
                let vj = &mut rest[..d];
                let p = dot(vi, vj) as f32;
                for (x, &y) in vj.iter_mut().zip(vi) {
                    *x -= p * y;
                }
            }
        }
        let row = &mut v[j * d..(j + 1) * d];
        let nn = libm::sqrt(dot(row, row)) as f32;
        // Kept when it survives orthogonalisation and is within the data's rank.
        if nn > 1e-5 * norms[j].max(f32::MIN_POSITIVE) && norms[j] > RANK_RTOL * norms[0] {
            row.iter_mut().for_each(|x| *x /= nn);
        } else {
            row.fill(0.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;

    /// A random orthonormal `n×n` matrix (columns), by Gram–Schmidt on normal draws.
    fn orthonormal(n: usize, rng: &mut SplitMix64) -> Vec<f64> {
        let mut q: Vec<f64> = (0..n * n).map(|_| f64::from(rng.normal())).collect();
        for j in 0..n {
            for _ in 0..2 {
                for i in 0..j {
                    let p: f64 = (0..n).map(|r| q[r * n + i] * q[r * n + j]).sum();
                    for r in 0..n {
                        q[r * n + j] -= p * q[r * n + i];
                    }
                }
            }
            let norm = (0..n).map(|r| q[r * n + j].powi(2)).sum::<f64>().sqrt();
            for r in 0..n {
                q[r * n + j] /= norm;
            }
        }
        q
    }

    /// `Q diag(λ) Qᵀ` in f32, and λ.
    fn with_spectrum(lambda: &[f64], seed: u64) -> Vec<f32> {
        let n = lambda.len();
        let q = orthonormal(n, &mut SplitMix64::new(seed));
        let mut a = vec![0f32; n * n];
        for r in 0..n {
            for c in 0..n {
                let v: f64 = (0..n)
                    .map(|k| q[r * n + k] * lambda[k] * q[c * n + k])
                    .sum();
                a[r * n + c] = v as f32;
            }
        }
        // exactly symmetric, as the Gram matrix is
        for r in 0..n {
            for c in 0..r {
                a[c * n + r] = a[r * n + c];
            }
        }
        a
    }

    /// Decomposes `a` and checks `A zᵢ = λᵢ zᵢ`, `ZᵀZ = I` (relative to ‖A‖), finiteness,
    /// and that QL took at most 2.5 iterations an eigenvalue (Wilkinson's shift converges
    /// cubically: a bad shift takes many more) and at least one; returns the eigenvalues,
    /// sorted.
    fn check(a: &[f32], n: usize, tol: f64) -> Vec<f64> {
        let mut z = a.to_vec();
        let (mut lambda, mut off) = (vec![f32::NAN; n], vec![f32::NAN; n]);
        let iterations = sym_eigen(&mut z, &mut lambda, &mut off, n);
        eprintln!("n {n}: {iterations} QL iterations");
        assert!(
            2 * iterations as usize <= 5 * n,
            "n {n}: {iterations} QL iterations"
        );
        // (every matrix given here has a non-zero coupling to remove)
        assert!(n < 2 || iterations > 0, "n {n}: no QL iteration counted");
        let norm = a
            .iter()
            .map(|&x| f64::from(x).powi(2))
            .sum::<f64>()
            .sqrt()
            .max(1e-30);
        assert!(z.iter().chain(&lambda).all(|x| x.is_finite()), "n {n}");
        for i in 0..n {
            for r in 0..n {
                let az: f64 = (0..n)
                    .map(|c| f64::from(a[r * n + c]) * f64::from(z[c * n + i]))
                    .sum();
                let res = (az - f64::from(lambda[i]) * f64::from(z[r * n + i])).abs();
                assert!(res <= tol * norm, "n {n}: residual {res:e} (‖A‖ {norm:e})");
            }
            for j in 0..n {
                let p: f64 = (0..n)
                    .map(|r| f64::from(z[r * n + i]) * f64::from(z[r * n + j]))
                    .sum();
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((p - want).abs() <= tol, "n {n}: zᵢ·zⱼ = {p} ({i}, {j})");
            }
        }
        let mut sorted: Vec<f64> = lambda.iter().map(|&x| f64::from(x)).collect();
        sorted.sort_by(f64::total_cmp);
        sorted
    }

    /// The decomposition is scale-free: its tests are relative to the matrix, not to 1.
    #[test]
    fn tiny_and_huge_matrices_decompose() {
        let lambda = [4.0, -1.0, 0.5, 2.0, 0.0, 3.0];
        for scale in [1e-12, 1e-6, 1e6, 1e12] {
            let scaled: Vec<f64> = lambda.iter().map(|l| l * scale).collect();
            let a = with_spectrum(&scaled, 5);
            let got = check(&a, lambda.len(), 2e-5);
            let mut want = scaled.clone();
            want.sort_by(f64::total_cmp);
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() <= 1e-5 * 4.0 * scale, "{got:?} vs {want:?}");
            }
        }
    }

    #[test]
    fn random_symmetric_matrices_decompose() {
        let mut rng = SplitMix64::new(3);
        for n in [1usize, 2, 3, 4, 7, 17, 50] {
            let mut a = vec![0f32; n * n];
            for r in 0..n {
                for c in 0..=r {
                    let v = rng.normal() * 3.0;
                    a[r * n + c] = v;
                    a[c * n + r] = v;
                }
            }
            check(&a, n, 2e-5);
            // Only the lower triangle is read: NaN above the diagonal changes no bit.
            let run = |mut m: Vec<f32>| {
                let (mut lambda, mut off) = (vec![0f32; n], vec![0f32; n]);
                sym_eigen(&mut m, &mut lambda, &mut off, n);
                (m, lambda)
            };
            let mut upper_nan = a.clone();
            for r in 0..n {
                for c in r + 1..n {
                    upper_nan[r * n + c] = f32::NAN;
                }
            }
            let (want, got) = (run(a.clone()), run(upper_nan));
            assert!(
                want.0
                    .iter()
                    .zip(&got.0)
                    .all(|(x, y)| x.to_bits() == y.to_bits())
                    && want.1 == got.1,
                "n {n}: the upper triangle was read"
            );
        }
    }

    #[test]
    fn a_known_spectrum_is_found() {
        // Distinct, repeated, negative and zero eigenvalues; a rank-4 Gram-like matrix.
        let spectra: [&[f64]; 4] = [
            &[5.0, -2.0, 0.5, 3.0, 3.0, 0.0, 1e-3],
            &[1.0, 2.0],
            &[7.0],
            &[
                40.0, 9.0, 2.0, 0.25, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
                0.0, 0.0, 0.0, 0.0,
            ],
        ];
        for (s, lambda) in spectra.iter().enumerate() {
            let n = lambda.len();
            let a = with_spectrum(lambda, 10 + s as u64);
            let got = check(&a, n, 2e-5);
            let mut want = lambda.to_vec();
            want.sort_by(f64::total_cmp);
            let scale = want.iter().fold(0f64, |m, x| m.max(x.abs()));
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() <= 1e-5 * scale, "{got:?} vs {want:?}");
            }
        }
    }

    /// A row that is already reduced (one non-zero left of the diagonal) is where the
    /// reflector's sign matters: the other sign cancels to a zero-length reflector.
    #[test]
    fn tridiagonal_matrices_decompose() {
        let n = 6;
        for sign in [1.0f32, -1.0] {
            let mut a = vec![0f32; n * n];
            for i in 0..n {
                a[i * n + i] = i as f32 * 0.5;
                if i > 0 {
                    let v = sign * (1.0 + i as f32 * 0.25);
                    a[i * n + i - 1] = v;
                    a[(i - 1) * n + i] = v;
                }
            }
            check(&a, n, 2e-5);
        }
    }

    #[test]
    fn diagonal_and_zero_matrices_keep_the_identity() {
        for diag in [[0.0f32; 4], [4.0, 1.0, 3.0, 2.0]] {
            let n = 4;
            let mut a = vec![0f32; n * n];
            for i in 0..n {
                a[i * n + i] = diag[i];
            }
            let (mut lambda, mut off) = (vec![9f32; n], vec![9f32; n]);
            sym_eigen(&mut a, &mut lambda, &mut off, n);
            assert_eq!(lambda, diag);
            for r in 0..n {
                for c in 0..n {
                    assert_eq!(a[r * n + c], if r == c { 1.0 } else { 0.0 });
                }
            }
        }
    }

    #[test]
    fn non_finite_input_terminates() {
        let n = 6;
        let mut a = vec![1f32; n * n];
        a[7] = f32::NAN;
        a[12] = f32::INFINITY;
        let (mut lambda, mut off) = (vec![0f32; n], vec![0f32; n]);
        sym_eigen(&mut a, &mut lambda, &mut off, n); // returns: that is the test
    }
}
