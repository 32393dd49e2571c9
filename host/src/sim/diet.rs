//! SPEC §8's "learning on a diet" in the simulator (`--protocol diet`, issue 16): every
//! learner gets the same budget of `S` training steps per time step, and only a few
//! samples carry their label.
//!
//! The learner methods, all on [`anytime_runtime::learner::Learner`] fed cached trunk
//! tokens, all predicting with OCW mixing (`-tuned`: the same learner's tuned block alone):
//! - `diet` (ours, after DietCL): a diet learner fed every sample, the labelled ones with
//!   `learn_tokens`, the unlabelled ones with `observe_unlabelled`; at the end of a time
//!   step it spends its budget on `L_m`, `L_r` and `L_b` below `S*`, `L_b` at 0.1× the
//!   rate beyond;
//! - `labelled-only`: the same, fed no unlabelled sample, so `L_r` has no data and the
//!   schedule gives its share to `L_m` and `L_b`;
//! - `replay-only`: labelled samples are stored but none is held for `L_m`
//!   (`labelled_capacity: 0`), no unlabelled one: `L_b` alone (below `S*` at the full
//!   rate, beyond at 0.1×);
//! - `anytime`: the anytime learner of SPEC §4 (no diet), one step per labelled sample as
//!   it arrives, at most `S` a time step: the labelled samples of a time step beyond its
//!   first `S` are **not learned** (neither trained on nor stored nor seen by OCW).
//!
//! `S*` is chosen by [`choose_s_star`] on the stream's first
//! [`CV_TIME_STEPS`] time steps: for each candidate a fresh `diet` learner learns them
//! and is scored (OCW, over all labels) on the plan's validation images, training images
//! held out of the stream; the learners that use `S*` all use the chosen one.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use anytime_runtime::assets::ModelAssets;
use anytime_runtime::learner::{DietConfig, Learner, Mixing, TimeStepReport, TimeWindow};
use anytime_runtime::predict::LabelSet;
use anytime_runtime::train::s_star::{choose_s_star, SStarChoice, SStarError, CV_TIME_STEPS};

use super::dataset::Split;
use super::features::FeatureTable;
use super::learner::{self, create_learner, learner_config, LearnerMethod, LearnerSettings};
use super::learner::{LearnerSpec, Training};
use super::method::{Features, Method};
use super::metrics::{Report, StageSteps, Tally};
use super::protocol::{Plan, SourceInfo};
use super::runner::label_of;

/// The learner methods of the diet protocol (each also as `<name>-tuned`).
pub const DIET_METHODS: [&str; 4] = ["diet", "labelled-only", "replay-only", "anytime"];

/// Methods run under `--protocol diet` when `--methods` is not given.
pub const DEFAULT_DIET_METHODS: [&str; 6] = [
    "zero-shot",
    "ncm",
    "diet",
    "labelled-only",
    "replay-only",
    "anytime",
];

/// What a learner method is fed, and how it trains (module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feed {
    Diet,
    LabelledOnly,
    ReplayOnly,
    Anytime,
}

/// A learner method of the diet protocol as named on the command line.
#[derive(Debug, Clone, PartialEq)]
pub struct DietSpec {
    pub name: String,
    pub feed: Feed,
    pub mixing: Mixing,
}

/// Parses a diet learner method name (`diet`, `labelled-only`, `replay-only`, `anytime`,
/// each optionally with `-tuned`), or `None` when it is not one.
pub fn parse_diet_method(name: &str) -> Option<DietSpec> {
    let (base, mixing) = match name.strip_suffix("-tuned") {
        Some(b) => (b, Mixing::TunedOnly),
        None => (name, Mixing::Ocw),
    };
    let feed = match base {
        "diet" => Feed::Diet,
        "labelled-only" => Feed::LabelledOnly,
        "replay-only" => Feed::ReplayOnly,
        "anytime" => Feed::Anytime,
        _ => return None,
    };
    Some(DietSpec {
        name: name.to_owned(),
        feed,
        mixing,
    })
}

/// `--s-star-candidates`' default: 0, S/4, S/2, 3S/4 and S.
pub fn default_candidates(budget: u32) -> Vec<u32> {
    let mut c: Vec<u32> = (0..=4).map(|k| budget * k / 4).collect();
    c.dedup();
    c
}

/// What every learner of a diet run shares.
pub struct DietContext<'a> {
    pub assets: &'a ModelAssets,
    pub plan: &'a Plan,
    pub sources: &'a [SourceInfo],
    pub settings: &'a LearnerSettings,
    /// How the learners store and train (codec, β).
    pub training: Training,
    /// Global label → label name.
    pub names: Arc<Vec<String>>,
    /// `S`.
    pub budget: u32,
    /// Folder of the learners' folders.
    pub root: PathBuf,
}

