//! Where a weight matrix's gradient goes: into its gradient tensor, or straight into the
//! optimiser, a block of rows at a time while that block is in cache (the fused step of
//! [`super::backward::backward_update`]: the gradient is never written out, and the
//! optimiser does not stream it back in).

use std::cell::RefCell;

use rayon::prelude::*;

use super::gemm::matmul_tn_here;

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

thread_local! {
    /// A strip of gradient on its way to the optimiser, one per thread.
    static STRIP_BUF: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

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
        r: usize,
        inn: usize,
        dy: &[f32],
        ldy: usize,
        x: &[f32],
        ldx: usize,
        scale: f32,
        par: bool,
    ) {
        let strip = |s: usize, g: &mut [f32]| {
            let rows = g.len() / inn;
            matmul_tn_here(rows, r, inn, &dy[s * STRIP..], ldy, x, ldx, g, inn, false);
            if scale != 1.0 {
                g.iter_mut().for_each(|v| *v *= scale);
            }
        };
        let len = STRIP * inn;
        match self {
            Weight::Store { g, .. } => {
                assert_eq!(g.len() % inn, 0, "a gradient of whole rows");
                if par {
                    g.par_chunks_mut(len)
                        .enumerate()
                        .for_each(|(s, g)| strip(s, g));
                } else {
                    g.chunks_mut(len).enumerate().for_each(|(s, g)| strip(s, g));
                }
            }
            Weight::Update {
                name,
                w,
                m,
                v,
                rule,
            } => {
                assert!(w.len() % inn == 0 && m.len() == w.len() && v.len() == w.len());
                let apply = |s: usize, w: &mut [f32], m: &mut [f32], v: &mut [f32]| {
                    STRIP_BUF.with_borrow_mut(|g| {
                        g.resize(w.len(), 0.0);
                        strip(s, g);
                        rule(name, w, g, m, v);
                    })
                };
                if par {
                    w.par_chunks_mut(len)
                        .zip(m.par_chunks_mut(len).zip(v.par_chunks_mut(len)))
                        .enumerate()
                        .for_each(|(s, (w, (m, v)))| apply(s, w, m, v));
                } else {
                    w.chunks_mut(len)
                        .zip(m.chunks_mut(len).zip(v.chunks_mut(len)))
                        .enumerate()
                        .for_each(|(s, (w, (m, v)))| apply(s, w, m, v));
                }
            }
        }
    }
}
