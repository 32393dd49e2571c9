//! Metrics of a simulator run (SPEC §9): per stage and method the accuracy on all,
//! seen and unseen labels and per evaluation group, stored bytes per sample,
//! training steps, wall time per update and peak memory; per method the average
//! over stages, the final accuracy and forgetting. Written as JSON and CSV.
//!
//! Forgetting follows Chaudhry et al. (2018): for every evaluation group trained
//! on before the last stage, the best accuracy it had at any stage from the one
//! that trained it up to the one before last, minus its final accuracy; averaged
//! over those groups. It is negative when the groups improved (backward transfer).
//! Held-out groups are left out of "all", "seen" and "unseen" and of forgetting.
//!
//! Under a step budget (the diet protocol, SPEC §8) a row also says what the method
//! spent in its time step ([`StageSteps`]), written to `steps.csv`, and the summary
//! sums it up ([`StepsSummary`]).

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use super::protocol::Plan;

/// Correct / total counter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Tally {
    pub correct: u64,
    pub total: u64,
}

impl Tally {
    pub fn add(&mut self, correct: bool) {
        self.correct += u64::from(correct);
        self.total += 1;
    }

    /// Accuracy in percent, `None` when nothing was counted.
    pub fn percent(&self) -> Option<f64> {
        (self.total > 0).then(|| 100.0 * self.correct as f64 / self.total as f64)
    }
}

/// Accumulates one method's predictions at one stage.
#[derive(Debug, Clone)]
pub struct StageScore {
    pub all: Tally,
    pub seen: Tally,
    pub unseen: Tally,
    pub groups: Vec<Tally>,
}

impl StageScore {
    pub fn new(num_groups: usize) -> Self {
        Self {
            all: Tally::default(),
            seen: Tally::default(),
            unseen: Tally::default(),
            groups: vec![Tally::default(); num_groups],
        }
    }

    /// Records one test prediction of group `group` (held out or not) whose true
    /// label was (`seen`) or was not trained on yet.
    pub fn record(&mut self, group: usize, held_out: bool, seen: bool, correct: bool) {
        self.groups[group].add(correct);
        if !held_out {
            self.all.add(correct);
            if seen {
                self.seen.add(correct);
            } else {
                self.unseen.add(correct);
            }
        }
    }
}

/// One row: a method after one stage.
#[derive(Debug, Clone, Serialize)]
pub struct StageResult {
    pub method: String,
    pub stage: usize,
    pub stage_name: String,
    /// Training samples observed so far (cumulative).
    pub samples_seen: u64,
    pub acc_all: Option<f64>,
    pub acc_seen: Option<f64>,
    pub acc_unseen: Option<f64>,
    /// Accuracy per evaluation group, in the plan's group order.
    pub acc_groups: Vec<Option<f64>>,
    pub bytes_per_sample: f64,
    /// Training steps so far (cumulative).
    pub train_steps: u64,
    /// Mean wall time of learning one new sample in this stage (its labelled samples,
    /// and its unlabelled ones for a method that takes them; a time step's training at
    /// its end included), in milliseconds.
    pub update_ms: Option<f64>,
    /// Wall time of this stage's evaluation, in seconds.
    pub eval_s: f64,
    /// Peak resident memory of the process so far, in KiB (Linux only).
    pub peak_rss_kib: Option<u64>,
    /// "None of the above" (class protocol): how well each of the method's signals
    /// separates test images of labels not learned yet from those of learned ones,
    /// asked over the learned labels only.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub none: Vec<NoneEval>,
    /// Diet protocol: the training steps of this time step, for a learner under a budget.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps: Option<StageSteps>,
    /// A private learner's consolidation at the end of this stage (SPEC §7).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consolidation: Option<Consolidation>,
    /// `confusion[truth][answer]`: test images of global label `truth` answered as global
    /// label `answer`, over every evaluation group (report.json only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub confusion: Vec<Vec<u32>>,
}

/// What a private learner's consolidation cost and reached (SPEC §7).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Consolidation {
    pub seconds: f64,
    pub generator_seconds: f64,
    pub generator_steps: usize,
    /// Labels learned, and those with published statistics (the generator's).
    pub labels: usize,
    pub published: usize,
    /// The statistics-alignment loss (unweighted) of the generator's first and last
    /// batches.
    pub stats_first: f64,
    pub stats_last: f64,
    /// The estimate of the bytes it holds at its peak.
    pub peak_bytes: u64,
}