impl DietContext<'_> {
    /// The diet settings of a learner fed as `feed`, with `S*` = `s_star`: a time step ends
    /// when the runner says so, and holds all its samples.
    fn diet_config(&self, feed: Feed, s_star: u32) -> DietConfig {
        let most = |f: fn(&super::protocol::Stage) -> usize| {
            self.plan.stages.iter().map(f).max().unwrap_or(0).max(1)
        };
        DietConfig {
            unlabelled_capacity: most(|s| s.unlabelled.len()),
            labelled_capacity: if feed == Feed::ReplayOnly {
                0
            } else {
                most(|s| s.train.len())
            },
            ..DietConfig::new(self.budget, s_star, TimeWindow::Manual)
        }
    }

    /// A fresh diet learner fed as `feed` in `<root>/<dir>`.
    fn diet_learner(&self, dir: &str, feed: Feed, s_star: u32) -> Result<DietLearner> {
        let diet = self.diet_config(feed, s_star);
        let cfg = learner_config(self.assets, self.training, self.settings, Some(diet));
        let (learner, backend) = create_learner(self.assets, &self.root.join(dir), cfg)?;
        let dims = self.assets.dims().block();
        Ok(DietLearner {
            learner,
            backend,
            feed,
            dims: (dims.tokens, dims.width),
            fed: 0,
            labelled: 0,
            ended: Vec::new(),
            done_s: Vec::new(),
            pending_s: 0.0,
            store_bytes: 0,
        })
    }
}

/// One diet learner and what the methods sharing it need.
struct DietLearner {
    learner: Learner,
    backend: &'static str,
    feed: Feed,
    dims: (usize, usize),
    /// Arrivals fed so far, labelled or not: the methods sharing a learner feed the same
    /// stream, and the first to reach a sample feeds it.
    fed: usize,
    labelled: usize,
    /// What each ended time step spent.
    ended: Vec<StageSteps>,
    /// Learning seconds up to the end of each ended time step.
    done_s: Vec<f64>,
    /// Learning seconds of the current time step so far.
    pending_s: f64,
    store_bytes: u64,
}

fn steps_of(r: &TimeStepReport, seconds: f64) -> StageSteps {
    let b = r.budget;
    StageSteps {
        budget: b.total,
        used: b.used,
        current: b.current,
        masked: b.masked,
        balanced: b.balanced,
        sample: 0,
        reduced_lr: b.reduced_lr,
        skipped: 0,
        loss_current: r.loss_current,
        loss_masked: r.loss_masked,
        loss_balanced: r.loss_balanced,
        seconds,
    }
}

/// A learner method of a diet learner (`diet`, `labelled-only`, `replay-only`).
pub struct DietMethod {
    name: String,
    mixing: Mixing,
    shared: Rc<RefCell<DietLearner>>,
    names: Arc<Vec<String>>,
    sets: HashMap<Vec<u16>, LabelSet>,
    fed: usize,
    ended: usize,
}

impl std::fmt::Debug for DietMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DietMethod")
            .field("name", &self.name)
            .field("mixing", &self.mixing)
            .finish()
    }
}

impl DietMethod {
    fn new(
        name: &str,
        mixing: Mixing,
        shared: Rc<RefCell<DietLearner>>,
        names: Arc<Vec<String>>,
    ) -> Self {
        Self {
            name: name.to_owned(),
            mixing,
            shared,
            names,
            sets: HashMap::new(),
            fed: 0,
            ended: 0,
        }
    }

    /// Whether this method's next arrival was fed already by a method sharing its learner.
    fn fed_already(&mut self) -> Result<bool> {
        let fed = self.shared.borrow().fed;
        ensure!(self.fed <= fed, "a sample of the stream was skipped");
        self.fed += 1;
        Ok(self.fed <= fed)
    }

    /// The learner's training backend ("cpu" or "wgpu").
    pub fn backend_name(&self) -> &'static str {
        self.shared.borrow().backend
    }
}

fn tokens_of<'a>(x: &Features<'a>) -> Result<&'a [f32]> {
    x.tokens.context("the learner needs the sample's tokens")
}

impl Method for DietMethod {
    fn name(&self) -> &str {
        &self.name
    }

