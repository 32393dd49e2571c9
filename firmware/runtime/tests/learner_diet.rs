//! SPEC §8 on the learner: the budget of a time step is spent when it ends, never more
//! than `S` steps; unlabelled samples are never written and are gone when their time step
//! ends; a reopened diet learner continues its count and masked-token state.
use anytime_runtime::assets::bundled_models_dir;
use anytime_runtime::encoder::load_image;
use anytime_runtime::learner::{
    DietConfig, DietRecord, LearnError, Learner, LearnerConfig, Mixing, TimeWindow,
};
use anytime_runtime::predict::Predictor;
use anytime_runtime::train::{load_tuned, BackendChoice};

fn config(diet: DietConfig) -> LearnerConfig {
    let mut cfg = LearnerConfig {
        store_capacity: 1 << 20,
        backend: BackendChoice::Cpu,
        diet: Some(diet),
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

/// A distinct unlabelled token set: the red square's tokens shifted by `i`.
fn unlabelled(base: &[f32], i: usize) -> Vec<f32> {
    base.iter()
        .enumerate()
        .map(|(j, v)| v + 0.01 * ((i * 7 + j) % 13) as f32 + 0.37)
        .collect()
}

/// The optimiser step of the saved tuned weights.
fn saved_step(dir: &std::path::Path) -> u64 {
    let dims = anytime_runtime::assets::ModelAssets::find("tiny-clip")
        .unwrap()
        .dims()
        .block();
    let (state, _, _) = load_tuned(&dir.join("tuned.safetensors"), &dims).unwrap();
    state.optim.step
}

#[test]
fn a_time_step_spends_at_most_its_budget_and_only_when_it_ends() {
    let dir = tempfile::tempdir().unwrap();
    let diet = DietConfig::new(7, 3, TimeWindow::Samples(6));
    let mut l = Learner::open("tiny-clip", dir.path(), config(diet)).unwrap();
    let red = tiny_tokens("red_square.png");
    let green = tiny_tokens("green_circle.png");
    let mut steps_before = 0;
    for t in 0..3u64 {
        // Five arrivals: nothing trains, nothing ends.
        let r = l.learn_tokens(&red, "red").unwrap();
        assert_eq!((r.batch, r.time_step.is_some()), (0, false));
        l.learn_tokens(&green, "green").unwrap();
        for i in 0..3 {
            let u = l.observe_unlabelled(&unlabelled(&red, i)).unwrap();
            assert!(u.time_step.is_none() && !u.dropped);
            assert_eq!(u.held, i + 1);
        }
        let status = l.diet_status().unwrap();
        assert_eq!(
            (status.arrivals, status.labelled, status.unlabelled),
            (5, 2, 3)
        );
        assert_eq!(status.time_steps, t);
        // The sixth ends the time step and spends its budget.
        let u = l.observe_unlabelled(&unlabelled(&green, 9)).unwrap();
        let report = u.time_step.expect("the sixth arrival ends the time step");
        assert_eq!(report.index, t);
        assert_eq!(
            (report.labelled, report.unlabelled, report.arrivals),
            (2, 4, 6)
        );
        let b = report.budget;
        assert_eq!((b.total, b.planned, b.used), (7, 7, 7), "{b:?}");
        // Below S* = 3 one step of each loss; the 4 beyond are L_b at 0.1× the rate.
        assert_eq!(
            (b.current, b.masked, b.balanced, b.reduced_lr),
            (1, 1, 5, 4)
        );
        assert!(report.loss_current.unwrap().is_finite());
        assert!(report.loss_masked.unwrap().is_finite());
        assert!(report.loss_balanced.unwrap().is_finite());
        let mut labels = report.labels.clone();
        labels.sort();
        assert_eq!(labels, ["green", "red"]);
        // Counted on the optimiser itself: exactly the spent steps, no more.
        let steps = saved_step(dir.path());
        assert_eq!(steps - steps_before, 7, "time step {t}");
        steps_before = steps;
        let status = l.diet_status().unwrap();
        assert_eq!(
            (status.arrivals, status.labelled, status.unlabelled),
            (0, 0, 0)
        );
        assert_eq!(status.time_steps, t + 1);
    }
    assert_eq!(l.learned(), 6);
    assert_eq!(l.store().len(), 6, "labelled samples are stored as ever");
}

#[test]
fn a_time_step_without_stored_data_spends_only_below_s_star() {
    let dir = tempfile::tempdir().unwrap();
    let diet = DietConfig::new(10, 4, TimeWindow::Manual);
    let mut l = Learner::open("tiny-clip", dir.path(), config(diet)).unwrap();
    let red = tiny_tokens("red_square.png");
    for i in 0..3 {
        l.observe_unlabelled(&unlabelled(&red, i)).unwrap();
    }
    let r = l.end_time_step().unwrap();
    let b = r.budget;
    assert_eq!(
        (b.total, b.planned, b.used, b.masked),
        (10, 4, 4, 4),
        "{b:?}"
    );
    assert_eq!(saved_step(dir.path()), 4);
    // An empty time step spends nothing and still counts.
    let r = l.end_time_step().unwrap();
    assert_eq!((r.budget.used, r.index), (0, 1));
}

/// Every file of the learner folder, as bytes.
fn folder_bytes(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| (p.display().to_string(), std::fs::read(&p).unwrap()))
        .collect()
}

fn holds(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn unlabelled_samples_are_never_written_and_gone_after_their_time_step() {
    let dir = tempfile::tempdir().unwrap();
    let diet = DietConfig::new(6, 6, TimeWindow::Samples(4));
    let mut l = Learner::open("tiny-clip", dir.path(), config(diet)).unwrap();
    let red = tiny_tokens("red_square.png");
    l.learn_tokens(&red, "red").unwrap();
    let secret: Vec<Vec<f32>> = (0..3).map(|i| unlabelled(&red, 100 + i)).collect();
    for s in &secret {
        l.observe_unlabelled(s).unwrap();
    }
    assert_eq!(
        l.diet_status().unwrap().time_steps,
        1,
        "the 4th arrival ended it"
    );
    assert_eq!(l.diet_status().unwrap().unlabelled, 0);
    // Any 8 consecutive values of a secret sample, in the f32 bytes they would be
    // written as, appear in no file of the folder.
    for s in &secret {
        for at in [0, s.len() / 2, s.len() - 8] {
            let needle: Vec<u8> = s[at..at + 8].iter().flat_map(|v| v.to_le_bytes()).collect();
            for (name, bytes) in folder_bytes(dir.path()) {
                assert!(
                    !holds(&bytes, &needle),
                    "{name} holds an unlabelled sample's bytes"
                );
            }
        }
    }
    // A restart in the middle of a time step loses its unlabelled samples.
    l.observe_unlabelled(&secret[0]).unwrap();
    assert_eq!(l.diet_status().unwrap().unlabelled, 1);
    drop(l);
    let l = Learner::open("tiny-clip", dir.path(), config(diet)).unwrap();
    let s = l.diet_status().unwrap();
    assert_eq!((s.unlabelled, s.arrivals, s.time_steps), (0, 0, 1));
}

#[test]
fn a_reopened_diet_learner_continues_its_count_and_masked_state() {
    let dir = tempfile::tempdir().unwrap();
    let diet = DietConfig::new(4, 4, TimeWindow::Manual);
    let red = tiny_tokens("red_square.png");
    let masked = {
        let mut l = Learner::open("tiny-clip", dir.path(), config(diet)).unwrap();
        for _ in 0..2 {
            l.learn_tokens(&red, "red").unwrap();
            l.observe_unlabelled(&unlabelled(&red, 1)).unwrap();
            l.end_time_step().unwrap();
        }
        std::fs::read(dir.path().join("masked.bin")).unwrap()
    };
    let record = DietRecord::read(dir.path()).unwrap().unwrap();
    assert_eq!(record.time_steps, 2);
    assert_eq!(record.config, diet);
    assert_eq!(record.last.as_ref().unwrap().index, 1);
    let mut l = Learner::open("tiny-clip", dir.path(), config(diet)).unwrap();
    assert_eq!(l.diet_status().unwrap().time_steps, 2);
    assert_eq!(l.diet_status().unwrap().last, record.last);
    l.observe_unlabelled(&unlabelled(&red, 2)).unwrap();
    let r = l.end_time_step().unwrap();
    assert_eq!(r.index, 2);
    assert!(r.budget.masked > 0);
    let after = std::fs::read(dir.path().join("masked.bin")).unwrap();
    assert_eq!(after.len(), masked.len());
    assert_ne!(
        after, masked,
        "L_r's head kept training from the saved state"
    );
    // A damaged masked-token state is refused, not replaced.
    drop(l);
    let mut bad = after.clone();
    bad.truncate(bad.len() - 3);
    std::fs::write(dir.path().join("masked.bin"), &bad).unwrap();
    let e = Learner::open("tiny-clip", dir.path(), config(diet)).unwrap_err();
    assert!(matches!(e, LearnError::State { .. }), "{e}");
}

#[test]
fn a_wall_clock_window_ends_at_the_next_arrival_or_poll() {
    let dir = tempfile::tempdir().unwrap();
    let diet = DietConfig::new(2, 2, TimeWindow::Seconds(0.05));
    let mut l = Learner::open("tiny-clip", dir.path(), config(diet)).unwrap();
    let red = tiny_tokens("red_square.png");
    assert!(l.poll_time_step().unwrap().is_none(), "nothing arrived yet");
    l.observe_unlabelled(&unlabelled(&red, 0)).unwrap();
    assert!(
        l.poll_time_step().unwrap().is_none(),
        "the window is still open"
    );
    std::thread::sleep(std::time::Duration::from_millis(80));
    let r = l.poll_time_step().unwrap().expect("the window ran out");
    assert_eq!((r.index, r.unlabelled, r.budget.used), (0, 1, 2));
    // An arrival after the window ends the old time step first; it opens the next.
    l.observe_unlabelled(&unlabelled(&red, 1)).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(80));
    let report = l.learn_tokens(&red, "red").unwrap();
    let ended = report.time_step.expect("the old time step ended first");
    assert_eq!((ended.index, ended.unlabelled, ended.labelled), (1, 1, 0));
    let s = l.diet_status().unwrap();
    assert_eq!((s.arrivals, s.labelled, s.unlabelled), (1, 1, 0));
}

#[test]
fn diet_settings_and_unlabelled_samples_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    for bad in [
        DietConfig::new(4, 2, TimeWindow::Samples(0)),
        DietConfig::new(4, 2, TimeWindow::Seconds(f64::NAN)),
        DietConfig::new(4, 2, TimeWindow::Seconds(-1.0)),
        DietConfig {
            batch: 0,
            ..DietConfig::new(4, 2, TimeWindow::Manual)
        },
        DietConfig::new(u32::MAX, 2, TimeWindow::Manual),
    ] {
        let e = Learner::open("tiny-clip", dir.path(), config(bad)).unwrap_err();
        assert!(e.to_string().contains("diet"), "{e}");
    }
    let red = tiny_tokens("red_square.png");
    // Not a diet learner: unlabelled samples and time steps are refused.
    let mut plain_cfg = config(DietConfig::new(1, 1, TimeWindow::Manual));
    plain_cfg.diet = None;
    let plain_dir = tempfile::tempdir().unwrap();
    let mut plain = Learner::open("tiny-clip", plain_dir.path(), plain_cfg).unwrap();
    assert!(plain.observe_unlabelled(&red).is_err());
    assert!(plain.end_time_step().is_err());
    assert!(plain.diet_status().is_none());
    assert_eq!(plain.learn_tokens(&red, "red").unwrap().time_step, None);

    let mut l = Learner::open(
        "tiny-clip",
        dir.path(),
        config(DietConfig::new(2, 2, TimeWindow::Samples(2))),
    )
    .unwrap();
    let mut nan = red.clone();
    nan[3] = f32::NAN;
    assert!(l.observe_unlabelled(&nan).is_err());
    assert!(l.observe_unlabelled(&red[1..]).is_err());
    let s = l.diet_status().unwrap();
    assert_eq!(
        (s.arrivals, s.unlabelled),
        (0, 0),
        "refused samples do not count"
    );
    // A full buffer drops the oldest and says so.
    let small = DietConfig {
        unlabelled_capacity: 2,
        ..DietConfig::new(2, 2, TimeWindow::Manual)
    };
    let dir2 = tempfile::tempdir().unwrap();
    let mut l = Learner::open("tiny-clip", dir2.path(), config(small)).unwrap();
    let drops: Vec<bool> = (0..3)
        .map(|i| l.observe_unlabelled(&unlabelled(&red, i)).unwrap().dropped)
        .collect();
    assert_eq!(drops, [false, false, true]);
    assert_eq!(l.end_time_step().unwrap().dropped, 1);
    // So does the labelled one (for L_m only: its samples stay in the store); at capacity
    // 0 it holds none.
    for (capacity, dropped) in [(0, 2u64), (1, 1)] {
        let small = DietConfig {
            labelled_capacity: capacity,
            ..DietConfig::new(2, 2, TimeWindow::Manual)
        };
        let dir = tempfile::tempdir().unwrap();
        let mut l = Learner::open("tiny-clip", dir.path(), config(small)).unwrap();
        l.learn_tokens(&red, "red").unwrap();
        l.learn_tokens(&red, "red").unwrap();
        let r = l.end_time_step().unwrap();
        assert_eq!((r.labelled, r.dropped), (capacity, dropped), "{capacity}");
        assert_eq!(l.store().len(), 2);
    }
}

