//! AdamW (decoupled weight decay), PyTorch's update order:
//! `p ← p − lr·wd·p` (decayed tensors only), `m ← β1 m + (1−β1) g`, `v ← β2 v + (1−β2) g²`,
//! `p ← p − lr · (m / (1−β1ᵗ)) / (sqrt(v / (1−β2ᵗ)) + eps)`.

use rayon::prelude::*;

use super::TrainConfig;
use crate::block::{block_tensor_shapes, is_decayed, BlockDims, BlockParams};
use crate::simd::Build;

/// First and second moments of every trainable scalar, and the step count.
#[derive(Clone, Debug, PartialEq)]
pub struct AdamState {
    /// Number of updates applied so far.
    pub step: u64,
    pub m: BlockParams,
    pub v: BlockParams,
    /// Moments of the "other" bias `b`.
    pub m_bias: f32,
    pub v_bias: f32,
}

impl AdamState {
    /// Zero moments, step 0.
    pub fn zeros(dims: &BlockDims) -> Self {
        AdamState {
            step: 0,
            m: BlockParams::zeros(dims),
            v: BlockParams::zeros(dims),
            m_bias: 0.0,
            v_bias: 0.0,
        }
    }
}

/// Elements per parallel task of the update.
const CHUNK: usize = 1 << 15;

/// Bias-corrected scalars of step `t` (1-based): `(lr / (1−β1ᵗ), 1 / sqrt(1−β2ᵗ))`.
fn corrections(cfg: &TrainConfig, t: u64) -> (f32, f32) {
    let t = t.min(i32::MAX as u64) as i32;
    let c1 = 1.0 - (cfg.beta1 as f64).powi(t);
    let c2 = 1.0 - (cfg.beta2 as f64).powi(t);
    ((cfg.lr as f64 / c1) as f32, (1.0 / c2.sqrt()) as f32)
}

/// The scalars of one tensor's update.
#[derive(Clone, Copy)]
struct Coeffs {
    /// `1 − lr·wd` for a decayed tensor, else 1.
    keep: f32,
    b1: f32,
    b2: f32,
    eps: f32,
    step_size: f32,
    inv_sqrt_c2: f32,
    /// Whether the update prefetches (x86-64; the same bits either way).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    prefetch: bool,
}

impl Coeffs {
    fn new(cfg: &TrainConfig, decay: bool, step_size: f32, inv_sqrt_c2: f32) -> Self {
        let keep = if decay {
            1.0 - cfg.lr * cfg.weight_decay
        } else {
            1.0
        };
        Coeffs {
            keep,
            b1: cfg.beta1,
            b2: cfg.beta2,
            eps: cfg.eps,
            step_size,
            inv_sqrt_c2,
            prefetch: true,
        }
    }
}

/// The update loop itself, compiled once for the baseline instruction set and once for
/// each vector extension [`update_tensor`] dispatches to. Every operation is an IEEE
/// `+ − × ÷ sqrt` of single precision (no fused multiply-add: Rust never contracts), so
/// every build gives the same bits; only the vector width differs.
#[inline(always)]
fn update_body(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], c: Coeffs) {
    for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
        *p *= c.keep;
        *m = c.b1 * *m + (1.0 - c.b1) * g;
        *v = c.b2 * *v + (1.0 - c.b2) * g * g;
        let denom = v.sqrt() * c.inv_sqrt_c2 + c.eps;
        *p -= c.step_size * *m / denom;
    }
}

/// [`update_body`] as `c.prefetch` says: prefetching ([`update_prefetching`],
/// x86-64) or not; compiled into each build of [`update_tensor`].
#[inline(always)]
fn update_chosen(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], c: Coeffs) {
    #[cfg(target_arch = "x86_64")]
    if c.prefetch {
        return update_prefetching(p, g, m, v, c);
    }
    update_body(p, g, m, v, c)
}

/// Elements ahead of the update at which the lines of the weights and of both moments are
/// prefetched (1.5 KiB): the update streams three arrays from memory (the gradient is
/// in cache in the fused step), more than the hardware prefetchers keep in flight
/// (`bench-train` compares both; history in `docs/perf-log.md`).
#[cfg(target_arch = "x86_64")]
const PREFETCH_AHEAD: usize = 384;

