pub mod demo;
pub mod learn;
pub mod predict;
pub mod serve;

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use anytime_runtime::assets::ModelAssets;
use anytime_runtime::learner::{
    folder_is_private, ConsolidationReport, DietConfig, DietRecord, Learner, LearnerConfig, Mixing,
    PrivateConfig, PrivateReplay, TimeStepReport, TimeWindow,
};
use anytime_runtime::train::{BackendChoice, BackendReason, Training};

/// Sets the training backend (`cpu`, `gpu` or `auto`) when neither `--cpu` nor `--gpu` does.
pub const TRAIN_ENV: &str = "ANYTIME_EDGE_TRAIN";

/// The model every command uses unless told otherwise: the best bundled one.
pub const DEFAULT_MODEL: &str = "mini-clip";
/// Names the model when `--model` is not given (before [`DEFAULT_MODEL`]).
pub const MODEL_ENV: &str = "ANYTIME_EDGE_MODEL";

/// `--private-replay`: where a private learner's synthetic samples come from.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayArg {
    Restyle,
    Generator,
}

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
    #[arg(long, conflicts_with = "gpu")]
    pub cpu: bool,
    /// Train with wgpu on any GPU adapter, a software one (llvmpipe/lavapipe) included; fail
    /// when there is none. Default: wgpu on a hardware GPU, else the CPU.
    #[arg(long)]
    pub gpu: bool,
    /// Learning rate (default: the model's `[learner] lr`, else SPEC's 9.375e-6 for
    /// ViT-B/32); a finite number in (0, 1].
    #[arg(long, value_parser = parse_lr)]
    pub lr: Option<f32>,
    /// Learn on a diet (SPEC §8): `S` training steps (batch 32) per time step, spent when
    /// it ends, instead of one per labelled sample; images without a label then feed the
    /// masked-token loss. Recorded in the learner folder: later runs without it keep the
    /// recorded settings.
    #[arg(long, value_name = "S")]
    pub budget: Option<u32>,
    /// `S*`: steps of a time step beyond it are stored-sample replay alone at 0.1× the
    /// learning rate (default: the recorded one, else `S`, an even split of every step;
    /// `simulate --protocol diet` cross-validates it on a stream like yours).
    #[arg(long, value_name = "S*")]
    pub s_star: Option<u32>,
    /// Create a private learner (SPEC §7): no image's tokens are kept, only per-label
    /// statistics; at each consolidation (every `--consolidate-every` samples, and on
    /// `serve`'s `{"consolidate": true}`) the tuned block is snapshotted, and each step
    /// replays synthetic samples of the labels learned before it (`--private-replay`).
    /// Only on a new state; a private state stays private (later runs need no flag), and
    /// a normal one is refused. It trains on the backend `--cpu`/`--gpu` pick, as any
    /// learner does (its consolidation runs on the CPU).
    #[arg(long)]
    pub private: bool,
    /// Consolidate a private learner every this many samples (0: only when asked).
    #[arg(long, value_name = "N", default_value_t = PrivateConfig::default().consolidate_every)]
    pub consolidate_every: u32,
    /// A private learner's synthetic samples: `restyle`, the new image's tokens given
    /// each old label's statistics (the CLS token drawn from its CLS statistics); or `generator`, SPEC §7's generator, trained at each
    /// consolidation (slower, and on CIFAR-10 it does not hold the old labels: BENCHMARKS.md).
    #[arg(long, value_enum, default_value = "restyle")]
    pub private_replay: ReplayArg,
    /// A diet time step ends with its N-th arriving image, labelled or not (default: the
    /// recorded window, else 100 images).
    #[arg(long, value_name = "N", conflicts_with = "time_step_seconds")]
    pub time_step_samples: Option<u32>,
    /// A diet time step ends at the first arrival this many seconds after its first one
    /// (`serve` also checks every second).
    #[arg(long, value_name = "SECONDS")]
    pub time_step_seconds: Option<f64>,
}

/// Samples of a diet time step when neither the flags nor the folder say.
pub const DEFAULT_TIME_STEP_SAMPLES: u32 = 100;

impl LearnerArgs {
    /// Opens the learner to predict with: a read-only copy beside any writer; no training
    /// backend is built, no GPU adapter looked for.
    pub fn open_to_predict(&self) -> Result<Learner> {
        let cfg = self.config(BackendChoice::Cpu)?;
        Ok(Learner::open_read_only(&self.model, &self.state, cfg)?)
    }

    /// Opens the learner and builds its training backend; returns it with the line that
    /// says which backend trains and why.
    pub fn open_to_train(&self) -> Result<(Learner, String)> {
        let (backend, asked_by) = self.choice()?;
        let mut learner = self.open(backend)?;
        let training = learner.training().with_context(|| {
            format!("choosing the training backend of {}", self.state.display())
        })?;
        Ok((learner, training_line(&training, asked_by.as_deref())))
    }

    /// Opens the learner to write (holding its lock); its backend is built when it first
    /// trains.
    fn open(&self, backend: BackendChoice) -> Result<Learner> {
        let cfg = self.config(backend)?;
        // The learner's errors name the folder and the file; no context repeats them.
        Ok(Learner::open(&self.model, &self.state, cfg)?)
    }

