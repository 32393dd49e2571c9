//! `anytime-edge predict`: ranked labels with probabilities for each image: zero-shot
//! (`P_o`), or with `--state` the learner's OCW mixture (SPEC §2).
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use anytime_runtime::encoder::{load_image, DynamicImage};
use anytime_runtime::learner::{Learner, Mixing};
use anytime_runtime::predict::{LabelSet, Prediction, Predictor};
use anytime_runtime::typicality::threshold_for_rate;
use serde_json::json;

use super::{parse_mixing, LearnerArgs};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Model name (under $ANYTIME_EDGE_ASSETS/models or bundled) or model folder.
    #[arg(long, env = super::MODEL_ENV, default_value = super::DEFAULT_MODEL)]
    model: String,
    /// Learner folder: predict with the tuned model mixed in by OCW (default: zero-shot).
    #[arg(long)]
    state: Option<PathBuf>,
    /// With --state: ocw, ocw-other, ocw-hard, tuned, original, or fixed:A.
    #[arg(long, default_value = "ocw", value_parser = parse_mixing)]
    mixing: Mixing,
    /// With --state: answer "none" when P_t(other|x) exceeds this.
    #[arg(long)]
    none_threshold: Option<f32>,
    /// With --state: answer "none" for an image less typical of its best learned label
    /// than all but this share of the learner's recent new samples were of theirs (e.g.
    /// 0.05: about 5 % of images of learned labels are refused; see BENCHMARKS.md for
    /// how close, and for how many images of unlearned labels it catches).
    #[arg(long, value_parser = parse_rate)]
    none_rate: Option<f32>,
    /// Comma-separated candidate labels, e.g. "cat,dog,car".
    #[arg(long, value_delimiter = ',')]
    labels: Vec<String>,
    /// Labels shown per image (0 = all).
    #[arg(long, default_value_t = 5)]
    top: usize,
    /// One JSON object per image on stdout, for machines.
    #[arg(long)]
    json: bool,
    /// Accepted for scripts written for older builds: prediction never trains, and never
    /// looks for a GPU adapter.
    #[arg(long, hide = true)]
    cpu: bool,
    /// Images to classify.
    #[arg(required = true)]
    images: Vec<PathBuf>,
}

/// Zero-shot or learner-backed prediction.
enum Model {
    ZeroShot(Box<Predictor>),
    Learner(Box<Learner>, Mixing),
}

impl Model {
    fn label_set(&mut self, labels: &[String]) -> Result<LabelSet> {
        Ok(match self {
            Model::ZeroShot(p) => p.label_set(labels)?,
            Model::Learner(l, _) => l.label_set(labels)?,
        })
    }

    fn predict(&mut self, img: DynamicImage, set: &LabelSet) -> Result<Prediction> {
        let imgs = [img];
        let mut out = match self {
            Model::ZeroShot(p) => p.predict(&imgs, set)?,
            Model::Learner(l, mixing) => l.predict_images(&imgs, set, *mixing)?,
        };
        Ok(out.remove(0))
    }
}

pub fn run(a: Args) -> Result<()> {
    let mut model = match &a.state {
        None => Model::ZeroShot(Box::new(
            Predictor::load(&a.model).with_context(|| format!("loading model `{}`", a.model))?,
        )),
        Some(state) => {
            let args = LearnerArgs {
                model: a.model.clone(),
                state: state.clone(),
                capacity: 64 << 20,
                checkpoint_every: 0,
                cpu: a.cpu,
                gpu: false,
                lr: None,
                budget: None,
                s_star: None,
                time_step_samples: None,
                time_step_seconds: None,
                private: false,
                consolidate_every: 0,
                private_replay: super::ReplayArg::Restyle,
            };
            if !state.join("learner.json").is_file() {
                bail!(
                    "{} is not a learner folder (no learner.json)",
                    state.display()
                );
            }
            Model::Learner(Box::new(args.open_to_predict()?), a.mixing)
        }
    };
    let set = model.label_set(&a.labels).context("checking the labels")?;
    let rule = NoneRule::new(a.none_threshold, a.none_rate);
    let mut failed = 0usize;
    for path in &a.images {
        let shown = path.to_string_lossy();
        // An image's error names it; the prediction's is given its name here.
        let result = match load_image(path) {
            Ok(img) => model.predict(img, &set).with_context(|| shown.to_string()),
            Err(e) => Err(e.into()),
        };
        match result {
            Ok(p) => print_prediction(&shown, &p, a.top, &rule, a.json),
            Err(e) => {
                failed += 1;
                if a.json {
                    println!("{}", json!({"image": shown, "error": format!("{e:#}")}));
                } else {
                    eprintln!("error: {e:#}");
                }
            }
        }
    }
    if failed > 0 {
        bail!(
            "{failed} of {} images could not be classified",
            a.images.len()
        );
    }
    Ok(())
}

/// When the answer is "none" (either rule that is set).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoneRule {
    /// `P_t(other|x)` above this.
    pub other_threshold: Option<f32>,
    /// The image's none score (see `anytime_runtime::typicality`) above this.
    pub score_threshold: Option<f32>,
}

impl NoneRule {
    pub fn new(other_threshold: Option<f32>, rate: Option<f32>) -> Self {
        Self {
            other_threshold,
            score_threshold: rate.and_then(threshold_for_rate),
        }
    }
}

/// Parses a share in (0, 1).
pub fn parse_rate(s: &str) -> Result<f32, String> {
    s.parse::<f32>()
        .ok()
        .filter(|r| *r > 0.0 && *r < 1.0)
        .ok_or_else(|| format!("`{s}` is not a share between 0 and 1 (e.g. 0.05)"))
}

/// The answer: the best label, or "none" when the rule says so.
pub fn answer(p: &Prediction, rule: &NoneRule) -> String {
    let other = matches!((p.other, rule.other_threshold), (Some(o), Some(t)) if o > t);
    let atypical = matches!((p.none_score, rule.score_threshold), (Some(s), Some(t)) if s > t);
    if other || atypical {
        "none".to_string()
    } else {
        p.ranked[0].0.clone()
    }
}

fn print_prediction(path: &str, p: &Prediction, top: usize, none: &NoneRule, as_json: bool) {
    let n = if top == 0 {
        p.ranked.len()
    } else {
        top.min(p.ranked.len())
    };
    if as_json {
        println!("{}", prediction_json(path, p, n, none));
    } else {
        let other = p
            .other
            .map(|o| format!(", P(other) {o:.4}"))
            .unwrap_or_default();
        println!("{path}: {} ({} model{other})", answer(p, none), p.model);
        for (label, prob) in &p.ranked[..n] {
            println!("  {prob:>7.4}  {label}");
        }
    }
}

/// The JSON answer for one image (also used by `serve`).
pub fn prediction_json(path: &str, p: &Prediction, n: usize, none: &NoneRule) -> serde_json::Value {
    let ranked: Vec<_> = p.ranked[..n.min(p.ranked.len())]
        .iter()
        .map(|(label, prob)| json!({"label": label, "p": prob}))
        .collect();
    json!({"image": path, "answer": answer(p, none), "model": p.model, "ranked": ranked,
           "other": p.other, "none_score": p.none_score})
}
