//! The anytime learner on the tiny model: OCW picks the tuned model for what it learned and
//! the original for the rest; a reopened learner continues where it stopped.
use anytime_runtime::assets::{bundled_models_dir, ModelAssets};
use anytime_runtime::encoder::load_image;
use anytime_runtime::learner::{LearnError, Learner, LearnerConfig, Mixing};
use anytime_runtime::predict::Predictor;
use anytime_runtime::store::{encode_tokens, CodecParams};
use anytime_runtime::train::{
    load_tuned, save_tuned, BackendChoice, TrainConfig, TrainError, TunedState,
};
use anytime_testkit::close;

fn config() -> LearnerConfig {
    let mut cfg = LearnerConfig {
        store_capacity: 1 << 20,
        checkpoint_every: 1,
        backend: BackendChoice::Cpu,
        ..LearnerConfig::default()
    };
    // The tiny random model needs a larger step than ViT-B/32's 9.375e-6 to move in a test.
    cfg.train.lr = 2e-3;
    cfg
}

fn tiny_tokens(image: &str) -> Vec<f32> {
    let p = Predictor::load("tiny-clip").unwrap();
    let img = load_image(&bundled_models_dir().join("tiny-clip/images").join(image)).unwrap();
    p.encoder.encode_images(&[img]).unwrap()
}

/// A fresh learner, the red square's tokens, the label of "alpha"/"beta" the original model
/// does not pick for them (`taught`: c_o = 0 on it) and the other one, stored once with the
/// green circle so that the training set is {taught, other}.
struct Taught {
    _dir: tempfile::TempDir,
    learner: Learner,
    tokens: Vec<f32>,
    taught: String,
    other: String,
}

fn taught_setup() -> Taught {
    let dir = tempfile::tempdir().unwrap();
    let mut learner = Learner::open("tiny-clip", dir.path(), config()).unwrap();
    let tokens = tiny_tokens("red_square.png");
    let pair = learner.label_set(&["alpha", "beta"]).unwrap();
    let zero_shot = &learner
        .predict_tokens(&tokens, &pair, Mixing::OriginalOnly)
        .unwrap()[0];
    let taught = pair.labels[1 - zero_shot.best()].clone();
    let other = pair.labels[zero_shot.best()].clone();
    learner
        .learn_tokens(&tiny_tokens("green_circle.png"), &other)
        .unwrap();
    Taught {
        _dir: dir,
        learner,
        tokens,
        taught,
        other,
    }
}

#[test]
fn ocw_uses_the_tuned_model_for_learned_labels_and_the_original_for_the_rest() {
    // Teach the label the original model does NOT pick, so it is always wrong on it:
    // c_o = 0 exactly, and α → 1 once the tuned model gets it right.
    let Taught {
        _dir,
        mut learner,
        tokens,
        taught,
        ..
    } = taught_setup();
    let mut reports = Vec::new();
    for _ in 0..40 {
        reports.push(learner.learn_tokens(&tokens, &taught).unwrap());
    }
    assert!(
        reports.iter().all(|r| !r.original_correct),
        "the original model is frozen"
    );
    assert!(
        reports.last().unwrap().tuned_correct,
        "the tuned model learned the sample"
    );
    assert!(reports.last().unwrap().loss < reports[0].loss);
    let (c_t, c_o, n) = learner.ocw(&taught).unwrap().unwrap();
    assert_eq!(c_o, 0.0);
    assert!(c_t > 0.0);
    assert_eq!(n, 40);

    let query = learner.label_set(&[taught.as_str(), "gamma"]).unwrap();
    let mixed = &learner
        .predict_tokens(&tokens, &query, Mixing::Ocw)
        .unwrap()[0];
    let tuned = &learner
        .predict_tokens(&tokens, &query, Mixing::TunedOnly)
        .unwrap()[0];
    let original = &learner
        .predict_tokens(&tokens, &query, Mixing::OriginalOnly)
        .unwrap()[0];
    // Learned label: α = c_t / (c_t + 0 + 1e-8) ≈ 1, so the tuned probability.
    assert!(
        close(mixed.probs[0], tuned.probs[0], 1e-5, 0.0),
        "{mixed:?} vs {tuned:?}"
    );
    // Never-learned label: α = 0, exactly the original probability.
    assert_eq!(mixed.probs[1], original.probs[1]);
    assert_eq!(mixed.ranked[0].0, taught);
    assert!(mixed.other.is_some());

    // The "none" calibration saw every new sample of the taught label, before its step.
    let t = learner.typicality(&taught).unwrap().unwrap();
    assert_eq!(t.n, 40);
    assert!(
        t.mean.is_finite() && t.var.is_finite() && t.var >= 0.0,
        "{t:?}"
    );
    assert!(learner.typicality("gamma").unwrap().is_none());
    // The learned label answers with a none score: with fewer than 50 arrivals, the raw
    // one, how far the original model's cosine to the label's text falls below its mean.
    // A never-learned best label answers without.
    let score = mixed.none_score.expect("a learned best label has a score");
    let z_o = Predictor::load("tiny-clip")
        .unwrap()
        .embed(&tokens)
        .unwrap();
    let e = z_o.len();
    let cos = anytime_core::mixing::dot(&z_o, &query.text[..e]);
    // One picture 40 times: the label's statistics are that one cosine.
    assert!(
        close(t.mean, cos, 1e-5, 1e-5) && t.var < 1e-6,
        "{t:?} vs {cos}"
    );
    let raw = t.score(cos).expect("40 samples");
    assert!(close(score, raw, 1e-4, 1e-4), "{score} vs {raw}");
    // The same score with the label in another place of the query.
    let swapped = learner.label_set(&["gamma", taught.as_str()]).unwrap();
    let p = &learner
        .predict_tokens(&tokens, &swapped, Mixing::Ocw)
        .unwrap()[0];
    assert_eq!(p.ranked[0].0, taught);
    assert!(close(p.none_score.unwrap(), raw, 1e-4, 1e-4), "{p:?}");
    assert_eq!(
        (mixed.model, tuned.model, original.model),
        ("mixed", "tuned", "original")
    );
    let unlearned = learner.label_set(&["gamma", "delta"]).unwrap();
    let p = &learner
        .predict_tokens(&tokens, &unlearned, Mixing::Ocw)
        .unwrap()[0];
    assert_eq!(p.none_score, None);
}

