//! SPEC §8's budget of one time step: which training step comes next.
//!
//! A time step has a budget of `S` forward-backward steps. The first `min(S, S*)` are
//! split evenly between the three losses, interleaved in the order `L_m`, `L_r`, `L_b`
//! (m, r, b, m, r, b, …, so that counts differ by at most one, the earlier kinds taking
//! the remainder); the `S − S*` steps beyond `S*` are all `L_b` at
//! [`REDUCED_LR_SCALE`] times the learning rate.
//!
//! A kind without data in the time step (no labelled sample for `L_m`, no unlabelled one
//! for `L_r`, an empty store for `L_b`) is left out and its share goes to the others,
//! interleaved the same way. Without `L_b` data the steps beyond `S*` are not spent (they
//! are SPEC's consolidation on the balanced store, which nothing else replaces): the plan
//! is then shorter than `S`, and the report says so. A plan never holds more than `S`.

use serde::{Deserialize, Serialize};

/// Learning-rate scale of the steps beyond `S*` (SPEC §8).
pub const REDUCED_LR_SCALE: f32 = 0.1;

/// The loss of one training step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StepKind {
    /// `L_m`: CE over the labels of the current time step, on its labelled samples.
    Current,
    /// `L_r`: masked token modelling on unlabelled samples.
    Masked,
    /// `L_b`: CE on a class-balanced batch from storage.
    Balanced,
}

impl StepKind {
    /// The interleaving order below `S*`.
    pub const ORDER: [StepKind; 3] = [StepKind::Current, StepKind::Masked, StepKind::Balanced];

    /// SPEC §8's name of the loss (`L_m`, `L_r`, `L_b`).
    pub fn loss_name(self) -> &'static str {
        match self {
            StepKind::Current => "L_m",
            StepKind::Masked => "L_r",
            StepKind::Balanced => "L_b",
        }
    }
}

/// Which kinds of step have data in this time step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Available {
    /// Labelled samples of this time step (`L_m`).
    pub current: bool,
    /// Unlabelled samples of this time step (`L_r`).
    pub masked: bool,
    /// Stored samples (`L_b`).
    pub balanced: bool,
}

impl Available {
    /// Every kind has data.
    pub const ALL: Available = Available {
        current: true,
        masked: true,
        balanced: true,
    };

    /// Whether `kind` has data.
    pub fn has(&self, kind: StepKind) -> bool {
        match kind {
            StepKind::Current => self.current,
            StepKind::Masked => self.masked,
            StepKind::Balanced => self.balanced,
        }
    }
}

/// One planned step: its loss and the scale of its learning rate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PlannedStep {
    pub kind: StepKind,
    /// 1, or [`REDUCED_LR_SCALE`] beyond `S*`.
    pub lr_scale: f32,
}

/// The ordered steps of a time step with the budget `budget` (`S`), the threshold
/// `s_star` (`S*`) and the kinds that have data (module docs); at most `budget` steps.
pub fn schedule(budget: u32, s_star: u32, available: Available) -> Vec<PlannedStep> {
    let kinds: Vec<StepKind> = StepKind::ORDER
        .into_iter()
        .filter(|&k| available.has(k))
        .collect();
    if kinds.is_empty() {
        return Vec::new();
    }
    let below = budget.min(s_star) as usize;
    let mut plan: Vec<PlannedStep> = kinds
        .iter()
        .cycle()
        .take(below)
        .map(|&kind| PlannedStep {
            kind,
            lr_scale: 1.0,
        })
        .collect();
    if available.balanced {
        let beyond = PlannedStep {
            kind: StepKind::Balanced,
            lr_scale: REDUCED_LR_SCALE,
        };
        plan.resize(budget as usize, beyond);
    }
    plan
}

/// A time step's budget: its plan ([`schedule`]) and the steps spent so far.
#[derive(Clone, Debug)]
pub struct StepBudget {
    plan: Vec<PlannedStep>,
    total: u32,
    used: u32,
}