    fn observe(&mut self, x: &Features<'_>, label: u16) -> Result<()> {
        let tokens = tokens_of(x)?;
        if self.fed_already()? {
            return Ok(());
        }
        let name = self
            .names
            .get(usize::from(label))
            .with_context(|| format!("no name for label {label}"))?;
        let mut s = self.shared.borrow_mut();
        let t = Instant::now();
        let report = s.learner.learn_tokens(tokens, name)?;
        s.pending_s += t.elapsed().as_secs_f64();
        ensure!(
            report.time_step.is_none(),
            "a time step ended before the runner ended it"
        );
        s.fed += 1;
        s.labelled += 1;
        s.store_bytes += report.record_bytes as u64;
        let stored = s.learner.store().len();
        ensure!(
            stored == s.labelled,
            "the learner's store evicted samples ({stored} kept of {})",
            s.labelled
        );
        Ok(())
    }

    fn takes_unlabelled(&self) -> bool {
        self.shared.borrow().feed == Feed::Diet
    }

    fn observe_unlabelled(&mut self, x: &Features<'_>) -> Result<()> {
        let tokens = tokens_of(x)?;
        if self.fed_already()? {
            return Ok(());
        }
        let mut s = self.shared.borrow_mut();
        let t = Instant::now();
        let report = s.learner.observe_unlabelled(tokens)?;
        s.pending_s += t.elapsed().as_secs_f64();
        ensure!(
            report.time_step.is_none() && !report.dropped,
            "an unlabelled sample ended a time step or was dropped"
        );
        s.fed += 1;
        Ok(())
    }

    fn end_stage(&mut self) -> Result<Option<StageSteps>> {
        let mut s = self.shared.borrow_mut();
        if let Some(done) = s.ended.get(self.ended) {
            self.ended += 1;
            return Ok(Some(*done));
        }
        let t = Instant::now();
        let report = s.learner.end_time_step()?;
        let seconds = s.pending_s + t.elapsed().as_secs_f64();
        let steps = steps_of(&report, seconds);
        log::debug!("{} time step {}: {report:?}", self.name, report.index);
        s.ended.push(steps);
        let total = s.done_s.last().copied().unwrap_or(0.0) + seconds;
        s.done_s.push(total);
        s.pending_s = 0.0;
        self.ended += 1;
        Ok(Some(steps))
    }

    fn predict(&mut self, x: &Features<'_>, candidates: &[u16]) -> Result<usize> {
        let tokens = tokens_of(x)?;
        let mut s = self.shared.borrow_mut();
        if !self.sets.contains_key(candidates) {
            let names = candidates
                .iter()
                .map(|&l| {
                    self.names
                        .get(usize::from(l))
                        .cloned()
                        .with_context(|| format!("no name for label {l}"))
                })
                .collect::<Result<Vec<_>>>()?;
            let set = s.learner.label_set(&names)?;
            self.sets.insert(candidates.to_vec(), set);
        }
        let (n, d) = s.dims;
        ensure!(tokens.len() == n * d, "tokens are not [{n}, {d}]");
        let p = s
            .learner
            .predict_tokens(tokens, &self.sets[candidates], self.mixing)?;
        Ok(p[0].best())
    }

    fn stored_bytes(&self) -> u64 {
        self.shared.borrow().store_bytes
    }

    /// The steps spent in the time steps this method has ended.
    fn train_steps(&self) -> u64 {
        let s = self.shared.borrow();
        s.ended[..self.ended]
            .iter()
            .map(|t| u64::from(t.used))
            .sum()
    }

    fn needs_tokens(&self) -> bool {
        true
    }

    fn update_seconds(&self) -> Option<f64> {
        let s = self.shared.borrow();
        Some(self.ended.checked_sub(1).map_or(0.0, |i| s.done_s[i]))
    }
}

/// The anytime learner under the budget: learns the first `S` labelled samples of a time
/// step, one step each, and not the rest (module documentation).
pub struct Capped {
    inner: LearnerMethod,
    budget: u32,
    learned: u32,
    skipped: u32,
    /// The inner method's learning seconds when the time step began.
    start_s: f64,
}

impl std::fmt::Debug for Capped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capped")
            .field("inner", &self.inner)
            .field("budget", &self.budget)
            .finish()
    }
}

impl Method for Capped {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn observe(&mut self, x: &Features<'_>, label: u16) -> Result<()> {
        if self.learned < self.budget {
            self.learned += 1;
            self.inner.observe(x, label)
        } else {
            self.skipped += 1;
            Ok(())
        }
    }

    fn end_stage(&mut self) -> Result<Option<StageSteps>> {
        let now = self.inner.update_seconds().unwrap_or(0.0);
        let steps = StageSteps {
            budget: self.budget,
            used: self.learned,
            sample: self.learned,
            skipped: self.skipped,
            seconds: now - self.start_s,
            ..StageSteps::default()
        };
        (self.learned, self.skipped, self.start_s) = (0, 0, now);
        Ok(Some(steps))
    }