/// Elements per block of [`update_prefetching`]: a 64-byte line of each array per 16.
#[cfg(target_arch = "x86_64")]
const PREFETCH_BLOCK: usize = 64;

/// [`update_body`] a block of [`PREFETCH_BLOCK`] elements at a time, each block first
/// asking for the lines [`PREFETCH_AHEAD`] elements further on of `p`, `m` and `v`.
/// Element-wise, so the blocks give [`update_body`]'s bits.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn update_prefetching(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], c: Coeffs) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    let n = p.len();
    assert!(g.len() == n && m.len() == n && v.len() == n);
    let mut i = 0;
    while i < n {
        let end = (i + PREFETCH_BLOCK).min(n);
        let ahead = i + PREFETCH_AHEAD;
        for o in (ahead..(ahead + PREFETCH_BLOCK).min(n)).step_by(16) {
            for a in [p.as_ptr(), m.as_ptr(), v.as_ptr()] {
                // SAFETY: a prefetch neither reads nor writes memory as far as the program
                // can tell, and `o < n` keeps the address inside the array anyway.
                unsafe { _mm_prefetch::<_MM_HINT_T0>(a.wrapping_add(o) as *const i8) };
            }
        }
        update_body(
            &mut p[i..end],
            &g[i..end],
            &mut m[i..end],
            &mut v[i..end],
            c,
        );
        i = end;
    }
}

/// One update of a tensor in place, with the widest vectors the CPU has (the same bits
/// as the baseline build).
fn update_tensor(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], c: Coeffs) {
    update_with(Build::widest(NARROW), p, g, m, v, c)
}

/// The 256-bit extension of [`update_chosen`]'s narrow build.
const NARROW: &str = "avx";

/// [`update_tensor`] in the given build (panics when the CPU lacks it).
fn update_with(build: Build, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], c: Coeffs) {
    anytime_linalg::build_of!(
        build,
        "avx",
        update_chosen(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], c: Coeffs) -> ()
    )
}

/// Applies one AdamW update to the parameters and `b` (the bias is never decayed).
pub fn adamw_update(
    dims: &BlockDims,
    cfg: &TrainConfig,
    state: &mut AdamState,
    params: &mut BlockParams,
    other_bias: &mut f32,
    grads: &BlockParams,
    grad_bias: f32,
) {
    let k = next_step(cfg, state);
    update_tensors(dims, k, state, params, grads, |_| true);
    update_bias(k, state, other_bias, grad_bias);
}

/// Applies one AdamW update to one tensor `p` (decayed or not) with the moments `m`, `v`
/// and the gradient `g`, as step `step` (1-based) of its own count: the per-element rule
/// of every tensor of both training steps.
pub fn adamw_update_slice(
    cfg: &TrainConfig,
    step: u64,
    decay: bool,
    p: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
) {
    assert!(
        g.len() == p.len() && m.len() == p.len() && v.len() == p.len(),
        "p, g, m and v must have one length"
    );
    let (step_size, inv_sqrt_c2) = corrections(cfg, step);
    update_tensor(p, g, m, v, Coeffs::new(cfg, decay, step_size, inv_sqrt_c2));
}

/// The scalars of one step of every tensor's update.
#[derive(Clone, Copy)]
pub(crate) struct StepScalars<'a> {
    cfg: &'a TrainConfig,
    /// `lr / (1−β1ᵗ)`.
    step_size: f32,
    /// `1 / sqrt(1−β2ᵗ)`.
    inv_sqrt_c2: f32,
    /// Whether the updates prefetch.
    prefetch: bool,
}

impl StepScalars<'_> {
    /// The update of one block of the tensor `name` (decayed or not by its name).
    pub fn update(&self, name: &str, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
        self.update_decayed(is_decayed(name), p, g, m, v)
    }

    /// The update of one block of a tensor, decayed when `decay`.
    pub fn update_decayed(
        &self,
        decay: bool,
        p: &mut [f32],
        g: &[f32],
        m: &mut [f32],
        v: &mut [f32],
    ) {
        let c = Coeffs {
            prefetch: self.prefetch,
            ..Coeffs::new(self.cfg, decay, self.step_size, self.inv_sqrt_c2)
        };
        update_tensor(p, g, m, v, c)
    }

    /// These scalars with software prefetching on (the default) or off: the same bits.
    pub fn prefetching(self, on: bool) -> Self {
        StepScalars {
            prefetch: on,
            ..self
        }
    }
}