/// What a time step's budget was spent on (for logs and the simulator's tables).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BudgetReport {
    /// `S`.
    pub total: u32,
    /// Steps in the plan (below `S` when no stored data took the steps beyond `S*`).
    pub planned: u32,
    /// Steps spent so far.
    pub used: u32,
    /// Spent steps by loss: `L_m`, `L_r`, `L_b` (those at the reduced rate included).
    pub current: u32,
    pub masked: u32,
    pub balanced: u32,
    /// Spent steps at the reduced learning rate.
    pub reduced_lr: u32,
}

impl StepBudget {
    /// The budget `budget` (`S`) of a time step with the threshold `s_star` and the kinds
    /// that have data; nothing spent yet.
    pub fn new(budget: u32, s_star: u32, available: Available) -> Self {
        StepBudget {
            plan: schedule(budget, s_star, available),
            total: budget,
            used: 0,
        }
    }

    /// The next step of the plan, counted as spent, or `None` once the plan is done.
    pub fn next_step(&mut self) -> Option<PlannedStep> {
        let step = *self.plan.get(self.used as usize)?;
        self.used += 1;
        Some(step)
    }

    /// The whole plan, spent or not.
    pub fn plan(&self) -> &[PlannedStep] {
        &self.plan
    }

    /// Steps spent.
    pub fn used(&self) -> u32 {
        self.used
    }

    /// The budget `S`.
    pub fn total(&self) -> u32 {
        self.total
    }

    /// Steps of the plan not spent yet.
    pub fn left(&self) -> u32 {
        self.plan.len() as u32 - self.used
    }

