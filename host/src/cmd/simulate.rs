//! `anytime-host simulate`: replays labelled image datasets as a stream under one of
//! the SPEC §9 protocols and evaluates every method after every stage.
//!
//! Writes into `--out`: `report.json` (settings, plan, every row and summary),
//! `stages.csv`, `summary.csv` and `accuracy.svg` (accuracy against stage, one line
//! per method), and prints the summary table.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

use anytime_core::codec::CodecParams;

use crate::sim::cache::Encoding;
use crate::sim::dataset::{self, Dataset};
use crate::sim::features::{Backbone, ClipBackbone, FeatureTable, PixelBackbone};
use crate::sim::method::{LabelEmbeddings, Method, NearestClassMean, ZeroShot};
use crate::sim::metrics::Report;
use crate::sim::plot::{accuracy_svg, Curve};
use crate::sim::protocol::{plan, PlanOptions, ProtocolKind, SourceInfo, DEFAULT_PERCENTS};
use crate::sim::runner;
use crate::sim::synthetic::{write_image_folder, SyntheticSpec};

/// Methods that run today.
const AVAILABLE: [&str; 2] = ["zero-shot", "ncm"];
/// Methods that need the anytime learner (`anytime_runtime::learner`), not wired yet.
const PENDING: [&str; 6] = ["full", "tuned", "no-ocw", "no-other", "raw", "alpha-other"];

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Dataset name (looked up in $ANYTIME_EDGE_ASSETS/data/), path, or `synthetic[:K]`; several
    /// (comma-separated or repeated) for the task protocol, in training order.
    #[arg(long, required = true, value_delimiter = ',')]
    pub dataset: Vec<String>,
    /// Task protocol: a dataset never trained on, evaluated at every stage
    /// (zero-shot retention).
    #[arg(long)]
    pub held_out: Option<String>,
    #[arg(long, value_enum, default_value = "data")]
    pub protocol: ProtocolKind,
    /// Model name or path (see models/README.md), or `pixels` for a model-free
    /// stand-in (8×8 thumbnails, random label embeddings).
    #[arg(long, default_value = "tiny-clip")]
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
    /// Class protocol: number of class groups.
    #[arg(long, default_value_t = 5)]
    pub groups: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Methods to compare (comma-separated): zero-shot, ncm; the learner's
    /// full, tuned, no-ocw, no-other, raw, alpha-other are skipped with a warning until
    /// it lands.
    #[arg(long, value_delimiter = ',', default_value = "zero-shot,ncm")]
    pub methods: Vec<String>,
    /// Output directory.
    #[arg(long, default_value = "target/sim")]
    pub out: PathBuf,
    /// Token cache directory (default: $ANYTIME_EDGE_ASSETS/cache, else <out>/cache).
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
        args.protocol == ProtocolKind::Task || (args.dataset.len() == 1 && args.held_out.is_none()),
        "the {:?} protocol takes exactly one --dataset and no --held-out",
        args.protocol
    );
    let mut names = args.dataset.clone();
    names.extend(args.held_out.iter().cloned());
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let datasets = names
        .iter()
        .map(|n| open_dataset(n, &args.out).with_context(|| format!("opening dataset `{n}`")))
        .collect::<Result<Vec<_>>>()?;
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
        limit_train: args.limit_train,
        limit_test: args.limit_test,
    };
    let plan = plan(&sources, &opts)?;

    let mut method_names = Vec::new();
    for m in &args.methods {
        let m = m.trim();
        if AVAILABLE.contains(&m) {
            method_names.push(m.to_owned());
        } else if PENDING.contains(&m) {
            log::warn!(
                "method `{m}` needs the anytime learner, which is not wired in yet: skipped"
            );
        } else {
            bail!(
                "unknown method `{m}`; known: {}, {}",
                AVAILABLE.join(", "),
                PENDING.join(", ")
            );
        }
    }
    ensure!(
        !method_names.is_empty(),
        "no runnable method among {:?}",
        args.methods
    );

    let mut backbone: Box<dyn Backbone> = if args.model == "pixels" {
        Box::new(PixelBackbone)
    } else {
        Box::new(ClipBackbone::load(&args.model)?)
    };
    let cache_dir = (!args.no_cache).then(|| {
        args.cache
            .clone()
            .unwrap_or_else(|| match std::env::var_os(dataset::ASSETS_ENV) {
                Some(a) => PathBuf::from(a).join("cache"),
                None => args.out.join("cache"),
            })
    });

    // the images the plan touches, per source
    let mut needed: Vec<(Vec<u32>, Vec<u32>)> = vec![Default::default(); datasets.len()];
    for r in plan.stages.iter().flat_map(|s| &s.train) {
        needed[usize::from(r.source)].0.push(r.index);
    }
    for r in plan.groups.iter().flat_map(|g| &g.samples) {
        needed[usize::from(r.source)].1.push(r.index);
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
    let mut methods: Vec<Box<dyn Method>> = method_names
        .iter()
        .map(|m| -> Box<dyn Method> {
            match m.as_str() {
                "ncm" => Box::new(NearestClassMean::new(text.clone())),
                _ => Box::new(ZeroShot::new(text.clone())),
            }
        })
        .collect();

    let pb = bar(runner::work(&plan, methods.len()), quiet);
    let results = runner::run(&plan, &sources, &mut table, &mut methods, &pb)?;
    pb.finish_and_clear();

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
        "stages": args.stages,
        "groups": args.groups,
        "methods": method_names,
        "methods_requested": args.methods,
        "cache": cache_dir,
        "token_cache": encoding.tag(),
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
    let title = format!(
        "{:?}-incremental on {} ({})",
        args.protocol,
        names.join(", "),
        backbone.id()
    )
    .to_lowercase();
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

    fn args(extra: &[&str]) -> Args {
        let mut v = vec!["simulate"];
        v.extend_from_slice(extra);
        Cli::parse_from(v).args
    }

    fn shapes(dir: &std::path::Path, name: &str, classes: usize, seed: u64) -> String {
        let spec = SyntheticSpec {
            classes,
            train_per_class: 6,
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
            "ncm,full",
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
}
