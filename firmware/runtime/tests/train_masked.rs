//! SPEC §8's masked-token loss `L_r`: the masked positions, the loss against its
//! definition, its gradients by finite differences, the start of training, and its bits
//! on 1 and 3 threads; and the CPU backend's `L_r` step: it lowers `L_r`, it is AdamW of
//! the gradients bit for bit, the same on 1 and 3 threads, and refuses bad input.
//!
//! Finite differences: central, in f64, of `L_r` itself, step `h = 1e-2·max(1, |x|)`, on
//! every coordinate of the mask token, positional table, `W_r` and `b_r`, and on 4 random
//! coordinates and the largest-gradient one of every block tensor;
//! `|fd − g| ≤ 1e-3·max(|fd|, |g|) + 1e-3·max|g over the tensor|`.

use anytime_linalg::Gemm;
use anytime_runtime::block::{
    block_tensor_shapes, dense_forward, BlockDims, BlockParams, FrozenHead,
};
use anytime_runtime::train::adamw::{adamw_update, adamw_update_slice};
use anytime_runtime::train::{
    head_is_decayed, mask_positions, masked_count, masked_gradients, masked_loss, CpuBackend,
    MaskedBatch, MaskedHead, MaskedState, TrainBackend, TrainConfig, TrainError, TunedState,
    HEAD_TENSORS,
};
use anytime_testkit::{close, max_abs, max_abs_diff};
use rand::{rngs::StdRng, seq::SliceRandom, SeedableRng};

mod dense_common;
use dense_common::*;

#[test]
fn mask_positions_are_three_quarters_of_the_patches_never_cls_and_seeded() {
    assert_eq!(
        [2, 3, 5, 50, 197].map(masked_count),
        [1, 2, 3, 37, 147],
        "round(0.75·(N − 1))"
    );
    for n in [2, 3, 5, 50, 197] {
        let (k, batch) = (masked_count(n), 6);
        let pos = mask_positions(n, batch, 11);
        assert_eq!(pos.len(), batch * k, "N = {n}");
        for row in pos.chunks_exact(k) {
            assert!(row[0] >= 1, "CLS masked (N = {n}): {row:?}");
            assert!(row[k - 1] < n, "out of range (N = {n}): {row:?}");
            assert!(row.windows(2).all(|w| w[0] < w[1]), "not distinct: {row:?}");
        }
        assert_eq!(pos, mask_positions(n, batch, 11), "same seed, N = {n}");
    }
    let a = mask_positions(50, 4, 1);
    assert_ne!(a, mask_positions(50, 4, 2), "another seed, same positions");
    let k = masked_count(50);
    assert_ne!(a[..k], a[k..2 * k], "two images, same positions");
    // The first images of a larger batch are those of a smaller one.
    assert_eq!(a[..2 * k], mask_positions(50, 2, 1));
    // Every patch position is drawn for some image and seed.
    let mut seen = [false; 50];
    (0..20)
        .flat_map(|s| mask_positions(50, 1, s))
        .for_each(|t| seen[t] = true);
    assert!(!seen[0] && seen[1..].iter().all(|&s| s), "{seen:?}");
}

/// `ln(x)` without affine, in f64.
fn normalised(x: &[f32]) -> Vec<f64> {
    let d = x.len() as f64;
    let mean = x.iter().map(|&v| v as f64).sum::<f64>() / d;
    let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / d;
    x.iter()
        .map(|&v| (v as f64 - mean) / (var + 1e-5).sqrt())
        .collect()
}

