//! Where a weight matrix's gradient goes: into its gradient tensor, or straight into the
//! optimiser, a block of rows at a time while that block is in cache (the fused step of
//! [`super::backward::backward_update`]: the gradient is never written out, and the
//! optimiser does not stream it back in).

use rayon::prelude::*;

use anytime_linalg::{Gemm, MatMut, MatRef};

/// Rows of a weight gradient computed, then stored or applied, at a time: 32 rows of the
/// widest weight (3,072 columns) are 384 KiB, which stay in a core's L2 between the
/// product and the update.
pub(crate) const STRIP: usize = 32;

/// The optimiser's update of one block of a weight matrix: `rule(name, w, g, m, v)` with
/// the tensor's name (as in [`super::block_tensor_shapes`]), its weights, their gradient
/// and their two moments, all of the same length.
pub type UpdateRule<'a> =
    dyn Fn(&'static str, &mut [f32], &[f32], &mut [f32], &mut [f32]) + Sync + 'a;

/// A weight matrix (or a block of its rows) and where its gradient goes.
pub(crate) enum Weight<'a> {
    /// The weights, read only; the gradient is written to `g`.
    Store { w: &'a [f32], g: &'a mut [f32] },
    /// The weights, updated in place by `rule` from their gradient, with their moments.
    Update {
        name: &'static str,
        w: &'a mut [f32],
        m: &'a mut [f32],
        v: &'a mut [f32],
        rule: &'a UpdateRule<'a>,
    },
}

/// Groups of strips run in parallel by [`Weight::backprop`], each with its own partial
/// input gradient.
pub(crate) const GROUPS: usize = 8;

impl<'a> Weight<'a> {
    /// The weights (before any update: backward reads them for the input gradient first).
    pub fn w(&self) -> &[f32] {
        match self {
            Weight::Store { w, .. } => w,
            Weight::Update { w, .. } => w,
        }
    }

    /// The first `at` elements and the rest.
    pub fn split_at(self, at: usize) -> (Weight<'a>, Weight<'a>) {
        match self {
            Weight::Store { w, g } => {
                let ((w0, w1), (g0, g1)) = (w.split_at(at), g.split_at_mut(at));
                (
                    Weight::Store { w: w0, g: g0 },
                    Weight::Store { w: w1, g: g1 },
                )
            }
            Weight::Update {
                name,
                w,
                m,
                v,
                rule,
            } => {
                let (w0, w1) = w.split_at_mut(at);
                let (m0, m1) = m.split_at_mut(at);
                let (v0, v1) = v.split_at_mut(at);
                let first = Weight::Update {
                    name,
                    w: w0,
                    m: m0,
                    v: v0,
                    rule,
                };
                let rest = Weight::Update {
                    name,
                    w: w1,
                    m: m1,
                    v: v1,
                    rule,
                };
                (first, rest)
            }
        }
    }