    fn predict(&mut self, x: &Features<'_>, candidates: &[u16]) -> Result<usize> {
        self.inner.predict(x, candidates)
    }

    fn stored_bytes(&self) -> u64 {
        self.inner.stored_bytes()
    }

    fn train_steps(&self) -> u64 {
        self.inner.train_steps()
    }

    fn needs_tokens(&self) -> bool {
        true
    }

    fn update_seconds(&self) -> Option<f64> {
        self.inner.update_seconds()
    }
}

/// The methods [`build`] made, in the order of their specs, and the training backend's
/// name (`None` without any).
pub type Built = (Vec<Box<dyn Method>>, Option<&'static str>);

/// Builds the learner methods of `specs` (in order) with the threshold `s_star`: one
/// learner per feed, each in `<root>/<name of its first method>`, shared by its `-tuned`
/// twin.
pub fn build(specs: &[DietSpec], ctx: &DietContext<'_>, s_star: u32) -> Result<Built> {
    let mut shared: Vec<(Feed, Rc<RefCell<DietLearner>>)> = Vec::new();
    let anytime: Vec<LearnerSpec> = specs
        .iter()
        .filter(|s| s.feed == Feed::Anytime)
        .map(|s| LearnerSpec {
            name: s.name.clone(),
            training: ctx.training,
            mixing: s.mixing,
        })
        .collect();
    let mut anytime = learner::build(
        &anytime,
        ctx.assets,
        &ctx.root,
        ctx.settings,
        ctx.names.clone(),
    )?
    .into_iter();
    let mut backend = None;
    let mut out: Vec<Box<dyn Method>> = Vec::with_capacity(specs.len());
    for spec in specs {
        if spec.feed == Feed::Anytime {
            let inner = anytime.next().context("one anytime learner per spec")?;
            backend.get_or_insert(inner.backend_name());
            out.push(Box::new(Capped {
                inner,
                budget: ctx.budget,
                learned: 0,
                skipped: 0,
                start_s: 0.0,
            }));
            continue;
        }
        let s = match shared.iter().find(|(f, _)| *f == spec.feed) {
            Some((_, s)) => s.clone(),
            None => {
                let s = Rc::new(RefCell::new(
                    ctx.diet_learner(&spec.name, spec.feed, s_star)?,
                ));
                shared.push((spec.feed, s.clone()));
                s
            }
        };
        let m = DietMethod::new(&spec.name, spec.mixing, s, ctx.names.clone());
        backend.get_or_insert(m.backend_name());
        out.push(Box::new(m));
    }
    Ok((out, backend))
}

/// Chooses `S*` among `candidates` by cross-validation (module documentation); returns
/// the choice and the seconds it took.
pub fn cross_validate(
    ctx: &DietContext<'_>,
    table: &mut FeatureTable,
    candidates: &[u32],
) -> Result<(SStarChoice, f64)> {
    let t0 = Instant::now();
    let plan = ctx.plan;
    ensure!(
        plan.stages.len() >= CV_TIME_STEPS as usize,
        "choosing S* needs at least {CV_TIME_STEPS} time steps, the stream has {}",
        plan.stages.len()
    );
    ensure!(!plan.validation.is_empty(), "no validation images for S*");
    let group = plan
        .groups
        .iter()
        .find(|g| !g.held_out)
        .context("no evaluation group")?;
    let candidates_labels = group.candidates.clone();
    let mut evaluate = |s_star: u32| -> Result<f64> {
        let dir = format!("cv-s-star-{s_star}");
        let learner = ctx.diet_learner(&dir, Feed::Diet, s_star)?;
        let mut m = DietMethod::new(
            &dir,
            Mixing::Ocw,
            Rc::new(RefCell::new(learner)),
            ctx.names.clone(),
        );
        for stage in &plan.stages[..CV_TIME_STEPS as usize] {
            for &r in &stage.train {
                let tokens = table.tokens(r.source, Split::Train, r.index)?;
                let x = Features {
                    tokens: Some(&tokens),
                    embedding: table.embedding(r.source, Split::Train, r.index)?,
                };
                m.observe(&x, label_of(plan, ctx.sources, r, Split::Train)?)?;
            }
            for r in &stage.unlabelled {
                let tokens = table.tokens(r.source, Split::Train, r.index)?;
                let x = Features {
                    tokens: Some(&tokens),
                    embedding: table.embedding(r.source, Split::Train, r.index)?,
                };
                m.observe_unlabelled(&x)?;
            }
            m.end_stage()?;
        }
        let mut tally = Tally::default();
        for &r in &plan.validation {
            let tokens = table.tokens(r.source, Split::Train, r.index)?;
            let x = Features {
                tokens: Some(&tokens),
                embedding: table.embedding(r.source, Split::Train, r.index)?,
            };
            let pick = m.predict(&x, &candidates_labels)?;
            let truth = label_of(plan, ctx.sources, r, Split::Train)?;
            tally.add(candidates_labels.get(pick) == Some(&truth));
        }
        drop(m);
        remove_learner(&ctx.root.join(&dir));
        let acc = tally.percent().context("no validation image scored")?;
        log::info!("S* = {s_star}: {acc:.2} % on the validation images");
        Ok(acc)
    };
    let choice = choose_s_star(candidates, &mut evaluate).map_err(|e| match e {
        SStarError::Evaluate { s_star, source } => {
            source.context(format!("choosing S*: evaluating S* = {s_star}"))
        }
        e => anyhow::anyhow!("choosing S*: {e}"),
    })?;
    Ok((choice, t0.elapsed().as_secs_f64()))
}

/// Removes a cross-validation learner's folder (its store is large and never read again).
fn remove_learner(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir) {
        log::warn!("removing {}: {e}", dir.display());
    }
}