    /// The spent steps, by kind.
    pub fn report(&self) -> BudgetReport {
        let mut r = BudgetReport {
            total: self.total,
            planned: self.plan.len() as u32,
            used: self.used,
            ..BudgetReport::default()
        };
        for s in &self.plan[..self.used as usize] {
            *match s.kind {
                StepKind::Current => &mut r.current,
                StepKind::Masked => &mut r.masked,
                StepKind::Balanced => &mut r.balanced,
            } += 1;
            r.reduced_lr += u32::from(s.lr_scale != 1.0);
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::StepKind::{Balanced as B, Current as M, Masked as R};
    use super::*;

    fn kinds(plan: &[PlannedStep]) -> Vec<StepKind> {
        plan.iter().map(|s| s.kind).collect()
    }

    fn count(plan: &[PlannedStep], kind: StepKind) -> usize {
        plan.iter().filter(|s| s.kind == kind).count()
    }

    #[test]
    fn below_s_star_the_budget_is_split_evenly_and_interleaved() {
        let plan = schedule(30, 30, Available::ALL);
        assert_eq!(plan.len(), 30);
        assert_eq!(kinds(&plan[..6]), [M, R, B, M, R, B]);
        assert_eq!([M, R, B].map(|k| count(&plan, k)), [10, 10, 10]);
        assert!(plan.iter().all(|s| s.lr_scale == 1.0));
        // A remainder goes to the earlier kinds; a budget below S* is all split.
        let plan = schedule(10, 30, Available::ALL);
        assert_eq!(kinds(&plan), [M, R, B, M, R, B, M, R, B, M]);
        assert!(plan.iter().all(|s| s.lr_scale == 1.0));
        assert_eq!(kinds(&schedule(2, 30, Available::ALL)), [M, R]);
    }

    #[test]
    fn beyond_s_star_every_step_is_balanced_at_a_tenth_of_the_rate() {
        let plan = schedule(40, 14, Available::ALL);
        assert_eq!(plan.len(), 40);
        assert_eq!([M, R, B].map(|k| count(&plan[..14], k)), [5, 5, 4]);
        assert!(plan[..14].iter().all(|s| s.lr_scale == 1.0));
        let tail = PlannedStep {
            kind: B,
            lr_scale: 0.1,
        };
        assert!(plan[14..].iter().all(|&s| s == tail), "{:?}", &plan[14..]);
        // S* = 0: the whole budget is the tail.
        assert!(schedule(7, 0, Available::ALL).iter().all(|&s| s == tail));
        assert_eq!(schedule(7, 0, Available::ALL).len(), 7);
        assert!(schedule(0, 5, Available::ALL).is_empty());
    }

    #[test]
    fn a_kind_without_data_gives_its_share_to_the_others() {
        let no_unlabelled = Available {
            masked: false,
            ..Available::ALL
        };
        let plan = schedule(12, 10, no_unlabelled);
        assert_eq!(kinds(&plan[..10]), [M, B, M, B, M, B, M, B, M, B]);
        assert_eq!(kinds(&plan[10..]), [B, B]);
        assert!(plan[10..].iter().all(|s| s.lr_scale == 0.1));
        let no_labels = Available {
            current: false,
            ..Available::ALL
        };
        assert_eq!(kinds(&schedule(5, 9, no_labels)), [R, B, R, B, R]);
        // Without stored data nothing takes the steps beyond S*.
        let no_store = Available {
            balanced: false,
            ..Available::ALL
        };
        let plan = schedule(12, 7, no_store);
        assert_eq!(kinds(&plan), [M, R, M, R, M, R, M]);
        let only_unlabelled = Available {
            masked: true,
            current: false,
            balanced: false,
        };
        assert_eq!(kinds(&schedule(9, 4, only_unlabelled)), [R; 4]);
        let nothing = Available {
            current: false,
            masked: false,
            balanced: false,
        };
        assert!(schedule(9, 4, nothing).is_empty());
    }

    /// Every budget, threshold and availability: never more than `S` steps, exactly `S`
    /// with stored data, the available kinds within one of each other below `S*`, only
    /// available kinds, and the tail all `L_b` at 0.1.
    #[test]
    fn a_plan_never_exceeds_its_budget() {
        for mask in 0..8u8 {
            let avail = Available {
                current: mask & 1 != 0,
                masked: mask & 2 != 0,
                balanced: mask & 4 != 0,
            };
            for budget in 0..40 {
                for s_star in 0..45 {
                    let plan = schedule(budget, s_star, avail);
                    let below = budget.min(s_star) as usize;
                    assert!(plan.len() <= budget as usize);
                    if avail.balanced {
                        assert_eq!(plan.len(), budget as usize);
                    }
                    let head = &plan[..below.min(plan.len())];
                    let counts: Vec<usize> = StepKind::ORDER
                        .into_iter()
                        .filter(|&k| avail.has(k))
                        .map(|k| count(head, k))
                        .collect();
                    let (lo, hi) = (counts.iter().min(), counts.iter().max());
                    if let (Some(lo), Some(hi)) = (lo, hi) {
                        assert!(hi - lo <= 1, "{avail:?} {budget} {s_star}: {counts:?}");
                    }
                    assert!(plan.iter().all(|s| avail.has(s.kind)));
                    assert!(head.iter().all(|s| s.lr_scale == 1.0));
                    let tail = &plan[head.len()..];
                    assert!(tail.iter().all(|s| s.kind == B && s.lr_scale == 0.1));
                }
            }
        }
    }

    #[test]
    fn a_budget_counts_what_is_spent_and_stops_at_its_plan() {
        let mut b = StepBudget::new(8, 5, Available::ALL);
        assert_eq!((b.total(), b.used(), b.left()), (8, 0, 8));
        let first = b.next_step().unwrap();
        assert_eq!((first.kind, first.lr_scale), (M, 1.0));
        for _ in 0..4 {
            b.next_step().unwrap();
        }
        let r = b.report();
        assert_eq!((r.used, r.current, r.masked, r.balanced), (5, 2, 2, 1));
        assert_eq!(r.reduced_lr, 0);
        let mut spent = 5;
        while b.next_step().is_some() {
            spent += 1;
        }
        assert_eq!(spent, 8);
        assert_eq!((b.used(), b.left()), (8, 0));
        assert!(b.next_step().is_none());
        assert_eq!(b.used(), 8, "a step past the plan was counted");
        let r = b.report();
        assert_eq!(
            r,
            BudgetReport {
                total: 8,
                planned: 8,
                used: 8,
                current: 2,
                masked: 2,
                balanced: 4,
                reduced_lr: 3,
            }
        );
        // A shorter plan (no stored data) reports what was left unspent.
        let mut short = StepBudget::new(
            8,
            5,
            Available {
                balanced: false,
                ..Available::ALL
            },
        );
        while short.next_step().is_some() {}
        let r = short.report();
        assert_eq!((r.total, r.planned, r.used), (8, 5, 5));
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<BudgetReport>(&json).unwrap(), r);
    }
}
