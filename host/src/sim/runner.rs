//! Replays a plan: at every stage each method observes the stage's new samples
//! (timed: the labelled ones, then the unlabelled ones of a diet time step for the
//! methods that take them, then [`Method::end_stage`]), then predicts every evaluation
//! group's test samples; one [`StageResult`] per method and stage.

use std::time::Instant;

use anyhow::{Context, Result};
use indicatif::ProgressBar;

use super::dataset::Split;
use super::features::FeatureTable;
use super::method::{Features, Method};
use super::metrics::{none_eval, peak_rss_kib, NoneEval, StageResult, StageScore};
use super::protocol::{Plan, ProtocolKind, SampleRef, SourceInfo};

/// Units of work [`run`] reports to its progress bar.
pub fn work(plan: &Plan, methods: usize) -> u64 {
    let per_stage: usize = plan.groups.iter().map(|g| g.samples.len()).sum();
    let train: usize = plan
        .stages
        .iter()
        .map(|s| s.train.len() + s.unlabelled.len())
        .sum();
    (methods * (train + plan.stages.len() * per_stage)) as u64
}

/// The global label of sample `r` of `split`.
pub fn label_of(plan: &Plan, sources: &[SourceInfo], r: SampleRef, split: Split) -> Result<u16> {
    let s = &sources[usize::from(r.source)];
    let local = match split {
        Split::Train => s.train_labels.get(r.index as usize),
        Split::Test => s.test_labels.get(r.index as usize),
    };
    let local = *local.with_context(|| format!("no label for image {} of {}", r.index, s.name))?;
    Ok(plan.global_label(r.source, local))
}