/// The diet protocol's table: per method the final accuracy (all / seen / unseen), the
/// average over time steps, the steps spent, ms per step and learning time; and the `S*`
/// choice with every candidate's validation accuracy.
pub fn summary_table(report: &Report) -> String {
    let f = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.1}"));
    let mut s = String::new();
    let diet = &report.config["diet"];
    if let Some(choice) = diet.get("s_star").filter(|c| !c.is_null()) {
        let scores: Vec<String> = choice["scores"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|c| {
                        format!(
                            "{} → {:.1}",
                            c["s_star"],
                            c["accuracy"].as_f64().unwrap_or(f64::NAN)
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        s += &format!(
            "S = {}, S* = {} (validation accuracy % after the first {} time steps: {})\n",
            diet["budget"],
            choice["s_star"],
            choice["time_steps"],
            scores.join(", ")
        );
    }
    s += &format!(
        "{:<20} {:>6} {:>6} {:>6} {:>7} {:>6} {:>5} {:>5} {:>5} {:>5} {:>6} {:>7} {:>8}\n",
        "method",
        "final",
        "seen",
        "unseen",
        "average",
        "steps",
        "max",
        "L_m",
        "L_r",
        "L_b",
        "0.1×",
        "ms/step",
        "learn s"
    );
    for m in &report.summaries {
        let st = m.steps.unwrap_or_default();
        s += &format!(
            "{:<20} {:>6} {:>6} {:>6} {:>7} {:>6} {:>5} {:>5} {:>5} {:>5} {:>6} {:>7} {:>8.1}\n",
            m.method,
            f(m.final_acc),
            f(m.final_seen),
            f(m.final_unseen),
            f(m.average_acc),
            st.used,
            st.max_used,
            st.current,
            st.masked,
            st.balanced + st.sample,
            st.reduced_lr,
            st.ms_per_step.map_or("-".to_owned(), |v| format!("{v:.2}")),
            st.seconds
        );
    }
    s
}

/// Refuses the learner methods of the other protocols under the diet protocol.
pub fn check_method(name: &str) -> Result<DietSpec> {
    match parse_diet_method(name) {
        Some(spec) => Ok(spec),
        None => bail!(
            "method `{name}` does not run under the diet protocol; its methods: zero-shot, \
             ncm, {} (each also as <name>-tuned)",
            DIET_METHODS.join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_candidates_default_to_quarters_of_s() {
        let d = parse_diet_method("diet").unwrap();
        assert_eq!((d.feed, d.mixing), (Feed::Diet, Mixing::Ocw));
        let t = parse_diet_method("replay-only-tuned").unwrap();
        assert_eq!((t.feed, t.mixing), (Feed::ReplayOnly, Mixing::TunedOnly));
        assert_eq!(
            parse_diet_method("labelled-only").unwrap().feed,
            Feed::LabelledOnly
        );
        assert_eq!(parse_diet_method("anytime").unwrap().feed, Feed::Anytime);
        assert!(parse_diet_method("full").is_none());
        assert!(check_method("tuned").is_err());
        assert_eq!(default_candidates(16), [0, 4, 8, 12, 16]);
        assert_eq!(default_candidates(64), [0, 16, 32, 48, 64]);
        assert_eq!(default_candidates(2), [0, 1, 2]);
        assert_eq!(default_candidates(0), [0]);
    }
}