/// Counts a step of the block's optimiser and returns its scalars.
pub(crate) fn next_step<'a>(cfg: &'a TrainConfig, state: &mut AdamState) -> StepScalars<'a> {
    count_step(cfg, &mut state.step)
}

/// Counts a step of an optimiser whose step count is `step` and returns its scalars.
pub(crate) fn count_step<'a>(cfg: &'a TrainConfig, step: &mut u64) -> StepScalars<'a> {
    *step += 1;
    let (step_size, inv_sqrt_c2) = corrections(cfg, *step);
    StepScalars {
        cfg,
        step_size,
        inv_sqrt_c2,
        prefetch: true,
    }
}

/// One tensor's share of an update: whether it decays, the tensor, its gradient and its
/// two moments.
pub(crate) type TensorUpdate<'t> = (bool, &'t mut [f32], &'t [f32], &'t mut [f32], &'t mut [f32]);

/// The update of step `k` of `tensors`. Element-wise, so chunks in parallel give the
/// serial result exactly; the chunks of every tensor go to the pool as one parallel loop
/// (one per tensor would leave a thread idle at the end of each).
pub(crate) fn update_all(k: StepScalars<'_>, tensors: Vec<TensorUpdate<'_>>) {
    let mut chunks = Vec::new();
    for (decay, p, g, m, v) in tensors {
        let parts = p
            .chunks_mut(CHUNK)
            .zip(g.chunks(CHUNK))
            .zip(m.chunks_mut(CHUNK).zip(v.chunks_mut(CHUNK)));
        chunks.extend(parts.map(|((p, g), (m, v))| (decay, p, g, m, v)));
    }
    chunks
        .into_par_iter()
        .for_each(|(decay, p, g, m, v)| k.update_decayed(decay, p, g, m, v));
}

/// The update of step `k` of the block tensors whose names `which` accepts (not `b`).
pub(crate) fn update_tensors(
    dims: &BlockDims,
    k: StepScalars<'_>,
    state: &mut AdamState,
    params: &mut BlockParams,
    grads: &BlockParams,
    which: impl Fn(&str) -> bool,
) {
    let names = block_tensor_shapes(dims);
    let iter = params
        .tensors_mut()
        .into_iter()
        .zip(grads.tensors())
        .zip(state.m.tensors_mut())
        .zip(state.v.tensors_mut())
        .zip(names.iter());
    let tensors = iter
        .filter(|(_, (name, _))| which(name))
        .map(|((((p, g), m), v), (name, _))| {
            let p: &mut [f32] = p;
            let (m, v): (&mut [f32], &mut [f32]) = (m, v);
            (is_decayed(name), p, g, m, v)
        })
        .collect();
    update_all(k, tensors);
}

