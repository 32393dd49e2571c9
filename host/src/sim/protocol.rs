//! Evaluation protocols of SPEC §9 as plans: which training samples arrive at each
//! stage, and which test samples are scored against which candidate labels.
//!
//! A plan only needs labels, never pixels. Several datasets ("sources") share one
//! global label space: source `s`'s local label `l` is global label
//! `offset[s] + l`, in the order the sources are given (the held-out source last).
//!
//! - **data**: the training set in one seeded order, stage `k` holding the samples
//!   up to `ceil(p_k% · n)` (cumulative 2, 4, 8, 16, 32, 64, 100 % by default).
//!   One evaluation group, the whole test set, scored over all labels.
//! - **class**: classes in a seeded order, split into `G` groups as even as possible
//!   (the first `C mod G` groups get one more); stage `g` trains on the samples of
//!   group `g` in seeded order. Every test sample is scored over **all** labels; one
//!   evaluation group per class group, so seen and unseen accuracy and forgetting
//!   can be read off.
//! - **task**: one stage per source, in order; each source's test set is scored
//!   over its own labels.
//! - **diet** (SPEC §8, "learning on a diet"): class-incremental *time steps* with sparse
//!   labels. Classes are cut into `G` groups as in **class**; the `T` time steps are
//!   split into `G` runs of consecutive time steps (group `g` spans time steps
//!   `⌊g·T/G⌋ .. ⌊(g+1)·T/G⌋`), so classes arrive over time and never come back. A group's
//!   training images, in seeded order, are spread evenly over its time steps (all of the
//!   subset is used). In each time step `label_percent` % of its samples (rounded, at least
//!   one) carry their label, chosen seeded and class-stratified; the rest arrive
//!   unlabelled ([`Stage::unlabelled`]). Scored like **class** (one evaluation group per
//!   class group, over all labels). `cv_images` class-stratified training images are
//!   carved out of the stream ([`Plan::validation`], never trained on, never a test
//!   image) for choosing `S*` by cross-validation.
//!
//! Every protocol takes an optional held-out source (the last one): it is never
//! trained on, and its test set, scored over its own labels at every stage, measures
//! zero-shot retention.
//!
//! With `validation`, each trained source's evaluation set is that many
//! class-stratified images carved out of its *training* split (and never trained on)
//! instead of its test split: for choosing knobs without looking at the test images.
//!
//! `--limit-*` subsampling is class-stratified (round robin over classes in a
//! seeded order) and applies to each source separately.

use anyhow::{ensure, Result};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::Serialize;

use super::dataset::Split;

/// Which protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ProtocolKind {
    /// Data-incremental: growing fractions of one training set.
    Data,
    /// Class-incremental: classes arrive in groups.
    Class,
    /// Task-incremental: one dataset after another, with a held-out one.
    Task,
    /// Learning on a diet (SPEC §8): class-incremental time steps, sparse labels.
    Diet,
    /// Data-free class-incremental (SPEC §7, §9): the class protocol's stages, the
    /// private learner and its baselines.
    #[serde(rename = "data-free")]
    DataFree,
}

/// Default data-incremental stages, in percent of the training set.
pub const DEFAULT_PERCENTS: [u32; 7] = [2, 4, 8, 16, 32, 64, 100];

/// What a plan needs to know of one dataset.
#[derive(Debug, Clone)]
pub struct SourceInfo {
    pub name: String,
    pub num_classes: u16,
    pub train_labels: Vec<u16>,
    pub test_labels: Vec<u16>,
}

/// One sample of one source's split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SampleRef {
    pub source: u16,
    pub index: u32,
}

/// The samples that arrive at one stage.
#[derive(Debug, Clone, Serialize)]
pub struct Stage {
    pub name: String,
    /// New training samples, in arrival order (serialised as their number); with the
    /// diet protocol, the time step's labelled samples.
    #[serde(rename = "num_train", serialize_with = "serialize_len")]
    pub train: Vec<SampleRef>,
    /// Diet protocol: the time step's samples that arrive without their label, in
    /// arrival order (serialised as their number; empty for the other protocols).
    #[serde(
        rename = "num_unlabelled",
        serialize_with = "serialize_len",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub unlabelled: Vec<SampleRef>,
    /// Global labels trained on up to and including this stage, sorted.
    pub seen: Vec<u16>,
}