/// Runs every stage of `plan` for every method, in lockstep stage by stage.
pub fn run(
    plan: &Plan,
    sources: &[SourceInfo],
    table: &mut FeatureTable,
    methods: &mut [Box<dyn Method>],
    progress: &ProgressBar,
) -> Result<Vec<StageResult>> {
    let mut rows = Vec::new();
    let mut observed = vec![0u64; methods.len()];
    let label_of = |source: u16, split: Split, index: u32| -> Result<u16> {
        label_of(plan, sources, SampleRef { source, index }, split)
    };
    for (k, stage) in plan.stages.iter().enumerate() {
        for (m, method) in methods.iter_mut().enumerate() {
            progress.set_message(format!("{} · {}", stage.name, method.name()));
            let mut update_s = 0.0;
            let accounted = method.update_seconds();
            for r in &stage.train {
                let label = label_of(r.source, Split::Train, r.index)?;
                let tokens = if method.needs_tokens() {
                    Some(table.tokens(r.source, Split::Train, r.index)?)
                } else {
                    None
                };
                let x = Features {
                    tokens: tokens.as_deref(),
                    embedding: table.embedding(r.source, Split::Train, r.index)?,
                };
                let t = Instant::now();
                method
                    .observe(&x, label)
                    .with_context(|| format!("{} observing image {}", method.name(), r.index))?;
                update_s += t.elapsed().as_secs_f64();
                progress.inc(1);
            }
            let mut n_new = stage.train.len();
            if method.takes_unlabelled() {
                for r in &stage.unlabelled {
                    let tokens = if method.needs_tokens() {
                        Some(table.tokens(r.source, Split::Train, r.index)?)
                    } else {
                        None
                    };
                    let x = Features {
                        tokens: tokens.as_deref(),
                        embedding: table.embedding(r.source, Split::Train, r.index)?,
                    };
                    let t = Instant::now();
                    method.observe_unlabelled(&x).with_context(|| {
                        format!("{} observing unlabelled image {}", method.name(), r.index)
                    })?;
                    update_s += t.elapsed().as_secs_f64();
                }
                n_new += stage.unlabelled.len();
            }
            progress.inc(stage.unlabelled.len() as u64);
            let t = Instant::now();
            let steps = method
                .end_stage()
                .with_context(|| format!("{} ending {}", method.name(), stage.name))?;
            update_s += t.elapsed().as_secs_f64();
            let consolidation = method.consolidation();
            observed[m] += stage.train.len() as u64;
            if let (Some(before), Some(after)) = (accounted, method.update_seconds()) {
                update_s = after - before;
            }

            let t_eval = Instant::now();
            let mut score = StageScore::new(plan.groups.len());
            let labels = usize::from(plan.num_labels);
            let mut confusion = vec![vec![0u32; labels]; labels];
            for (g, group) in plan.groups.iter().enumerate() {
                for r in &group.samples {
                    let truth = label_of(r.source, group.split, r.index)?;
                    let tokens = if method.needs_tokens() {
                        Some(table.tokens(r.source, group.split, r.index)?)
                    } else {
                        None
                    };
                    let x = Features {
                        tokens: tokens.as_deref(),
                        embedding: table.embedding(r.source, group.split, r.index)?,
                    };
                    let pick = method.predict(&x, &group.candidates)?;
                    let answer = group.candidates.get(pick).copied();
                    let correct = answer == Some(truth);
                    if let (Some(row), Some(a)) = (confusion.get_mut(usize::from(truth)), answer) {
                        if let Some(c) = row.get_mut(usize::from(a)) {
                            *c += 1;
                        }
                    }
                    let seen = stage.seen.binary_search(&truth).is_ok();
                    score.record(g, group.held_out, seen, correct);
                    progress.inc(1);
                }
            }
            // "None of the above": once some labels are learned and some are not, ask
            // over the learned labels only; images of the others should be "none".
            let mut none = Vec::new();
            let open = plan.kind == ProtocolKind::Class
                && !stage.seen.is_empty()
                && plan
                    .groups
                    .iter()
                    .any(|g| !g.held_out && g.learned_at.is_some_and(|l| l > k));
            if open {
                let mut signals: Vec<(&'static str, f64, Vec<f64>)> = Vec::new();
                let (mut unlearned, mut correct) = (Vec::new(), Vec::new());
                for group in plan.groups.iter().filter(|g| !g.held_out) {
                    for r in &group.samples {
                        let truth = label_of(r.source, group.split, r.index)?;
                        let tokens = if method.needs_tokens() {
                            Some(table.tokens(r.source, group.split, r.index)?)
                        } else {
                            None
                        };
                        let x = Features {
                            tokens: tokens.as_deref(),
                            embedding: table.embedding(r.source, group.split, r.index)?,
                        };
                        let Some(p) = method.predict_open(&x, &stage.seen)? else {
                            break;
                        };
                        if signals.is_empty() {
                            signals = p
                                .signals
                                .iter()
                                .map(|s| (s.name, s.threshold, Vec::new()))
                                .collect();
                        }
                        for ((_, _, v), s) in signals.iter_mut().zip(&p.signals) {
                            v.push(s.value);
                        }
                        unlearned.push(stage.seen.binary_search(&truth).is_err());
                        correct.push(stage.seen.get(p.pick) == Some(&truth));
                    }
                }
                none = signals
                    .iter()
                    .map(|(name, t, v)| none_eval(name, v, &unlearned, &correct, *t))
                    .collect::<Vec<NoneEval>>();
            }

            let mut row = StageResult {
                method: method.name().to_owned(),
                stage: k,
                stage_name: stage.name.clone(),
                samples_seen: observed[m],
                acc_all: None,
                acc_seen: None,
                acc_unseen: None,
                acc_groups: Vec::new(),
                bytes_per_sample: if observed[m] > 0 {
                    method.stored_bytes() as f64 / observed[m] as f64
                } else {
                    0.0
                },
                train_steps: method.train_steps(),
                update_ms: (n_new > 0).then(|| 1e3 * update_s / n_new as f64),
                eval_s: t_eval.elapsed().as_secs_f64(),
                peak_rss_kib: peak_rss_kib(),
                none,
                steps,
                consolidation,
                confusion,
            };
            row.set_score(&score);
            log::debug!(
                "{} after {}: {:?} % all ({:?} seen, {:?} unseen)",
                row.method,
                row.stage_name,
                row.acc_all,
                row.acc_seen,
                row.acc_unseen
            );
            rows.push(row);
        }
    }
    Ok(rows)
}