#[test]
fn a_diet_learner_learns_a_label_from_its_time_steps() {
    // The label the original model does not pick for the red square, learned with one
    // labelled sample a time step and a budget of 12 steps.
    let dir = tempfile::tempdir().unwrap();
    let diet = DietConfig::new(12, 12, TimeWindow::Samples(3));
    let mut l = Learner::open("tiny-clip", dir.path(), config(diet)).unwrap();
    let red = tiny_tokens("red_square.png");
    let green = tiny_tokens("green_circle.png");
    let pair = l.label_set(&["alpha", "beta"]).unwrap();
    let zero = l.predict_tokens(&red, &pair, Mixing::OriginalOnly).unwrap()[0].best();
    let (taught, other) = (&pair.labels[1 - zero], &pair.labels[zero]);
    let mut correct = Vec::new();
    for i in 0..4 {
        l.learn_tokens(&green, other).unwrap();
        let r = l.learn_tokens(&red, taught).unwrap();
        correct.push(r.tuned_correct);
        let u = l.observe_unlabelled(&unlabelled(&green, i)).unwrap();
        let step = u.time_step.expect("the third arrival ends the time step");
        // L_m's labels in order of arrival, and each loss's mean over its steps.
        assert_eq!(step.labels, [other.clone(), taught.clone()]);
        for loss in [step.loss_current, step.loss_masked, step.loss_balanced] {
            assert!(loss.is_some_and(|l| l > 0.0 && l.is_finite()), "{step:?}");
        }
    }
    assert!(!correct[0], "the tuned model starts as the original");
    let p = l.predict_tokens(&red, &pair, Mixing::TunedOnly).unwrap();
    assert_eq!(&pair.labels[p[0].best()], taught, "{:?}", p[0].probs);
    assert!(p[0].probs[p[0].best()] > 0.6, "{:?}", p[0].probs);
}

