//! `anytime-edge demo`: the product in one command, on the model's bundled pictures.
//!
//! Zero-shot prediction of every picture in `<model>/images/` over the labels they are
//! named after (`<label>_<n>.png`), then one update per picture of `<model>/images/learn/`
//! in a fresh learner (in stream order: every label's first picture, then the second, …),
//! then prediction again with the learner (OCW mixing). Prints one
//! line per label, before and after, so that what changed shows at a glance.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use anytime_runtime::assets::ModelAssets;
use anytime_runtime::encoder::{load_image, DynamicImage};
use anytime_runtime::learner::Mixing;
use anytime_runtime::predict::{Prediction, Predictor};

use super::LearnerArgs;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Model name or folder; its `images/` holds the pictures.
    #[arg(long, env = super::MODEL_ENV, default_value = super::DEFAULT_MODEL)]
    model: String,
    /// Learner folder to create (default: a new temporary folder, removed afterwards).
    #[arg(long)]
    state: Option<PathBuf>,
    /// Train on the CPU even when a GPU adapter exists.
    #[arg(long, conflicts_with = "gpu")]
    cpu: bool,
    /// Train with wgpu on any GPU adapter, a software one included.
    #[arg(long)]
    gpu: bool,
    /// Training steps per learned picture: the picture's own (SPEC §4), then `steps − 1`
    /// on class-balanced stored pictures alone.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    steps: u32,
}

/// A picture and the label it is named after.
struct Picture {
    name: String,
    label: String,
    image: DynamicImage,
}

/// The label of a file stem `<label>` or `<label>_<n>`.
fn picture_label(stem: &str) -> &str {
    match stem.rsplit_once('_') {
        Some((base, n))
            if !base.is_empty() && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) =>
        {
            base
        }
        _ => stem,
    }
}

/// The `<n>` of a file name `<label>_<n>.<ext>` (0 when it has none).
fn picture_number(name: &str) -> u32 {
    let stem = name.rsplit_once('.').map_or(name, |(s, _)| s);
    stem.rsplit_once('_')
        .and_then(|(_, n)| n.parse().ok())
        .unwrap_or(0)
}

/// The PNG/JPEG pictures directly in `dir`, sorted by file name.
fn pictures(dir: &Path) -> Result<Vec<Picture>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .collect::<std::io::Result<Vec<_>>>()
        .with_context(|| format!("reading {}", dir.display()))?
        .into_iter()
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| matches!(e, "png" | "jpg" | "jpeg"))
        })
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let stem = p.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
            Ok(Picture {
                name: p
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                label: picture_label(stem).replace('_', " "),
                image: load_image(&p)?,
            })
        })
        .collect()
}

/// An answer: the best label, and the probability given to the picture's own label.
struct Answer {
    best: String,
    p_own: f32,
}

fn answers(preds: Vec<Prediction>, pics: &[Picture]) -> Vec<Answer> {
    preds
        .into_iter()
        .zip(pics)
        .map(|(p, pic)| Answer {
            best: p.ranked[0].0.clone(),
            p_own: p
                .ranked
                .iter()
                .find(|(l, _)| *l == pic.label)
                .map_or(0.0, |(_, v)| *v),
        })
        .collect()
}

/// Per label: right, total, wrong answers, summed probability of the own label.
#[derive(Default)]
struct Row {
    right: usize,
    n: usize,
    wrong: Vec<String>,
    p_own: f32,
}

type Tally = BTreeMap<String, Row>;

fn tally(pics: &[Picture], answers: &[Answer]) -> Tally {
    let mut t = Tally::new();
    for (p, a) in pics.iter().zip(answers) {
        let e = t.entry(p.label.clone()).or_default();
        e.n += 1;
        e.p_own += a.p_own;
        if a.best == p.label {
            e.right += 1;
        } else {
            e.wrong.push(a.best.clone());
        }
    }
    t
}

fn total(t: &Tally) -> (usize, usize) {
    t.values().fold((0, 0), |(r, n), v| (r + v.right, n + v.n))
}

