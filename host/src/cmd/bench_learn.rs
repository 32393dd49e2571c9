//! `bench-learn`: a user's learn and predict requests end to end, through the code path
//! `serve` runs (issue 17), split by phase.
//!
//! Per picture of `--images` (a folder of `<label>_<n>.png`, the mini-CLIP's bundled demo
//! pictures by default), in order, for `--rounds` passes: a **predict** request over every
//! label of the folder (decode the file, the label set's text embeddings, the trunk, the
//! original and tuned blocks and the mixing) and then a **learn** request of its label
//! (decode, trunk, and [`Learner::learn_tokens_in`]'s phases: the training labels' text
//! embeddings, the OCW probe, compress, append, replay decode, the step, persist). The
//! learner is a fresh one in a temporary folder, durable as on a device. Medians per phase;
//! the first `--warmup` pictures are not counted. Prints a table per backend and writes
//! `target/bench/learn.json`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use anytime_runtime::assets::ModelAssets;
use anytime_runtime::encoder::load_image;
use anytime_runtime::learner::{Learner, LearnerConfig, Mixing};
use anytime_runtime::predict::{LabelSet, Predictor};
use anytime_runtime::train::BackendChoice;
use serde_json::{json, Value};

use super::{bench_out, median};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Model name or path.
    #[arg(long, default_value = "mini-clip")]
    model: String,
    /// Folder of `<label>_<n>.png` pictures (default: the mini-CLIP's demo pictures).
    #[arg(long)]
    images: Option<PathBuf>,
    /// Passes over the pictures.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Requests of each kind not counted at the start (plans, caches, page faults).
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Also run the wgpu backend (on any adapter, a software one included).
    #[arg(long)]
    gpu: bool,
}

const LEARN_PHASES: [&str; 10] = [
    "decode",
    "trunk",
    "text",
    "probe",
    "compress",
    "store",
    "replay decode",
    "step",
    "persist",
    "total",
];
const PREDICT_PHASES: [&str; 5] = ["decode", "text", "trunk", "blocks + mixing", "total"];

/// The pictures of `dir` and their labels (the file name before its last `_`).
fn pictures(dir: &Path) -> Result<Vec<(PathBuf, String)>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "png") {
            let stem = p.file_stem().unwrap_or_default().to_string_lossy();
            if let Some((label, _)) = stem.rsplit_once('_') {
                out.push((p.clone(), label.to_owned()));
            }
        }
    }
    out.sort();
    ensure!(
        out.len() >= 2,
        "{} holds fewer than 2 `<label>_<n>.png` pictures",
        dir.display()
    );
    Ok(out)
}

/// One backend's run: per phase, the median milliseconds of learn and of predict.
fn run_backend(
    a: &Args,
    assets: &ModelAssets,
    pics: &[(PathBuf, String)],
    backend: BackendChoice,
) -> Result<(String, Vec<f64>, Vec<f64>)> {
    let tmp = tempfile::tempdir()?;
    let mut cfg = LearnerConfig {
        backend,
        ..LearnerConfig::default()
    };
    if let Some(lr) = assets.manifest.learner.lr {
        cfg.train.lr = lr;
    }
    let predictor = Predictor::from_assets(assets)?;
    let mut learner = Learner::with_predictor(predictor, assets, tmp.path(), cfg)?;
    let chosen = learner.training()?.backend;
    let encoder = learner.encoder();
    let mut labels: Vec<String> = pics.iter().map(|(_, l)| l.clone()).collect();
    labels.sort();
    labels.dedup();
    let mut learn: Vec<Vec<f64>> = vec![Vec::new(); LEARN_PHASES.len()];
    let mut predict: Vec<Vec<f64>> = vec![Vec::new(); PREDICT_PHASES.len()];
    let mut n = 0usize;
    for _ in 0..a.rounds {
        for (path, label) in pics {
            let counted = n >= a.warmup;
            n += 1;
            // predict
            let t0 = Instant::now();
            let img = load_image(path)?;
            let t_decode = t0.elapsed().as_secs_f64();
            let t = Instant::now();
            let set = LabelSet::embed(&encoder, &labels)?;
            let t_text = t.elapsed().as_secs_f64();
            let t = Instant::now();
            let tokens = encoder.encode_images(std::slice::from_ref(&img))?;
            let t_trunk = t.elapsed().as_secs_f64();
            let t = Instant::now();
            let p = learner.predict_tokens(&tokens, &set, Mixing::Ocw)?;
            let t_blocks = t.elapsed().as_secs_f64();
            ensure!(p.len() == 1, "one prediction");
            if counted {
                let total = t0.elapsed().as_secs_f64();
                for (v, x) in predict
                    .iter_mut()
                    .zip([t_decode, t_text, t_trunk, t_blocks, total])
                {
                    v.push(1e3 * x);
                }
            }
            // learn
            let t0 = Instant::now();
            let img = load_image(path)?;
            let t_decode = t0.elapsed().as_secs_f64();
            let t = Instant::now();
            let tokens = encoder.encode_images(std::slice::from_ref(&img))?;
            let t_trunk = t.elapsed().as_secs_f64();
            let r = learner.learn_tokens_in(&tokens, label, &[] as &[&str])?;
            let total = t0.elapsed().as_secs_f64();
            let s = r.timings;
            if counted {
                for (v, x) in learn.iter_mut().zip([
                    t_decode,
                    t_trunk,
                    s.text,
                    s.probe,
                    s.compress,
                    s.store,
                    s.replay_decode,
                    s.step,
                    s.persist,
                    total,
                ]) {
                    v.push(1e3 * x);
                }
            }
        }
    }
    ensure!(
        !learn[0].is_empty(),
        "no request counted: more pictures × rounds than --warmup"
    );
    Ok((
        chosen.to_owned(),
        learn.iter_mut().map(|v| median(v)).collect(),
        predict.iter_mut().map(|v| median(v)).collect(),
    ))
}