/// SPEC §3: OCW observes each new sample **before** the training step on it. Before each
/// learn call the tuned model's own answer over the training label set is taken; the
/// report's `tuned_correct` and OCW's `c_t` (the exact running mean during warm-up) must
/// be those answers, and some step must flip the answer from wrong to right, so that an
/// observation after the step would give another `c_t`.
#[test]
fn ocw_observes_each_new_sample_before_its_training_step() {
    let Taught {
        _dir,
        mut learner,
        tokens,
        taught,
        other,
    } = taught_setup();
    // The training label set of every call below: the two stored labels.
    let set = learner
        .label_set(&[taught.as_str(), other.as_str()])
        .unwrap();
    let tuned_right = |l: &mut Learner| {
        let p = &l.predict_tokens(&tokens, &set, Mixing::TunedOnly).unwrap()[0];
        set.labels[p.best()] == taught
    };
    let (mut before, mut after) = (Vec::new(), Vec::new());
    for _ in 0..30 {
        before.push(tuned_right(&mut learner));
        let r = learner.learn_tokens(&tokens, &taught).unwrap();
        after.push(tuned_right(&mut learner));
        assert_eq!(r.tuned_correct, *before.last().unwrap(), "{before:?}");
    }
    assert!(
        before.iter().zip(&after).any(|(b, a)| !b && *a),
        "no step flipped the tuned answer, so the order is not tested: {before:?}"
    );
    let mean = |v: &[bool]| v.iter().filter(|&&x| x).count() as f32 / v.len() as f32;
    let (c_t, c_o, n) = learner.ocw(&taught).unwrap().unwrap();
    assert_eq!((c_o, n), (0.0, 30));
    assert!(
        close(c_t, mean(&before), 1e-6, 0.0),
        "c_t {c_t}: before the steps {}, after {}",
        mean(&before),
        mean(&after)
    );
    assert!(!close(c_t, mean(&after), 1e-6, 0.0));
}

/// Mixing::OcwHard takes the tuned model where its OCW estimate beats the original's and
/// the original elsewhere, with nothing in between.
#[test]
fn hard_mixing_picks_one_model_per_label() {
    let Taught {
        _dir,
        mut learner,
        tokens,
        taught,
        other,
    } = taught_setup();
    for _ in 0..30 {
        learner.learn_tokens(&tokens, &taught).unwrap();
    }
    let (c_t, c_o, _) = learner.ocw(&taught).unwrap().unwrap();
    assert!(c_t > c_o, "{c_t} vs {c_o}");
    // `other` was learned once, alone: both models right, a tie, which keeps the original.
    let (c_t, c_o, _) = learner.ocw(&other).unwrap().unwrap();
    assert_eq!(c_t, c_o);
    let query = learner
        .label_set(&[taught.as_str(), "gamma", other.as_str()])
        .unwrap();
    let hard = &learner
        .predict_tokens(&tokens, &query, Mixing::OcwHard)
        .unwrap()[0];
    let tuned = &learner
        .predict_tokens(&tokens, &query, Mixing::TunedOnly)
        .unwrap()[0];
    let original = &learner
        .predict_tokens(&tokens, &query, Mixing::OriginalOnly)
        .unwrap()[0];
    assert_eq!(hard.probs[0], tuned.probs[0], "α = 1 for the taught label");
    assert_eq!(
        hard.probs[1], original.probs[1],
        "α = 0 for a label never learned"
    );
    assert_ne!(tuned.probs[2], original.probs[2]);
    assert_eq!(hard.probs[2], original.probs[2], "α = 0 for a tie");
}

