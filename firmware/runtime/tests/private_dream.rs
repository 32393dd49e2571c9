//! SPEC §7's generator training against a frozen snapshot, on a tiny random block: it
//! lowers the confidence loss and the statistics KL of a fixed evaluation batch well
//! below their start, generates finite tokens, is a function of its seed, and refuses
//! what it cannot train on.

use anytime_runtime::block::{BlockDims, BlockParams, FrozenHead};
use anytime_runtime::private::{
    generator_losses, train_generator, DreamConfig, DreamLabels, Generator, GeneratorDims,
    PrivateError, Snapshot, StatsTable,
};
use anytime_testkit::max_abs;
use rand::{rngs::StdRng, Rng, SeedableRng};

mod dense_common;
use dense_common::random;

const DIMS: BlockDims = BlockDims {
    width: 16,
    heads: 2,
    mlp: 32,
    tokens: 10,
    embed: 8,
};
/// Labels 3, 5 and 9 have published statistics; 12 has too few samples.
const IDS: [u16; 4] = [3, 5, 9, 12];

struct World {
    snapshot: Snapshot,
    text: Vec<f32>,
    stats: StatsTable,
}

/// A random block at SPEC §4's logit scale, unit text rows, and statistics of "real"
/// tokens: per label and channel a normal of its own mean (±2) and spread (0.3..1.5).
fn world() -> World {
    let snapshot = Snapshot::new(
        DIMS,
        BlockParams::random(&DIMS, 1),
        FrozenHead::random(&DIMS, 2),
        100.0,
    )
    .unwrap();
    let mut text = random(IDS.len() * DIMS.embed, 1.0, 3);
    for row in text.chunks_exact_mut(DIMS.embed) {
        let n = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        row.iter_mut().for_each(|v| *v /= n);
    }
    let mut stats = StatsTable::new(DIMS.width, DIMS.tokens).unwrap();
    let mut rng = StdRng::seed_from_u64(4);
    for (i, &label) in IDS.iter().enumerate() {
        let mean: Vec<f32> = (0..DIMS.width).map(|_| rng.gen_range(-2.0..2.0)).collect();
        let std: Vec<f32> = (0..DIMS.width).map(|_| rng.gen_range(0.3..1.5)).collect();
        for _ in 0..if i < 3 { 10 } else { 3 } {
            let x: Vec<f32> = (0..DIMS.tokens_len())
                .map(|j| {
                    let c = j % DIMS.width;
                    // Sum of 3 uniforms: close enough to a normal of that spread.
                    let u: f32 = (0..3).map(|_| rng.gen_range(-1.0f32..1.0)).sum();
                    mean[c] + std[c] * u
                })
                .collect();
            stats.observe(label, &x).unwrap();
        }
    }
    World {
        snapshot,
        text,
        stats,
    }
}

#[test]
fn training_lowers_confidence_loss_and_kl_of_an_evaluation_batch() {
    let w = world();
    let labels = DreamLabels {
        ids: &IDS,
        text: &w.text,
    };
    let mut gen = Generator::new(GeneratorDims::for_block(&DIMS), 5).unwrap();
    let cfg = DreamConfig {
        steps: 300,
        batch: 24,
        seed: 6,
        ..DreamConfig::default()
    };
    let eval: Vec<u16> = [3u16, 5, 9].repeat(8);
    let before = generator_losses(&gen, &w.snapshot, &labels, &w.stats, &eval, 99, &cfg).unwrap();
    let report = train_generator(&mut gen, &w.snapshot, &labels, &w.stats, &cfg).unwrap();
    let after = generator_losses(&gen, &w.snapshot, &labels, &w.stats, &eval, 99, &cfg).unwrap();
    assert_eq!(report.steps, 300);
    assert_eq!(gen.step(), 300);
    assert!(
        after.confidence < 0.05 * before.confidence,
        "confidence loss {:.4} -> {:.4}",
        before.confidence,
        after.confidence
    );
    assert!(
        after.stats < 0.05 * before.stats,
        "statistics KL {:.4} -> {:.4}",
        before.stats,
        after.stats
    );
    assert!(
        report.last.total < 0.1 * report.first.total,
        "training loss {:.4} -> {:.4}",
        report.first.total,
        report.last.total
    );
    for (i, &label) in IDS.iter().enumerate() {
        let t = gen
            .generate(&w.text[i * DIMS.embed..(i + 1) * DIMS.embed], 4, 7)
            .unwrap();
        assert_eq!(t.len(), 4 * DIMS.tokens_len());
        // max_abs fails on NaN or an infinity.
        assert!(
            max_abs(&t) < 1e3,
            "label {label}: tokens up to {}",
            max_abs(&t)
        );
    }
}

