//! `anytime-host simulate`: replays labelled image datasets as a stream under one of
//! the SPEC §9 protocols and evaluates every method after every stage.
//!
//! The trunk runs once per image (its tokens go to the token cache); every method then
//! learns from and predicts on cached tokens or embeddings: zero-shot CLIP, nearest class
//! mean, and the anytime learner's full method and ablations (see [`crate::sim::learner`]);
//! under `--protocol diet` (SPEC §8) the learners under a step budget instead (see
//! [`crate::sim::diet`]).
//!
//! Writes into `--out`: `report.json` (settings, plan, every row and summary),
//! `stages.csv`, `summary.csv` and `accuracy.svg` (accuracy against stage, one line
//! per method), with the diet protocol `steps.csv` (the steps each learner spent in
//! each time step), and prints the summary table.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

use anytime_core::codec::CodecParams;
use anytime_runtime::assets::ModelAssets;
use anytime_runtime::learner::PrivateConfig;
use anytime_runtime::train::TrainConfig;

use crate::sim::audit;
use crate::sim::cache::Encoding;
use crate::sim::dataset::{self, Dataset};
use crate::sim::diet::{self, DietContext, DietSpec, DEFAULT_DIET_METHODS};
use crate::sim::features::{Backbone, ClipBackbone, FeatureTable, PixelBackbone};
use crate::sim::learner::{
    self, LearnerSettings, LearnerSpec, Training, LEARNER_METHODS, PRIVATE_METHODS,
};
use crate::sim::method::{LabelEmbeddings, Method, NearestClassMean, ZeroShot};
use crate::sim::metrics::Report;
use crate::sim::plot::{accuracy_svg, Curve};
use crate::sim::protocol::{plan, PlanOptions, ProtocolKind, SourceInfo, DEFAULT_PERCENTS};
use crate::sim::runner;
use crate::sim::synthetic::{write_image_folder, SyntheticSpec};

/// Baselines that need no learner.
const BASELINES: [&str; 2] = ["zero-shot", "ncm"];
/// Methods run when `--methods` is not given (SPEC §9's list); with `--model pixels`
/// only the baselines.
const DEFAULT_METHODS: [&str; 7] = [
    "zero-shot",
    "ncm",
    "tuned",
    "full",
    "no-ocw",
    "no-other",
    "raw",
];

/// Methods run under `--protocol data-free` when `--methods` is not given (issue 15):
/// the baselines, stored replay (`full`, the normal learner), and every private method
/// (the private learner, its tuned block alone, its ablations; `private-no-replay` is the
/// lower bound).
fn default_data_free_methods() -> Vec<String> {
    BASELINES
        .iter()
        .chain(&["full"])
        .chain(PRIVATE_METHODS.iter())
        .map(|m| m.to_string())
        .collect()
}

/// The privacy audit's pool of learned samples and synthetic sets per label.
const AUDIT_POOL: usize = 200;
const AUDIT_SYNTHETIC: usize = 64;

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Dataset name (looked up in $ANYTIME_EDGE_ASSETS/data/), path, or `synthetic[:K]`; several
    /// (comma-separated or repeated) for the task protocol, in training order.
    #[arg(long, required = true, value_delimiter = ',')]
    pub dataset: Vec<String>,
    /// Keep only these classes of the (first) dataset, in this order (comma-separated
    /// class names, e.g. dog,frog,horse,ship,truck).
    #[arg(long, value_delimiter = ',')]
    pub classes: Option<Vec<String>>,
    /// A dataset never trained on, evaluated at every stage over its own labels
    /// (zero-shot retention); any protocol.
    #[arg(long)]
    pub held_out: Option<String>,
    /// Evaluate on N class-stratified images carved out of the training split (never
    /// trained on) instead of the test split: for choosing the learning rate and other
    /// knobs without looking at the test images.
    #[arg(long)]
    pub validation: Option<usize>,
    #[arg(long, value_enum, default_value = "data")]
    pub protocol: ProtocolKind,
    /// Model name or path (see models/README.md), or `pixels` for a model-free
    /// stand-in (8×8 thumbnails, random label embeddings).
    #[arg(long, default_value = "mini-clip")]
    pub model: String,
    /// Keep at most N training images per dataset (class-stratified, seeded).
    #[arg(long)]
    pub limit_train: Option<usize>,
    /// Keep at most N test images per dataset (class-stratified, seeded).
    #[arg(long)]
    pub limit_test: Option<usize>,
    /// Data protocol: cumulative percentages of the training set.
    #[arg(long, value_delimiter = ',', default_values_t = DEFAULT_PERCENTS)]
    pub stages: Vec<u32>,
    /// Class and diet protocols: number of class groups (classes arrive group by group;
    /// under the diet protocol each group spans time-steps / groups consecutive time steps).
    #[arg(long, visible_alias = "diet-groups", default_value_t = 5)]
    pub groups: usize,
    /// Diet protocol: number of time steps.
    #[arg(long, default_value_t = 20)]
    pub time_steps: usize,
    /// Diet protocol: percent of each time step's samples that carry their label
    /// (rounded, at least one a time step; class-stratified).
    #[arg(long, default_value_t = 1.0)]
    pub label_percent: f64,
    /// Diet protocol: `S`, training steps per time step, for every learner.
    #[arg(long, default_value_t = 16)]
    pub budget: u32,
    /// Diet protocol: the `S*` candidates cross-validated on the first time steps
    /// (default: 0, S/4, S/2, 3S/4, S).
    #[arg(long, value_delimiter = ',')]
    pub s_star_candidates: Option<Vec<u32>>,
    /// Diet protocol: class-stratified training images held out of the stream to choose
    /// `S*` on (never trained on, never test images).
    #[arg(long, default_value_t = 1000)]
    pub cv_images: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Methods to compare (comma-separated): the baselines zero-shot and ncm; the
    /// learner's full (OCW), tuned (tuned model alone), no-ocw (fixed α = 0.5),
    /// alpha-other (OCW with α'), alpha-hard (α = 1 where c_t > c_o, else 0), no-other
    /// (β = 0), raw (store keeps all N directions unquantised), plain-pca (full, the
    /// codec's PCA unweighted) and kKbB[-plain] (full, storing with codec k = K,
    /// bits = B, e.g. k2b4, k3b8-plain). Default: zero-shot,ncm,tuned,full,no-ocw,
    /// no-other,raw (only the baselines with `--model pixels`). Under `--protocol diet`:
    /// zero-shot, ncm, diet, labelled-only, replay-only, anytime (the default), each
    /// learner also as <name>-tuned (its tuned block alone). The private learner (SPEC
    /// §7, consolidating at the end of each stage) under any other protocol: private
    /// (restyled replay), private-tuned, private-generator (SPEC §7's generator replay),
    /// and the ablations private-no-replay, private-no-stats (the generator without
    /// statistics alignment), private-no-distill, private-no-local; under `--protocol data-free` the default is
    /// zero-shot, ncm, full (stored replay), and all of these.
    #[arg(long, value_delimiter = ',')]
    pub methods: Option<Vec<String>>,
    /// Learner: AdamW learning rate (default: the model's `[learner] lr`, else SPEC §4's
    /// 9.375e-6 for ViT-B/32; the tiny random model needs about 2e-3 to move within a
    /// short run).
    #[arg(long)]
    pub lr: Option<f32>,
    /// Learner: stored samples replayed with each new one (SPEC §4: 31).
    #[arg(long, default_value_t = 31)]
    pub replay: usize,
    /// Learner: train with wgpu on any GPU adapter, a software one (llvmpipe) included, and
    /// fail when there is none (default: the CPU backend, which is deterministic).
    #[arg(long)]
    pub gpu: bool,
    /// Learner store codec of the full method: principal directions kept per image.
    #[arg(long, default_value_t = CodecParams::DEFAULT.k)]
    pub store_k: u16,
    /// Learner store codec of the full method: bits per value (8, 4, or 32).
    #[arg(long, default_value_t = CodecParams::DEFAULT.bits)]
    pub store_bits: u8,
    /// Output directory.
    #[arg(long, default_value = "target/sim")]
    pub out: PathBuf,
    /// Class protocol: also measure the candidate "none of the above" signals (issue 22)
    /// beside the `full` method's own (slower: a nearest-neighbour search per image).
    #[arg(long)]
    pub none_candidates: bool,
    /// Private methods: `μ`, the weight of the feature distillation of the old labels'
    /// logits (SPEC §7: 0.1).
    #[arg(long, default_value_t = PrivateConfig::default().mu)]
    pub mu: f32,
    /// Token cache directory (default: <out>/cache).
    #[arg(long)]
    pub cache: Option<PathBuf>,
    /// Do not read or write the token cache.
    #[arg(long)]
    pub no_cache: bool,
    /// How the token cache stores tokens: `f16` (raw) or `codec` (our compressed
    /// records, see --codec-k / --codec-bits).
    #[arg(long, value_enum, default_value = "f16")]
    pub token_cache: TokenCacheKind,
    /// Codec: principal directions kept per image.
    #[arg(long, default_value_t = CodecParams::DEFAULT.k)]
    pub codec_k: u16,
    /// Codec: bits per quantised value (8, 4, or 32 for unquantised).
    #[arg(long, default_value_t = CodecParams::DEFAULT.bits)]
    pub codec_bits: u8,
}