/// OCW judges the original model over the training label set: right on a sample whose label
/// it picks, wherever that label stands in the set.
#[test]
fn the_original_model_is_right_on_the_label_it_picks() {
    let dir = tempfile::tempdir().unwrap();
    let mut l = Learner::open("tiny-clip", dir.path(), config()).unwrap();
    let red = tiny_tokens("red_square.png");
    let pair = l.label_set(&["alpha", "beta"]).unwrap();
    let best = l.predict_tokens(&red, &pair, Mixing::OriginalOnly).unwrap()[0].best();
    let (picked, other) = (&pair.labels[best], &pair.labels[1 - best]);
    let r = l.learn_tokens_in(&red, other, &[picked]).unwrap();
    assert!(r.labels == 2 && !r.original_correct);
    // `picked` is second in the training set now.
    assert!(l.learn_tokens(&red, picked).unwrap().original_correct);
}

/// The training label set is the stored labels that have samples, the new one, then the
/// context's labels that are neither (case ignored); a stored record that does not decode to
/// this model's tokens is left out of the batch.
#[test]
fn the_training_set_holds_labels_with_samples_and_records_that_decode() {
    let dir = tempfile::tempdir().unwrap();
    let mut l = Learner::open("tiny-clip", dir.path(), config()).unwrap();
    let red = tiny_tokens("red_square.png");
    let green = tiny_tokens("green_circle.png");
    let first = l.learn_tokens(&red, "red").unwrap();
    l.learn_tokens(&green, "green").unwrap();
    assert!(
        l.store().remove(first.seq).unwrap(),
        "red has no sample now"
    );
    l.store().label_id("gray").unwrap();
    let r = l
        .learn_tokens_in(&green, "green", &["GREEN", "RED", "blue"])
        .unwrap();
    assert_eq!(r.labels, 3, "green, then RED and blue of the context");
    assert_eq!(r.batch, 2, "the new sample and the green one stored");

    let dims = ModelAssets::find("tiny-clip").unwrap().dims().block();
    let n = dims.tokens - 1;
    let short = encode_tokens(
        &green[..n * dims.width],
        &vec![1.0; n],
        n,
        dims.width,
        &CodecParams::DEFAULT,
    )
    .unwrap();
    let id = l.store().find_label("green").unwrap().unwrap();
    l.store().append(id, &short).unwrap();
    let r = l.learn_tokens(&green, "green").unwrap();
    assert_eq!(
        r.batch, 3,
        "the new sample and the two stored ones of its shape"
    );
}

#[test]
fn a_reopened_learner_continues_where_it_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let red = tiny_tokens("red_square.png");
    let green = tiny_tokens("green_circle.png");
    let (before, learned) = {
        let mut l = Learner::open("tiny-clip", dir.path(), config()).unwrap();
        for i in 0..20 {
            if i % 2 == 0 {
                l.learn_tokens(&red, "red").unwrap();
            } else {
                l.learn_tokens(&green, "green").unwrap();
            }
        }
        let set = l.label_set(&["red", "green", "blue"]).unwrap();
        (
            l.predict_tokens(&red, &set, Mixing::Ocw).unwrap(),
            l.learned(),
        )
    };
    let mut l = Learner::open("tiny-clip", dir.path(), config()).unwrap();
    assert_eq!(l.learned(), learned);
    assert_eq!(l.ocw("red").unwrap().unwrap().2, 10);
    assert_eq!(l.store().len(), 20);
    let set = l.label_set(&["red", "green", "blue"]).unwrap();
    let after = l.predict_tokens(&red, &set, Mixing::Ocw).unwrap();
    assert_eq!(
        before[0].probs, after[0].probs,
        "same weights and OCW state after reopening"
    );
    assert!(before[0].none_score.is_some(), "red is calibrated");
    assert_eq!(
        before[0].none_score, after[0].none_score,
        "and the same \"none\" calibration"
    );
    // And it keeps learning.
    let wall = std::time::Instant::now();
    let r = l.learn_tokens(&green, "green").unwrap();
    let wall = wall.elapsed().as_secs_f64();
    assert_eq!(r.learned, learned + 1);
    assert_eq!(r.batch, 21);
    // Its phases are disjoint parts of the call, each measured.
    let t = &r.timings;
    let phases = [
        t.text,
        t.probe,
        t.compress,
        t.store,
        t.replay_decode,
        t.step,
        t.persist,
    ];
    assert!(phases.iter().all(|&p| p.is_finite() && p > 0.0), "{t:?}");
    let sum: f64 = phases.iter().sum();
    assert!(sum <= t.total && t.total <= wall, "{t:?}, {wall} s");
}