impl From<&anytime_runtime::learner::ConsolidationReport> for Consolidation {
    fn from(r: &anytime_runtime::learner::ConsolidationReport) -> Self {
        Consolidation {
            seconds: r.seconds,
            generator_seconds: r.generator_seconds,
            generator_steps: r.generator_steps,
            labels: r.labels,
            published: r.published,
            stats_first: r.loss_first.stats,
            stats_last: r.loss_last.stats,
            peak_bytes: r.peak_bytes,
        }
    }
}

/// The training steps a method spent in one time step under the budget `S` (SPEC §8).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct StageSteps {
    /// `S`.
    pub budget: u32,
    /// Forward-backward steps spent (never above `budget`).
    pub used: u32,
    /// Spent steps by loss: `L_m`, `L_r`, `L_b` (those at the reduced rate included),
    /// and SPEC §4 steps (one new sample with replayed ones: the anytime learner).
    pub current: u32,
    pub masked: u32,
    pub balanced: u32,
    pub sample: u32,
    /// Steps at 0.1× the learning rate (beyond `S*`).
    pub reduced_lr: u32,
    /// Labelled samples of the time step the method did not learn (the anytime learner
    /// past `S`).
    pub skipped: u32,
    /// Mean loss before the update of the time step's steps of each kind.
    pub loss_current: Option<f64>,
    pub loss_masked: Option<f64>,
    pub loss_balanced: Option<f64>,
    /// Wall time of the time step's learning (its samples' arrivals and its steps), s.
    pub seconds: f64,
}

/// A method's steps over a whole run under a budget.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct StepsSummary {
    pub budget: u32,
    /// The most steps spent in one time step, and the total.
    pub max_used: u32,
    pub used: u64,
    pub current: u64,
    pub masked: u64,
    pub balanced: u64,
    pub sample: u64,
    pub reduced_lr: u64,
    pub skipped: u64,
    /// Wall time of all the time steps' learning, s, and per step spent, ms.
    pub seconds: f64,
    pub ms_per_step: Option<f64>,
}

impl StepsSummary {
    /// Sums the time steps' records.
    pub fn of<'a>(steps: impl IntoIterator<Item = &'a StageSteps>) -> Option<Self> {
        let mut s: Option<StepsSummary> = None;
        for t in steps {
            let s = s.get_or_insert(StepsSummary {
                budget: t.budget,
                ..StepsSummary::default()
            });
            s.max_used = s.max_used.max(t.used);
            s.used += u64::from(t.used);
            s.current += u64::from(t.current);
            s.masked += u64::from(t.masked);
            s.balanced += u64::from(t.balanced);
            s.sample += u64::from(t.sample);
            s.reduced_lr += u64::from(t.reduced_lr);
            s.skipped += u64::from(t.skipped);
            s.seconds += t.seconds;
        }
        if let Some(s) = s.as_mut() {
            s.ms_per_step = (s.used > 0).then(|| 1e3 * s.seconds / s.used as f64);
        }
        s
    }
}

/// One "none of the above" signal at one stage.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct NoneEval {
    pub signal: String,
    /// Area under the ROC curve of the signal, images of unlearned labels positive;
    /// 0.5 is chance.
    pub auroc: Option<f64>,
    /// The threshold of the operating point below (the CLI's default for `p_other`).
    pub threshold: f64,
    /// Share (%) of images of unlearned labels answered "none" at `threshold`.
    pub abstain_unlearned: Option<f64>,
    /// Share (%) of images of learned labels answered "none" at `threshold`.
    pub abstain_learned: Option<f64>,
    /// Accuracy (%) on the images of learned labels that were not answered "none".
    pub acc_answered: Option<f64>,
}

/// Area under the ROC curve of `scores` for `positive` against the rest (Mann–Whitney,
/// ties counted half); `None` without both classes or with a non-finite score.
pub fn auroc(scores: &[f64], positive: &[bool]) -> Option<f64> {
    if scores.iter().any(|s| !s.is_finite()) {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let (mut rank_sum, mut n_pos) = (0.0f64, 0usize);
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        let mid = (i + j) as f64 / 2.0 + 1.0; // 1-based mean rank of the tie block
        for &k in &order[i..=j] {
            if positive[k] {
                rank_sum += mid;
                n_pos += 1;
            }
        }
        i = j + 1;
    }
    let n_neg = scores.len() - n_pos;
    if n_pos == 0 || n_neg == 0 {
        return None;
    }
    let u = rank_sum - (n_pos * (n_pos + 1)) as f64 / 2.0;
    Some(u / (n_pos * n_neg) as f64)
}