pub fn run(a: Args) -> Result<()> {
    let assets = ModelAssets::find(&a.model)?;
    let dir = a
        .images
        .clone()
        .unwrap_or_else(|| anytime_runtime::assets::bundled_models_dir().join("mini-clip/images"));
    let pics = pictures(&dir)?;
    let dims = assets.dims().block();
    let mut backends = vec![BackendChoice::Cpu];
    if a.gpu {
        backends.push(BackendChoice::Gpu);
    }
    let threads = std::env::var("ANYTIME_EDGE_THREADS").ok();
    let mut runs = Vec::new();
    println!(
        "bench-learn: {} (N = {}, D = {}), {} pictures × {} rounds, first {} not counted; \
         medians in ms",
        a.model,
        dims.tokens,
        dims.width,
        pics.len(),
        a.rounds,
        a.warmup
    );
    for backend in backends {
        let (name, learn, predict) = run_backend(&a, &assets, &pics, backend)?;
        let ratio = learn[LEARN_PHASES.len() - 1] / predict[PREDICT_PHASES.len() - 1];
        println!("\ntraining backend: {name}");
        println!("{:<18} {:>10}", "learn phase", "ms");
        for (p, v) in LEARN_PHASES.iter().zip(&learn) {
            println!("{p:<18} {v:>10.2}");
        }
        println!("{:<18} {:>10}", "predict phase", "ms");
        for (p, v) in PREDICT_PHASES.iter().zip(&predict) {
            println!("{p:<18} {v:>10.2}");
        }
        println!("learn / predict: {ratio:.2} (aim ≤ 1.3)");
        let obj = |names: &[&str], v: &[f64]| -> Value {
            names
                .iter()
                .zip(v)
                .map(|(n, x)| ((*n).to_owned(), json!(x)))
                .collect::<serde_json::Map<_, _>>()
                .into()
        };
        runs.push(json!({
            "backend": name,
            "learn_ms": obj(&LEARN_PHASES, &learn),
            "predict_ms": obj(&PREDICT_PHASES, &predict),
            "learn_over_predict": ratio,
        }));
    }
    let report = json!({
        "model": a.model,
        "tokens": dims.tokens,
        "width": dims.width,
        "pictures": pics.len(),
        "rounds": a.rounds,
        "warmup": a.warmup,
        "encoder_threads": threads,
        "runs": runs,
    });
    let path = bench_out("learn.json", &report)?;
    println!("\nwritten to {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A short run on the tiny model: every phase measured, finite and within the total.
    #[test]
    fn bench_learn_runs_on_the_tiny_model() {
        let dir = anytime_runtime::assets::bundled_models_dir().join("tiny-clip/images");
        let a = Args {
            model: "tiny-clip".into(),
            images: Some(dir.clone()),
            rounds: 1,
            warmup: 1,
            gpu: false,
        };
        let assets = ModelAssets::find(&a.model).unwrap();
        let pics = pictures(&dir).unwrap();
        let (name, learn, predict) = run_backend(&a, &assets, &pics, BackendChoice::Cpu).unwrap();
        assert_eq!(name, "cpu");
        let total = learn[LEARN_PHASES.len() - 1];
        for (p, v) in LEARN_PHASES.iter().zip(&learn) {
            assert!(v.is_finite() && *v >= 0.0 && *v <= total + 1e-9, "{p}: {v}");
        }
        let total = predict[PREDICT_PHASES.len() - 1];
        for (p, v) in PREDICT_PHASES.iter().zip(&predict) {
            assert!(v.is_finite() && *v >= 0.0 && *v <= total + 1e-9, "{p}: {v}");
        }
        assert!(learn[7] > 0.0, "the step is timed");
    }
}
