//! SPEC §7's generator: its forward against an f64 reference (MLP, then `T̂ = C V + μ`),
//! its backward by central finite differences of that reference, its AdamW update, its
//! noise, `generate`, and its byte codec.
//!
//! Finite differences: central, in f64, of `Σ r·T̂` (a fixed random `r`) computed by the
//! reference, step `h = 1e-5·max(1, |x|)`, on every coordinate of every tensor;
//! `|fd − g| ≤ 1e-3·max(|fd|, |g|) + 1e-4·max|g over the tensor|` (the analytic gradient
//! is f32).

use anytime_linalg::Gemm;
use anytime_runtime::private::generator::{generator_is_decayed, GENERATOR_TENSORS, NOISE};
use anytime_runtime::private::{Generator, GeneratorDims, GeneratorParams, PrivateError};
use anytime_runtime::train::adamw::adamw_update_slice;
use anytime_runtime::train::TrainConfig;
use anytime_testkit::{assert_close, close, max_abs};

mod dense_common;
use dense_common::random;

/// Three components (not the default five) and a 3×3 patch grid.
const DIMS: GeneratorDims = GeneratorDims {
    width: 4,
    tokens: 10,
    embed: 8,
    hidden: 16,
    components: 3,
};

/// The generator in f64: tokens `[B, N, D]` of noise `z` and conditioning `cond`.
fn reference(d: &GeneratorDims, p: &GeneratorParams, z: &[f32], cond: &[f32]) -> Vec<f64> {
    let (e, i, h, r, k) = (d.embed, d.input(), d.hidden, d.record(), d.components);
    let batch = z.len() / NOISE;
    let mut out = vec![];
    for b in 0..batch {
        let mut x: Vec<f64> = z[b * NOISE..(b + 1) * NOISE]
            .iter()
            .map(|&v| v as f64)
            .collect();
        let s = (e as f64).sqrt();
        x.extend(cond[b * e..(b + 1) * e].iter().map(|&v| s * v as f64));
        let act: Vec<f64> = (0..h)
            .map(|o| {
                let pre =
                    p.b1[o] as f64 + (0..i).map(|j| p.w1[o * i + j] as f64 * x[j]).sum::<f64>();
                pre / (1.0 + (-1.702 * pre).exp())
            })
            .collect();
        let rec: Vec<f64> = (0..r)
            .map(|o| p.b2[o] as f64 + (0..h).map(|j| p.w2[o * h + j] as f64 * act[j]).sum::<f64>())
            .collect();
        let (mu, v, c) = (
            &rec[..d.width],
            &rec[d.width..d.width * (1 + k)],
            &rec[d.width * (1 + k)..],
        );
        for n in 0..d.tokens {
            for ch in 0..d.width {
                out.push(
                    mu[ch]
                        + (0..k)
                            .map(|j| c[n * k + j] * v[j * d.width + ch])
                            .sum::<f64>(),
                );
            }
        }
    }
    out
}

/// Unit-norm conditioning rows `[B, E]`.
fn cond(batch: usize, seed: u64) -> Vec<f32> {
    let mut c = random(batch * DIMS.embed, 1.0, seed);
    for row in c.chunks_exact_mut(DIMS.embed) {
        let n = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        row.iter_mut().for_each(|v| *v /= n);
    }
    c
}

#[test]
fn generator_forward_matches_the_f64_reference() {
    let gemm = Gemm::default();
    let g = Generator::new(DIMS, 1).unwrap();
    let batch = 3;
    let (z, c) = (Generator::noise(batch, 2), cond(batch, 3));
    let saved = g.forward(&gemm, &z, &c, batch).unwrap();
    assert_eq!(saved.tokens.len(), batch * DIMS.tokens_len());
    assert_eq!(saved.record.len(), batch * DIMS.record());
    let want = reference(&DIMS, &g.params, &z, &c);
    assert_close("tokens", &saved.tokens, &want, 1e-5, 1e-4);
    assert!(max_abs(&saved.tokens) > 0.05, "tokens all near zero");
}