/// Evaluates one signal: `scores[i]` of image `i`, `unlearned[i]` whether its label was
/// not learned yet, `correct[i]` whether the pick was right (learned labels only).
pub fn none_eval(
    signal: &str,
    scores: &[f64],
    unlearned: &[bool],
    correct: &[bool],
    threshold: f64,
) -> NoneEval {
    let mut abst_u = Tally::default();
    let mut abst_l = Tally::default();
    let mut answered = Tally::default();
    for ((&s, &u), &c) in scores.iter().zip(unlearned).zip(correct) {
        let none = s > threshold;
        if u {
            abst_u.add(none);
        } else {
            abst_l.add(none);
            if !none {
                answered.add(c);
            }
        }
    }
    NoneEval {
        signal: signal.to_owned(),
        auroc: auroc(scores, unlearned),
        threshold,
        abstain_unlearned: abst_u.percent(),
        abstain_learned: abst_l.percent(),
        acc_answered: answered.percent(),
    }
}

impl StageResult {
    /// Fills the accuracy fields from a score.
    pub fn set_score(&mut self, score: &StageScore) {
        self.acc_all = score.all.percent();
        self.acc_seen = score.seen.percent();
        self.acc_unseen = score.unseen.percent();
        self.acc_groups = score.groups.iter().map(Tally::percent).collect();
    }
}

/// One method over the whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub method: String,
    /// Mean over stages of the overall accuracy.
    pub average_acc: Option<f64>,
    pub final_acc: Option<f64>,
    pub final_seen: Option<f64>,
    pub final_unseen: Option<f64>,
    pub forgetting: Option<f64>,
    /// Final accuracy of held-out groups (zero-shot retention), by group name.
    pub held_out: Vec<(String, Option<f64>)>,
    pub mean_update_ms: Option<f64>,
    pub train_steps: u64,
    pub bytes_per_sample: f64,
    /// "None of the above": each signal averaged over the stages that measure it (class
    /// protocol).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub none: Vec<NoneSummary>,
    /// Diet protocol: the steps spent over the run, for a learner under a budget.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps: Option<StepsSummary>,
    /// Private learners: seconds spent consolidating over the run, and the most bytes a
    /// consolidation held (estimate).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consolidation_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consolidation_peak_bytes: Option<u64>,
}

/// One "none of the above" signal averaged over stages.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct NoneSummary {
    pub signal: String,
    pub auroc: Option<f64>,
    pub threshold: f64,
    pub abstain_unlearned: Option<f64>,
    pub abstain_learned: Option<f64>,
}

/// Summarises one method's rows (in stage order) against the plan's groups.
pub fn summarise(plan: &Plan, rows: &[&StageResult]) -> Option<Summary> {
    let last = rows.last()?;
    let accs: Vec<f64> = rows.iter().filter_map(|r| r.acc_all).collect();
    let average_acc = (!accs.is_empty()).then(|| accs.iter().sum::<f64>() / accs.len() as f64);
    let final_stage = rows.len() - 1;
    let mut drops = Vec::new();
    for (g, group) in plan.groups.iter().enumerate() {
        let Some(learned) = group.learned_at.filter(|&l| l < final_stage) else {
            continue;
        };
        let best = rows[learned..final_stage]
            .iter()
            .filter_map(|r| r.acc_groups.get(g).copied().flatten())
            .fold(None, |m: Option<f64>, a| Some(m.map_or(a, |m| m.max(a))));
        if let (Some(best), Some(Some(fin))) = (best, last.acc_groups.get(g)) {
            drops.push(best - fin);
        }
    }
    let forgetting = (!drops.is_empty()).then(|| drops.iter().sum::<f64>() / drops.len() as f64);
    let updates: Vec<f64> = rows.iter().filter_map(|r| r.update_ms).collect();
    Some(Summary {
        method: last.method.clone(),
        average_acc,
        final_acc: last.acc_all,
        final_seen: last.acc_seen,
        final_unseen: last.acc_unseen,
        forgetting,
        held_out: plan
            .groups
            .iter()
            .enumerate()
            .filter(|(_, g)| g.held_out)
            .map(|(i, g)| (g.name.clone(), last.acc_groups.get(i).copied().flatten()))
            .collect(),
        mean_update_ms: (!updates.is_empty())
            .then(|| updates.iter().sum::<f64>() / updates.len() as f64),
        train_steps: last.train_steps,
        bytes_per_sample: last.bytes_per_sample,
        none: mean_none(rows),
        steps: StepsSummary::of(rows.iter().filter_map(|r| r.steps.as_ref())),
        consolidation_s: rows
            .iter()
            .filter_map(|r| r.consolidation.map(|c| c.seconds))
            .reduce(|a, b| a + b),
        consolidation_peak_bytes: rows
            .iter()
            .filter_map(|r| r.consolidation.map(|c| c.peak_bytes))
            .max(),
    })
}

