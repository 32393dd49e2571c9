pub mod demo;
pub mod learn;
pub mod predict;
pub mod serve;

use std::path::PathBuf;

use anyhow::{Context, Result};
use anytime_runtime::assets::ModelAssets;
use anytime_runtime::learner::{Learner, LearnerConfig, Mixing};

/// The model every command uses unless told otherwise: the best bundled one.
pub const DEFAULT_MODEL: &str = "mini-clip";
/// Names the model when `--model` is not given (before [`DEFAULT_MODEL`]).
pub const MODEL_ENV: &str = "ANYTIME_EDGE_MODEL";

/// Where the learner lives and how it trains (shared by `learn`, `predict --state`, `serve`).
#[derive(clap::Args, Debug, Clone)]
pub struct LearnerArgs {
    /// Model name (under $ANYTIME_EDGE_ASSETS/models or bundled) or model folder.
    #[arg(long, env = MODEL_ENV, default_value = DEFAULT_MODEL)]
    pub model: String,
    /// Learner folder (token store, tuned weights, OCW state); created if missing.
    #[arg(long)]
    pub state: PathBuf,
    /// Bytes of compressed tokens kept on flash.
    #[arg(long, default_value_t = 64 << 20)]
    pub capacity: u64,
    /// Save the tuned weights every this many samples (they are always saved on exit).
    #[arg(long, default_value_t = 20)]
    pub checkpoint_every: u32,
    /// Train on the CPU even when a GPU adapter exists.
    #[arg(long)]
    pub cpu: bool,
    /// Learning rate (default: the model's `[learner] lr`, else SPEC's 9.375e-6 for
    /// ViT-B/32).
    #[arg(long)]
    pub lr: Option<f32>,
}

impl LearnerArgs {
    pub fn open(&self) -> Result<Learner> {
        let mut cfg = LearnerConfig {
            store_capacity: self.capacity,
            checkpoint_every: self.checkpoint_every,
            gpu: !self.cpu,
            ..LearnerConfig::default()
        };
        let model_lr = || -> Result<Option<f32>> {
            let assets = ModelAssets::find(&self.model)
                .with_context(|| format!("finding model `{}`", self.model))?;
            Ok(assets.manifest.learner.lr)
        };
        if let Some(lr) = self.lr.map_or_else(model_lr, |lr| Ok(Some(lr)))? {
            cfg.train.lr = lr;
        }
        let learner = Learner::open(&self.model, &self.state, cfg).with_context(|| {
            format!(
                "opening learner {} for model `{}`",
                self.state.display(),
                self.model
            )
        })?;
        log::info!("training path: {}", learner.backend_name());
        Ok(learner)
    }
}

/// Parses a mixing name.
pub fn parse_mixing(s: &str) -> Result<Mixing, String> {
    match s {
        "ocw" => Ok(Mixing::Ocw),
        "ocw-other" => Ok(Mixing::OcwOther),
        "ocw-hard" => Ok(Mixing::OcwHard),
        "tuned" => Ok(Mixing::TunedOnly),
        "original" | "zero-shot" => Ok(Mixing::OriginalOnly),
        other => other
            .strip_prefix("fixed:")
            .and_then(|a| a.parse::<f32>().ok())
            .filter(|a| (0.0..=1.0).contains(a))
            .map(Mixing::Fixed)
            .ok_or_else(|| {
                format!("unknown mixing `{other}` (ocw, ocw-other, ocw-hard, tuned, original, fixed:A)")
            }),
    }
}