/// Token cache storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TokenCacheKind {
    F16,
    Codec,
}

pub fn run(args: Args) -> Result<()> {
    let report = simulate(&args)?;
    if args.protocol == ProtocolKind::Diet {
        println!("{}", diet::summary_table(&report));
    }
    println!("{}", summary_table(&report));
    println!("written to {}", args.out.display());
    Ok(())
}

fn bar(len: u64, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template(
        "{msg:28} [{elapsed_precise}] {wide_bar} {pos}/{len} ETA {eta}",
    ) {
        pb.set_style(style);
    }
    pb
}

/// Opens a dataset by name or path; `synthetic` or `synthetic:K` (K classes, 6 by
/// default) is generated on first use into `<out>/data/synthetic-K` (20 training and
/// 10 test images of 32×32 per class, fixed seed), so a run needs no assets.
fn open_dataset(name: &str, out: &std::path::Path) -> Result<Dataset> {
    let Some(rest) = name.strip_prefix("synthetic") else {
        return Dataset::open(name);
    };
    let classes = match rest.strip_prefix(':') {
        Some(k) => k
            .parse()
            .with_context(|| format!("`{k}` is not a number of classes"))?,
        None if rest.is_empty() => 6,
        None => return Dataset::open(name),
    };
    let dir = out.join("data");
    let root = dir.join(format!("synthetic-{classes}"));
    if !root.is_dir() {
        let spec = SyntheticSpec {
            classes,
            train_per_class: 20,
            test_per_class: 10,
            size: 32,
            seed: 0,
        };
        let tmp = dir.join(format!(".synthetic-{classes}.partial"));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp)?;
        let made = write_image_folder(&tmp, "d", &spec)?;
        std::fs::rename(&made, &root)?;
        let _ = std::fs::remove_dir_all(&tmp);
    }
    Dataset::open_dir(&root)
}