/// Per "none of the above" signal, its figures averaged over the stages that have them.
fn mean_none(rows: &[&StageResult]) -> Vec<NoneSummary> {
    let mut names: Vec<(&str, f64)> = Vec::new();
    for e in rows.iter().flat_map(|r| &r.none) {
        if !names.iter().any(|(n, _)| *n == e.signal) {
            names.push((&e.signal, e.threshold));
        }
    }
    let mean = |v: Vec<f64>| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
    names
        .into_iter()
        .map(|(n, threshold)| {
            let evals: Vec<&NoneEval> = rows
                .iter()
                .flat_map(|r| &r.none)
                .filter(|e| e.signal == n)
                .collect();
            NoneSummary {
                signal: n.to_owned(),
                auroc: mean(evals.iter().filter_map(|e| e.auroc).collect()),
                threshold,
                abstain_unlearned: mean(evals.iter().filter_map(|e| e.abstain_unlearned).collect()),
                abstain_learned: mean(evals.iter().filter_map(|e| e.abstain_learned).collect()),
            }
        })
        .collect()
}

/// Everything a run writes.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The command line's settings (datasets, model, protocol, seed, limits, …).
    pub config: serde_json::Value,
    pub plan: Plan,
    pub rows: Vec<StageResult>,
    pub summaries: Vec<Summary>,
    pub wall_s: f64,
    pub peak_rss_kib: Option<u64>,
}

impl Report {
    /// Builds the summaries from the rows.
    pub fn new(config: serde_json::Value, plan: Plan, rows: Vec<StageResult>, wall_s: f64) -> Self {
        let mut methods: Vec<&str> = Vec::new();
        for r in &rows {
            if !methods.contains(&r.method.as_str()) {
                methods.push(&r.method);
            }
        }
        let summaries = methods
            .iter()
            .filter_map(|m| {
                let mine: Vec<&StageResult> = rows.iter().filter(|r| r.method == *m).collect();
                summarise(&plan, &mine)
            })
            .collect();
        Self {
            config,
            plan,
            rows,
            summaries,
            wall_s,
            peak_rss_kib: peak_rss_kib(),
        }
    }

    pub fn write_json(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    }

    /// One line per method and stage; one `acc_<group>` column per evaluation group.
    pub fn stages_csv(&self) -> String {
        let mut s = String::from(
            "method,stage,stage_name,samples_seen,acc_all,acc_seen,acc_unseen,\
             bytes_per_sample,train_steps,update_ms,eval_s,peak_rss_kib",
        );
        for g in &self.plan.groups {
            let _ = write!(s, ",{}", csv_field(&format!("acc_{}", g.name)));
        }
        s.push('\n');
        for r in &self.rows {
            let _ = write!(
                s,
                "{},{},{},{},{},{},{},{:.1},{},{},{:.3},{}",
                csv_field(&r.method),
                r.stage,
                csv_field(&r.stage_name),
                r.samples_seen,
                opt(r.acc_all),
                opt(r.acc_seen),
                opt(r.acc_unseen),
                r.bytes_per_sample,
                r.train_steps,
                opt(r.update_ms),
                r.eval_s,
                r.peak_rss_kib.map(|v| v.to_string()).unwrap_or_default()
            );
            for a in &r.acc_groups {
                let _ = write!(s, ",{}", opt(*a));
            }
            s.push('\n');
        }
        s
    }

    /// One line per method.
    pub fn summary_csv(&self) -> String {
        let mut s = String::from(
            "method,average_acc,final_acc,final_seen,final_unseen,forgetting,\
             mean_update_ms,train_steps,bytes_per_sample\n",
        );
        for m in &self.summaries {
            let _ = writeln!(
                s,
                "{},{},{},{},{},{},{},{},{:.1}",
                csv_field(&m.method),
                opt(m.average_acc),
                opt(m.final_acc),
                opt(m.final_seen),
                opt(m.final_unseen),
                opt(m.forgetting),
                opt(m.mean_update_ms),
                m.train_steps,
                m.bytes_per_sample
            );
        }
        s
    }

