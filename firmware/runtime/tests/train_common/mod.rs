//! Numeric checks of a [`TrainBackend`], written once and run for every backend: a backend
//! test file does `mod train_common;` and calls these with its constructor.
//!
//! Gradient checks are f32 central differences on small dims (D = 8, 2 heads, N = 5,
//! M = 16, E = 4, B = 3, |Y| = 5), on a random subset of coordinates of every parameter
//! tensor plus its largest-gradient coordinate, on `b` and on the input tokens.
//! Tolerance: `|fd − g| ≤ 5e-3·max(|fd|, |g|) + 1e-3·max|g over the group|` (the group is
//! the tensor; for tokens, the CLS rows or the patch rows), step `h = 3e-3·max(1, |x|)`.
//! Both tolerances were checked to catch 2–10 % errors planted in single backward rules.
//! The "other" bias `b` uses a larger step, `H_BIAS = 0.1`: the loss is an f32 of size ≈ 90
//! at τ = 100 (ulp 7.6e-6), so with `h = 3e-3` the quantisation noise of the difference
//! (≈ 1.3e-3) exceeds the tolerance (≈ 6e-4 for `|∂L/∂b| ≈ 0.1`). The loss is smooth in `b`
//! (its third derivative is at most `(1 + β)·max p(1−p)(1−2p) < 0.11`), so the truncation
//! error of the central difference is below `0.11·h²/6 ≈ 1.8e-4`, and the noise drops to
//! ≈ 4e-5.
#![allow(dead_code)]

use anytime_runtime::assets::ModelAssets;
use anytime_runtime::block::{block_tensor_shapes, load_block, BlockDims, BlockParams, FrozenHead};
use anytime_runtime::train::{Batch, TrainBackend, TrainConfig, TrainError, TunedState};
use rand::{rngs::StdRng, seq::SliceRandom, Rng, SeedableRng};

/// Builds a backend from dims, config, frozen head and initial state.
pub type Make<B> = fn(BlockDims, TrainConfig, FrozenHead, TunedState) -> Result<B, TrainError>;

/// Relative and absolute (× the largest gradient of the group) tolerances, and the step.
const RTOL: f32 = 5e-3;
const ATOL: f32 = 1e-3;
const H: f32 = 3e-3;
/// Step for the "other" bias (see the module docs).
const H_BIAS: f32 = 0.1;

pub const SMALL: BlockDims = BlockDims {
    width: 8,
    heads: 2,
    mlp: 16,
    tokens: 5,
    embed: 4,
};

/// Owned data of a batch.
pub struct Data {
    pub tokens: Vec<f32>,
    pub labels: Vec<u32>,
    pub text: Vec<f32>,
    pub n_labels: usize,
}

impl Data {
    pub fn batch(&self) -> Batch<'_> {
        Batch {
            tokens: &self.tokens,
            labels: &self.labels,
            text: &self.text,
            n_labels: self.n_labels,
        }
    }
}

/// L2-normalised random rows.
pub fn random_text(n: usize, e: usize, rng: &mut StdRng) -> Vec<f32> {
    let mut t: Vec<f32> = (0..n * e).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
    anytime_runtime::block::l2_normalise(&mut t, e);
    t
}

pub fn random_data(dims: &BlockDims, batch: usize, n_labels: usize, seed: u64) -> Data {
    let mut rng = StdRng::seed_from_u64(seed);
    let tokens = (0..batch * dims.tokens_len())
        .map(|_| rng.gen_range(-1.5f32..1.5))
        .collect();
    let labels = (0..batch).map(|i| (i % n_labels) as u32).collect();
    Data {
        tokens,
        labels,
        text: random_text(n_labels, dims.embed, &mut rng),
        n_labels,
    }
}

/// A small backend with random weights and a non-zero `b`.
pub fn small_backend<B: TrainBackend>(make: Make<B>, cfg: TrainConfig, seed: u64) -> B {
    let mut state = TunedState::fresh(&SMALL, BlockParams::random(&SMALL, seed));
    state.other_bias = 0.3;
    make(SMALL, cfg, FrozenHead::random(&SMALL, seed + 1), state).expect("backend")
}

/// `|fd − g| ≤ RTOL·max(|fd|, |g|) + ATOL·scale`, false when any of them is not finite.
fn close(fd: f32, g: f32, scale: f32) -> bool {
    let tol = RTOL * fd.abs().max(g.abs()) + ATOL * scale;
    tol.is_finite() && anytime_testkit::close(g, fd, tol as f64, 0.0)
}

