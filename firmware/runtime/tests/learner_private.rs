//! SPEC §7's private mode on the tiny model: the mode is the folder's, no token record is
//! stored, consolidation snapshots the tuned block and trains the generator, and the
//! privacy audits (1: no learned sample's bytes in the folder; 2: a size independent of
//! the number of samples).
use std::collections::HashSet;
use std::path::Path;

use anytime_runtime::assets::bundled_models_dir;
use anytime_runtime::encoder::load_image;
use anytime_runtime::learner::{
    LearnError, Learner, LearnerConfig, Mixing, PrivateConfig, PrivateReplay,
};
use anytime_runtime::predict::Predictor;
use anytime_runtime::private::{DreamConfig, StatsFile};
use anytime_runtime::store::{encode_tokens, token_weights};
use anytime_runtime::train::BackendChoice;

fn private_config(every: u32) -> PrivateConfig {
    PrivateConfig {
        consolidate_every: every,
        dream: DreamConfig {
            steps: 6,
            batch: 8,
            ..DreamConfig::default()
        },
        synthetic: 7,
        ..PrivateConfig::default()
    }
}

/// [`private_config`] with SPEC §7's generator replay.
fn generator_config(every: u32) -> PrivateConfig {
    PrivateConfig {
        replay: PrivateReplay::Generator,
        ..private_config(every)
    }
}

fn config(private: Option<PrivateConfig>) -> LearnerConfig {
    let mut cfg = LearnerConfig {
        store_capacity: 1 << 20,
        checkpoint_every: 5,
        backend: BackendChoice::Cpu,
        private,
        ..LearnerConfig::default()
    };
    cfg.train.lr = 2e-3;
    cfg
}

fn tiny_tokens(image: &str) -> Vec<f32> {
    let p = Predictor::load("tiny-clip").unwrap();
    let img = load_image(&bundled_models_dir().join("tiny-clip/images").join(image)).unwrap();
    p.encoder.encode_images(&[img]).unwrap()
}

/// Sample `i` of a picture: its tokens with a small distinct perturbation.
fn variant(base: &[f32], i: usize) -> Vec<f32> {
    base.iter()
        .enumerate()
        .map(|(j, v)| v + 0.003 * (((i * 31 + j * 7) % 17) as f32 - 8.0) + 1e-4 * i as f32)
        .collect()
}