/// Runs a whole simulation and writes its outputs; returns the report.
pub fn simulate(args: &Args) -> Result<crate::sim::metrics::Report> {
    let t0 = Instant::now();
    let quiet = cfg!(test);
    ensure!(
        args.protocol == ProtocolKind::Task || args.dataset.len() == 1,
        "the {:?} protocol takes exactly one --dataset (and at most one --held-out)",
        args.protocol
    );
    let mut names = args.dataset.clone();
    names.extend(args.held_out.iter().cloned());
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let mut datasets = names
        .iter()
        .map(|n| open_dataset(n, &args.out).with_context(|| format!("opening dataset `{n}`")))
        .collect::<Result<Vec<_>>>()?;
    if let Some(classes) = &args.classes {
        datasets[0].restrict_classes(classes)?;
    }
    let sources: Vec<SourceInfo> = datasets
        .iter()
        .map(|d| {
            Ok(SourceInfo {
                name: d.name.clone(),
                num_classes: u16::try_from(d.classes.len())?,
                train_labels: d.labels(dataset::Split::Train),
                test_labels: d.labels(dataset::Split::Test),
            })
        })
        .collect::<Result<_>>()?;
    let opts = PlanOptions {
        kind: args.protocol,
        seed: args.seed,
        percents: args.stages.clone(),
        groups: args.groups,
        held_out_last: args.held_out.is_some(),
        validation: args.validation,
        limit_train: args.limit_train,
        limit_test: args.limit_test,
        time_steps: args.time_steps,
        label_percent: args.label_percent,
        cv_images: args.cv_images,
    };
    let plan = plan(&sources, &opts)?;
    let is_diet = args.protocol == ProtocolKind::Diet;

    let pixels = args.model == "pixels";
    let requested: Vec<String> = match &args.methods {
        Some(m) => m.iter().map(|m| m.trim().to_owned()).collect(),
        None if pixels => BASELINES.iter().map(|m| m.to_string()).collect(),
        None if is_diet => DEFAULT_DIET_METHODS.iter().map(|m| m.to_string()).collect(),
        None if args.protocol == ProtocolKind::DataFree => default_data_free_methods(),
        None => DEFAULT_METHODS.iter().map(|m| m.to_string()).collect(),
    };
    let assets = if pixels {
        None
    } else {
        Some(ModelAssets::find(&args.model)?)
    };
    let tokens_per_image = assets.as_ref().map_or(1, |a| a.dims().tokens());
    let store_codec = CodecParams {
        k: args.store_k,
        bits: args.store_bits,
        weighted: true,
    };
    let mut method_names: Vec<String> = Vec::new();
    let mut learner_specs: Vec<LearnerSpec> = Vec::new();
    let mut diet_specs: Vec<DietSpec> = Vec::new();
    for m in &requested {
        ensure!(!method_names.contains(m), "method `{m}` is listed twice");
        if BASELINES.contains(&m.as_str()) {
            method_names.push(m.clone());
        } else if is_diet {
            let spec = diet::check_method(m)?;
            ensure!(
                !pixels,
                "method `{m}` needs the anytime learner, which needs a CLIP model, not `--model pixels`"
            );
            ensure!(
                !args.no_cache,
                "method `{m}` learns from cached tokens: drop --no-cache"
            );
            method_names.push(m.clone());
            diet_specs.push(spec);
        } else if diet::parse_diet_method(m).is_some() {
            bail!("method `{m}` runs under --protocol diet only");
        } else if let Some(spec) = learner::parse_method(m, store_codec, tokens_per_image)? {
            ensure!(
                !pixels,
                "method `{m}` needs the anytime learner, which needs a CLIP model, not `--model pixels`"
            );
            ensure!(
                !args.no_cache,
                "method `{m}` learns from cached tokens: drop --no-cache"
            );
            if m == "raw" && args.token_cache == TokenCacheKind::Codec {
                log::warn!("the token cache is compressed, so `raw` learns from decoded tokens, not the trunk's");
            }
            method_names.push(m.clone());
            learner_specs.push(spec);
        } else {
            bail!(
                "unknown method `{m}`; known: {}, {}, kKbB[-plain], {}",
                BASELINES.join(", "),
                LEARNER_METHODS.join(", "),
                PRIVATE_METHODS.join(", ")
            );
        }
    }
    ensure!(!method_names.is_empty(), "no method to run");

    let mut backbone: Box<dyn Backbone> = match &assets {
        None => Box::new(PixelBackbone),
        Some(a) => Box::new(ClipBackbone::from_assets(a)?),
    };
    // Never under $ANYTIME_EDGE_ASSETS by default: the assets folder is shared and
    // may be read-only; pass --cache to reuse a cache between output folders.
    let cache_dir =
        (!args.no_cache).then(|| args.cache.clone().unwrap_or_else(|| args.out.join("cache")));

    // the images the plan touches, per source
    let mut needed: Vec<(Vec<u32>, Vec<u32>)> = vec![Default::default(); datasets.len()];
    for r in plan
        .stages
        .iter()
        .flat_map(|s| s.train.iter().chain(&s.unlabelled))
        .chain(&plan.validation)
    {
        needed[usize::from(r.source)].0.push(r.index);
    }
    for g in &plan.groups {
        for r in &g.samples {
            let (train, test) = &mut needed[usize::from(r.source)];
            match g.split {
                dataset::Split::Train => train.push(r.index),
                dataset::Split::Test => test.push(r.index),
            }
        }
    }
    let total: usize = needed.iter().map(|(a, b)| a.len() + b.len()).sum();
    let pb = bar(total as u64, quiet);
    pb.set_message(format!("features ({})", backbone.id()));
    let encoding = match args.token_cache {
        TokenCacheKind::F16 => Encoding::F16,
        TokenCacheKind::Codec => Encoding::Codec(CodecParams {
            k: args.codec_k,
            bits: args.codec_bits,
            weighted: true,
        }),
    };
    let mut table = FeatureTable::build(
        backbone.as_mut(),
        &datasets,
        &needed,
        cache_dir.as_ref(),
        encoding,
        &pb,
    )?;
    pb.finish_and_clear();

    let mut rows = Vec::new();
    for d in &datasets {
        let prompts: Vec<String> = (0..d.classes.len() as u16)
            .map(|l| d.prompt_name(l))
            .collect();
        rows.extend(
            backbone
                .label_embeddings(&prompts)
                .with_context(|| format!("embedding the class names of {}", d.name))?,
        );
    }
    let text = Arc::new(LabelEmbeddings::new(backbone.embed_dim(), rows)?);
    // label names by global label, for the learner (its labels are names)
    let mut label_names = vec![String::new(); usize::from(plan.num_labels)];
    for (s, d) in datasets.iter().enumerate() {
        for l in 0..d.classes.len() as u16 {
            let g = usize::from(plan.global_label(u16::try_from(s)?, l));
            label_names[g] = d.prompt_name(l);
        }
    }
    let label_names = Arc::new(label_names);
    let lr = args
        .lr
        .or_else(|| assets.as_ref().and_then(|a| a.manifest.learner.lr))
        .unwrap_or(TrainConfig::default().lr);
    let settings = LearnerSettings {
        lr,
        replay: args.replay,
        seed: args.seed,
        gpu: args.gpu,
        max_samples: plan.stages.iter().map(|s| s.train.len()).sum(),
        max_labels: usize::from(plan.num_labels),
        none_candidates: args.none_candidates,
        mu: args.mu,
    };
    let learners = match &assets {
        Some(a) if !learner_specs.is_empty() => learner::build(
            &learner_specs,
            a,
            &args.out.join("learners"),
            &settings,
            label_names.clone(),
        )?,
        _ => Vec::new(),
    };
    let mut backend = learners.first().map(|l| l.backend_name().to_owned());
    let mut learners = learners.into_iter();
    // The diet protocol's learners, after choosing S* by cross-validation.
    let mut s_star = None;
    let mut diet_methods = Vec::new().into_iter();
    if let (Some(a), false) = (&assets, diet_specs.is_empty()) {
        let ctx = DietContext {
            assets: a,
            plan: &plan,
            sources: &sources,
            settings: &settings,
            training: Training {
                codec: store_codec,
                beta_other: TrainConfig::default().beta_other,
                private: None,
            },
            names: label_names.clone(),
            budget: args.budget,
            root: args.out.join("learners"),
        };
        let mut chosen = 0;
        if diet_specs.iter().any(|s| s.feed != diet::Feed::Anytime) {
            let candidates = args
                .s_star_candidates
                .clone()
                .unwrap_or_else(|| diet::default_candidates(args.budget));
            ensure!(
                candidates.iter().all(|&c| c <= args.budget),
                "S* candidates {candidates:?} must not exceed the budget S = {}",
                args.budget
            );
            let (choice, seconds) = diet::cross_validate(&ctx, &mut table, &candidates)?;
            log::info!("S* = {} ({seconds:.1} s)", choice.s_star);
            chosen = choice.s_star;
            s_star = Some((choice, seconds));
        }
        let (built, b) = diet::build(&diet_specs, &ctx, chosen)?;
        backend = backend.or(b.map(str::to_owned));
        diet_methods = built.into_iter();
    }
    let mut methods: Vec<Box<dyn Method>> = Vec::with_capacity(method_names.len());
    for m in &method_names {
        methods.push(match m.as_str() {
            "ncm" => Box::new(NearestClassMean::new(text.clone())),
            "zero-shot" => Box::new(ZeroShot::new(text.clone())),
            _ if is_diet => diet_methods.next().context("one diet method per spec")?,
            _ => Box::new(learners.next().context("one learner method per spec")?),
        });
    }

    let pb = bar(runner::work(&plan, methods.len()), quiet);
    let results = runner::run(&plan, &sources, &mut table, &mut methods, &pb)?;
    pb.finish_and_clear();

    // The privacy audit's item 3 on `private-generator` if it ran, else the first private
    // learner with a generator (the restyled replay keeps none, so it has no synthetic
    // set to audit); no pass at all without a private method.
    let mut privacy_audit = None;
    let mut order: Vec<usize> = (0..methods.len())
        .filter(|&i| PRIVATE_METHODS.contains(&methods[i].name()))
        .collect();
    order.sort_by_key(|&i| methods[i].name() != "private-generator");
    for i in order {
        let m = &mut methods[i];
        let name = m.name().to_owned();
        let labels = audit::nearest_neighbour_audit(
            m.as_mut(),
            &plan,
            &sources,
            &mut table,
            AUDIT_POOL,
            AUDIT_SYNTHETIC,
            args.seed,
        )?;
        if !labels.is_empty() {
            privacy_audit = Some(serde_json::json!({"method": name, "labels": labels}));
            break;
        }
    }

    let config = serde_json::json!({
        "datasets": datasets.iter().map(|d| serde_json::json!({
            "name": d.name, "path": d.root, "format": d.format,
            "classes": d.classes.len(), "train": d.train.len(), "test": d.test.len(),
        })).collect::<Vec<_>>(),
        "held_out": args.held_out,
        "protocol": args.protocol,
        "model": args.model,
        "backbone": backbone.id(),
        "seed": args.seed,
        "limit_train": args.limit_train,
        "limit_test": args.limit_test,
        "validation": args.validation,
        "classes": args.classes,
        "stages": args.stages,
        "groups": args.groups,
        "methods": method_names,
        "learner": (!learner_specs.is_empty() || !diet_specs.is_empty()).then(|| serde_json::json!({
            "lr": lr,
            "replay": args.replay,
            "backend": backend,
            "store_codec": {"k": args.store_k, "bits": args.store_bits, "weighted": true},
            "trainings": learner_specs.iter().map(|s| serde_json::json!({
                "method": s.name,
                "mixing": format!("{:?}", s.mixing),
                "codec": {"k": s.training.codec.k, "bits": s.training.codec.bits},
                "beta_other": s.training.beta_other,
            })).collect::<Vec<_>>(),
        })),
        "cache": cache_dir,
        "token_cache": encoding.tag(),
        "privacy_audit": privacy_audit,
        "diet": is_diet.then(|| serde_json::json!({
            "time_steps": args.time_steps,
            "label_percent": args.label_percent,
            "budget": args.budget,
            "s_star": s_star.as_ref().map(|(c, _)| c),
            "s_star_seconds": s_star.as_ref().map(|(_, s)| s),
            "cv_images": plan.validation.len(),
            "lr": lr,
            "backend": backend,
            "anytime": "one step per labelled sample, at most S a time step; a time step's \
                        labelled samples beyond its first S are not learned",
        })),
    });
    let report = Report::new(config, plan, results, t0.elapsed().as_secs_f64());
    report.write_json(&args.out.join("report.json"))?;
    report.write_csv(&args.out)?;
    let stage_names: Vec<String> = report.plan.stages.iter().map(|s| s.name.clone()).collect();
    let curves: Vec<Curve> = method_names
        .iter()
        .map(|m| Curve {
            method: m.clone(),
            acc: report
                .rows
                .iter()
                .filter(|r| &r.method == m)
                .map(|r| r.acc_all)
                .collect(),
        })
        .collect();
    let title = if is_diet {
        format!(
            "diet stream, S = {}, {} % labelled, on {} ({})",
            args.budget,
            args.label_percent,
            names.join(", "),
            backbone.id()
        )
    } else if args.protocol == ProtocolKind::DataFree {
        format!(
            "data-free class-incremental on {} ({})",
            names.join(", "),
            backbone.id()
        )
    } else {
        format!(
            "{:?}-incremental on {} ({})",
            args.protocol,
            names.join(", "),
            backbone.id()
        )
        .to_lowercase()
    };
    accuracy_svg(
        &args.out.join("accuracy.svg"),
        &title,
        &stage_names,
        &curves,
    )?;
    Ok(report)
}