fn loss_at<B: TrainBackend>(be: &mut B, state: &TunedState, data: &Data) -> f32 {
    be.set_state(state).expect("set_state");
    be.loss(&data.batch()).expect("loss").loss
}

/// Finite-difference check of every parameter tensor and of `b`.
pub fn check_param_gradients<B: TrainBackend>(make: Make<B>, cfg: TrainConfig) {
    let mut be = small_backend(make, cfg, 21);
    let data = random_data(&SMALL, 3, 5, 22);
    let base = be.state().expect("state");
    let (_, grads) = be.gradients(&data.batch()).expect("gradients");
    let mut rng = StdRng::seed_from_u64(23);
    let names = block_tensor_shapes(&SMALL);
    let mut failures = vec![];
    for (t, (name, _)) in names.iter().enumerate() {
        let g = grads.params.tensors()[t];
        let scale = anytime_testkit::max_abs(g) as f32;
        assert!(scale > 0.0, "{name}: gradient is all zero");
        let argmax = (0..g.len())
            .max_by(|&a, &b| g[a].abs().total_cmp(&g[b].abs()))
            .unwrap_or(0);
        let mut coords: Vec<usize> = (0..g.len()).collect();
        coords.shuffle(&mut rng);
        coords.truncate(6);
        coords.push(argmax);
        for &i in &coords {
            let x = base.params.tensors()[t][i];
            let h = H * x.abs().max(1.0);
            let mut s = base.clone();
            s.params.tensors_mut()[t][i] = x + h;
            let lp = loss_at(&mut be, &s, &data);
            s.params.tensors_mut()[t][i] = x - h;
            let lm = loss_at(&mut be, &s, &data);
            let fd = (lp - lm) / (2.0 * h);
            if !close(fd, g[i], scale) {
                failures.push(format!("{name}[{i}]: fd {fd:e} vs analytic {:e}", g[i]));
            }
        }
    }
    // The "other" bias.
    let h = H_BIAS;
    let mut s = base.clone();
    s.other_bias = base.other_bias + h;
    let lp = loss_at(&mut be, &s, &data);
    s.other_bias = base.other_bias - h;
    let lm = loss_at(&mut be, &s, &data);
    let fd = (lp - lm) / (2.0 * h);
    if !close(fd, grads.other_bias, grads.other_bias.abs()) {
        failures.push(format!(
            "other_bias: fd {fd:e} vs analytic {:e}",
            grads.other_bias
        ));
    }
    assert!(
        failures.is_empty(),
        "gradient mismatches:\n{}",
        failures.join("\n")
    );
}

/// Finite-difference check of `d loss / d tokens`.
pub fn check_token_gradients<B: TrainBackend>(make: Make<B>, cfg: TrainConfig) {
    let mut be = small_backend(make, cfg, 31);
    let mut data = random_data(&SMALL, 3, 5, 32);
    let (_, grads) = be.gradients(&data.batch()).expect("gradients");
    let g = &grads.tokens;
    assert_eq!(g.len(), data.tokens.len());
    // CLS tokens carry the residual path and far larger gradients than patches: scale the
    // absolute tolerance per group so the patch gradients are checked on their own scale.
    let (nd, w) = (SMALL.tokens_len(), SMALL.width);
    let is_cls = |i: usize| i % nd < w;
    let group_max = |cls: bool| {
        let group: Vec<f32> = (0..g.len())
            .filter(|&i| is_cls(i) == cls)
            .map(|i| g[i])
            .collect();
        anytime_testkit::max_abs(&group) as f32
    };
    let (scale_cls, scale_patch) = (group_max(true), group_max(false));
    assert!(scale_patch > 0.0, "patch token gradients are all zero");
    let mut rng = StdRng::seed_from_u64(33);
    let mut coords: Vec<usize> = (0..g.len()).collect();
    coords.shuffle(&mut rng);
    coords.truncate(30);
    // Include CLS and non-CLS tokens of every image.
    for b in 0..3 {
        coords.push(b * SMALL.tokens_len() + 1);
        coords.push(b * SMALL.tokens_len() + 3 * SMALL.width + 2);
    }
    let mut failures = vec![];
    for &i in &coords {
        let x = data.tokens[i];
        let h = H * x.abs().max(1.0);
        data.tokens[i] = x + h;
        let lp = be.loss(&data.batch()).expect("loss").loss;
        data.tokens[i] = x - h;
        let lm = be.loss(&data.batch()).expect("loss").loss;
        data.tokens[i] = x;
        let fd = (lp - lm) / (2.0 * h);
        let scale = if is_cls(i) { scale_cls } else { scale_patch };
        if !close(fd, g[i], scale) {
            failures.push(format!("tokens[{i}]: fd {fd:e} vs analytic {:e}", g[i]));
        }
    }
    assert!(
        failures.is_empty(),
        "token gradient mismatches:\n{}",
        failures.join("\n")
    );
}