/// Every file of the learner folder: name and bytes.
fn folder_bytes(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

fn sizes(dir: &Path) -> Vec<(String, usize)> {
    folder_bytes(dir)
        .into_iter()
        .map(|(n, b)| (n, b.len()))
        .collect()
}

#[test]
fn the_mode_is_the_folders_and_the_other_mode_is_refused_unchanged() {
    let red = tiny_tokens("red_square.png");
    let private = tempfile::tempdir().unwrap();
    let mut l =
        Learner::open("tiny-clip", private.path(), config(Some(private_config(0)))).unwrap();
    assert!(l.is_private());
    l.learn_tokens(&red, "red").unwrap();
    drop(l);
    let meta = std::fs::read_to_string(private.path().join("learner.json")).unwrap();
    assert!(meta.contains("\"mode\": \"private\""), "{meta}");
    let before = folder_bytes(private.path());
    let e = Learner::open("tiny-clip", private.path(), config(None)).unwrap_err();
    assert!(
        matches!(
            e,
            LearnError::Mode {
                found: "private",
                expected: "normal",
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("never changes"), "{e}");
    assert_eq!(folder_bytes(private.path()), before, "a refused open wrote");

    let normal = tempfile::tempdir().unwrap();
    let mut l = Learner::open("tiny-clip", normal.path(), config(None)).unwrap();
    assert!(!l.is_private() && l.private_status().is_none());
    l.learn_tokens(&red, "red").unwrap();
    drop(l);
    let before = folder_bytes(normal.path());
    let e = Learner::open("tiny-clip", normal.path(), config(Some(private_config(0)))).unwrap_err();
    assert!(
        matches!(
            e,
            LearnError::Mode {
                found: "normal",
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(folder_bytes(normal.path()), before, "a refused open wrote");
    assert!(!normal.path().join("stats.bin").exists());

    // A reader takes the folder's mode and predicts.
    let mut r = Learner::open_read_only("tiny-clip", private.path(), config(None)).unwrap();
    assert!(r.is_private());
    let set = r.label_set(&["red", "blue"]).unwrap();
    let p = r.predict_tokens(&red, &set, Mixing::Ocw).unwrap();
    let sum: f32 = p[0].probs.iter().sum();
    assert!(
        anytime_testkit::close(sum, 1.0, 1e-4, 0.0),
        "{:?}",
        p[0].probs
    );
    assert_eq!(
        anytime_runtime::learner::folder_is_private(private.path()).unwrap(),
        Some(true)
    );
    assert_eq!(
        anytime_runtime::learner::folder_is_private(normal.path()).unwrap(),
        Some(false)
    );
}

#[test]
fn a_private_learner_keeps_statistics_not_records_and_refuses_bad_input_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let mut l = Learner::open("tiny-clip", dir.path(), config(Some(private_config(0)))).unwrap();
    let red = tiny_tokens("red_square.png");
    let green = tiny_tokens("green_circle.png");
    for i in 0..8 {
        let r = l.learn_tokens(&variant(&red, i), "red").unwrap();
        assert_eq!((r.record_bytes, r.batch), (0, 1), "no record, no replay");
        assert!(r.loss.is_finite());
    }
    let r = l.learn_tokens(&green, "green").unwrap();
    assert_eq!(
        r.labels, 2,
        "red was learned: it is in the training label set"
    );
    assert!(l.store().records().is_empty(), "a token record was stored");
    let labels = l.store().labels().unwrap();
    assert!(labels.iter().all(|i| i.count == 0));
    let status = l.private_status().unwrap();
    let counts: Vec<u64> = status.labels.iter().map(|&(_, n, _)| n).collect();
    assert_eq!(counts, [8, 1]);
    assert!(matches!(
        l.rehearse(1, &[] as &[&str]),
        Err(LearnError::Config(_))
    ));
    // Refused inputs change nothing, on disk or in memory.
    l.checkpoint().unwrap();
    let before = folder_bytes(dir.path());
    let mut nan = red.clone();
    nan[17] = f32::NAN;
    assert!(l.learn_tokens(&nan, "red").is_err());
    assert!(l.learn_tokens(&red[1..], "red").is_err());
    assert!(l.learn_tokens(&red, "none").is_err());
    assert_eq!(l.learned(), 9);
    assert_eq!(folder_bytes(dir.path()), before, "a refused sample wrote");
    assert_eq!(l.private_status().unwrap().labels, status.labels);
    // Statistics of 8 samples or more survive a reopen; green's, of one sample, were
    // never written (SPEC §7: published only from 8 samples), but green stays learned.
    drop(l);
    let mut l = Learner::open("tiny-clip", dir.path(), config(Some(private_config(0)))).unwrap();
    assert_eq!(l.private_status().unwrap().labels, status.labels[..1]);
    assert_eq!(l.learned(), 9);
    let r = l.learn_tokens(&red, "red").unwrap();
    assert_eq!(r.labels, 2, "green is still in the training label set");
}

/// The CLS statistics (`cls_stats.bin`): the per-channel mean and variance of the
/// learned samples' CLS tokens (token 0), written from a label's 8th sample as `stats.bin`
/// is. A folder without the file (made before it existed) gets it at its next open and
/// learns on: its labels' CLS statistics count from there, and until they are published
/// the restyled replay goes on without them. A damaged file is refused by name.
#[test]
fn cls_statistics_are_the_cls_tokens_and_an_older_folder_gets_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cls_stats.bin");
    let d = Predictor::load("tiny-clip").unwrap().encoder.dims().width;
    let red = tiny_tokens("red_square.png");
    let mut l = Learner::open("tiny-clip", dir.path(), config(Some(private_config(0)))).unwrap();
    let xs: Vec<Vec<f32>> = (0..9).map(|i| variant(&red, i)).collect();
    for (i, x) in xs.iter().enumerate() {
        l.learn_tokens(x, "red").unwrap();
        let t = StatsFile::read(&path, d, 1).unwrap();
        let written: Vec<u64> = t.iter().map(|(_, s)| s.samples()).collect();
        let want: &[u64] = if i >= 7 { &[i as u64 + 1] } else { &[] };
        assert_eq!(written, want, "after {} samples", i + 1);
    }
    let t = StatsFile::read(&path, d, 1).unwrap();
    let label = t.published_labels()[0];
    let (mean, var) = t.published(label).unwrap();
    for c in 0..d {
        let v: Vec<f64> = xs.iter().map(|x| f64::from(x[c])).collect();
        let m = v.iter().sum::<f64>() / v.len() as f64;
        let s2 = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / v.len() as f64;
        assert!((f64::from(mean[c]) - m).abs() < 1e-5, "channel {c}: mean");
        let want = s2.max(f64::from(anytime_runtime::private::VAR_FLOOR));
        assert!(
            (f64::from(var[c]) - want).abs() < 1e-6 + 1e-4 * want,
            "channel {c}"
        );
    }
    // stats.bin counts the same samples
    let pooled = l.private_status().unwrap();
    assert_eq!(pooled.labels[0].1, 9);
    drop(l);
    std::fs::remove_file(&path).unwrap();
    let mut l = Learner::open("tiny-clip", dir.path(), config(Some(private_config(0)))).unwrap();
    assert!(path.is_file(), "made at the open");
    l.consolidate().unwrap();
    // red is old, its pooled statistics published, its CLS ones not: synthetic samples
    let green = tiny_tokens("green_circle.png");
    let r = l.learn_tokens(&green, "green").unwrap();
    assert_eq!(r.batch, 8, "the real sample and 7 synthetic ones");
    assert!(r.loss.is_finite());
    for i in 0..8 {
        l.learn_tokens(&variant(&red, 20 + i), "red").unwrap();
    }
    let t = StatsFile::read(&path, d, 1).unwrap();
    assert_eq!(t.get(label).unwrap().samples(), 8, "counted from the open");
    assert_eq!(l.private_status().unwrap().labels[0].1, 17);
    let r = l.learn_tokens(&green, "green").unwrap();
    assert_eq!(r.batch, 8);
    assert!(r.loss.is_finite());
    drop(l);
    std::fs::write(&path, b"not statistics").unwrap();
    let e = Learner::open("tiny-clip", dir.path(), config(Some(private_config(0)))).unwrap_err();
    assert!(e.to_string().contains("cls_stats.bin"), "{e}");
}

/// A generator file that cannot be read is an error naming it, not a missing generator.
#[test]
fn an_unreadable_generator_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = || config(Some(private_config(0)));
    let mut l = Learner::open("tiny-clip", dir.path(), cfg()).unwrap();
    l.learn_tokens(&tiny_tokens("red_square.png"), "red")
        .unwrap();
    drop(l);
    std::fs::create_dir(dir.path().join("generator.bin")).unwrap();
    let e = Learner::open("tiny-clip", dir.path(), cfg()).unwrap_err();
    assert!(e.to_string().contains("generator.bin"), "{e}");
}

#[test]
fn consolidation_snapshots_trains_the_generator_and_brings_synthetic_samples() {
    let dir = tempfile::tempdir().unwrap();
    let mut l = Learner::open("tiny-clip", dir.path(), config(Some(generator_config(20)))).unwrap();
    let red = tiny_tokens("red_square.png");
    let green = tiny_tokens("green_circle.png");
    let mut auto = None;
    for i in 0..20 {
        let (t, label) = if i % 2 == 0 {
            (variant(&red, i), "red")
        } else {
            (variant(&green, i), "green")
        };
        let r = l.learn_tokens(&t, label).unwrap();
        assert_eq!(r.consolidation.is_some(), i == 19, "sample {i}");
        auto = auto.or(r.consolidation);
    }
    let c = auto.unwrap();
    assert_eq!((c.index, c.learned, c.labels, c.published), (0, 20, 2, 2));
    assert_eq!(c.generator_steps, 6);
    assert!(c.loss_first.total.is_finite() && c.loss_last.total.is_finite());
    assert!(
        c.loss_first.confidence > 0.0 && c.loss_first.stats > 0.0,
        "the generator's losses are reported: {c:?}"
    );
    assert!(c.peak_bytes > 0 && c.seconds >= c.generator_seconds);
    for f in [
        "generator.bin",
        "snapshot.safetensors",
        "private.json",
        "stats.bin",
    ] {
        assert!(dir.path().join(f).is_file(), "{f}");
    }
    // After it: the real sample and 7 synthetic ones of the old labels. Blue is the new
    // period's only label (its local CE is 0), and the tuned block is the snapshot
    // (nothing to distil) until this step's update.
    let blue = tiny_tokens("blue_triangle.png");
    let r = l.learn_tokens(&blue, "blue").unwrap();
    assert_eq!(r.batch, 8);
    let p = r.private_step.unwrap();
    assert_eq!(p.synthetic, 7);
    assert!(p.balanced > 0.1 && p.local.abs() < 1e-6, "{p:?}");
    assert!(p.distill.abs() < 1e-6 * p.balanced, "{p:?}");
    assert!(
        anytime_testkit::close(r.loss, p.local + p.balanced + p.distill, 1e-5, 0.0),
        "{r:?}"
    );
    // The next step distils towards the snapshot, and its local CE is over blue and the
    // new label.
    let r = l.learn_tokens(&variant(&blue, 1), "violet").unwrap();
    let p = r.private_step.unwrap();
    assert!(p.distill > 0.0 && p.local > 0.1, "{p:?}");
    assert!(
        anytime_testkit::close(r.loss, p.local + p.balanced + p.distill, 1e-5, 0.0),
        "{r:?}"
    );
    let c2 = l.consolidate().unwrap();
    assert_eq!((c2.index, c2.labels, c2.published), (1, 4, 2));
    let s = l.private_status().unwrap();
    assert_eq!((s.consolidations, s.since, s.generator), (2, 0, true));
    drop(l);
    // Reopened: the generator and snapshot are back; damaged ones are refused.
    let mut l = Learner::open("tiny-clip", dir.path(), config(Some(generator_config(20)))).unwrap();
    assert_eq!(l.learn_tokens(&variant(&red, 50), "red").unwrap().batch, 8);
    drop(l);
    for f in ["generator.bin", "snapshot.safetensors"] {
        let path = dir.path().join(f);
        let good = std::fs::read(&path).unwrap();
        let mut bad = good.clone();
        let at = bad.len() - 9;
        bad[at] ^= 0x40;
        std::fs::write(&path, &bad).unwrap();
        let e =
            Learner::open("tiny-clip", dir.path(), config(Some(generator_config(20)))).unwrap_err();
        assert!(e.to_string().contains(f), "{f}: {e}");
        std::fs::write(&path, &good).unwrap();
    }
    Learner::open("tiny-clip", dir.path(), config(Some(generator_config(20)))).unwrap();
}

/// A consolidation before anything was learned snapshots the block and trains no
/// generator; the next steps have no old label, so nothing to distil, and a consolidation
/// over labels without published statistics (fewer than 8 samples) trains none either.
#[test]
fn consolidations_without_labels_or_statistics_train_no_generator() {
    let dir = tempfile::tempdir().unwrap();
    let mut l = Learner::open("tiny-clip", dir.path(), config(Some(generator_config(0)))).unwrap();
    let c = l.consolidate().unwrap();
    assert_eq!((c.labels, c.published, c.generator_steps), (0, 0, 0));
    assert!(dir.path().join("snapshot.safetensors").is_file());
    assert!(!dir.path().join("generator.bin").exists());
    let red = tiny_tokens("red_square.png");
    let r = l.learn_tokens(&red, "red").unwrap();
    let p = r.private_step.unwrap();
    assert_eq!((r.batch, p.synthetic, p.distill), (1, 0, 0.0), "{p:?}");
    let c = l.consolidate().unwrap();
    assert_eq!(
        (c.index, c.labels, c.published, c.generator_steps),
        (1, 1, 0, 0)
    );
    assert!(!dir.path().join("generator.bin").exists());
    let r = l.learn_tokens(&variant(&red, 1), "red").unwrap();
    let p = r.private_step.unwrap();
    assert_eq!(
        (r.batch, p.synthetic),
        (1, 0),
        "no published statistics, no synthetic sample"
    );
}

/// Audit (1): after learning privately, no 8 consecutive values of any learned sample's
/// tokens (as the f32 bytes they would be written as, at any byte offset), and no 8
/// consecutive bytes of its compressed record (as the normal learner would store it; runs
/// of fewer than 6 distinct bytes left out, as they occur anywhere), lie in any file of
/// the folder. A consolidation ran, so the snapshot (and with the generator replay, the
/// generator) is searched too.
#[test]
fn audit_no_learned_samples_bytes_are_in_the_folder() {
    for replay in [PrivateReplay::Restyle, PrivateReplay::Generator] {
        no_learned_samples_bytes_in_the_folder(replay);
    }
}

fn no_learned_samples_bytes_in_the_folder(replay: PrivateReplay) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = PrivateConfig {
        replay,
        ..private_config(27)
    };
    let mut l = Learner::open("tiny-clip", dir.path(), config(Some(cfg))).unwrap();
    let original = Predictor::load("tiny-clip").unwrap().original;
    let dims = l.predictor().original.dims;
    let pics = [
        (tiny_tokens("red_square.png"), "red"),
        (tiny_tokens("green_circle.png"), "green"),
        (tiny_tokens("blue_triangle.png"), "blue"),
    ];
    let mut samples = Vec::new();
    for i in 0..30 {
        let (base, label) = &pics[i % 3];
        let t = if i < 3 {
            base.clone()
        } else {
            variant(base, i)
        };
        l.learn_tokens(&t, label).unwrap();
        samples.push(t);
    }
    l.checkpoint().unwrap();
    drop(l);
    let mut token_needles: HashSet<[u8; 32]> = HashSet::new();
    let mut record_needles: HashSet<[u8; 8]> = HashSet::new();
    let codec = LearnerConfig::default().codec;
    for t in &samples {
        let bytes: Vec<u8> = t.iter().flat_map(|v| v.to_le_bytes()).collect();
        for w in bytes.chunks_exact(4).collect::<Vec<_>>().windows(8) {
            let mut n = [0u8; 32];
            for (k, v) in w.iter().enumerate() {
                n[4 * k..4 * k + 4].copy_from_slice(v);
            }
            token_needles.insert(n);
        }
        let w = token_weights(&original, t, 1);
        let record = encode_tokens(t, &w, dims.tokens, dims.width, &codec).unwrap();
        for w in record.windows(8) {
            if w.iter().collect::<HashSet<_>>().len() >= 6 {
                record_needles.insert(w.try_into().unwrap());
            }
        }
    }
    assert!(token_needles.len() > 30 * 3000 && record_needles.len() > 30 * 100);
    let files = folder_bytes(dir.path());
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    for f in ["snapshot.safetensors", "stats.bin", "tokens.store"] {
        assert!(names.contains(&f), "{f} missing from {names:?}");
    }
    assert_eq!(
        names.contains(&"generator.bin"),
        replay == PrivateReplay::Generator,
        "{replay:?}: {names:?}"
    );
    for (name, bytes) in &files {
        for w in bytes.windows(32) {
            let w: [u8; 32] = w.try_into().unwrap();
            assert!(
                !token_needles.contains(&w),
                "{name} holds 8 values of a sample's tokens"
            );
        }
        for w in bytes.windows(8) {
            let w: [u8; 8] = w.try_into().unwrap();
            assert!(
                !record_needles.contains(&w),
                "{name} holds 8 bytes of a sample's record"
            );
        }
    }
}

/// Audit (2): the folder's files have the same sizes after 16 and after 1,000 learned
/// samples of the same two labels, with either replay (a consolidation after each; 16: a
/// label's statistics are first written at its 8th sample, so the first 8 are of one label
/// and the next 8 of the other), but `private.json`, a JSON record whose numbers' digits
/// vary: it stays under 2 KiB. The sizes are taken with the learner open (its lock file
/// names the holder).
#[test]
fn audit_the_folder_size_does_not_grow_with_the_samples() {
    for replay in [PrivateReplay::Restyle, PrivateReplay::Generator] {
        the_folder_size_does_not_grow(replay);
    }
}

fn the_folder_size_does_not_grow(replay: PrivateReplay) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(Some(PrivateConfig {
        replay,
        ..private_config(100_000)
    }));
    cfg.checkpoint_every = 0;
    let mut l = Learner::open("tiny-clip", dir.path(), cfg).unwrap();
    let pics = [
        (tiny_tokens("red_square.png"), "red"),
        (tiny_tokens("green_circle.png"), "green"),
    ];
    let mut at_16 = None;
    for i in 0..1000 {
        let (base, label) = &pics[if i < 16 { i / 8 } else { i % 2 }];
        l.learn_tokens(&variant(base, i), label).unwrap();
        if i == 15 {
            l.checkpoint().unwrap();
            l.consolidate().unwrap();
            at_16 = Some(sizes(dir.path()));
        }
    }
    l.checkpoint().unwrap();
    l.consolidate().unwrap();
    assert_eq!(l.learned(), 1000);
    let counts: Vec<u64> = l
        .private_status()
        .unwrap()
        .labels
        .iter()
        .map(|x| x.1)
        .collect();
    assert_eq!(counts, [500, 500]);
    let without_record = |s: Vec<(String, usize)>| -> Vec<(String, usize)> {
        for (n, len) in &s {
            assert!(
                n != "private.json" || *len < 2048,
                "private.json of {len} bytes"
            );
        }
        s.into_iter().filter(|(n, _)| n != "private.json").collect()
    };
    let (now, then) = (
        without_record(sizes(dir.path())),
        without_record(at_16.unwrap()),
    );
    assert_eq!(
        now.iter().any(|(n, _)| n == "generator.bin"),
        replay == PrivateReplay::Generator,
        "{now:?}"
    );
    assert_eq!(now, then, "{replay:?}");
}

/// The private step learns: after 16 samples each of two labels the zero-shot model
/// confuses, the tuned model tells them apart on the pictures (a margin a learner at
/// chance cannot meet), and after a consolidation and more samples of a third label it
/// still does (the synthetic samples and the distillation hold the old labels), with
/// either source of synthetic samples.
#[test]
fn a_private_learner_learns_and_keeps_its_old_labels() {
    for replay in [PrivateReplay::Restyle, PrivateReplay::Generator] {
        learns_and_keeps_its_old_labels(replay);
    }
}

fn learns_and_keeps_its_old_labels(replay: PrivateReplay) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = PrivateConfig {
        replay,
        ..private_config(32)
    };
    let mut l = Learner::open("tiny-clip", dir.path(), config(Some(cfg))).unwrap();
    let pics = [
        (tiny_tokens("red_square.png"), "alpha"),
        (tiny_tokens("green_circle.png"), "beta"),
    ];
    for i in 0..32 {
        let (base, label) = &pics[i % 2];
        l.learn_tokens(&variant(base, i), label).unwrap();
    }
    assert_eq!(l.private_status().unwrap().consolidations, 1);
    let set = l.label_set(&["alpha", "beta"]).unwrap();
    let right = |l: &mut Learner| -> Vec<f32> {
        pics.iter()
            .enumerate()
            .map(|(k, (t, _))| l.predict_tokens(t, &set, Mixing::TunedOnly).unwrap()[0].probs[k])
            .collect()
    };
    let learned = right(&mut l);
    assert!(learned.iter().all(|&p| p > 0.9), "{replay:?}: {learned:?}");
    let zero_shot: Vec<f32> = pics
        .iter()
        .enumerate()
        .map(|(k, (t, _))| l.predict_tokens(t, &set, Mixing::OriginalOnly).unwrap()[0].probs[k])
        .collect();
    assert!(
        zero_shot.iter().any(|&p| p < 0.6),
        "{zero_shot:?}: nothing to learn"
    );
    let blue = tiny_tokens("blue_triangle.png");
    for i in 0..8 {
        let r = l.learn_tokens(&variant(&blue, i), "gamma").unwrap();
        assert_eq!(r.batch, 8, "the real sample and 7 synthetic ones");
    }
    let kept = right(&mut l);
    assert!(
        kept.iter().all(|&p| p > 0.75),
        "{replay:?}: {kept:?} (after learning gamma)"
    );
}