#[test]
fn a_folder_of_another_model_and_bad_samples_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut l = Learner::open("tiny-clip", dir.path(), config()).unwrap();
    let mut t = tiny_tokens("red_square.png");
    assert!(l.learn_tokens(&t[1..], "red").is_err());
    assert!(l.learn_tokens(&t, "").is_err());
    assert!(l.learn_tokens(&t, &"x".repeat(10_000)).is_err());
    t[7] = f32::NAN;
    assert!(l.learn_tokens(&t, "red").is_err());
    assert_eq!(l.learned(), 0);
    assert_eq!(l.store().len(), 0, "nothing stored for refused samples");
    drop(l);
    std::fs::write(
        dir.path().join("learner.json"),
        r#"{"model":"other","tokens":197,"width":768,"embed":512,"codec_k":5,"codec_bits":8,"codec_weighted":true}"#,
    )
    .unwrap();
    let err = Learner::open("tiny-clip", dir.path(), config()).unwrap_err();
    assert!(
        err.to_string().contains("belongs to model `other`"),
        "{err}"
    );
    let _ = ModelAssets::find("tiny-clip").unwrap();
}

#[test]
fn rehearsal_trains_on_stored_samples_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut l = Learner::open("tiny-clip", dir.path(), config()).unwrap();
    assert_eq!(
        l.rehearse(5, &["red"]).unwrap(),
        None,
        "nothing stored, nothing to rehearse"
    );
    let red = tiny_tokens("red_square.png");
    let green = tiny_tokens("green_circle.png");
    l.learn_tokens(&red, "red").unwrap();
    l.learn_tokens(&green, "green").unwrap();
    let set = l.label_set(&["red", "green", "blue"]).unwrap();
    let before = l.predict_tokens(&red, &set, Mixing::TunedOnly).unwrap();
    let ocw = (l.ocw("red").unwrap(), l.ocw("green").unwrap());
    let (stored, learned) = (l.store().len(), l.learned());

    let first = l.rehearse(1, &["blue"]).unwrap().unwrap();
    let later = l.rehearse(30, &["blue"]).unwrap().unwrap();
    assert!(
        first.loss.is_finite() && later.loss < first.loss,
        "{first:?} → {later:?}"
    );
    assert_eq!(
        (first.samples, later.samples),
        (2, 60),
        "all that is stored"
    );
    let after = l.predict_tokens(&red, &set, Mixing::TunedOnly).unwrap();
    assert_ne!(before[0].probs, after[0].probs, "the tuned block trained");
    // At checkpoint_every = 1, a rehearsal is a checkpoint.
    drop(l);
    let mut cfg = config();
    let mut l = Learner::open("tiny-clip", dir.path(), cfg.clone()).unwrap();
    let tuned = |l: &mut Learner| l.predict_tokens(&red, &set, Mixing::TunedOnly).unwrap();
    assert_eq!(tuned(&mut l)[0].probs, after[0].probs, "saved");
    assert_eq!(l.store().len(), stored, "rehearsal stores nothing");
    assert_eq!(l.learned(), learned, "nor counts as learning");
    assert_eq!(
        (l.ocw("red").unwrap(), l.ocw("green").unwrap()),
        ocw,
        "replayed samples never update OCW"
    );
    assert_eq!(l.rehearse(0, &["blue"]).unwrap(), None);
    assert!(
        l.rehearse(1, &[""]).is_err(),
        "a bad context label is refused"
    );
    // Batches of replay + 1 draws; without checkpoints, nothing is saved.
    for _ in 0..3 {
        l.learn_tokens(&red, "red").unwrap();
    }
    drop(l);
    cfg.checkpoint_every = 0;
    cfg.replay = 2;
    let mut l = Learner::open("tiny-clip", dir.path(), cfg).unwrap();
    let saved = tuned(&mut l);
    assert_eq!(l.rehearse(2, &["blue"]).unwrap().unwrap().samples, 6);
    assert_ne!(tuned(&mut l)[0].probs, saved[0].probs);
    drop(l);
    let mut l = Learner::open_read_only("tiny-clip", dir.path(), config()).unwrap();
    assert_eq!(tuned(&mut l)[0].probs, saved[0].probs, "not saved");
}