/// A time step of every loss on the wgpu backend spends the same budget with the same
/// losses as on the CPU. Skips without an adapter, unless `ANYTIME_EDGE_REQUIRE_GPU` is set
/// (as CI sets it).
#[cfg(feature = "gpu")]
#[test]
fn a_diet_time_step_on_wgpu_matches_the_cpu() {
    use anytime_runtime::train::TrainError;
    let red = tiny_tokens("red_square.png");
    let green = tiny_tokens("green_circle.png");
    let run = |backend: BackendChoice| {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(DietConfig::new(6, 3, TimeWindow::Manual));
        cfg.backend = backend;
        let mut l = Learner::open("tiny-clip", dir.path(), cfg)?;
        l.training()?;
        let mut reports = Vec::new();
        for t in 0..2 {
            l.learn_tokens(&red, "red")?;
            l.learn_tokens(&green, "green")?;
            for i in 0..3 {
                l.observe_unlabelled(&unlabelled(&green, 10 * t + i))?;
            }
            reports.push(l.end_time_step()?);
        }
        Ok::<_, LearnError>(reports)
    };
    let cpu = run(BackendChoice::Cpu).unwrap();
    let gpu = match run(BackendChoice::Gpu) {
        Ok(r) => r,
        Err(LearnError::Train(TrainError::NoAdapter)) => {
            return anytime_testkit::skip::gpu_absent("a_diet_time_step_on_wgpu_matches_the_cpu")
        }
        Err(e) => panic!("GPU backend: {e}"),
    };
    for (c, g) in cpu.iter().zip(&gpu) {
        assert_eq!(c.budget, g.budget);
        assert_eq!(c.budget.masked, 1);
        for (what, a, b) in [
            ("L_m", c.loss_current, g.loss_current),
            ("L_r", c.loss_masked, g.loss_masked),
            ("L_b", c.loss_balanced, g.loss_balanced),
        ] {
            let (a, b) = (a.unwrap(), b.unwrap());
            assert!(
                anytime_testkit::close(a, b, 1e-4, 1e-3),
                "{what} of time step {}: cpu {a}, wgpu {b}",
                c.index
            );
        }
    }
}