/// Test samples scored together over one candidate label set.
#[derive(Debug, Clone, Serialize)]
pub struct EvalGroup {
    pub name: String,
    /// The split the samples are taken from (the training split for a validation set).
    pub split: Split,
    /// Test samples (serialised as their number).
    #[serde(rename = "num_samples", serialize_with = "serialize_len")]
    pub samples: Vec<SampleRef>,
    /// Candidate global labels; a prediction is an index into this list.
    pub candidates: Vec<u16>,
    /// The stage whose training covers this group (`None`: never trained on).
    pub learned_at: Option<usize>,
    /// A held-out dataset (zero-shot retention), left out of the overall accuracy.
    pub held_out: bool,
}

fn serialize_len<S: serde::Serializer>(v: &[SampleRef], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(v.len() as u64)
}

/// A whole protocol run.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub kind: ProtocolKind,
    pub seed: u64,
    /// Global label of local label 0 of each source.
    pub label_offsets: Vec<u16>,
    pub num_labels: u16,
    /// Class-incremental only: the class order the groups were cut from.
    pub class_order: Vec<u16>,
    pub stages: Vec<Stage>,
    pub groups: Vec<EvalGroup>,
    /// Diet protocol: training-split images held out of the stream for choosing `S*`
    /// (serialised as their number; empty for the other protocols).
    #[serde(
        rename = "num_validation",
        serialize_with = "serialize_len",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub validation: Vec<SampleRef>,
}

/// Options of [`plan`].
#[derive(Debug, Clone)]
pub struct PlanOptions {
    pub kind: ProtocolKind,
    pub seed: u64,
    /// Data-incremental stages in percent (increasing, last ≤ 100).
    pub percents: Vec<u32>,
    /// Class-incremental: number of class groups.
    pub groups: usize,
    /// The last source is held out (never trained on, zero-shot retention).
    pub held_out_last: bool,
    /// Evaluate on this many class-stratified training images per trained source,
    /// held out of training, instead of on the test split.
    pub validation: Option<usize>,
    pub limit_train: Option<usize>,
    pub limit_test: Option<usize>,
    /// Diet protocol: number of time steps.
    pub time_steps: usize,
    /// Diet protocol: percent of each time step's samples that carry their label.
    pub label_percent: f64,
    /// Diet protocol: class-stratified training images carved out for choosing `S*`.
    pub cv_images: usize,
}

impl Default for PlanOptions {
    fn default() -> Self {
        Self {
            kind: ProtocolKind::Data,
            seed: 0,
            percents: DEFAULT_PERCENTS.to_vec(),
            groups: 5,
            held_out_last: false,
            validation: None,
            limit_train: None,
            limit_test: None,
            time_steps: 20,
            label_percent: 1.0,
            cv_images: 1000,
        }
    }
}

/// Class-stratified, seeded subsample of `labels`' indices: classes are visited
/// round robin (each class's samples in a seeded order) until `limit` are taken.
/// Returns the kept indices sorted; all of them when `limit` is `None`.
pub fn stratified_subset(labels: &[u16], limit: Option<usize>, seed: u64) -> Vec<u32> {
    let all: Vec<u32> = (0..labels.len() as u32).collect();
    let Some(limit) = limit.filter(|&l| l < labels.len()) else {
        return all;
    };
    let mut rng = StdRng::seed_from_u64(seed);
    let max_label = labels.iter().copied().max().map_or(0, usize::from);
    let mut per_class: Vec<Vec<u32>> = vec![Vec::new(); max_label + 1];
    for &i in &all {
        per_class[usize::from(labels[i as usize])].push(i);
    }
    for c in per_class.iter_mut() {
        c.shuffle(&mut rng);
    }
    let mut order: Vec<usize> = (0..per_class.len()).collect();
    order.shuffle(&mut rng);
    let mut kept = Vec::with_capacity(limit);
    let mut depth = 0;
    while kept.len() < limit {
        for &c in &order {
            if let Some(&i) = per_class[c].get(depth) {
                if kept.len() < limit {
                    kept.push(i);
                }
            }
        }
        depth += 1;
    }
    kept.sort_unstable();
    kept
}