/// `synthetic_tokens` gives the generator's sets of a label with published statistics
/// (none before a consolidation, none for a label it does not know), finite and of the
/// token shape; without the local CE (`local_ce: false`, an ablation) the private step still
/// learns the new sample through the class-balanced CE.
#[test]
fn synthetic_tokens_and_the_step_without_local_ce() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = PrivateConfig {
        local_ce: false,
        ..generator_config(0)
    };
    let mut l = Learner::open("tiny-clip", dir.path(), config(Some(cfg))).unwrap();
    let red = tiny_tokens("red_square.png");
    let pics = [
        (red.clone(), "red"),
        (tiny_tokens("green_circle.png"), "green"),
        (tiny_tokens("blue_triangle.png"), "blue"),
    ];
    let per = red.len();
    for i in 0..24 {
        let (base, label) = &pics[i % 3];
        let r = l.learn_tokens(&variant(base, i), label).unwrap();
        assert!(r.loss.is_finite() && r.loss > 0.0, "sample {i}: {r:?}");
        assert_eq!(r.batch, 1);
    }
    assert_eq!(
        l.synthetic_tokens("red", 4, 1).unwrap(),
        None,
        "no generator yet"
    );
    l.consolidate().unwrap();
    let a = l.synthetic_tokens("red", 4, 1).unwrap().unwrap();
    assert_eq!(a.len(), 4 * per);
    assert!(a.iter().all(|v| v.is_finite()));
    assert_eq!(
        l.synthetic_tokens("red", 4, 1).unwrap().unwrap(),
        a,
        "seeded"
    );
    assert_ne!(l.synthetic_tokens("red", 4, 2).unwrap().unwrap(), a);
    assert_eq!(l.synthetic_tokens("yellow", 4, 1).unwrap(), None);
    // the step after the consolidation: the real sample and 7 synthetic ones of the
    // three old labels
    let r = l.learn_tokens(&variant(&red, 40), "red").unwrap();
    assert_eq!(r.batch, 8);
    assert!(r.loss.is_finite() && r.loss > 0.0);
    // reopened asking for no synthetic sample: the real one alone
    drop(l);
    let none = PrivateConfig {
        synthetic: 0,
        ..private_config(0)
    };
    let mut l = Learner::open("tiny-clip", dir.path(), config(Some(none))).unwrap();
    let r = l.learn_tokens(&variant(&red, 41), "red").unwrap();
    assert_eq!((r.batch, r.private_step.unwrap().synthetic), (1, 0));
}