/// The rows (`b·N + t`) of the masked tokens, and the dense block's output `[B, N, D]` on
/// the input with `mask_token + pos[t−1]` at each masked position `t` (the block as tested
/// in `block_dense.rs`).
fn masked_output(
    dims: &BlockDims,
    p: &BlockParams,
    head: &MaskedHead,
    x: &[f32],
    pos: &[usize],
) -> (Vec<usize>, Vec<f32>) {
    let (n, d) = (dims.tokens, dims.width);
    let batch = x.len() / dims.tokens_len();
    let k = pos.len() / batch;
    let mut input = x.to_vec();
    let rows: Vec<usize> = (0..pos.len()).map(|i| i / k * n + pos[i]).collect();
    for (&r, &t) in rows.iter().zip(pos) {
        for c in 0..d {
            input[r * d + c] = head.mask_token[c] + head.pos[(t - 1) * d + c];
        }
    }
    let out = dense_forward(&Gemm::default(), dims, p, &input, batch).out;
    (rows, out.to_vec())
}

/// `L_r` by its definition, the head and the mean in f64.
fn definition(
    dims: &BlockDims,
    p: &BlockParams,
    head: &MaskedHead,
    x: &[f32],
    pos: &[usize],
) -> f64 {
    let d = dims.width;
    let (rows, out) = masked_output(dims, p, head, x, pos);
    let mut sum = 0.0;
    for &r in &rows {
        let y = &out[r * d..(r + 1) * d];
        let target = normalised(&x[r * d..(r + 1) * d]);
        for (o, t) in target.iter().enumerate() {
            let pred = head.b[o] as f64
                + (0..d)
                    .map(|i| head.w[o * d + i] as f64 * y[i] as f64)
                    .sum::<f64>();
            sum += (pred - t).powi(2);
        }
    }
    sum / (rows.len() * d) as f64
}

#[test]
fn masked_loss_is_its_definition() {
    let (gemm, dims, batch) = (Gemm::default(), SMALL, 3);
    let p = BlockParams::random(&dims, 1);
    let head = MaskedHead::random(&dims, 2);
    let x = random(batch * dims.tokens_len(), 1.5, 3);
    let pos = mask_positions(dims.tokens, batch, 4);
    let got = masked_loss(&gemm, &dims, &p, &head, &x, batch, &pos);
    let want = definition(&dims, &p, &head, &x, &pos);
    assert!(close(got, want, 1e-6, 1e-6), "{got} vs {want}");
}

/// The block never reads a masked token (only its normalised target counts, which an
/// affine change of the token leaves alone), and does read the others.
#[test]
fn masked_tokens_reach_the_loss_only_through_their_normalised_target() {
    let (gemm, dims, batch) = (Gemm::default(), SMALL, 2);
    let p = BlockParams::random(&dims, 5);
    let head = MaskedHead::random(&dims, 6);
    let x = random(batch * dims.tokens_len(), 1.5, 7);
    let pos = mask_positions(dims.tokens, batch, 8);
    let base = masked_loss(&gemm, &dims, &p, &head, &x, batch, &pos);
    let (n, d, k) = (dims.tokens, dims.width, masked_count(dims.tokens));
    let mut y = x.clone();
    for (i, &t) in pos.iter().enumerate() {
        let r = i / k * n + t;
        y[r * d..(r + 1) * d]
            .iter_mut()
            .for_each(|v| *v = 3.0 * *v - 0.7);
    }
    let moved = masked_loss(&gemm, &dims, &p, &head, &y, batch, &pos);
    assert!(close(moved, base, 1e-6, 1e-4), "{moved} vs {base}");
    let unmasked = (1..n)
        .find(|t| !pos[..k].contains(t))
        .expect("a visible patch");
    let mut z = x.clone();
    z[unmasked * d] += 2.0;
    let other = masked_loss(&gemm, &dims, &p, &head, &z, batch, &pos);
    assert!(
        !close(other, base, 1e-4, 1e-4),
        "a visible patch changed nothing"
    );
}