/// One writer per folder, refused with the holder's name; a reader beside it sees what was
/// acknowledged and cannot learn.
#[test]
fn one_writer_per_folder_and_readers_beside_it() {
    let dir = tempfile::tempdir().unwrap();
    let red = tiny_tokens("red_square.png");
    let mut w = Learner::open("tiny-clip", dir.path(), config()).unwrap();
    w.learn_tokens(&red, "red").unwrap();
    assert!(w.is_writer());
    assert_eq!(w.gpu_buffers_created(), None, "the CPU path counts none");
    let shown = format!("{w:?}");
    assert!(
        shown.starts_with("Learner {") && shown.contains(&format!("{:?}", dir.path())),
        "{shown}"
    );
    assert!(shown.contains("learned: 1"), "{shown}");
    // The id is learner.json's: 16 hex digits, the same for every opener of the folder.
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("learner.json")).unwrap()).unwrap();
    let id = w.id().unwrap();
    assert_eq!(meta["id"].as_str(), Some(id.as_str()));
    assert!(
        id.len() == 16 && id.chars().all(|c| c.is_ascii_hexdigit()),
        "{id}"
    );
    let e = Learner::open("tiny-clip", dir.path(), config()).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("in use by") && msg.contains(&format!("pid {}", std::process::id())),
        "{msg}"
    );
    let mut r = Learner::open_read_only("tiny-clip", dir.path(), config()).unwrap();
    assert_eq!(r.learned(), 1);
    assert!(!r.is_writer());
    assert_eq!(r.id(), Some(id.clone()));
    assert!(
        r.learn_tokens(&red, "red").is_err(),
        "a reader cannot learn"
    );
    assert!(r.checkpoint().is_err(), "a reader cannot save");
    w.learn_tokens(&red, "red").unwrap();
    let r = Learner::open_read_only("tiny-clip", dir.path(), config()).unwrap();
    assert_eq!(r.learned(), 2);
    drop(w);
    Learner::open("tiny-clip", dir.path(), config()).unwrap();
}

/// The learner's three files carry one id: another learner's store or weights are refused,
/// and so are damaged weights.
#[test]
fn files_of_another_learner_and_damaged_weights_are_refused() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let red = tiny_tokens("red_square.png");
    for d in [&a, &b] {
        let mut l = Learner::open("tiny-clip", d.path(), config()).unwrap();
        l.learn_tokens(&red, "red").unwrap();
        l.checkpoint().unwrap();
    }
    let swap = |file: &str| {
        let c = tempfile::tempdir().unwrap();
        for f in ["learner.json", "tokens.store", "tuned.safetensors"] {
            let from = if f == file { b.path() } else { a.path() };
            std::fs::copy(from.join(f), c.path().join(f)).unwrap();
        }
        c
    };
    for file in ["tokens.store", "tuned.safetensors"] {
        let c = swap(file);
        let e = Learner::open("tiny-clip", c.path(), config()).unwrap_err();
        assert!(e.to_string().contains("belongs to learner"), "{file}: {e}");
        let e = Learner::open_read_only("tiny-clip", c.path(), config()).unwrap_err();
        assert!(e.to_string().contains("belongs to learner"), "{file}: {e}");
    }
    let tuned = a.path().join("tuned.safetensors");
    let mut bytes = std::fs::read(&tuned).unwrap();
    let last = bytes.len() - 3;
    bytes[last] ^= 0x10;
    std::fs::write(&tuned, &bytes).unwrap();
    let e = Learner::open("tiny-clip", a.path(), config()).unwrap_err();
    assert!(e.to_string().contains("checksum"), "{e}");
}