/// `loss`, `gradients` and `step` agree on the loss; `step` changes the state and counts;
/// `params` reads the state's weights and `b`.
pub fn check_step_contract<B: TrainBackend>(make: Make<B>) {
    let mut be = small_backend(
        make,
        TrainConfig {
            lr: 1e-3,
            ..TrainConfig::default()
        },
        41,
    );
    let data = random_data(&SMALL, 4, 3, 42);
    let l0 = be.loss(&data.batch()).expect("loss");
    let (l1, _) = be.gradients(&data.batch()).expect("gradients");
    let before = be.state().expect("state");
    let l2 = be.step(&data.batch()).expect("step");
    let after = be.state().expect("state");
    let tol = 1e-5 * l0.loss.abs().max(1.0) as f64;
    assert!(
        anytime_testkit::close(l1.loss, l0.loss, tol, 0.0),
        "{l0:?} {l1:?}"
    );
    assert!(
        anytime_testkit::close(l2.loss, l0.loss, tol, 0.0),
        "{l0:?} {l2:?}"
    );
    assert_eq!(l2.step, 1);
    assert_eq!(after.optim.step, 1);
    assert_ne!(before.params, after.params);
    assert_ne!(before.other_bias, after.other_bias);
    // What prediction reads back is the state's weights and `b`, exactly.
    let (params, other_bias) = be.params().expect("params");
    assert_eq!(params, after.params);
    assert_eq!(other_bias.to_bits(), after.other_bias.to_bits());
    // A label list of the wrong length is a shape error; one of the right length with a
    // label outside the set reaches the range check (and names that label).
    let short = Batch {
        labels: &[0],
        ..data.batch()
    };
    assert!(
        matches!(be.step(&short), Err(TrainError::Shape { .. })),
        "a short label list"
    );
    let mut labels = data.labels.clone();
    labels[2] = 3; // the label set has 3 labels
    let bad = Batch {
        labels: &labels,
        ..data.batch()
    };
    match be.step(&bad) {
        Err(TrainError::Label { label, n_labels }) => assert_eq!((label, n_labels), (3, 3)),
        other => panic!("a label out of range gave {other:?}"),
    }
    // Neither bad batch changed the state.
    assert_eq!(be.state().expect("state").params, after.params);
}

/// Learning: repeated steps on one fixed batch drive the loss down and the predictions
/// (argmax over `Y`) to the labels.
pub fn check_learning<B: TrainBackend>(
    make: Make<B>,
    dims: BlockDims,
    params: BlockParams,
    head: FrozenHead,
    steps: usize,
) {
    let cfg = TrainConfig {
        lr: 1e-3,
        ..TrainConfig::default()
    };
    let mut be = make(dims, cfg, head, TunedState::fresh(&dims, params)).expect("backend");
    let (batch, n_labels) = (8, 4);
    let data = random_data(&dims, batch, n_labels, 51);
    let first = be.loss(&data.batch()).expect("loss");
    let mut last = first.clone();
    for _ in 0..steps {
        last = be.step(&data.batch()).expect("step");
    }
    let end = be.loss(&data.batch()).expect("loss");
    assert!(
        end.loss < 0.25 * first.loss,
        "loss went from {} to {} (last step {})",
        first.loss,
        end.loss,
        last.loss
    );
    assert_eq!(
        end.correct, batch,
        "not every sample predicts its label: {end:?}"
    );
}

/// The bundled tiny CLIP's last block (D = 64, 4 heads, N = 50, M = 256, E = 32).
pub fn tiny_block() -> (BlockDims, BlockParams, FrozenHead) {
    let dir = anytime_runtime::assets::bundled_models_dir().join("tiny-clip");
    let assets = ModelAssets::open(&dir).expect("the bundled tiny-clip fixture");
    let dims = assets.dims().block();
    let (p, h) = load_block(&assets.file("last_block.safetensors"), &dims).expect("tiny block");
    (dims, p, h)
}