    /// Consecutive blocks of `len` elements (the last one shorter if need be).
    pub fn chunks(self, len: usize) -> Vec<Weight<'a>> {
        let mut out = Vec::new();
        let mut rest = self;
        while rest.w().len() > len {
            let (first, tail) = rest.split_at(len);
            out.push(first);
            rest = tail;
        }
        out.push(rest);
        out
    }

    /// The gradient `scale · dYᵀ·X` of these weights (`[rows, inn]`), from `dy`
    /// (`[r, rows]`, row stride `ldy`) and `x` (`[r, inn]`, row stride `ldx`), stored or
    /// applied in strips of [`STRIP`] rows, in parallel over the strips when `par`. Every
    /// element is the same sum whatever the strip and the destination, so the optimiser
    /// sees the bits that a stored gradient holds.
    #[allow(clippy::too_many_arguments)]
    pub fn grad(
        self,
        gemm: &Gemm,
        r: usize,
        inn: usize,
        dy: &[f32],
        ldy: usize,
        x: &[f32],
        ldx: usize,
        scale: f32,
        par: bool,
    ) {
        let strips = self.chunks(STRIP * inn);
        let run = |(s, w): (usize, Weight<'_>)| {
            w.deliver(gemm, s * STRIP, r, inn, dy, ldy, x, ldx, scale)
        };
        if par {
            strips.into_par_iter().enumerate().for_each(run);
        } else {
            strips.into_iter().enumerate().for_each(run);
        }
    }

    /// The backward of `Y = X·Wᵀ` through these weights (`[rows, inn]`): `dx = dY·W`
    /// (`[r, inn]`, contiguous rows, overwritten) and the weights' gradient `dYᵀ·X`,
    /// stored or applied as by [`Self::grad`], with `dy` `[r, rows]` (row stride `ldy`)
    /// and `x` `[r, inn]` (row stride `ldx`). One pass over the weights: each strip of
    /// [`STRIP`] rows is read for its part of `dx` (a short reduction, in cache) and
    /// then gets its gradient, so the weights are read from memory once, and never
    /// packed. The strips form [`GROUPS`] groups of consecutive rows run in parallel,
    /// each adding its strips' parts in order into a partial `dx`; the partials are then
    /// added in group order. The grouping depends on the shapes only, so the result does
    /// not depend on the thread count.
    #[allow(clippy::too_many_arguments)]
    pub fn backprop(
        self,
        gemm: &Gemm,
        r: usize,
        inn: usize,
        dy: &[f32],
        ldy: usize,
        x: &[f32],
        ldx: usize,
        dx: &mut [f32],
    ) {
        let rows = self.w().len() / inn;
        assert!(rows * inn == self.w().len() && dx.len() == r * inn);
        let per_group = rows.div_ceil(GROUPS).next_multiple_of(STRIP);
        let groups = self.chunks(per_group * inn);
        // The partial input gradients of the groups but the first, in the GEMMs' scratch.
        let mut partials = gemm.scratch();
        {
            partials.resize((groups.len() - 1) * r * inn, 0.0);
            let outs: Vec<&mut [f32]> = std::iter::once(&mut *dx)
                .chain(partials.chunks_mut(r * inn))
                .collect();
            groups
                .into_par_iter()
                .zip(outs)
                .enumerate()
                .for_each(|(gi, (wg, out))| {
                    for (s, ws) in wg.chunks(STRIP * inn).into_iter().enumerate() {
                        let row0 = gi * per_group + s * STRIP;
                        let k = ws.w().len() / inn;
                        gemm.matmul_here(
                            MatRef::strided(&dy[row0..], r, k, (ldy, 1)),
                            MatRef::strided(ws.w(), k, inn, (inn, 1)),
                            MatMut::new(out, r, inn, inn),
                            s > 0,
                        );
                        ws.deliver(gemm, row0, r, inn, dy, ldy, x, ldx, 1.0);
                    }
                });
            for part in partials.chunks_exact(r * inn) {
                dx.iter_mut().zip(part).for_each(|(d, &p)| *d += p);
            }
        }
    }

    /// Computes the gradient rows `row0..` of these weights (one strip) and stores or
    /// applies them.
    #[allow(clippy::too_many_arguments)]
    fn deliver(
        self,
        gemm: &Gemm,
        row0: usize,
        r: usize,
        inn: usize,
        dy: &[f32],
        ldy: usize,
        x: &[f32],
        ldx: usize,
        scale: f32,
    ) {
        let compute = |g: &mut [f32]| {
            let rows = g.len() / inn;
            gemm.matmul_here(
                MatRef::strided(&dy[row0..], rows, r, (1, ldy)),
                MatRef::strided(x, r, inn, (ldx, 1)),
                MatMut::new(g, rows, inn, inn),
                false,
            );
            if scale != 1.0 {
                g.iter_mut().for_each(|v| *v *= scale);
            }
        };
        match self {
            Weight::Store { g, .. } => compute(g),
            Weight::Update {
                name,
                w,
                m,
                v,
                rule,
            } => {
                // The strip's gradient, in the GEMMs' scratch.
                let mut g = gemm.scratch();
                g.resize(w.len(), 0.0);
                compute(&mut g);
                rule(name, w, &g, m, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sines(len: usize, f: f32) -> Vec<f32> {
        (0..len).map(|i| (i as f32 * f).sin()).collect()
    }

    /// `backprop` gives `dY·W` and `dYᵀ·X` (against plain f64 loops), the same bits on
    /// 1 and 3 threads, and hands the optimiser the bits it stores, on shapes with
    /// partial strips and groups.
    #[test]
    fn backprop_matches_plain_loops_on_any_thread_count_and_both_destinations() {
        let gemm = &Gemm::default();
        for (r, rows, inn) in [(3, 1, 5), (32, 33, 64), (7, 100, 48), (32, 300, 17)] {
            let (ldy, ldx) = (rows + 2, inn + 1);
            let (dy, x, w) = (
                sines(r * ldy, 0.37),
                sines(r * ldx, 0.11),
                sines(rows * inn, 0.05),
            );
            let (mut want_dx, mut want_g) = (vec![0.0f64; r * inn], vec![0.0f64; rows * inn]);
            for i in 0..r {
                for o in 0..rows {
                    for j in 0..inn {
                        let a = dy[i * ldy + o] as f64;
                        want_dx[i * inn + j] += a * w[o * inn + j] as f64;
                        want_g[o * inn + j] += a * x[i * ldx + j] as f64;
                    }
                }
            }
            let run = |threads: usize| {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                pool.install(|| {
                    let (mut dx, mut g) = (vec![f32::NAN; r * inn], vec![f32::NAN; rows * inn]);
                    let wt = Weight::Store { w: &w, g: &mut g };
                    wt.backprop(gemm, r, inn, &dy, ldy, &x, ldx, &mut dx);
                    // The update destination, with a rule that records the gradient.
                    let (mut w2, mut m, mut v) =
                        (w.clone(), vec![0.0; w.len()], vec![0.0; w.len()]);
                    let rule = |_: &'static str,
                                w: &mut [f32],
                                g: &[f32],
                                m: &mut [f32],
                                _: &mut [f32]| {
                        m.copy_from_slice(g);
                        w.fill(0.0);
                    };
                    let mut dx2 = vec![f32::NAN; r * inn];
                    let wu = Weight::Update {
                        name: "t",
                        w: &mut w2,
                        m: &mut m,
                        v: &mut v,
                        rule: &rule,
                    };
                    wu.backprop(gemm, r, inn, &dy, ldy, &x, ldx, &mut dx2);
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(
                        bits(&dx),
                        bits(&dx2),
                        "dx read the weights after the update"
                    );
                    assert_eq!(bits(&g), bits(&m), "the optimiser got other bits");
                    assert!(w2.iter().all(|&x| x == 0.0), "rows left without an update");
                    (bits(&dx), bits(&g), dx, g)
                })
            };
            let (one, three) = (run(1), run(3));
            assert_eq!((&one.0, &one.1), (&three.0, &three.1), "thread count");
            for (got, want) in one.2.iter().zip(&want_dx).chain(one.3.iter().zip(&want_g)) {
                assert!(
                    anytime_testkit::close(
                        got,
                        want,
                        1e-5 * rows.max(r) as f64,
                        1e-5 * rows.max(r) as f64
                    ),
                    "{got} vs {want} ({r}, {rows}, {inn})"
                );
            }
        }
    }

    /// A call made on a thread while that thread is inside another (rayon runs other
    /// work there while a parallel section waits; here the update rule calls it) works
    /// and gives the same result as alone.
    #[test]
    fn backprop_is_reentrant_on_one_thread() {
        let gemm = &Gemm::default();
        let (r, rows, inn) = (4, 70, 9);
        let (dy, x, w) = (
            sines(r * rows, 0.3),
            sines(r * inn, 0.2),
            sines(rows * inn, 0.1),
        );
        let alone = || {
            let (mut dx, mut g) = (vec![0.0; r * inn], vec![0.0; rows * inn]);
            Weight::Store { w: &w, g: &mut g }.backprop(gemm, r, inn, &dy, rows, &x, inn, &mut dx);
            (dx, g)
        };
        let want = alone();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        pool.install(|| {
            let inner = std::sync::Mutex::new(Vec::new());
            let rule = |_: &'static str, _: &mut [f32], _: &[f32], _: &mut [f32], _: &mut [f32]| {
                inner.lock().unwrap().push(alone());
            };
            let (mut w2, mut m, mut v) = (w.clone(), vec![0.0; w.len()], vec![0.0; w.len()]);
            let mut dx = vec![0.0; r * inn];
            let outer = Weight::Update {
                name: "t",
                w: &mut w2,
                m: &mut m,
                v: &mut v,
                rule: &rule,
            };
            outer.backprop(gemm, r, inn, &dy, rows, &x, inn, &mut dx);
            assert_eq!(dx, want.0);
            let inner = inner.into_inner().unwrap();
            assert_eq!(inner.len(), rows.div_ceil(STRIP));
            assert!(inner.iter().all(|got| *got == want));
        });
    }
}