#[test]
fn training_is_a_function_of_its_seed() {
    let w = world();
    let labels = DreamLabels {
        ids: &IDS,
        text: &w.text,
    };
    let cfg = DreamConfig {
        steps: 4,
        batch: 5,
        seed: 8,
        ..DreamConfig::default()
    };
    let run = |cfg: &DreamConfig| {
        let mut gen = Generator::new(GeneratorDims::for_block(&DIMS), 9).unwrap();
        let report = train_generator(&mut gen, &w.snapshot, &labels, &w.stats, cfg).unwrap();
        (gen, report)
    };
    let (a, ra) = run(&cfg);
    let (b, rb) = run(&cfg);
    assert_eq!(a, b);
    assert_eq!((ra.first, ra.last), (rb.first, rb.last));
    let (c, _) = run(&DreamConfig { seed: 10, ..cfg });
    assert_ne!(a, c);
}

#[test]
fn training_refuses_what_it_cannot_train_on_and_changes_nothing() {
    let w = world();
    let gen = Generator::new(GeneratorDims::for_block(&DIMS), 11).unwrap();
    let cfg = DreamConfig {
        steps: 2,
        batch: 4,
        ..DreamConfig::default()
    };
    let try_train = |ids: &[u16], text: &[f32], stats: &StatsTable, cfg: &DreamConfig| {
        let mut g = gen.clone();
        let labels = DreamLabels { ids, text };
        let e = train_generator(&mut g, &w.snapshot, &labels, stats, cfg).unwrap_err();
        assert_eq!(g, gen, "a refused training changed the generator");
        e
    };
    let e = try_train(&IDS[3..], &w.text[3 * DIMS.embed..], &w.stats, &cfg);
    assert_eq!(e, PrivateError::NoPublishedLabel);
    let e = try_train(&[3, 3], &w.text[..2 * DIMS.embed], &w.stats, &cfg);
    assert!(matches!(e, PrivateError::Invalid { .. }), "{e}");
    let e = try_train(&IDS, &w.text[1..], &w.stats, &cfg);
    assert!(matches!(e, PrivateError::Shape { .. }), "{e}");
    let narrow = StatsTable::new(DIMS.width - 1, DIMS.tokens).unwrap();
    let e = try_train(&IDS, &w.text, &narrow, &cfg);
    assert!(matches!(e, PrivateError::Dims { .. }), "{e}");
    for bad in [
        DreamConfig {
            batch: 0,
            ..cfg.clone()
        },
        DreamConfig {
            temperature: 0.0,
            ..cfg.clone()
        },
        DreamConfig {
            w_stats: f32::NAN,
            ..cfg.clone()
        },
        DreamConfig {
            beta2: 1.0,
            ..cfg.clone()
        },
    ] {
        let e = try_train(&IDS, &w.text, &w.stats, &bad);
        assert!(matches!(e, PrivateError::Setting { .. }), "{e}");
    }
    // A generator for another block.
    let mut other = Generator::new(
        GeneratorDims {
            tokens: 17,
            ..GeneratorDims::for_block(&DIMS)
        },
        1,
    )
    .unwrap();
    let labels = DreamLabels {
        ids: &IDS,
        text: &w.text,
    };
    let e = train_generator(&mut other, &w.snapshot, &labels, &w.stats, &cfg).unwrap_err();
    assert!(matches!(e, PrivateError::Dims { .. }), "{e}");
    // An evaluation batch of a label without published statistics.
    let e = generator_losses(&gen, &w.snapshot, &labels, &w.stats, &[3, 12], 0, &cfg).unwrap_err();
    assert_eq!(e, PrivateError::Unpublished { label: 12 });
}