fn refs(source: u16, indices: impl IntoIterator<Item = u32>) -> Vec<SampleRef> {
    indices
        .into_iter()
        .map(|index| SampleRef { source, index })
        .collect()
}

/// Builds the plan of `opts.kind` over `sources` (task: in order; data and class:
/// the first source only).
pub fn plan(sources: &[SourceInfo], opts: &PlanOptions) -> Result<Plan> {
    ensure!(!sources.is_empty(), "a protocol needs at least one dataset");
    let mut label_offsets = Vec::with_capacity(sources.len());
    let mut next = 0u32;
    for s in sources {
        label_offsets.push(u16::try_from(next)?);
        next += u32::from(s.num_classes);
    }
    let num_labels = u16::try_from(next)
        .map_err(|_| anyhow::anyhow!("{next} labels in all, more than {}", u16::MAX))?;
    for s in sources {
        let bad = s
            .train_labels
            .iter()
            .chain(&s.test_labels)
            .find(|&&l| l >= s.num_classes);
        ensure!(
            bad.is_none(),
            "dataset `{}` has a label ≥ its {} classes",
            s.name,
            s.num_classes
        );
    }
    // seeds derived per purpose and source, so limits do not change the orders
    let sub_seed = |s: usize, k: u64| opts.seed ^ (0x9E37_79B9 * (s as u64 + 1)) ^ (k << 32);
    let trained = sources.len() - usize::from(opts.held_out_last);
    ensure!(
        trained >= 1,
        "a protocol needs at least one dataset to train on besides the held-out one"
    );
    // The evaluation split of each source: the validation images (carved out of the
    // training split) of a trained source, or the test split.
    let eval_split = |s: usize| match opts.validation {
        Some(_) if s < trained => Split::Train,
        _ => Split::Test,
    };
    let diet = opts.kind == ProtocolKind::Diet;
    ensure!(
        !(diet && opts.validation.is_some()),
        "the diet protocol carves its own validation set (for S*) and scores on the test \
         split: drop --validation"
    );
    let mut kept_train: Vec<Vec<u32>> = Vec::with_capacity(sources.len());
    let mut kept_test: Vec<Vec<u32>> = Vec::with_capacity(sources.len());
    let mut cv_set: Vec<u32> = Vec::new();
    for (i, s) in sources.iter().enumerate() {
        // Images carved out of the training split and never trained on: the evaluation
        // set under `validation`, or the diet protocol's S* validation set.
        let carve = match (eval_split(i), diet && i < trained) {
            (Split::Train, _) => Some(opts.validation.unwrap_or(0)),
            (Split::Test, true) => Some(opts.cv_images),
            (Split::Test, false) => None,
        };
        let train = if let Some(n) = carve {
            ensure!(
                n >= 1 && n < s.train_labels.len(),
                "a validation set of {n} images cannot be carved out of the {} training images of `{}`",
                s.train_labels.len(),
                s.name
            );
            let val = stratified_subset(&s.train_labels, Some(n), sub_seed(i, 3));
            let rest: Vec<u32> = (0..s.train_labels.len() as u32)
                .filter(|i| val.binary_search(i).is_err())
                .collect();
            let rest_labels: Vec<u16> = rest.iter().map(|&i| s.train_labels[i as usize]).collect();
            let kept = stratified_subset(&rest_labels, opts.limit_train, sub_seed(i, 1));
            if eval_split(i) == Split::Train {
                kept_test.push(val);
            } else {
                kept_test.push(stratified_subset(
                    &s.test_labels,
                    opts.limit_test,
                    sub_seed(i, 2),
                ));
                cv_set = val;
            }
            kept.into_iter().map(|k| rest[k as usize]).collect()
        } else {
            kept_test.push(stratified_subset(
                &s.test_labels,
                opts.limit_test,
                sub_seed(i, 2),
            ));
            stratified_subset(&s.train_labels, opts.limit_train, sub_seed(i, 1))
        };
        kept_train.push(train);
    }
    let eval_label = |s: usize, i: u32| match eval_split(s) {
        Split::Train => sources[s].train_labels[i as usize],
        Split::Test => sources[s].test_labels[i as usize],
    };
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let all_labels = |s: usize| -> Vec<u16> {
        (0..sources[s].num_classes)
            .map(|l| label_offsets[s] + l)
            .collect()
    };

    let mut class_order = Vec::new();
    let (stages, groups) = match opts.kind {
        ProtocolKind::Data => {
            let mut pct = opts.percents.clone();
            ensure!(
                !pct.is_empty()
                    && pct.windows(2).all(|w| w[0] < w[1])
                    && pct[pct.len() - 1] <= 100
                    && pct[0] > 0,
                "data-incremental stages must be increasing percentages in 1..=100, got {pct:?}"
            );
            let mut order = kept_train[0].clone();
            order.shuffle(&mut rng);
            let n = order.len();
            let mut stages = Vec::new();
            let mut start = 0;
            for p in pct.drain(..) {
                let end = (n * p as usize).div_ceil(100).max(start);
                stages.push((
                    format!("{p}%"),
                    refs(0, order[start..end].iter().copied()),
                    Vec::new(),
                ));
                start = end;
            }
            let groups = vec![EvalGroup {
                name: sources[0].name.clone(),
                split: eval_split(0),
                samples: refs(0, kept_test[0].iter().copied()),
                candidates: all_labels(0),
                learned_at: Some(0),
                held_out: false,
            }];
            (stages, groups)
        }
        ProtocolKind::Class | ProtocolKind::Diet | ProtocolKind::DataFree => {
            let c = usize::from(sources[0].num_classes);
            ensure!(
                (1..=c).contains(&opts.groups),
                "class-incremental needs 1 to {c} groups, got {}",
                opts.groups
            );
            class_order = (0..sources[0].num_classes).collect();
            class_order.shuffle(&mut rng);
            let t = opts.time_steps;
            ensure!(
                !diet || t >= opts.groups,
                "the diet protocol needs at least one time step per class group: {t} time \
                 steps for {} groups",
                opts.groups
            );
            ensure!(
                !diet || (opts.label_percent > 0.0 && opts.label_percent <= 100.0),
                "the labelled share of a time step must be in (0, 100] %, got {}",
                opts.label_percent
            );
            let (base, extra) = (c / opts.groups, c % opts.groups);
            let mut stages = Vec::new();
            let mut groups = Vec::new();
            let mut start = 0;
            let src = &sources[0];
            for g in 0..opts.groups {
                let size = base + usize::from(g < extra);
                let mut members = class_order[start..start + size].to_vec();
                start += size;
                members.sort_unstable();
                let in_group = |l: &u16| members.binary_search(l).is_ok();
                let mut train: Vec<u32> = kept_train[0]
                    .iter()
                    .copied()
                    .filter(|&i| in_group(&src.train_labels[i as usize]))
                    .collect();
                train.shuffle(&mut rng);
                let test = kept_test[0]
                    .iter()
                    .copied()
                    .filter(|&i| in_group(&eval_label(0, i)));
                let name = format!("group {}", g + 1);
                // the time steps of this group (diet), or its one stage
                let (first, last) = if diet {
                    (g * t / opts.groups, (g + 1) * t / opts.groups)
                } else {
                    (g, g + 1)
                };
                groups.push(EvalGroup {
                    name: name.clone(),
                    split: eval_split(0),
                    samples: refs(0, test),
                    candidates: all_labels(0),
                    learned_at: Some(first),
                    held_out: false,
                });
                if !diet {
                    stages.push((name, refs(0, train), Vec::new()));
                    continue;
                }
                let steps = last - first;
                let mut start = 0;
                for j in 0..steps {
                    let end = train.len() * (j + 1) / steps;
                    let slice = &train[start..end];
                    start = end;
                    let labels: Vec<u16> = slice
                        .iter()
                        .map(|&i| src.train_labels[i as usize])
                        .collect();
                    let wanted = (slice.len() as f64 * opts.label_percent / 100.0).round() as usize;
                    let n_lab = wanted.max(1).min(slice.len());
                    let ts = first + j;
                    let picked =
                        stratified_subset(&labels, Some(n_lab), sub_seed(0, 5 + ts as u64));
                    let (mut lab, mut unl) = (Vec::new(), Vec::new());
                    for (k, &i) in slice.iter().enumerate() {
                        if picked.binary_search(&(k as u32)).is_ok() {
                            lab.push(i);
                        } else {
                            unl.push(i);
                        }
                    }
                    stages.push((format!("t{}", ts + 1), refs(0, lab), refs(0, unl)));
                }
            }
            (stages, groups)
        }
        ProtocolKind::Task => {
            let mut stages = Vec::new();
            let mut groups = Vec::new();
            for (s, src) in sources.iter().enumerate().take(trained) {
                let mut train = kept_train[s].clone();
                train.shuffle(&mut rng);
                stages.push((src.name.clone(), refs(s as u16, train), Vec::new()));
                groups.push(EvalGroup {
                    name: src.name.clone(),
                    split: eval_split(s),
                    samples: refs(s as u16, kept_test[s].iter().copied()),
                    candidates: all_labels(s),
                    learned_at: Some(s),
                    held_out: false,
                });
            }
            (stages, groups)
        }
    };
    let mut groups = groups;
    if opts.held_out_last {
        let s = sources.len() - 1;
        groups.push(EvalGroup {
            name: sources[s].name.clone(),
            split: Split::Test,
            samples: refs(s as u16, kept_test[s].iter().copied()),
            candidates: all_labels(s),
            learned_at: None,
            held_out: true,
        });
    }

    let mut seen = std::collections::BTreeSet::new();
    let stages = stages
        .into_iter()
        .map(|(name, train, unlabelled)| {
            for r in &train {
                let s = usize::from(r.source);
                seen.insert(label_offsets[s] + sources[s].train_labels[r.index as usize]);
            }
            Stage {
                name,
                train,
                unlabelled,
                seen: seen.iter().copied().collect(),
            }
        })
        .collect();
    Ok(Plan {
        kind: opts.kind,
        seed: opts.seed,
        label_offsets,
        num_labels,
        class_order,
        stages,
        groups,
        validation: refs(0, cv_set),
    })
}