#[test]
fn generator_gradients_match_finite_differences() {
    let gemm = Gemm::default();
    let g = Generator::new(DIMS, 4).unwrap();
    let batch = 3;
    let (z, c) = (Generator::noise(batch, 5), cond(batch, 6));
    let r = random(batch * DIMS.tokens_len(), 1.0, 7);
    let saved = g.forward(&gemm, &z, &c, batch).unwrap();
    let grads = g.backward(&gemm, &saved, &r);
    let objective = |p: &GeneratorParams| -> f64 {
        let t = reference(&DIMS, p, &z, &c);
        t.iter().zip(&r).map(|(a, &b)| a * b as f64).sum()
    };
    let mut failures = vec![];
    for (t, name) in GENERATOR_TENSORS.iter().enumerate() {
        let gt = grads.tensors()[t];
        let scale = max_abs(gt);
        assert!(scale > 0.0, "{name}: gradient all zero");
        for (i, &gi) in gt.iter().enumerate() {
            let mut q = g.params.clone();
            let x = q.tensors()[t][i];
            let h = 1e-5 * (x.abs() as f64).max(1.0);
            q.tensors_mut()[t][i] = (x as f64 + h) as f32;
            let hp = q.tensors()[t][i] as f64 - x as f64;
            let fp = objective(&q);
            q.tensors_mut()[t][i] = (x as f64 - h) as f32;
            let hm = x as f64 - q.tensors()[t][i] as f64;
            let fm = objective(&q);
            let fd = (fp - fm) / (hp + hm);
            let tol = 1e-3 * fd.abs().max(gi.abs() as f64) + 1e-4 * scale;
            if !close(gi, fd, tol, 0.0) {
                failures.push(format!("{name}[{i}]: fd {fd:e} vs {gi:e}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn generator_update_is_adamw_decaying_the_weights_only() {
    let gemm = Gemm::default();
    let mut g = Generator::new(DIMS, 8).unwrap();
    let start = g.params.clone();
    let cfg = TrainConfig {
        lr: 1e-2,
        weight_decay: 0.5,
        ..TrainConfig::default()
    };
    let (z, c) = (Generator::noise(2, 9), cond(2, 10));
    let saved = g.forward(&gemm, &z, &c, 2).unwrap();
    let grads = g.backward(&gemm, &saved, &random(2 * DIMS.tokens_len(), 1.0, 11));
    g.update(&cfg, &grads);
    assert_eq!(g.step(), 1);
    for (t, name) in GENERATOR_TENSORS.iter().enumerate() {
        let mut p = start.tensors()[t].to_vec();
        let (mut m, mut v) = (vec![0.0; p.len()], vec![0.0; p.len()]);
        adamw_update_slice(
            &cfg,
            1,
            generator_is_decayed(name),
            &mut p,
            grads.tensors()[t],
            &mut m,
            &mut v,
        );
        assert_close(name, g.params.tensors()[t], &p, 0.0, 0.0);
    }
    let decayed: Vec<bool> = GENERATOR_TENSORS
        .iter()
        .map(|n| generator_is_decayed(n))
        .collect();
    assert_eq!(decayed, [true, false, true, false]);
}

#[test]
fn generator_noise_is_standard_normal_and_generate_is_seeded() {
    let z = Generator::noise(2000, 12);
    assert_eq!(z.len(), 2000 * NOISE);
    let m = z.iter().map(|&v| v as f64).sum::<f64>() / z.len() as f64;
    let var = z.iter().map(|&v| (v as f64 - m).powi(2)).sum::<f64>() / z.len() as f64;
    assert!(
        close(m, 0.0, 0.01, 0.0) && close(var, 1.0, 0.02, 0.0),
        "mean {m}, var {var}"
    );
    assert_eq!(Generator::noise(3, 12), z[..3 * NOISE]);

    let g = Generator::new(DIMS, 13).unwrap();
    let text = &cond(2, 14);
    let a = g.generate(&text[..DIMS.embed], 5, 15).unwrap();
    assert_eq!(a.len(), 5 * DIMS.tokens_len());
    assert_close(
        "same seed",
        &a,
        &g.generate(&text[..DIMS.embed], 5, 15).unwrap(),
        0.0,
        0.0,
    );
    let other_seed = g.generate(&text[..DIMS.embed], 5, 16).unwrap();
    let other_label = g.generate(&text[DIMS.embed..], 5, 15).unwrap();
    for (what, b) in [("seed", other_seed), ("label", other_label)] {
        let diff = anytime_testkit::max_abs_diff(&a, &b);
        assert!(
            diff > 1e-3,
            "another {what} gives the same tokens ({diff:e})"
        );
    }
    // Each image is its own: the first of five is the one of one.
    let one = g.generate(&text[..DIMS.embed], 1, 15).unwrap();
    assert_close("first image", &one, &a[..DIMS.tokens_len()], 1e-6, 1e-6);
    let e = g.generate(&text[..3], 1, 0).unwrap_err();
    assert_eq!(
        e,
        PrivateError::Shape {
            what: "text embedding (E)",
            expected: 8,
            found: 3
        }
    );
}

/// Re-seals `bytes` with the CRC of its body.
fn reseal(bytes: &mut [u8]) {
    let n = bytes.len() - 4;
    let crc = anytime_core::crc32::crc32(&bytes[..n]);
    bytes[n..].copy_from_slice(&crc.to_le_bytes());
}

#[test]
fn generator_bytes_round_trip_and_refuse_damage_and_other_dims() {
    use PrivateError as E;
    let g = Generator::new(DIMS, 17).unwrap();
    let good = g.to_bytes();
    assert_eq!(good.len(), Generator::encoded_len(&DIMS));
    let back = Generator::from_bytes(&good, &DIMS).unwrap();
    assert_eq!(back, g);
    let read = |b: &[u8]| Generator::from_bytes(b, &DIMS);
    for cut in [0, 10, 30, good.len() - 1] {
        assert!(
            matches!(read(&good[..cut]), Err(E::Length { .. })),
            "cut at {cut}"
        );
    }
    let mut long = good.clone();
    long.push(0);
    assert!(matches!(read(&long), Err(E::Length { .. })));
    let mut v2 = good.clone();
    v2[4] = 2;
    assert!(matches!(read(&v2), Err(E::Version { found: 2, .. })));
    for (other, field) in [
        (GeneratorDims { width: 5, ..DIMS }, "width"),
        (GeneratorDims { tokens: 17, ..DIMS }, "tokens per image"),
        (GeneratorDims { embed: 4, ..DIMS }, "conditioning width"),
        (GeneratorDims { hidden: 8, ..DIMS }, "hidden width"),
        (
            GeneratorDims {
                components: 5,
                ..DIMS
            },
            "components",
        ),
    ] {
        let e = Generator::from_bytes(&good, &other).unwrap_err();
        assert!(
            matches!(e, E::Dims { field: f, .. } if f == field),
            "{field}: {e}"
        );
    }
    for i in (0..good.len()).step_by(7).chain([good.len() - 1]) {
        for bit in 0..8 {
            let mut b = good.clone();
            b[i] ^= 1 << bit;
            assert!(read(&b).is_err(), "bit {bit} of byte {i} read silently");
        }
    }
    let mut nan = good.clone();
    nan[42..46].copy_from_slice(&f32::NAN.to_le_bytes());
    reseal(&mut nan);
    assert!(matches!(read(&nan), Err(E::NonFinite { .. })));
}