pub fn run(a: Args) -> Result<()> {
    let assets = ModelAssets::find(&a.model).with_context(|| format!("model `{}`", a.model))?;
    let dir = assets.dir.join("images");
    let test = pictures(&dir)?;
    let mut learn = pictures(&dir.join("learn")).unwrap_or_default();
    // As a stream would bring them: the first picture of each label, then the second, …
    learn.sort_by_cached_key(|p| (picture_number(&p.name), p.label.clone()));
    ensure!(
        !test.is_empty(),
        "{} holds no pictures named <label>_<n>.png",
        dir.display()
    );
    ensure!(
        !learn.is_empty(),
        "{} holds no pictures to learn from",
        dir.join("learn").display()
    );
    let mut labels: Vec<String> = test.iter().map(|p| p.label.clone()).collect();
    labels.sort();
    labels.dedup();
    let learned: Vec<String> = {
        let mut l: Vec<String> = learn.iter().map(|p| p.label.clone()).collect();
        l.sort();
        l.dedup();
        l
    };
    println!(
        "anytime-edge demo: model `{}`, {} pictures of {} labels in {}",
        assets.manifest.name,
        test.len(),
        labels.len(),
        dir.display()
    );
    println!("labels asked for: {}\n", labels.join(", "));

    let images: Vec<DynamicImage> = test.iter().map(|p| p.image.clone()).collect();
    let predictor = Predictor::from_assets(&assets)?;
    let set = predictor.label_set(&labels)?;
    let before = answers(predictor.predict(&images, &set)?, &test);

    let tmp;
    let state = match &a.state {
        Some(s) => {
            if s.exists() {
                bail!(
                    "{} exists: the demo starts from a new learner folder",
                    s.display()
                );
            }
            s.clone()
        }
        None => {
            tmp = TempDir::new()?;
            tmp.0.clone()
        }
    };
    let args = LearnerArgs {
        model: a.model.clone(),
        state,
        capacity: 16 << 20,
        checkpoint_every: 0,
        cpu: a.cpu,
        gpu: a.gpu,
        lr: None,
        budget: None,
        s_star: None,
        time_step_samples: None,
        time_step_seconds: None,
        private: false,
        consolidate_every: 0,
        private_replay: super::ReplayArg::Restyle,
    };
    let (mut learner, training) = args.open_to_train()?;
    let t = Instant::now();
    for p in &learn {
        learner
            .learn_image_in(&p.image, &p.label, &labels)
            .with_context(|| format!("learning {}", p.name))?;
        learner.rehearse(a.steps.saturating_sub(1), &labels)?;
    }
    let learn_s = t.elapsed().as_secs_f64();
    learner.checkpoint()?;
    let set = learner.label_set(&labels)?;
    let after = answers(learner.predict_images(&images, &set, Mixing::Ocw)?, &test);

    let (tb, ta) = (tally(&test, &before), tally(&test, &after));
    println!("before:   zero-shot (the frozen CLIP alone, nothing learned)");
    println!(
        "learning: {} pictures of {} from {}, {} each ({:.2} s; {training})",
        learn.len(),
        learned.join(", "),
        dir.join("learn").display(),
        match a.steps {
            1 => "one training step".to_string(),
            n => format!("{n} training steps"),
        },
        learn_s,
    );
    println!("after:    the learner (tuned last block mixed in by OCW)");
    println!("p(own label): the mean probability given to the pictures' own label");
    println!(
        "\n  {:<12} {:>8}   {:>8}   {:>13}",
        "label", "before", "after", "p(own label)"
    );
    for (label, b) in &tb {
        let a = &ta[label];
        let mark = if learned.contains(label) {
            "  ← learned"
        } else {
            ""
        };
        let says = |w: &Vec<String>| format!(" (said {})", w.join(", "));
        println!(
            "  {label:<12} {:>8}   {:>8}   {:>5.2} → {:<5.2}{mark}{}",
            format!("{}/{}", b.right, b.n),
            format!("{}/{}", a.right, a.n),
            b.p_own / b.n as f32,
            a.p_own / a.n as f32,
            if a.right < a.n {
                says(&a.wrong)
            } else if b.right < b.n && learned.contains(label) {
                format!(" (before: said {})", b.wrong.join(", "))
            } else {
                String::new()
            }
        );
    }
    let ((rb, n), (ra, _)) = (total(&tb), total(&ta));
    println!("\n  right: {rb}/{n} before, {ra}/{n} after");
    Ok(())
}

/// A folder removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<Self> {
        let base = std::env::temp_dir();
        for i in 0..1000u32 {
            let p = base.join(format!("anytime-edge-demo-{}-{i}", std::process::id()));
            if std::fs::create_dir(&p).is_ok() {
                return Ok(Self(p.join("learner")));
            }
        }
        bail!("cannot create a temporary folder in {}", base.display())
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Some(parent) = self.0.parent() {
            let _ = std::fs::remove_dir_all(parent);
        }
    }
}