#[test]
fn masked_gradients_match_finite_differences() {
    let (gemm, dims, batch) = (Gemm::default(), SMALL, 2);
    let p = BlockParams::random(&dims, 9);
    let head = MaskedHead::random(&dims, 10);
    let x = random(batch * dims.tokens_len(), 1.5, 11);
    let pos = mask_positions(dims.tokens, batch, 12);
    let g = masked_gradients(&gemm, &dims, &p, &head, &x, batch, &pos);
    let loss = masked_loss(&gemm, &dims, &p, &head, &x, batch, &pos);
    assert_eq!(g.loss.to_bits(), loss.to_bits(), "two losses");

    let mut failures = vec![];
    for (t, name) in HEAD_TENSORS.iter().enumerate() {
        let gt = g.head.tensors()[t];
        let scale = max_abs(gt);
        assert!(scale > 0.0, "{name}: gradient all zero");
        for (i, &gi) in gt.iter().enumerate() {
            let mut h = head.clone();
            let fd = central(head.tensors()[t][i], |v| {
                h.tensors_mut()[t][i] = v;
                masked_loss(&gemm, &dims, &p, &h, &x, batch, &pos)
            });
            if !agrees(fd, gi, scale) {
                failures.push(format!("{name}[{i}]: fd {fd:e} vs {gi:e}"));
            }
        }
    }
    let mut rng = StdRng::seed_from_u64(13);
    for (t, (name, _)) in block_tensor_shapes(&dims).iter().enumerate() {
        let gt = g.block.tensors()[t];
        let scale = max_abs(gt);
        assert!(scale > 0.0, "{name}: gradient all zero");
        let mut coords: Vec<usize> = (0..gt.len()).collect();
        coords.shuffle(&mut rng);
        coords.truncate(4);
        coords.extend((0..gt.len()).max_by(|&a, &b| gt[a].abs().total_cmp(&gt[b].abs())));
        for i in coords {
            let mut q = p.clone();
            let fd = central(p.tensors()[t][i], |v| {
                q.tensors_mut()[t][i] = v;
                masked_loss(&gemm, &dims, &q, &head, &x, batch, &pos)
            });
            if !agrees(fd, gt[i], scale) {
                failures.push(format!("{name}[{i}]: fd {fd:e} vs {:e}", gt[i]));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// At `init` the head is zero: `L_r` is the targets' mean square (just under 1), and only
/// `W_r` and `b_r` get a gradient.
#[test]
fn masked_loss_starts_at_the_targets_mean_square_with_no_gradient_to_the_block() {
    let (gemm, dims, batch) = (Gemm::default(), SMALL, 2);
    let p = BlockParams::random(&dims, 14);
    let head = MaskedHead::init(&dims, 15);
    assert!(head.w.iter().chain(head.b.iter()).all(|&v| v == 0.0));
    let std = |t: &[f32]| (t.iter().map(|&v| v * v).sum::<f32>() / t.len() as f32).sqrt();
    for (name, t) in [("mask token", &head.mask_token), ("pos", &head.pos)] {
        let s = std(t);
        assert!(s > 0.005 && s < 0.05, "{name} std {s}");
    }
    assert_eq!(head.pos.len(), (dims.tokens - 1) * dims.width);
    assert_ne!(
        head.pos,
        MaskedHead::init(&dims, 16).pos,
        "the seed is not used"
    );
    let x = random(batch * dims.tokens_len(), 1.5, 16);
    let pos = mask_positions(dims.tokens, batch, 17);
    let g = masked_gradients(&gemm, &dims, &p, &head, &x, batch, &pos);
    assert!(close(g.loss, 1.0, 1e-3, 0.0), "{}", g.loss);
    assert!(g
        .block
        .tensors()
        .iter()
        .all(|t| t.iter().all(|&v| v == 0.0)));
    assert!(g.head.mask_token.iter().all(|&v| v == 0.0));
    assert!(g.head.pos.iter().all(|&v| v == 0.0));
    assert!(max_abs(&g.head.w) > 0.0 && max_abs(&g.head.b) > 0.0);
}

/// Why the positional table exists: the block's attention is permutation-equivariant, so
/// with a zero table every masked token of an image has the same input and the same
/// output, whatever the block; `init`'s table, small as it is, already makes them differ.
/// (A zero table would not stay symmetric once the head reads out: each row's gradient
/// sums the gradients at its own position, which differ with the targets.)
#[test]
fn the_positional_table_tells_masked_positions_apart() {
    let dims = BlockDims {
        tokens: 17,
        ..SMALL
    };
    let (batch, k, d) = (2, masked_count(17), dims.width);
    let p = BlockParams::random(&dims, 22);
    let x = random(batch * dims.tokens_len(), 1.5, 23);
    let pos = mask_positions(dims.tokens, batch, 24);
    let init = MaskedHead::init(&dims, 25);
    let zeroed = |h: &MaskedHead| {
        let mut z = h.clone();
        z.pos.iter_mut().for_each(|v| *v = 0.0);
        z
    };
    // The largest difference between the outputs at image 0's first masked position and
    // at its others, and the outputs' largest magnitude.
    let spread = |head: &MaskedHead| {
        let (rows, out) = masked_output(&dims, &p, head, &x, &pos);
        let first = &out[rows[0] * d..(rows[0] + 1) * d];
        let diff = rows[1..k]
            .iter()
            .map(|&r| max_abs_diff(first, &out[r * d..(r + 1) * d]))
            .fold(0.0, f64::max);
        (diff, max_abs(&out))
    };
    let (same, scale) = spread(&zeroed(&init));
    assert!(
        same <= 1e-6 * scale,
        "zero table: outputs differ by {same:e}"
    );
    let (apart, scale) = spread(&init);
    assert!(
        apart > 0.01 * scale,
        "init table: outputs differ by {apart:e}"
    );

    let reading = zeroed(&MaskedHead::random(&dims, 26));
    let g = masked_gradients(&Gemm::default(), &dims, &p, &reading, &x, batch, &pos);
    let row = |t: usize| &g.head.pos[(t - 1) * d..t * d];
    let (a, b) = (pos[0], pos[1]);
    assert!(max_abs_diff(row(a), row(b)) > 1e-3 * max_abs(&g.head.pos));
}

fn run_on(threads: usize, dims: &BlockDims, batch: usize) -> Vec<Vec<u64>> {
    let gemm = Gemm::default();
    let p = BlockParams::random(dims, 18);
    let head = MaskedHead::random(dims, 19);
    let x = random(batch * dims.tokens_len(), 2.0, 20);
    let pos = mask_positions(dims.tokens, batch, 21);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("pool");
    pool.install(|| {
        let g = masked_gradients(&gemm, dims, &p, &head, &x, batch, &pos);
        let bits = |v: &[f32]| v.iter().map(|&x| x.to_bits() as u64).collect::<Vec<_>>();
        let mut all = vec![vec![g.loss.to_bits()]];
        all.extend(g.block.tensors().iter().map(|t| bits(t)));
        all.extend(g.head.tensors().iter().map(|t| bits(t)));
        all
    })
}

#[test]
fn masked_gradients_give_the_same_bits_on_1_and_3_threads() {
    let dims = BlockDims {
        width: 64,
        heads: 4,
        mlp: 256,
        tokens: 50,
        embed: 16,
    };
    assert_eq!(run_on(1, &dims, 4), run_on(3, &dims, 4));
}

/// A CPU backend on a random block of `dims`.
fn backend(dims: &BlockDims, lr: f32, seed: u64) -> CpuBackend {
    let cfg = TrainConfig {
        lr,
        ..TrainConfig::default()
    };
    let state = TunedState::fresh(dims, BlockParams::random(dims, seed));
    CpuBackend::new(*dims, cfg, FrozenHead::random(dims, seed + 1), state).unwrap()
}

/// `L_r` of `tokens` under the backend's block and `masked`'s head, masked by `seed`.
fn current_loss(be: &CpuBackend, masked: &MaskedState, tokens: &[f32], seed: u64) -> f64 {
    let dims = be.dims();
    let batch = tokens.len() / dims.tokens_len();
    let pos = mask_positions(dims.tokens, batch, seed);
    let p = &be.state_ref().params;
    masked_loss(
        &Gemm::default(),
        &dims,
        p,
        &masked.head,
        tokens,
        batch,
        &pos,
    )
}

/// The least `L_r` of `tokens` masked by `seed` under any block and head if the masked
/// inputs carried no position (a zero positional table, kept zero): every masked token of
/// an image would give the same output, and the best is each image's mean of its masked
/// targets (about `(K−1)/K` of the targets' mean square).
fn floor(dims: &BlockDims, tokens: &[f32], seed: u64) -> f64 {
    let (n, d, k) = (dims.tokens, dims.width, masked_count(dims.tokens));
    let batch = tokens.len() / dims.tokens_len();
    let pos = mask_positions(n, batch, seed);
    let mut sum = 0.0;
    for (b, row) in pos.chunks_exact(k).enumerate() {
        let targets: Vec<Vec<f64>> = row
            .iter()
            .map(|&t| normalised(&tokens[(b * n + t) * d..(b * n + t + 1) * d]))
            .collect();
        for c in 0..d {
            let mean = targets.iter().map(|t| t[c]).sum::<f64>() / k as f64;
            sum += targets.iter().map(|t| (t[c] - mean).powi(2)).sum::<f64>();
        }
    }
    sum / (batch * k * d) as f64
}

/// 60 steps on one fixed batch and mask take `L_r` below half the [`floor`] of a head
/// without positions, from a random head and from `MaskedState::init` (whose zero head
/// sends the block no gradient at first: the first step decays the block and leaves the
/// mask token and the positional table as they were).
#[test]
fn masked_step_lowers_l_r_on_a_fixed_batch() {
    let (dims, batch, seed) = (SMALL, 4, 31);
    let tokens = random(batch * dims.tokens_len(), 1.5, 30);
    let fixed = MaskedBatch {
        tokens: &tokens,
        seed,
    };
    let least = floor(&dims, &tokens, seed);
    for (name, start) in [
        (
            "random head",
            MaskedState::fresh(&dims, MaskedHead::random(&dims, 32)),
        ),
        ("init", MaskedState::init(&dims, 33)),
    ] {
        let mut be = backend(&dims, 1e-2, 34);
        let mut masked = start.clone();
        let first = current_loss(&be, &masked, &tokens, seed);
        let mut losses = vec![];
        for _ in 0..60 {
            losses.push(be.masked_step(&fixed, &mut masked, 1.0).unwrap().loss);
        }
        let end = current_loss(&be, &masked, &tokens, seed);
        assert_eq!(
            losses[0].to_bits(),
            first.to_bits(),
            "{name}: stats before the step"
        );
        assert!(
            end < 0.5 * least,
            "{name}: L_r from {first} to {end}, floor without positions {least}: {losses:?}"
        );
        assert_eq!((masked.step, be.state_ref().optim.step), (60, 60), "{name}");
    }

    // From init, the first step: the block only decays, the mask token and the table stay
    // put (undecayed), and `W_r` and `b_r` move.
    let mut be = backend(&dims, 1e-2, 35);
    let before = be.state_ref().clone();
    let mut masked = MaskedState::init(&dims, 36);
    be.masked_step(&fixed, &mut masked, 1.0).unwrap();
    let keep = 1.0 - 1e-2f32 * TrainConfig::default().weight_decay;
    let after = be.state_ref();
    for (a, b) in after.params.tensors().iter().zip(before.params.tensors()) {
        let decayed: Vec<u32> = b.iter().map(|&x| (x * keep).to_bits()).collect();
        let got: Vec<u32> = a.iter().map(|x| x.to_bits()).collect();
        assert_eq!(got, decayed, "the block moved by more than its decay");
    }
    let init = MaskedState::init(&dims, 36).head;
    assert_eq!(masked.head.mask_token, init.mask_token);
    assert_eq!(masked.head.pos, init.pos);
    assert!(max_abs(&masked.head.w) > 0.0 && max_abs(&masked.head.b) > 0.0);
    // The second step, with a head to read through, moves the block by its gradient, and
    // the table.
    let decayed_once = be.state_ref().params.clone();
    be.masked_step(&fixed, &mut masked, 1.0).unwrap();
    let after = &be.state_ref().params;
    let moved = after
        .tensors()
        .iter()
        .zip(decayed_once.tensors())
        .any(|(a, b)| a.iter().zip(b).any(|(&x, &y)| (x - y * keep).abs() > 1e-6));
    assert!(moved, "no gradient reached the block on the second step");
    assert!(max_abs_diff(&masked.head.pos, &init.pos) > 0.0);
}

/// Every bit of a tuned state and a masked state.
fn bits(t: &TunedState, m: &MaskedState) -> Vec<u64> {
    let o = &t.optim;
    let mut out: Vec<u64> = [&t.params, &o.m, &o.v]
        .iter()
        .flat_map(|p| {
            p.tensors()
                .into_iter()
                .flatten()
                .map(|x| x.to_bits() as u64)
        })
        .collect();
    out.extend([t.other_bias, o.m_bias, o.v_bias].map(|x| x.to_bits() as u64));
    for h in [&m.head, &m.m, &m.v] {
        out.extend(
            h.tensors()
                .into_iter()
                .flatten()
                .map(|x| x.to_bits() as u64),
        );
    }
    out.extend([o.step, m.step]);
    out
}

/// The step is AdamW (learning rate times its scale) of `masked_gradients`: of the block's
/// tensors as a step of the block's optimiser, with `b` and its moments left alone, and of
/// the mask token and head as steps of their own count, `W_r` alone decayed.
#[test]
fn masked_step_is_adamw_of_the_masked_gradients_bit_for_bit() {
    let wide = BlockDims {
        width: 64,
        heads: 4,
        mlp: 256,
        tokens: 10,
        embed: 16,
    };
    for (dims, scale, seed) in [(SMALL, 1.0f32, 40), (SMALL, 0.1, 50), (wide, 1.0, 60)] {
        let cfg = TrainConfig {
            lr: 1e-3,
            ..TrainConfig::default()
        };
        let scaled = TrainConfig {
            lr: cfg.lr * scale,
            ..cfg.clone()
        };
        let mut start = TunedState::fresh(&dims, BlockParams::random(&dims, seed));
        start.other_bias = 0.25;
        let head = FrozenHead::random(&dims, seed + 1);
        let mut be = CpuBackend::new(dims, cfg, head, start.clone()).unwrap();
        let mut got = MaskedState::fresh(&dims, MaskedHead::random(&dims, seed + 2));
        let (mut want_t, mut want_m) = (start, got.clone());
        let batch = 3;
        for i in 0..3 {
            let tokens = random(batch * dims.tokens_len(), 1.5, seed + 3 + i);
            let mseed = seed + 10 + i;
            let stats = be
                .masked_step(
                    &MaskedBatch {
                        tokens: &tokens,
                        seed: mseed,
                    },
                    &mut got,
                    scale,
                )
                .unwrap();
            let pos = mask_positions(dims.tokens, batch, mseed);
            let gemm = Gemm::default();
            let g = masked_gradients(
                &gemm,
                &dims,
                &want_t.params,
                &want_m.head,
                &tokens,
                batch,
                &pos,
            );
            assert_eq!(stats.loss.to_bits(), g.loss.to_bits());
            let o = &mut want_t.optim;
            let kept = (want_t.other_bias, o.m_bias, o.v_bias);
            let mut scratch = kept.0;
            adamw_update(
                &dims,
                &scaled,
                o,
                &mut want_t.params,
                &mut scratch,
                &g.block,
                0.0,
            );
            (o.m_bias, o.v_bias) = (kept.1, kept.2);
            want_m.step += 1;
            let (h, m, v) = (&mut want_m.head, &mut want_m.m, &mut want_m.v);
            let parts = h
                .tensors_mut()
                .into_iter()
                .zip(g.head.tensors())
                .zip(m.tensors_mut().into_iter().zip(v.tensors_mut()))
                .zip(HEAD_TENSORS);
            for (((p, gr), (m, v)), name) in parts {
                let decay = head_is_decayed(name);
                adamw_update_slice(&scaled, want_m.step, decay, p, gr, m, v);
            }
            assert_eq!((stats.step, stats.head_step), (i + 1, i + 1));
            assert!(
                bits(be.state_ref(), &got) == bits(&want_t, &want_m),
                "{dims:?} at scale {scale}, step {}: not AdamW of the masked gradients",
                i + 1
            );
        }
    }
}

#[test]
fn masked_steps_give_the_same_bits_on_1_and_3_threads() {
    let dims = BlockDims {
        width: 64,
        heads: 4,
        mlp: 256,
        tokens: 50,
        embed: 16,
    };
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("pool");
        pool.install(|| {
            let mut be = backend(&dims, 1e-3, 70);
            let mut masked = MaskedState::fresh(&dims, MaskedHead::random(&dims, 71));
            let mut losses = vec![];
            for i in 0..2 {
                let tokens = random(4 * dims.tokens_len(), 2.0, 72 + i);
                let b = MaskedBatch {
                    tokens: &tokens,
                    seed: 80 + i,
                };
                losses.push(be.masked_step(&b, &mut masked, 0.1).unwrap().loss.to_bits());
            }
            losses.extend(bits(be.state_ref(), &masked));
            losses
        })
    };
    assert!(
        run(1) == run(3),
        "masked steps differ between 1 and 3 threads"
    );
}

/// Bad input is refused with its own error, and changes neither state.
#[test]
fn a_refused_masked_step_changes_nothing() {
    let dims = SMALL;
    let mut be = backend(&dims, 1e-3, 90);
    let mut masked = MaskedState::fresh(&dims, MaskedHead::random(&dims, 91));
    let (t0, m0) = (be.state_ref().clone(), masked.clone());
    let tokens = random(2 * dims.tokens_len(), 1.0, 92);
    let ok = MaskedBatch {
        tokens: &tokens,
        seed: 1,
    };
    let short = MaskedBatch {
        tokens: &tokens[1..],
        ..ok
    };
    let none = MaskedBatch { tokens: &[], ..ok };
    for b in [short, none] {
        let e = be.masked_step(&b, &mut masked, 1.0).unwrap_err();
        assert!(matches!(e, TrainError::Shape { .. }), "{e}");
    }
    let mut nan = tokens.clone();
    nan[7] = f32::NAN;
    let e = be
        .masked_step(&MaskedBatch { tokens: &nan, ..ok }, &mut masked, 1.0)
        .unwrap_err();
    assert!(matches!(e, TrainError::NonFinite { .. }), "{e}");
    let e = be.masked_step(&ok, &mut masked, f32::NAN).unwrap_err();
    assert!(matches!(e, TrainError::LrScale(_)), "{e}");
    let other = BlockDims {
        width: 16,
        heads: 2,
        ..dims
    };
    let mut wrong = MaskedState::init(&other, 93);
    let e = be.masked_step(&ok, &mut wrong, 1.0).unwrap_err();
    assert!(matches!(e, TrainError::MaskedStateDims(_)), "{e}");
    assert_eq!(wrong, MaskedState::init(&other, 93));
    assert!(
        bits(be.state_ref(), &masked) == bits(&t0, &m0),
        "a refused step changed a state"
    );
    // The same batch, accepted, does change both.
    be.masked_step(&ok, &mut masked, 1.0).unwrap();
    assert!(bits(be.state_ref(), &masked) != bits(&t0, &m0));
}
