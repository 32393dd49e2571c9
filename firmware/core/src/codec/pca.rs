//! Weighted PCA through the small Gram matrix: the top-k eigenvectors of `G = Xw Xwᵀ`
//! (N×N, cyclic Jacobi) mapped to D-space directions `V = Xwᵀ u / ‖·‖`, re-orthonormalised.

/// Cyclic Jacobi eigen-decomposition of the symmetric `n×n` matrix `a` (row-major,
/// destroyed: its diagonal ends up holding the eigenvalues). `e` receives the eigenvectors
/// as columns.
pub(crate) fn jacobi(a: &mut [f32], e: &mut [f32], n: usize) {
    e[..n * n].fill(0.0);
    for i in 0..n {
        e[i * n + i] = 1.0;
    }
    let scale: f64 = (0..n * n)
        .map(|i| {
            let v = a[i] as f64;
            v * v
        })
        .sum::<f64>()
        .max(1e-300);
    for _sweep in 0..100 {
        let mut off = 0.0f64;
        for p in 0..n {
            for q in p + 1..n {
                {
                    let v = a[p * n + q] as f64;
                    off += v * v;
                }
            }
        }
        if off <= 1e-14 * scale {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q] as f64;
                if apq.abs() <= 1e-30 {
                    continue;
                }
                let app = a[p * n + p] as f64;
                let aqq = a[q * n + q] as f64;
                let theta = (aqq - app) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + libm::sqrt(theta * theta + 1.0));
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / libm::sqrt(t * t + 1.0);
                let s = t * c;
                for r in 0..n {
                    let arp = a[r * n + p] as f64;
                    let arq = a[r * n + q] as f64;
                    a[r * n + p] = (c * arp - s * arq) as f32;
                    a[r * n + q] = (s * arp + c * arq) as f32;
                }
                for r in 0..n {
                    let apr = a[p * n + r] as f64;
                    let aqr = a[q * n + r] as f64;
                    a[p * n + r] = (c * apr - s * aqr) as f32;
                    a[q * n + r] = (s * apr + c * aqr) as f32;
                }
                for r in 0..n {
                    let erp = e[r * n + p] as f64;
                    let erq = e[r * n + q] as f64;
                    e[r * n + p] = (c * erp - s * erq) as f32;
                    e[r * n + q] = (s * erp + c * erq) as f32;
                }
            }
        }
    }
}

/// Dot product accumulated in f64.
#[inline]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
}

/// Modified Gram–Schmidt (two passes) on the `k` rows of `v` (`k×d`); rows that vanish
/// (directions beyond the data's rank) are set to zero.
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
        // Relative to the direction's length before orthogonalisation.
        if nn > 1e-5 * norms[j].max(f32::MIN_POSITIVE) && nn > 0.0 {
            row.iter_mut().for_each(|x| *x /= nn);
        } else {
            row.fill(0.0);
        }
    }
}
