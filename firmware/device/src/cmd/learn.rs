//! `anytime-edge learn`: one update per labelled image, from arguments or a folder of
//! `label/image` files; on a diet (`--budget`), images without `--label` are unlabelled
//! samples, and training happens when a time step ends.
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use anytime_runtime::encoder::load_image;
use serde_json::json;

use super::{consolidation_json, consolidation_line, time_step_json, time_step_line, LearnerArgs};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    learner: LearnerArgs,
    /// Label of the images given as arguments; without it (and without --folder) they
    /// are unlabelled samples of a diet learner (--budget).
    #[arg(long)]
    label: Option<String>,
    /// A folder of `label/image` files (every image learned under its folder's name).
    #[arg(long, conflicts_with = "label")]
    folder: Option<PathBuf>,
    /// The other labels of the task, comma-separated: candidates the images are not, in
    /// each step's softmax besides the stored labels (not stored themselves). Without
    /// them, a learner whose store holds one label has nothing to tell it from.
    #[arg(long, value_delimiter = ',')]
    among: Vec<String>,
    /// One JSON object per sample on stdout.
    #[arg(long)]
    json: bool,
    /// Images to learn (with --label).
    images: Vec<PathBuf>,
}

pub fn run(a: Args) -> Result<()> {
    if a.folder.is_none() && a.images.is_empty() {
        bail!("no images given to learn");
    }
    let samples: Vec<(PathBuf, Option<String>)> = match (&a.folder, &a.label) {
        (Some(root), _) => folder_samples(root)?
            .into_iter()
            .map(|(p, l)| (p, Some(l)))
            .collect(),
        (None, label) => a
            .images
            .iter()
            .map(|p| (p.clone(), label.clone()))
            .collect(),
    };
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .context("installing signal handlers")?;
    }
    let among: Vec<&str> = a
        .among
        .iter()
        .map(|l| l.trim())
        .filter(|l| !l.is_empty())
        .collect();
    let (mut learner, training) = a.learner.open_to_train()?;
    if a.label.is_none() && a.folder.is_none() && learner.diet_status().is_none() {
        bail!("images without --label are unlabelled samples, which only a diet learner takes (give --budget S); to learn them, give --label");
    }
    eprintln!("{training}");
    let mut failed = 0usize;
    let mut not_reached = 0usize;
    for (i, (path, label)) in samples.iter().enumerate() {
        if stop.load(Ordering::Relaxed) {
            not_reached = samples.len() - i;
            eprintln!("stopping on signal");
            break;
        }
        let shown = path.to_string_lossy();
        // An image's error names it; learning's is given its name here.
        let Some(label) = label else {
            let result = match load_image(path) {
                Ok(img) => learner
                    .observe_unlabelled_image(&img)
                    .with_context(|| shown.to_string()),
                Err(e) => Err(e.into()),
            };
            match result {
                Ok(r) => {
                    if a.json {
                        println!(
                            "{}",
                            json!({"image": shown, "unlabelled": true, "held": r.held,
                                   "dropped": r.dropped,
                                   "time_step": r.time_step.as_ref().map(time_step_json)})
                        );
                    } else {
                        println!(
                            "{shown}: kept unlabelled for this time step ({} held)",
                            r.held
                        );
                        if let Some(t) = &r.time_step {
                            println!("{}", time_step_line(t));
                        }
                    }
                }
                Err(e) => {
                    failed += 1;
                    if a.json {
                        println!("{}", json!({"image": shown, "error": format!("{e:#}")}));
                    } else {
                        eprintln!("error: {e:#}");
                    }
                }
            }
            continue;
        };
        let result = match load_image(path) {
            Ok(img) => learner
                .learn_image_in(&img, label, &among)
                .with_context(|| shown.to_string()),
            Err(e) => Err(e.into()),
        };
        if let Ok(Some(t)) = result.as_ref().map(|r| r.time_step.as_ref()) {
            if !a.json {
                println!("{}", time_step_line(t));
            }
        }
        if let Ok(Some(c)) = result.as_ref().map(|r| r.consolidation.as_ref()) {
            if !a.json {
                println!("{}", consolidation_line(c));
            }
        }
        match (result, a.json) {
            (Ok(r), true) => println!(
                "{}",
                json!({"image": shown, "label": r.label, "learned": r.learned, "loss": r.loss,
                       "batch": r.batch, "labels": r.labels, "tuned_correct": r.tuned_correct,
                       "original_correct": r.original_correct, "record_bytes": r.record_bytes,
                       "time_step": r.time_step.as_ref().map(time_step_json),
                       "consolidation": r.consolidation.as_ref().map(consolidation_json)})
            ),
            (Ok(r), false) => println!(
                "{shown}: learned `{}` (sample {}, batch {}, loss {:.4})",
                r.label, r.learned, r.batch, r.loss
            ),
            (Err(e), true) => {
                failed += 1;
                println!("{}", json!({"image": shown, "error": format!("{e:#}")}));
            }
            (Err(e), false) => {
                failed += 1;
                eprintln!("error: {e:#}");
            }
        }
    }
    // Unlabelled samples live only in this process: a diet time step holding samples
    // ends here, or they would be lost unused.
    let held = learner
        .diet_status()
        .is_some_and(|s| s.labelled + s.unlabelled > 0);
    if held && !stop.load(Ordering::Relaxed) {
        let t = learner
            .end_time_step()
            .context("ending the time step (its samples live only in this process)")?;
        if a.json {
            println!("{}", json!({"time_step": time_step_json(&t)}));
        } else {
            println!("{} (at exit)", time_step_line(&t));
        }
    }
    learner.checkpoint().context("saving the tuned weights")?;
    if failed > 0 || not_reached > 0 {
        let mut parts = Vec::new();
        if failed > 0 {
            parts.push(format!("{failed} could not be learned"));
        }
        if not_reached > 0 {
            parts.push(format!(
                "{not_reached} were not reached (stopped on signal)"
            ));
        }
        bail!("of {} images, {}", samples.len(), parts.join(" and "));
    }
    Ok(())
}

/// `root/label/*` image files, sorted for a reproducible order.
fn folder_samples(root: &Path) -> Result<Vec<(PathBuf, String)>> {
    let mut out = Vec::new();
    let mut dirs: Vec<_> = std::fs::read_dir(root)
        .with_context(|| format!("reading {}", root.display()))?
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("reading {}", root.display()))?;
    dirs.sort_by_key(|e| e.file_name());
    for d in dirs {
        if !d.file_type()?.is_dir() {
            continue;
        }
        let label = d.file_name().to_string_lossy().into_owned();
        let mut files: Vec<_> = std::fs::read_dir(d.path())?
            .collect::<std::io::Result<Vec<_>>>()?
            .into_iter()
            .filter(|f| f.file_type().map(|t| t.is_file()).unwrap_or(false))
            .map(|f| f.path())
            .collect();
        files.sort();
        out.extend(files.into_iter().map(|f| (f, label.clone())));
    }
    if out.is_empty() {
        bail!("{} holds no label/image files", root.display());
    }
    Ok(out)
}