    /// One line per method and time step that spent steps under a budget (diet
    /// protocol); `None` when no row did.
    pub fn steps_csv(&self) -> Option<String> {
        let mut s = String::from(
            "method,stage,stage_name,budget,used,l_m,l_r,l_b,sample,reduced_lr,skipped,\
             loss_m,loss_r,loss_b,seconds\n",
        );
        let mut any = false;
        for r in &self.rows {
            let Some(t) = &r.steps else { continue };
            any = true;
            let _ = writeln!(
                s,
                "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{:.3}",
                csv_field(&r.method),
                r.stage,
                csv_field(&r.stage_name),
                t.budget,
                t.used,
                t.current,
                t.masked,
                t.balanced,
                t.sample,
                t.reduced_lr,
                t.skipped,
                opt(t.loss_current),
                opt(t.loss_masked),
                opt(t.loss_balanced),
                t.seconds
            );
        }
        any.then_some(s)
    }

    /// Writes `stages.csv` and `summary.csv` into `dir`, and `steps.csv` when a method
    /// spent steps under a budget.
    pub fn write_csv(&self, dir: &Path) -> Result<()> {
        let steps = self.steps_csv().map(|t| ("steps.csv", t));
        for (name, text) in [
            ("stages.csv", self.stages_csv()),
            ("summary.csv", self.summary_csv()),
        ]
        .into_iter()
        .chain(steps)
        {
            let path = dir.join(name);
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    }
}

fn opt(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.3}")).unwrap_or_default()
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// Peak resident set size of this process (`VmHWM` of `/proc/self/status`), in KiB.
pub fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_vm_hwm(&status)
}