impl Plan {
    /// Global label of a sample given its local label.
    pub fn global_label(&self, source: u16, local: u16) -> u16 {
        self.label_offsets[usize::from(source)] + local
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(
        name: &str,
        classes: u16,
        train_per_class: usize,
        test_per_class: usize,
    ) -> SourceInfo {
        let labels = |per: usize| {
            (0..classes)
                .flat_map(|c| std::iter::repeat_n(c, per))
                .collect()
        };
        SourceInfo {
            name: name.to_owned(),
            num_classes: classes,
            train_labels: labels(train_per_class),
            test_labels: labels(test_per_class),
        }
    }

    #[test]
    fn data_incremental_stages_are_cumulative_and_cover_everything() {
        let src = source("d", 4, 25, 5);
        let opts = PlanOptions {
            seed: 7,
            ..PlanOptions::default()
        };
        let p = plan(std::slice::from_ref(&src), &opts).unwrap();
        assert_eq!(p.stages.len(), 7);
        let sizes: Vec<usize> = p.stages.iter().map(|s| s.train.len()).collect();
        // cumulative 2, 4, 8, 16, 32, 64, 100 of 100 samples
        assert_eq!(sizes, [2, 2, 4, 8, 16, 32, 36]);
        let mut all: Vec<u32> = p
            .stages
            .iter()
            .flat_map(|s| s.train.iter().map(|r| r.index))
            .collect();
        all.sort_unstable();
        assert_eq!(all, (0..100).collect::<Vec<_>>());
        assert_eq!(p.stages[6].seen, [0, 1, 2, 3]);
        assert_eq!(p.groups.len(), 1);
        assert_eq!(p.groups[0].samples.len(), 20);
        assert_eq!(p.groups[0].candidates, [0, 1, 2, 3]);
        // seeded: same seed, same plan; other seed, other order
        let q = plan(std::slice::from_ref(&src), &opts).unwrap();
        assert_eq!(p.stages[6].train, q.stages[6].train);
        let r = plan(&[src], &PlanOptions { seed: 8, ..opts }).unwrap();
        assert_ne!(p.stages[6].train, r.stages[6].train);
    }

    #[test]
    fn class_incremental_groups() {
        let src = source("c", 10, 3, 2);
        let opts = PlanOptions {
            kind: ProtocolKind::Class,
            groups: 3,
            seed: 1,
            ..PlanOptions::default()
        };
        let p = plan(std::slice::from_ref(&src), &opts).unwrap();
        let sizes: Vec<usize> = p.groups.iter().map(|g| g.samples.len() / 2).collect();
        assert_eq!(sizes, [4, 3, 3]);
        let mut order = p.class_order.clone();
        order.sort_unstable();
        assert_eq!(order, (0..10).collect::<Vec<u16>>());
        for (g, stage) in p.stages.iter().enumerate() {
            // a stage trains exactly on its group's classes
            let mut classes: Vec<u16> = stage
                .train
                .iter()
                .map(|r| src.train_labels[r.index as usize])
                .collect();
            classes.sort_unstable();
            classes.dedup();
            let mut group_classes: Vec<u16> = p.groups[g]
                .samples
                .iter()
                .map(|r| src.test_labels[r.index as usize])
                .collect();
            group_classes.sort_unstable();
            group_classes.dedup();
            assert_eq!(classes, group_classes);
            assert_eq!(p.groups[g].candidates.len(), 10);
            assert_eq!(p.groups[g].learned_at, Some(g));
        }
        assert_eq!(p.stages[0].seen.len(), 4);
        assert_eq!(p.stages[2].seen.len(), 10);
        assert!(plan(&[src], &PlanOptions { groups: 11, ..opts }).is_err());
    }

    /// Diet: 3 groups over 7 time steps (2, 2, 3), every training image arrives once
    /// (labelled or not), 10 % labelled per time step (at least one), class-stratified;
    /// the S* validation images are training images outside the stream.
    #[test]
    fn diet_time_steps_carry_sparse_labels_and_classes_arrive_over_time() {
        let src = source("d", 6, 30, 4);
        let opts = PlanOptions {
            kind: ProtocolKind::Diet,
            groups: 3,
            time_steps: 7,
            label_percent: 10.0,
            cv_images: 12,
            seed: 4,
            ..PlanOptions::default()
        };
        let p = plan(std::slice::from_ref(&src), &opts).unwrap();
        assert_eq!(p.stages.len(), 7);
        assert_eq!(p.validation.len(), 12);
        let label = |r: &SampleRef| src.train_labels[r.index as usize];
        for c in 0..6 {
            assert_eq!(p.validation.iter().filter(|r| label(r) == c).count(), 2);
        }
        let mut all: Vec<u32> = p
            .stages
            .iter()
            .flat_map(|s| s.train.iter().chain(&s.unlabelled).map(|r| r.index))
            .chain(p.validation.iter().map(|r| r.index))
            .collect();
        all.sort_unstable();
        assert_eq!(all, (0..180).collect::<Vec<_>>(), "each image once");
        // group g spans time steps ⌊7g/3⌋..⌊7(g+1)/3⌋: 0..2, 2..4, 4..7
        let learned: Vec<Option<usize>> = p.groups.iter().map(|g| g.learned_at).collect();
        assert_eq!(learned, [Some(0), Some(2), Some(4)]);
        let sizes: Vec<usize> = p
            .stages
            .iter()
            .map(|s| s.train.len() + s.unlabelled.len())
            .collect();
        // 56 images a group (60 less 4 validation images) over its time steps
        assert_eq!(sizes, [28, 28, 28, 28, 18, 19, 19]);
        for (t, s) in p.stages.iter().enumerate() {
            let n = s.train.len() + s.unlabelled.len();
            let want = ((n as f64 * 0.1).round() as usize).max(1);
            assert_eq!(s.train.len(), want, "time step {t}");
            let g = p
                .groups
                .iter()
                .rposition(|g| g.learned_at.unwrap() <= t)
                .unwrap();
            let mut classes: Vec<u16> = s.train.iter().chain(&s.unlabelled).map(label).collect();
            classes.sort_unstable();
            classes.dedup();
            assert_eq!(classes.len(), 2, "two classes a group");
            // stratified: 3 labelled of 2 classes are 2 + 1
            let lab: Vec<u16> = s.train.iter().map(label).collect();
            for c in &classes {
                let k = lab.iter().filter(|l| *l == c).count();
                assert!(k >= want / 2, "time step {t}: {lab:?}");
            }
            // the group's test images are scored from its first time step on
            assert!(p.groups[g]
                .samples
                .iter()
                .all(|r| classes.contains(&src.test_labels[r.index as usize])));
        }
        assert_eq!(p.stages[0].name, "t1");
        assert_eq!(p.stages[6].seen.len(), 6);
        // at least one labelled sample, whatever the share
        let few = plan(
            std::slice::from_ref(&src),
            &PlanOptions {
                label_percent: 0.5,
                ..opts.clone()
            },
        )
        .unwrap();
        assert!(few.stages.iter().all(|s| s.train.len() == 1));
        for bad in [
            PlanOptions {
                time_steps: 2,
                ..opts.clone()
            },
            PlanOptions {
                label_percent: 0.0,
                ..opts.clone()
            },
            PlanOptions {
                validation: Some(5),
                ..opts.clone()
            },
            PlanOptions {
                cv_images: 0,
                ..opts.clone()
            },
        ] {
            assert!(plan(std::slice::from_ref(&src), &bad).is_err(), "{bad:?}");
        }
        // the other protocols carve nothing and have no unlabelled samples
        let class = plan(
            &[src],
            &PlanOptions {
                kind: ProtocolKind::Class,
                ..opts
            },
        )
        .unwrap();
        assert!(class.validation.is_empty());
        assert!(class.stages.iter().all(|s| s.unlabelled.is_empty()));
    }

    #[test]
    fn task_incremental_with_held_out() {
        let sources = [
            source("a", 3, 2, 1),
            source("b", 2, 2, 1),
            source("z", 4, 2, 2),
        ];
        let opts = PlanOptions {
            kind: ProtocolKind::Task,
            held_out_last: true,
            ..PlanOptions::default()
        };
        let p = plan(&sources, &opts).unwrap();
        assert_eq!(p.label_offsets, [0, 3, 5]);
        assert_eq!(p.num_labels, 9);
        assert_eq!(p.stages.len(), 2);
        assert!(p.stages[1].train.iter().all(|r| r.source == 1));
        assert_eq!(p.stages[1].seen, [0, 1, 2, 3, 4]);
        assert_eq!(p.groups.len(), 3);
        assert_eq!(p.groups[1].candidates, [3, 4]);
        assert!(p.groups[2].held_out && p.groups[2].learned_at.is_none());
        assert_eq!(p.groups[2].candidates, [5, 6, 7, 8]);
        assert_eq!(p.global_label(2, 1), 6);
    }

    #[test]
    fn limits_are_stratified() {
        let labels: Vec<u16> = (0..5).flat_map(|c| std::iter::repeat_n(c, 20)).collect();
        let kept = stratified_subset(&labels, Some(10), 3);
        assert_eq!(kept.len(), 10);
        for c in 0..5 {
            assert_eq!(kept.iter().filter(|&&i| labels[i as usize] == c).count(), 2);
        }
        assert_eq!(
            stratified_subset(&labels, Some(7), 3),
            stratified_subset(&labels, Some(7), 3)
        );
        assert_eq!(stratified_subset(&labels, None, 3).len(), 100);
        assert_eq!(stratified_subset(&labels, Some(1000), 3).len(), 100);
        // uneven classes: small ones run out, the others fill up
        let uneven = [0u16, 1, 1, 1, 1, 1];
        assert_eq!(stratified_subset(&uneven, Some(4), 0).len(), 4);
        assert!(stratified_subset(&uneven, Some(4), 0).contains(&0));
    }

    #[test]
    fn bad_inputs_are_errors() {
        let mut src = source("d", 2, 2, 2);
        assert!(plan(&[], &PlanOptions::default()).is_err());
        for pct in [vec![], vec![50, 20], vec![0, 10], vec![10, 120]] {
            let opts = PlanOptions {
                percents: pct,
                ..PlanOptions::default()
            };
            assert!(plan(std::slice::from_ref(&src), &opts).is_err());
        }
        src.train_labels.push(2);
        assert!(plan(&[src], &PlanOptions::default()).is_err());
    }
}