/// The summary as a plain-text table.
pub fn summary_table(report: &Report) -> String {
    let f = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.1}"));
    let mut s = format!(
        "{:<12} {:>8} {:>8} {:>8} {:>8} {:>10} {:>10} {:>12}\n",
        "method", "average", "final", "seen", "unseen", "forgetting", "update ms", "bytes/sample"
    );
    for m in &report.summaries {
        s += &format!(
            "{:<12} {:>8} {:>8} {:>8} {:>8} {:>10} {:>10} {:>12.0}\n",
            m.method,
            f(m.average_acc),
            f(m.final_acc),
            f(m.final_seen),
            f(m.final_unseen),
            f(m.forgetting),
            m.mean_update_ms
                .map_or("-".to_owned(), |v| format!("{v:.3}")),
            m.bytes_per_sample
        );
        for (name, acc) in &m.held_out {
            s += &format!("{:<12} held-out {name}: {}\n", "", f(*acc));
        }
        if let (Some(secs), Some(peak)) = (m.consolidation_s, m.consolidation_peak_bytes) {
            s += &format!(
                "{:<12} consolidations: {secs:.1} s in all, peak ≈ {:.1} MiB\n",
                "",
                peak as f64 / (1u64 << 20) as f64
            );
        }
        for n in &m.none {
            s += &format!(
                "{:<12} none of the above, {}: mean AUROC {}; above {:.3}: none for {} % of \
                 unlearned, {} % of learned\n",
                "",
                n.signal,
                n.auroc.map_or("-".to_owned(), |a| format!("{a:.3}")),
                n.threshold,
                f(n.abstain_unlearned),
                f(n.abstain_learned),
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    /// `simulate` with `extra`, on the tiny model unless `extra` names one.
    fn args(extra: &[&str]) -> Args {
        let mut v = vec!["simulate"];
        if !extra.contains(&"--model") {
            v.extend(["--model", "tiny-clip"]);
        }
        v.extend_from_slice(extra);
        Cli::parse_from(v).args
    }

    fn shapes(dir: &std::path::Path, name: &str, classes: usize, seed: u64) -> String {
        shapes_with(dir, name, classes, 6, seed)
    }

    /// A drawn-shapes image folder of `classes` classes, `train_per_class` training and 3
    /// test images each, 24 px.
    fn shapes_with(
        dir: &std::path::Path,
        name: &str,
        classes: usize,
        train_per_class: usize,
        seed: u64,
    ) -> String {
        let spec = SyntheticSpec {
            classes,
            train_per_class,
            test_per_class: 3,
            size: 24,
            seed,
        };
        write_image_folder(dir, name, &spec)
            .unwrap()
            .to_string_lossy()
            .into_owned()
    }

    #[test]
    fn data_protocol_end_to_end_with_pixels() {
        let tmp = tempfile::tempdir().unwrap();
        let ds = shapes(tmp.path(), "shapes", 4, 1);
        let out = tmp.path().join("out");
        let a = args(&[
            "--dataset",
            &ds,
            "--model",
            "pixels",
            "--out",
            out.to_str().unwrap(),
            "--stages",
            "25,50,100",
            "--seed",
            "3",
        ]);
        let report = simulate(&a).unwrap();
        assert_eq!(report.rows.len(), 2 * 3);
        let ncm = report.summaries.iter().find(|s| s.method == "ncm").unwrap();
        // coloured shapes are easy for class means on thumbnails
        assert!(ncm.final_acc.unwrap() >= 75.0, "{ncm:?}");
        for f in ["report.json", "stages.csv", "summary.csv", "accuracy.svg"] {
            assert!(out.join(f).is_file(), "{f}");
        }
        assert!(summary_table(&report).contains("ncm"));
        // the second run reads every feature from the cache
        let cache = out.join("cache");
        assert!(std::fs::read_dir(&cache).unwrap().count() >= 4);
        let again = simulate(&a).unwrap();
        assert_eq!(again.rows[5].acc_all, report.rows[5].acc_all);
    }

    #[test]
    fn class_protocol_end_to_end() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        let ds = "synthetic:6";
        let a = args(&[
            "--dataset",
            ds,
            "--model",
            "pixels",
            "--protocol",
            "class",
            "--groups",
            "3",
            "--out",
            out.to_str().unwrap(),
            "--methods",
            "ncm",
            "--no-cache",
            "--limit-train",
            "24",
            "--limit-test",
            "12",
        ]);
        let report = simulate(&a).unwrap();
        assert_eq!(report.rows.len(), 3);
        assert_eq!(report.rows[0].samples_seen, 8);
        // before the last stage some classes are unseen
        assert!(report.rows[0].acc_unseen.is_some());
        assert!(report.rows[2].acc_unseen.is_none());
        assert!(report.summaries[0].forgetting.is_some());
        assert!(!out.join("cache").exists());
        assert!(out.join("data/synthetic-6/test/red_disk").is_dir());
    }

    #[test]
    fn task_protocol_end_to_end_with_held_out() {
        let tmp = tempfile::tempdir().unwrap();
        let a1 = shapes(tmp.path(), "first", 3, 3);
        let a2 = shapes(tmp.path(), "second", 2, 4);
        let held = shapes(tmp.path(), "held", 2, 5);
        let out = tmp.path().join("out");
        let a = args(&[
            "--dataset",
            &format!("{a1},{a2}"),
            "--held-out",
            &held,
            "--model",
            "pixels",
            "--protocol",
            "task",
            "--out",
            out.to_str().unwrap(),
        ]);
        let report = simulate(&a).unwrap();
        assert_eq!(report.plan.stages.len(), 2);
        assert_eq!(report.rows.len(), 4);
        let zs = report
            .summaries
            .iter()
            .find(|s| s.method == "zero-shot")
            .unwrap();
        assert_eq!(zs.held_out.len(), 1);
        assert!(zs.held_out[0].1.is_some());
    }

    /// The real path: tract trunk, original last block and text tower of the tiny
    /// model, with the token cache.
    #[test]
    fn data_protocol_end_to_end_with_tiny_clip() {
        let tmp = tempfile::tempdir().unwrap();
        let ds = shapes(tmp.path(), "shapes", 3, 6);
        let out = tmp.path().join("out");
        let a = args(&[
            "--dataset",
            &ds,
            "--model",
            "tiny-clip",
            "--out",
            out.to_str().unwrap(),
            "--stages",
            "50,100",
            "--limit-train",
            "12",
            "--limit-test",
            "6",
            "--methods",
            "zero-shot,ncm",
        ]);
        let report = simulate(&a).unwrap();
        assert_eq!(report.rows.len(), 4);
        assert!(report.rows.iter().all(|r| r.acc_all.is_some()));
        assert!(report.config["backbone"]
            .as_str()
            .unwrap()
            .starts_with("tiny-clip-"));
        let tokens = std::fs::read_dir(out.join("cache"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .contains("tokens")
            })
            .count();
        assert_eq!(tokens, 2, "one token cache per split");
        let again = simulate(&a).unwrap();
        assert_eq!(again.rows[3].acc_all, report.rows[3].acc_all);

        // compressed token cache: separate files, far smaller, same embeddings
        let mut c = a.clone();
        c.token_cache = TokenCacheKind::Codec;
        c.codec_k = 5;
        c.no_cache = false;
        let report_c = simulate(&c).unwrap();
        assert_eq!(report_c.config["token_cache"], "k5b8w");
        let size = |tag: &str| -> u64 {
            std::fs::read_dir(out.join("cache"))
                .unwrap()
                .map(|e| e.unwrap())
                .filter(|e| e.file_name().to_string_lossy().contains(tag))
                .map(|e| e.metadata().unwrap().len())
                .sum()
        };
        assert!(size("tokens-k5b8w") * 3 < size("tokens-f16"));
        assert_eq!(report_c.rows[3].acc_all, report.rows[3].acc_all);
    }

    /// `--none-rate r` is calibrated (issue 22): the learner (tiny-clip, class protocol,
    /// 8 synthetic classes in 2 groups) answers "none" on held-out test images of the
    /// labels it learned at a rate within 3 binomial standard errors of `r` (400 images:
    /// ±4.5 points at r = 0.10, ±3.3 at 0.05); a score that never abstains, or one on the
    /// normal assumption that ignores where the learner's own samples score, fails that.
    #[test]
    fn none_rate_is_calibrated_on_learned_labels() {
        let tmp = tempfile::tempdir().unwrap();
        let spec = SyntheticSpec {
            classes: 8,
            train_per_class: 60,
            test_per_class: 100,
            size: 24,
            seed: 7,
        };
        let ds = write_image_folder(tmp.path(), "shapes8", &spec).unwrap();
        let out = tmp.path().join("out");
        let a = args(&[
            "--dataset",
            ds.to_str().unwrap(),
            "--protocol",
            "class",
            "--groups",
            "2",
            "--out",
            out.to_str().unwrap(),
            "--methods",
            "full",
            "--replay",
            "7",
        ]);
        let report = simulate(&a).unwrap();
        let open = &report.rows[0].none;
        let learned = 4.0 * 100.0;
        for (name, rate) in crate::sim::learner::NONE_RATES {
            let e = open.iter().find(|e| e.signal == name).unwrap();
            let realized = e.abstain_learned.unwrap() / 100.0;
            let se = (f64::from(rate) * (1.0 - f64::from(rate)) / learned).sqrt();
            eprintln!(
                "--none-rate {rate}: learned {:.1} %, unlearned {:?} %, AUROC {:?}",
                100.0 * realized,
                e.abstain_unlearned,
                e.auroc
            );
            if rate >= 0.05 {
                assert!(
                    anytime_testkit::close(realized, f64::from(rate), 3.0 * se, 0.0),
                    "{name}: {realized} of learned images refused at r = {rate}"
                );
            }
            assert!(e.abstain_unlearned.is_some() && e.auroc.is_some(), "{e:?}");
        }
    }

    #[test]
    fn bad_arguments_are_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let ds = shapes(tmp.path(), "shapes", 2, 1);
        let out = tmp.path().join("out");
        let o = out.to_str().unwrap();
        let err = simulate(&args(&[
            "--dataset",
            &ds,
            "--model",
            "pixels",
            "--out",
            o,
            "--methods",
            "magic",
        ]))
        .unwrap_err()
        .to_string();
        assert!(err.contains("unknown method"), "{err}");
        let err = simulate(&args(&[
            "--dataset",
            &ds,
            "--model",
            "pixels",
            "--out",
            o,
            "--methods",
            "zero-shot,full",
        ]))
        .unwrap_err()
        .to_string();
        assert!(err.contains("needs a CLIP model"), "{err}");
        let err = simulate(&args(&[
            "--dataset",
            &ds,
            "--out",
            o,
            "--methods",
            "full",
            "--no-cache",
        ]))
        .unwrap_err()
        .to_string();
        assert!(err.contains("drop --no-cache"), "{err}");
        let err = simulate(&args(&[
            "--dataset",
            &ds,
            "--model",
            "pixels",
            "--out",
            o,
            "--methods",
            "ncm,ncm",
        ]))
        .unwrap_err()
        .to_string();
        assert!(err.contains("twice"), "{err}");
        let err = simulate(&args(&[
            "--dataset",
            &format!("{ds},{ds}"),
            "--model",
            "pixels",
            "--out",
            o,
        ]))
        .unwrap_err()
        .to_string();
        assert!(err.contains("exactly one"), "{err}");
        assert!(simulate(&args(&[
            "--dataset",
            "/no/such/dir",
            "--model",
            "pixels",
            "--out",
            o
        ]))
        .is_err());
    }

    /// SPEC §8 end to end on the tiny model: 4 time steps of 5 images (2 class groups of
    /// 2 classes), 2 labelled a time step, S = 4. Every learner keeps to the budget in
    /// every time step (on the optimiser's own count too), each spends it on the losses
    /// its data allows, S* is the best of its candidates' recorded validation scores, and
    /// every accuracy is a finite percentage.
    #[test]
    fn diet_protocol_end_to_end_on_tiny_clip() {
        let tmp = tempfile::tempdir().unwrap();
        let ds = shapes(tmp.path(), "shapes", 4, 21);
        let out = tmp.path().join("out");
        let methods = [
            "zero-shot",
            "ncm",
            "diet",
            "labelled-only",
            "replay-only",
            "anytime",
            "diet-tuned",
        ];
        let learners = &methods[2..];
        let a = args(&[
            "--dataset",
            &ds,
            "--protocol",
            "diet",
            "--diet-groups",
            "2",
            "--time-steps",
            "4",
            "--label-percent",
            "40",
            "--budget",
            "4",
            "--cv-images",
            "4",
            "--methods",
            &methods.join(","),
            "--lr",
            "2e-3",
            "--out",
            out.to_str().unwrap(),
        ]);
        let report = simulate(&a).unwrap();
        let plan = &report.plan;
        assert_eq!(plan.stages.len(), 4);
        assert_eq!(plan.validation.len(), 4);
        for s in &plan.stages {
            assert_eq!((s.train.len(), s.unlabelled.len()), (2, 3), "{}", s.name);
        }
        for m in methods {
            let r = rows(&report, m);
            assert_eq!(r.len(), 4, "{m}: one row per time step");
            for row in &r {
                for acc in [row.acc_all, row.acc_seen, row.acc_unseen]
                    .into_iter()
                    .flatten()
                {
                    assert!(
                        acc.is_finite() && (0.0..=100.0).contains(&acc),
                        "{m}: {acc}"
                    );
                }
                assert!(row.acc_all.is_some(), "{m}");
            }
            assert!(
                r[0].acc_unseen.is_some() && r[3].acc_unseen.is_none(),
                "{m}"
            );
        }
        // the budget, per time step and learner
        for m in learners {
            for (t, row) in rows(&report, m).iter().enumerate() {
                let s = row.steps.unwrap_or_else(|| panic!("{m} {t}: no steps"));
                assert_eq!(s.budget, 4);
                assert!(s.used <= s.budget, "{m} {t}: {s:?}");
                assert_eq!(
                    s.used,
                    s.current + s.masked + s.balanced + s.sample,
                    "{m} {t}: {s:?}"
                );
                assert!(s.seconds >= 0.0);
                match *m {
                    "labelled-only" => assert_eq!(s.masked, 0, "no unlabelled data"),
                    "replay-only" => assert_eq!((s.current, s.masked), (0, 0), "L_b alone"),
                    "anytime" => assert_eq!((s.sample, s.skipped), (2, 0), "one per label"),
                    _ => {}
                }
                if *m != "anytime" {
                    assert_eq!(s.used, 4, "{m} {t}: stored data takes every step");
                }
            }
            assert!(summary(&report, m).steps.is_some(), "{m}");
        }
        for m in ["zero-shot", "ncm"] {
            assert!(rows(&report, m).iter().all(|r| r.steps.is_none()));
        }
        // methods sharing a learner report the same steps
        let steps = |m: &str| -> Vec<_> { rows(&report, m).iter().map(|r| r.steps).collect() };
        assert_eq!(steps("diet"), steps("diet-tuned"));
        // counted on the optimisers themselves: the learners took exactly those steps
        let dims = ModelAssets::find("tiny-clip").unwrap().dims().block();
        for m in ["diet", "labelled-only", "replay-only"] {
            let path = out.join("learners").join(m).join("tuned.safetensors");
            let (state, _, _) = anytime_runtime::train::load_tuned(&path, &dims).unwrap();
            let spent: u64 = rows(&report, m)
                .iter()
                .map(|r| u64::from(r.steps.unwrap().used))
                .sum();
            assert_eq!(state.optim.step, spent, "{m}");
            assert_eq!(rows(&report, m)[3].train_steps, spent, "{m}");
        }
        // S* from the data: every candidate scored, the best chosen (ties: the smallest)
        let choice = &report.config["diet"]["s_star"];
        let scores: Vec<(u64, f64)> = choice["scores"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["s_star"].as_u64().unwrap(),
                    c["accuracy"].as_f64().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            scores.iter().map(|s| s.0).collect::<Vec<_>>(),
            [0, 1, 2, 3, 4]
        );
        assert!(scores.iter().all(|s| s.1.is_finite()));
        let best = scores
            .iter()
            .copied()
            .reduce(|b, s| if s.1 > b.1 { s } else { b })
            .unwrap();
        assert_eq!(choice["s_star"].as_u64(), Some(best.0));
        assert_eq!(choice["time_steps"], 3);
        assert!(
            !out.join("learners/cv-s-star-0").exists(),
            "CV learners removed"
        );
        // the files
        let csv = std::fs::read_to_string(out.join("steps.csv")).unwrap();
        assert_eq!(csv.lines().count(), 1 + learners.len() * 4);
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap())
                .unwrap();
        assert_eq!(json["plan"]["kind"], "diet");
        assert_eq!(json["plan"]["num_validation"], 4);
        assert_eq!(json["plan"]["stages"][0]["num_unlabelled"], 3);
        assert!(out.join("accuracy.svg").is_file());
        let table = diet::summary_table(&report);
        assert!(
            table.contains("S* = ") && table.contains("replay-only"),
            "{table}"
        );

        // methods and settings the diet protocol refuses, and diet methods elsewhere
        for (extra, why) in [
            (vec!["--methods", "full"], "does not run under the diet"),
            (
                vec!["--methods", "diet", "--s-star-candidates", "2,9"],
                "must not exceed",
            ),
        ] {
            let mut v = vec![
                "--dataset",
                &ds,
                "--protocol",
                "diet",
                "--diet-groups",
                "2",
                "--time-steps",
                "4",
                "--cv-images",
                "4",
                "--budget",
                "4",
                "--out",
                out.to_str().unwrap(),
            ];
            v.extend(extra);
            let err = format!("{:#}", simulate(&args(&v)).unwrap_err());
            assert!(err.contains(why), "{err}");
        }
        let err = simulate(&args(&[
            "--dataset",
            &ds,
            "--methods",
            "diet",
            "--out",
            out.to_str().unwrap(),
        ]))
        .unwrap_err()
        .to_string();
        assert!(err.contains("--protocol diet only"), "{err}");
    }

    /// Classes `first..first + count` of the synthetic shapes (distinct names for
    /// distinct ranges), written to `<dir>/<name>`.
    fn shape_range(
        dir: &std::path::Path,
        name: &str,
        first: usize,
        count: usize,
        seed: u64,
    ) -> String {
        let root = std::path::PathBuf::from(shapes(dir, name, first + count, seed));
        for class in &crate::sim::synthetic::class_names(first) {
            for split in ["train", "test"] {
                std::fs::remove_dir_all(root.join(split).join(class)).unwrap();
            }
        }
        root.to_string_lossy().into_owned()
    }

    /// What always answering each evaluation group's most frequent test label scores (%),
    /// over the groups that are not held out (as `acc_all` counts them): the chance level
    /// a learner's bar starts from. The datasets are opened as `simulate` opened them.
    fn majority_rate(report: &Report, a: &Args) -> f64 {
        let mut names = a.dataset.clone();
        names.extend(a.held_out.iter().cloned());
        let mut sources: Vec<Dataset> = names
            .iter()
            .map(|n| open_dataset(n, &a.out).unwrap())
            .collect();
        if let Some(classes) = &a.classes {
            sources[0].restrict_classes(classes).unwrap();
        }
        let (mut best, mut total) = (0usize, 0usize);
        for g in report.plan.groups.iter().filter(|g| !g.held_out) {
            let mut counts = std::collections::HashMap::new();
            for s in &g.samples {
                let item = &sources[usize::from(s.source)].items(g.split)[s.index as usize];
                *counts.entry(item.label).or_insert(0usize) += 1;
            }
            best += counts.values().copied().max().unwrap_or(0);
            total += g.samples.len();
        }
        assert!(total > 0, "no test samples");
        100.0 * best as f64 / total as f64
    }

    /// The bars of a learner's method `m` at the end of a run: `margin` points above both
    /// the majority-class rate and zero-shot (the original model alone), so a learner
    /// that learns nothing, or answers one class, fails.
    fn assert_learned(report: &Report, a: &Args, m: &str, margin: f64) {
        let majority = majority_rate(report, a);
        let zs = summary(report, "zero-shot").final_acc.unwrap();
        let acc = summary(report, m).final_acc.unwrap();
        println!("{m}: {acc:.1} (majority {majority:.1}, zero-shot {zs:.1})");
        assert!(
            acc >= majority + margin,
            "{m} {acc:.1} < majority-class rate {majority:.1} + {margin}"
        );
        assert!(
            acc >= zs + margin,
            "{m} {acc:.1} < zero-shot {zs:.1} + {margin}"
        );
    }

    /// OCW mixing keeps the better of its two models: at the end of the run, `full` at
    /// most `margin` points below max(zero-shot, tuned). Only at the end: in the first
    /// stages OCW's estimates rest on a handful of samples (a label whose few samples the
    /// tuned model got wrong before their steps has c_t = 0, so α = 0 and the original
    /// answers), and `full` trails the tuned model there by design (SPEC §2–3).
    fn assert_mixing_keeps_the_better_model(report: &Report, margin: f64) {
        let last = |m: &str| rows(report, m).last().unwrap().acc_all.unwrap();
        for (k, f) in rows(report, "full").iter().enumerate() {
            let (zs, tuned) = (rows(report, "zero-shot")[k], rows(report, "tuned")[k]);
            println!(
                "stage {k}: full {:.1}, zero-shot {:.1}, tuned {:.1}",
                f.acc_all.unwrap(),
                zs.acc_all.unwrap(),
                tuned.acc_all.unwrap()
            );
        }
        let (full, best) = (last("full"), last("zero-shot").max(last("tuned")));
        assert!(
            full >= best - margin,
            "full {full:.1} < max(zero-shot, tuned) {best:.1} − {margin:.1}"
        );
    }

    fn rows<'a>(report: &'a Report, method: &str) -> Vec<&'a crate::sim::metrics::StageResult> {
        report.rows.iter().filter(|r| r.method == method).collect()
    }

    fn summary<'a>(report: &'a Report, method: &str) -> &'a crate::sim::metrics::Summary {
        report
            .summaries
            .iter()
            .find(|s| s.method == method)
            .unwrap()
    }

    /// Checks what every run must satisfy and that the files it wrote parse.
    fn check_outputs(report: &Report, out: &std::path::Path, methods: &[&str]) {
        let stages = report.plan.stages.len();
        for m in methods {
            let mine = rows(report, m);
            assert_eq!(mine.len(), stages, "{m}: one row per stage");
            let images: usize = report.plan.groups.iter().map(|g| g.samples.len()).sum();
            let held: Vec<u16> = report
                .plan
                .groups
                .iter()
                .filter(|g| g.held_out)
                .flat_map(|g| g.candidates.iter().copied())
                .collect();
            for (k, r) in mine.iter().enumerate() {
                assert_eq!(r.stage, k);
                assert!(r.acc_all.is_some(), "{m} {k}");
                assert!(r.peak_rss_kib.unwrap() > 0);
                // every test image is in the confusion matrix once, and its diagonal over
                // the labels not held out is acc_all
                let c = &r.confusion;
                assert_eq!(c.len(), usize::from(report.plan.num_labels), "{m} {k}");
                let total: u32 = c.iter().flatten().sum();
                assert_eq!(total as usize, images, "{m} {k}");
                let kept = |t: usize| !held.contains(&(t as u16));
                let right: u32 = (0..c.len()).filter(|&t| kept(t)).map(|t| c[t][t]).sum();
                let all: u32 = (0..c.len())
                    .filter(|&t| kept(t))
                    .map(|t| c[t].iter().sum::<u32>())
                    .sum();
                let acc = 100.0 * f64::from(right) / f64::from(all);
                assert!(
                    (acc - r.acc_all.unwrap()).abs() < 1e-9,
                    "{m} {k}: {acc} vs {:?}",
                    r.acc_all
                );
            }
        }
        // zero-shot learns nothing, so its accuracy is the same at every stage
        let zs: Vec<_> = rows(report, "zero-shot")
            .iter()
            .map(|r| r.acc_groups.clone())
            .collect();
        assert!(zs.windows(2).all(|w| w[0] == w[1]), "{zs:?}");

        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap())
                .unwrap();
        assert_eq!(
            json["rows"].as_array().unwrap().len(),
            methods.len() * stages
        );
        assert_eq!(json["config"]["seed"], report.config["seed"]);
        assert!(json["plan"]["seed"].is_u64());
        let csv = std::fs::read_to_string(out.join("stages.csv")).unwrap();
        let mut lines = csv.lines();
        let header: Vec<&str> = lines.next().unwrap().split(',').collect();
        for line in lines.clone() {
            assert_eq!(line.split(',').count(), header.len(), "{line}");
        }
        assert_eq!(lines.count(), methods.len() * stages);
        let summary_csv = std::fs::read_to_string(out.join("summary.csv")).unwrap();
        assert_eq!(summary_csv.lines().count(), 1 + methods.len());
        let svg = std::fs::read_to_string(out.join("accuracy.svg")).unwrap();
        assert!(svg.starts_with("<svg"));
        for m in methods {
            assert!(svg.lines().any(|l| l.trim() == *m), "{m} in the legend");
        }
    }

    /// The learner's methods and ablations on the tiny model, data-incremental: the
    /// tiny random CLIP cannot zero-shot the shapes; one update per sample teaches
    /// the tuned block.
    #[test]
    fn data_protocol_learner_methods_on_tiny_clip() {
        let tmp = tempfile::tempdir().unwrap();
        let ds = shape_range(tmp.path(), "shapes", 0, 3, 11);
        let out = tmp.path().join("out");
        let methods = [
            "zero-shot",
            "ncm",
            "tuned",
            "full",
            "no-ocw",
            "alpha-other",
            "no-other",
            "raw",
            "k2b4",
        ];
        let a = args(&[
            "--dataset",
            &ds,
            "--out",
            out.to_str().unwrap(),
            "--stages",
            "50,100",
            "--limit-train",
            "12",
            "--limit-test",
            "9",
            "--methods",
            &methods.join(","),
            "--lr",
            "2e-3",
            "--replay",
            "3",
            "--seed",
            "5",
        ]);
        let report = simulate(&a).unwrap();
        check_outputs(&report, &out, &methods);
        assert_eq!(report.config["seed"], 5);
        assert_eq!(report.config["learner"]["backend"], "cpu");

        let zs = summary(&report, "zero-shot").final_acc.unwrap();
        let ncm = summary(&report, "ncm").final_acc.unwrap();
        assert!(zs < 50.0, "the tiny CLIP is near chance on shapes: {zs}");
        assert!(ncm >= 66.0, "class means separate the shapes: {ncm}");
        // 9 test images of 3 balanced classes (majority 33.3 %): 30 points is 3 images.
        for m in ["tuned", "full", "alpha-other", "no-other", "raw", "k2b4"] {
            assert_learned(&report, &a, m, 30.0);
        }
        // At most one of the 9 images below the better model (measured: full ends one
        // image below tuned, 77.8 against 88.9); a mixing that falls back to the
        // original scores zero-shot's 0 and fails by far.
        assert_mixing_keeps_the_better_model(&report, 100.0 / 9.0 + 0.1);

        let last = |m: &str| *rows(&report, m).last().unwrap();
        // 12 samples, one training step each
        for m in &methods[2..] {
            assert_eq!(last(m).samples_seen, 12);
            assert_eq!(last(m).train_steps, 12, "{m}");
            assert!(last(m).update_ms.unwrap() > 0.0, "{m}");
        }
        // methods sharing one learner report its time and bytes
        for m in ["tuned", "no-ocw", "alpha-other"] {
            assert_eq!(last(m).update_ms, last("full").update_ms, "{m}");
            assert_eq!(last(m).bytes_per_sample, last("full").bytes_per_sample);
        }
        // SPEC §5 records (k 5, 8 bits) of [50, 64] tokens vs all 50 directions in f32
        let bytes = |m: &str| last(m).bytes_per_sample;
        assert!(bytes("full") < 1500.0, "{}", bytes("full"));
        assert!(bytes("raw") > 4.0 * 50.0 * 64.0, "{}", bytes("raw"));
        assert!(bytes("k2b4") < 0.6 * bytes("full"), "{}", bytes("k2b4"));
        assert_eq!(bytes("zero-shot"), 0.0);
        // one learner per distinct training, named after its first method
        let learners = out.join("learners");
        for m in ["tuned", "no-other", "raw", "k2b4"] {
            assert!(learners.join(m).join("tokens.store").is_file(), "{m}");
        }
        assert!(
            !learners.join("full").exists(),
            "full shares the tuned learner"
        );

        // the same seed gives the same run
        let again = simulate(&a).unwrap();
        for (x, y) in report.rows.iter().zip(&again.rows) {
            assert_eq!((&x.method, x.acc_all), (&y.method, y.acc_all));
        }
    }

    /// The trained mini-CLIP on real pictures: CIFAR-10's five classes it never saw in
    /// pretraining, at the model's shipped learning rate, with Fashion-MNIST held out.
    /// One update per sample must lift the full method far above zero-shot and above
    /// the majority rate, and keep zero-shot accuracy on the held-out dataset after every
    /// stage.
    #[test]
    fn mini_clip_learns_unseen_cifar_classes_and_keeps_fashion_mnist() {
        let (Ok(_), Ok(_)) = (dataset::find("cifar-10"), dataset::find("fashion-mnist")) else {
            anytime_testkit::skip::data_absent(
                "mini_clip_learns_unseen_cifar_classes_and_keeps_fashion_mnist",
                "needs CIFAR-10 ($ANYTIME_EDGE_ASSETS/data/cifar-10) and Fashion-MNIST \
                 (Debian package dataset-fashion-mnist)",
            );
            return;
        };
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        let methods = ["zero-shot", "ncm", "tuned", "full"];
        let a = args(&[
            "--model",
            "mini-clip",
            "--dataset",
            "cifar-10",
            "--classes",
            "dog,frog,horse,ship,truck",
            "--held-out",
            "fashion-mnist",
            "--stages",
            "50,100",
            "--limit-train",
            "250",
            "--limit-test",
            "500",
            "--methods",
            &methods.join(","),
            "--seed",
            "1",
            "--out",
            out.to_str().unwrap(),
        ]);
        let report = simulate(&a).unwrap();
        check_outputs(&report, &out, &methods);
        let shipped = ModelAssets::find("mini-clip").unwrap().manifest.learner.lr;
        assert_eq!(
            report.config["learner"]["lr"].as_f64().map(|v| v as f32),
            shipped,
            "the model's shipped learning rate"
        );
        let fin = |m: &str| summary(&report, m).final_acc.unwrap();
        let (zs, ncm, tuned, full) = (fin("zero-shot"), fin("ncm"), fin("tuned"), fin("full"));
        println!("unseen CIFAR-10 classes: zero-shot {zs}, ncm {ncm}, tuned {tuned}, full {full}");
        // 500 test images of five balanced classes (majority 20 %); zero-shot is 33 %
        // (BENCHMARKS.md). 20 points over both is what one update per sample at the
        // shipped rate must give; a learner at chance, or one answering one class, can't.
        for m in ["tuned", "full"] {
            assert_learned(&report, &a, m, 20.0);
        }
        // OCW mixes in the original, whose confident wrong answers on these never-seen
        // classes cost `full` a few points against the tuned model alone: measured −2.2
        // at 2 of 7 stages on 1,000 test images (BENCHMARKS.md, claim 1) and about −4 on
        // other splits. The bar allows that finding plus the noise of 500 images (one
        // image is 0.2 points; the paired difference's standard error is about 1.5
        // points), and no more: a mixing that drops to zero-shot is 25 points below.
        assert_mixing_keeps_the_better_model(&report, 6.0);
        // held-out Fashion-MNIST, after every stage: never trained, so OCW keeps it zero-shot
        let g = report.plan.groups.iter().position(|g| g.held_out).unwrap();
        let zs_rows = rows(&report, "zero-shot");
        for (k, r) in rows(&report, "full").iter().enumerate() {
            let (ours, theirs) = (r.acc_groups[g].unwrap(), zs_rows[k].acc_groups[g].unwrap());
            assert!(
                theirs > 50.0,
                "mini-clip zero-shot on Fashion-MNIST: {theirs}"
            );
            assert!(
                ours >= theirs - 1.0,
                "stage {k}: held-out {ours} vs zero-shot {theirs}"
            );
        }
    }

    /// Class-incremental: before a group arrives its classes are unseen; the
    /// learner is only taught seen classes.
    #[test]
    fn class_protocol_learner_on_tiny_clip() {
        let tmp = tempfile::tempdir().unwrap();
        let ds = shape_range(tmp.path(), "shapes", 0, 4, 12);
        let out = tmp.path().join("out");
        let methods = ["zero-shot", "ncm", "full", "tuned"];
        let a = args(&[
            "--dataset",
            &ds,
            "--protocol",
            "class",
            "--groups",
            "2",
            "--out",
            out.to_str().unwrap(),
            "--methods",
            &methods.join(","),
            "--lr",
            "2e-3",
            "--replay",
            "7",
            "--limit-test",
            "12",
        ]);
        let report = simulate(&a).unwrap();
        check_outputs(&report, &out, &methods);
        assert_eq!(report.plan.stages.len(), 2);
        for m in methods {
            let r = rows(&report, m);
            assert!(r[0].acc_seen.is_some() && r[0].acc_unseen.is_some(), "{m}");
            assert!(
                r[1].acc_unseen.is_none(),
                "{m}: every class seen at the end"
            );
            assert_eq!(r[0].samples_seen, 12);
        }
        // the tiny CLIP cannot zero-shot the shapes; after both groups the learner can:
        // 12 test images of 4 balanced classes (majority 25 %), 25 points is 3 images
        for m in ["full", "tuned"] {
            assert_learned(&report, &a, m, 25.0);
            assert!(summary(&report, m).forgetting.is_some());
        }
        // At most one of the 12 images below the better model.
        assert_mixing_keeps_the_better_model(&report, 100.0 / 12.0 + 0.1);
    }

    /// The data-free protocol end to end on the tiny model (issue 15): the baselines,
    /// stored replay, the private learner with either replay and its lower bound (the
    /// other ablations differ only in their settings, `sim::learner`'s tests), the private
    /// learners consolidating at each stage end (the generator replay's generator trained
    /// once a label has published statistics; the restyled replay's none), storing no
    /// record, and the privacy audit's item 3 on the generator: no synthetic token set
    /// nearer a learned sample than the nearest pair of learned samples of its label.
    #[test]
    fn data_free_protocol_end_to_end_on_tiny_clip() {
        let tmp = tempfile::tempdir().unwrap();
        // ≥ 8 a label, so that its statistics are published and the generator trains
        let ds = shapes_with(tmp.path(), "shapes", 4, 10, 21);
        let out = tmp.path().join("out");
        let methods = [
            "zero-shot",
            "ncm",
            "full",
            "private",
            "private-tuned",
            "private-generator",
            "private-no-replay",
        ];
        let a = args(&[
            "--dataset",
            &ds,
            "--protocol",
            "data-free",
            "--groups",
            "2",
            "--out",
            out.to_str().unwrap(),
            "--lr",
            "2e-3",
            "--replay",
            "7",
            "--methods",
            &methods.join(","),
        ]);
        let report = simulate(&a).unwrap();
        check_outputs(&report, &out, &methods);
        assert_eq!(report.config["protocol"], "data-free");
        let generator = |m: &str| m == "private-generator";
        for m in methods {
            let r = rows(&report, m);
            let private = m.starts_with("private");
            for (k, row) in r.iter().enumerate() {
                assert_eq!(row.samples_seen, 20 * (k as u64 + 1), "{m}");
                let c = row.consolidation;
                assert_eq!(
                    c.is_some(),
                    private,
                    "{m}: a consolidation at each stage end"
                );
                if let Some(c) = c {
                    assert_eq!((c.labels, c.published), (2 * (k + 1), 2 * (k + 1)), "{m}");
                    assert!(c.seconds.is_finite() && c.seconds > 0.0, "{m}");
                    assert!(c.peak_bytes > 0, "{m}");
                    if generator(m) {
                        assert_eq!(c.generator_steps, 200, "{m}");
                        // the alignment loss falls while the generator trains
                        assert!(c.stats_last < c.stats_first, "{m}: {c:?}");
                    } else {
                        assert_eq!(c.generator_steps, 0, "{m}: the restyled replay");
                    }
                }
            }
            let s = summary(&report, m);
            assert_eq!(s.consolidation_s.is_some(), private, "{m}");
            if private {
                // no record stored: the bytes are the statistics and the generator, the
                // same whatever the samples (4 labels' statistics at the end)
                let learners = out.join("learners");
                let dir = learners.join(if m == "private-tuned" { "private" } else { m });
                let store = std::fs::metadata(dir.join("store.bin")).map(|m| m.len());
                assert!(dir.join("stats.bin").is_file(), "{m}: {store:?}");
                assert!(dir.join("cls_stats.bin").is_file(), "{m}");
                let bytes = s.bytes_per_sample * 40.0;
                assert_eq!(dir.join("generator.bin").is_file(), generator(m), "{m}");
                let files: u64 = ["stats.bin", "cls_stats.bin", "generator.bin"]
                    .iter()
                    .filter_map(|f| std::fs::metadata(dir.join(f)).ok())
                    .map(|f| f.len())
                    .sum();
                assert!(
                    (bytes - files as f64).abs() < 1.0,
                    "{m}: {bytes} vs {files}"
                );
            }
        }
        // the audit: every label, a pool of its 10 learned samples, 64 synthetic sets
        let audit = &report.config["privacy_audit"];
        assert_eq!(audit["method"], "private-generator");
        let labels = audit["labels"].as_array().unwrap();
        assert_eq!(labels.len(), 4, "{audit}");
        for l in labels {
            assert_eq!(l["pool"], 10, "{l}");
            assert_eq!(l["generated"], AUDIT_SYNTHETIC, "{l}");
            let (rr, sr) = (&l["real_to_real"], &l["synthetic_to_real"]);
            let min = |v: &serde_json::Value| v["min"].as_f64().unwrap();
            assert!(min(rr) > 0.0 && min(sr) > 0.0, "{l}");
            assert_eq!(l["closer_than_any_real_pair"], 0, "{l}");
            assert!(min(sr) >= min(rr), "{l}");
        }
        let table = summary_table(&report);
        assert!(table.contains("consolidations:"), "{table}");
    }

    /// Task-incremental with a held-out dataset: the full method never trains on the
    /// held-out labels, so OCW gives them α = 0 and its held-out accuracy is exactly
    /// zero-shot's at every stage (retention), while it learns the tasks.
    #[test]
    fn task_protocol_learner_on_tiny_clip_keeps_zero_shot_on_held_out() {
        let tmp = tempfile::tempdir().unwrap();
        let a1 = shape_range(tmp.path(), "first", 0, 2, 13);
        let a2 = shape_range(tmp.path(), "second", 2, 2, 14);
        let held = shape_range(tmp.path(), "held", 4, 3, 15);
        let out = tmp.path().join("out");
        let methods = ["zero-shot", "tuned", "full"];
        let a = args(&[
            "--dataset",
            &format!("{a1},{a2}"),
            "--held-out",
            &held,
            "--protocol",
            "task",
            "--out",
            out.to_str().unwrap(),
            "--methods",
            &methods.join(","),
            "--lr",
            "2e-3",
            "--replay",
            "7",
        ]);
        let report = simulate(&a).unwrap();
        check_outputs(&report, &out, &methods);
        let g = report.plan.groups.iter().position(|g| g.held_out).unwrap();
        let zs = rows(&report, "zero-shot");
        let full = rows(&report, "full");
        for k in 0..2 {
            assert!(full[k].acc_groups[g].is_some());
            assert_eq!(full[k].acc_groups[g], zs[k].acc_groups[g], "stage {k}");
        }
        assert_eq!(full[1].samples_seen, 24);
        // two 2-way tasks of 6 test images each (majority 50 %): 25 points is 3 images
        for m in ["tuned", "full"] {
            assert_learned(&report, &a, m, 25.0);
        }
        // At most one of the 12 images below the better model (measured: none).
        assert_mixing_keeps_the_better_model(&report, 100.0 / 12.0 + 0.1);
        assert_eq!(summary(&report, "full").held_out.len(), 1);
    }
}