/// NaN or an absurd learning rate is refused; a label differing only in case is the stored
/// one; "none" is no label; a store too small to learn is refused up front; temporary files
/// a kill left behind are removed.
#[test]
fn bad_settings_and_labels_are_refused_without_a_trace() {
    let dir = tempfile::tempdir().unwrap();
    for lr in [f32::NAN, f32::INFINITY, 1e30, 0.0, -1e-3] {
        let mut cfg = config();
        cfg.train.lr = lr;
        let e = Learner::open("tiny-clip", dir.path(), cfg).unwrap_err();
        assert!(e.to_string().contains("learning rate"), "{lr}: {e}");
    }
    let mut cfg = config();
    cfg.store_capacity = 1;
    let e = Learner::open("tiny-clip", &dir.path().join("tiny"), cfg).unwrap_err();
    assert!(e.to_string().contains("store capacity"), "{e}");

    let red = tiny_tokens("red_square.png");
    let mut l = Learner::open("tiny-clip", dir.path(), config()).unwrap();
    l.learn_tokens(&red, "red").unwrap();
    l.checkpoint().unwrap();
    drop(l);
    // What a kill during a checkpoint or a learner.json write leaves is cleaned up.
    let leftovers = ["tuned.safetensors.tmp", "learner.json.tmp"].map(|f| dir.path().join(f));
    for f in &leftovers {
        std::fs::write(f, b"half a file").unwrap();
    }
    let mut l = Learner::open("tiny-clip", dir.path(), config()).unwrap();
    assert!(
        leftovers.iter().all(|f| !f.exists()),
        "temporary files left"
    );
    let r = l.learn_tokens(&red, "RED").unwrap();
    assert_eq!(r.label, "red");
    assert!(l.learn_tokens(&red, "None").is_err());
    let labels = l.store().labels().unwrap();
    assert_eq!(labels.len(), 1, "{labels:?}");
    assert_eq!(labels[0].count, 2);
}

/// Overwrites the learner's tuned weights with Adam moments that make the next update
/// infinite (first moment `f32::MAX`, second 0, at a learning rate of 1): finite on disk,
/// so they load, but the first step turns `fc_w` into infinities.
fn poison_moments(dir: &std::path::Path) -> Vec<u8> {
    poison(dir, |state| {
        state.optim.m.fc_w.fill(f32::MAX);
        state.optim.v.fc_w.fill(0.0);
    })
}

/// Rewrites the saved tuned state of `dir` with `edit` and returns the file's bytes.
fn poison(dir: &std::path::Path, edit: fn(&mut TunedState)) -> Vec<u8> {
    let dims = ModelAssets::find("tiny-clip").unwrap().dims().block();
    let path = dir.join("tuned.safetensors");
    let (mut state, head, owner) = load_tuned(&path, &dims).unwrap();
    edit(&mut state);
    save_tuned(&path, &dims, &state, &head, owner.as_deref()).unwrap();
    std::fs::read(&path).unwrap()
}

fn all_finite(l: &mut Learner, tokens: &[f32]) -> bool {
    let set = l.label_set(&["red", "green", "blue"]).unwrap();
    l.predict_tokens(tokens, &set, Mixing::TunedOnly).unwrap()[0]
        .probs
        .iter()
        .all(|p| p.is_finite())
}

/// Weights that a step made infinite are met by every path that reads them (the next
/// sample's probe, a checkpoint, a prediction), rolled back to the last checkpoint and
/// never saved; a sample refused so leaves no trace in the store.
#[test]
fn non_finite_weights_are_rolled_back_and_never_saved() {
    rolled_back_and_never_saved(BackendChoice::Cpu);
}

/// The same on the wgpu backend (its weights are read back from the adapter). Skips
/// without an adapter, unless `ANYTIME_EDGE_REQUIRE_GPU` is set (as CI sets it).
#[cfg(feature = "gpu")]
#[test]
fn non_finite_weights_are_rolled_back_and_never_saved_on_wgpu() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config();
    cfg.backend = BackendChoice::Gpu;
    let probe = Learner::open("tiny-clip", dir.path(), cfg).and_then(|mut l| l.training());
    match probe {
        Ok(_) => rolled_back_and_never_saved(BackendChoice::Gpu),
        Err(LearnError::Train(TrainError::NoAdapter)) => anytime_testkit::skip::gpu_absent(
            "non_finite_weights_are_rolled_back_and_never_saved_on_wgpu",
        ),
        Err(e) => panic!("GPU backend: {e}"),
    }
}