fn parse_vm_hwm(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line["VmHWM:".len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::protocol::{plan, PlanOptions, ProtocolKind, SourceInfo};

    fn class_plan() -> Plan {
        let labels: Vec<u16> = (0..4).flat_map(|c| [c, c]).collect();
        let src = SourceInfo {
            name: "d".into(),
            num_classes: 4,
            train_labels: labels.clone(),
            test_labels: labels,
        };
        let opts = PlanOptions {
            kind: ProtocolKind::Class,
            groups: 2,
            ..PlanOptions::default()
        };
        plan(&[src], &opts).unwrap()
    }

    fn row(stage: usize, all: f64, groups: [f64; 2]) -> StageResult {
        StageResult {
            method: "m,x".into(),
            stage,
            stage_name: format!("group {}", stage + 1),
            samples_seen: 4 * (stage as u64 + 1),
            acc_all: Some(all),
            acc_seen: Some(all),
            acc_unseen: None,
            acc_groups: groups.iter().map(|&g| Some(g)).collect(),
            bytes_per_sample: 10.0,
            train_steps: stage as u64,
            update_ms: Some(2.0),
            eval_s: 0.1,
            peak_rss_kib: None,
            none: Vec::new(),
            steps: None,
            consolidation: None,
            confusion: Vec::new(),
        }
    }

    #[test]
    fn auroc_is_the_probability_a_positive_outranks_a_negative() {
        assert_eq!(
            auroc(&[0.1, 0.2, 0.8, 0.9], &[false, false, true, true]),
            Some(1.0)
        );
        assert_eq!(
            auroc(&[0.9, 0.8, 0.2, 0.1], &[false, false, true, true]),
            Some(0.0)
        );
        // ties count half
        assert_eq!(auroc(&[0.5; 4], &[false, true, false, true]), Some(0.5));
        // 3 of the 4 (positive, negative) pairs ordered right
        assert_eq!(
            auroc(&[0.1, 0.3, 0.35, 0.4], &[false, true, false, true]),
            Some(0.75)
        );
        assert_eq!(auroc(&[0.1, 0.2], &[true, true]), None);
        assert_eq!(auroc(&[f64::NAN, 0.2], &[true, false]), None);
    }

    #[test]
    fn none_eval_counts_abstentions_and_answered_accuracy() {
        let e = none_eval(
            "p_other",
            &[0.9, 0.1, 0.6, 0.2, 0.3],
            &[true, true, false, false, false],
            &[false, false, true, true, false],
            0.5,
        );
        assert_eq!(e.abstain_unlearned, Some(50.0));
        assert!(anytime_testkit::close(
            e.abstain_learned.unwrap(),
            100.0 / 3.0,
            1e-9,
            0.0
        ));
        assert_eq!(e.acc_answered, Some(50.0));
        assert_eq!(e.auroc, Some(0.5));
    }

    #[test]
    fn tallies_and_scores() {
        let mut s = StageScore::new(2);
        s.record(0, false, true, true);
        s.record(0, false, false, false);
        s.record(1, true, false, true);
        assert_eq!(
            s.all,
            Tally {
                correct: 1,
                total: 2
            }
        );
        assert_eq!(s.seen.percent(), Some(100.0));
        assert_eq!(s.unseen.percent(), Some(0.0));
        assert_eq!(s.groups[1].percent(), Some(100.0));
        assert_eq!(Tally::default().percent(), None);
    }

    #[test]
    fn summary_average_final_forgetting() {
        let plan = class_plan();
        let rows = [row(0, 40.0, [80.0, 0.0]), row(1, 60.0, [50.0, 70.0])];
        let refs: Vec<&StageResult> = rows.iter().collect();
        let s = summarise(&plan, &refs).unwrap();
        assert_eq!(s.average_acc, Some(50.0));
        assert_eq!(s.final_acc, Some(60.0));
        // group 1 learned at stage 0: best 80 before the end, 50 at the end
        assert_eq!(s.forgetting, Some(30.0));
        assert_eq!(s.train_steps, 1);
        assert!(summarise(&plan, &[]).is_none());
    }

    #[test]
    fn csv_and_json() {
        let plan = class_plan();
        let rows = vec![row(0, 40.0, [80.0, 0.0]), row(1, 60.0, [50.0, 70.0])];
        let report = Report::new(serde_json::json!({"seed": 0}), plan, rows, 1.5);
        let csv = report.stages_csv();
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].ends_with(",acc_group 1,acc_group 2"));
        assert!(lines[1].starts_with("\"m,x\",0,group 1,4,40.000,40.000,,10.0,0,2.000,"));
        let cols = lines[0].split(',').count();
        assert!(lines
            .iter()
            .skip(1)
            .all(|l| l.replace("\"m,x\"", "m").split(',').count() == cols));
        assert!(report.summary_csv().contains("\"m,x\",50.000,60.000"));
        let tmp = tempfile::tempdir().unwrap();
        report.write_json(&tmp.path().join("r.json")).unwrap();
        report.write_csv(tmp.path()).unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(tmp.path().join("r.json")).unwrap())
                .unwrap();
        assert_eq!(v["summaries"][0]["forgetting"], 30.0);
        assert_eq!(v["plan"]["kind"], "class");
        assert!(tmp.path().join("summary.csv").is_file());
        assert!(
            !tmp.path().join("steps.csv").exists(),
            "no budget, no steps"
        );
    }

    #[test]
    fn steps_under_a_budget_are_summed_and_written() {
        let plan = class_plan();
        let mut rows = vec![row(0, 40.0, [80.0, 0.0]), row(1, 60.0, [50.0, 70.0])];
        rows[0].steps = Some(StageSteps {
            budget: 6,
            used: 6,
            current: 2,
            masked: 2,
            balanced: 2,
            seconds: 0.3,
            loss_masked: Some(1.5),
            ..StageSteps::default()
        });
        rows[1].steps = Some(StageSteps {
            budget: 6,
            used: 4,
            balanced: 4,
            reduced_lr: 3,
            seconds: 0.2,
            ..StageSteps::default()
        });
        let report = Report::new(serde_json::json!({}), plan, rows, 1.0);
        let s = report.summaries[0].steps.unwrap();
        assert_eq!((s.budget, s.max_used, s.used), (6, 6, 10));
        assert_eq!(
            (s.current, s.masked, s.balanced, s.reduced_lr),
            (2, 2, 6, 3)
        );
        assert!((s.ms_per_step.unwrap() - 50.0).abs() < 1e-9);
        let csv = report.steps_csv().unwrap();
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(
            lines[1].starts_with("\"m,x\",0,group 1,6,6,2,2,2,0,0,0,,1.500,,0.300"),
            "{}",
            lines[1]
        );
        let tmp = tempfile::tempdir().unwrap();
        report.write_csv(tmp.path()).unwrap();
        assert!(tmp.path().join("steps.csv").is_file());
    }

    #[test]
    fn vm_hwm() {
        assert_eq!(
            parse_vm_hwm("VmPeak:\t 10 kB\nVmHWM:\t    1234 kB\n"),
            Some(1234)
        );
        assert_eq!(parse_vm_hwm("nothing"), None);
        if cfg!(target_os = "linux") {
            assert!(peak_rss_kib().unwrap() > 0);
        }
    }
}