    fn config(&self, backend: BackendChoice) -> Result<LearnerConfig> {
        let mut cfg = LearnerConfig {
            store_capacity: self.capacity,
            checkpoint_every: self.checkpoint_every,
            backend,
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
        cfg.diet = self.diet()?;
        // The folder's recorded mode, or --private for a new one; --private on a normal
        // folder reaches the learner, which refuses it and says why.
        if self.private || folder_is_private(&self.state)? == Some(true) {
            cfg.private = Some(PrivateConfig {
                consolidate_every: self.consolidate_every,
                replay: match self.private_replay {
                    ReplayArg::Restyle => PrivateReplay::Restyle,
                    ReplayArg::Generator => PrivateReplay::Generator,
                },
                ..PrivateConfig::default()
            });
        }
        Ok(cfg)
    }

    /// The diet settings: the flags over the folder's recorded ones; `None` when neither
    /// asks for a diet.
    fn diet(&self) -> Result<Option<DietConfig>> {
        let recorded = DietRecord::read(&self.state)?.map(|r| r.config);
        let flags = self.s_star.is_some()
            || self.time_step_samples.is_some()
            || self.time_step_seconds.is_some();
        let budget = match (self.budget, recorded) {
            (Some(b), _) => b,
            (None, Some(r)) => r.budget,
            (None, None) if flags => {
                bail!("--s-star and --time-step-* set a diet: give its --budget too")
            }
            (None, None) => return Ok(None),
        };
        let window = match (self.time_step_samples, self.time_step_seconds, recorded) {
            (Some(n), _, _) => TimeWindow::Samples(n),
            (_, Some(s), _) => TimeWindow::Seconds(s),
            (None, None, Some(r)) => r.window,
            (None, None, None) => TimeWindow::Samples(DEFAULT_TIME_STEP_SAMPLES),
        };
        let s_star = self.s_star.or(recorded.map(|r| r.s_star)).unwrap_or(budget);
        let mut cfg = recorded.unwrap_or(DietConfig::new(budget, s_star, window));
        (cfg.budget, cfg.s_star, cfg.window) = (budget, s_star, window);
        cfg.check()?;
        Ok(Some(cfg))
    }

    /// The backend asked for and by what (`--cpu`, `ANYTIME_EDGE_TRAIN=gpu`; `None`: the
    /// default).
    fn choice(&self) -> Result<(BackendChoice, Option<String>)> {
        if self.cpu {
            return Ok((BackendChoice::Cpu, Some("--cpu".into())));
        }
        if self.gpu {
            return Ok((BackendChoice::Gpu, Some("--gpu".into())));
        }
        let Some(value) = std::env::var_os(TRAIN_ENV) else {
            return Ok((BackendChoice::Auto, None));
        };
        let value = value.to_string_lossy();
        let choice = match value.to_ascii_lowercase().as_str() {
            "cpu" => BackendChoice::Cpu,
            "gpu" => BackendChoice::Gpu,
            "auto" => BackendChoice::Auto,
            _ => bail!("{TRAIN_ENV}={value}: expected cpu, gpu or auto"),
        };
        Ok((choice, Some(format!("{TRAIN_ENV}={value}"))))
    }
}

/// "training on BACKEND: WHY", naming the flag or setting that asked for the backend.
fn training_line(t: &Training, asked_by: Option<&str>) -> String {
    let by = asked_by.unwrap_or("?");
    match &t.reason {
        BackendReason::CpuAsked => format!("training on cpu: asked for ({by})"),
        BackendReason::GpuAsked { adapter, software } => format!(
            "training on wgpu: asked for ({by}), on {adapter}{}",
            if *software {
                ", a software adapter slower than the CPU path"
            } else {
                ""
            }
        ),
        BackendReason::SoftwareOnly { .. } => {
            format!("training on {t}; --gpu trains on it")
        }
        _ => format!("training on {t}"),
    }
}

/// Parses a learning rate: a finite number in (0, 1].
pub fn parse_lr(s: &str) -> Result<f32, String> {
    s.parse::<f32>()
        .ok()
        .filter(|lr| lr.is_finite() && *lr > 0.0 && *lr <= anytime_runtime::learner::MAX_LR)
        .ok_or_else(|| format!("`{s}` is not a learning rate (a finite number in (0, 1])"))
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
                format!(
                    "unknown mixing `{other}` (ocw, ocw-other, ocw-hard, tuned, original, fixed:A)"
                )
            }),
    }
}

/// One line on a diet time step that ended.
pub fn time_step_line(r: &TimeStepReport) -> String {
    let b = &r.budget;
    format!(
        "time step {} ended: {} of {} steps (L_m {}, L_r {}, L_b {}; {} at 0.1x lr), {} labelled and {} unlabelled images, {:.2} s",
        r.index,
        b.used,
        b.total,
        b.current,
        b.masked,
        b.balanced,
        b.reduced_lr,
        r.labelled,
        r.unlabelled,
        r.seconds
    )
}

/// A diet time step that ended, as JSON.
pub fn time_step_json(r: &TimeStepReport) -> serde_json::Value {
    serde_json::to_value(r).expect("plain struct")
}

/// One line on a consolidation of a private learner.
pub fn consolidation_line(r: &ConsolidationReport) -> String {
    format!(
        "consolidation {} at sample {}: {} labels ({} with published statistics), {} generator steps (loss {:.4} -> {:.4}) in {:.2} s, {:.2} s in all, peak ≈ {:.1} MiB",
        r.index,
        r.learned,
        r.labels,
        r.published,
        r.generator_steps,
        r.loss_first.total,
        r.loss_last.total,
        r.generator_seconds,
        r.seconds,
        r.peak_bytes as f64 / (1 << 20) as f64
    )
}

/// A consolidation, as JSON.
pub fn consolidation_json(r: &ConsolidationReport) -> serde_json::Value {
    serde_json::to_value(r).expect("plain struct")
}