/// Once the store holds a full replay batch of a fixed label set, every `learn_tokens` on
/// wgpu is a batch-1 probe and a full-batch step of shapes already seen: the backend finds
/// both plans and its read-back buffers kept, so no call creates a GPU buffer (issue 17).
/// Skips without an adapter, unless `ANYTIME_EDGE_REQUIRE_GPU` is set (as CI sets it).
#[cfg(feature = "gpu")]
#[test]
fn learning_on_wgpu_creates_no_buffer_once_its_shapes_were_seen() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config();
    cfg.backend = BackendChoice::Gpu;
    let replay = cfg.replay;
    let mut l = Learner::open("tiny-clip", dir.path(), cfg).unwrap();
    match l.training() {
        Ok(_) => {}
        Err(LearnError::Train(TrainError::NoAdapter)) => {
            return anytime_testkit::skip::gpu_absent(
                "learning_on_wgpu_creates_no_buffer_once_its_shapes_were_seen",
            )
        }
        Err(e) => panic!("GPU backend: {e}"),
    }
    let samples = [
        (tiny_tokens("red_square.png"), "red"),
        (tiny_tokens("green_circle.png"), "green"),
    ];
    let mut calls = 0;
    let mut learn = |l: &mut Learner| {
        let (tokens, label) = &samples[calls % samples.len()];
        calls += 1;
        l.learn_tokens(tokens, label).unwrap()
    };
    // Fill the store: from here on each call replays `replay` stored samples.
    while l.store().len() < replay {
        learn(&mut l);
    }
    assert_eq!(learn(&mut l).batch, replay + 1, "the first full batch");
    let created = l
        .gpu_buffers_created()
        .expect("a wgpu learner counts its buffers");
    assert!(created > 1, "the backend's weights and batch need buffers");
    for _ in 0..6 {
        let report = learn(&mut l);
        assert_eq!((report.batch, report.labels), (replay + 1, 2));
        assert!(report.loss.is_finite());
    }
    assert_eq!(
        l.gpu_buffers_created(),
        Some(created),
        "learning with seen shapes creates no GPU buffer"
    );
}

fn rolled_back_and_never_saved(backend: BackendChoice) {
    let dir = tempfile::tempdir().unwrap();
    let (red, green) = (
        tiny_tokens("red_square.png"),
        tiny_tokens("green_circle.png"),
    );
    let mut cfg = config();
    cfg.backend = backend;
    cfg.checkpoint_every = 0;
    cfg.train.lr = 1.0;
    let mut l = Learner::open("tiny-clip", dir.path(), cfg.clone()).unwrap();
    l.learn_tokens(&red, "red").unwrap();
    l.learn_tokens(&green, "green").unwrap();
    l.checkpoint().unwrap();
    drop(l);
    let saved = poison_moments(dir.path());
    let tuned = dir.path().join("tuned.safetensors");

    let mut l = Learner::open("tiny-clip", dir.path(), cfg.clone()).unwrap();
    // This step makes the weights infinite (its loss is taken before the update).
    l.learn_tokens(&red, "red").unwrap();
    let (stored, learned) = (l.store().len(), l.learned());
    // The next sample's probe meets them: refused, the store untouched, its label unknown.
    let e = l.learn_tokens(&green, "blue").unwrap_err().to_string();
    assert!(e.contains("not finite") && e.contains("rolled back"), "{e}");
    assert_eq!((l.store().len(), l.learned()), (stored, learned));
    assert!(
        l.store().find_label("blue").unwrap().is_none(),
        "no label left"
    );
    assert!(all_finite(&mut l, &red), "rolled back");

    // A checkpoint meets them: nothing is saved.
    l.learn_tokens(&red, "red").unwrap();
    let e = l.checkpoint().unwrap_err().to_string();
    assert!(e.contains("nothing was saved"), "{e}");
    assert_eq!(std::fs::read(&tuned).unwrap(), saved);
    assert!(all_finite(&mut l, &red));

    // A prediction meets them: it is made with the checkpoint's weights.
    l.learn_tokens(&red, "red").unwrap();
    assert!(all_finite(&mut l, &red));
    drop(l);
    assert_eq!(std::fs::read(&tuned).unwrap(), saved, "never saved");

    // A learn that checkpoints: refused, yet its sample is stored and counted, as said.
    cfg.checkpoint_every = 1;
    let mut l = Learner::open("tiny-clip", dir.path(), cfg.clone()).unwrap();
    let learned = l.learned();
    let e = l.learn_tokens(&red, "red").unwrap_err().to_string();
    assert!(e.contains("kept in the store and counted"), "{e}");
    assert_eq!(l.learned(), learned + 1);
    drop(l);
    assert_eq!(std::fs::read(&tuned).unwrap(), saved, "never saved");
    let l = Learner::open_read_only("tiny-clip", dir.path(), cfg).unwrap();
    assert_eq!(l.learned(), learned + 1, "the counter was saved");
}