/// A private learner on the wgpu backend (`BackendChoice::Gpu`: any adapter, lavapipe in
/// CI) learns two labels, consolidates (snapshot and generator on the CPU), then learns a
/// third with synthetic samples of the old two, and ends with the CPU learner's tuned
/// state: per tensor, weights and `b` within `1e-2 · lr · steps` (a step moves a weight by
/// about lr; the generator is trained against each learner's own snapshot, so the
/// synthetic samples differ by as much as the snapshots do) and Adam moments within
/// `1e-3` of the tensor's largest CPU value (measured on lavapipe: weights ≤ 2.4e-5, 6 %
/// of the bound; moments ≤ 1.1e-5 relative; every sample's loss within 1e-3 relative).
/// Skips without an adapter, unless `ANYTIME_EDGE_REQUIRE_GPU` is set (as CI sets it).
#[cfg(feature = "gpu")]
#[test]
fn a_private_learner_on_wgpu_ends_with_the_cpu_learners_state() {
    use anytime_runtime::train::{load_tuned, TrainError, TunedState};
    use anytime_testkit::{max_abs, max_abs_diff};
    let pics = [
        (tiny_tokens("red_square.png"), "alpha"),
        (tiny_tokens("green_circle.png"), "beta"),
    ];
    let blue = tiny_tokens("blue_triangle.png");
    let run = |backend: BackendChoice| {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(Some(private_config(16)));
        cfg.backend = backend;
        let mut l = Learner::open("tiny-clip", dir.path(), cfg)?;
        let training = l.training()?;
        let mut losses = Vec::new();
        for i in 0..16 {
            let (base, label) = &pics[i % 2];
            let r = l.learn_tokens(&variant(base, i), label)?;
            assert_eq!(r.consolidation.is_some(), i == 15, "sample {i}");
            losses.push(r.loss);
        }
        for i in 0..4 {
            let r = l.learn_tokens(&variant(&blue, i), "gamma")?;
            assert_eq!(r.batch, 8, "the real sample and 7 synthetic ones");
            losses.push(r.loss);
        }
        l.checkpoint()?;
        let dims = l.predictor().original.dims;
        let (state, _, _) = load_tuned(&dir.path().join("tuned.safetensors"), &dims).unwrap();
        Ok::<_, LearnError>((training.backend, losses, state))
    };
    let (_, cpu_losses, cpu) = run(BackendChoice::Cpu).unwrap();
    let (backend, gpu_losses, gpu) = match run(BackendChoice::Gpu) {
        Ok(r) => r,
        Err(LearnError::Train(TrainError::NoAdapter)) => {
            return anytime_testkit::skip::gpu_absent(
                "a_private_learner_on_wgpu_ends_with_the_cpu_learners_state",
            )
        }
        Err(e) => panic!("GPU backend: {e}"),
    };
    assert_eq!(
        backend, "wgpu",
        "a private learner asked for the GPU gets it"
    );
    for (i, (c, g)) in cpu_losses.iter().zip(&gpu_losses).enumerate() {
        assert!(c.is_finite() && g.is_finite());
        assert!(
            anytime_testkit::close(*g, *c, 1e-4, 1e-3),
            "loss of sample {i}: cpu {c}, wgpu {g}"
        );
    }
    assert_eq!(gpu.optim.step, cpu.optim.step);
    let lr = f64::from(config(None).train.lr);
    let bound = 1e-2 * lr * cpu.optim.step as f64;
    let mut report = Vec::new();
    fn parts(s: &TunedState) -> impl Iterator<Item = [&[f32]; 3]> {
        let t = [&s.params, &s.optim.m, &s.optim.v].map(|p| p.tensors());
        (0..t[0].len()).map(move |i| [t[0][i], t[1][i], t[2][i]])
    }
    for (k, (g, c)) in parts(&gpu).zip(parts(&cpu)).enumerate() {
        let diff = max_abs_diff(g[0], c[0]);
        report.push(format!("tensor {k}: max |Δθ| {diff:e} (bound {bound:e})"));
        assert!(diff <= bound, "{}", report.join("\n"));
        for (what, g, c) in [("m", g[1], c[1]), ("v", g[2], c[2])] {
            let (diff, scale) = (max_abs_diff(g, c), max_abs(c));
            report.push(format!("  {what}: {diff:e} of {scale:e}"));
            assert!(diff <= 1e-3 * scale, "{}", report.join("\n"));
        }
    }
    let diff = max_abs_diff(&[gpu.other_bias], &[cpu.other_bias]);
    report.push(format!("b: |Δ| {diff:e}"));
    assert!(diff <= bound, "{}", report.join("\n"));
    eprintln!("private learner, wgpu vs CPU:\n{}", report.join("\n"));
}