/// The update of step `k` of the "other" bias `b` (never decayed).
pub(crate) fn update_bias(
    k: StepScalars<'_>,
    state: &mut AdamState,
    other_bias: &mut f32,
    grad_bias: f32,
) {
    let (mut p, mut m, mut v) = ([*other_bias], [state.m_bias], [state.v_bias]);
    let c = Coeffs::new(k.cfg, false, k.step_size, k.inv_sqrt_c2);
    update_body(&mut p, &[grad_bias], &mut m, &mut v, c);
    (*other_bias, state.m_bias, state.v_bias) = (p[0], m[0], v[0]);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// PyTorch's `torch.optim.AdamW` for one scalar, in f64.
    struct Reference {
        p: f64,
        m: f64,
        v: f64,
    }

    impl Reference {
        fn step(&mut self, g: f64, t: i32, cfg: &TrainConfig, decay: bool) {
            let (lr, b1, b2) = (cfg.lr as f64, cfg.beta1 as f64, cfg.beta2 as f64);
            if decay {
                self.p *= 1.0 - lr * cfg.weight_decay as f64;
            }
            self.m = b1 * self.m + (1.0 - b1) * g;
            self.v = b2 * self.v + (1.0 - b2) * g * g;
            let m_hat = self.m / (1.0 - b1.powi(t));
            let v_hat = self.v / (1.0 - b2.powi(t));
            self.p -= lr * m_hat / (v_hat.sqrt() + cfg.eps as f64);
        }
    }

    /// Every build this CPU runs (baseline, AVX, AVX-512) gives the plain body's bits,
    /// on lengths with and without a vector tail, both decayed and not, prefetching or
    /// not (lengths past the prefetch distance, and with a partial last block).
    #[test]
    fn adamw_vector_builds_give_the_baseline_bits() {
        const TEST: &str = "adamw_vector_builds_give_the_baseline_bits";
        for build in crate::simd::builds_to_test(TEST, "AdamW", NARROW) {
            check_build(build);
        }
    }

    fn check_build(build: Build) {
        use rand::{rngs::StdRng, Rng, SeedableRng};
        let mut rng = StdRng::seed_from_u64(17);
        let cfg = TrainConfig {
            lr: 1e-2,
            weight_decay: 0.5,
            ..TrainConfig::default()
        };
        let cases = [1usize, 15, 16, 17, 1000, 5003]
            .into_iter()
            .flat_map(|len| [(len, false), (len, true)]);
        for (len, prefetch) in cases {
            for decay in [false, true] {
                let mut fill = |scale: f32| -> Vec<f32> {
                    (0..len).map(|_| rng.gen_range(-scale..scale)).collect()
                };
                let (p0, g, m0) = (fill(1.0), fill(3.0), fill(0.1));
                let v0: Vec<f32> = fill(0.01).iter().map(|x| x.abs()).collect();
                let (mut p1, mut m1, mut v1) = (p0.clone(), m0.clone(), v0.clone());
                let (mut p2, mut m2, mut v2) = (p0, m0, v0);
                for t in 1..=3 {
                    let (s, c2) = corrections(&cfg, t);
                    let c = Coeffs {
                        prefetch,
                        ..Coeffs::new(&cfg, decay, s, c2)
                    };
                    update_with(build, &mut p1, &g, &mut m1, &mut v1, c);
                    update_body(&mut p2, &g, &mut m2, &mut v2, c);
                }
                let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits(&p1),
                    bits(&p2),
                    "{build:?} len {len}, decay {decay}, {prefetch}"
                );
                assert_eq!(bits(&m1), bits(&m2));
                assert_eq!(bits(&v1), bits(&v2));
            }
        }
    }

    #[test]
    fn adamw_matches_pytorch_and_decays_every_tensor_but_b() {
        let dims = BlockDims::TEST;
        // A large lr and decay so that decay is visible in f32.
        let cfg = TrainConfig {
            lr: 1e-2,
            weight_decay: 0.5,
            ..TrainConfig::default()
        };
        let mut params = BlockParams::random(&dims, 5);
        let start = params.clone();
        let mut bias = 0.25f32;
        let mut state = AdamState::zeros(&dims);
        let grads: Vec<BlockParams> = (0..3).map(|s| BlockParams::random(&dims, 10 + s)).collect();
        let g_bias = [0.3f32, -0.1, 0.2];
        for (g, &gb) in grads.iter().zip(&g_bias) {
            adamw_update(&dims, &cfg, &mut state, &mut params, &mut bias, g, gb);
        }
        assert_eq!(state.step, 3);
        let names = block_tensor_shapes(&dims);
        for (t, (name, _)) in names.iter().enumerate() {
            let decay = is_decayed(name);
            for i in 0..start.tensors()[t].len() {
                let mut r = Reference {
                    p: start.tensors()[t][i] as f64,
                    m: 0.0,
                    v: 0.0,
                };
                for (s, g) in grads.iter().enumerate() {
                    r.step(g.tensors()[t][i] as f64, s as i32 + 1, &cfg, decay);
                }
                let got = params.tensors()[t][i] as f64;
                assert!(
                    anytime_testkit::close(got, r.p, 1e-6, 0.0),
                    "{name}[{i}]: {got} vs {}",
                    r.p
                );
            }
        }
        let mut r = Reference {
            p: 0.25,
            m: 0.0,
            v: 0.0,
        };
        for (s, &g) in g_bias.iter().enumerate() {
            r.step(g as f64, s as i32 + 1, &cfg, false);
        }
        assert!(
            anytime_testkit::close(bias, r.p, 1e-6, 0.0),
            "b: {bias} vs {}",
            r.p
        );
        // The choice itself (SPEC §4): decay on every block tensor; `b` is not decayed
        // (its reference above steps without decay).
        assert!(names.iter().all(|(n, _)| is_decayed(n)), "{names:?}");
        assert!(!is_decayed("b"));
    }
}