/// A step that makes the "other" bias alone infinite leaves the embeddings finite: the next
/// sample's probe still meets it through its loss, and refuses the sample before the store.
#[test]
fn an_infinite_other_bias_alone_is_met_by_the_next_probe() {
    let dir = tempfile::tempdir().unwrap();
    let red = tiny_tokens("red_square.png");
    let mut cfg = config();
    cfg.checkpoint_every = 0;
    let mut l = Learner::open("tiny-clip", dir.path(), cfg.clone()).unwrap();
    l.learn_tokens(&red, "red").unwrap();
    l.checkpoint().unwrap();
    drop(l);
    poison(dir.path(), |state| {
        state.optim.m_bias = f32::MAX;
        state.optim.v_bias = 0.0;
    });
    let mut l = Learner::open("tiny-clip", dir.path(), cfg).unwrap();
    l.learn_tokens(&red, "red").unwrap();
    let (stored, learned) = (l.store().len(), l.learned());
    let e = l.learn_tokens(&red, "blue").unwrap_err().to_string();
    assert!(e.contains("not finite") && e.contains("rolled back"), "{e}");
    assert_eq!((l.store().len(), l.learned()), (stored, learned));
    assert!(l.store().find_label("blue").unwrap().is_none());
}

/// Hyper-parameters that can make the weights non-finite are refused before anything is
/// created.
#[test]
fn training_settings_that_can_diverge_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let at = dir.path().join("never");
    type Set = fn(&mut TrainConfig);
    let cases: [(&str, Set); 10] = [
        ("logit scale", |t| t.logit_scale = 0.0),
        ("\"other\" term", |t| t.beta_other = -1.0),
        ("\"other\" term", |t| t.beta_other = f32::INFINITY),
        ("weight decay", |t| t.weight_decay = f32::NAN),
        ("weight decay", |t| t.weight_decay = 1e9),
        ("weight decay", |t| {
            // A step that would multiply the weights by 1 − lr·wd = 0.
            t.lr = 0.5;
            t.weight_decay = 2.0;
        }),
        ("beta1", |t| t.beta1 = 1.0),
        ("beta2", |t| t.beta2 = f32::INFINITY),
        ("epsilon", |t| t.eps = 0.0),
        ("logit scale", |t| t.logit_scale = 1e30),
    ];
    for (what, set) in cases {
        let mut cfg = config();
        set(&mut cfg.train);
        let e = Learner::open("tiny-clip", &at, cfg)
            .unwrap_err()
            .to_string();
        assert!(e.contains(what), "{what}: {e}");
        assert!(!at.exists(), "{what}: nothing is created");
    }
}

/// The tuned model's embeddings (what the simulator's tuned baseline reads): a unit row per
/// image; the original model's until the first step; after it, the embeddings whose label
/// softmax is what `TunedOnly` predicts. Pictures predict as their tokens do.
#[test]
fn tuned_embeddings_are_the_tuned_models() {
    use anytime_runtime::predict::{zero_shot_probs, LOGIT_SCALE};
    let dir = tempfile::tempdir().unwrap();
    let mut learner = Learner::open("tiny-clip", dir.path(), config()).unwrap();
    let square = tiny_tokens("red_square.png");
    let tokens = [square.clone(), tiny_tokens("green_circle.png")].concat();
    let original = Predictor::load("tiny-clip")
        .unwrap()
        .embed(&tokens)
        .unwrap();
    for bad in [&[][..], &square[1..], &tokens[..square.len() + 1]] {
        assert!(
            matches!(learner.tuned_embeddings(bad), Err(LearnError::Predict(_))),
            "{} values",
            bad.len()
        );
    }
    let before = learner.tuned_embeddings(&tokens).unwrap();
    anytime_testkit::assert_close("before a step", &before, &original, 1e-5, 1e-5);
    for _ in 0..5 {
        learner.learn_tokens(&square, "alpha").unwrap();
    }
    let after = learner.tuned_embeddings(&tokens).unwrap();
    assert_eq!(after.len(), original.len());
    let e = after.len() / 2;
    for row in after.chunks(e) {
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!(close(norm, 1.0, 1e-4, 0.0), "{norm}");
    }
    assert!(anytime_testkit::max_abs_diff(&after, &original) > 1e-4);
    let set = learner.label_set(&["alpha", "beta"]).unwrap();
    let tuned = learner
        .predict_tokens(&tokens, &set, Mixing::TunedOnly)
        .unwrap();
    for (row, p) in after.chunks(e).zip(&tuned) {
        let want = zero_shot_probs(row, &set.text, LOGIT_SCALE);
        anytime_testkit::assert_close("TunedOnly", &p.probs, &want, 1e-5, 1e-4);
    }
    // Pictures go through the same encoder to the same answer as their tokens.
    let image = load_image(&bundled_models_dir().join("tiny-clip/images/red_square.png")).unwrap();
    let from_image = learner.predict_images(&[image], &set, Mixing::Ocw).unwrap();
    let from_tokens = learner.predict_tokens(&square, &set, Mixing::Ocw).unwrap();
    assert_eq!(from_image.len(), 1);
    assert_eq!(from_image[0].ranked, from_tokens[0].ranked);
}
