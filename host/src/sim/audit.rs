//! Item 3 of the privacy audit (issue 15, docs/PRIVACY.md): is any synthetic token set of
//! a private learner's generator closer to a learned sample's tokens than real samples of
//! the same label are to each other?
//!
//! Per learned label: a pool of the label's learned samples (their trunk tokens, from the
//! token cache), the distance of each pool sample to its nearest other pool sample (the
//! real-to-real figure), and the distance of each of `count` synthetic token sets to its
//! nearest pool sample (the synthetic-to-real figure). Distances are root-mean-square
//! differences over the `N·D` token values.

use anyhow::{ensure, Result};
use serde::Serialize;

use super::dataset::Split;
use super::features::FeatureTable;
use super::method::{Features, Method};
use super::protocol::{Plan, SampleRef, SourceInfo};
use super::runner::label_of;

/// A distribution of nearest-neighbour distances.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Spread {
    pub min: f64,
    pub p5: f64,
    pub median: f64,
}

impl Spread {
    fn of(mut v: Vec<f64>) -> Option<Self> {
        if v.is_empty() || v.iter().any(|x| !x.is_finite()) {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        Some(Spread {
            min: v[0],
            p5: at(0.05),
            median: at(0.5),
        })
    }
}

/// One label's figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LabelAudit {
    pub label: u16,
    /// Learned samples in the pool, synthetic sets generated.
    pub pool: usize,
    pub generated: usize,
    /// Each pool sample to its nearest other pool sample.
    pub real_to_real: Spread,
    /// Each synthetic set to its nearest pool sample.
    pub synthetic_to_real: Spread,
    /// Synthetic sets nearer a pool sample than the nearest real pair (`real_to_real.min`).
    pub closer_than_any_real_pair: usize,
    /// How the method answers (over every label the plan trains) its synthetic sets and
    /// the pool's real samples of this label: % answered as this label. A generator whose
    /// sets the block recognises while the real samples are missed is a domain gap.
    pub synthetic_acc: f64,
    pub pool_acc: f64,
}

/// Root-mean-square difference of two equally long slices.
fn rms(a: &[f32], b: &[f32]) -> f64 {
    let s: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| f64::from(x - y).powi(2))
        .sum();
    (s / a.len().max(1) as f64).sqrt()
}

fn nearest(x: &[f32], pool: &[Vec<f32>], skip: Option<usize>) -> f64 {
    pool.iter()
        .enumerate()
        .filter(|(j, _)| Some(*j) != skip)
        .map(|(_, p)| rms(x, p))
        .fold(f64::INFINITY, f64::min)
}

/// The audit of `method`'s generator on every label it learned in `plan` (the labels of
/// the stages' training samples): up to `pool` learned samples and `count` synthetic sets
/// per label. Labels the generator has no sets for are left out; an empty result means the
/// method has no generator.
pub fn nearest_neighbour_audit(
    method: &mut dyn Method,
    plan: &Plan,
    sources: &[SourceInfo],
    table: &mut FeatureTable,
    pool: usize,
    count: usize,
    seed: u64,
) -> Result<Vec<LabelAudit>> {
    ensure!(
        pool >= 2,
        "the audit needs at least 2 learned samples a label"
    );
    let mut by_label: Vec<(u16, Vec<SampleRef>)> = Vec::new();
    for r in plan.stages.iter().flat_map(|s| &s.train) {
        let l = label_of(plan, sources, *r, Split::Train)?;
        match by_label.iter_mut().find(|(x, _)| *x == l) {
            Some((_, v)) => v.push(*r),
            None => by_label.push((l, vec![*r])),
        }
    }
    by_label.sort_by_key(|(l, _)| *l);
    let trained: Vec<u16> = by_label.iter().map(|(l, _)| *l).collect();
    let mut out = Vec::new();
    for (label, refs) in by_label {
        let Some(synthetic) = method.synthetic_tokens(label, count, seed ^ u64::from(label))?
        else {
            continue;
        };
        let mut real = Vec::new();
        for r in refs.iter().take(pool) {
            real.push(table.tokens(r.source, Split::Train, r.index)?);
        }
        if real.len() < 2 {
            continue;
        }
        let per = real[0].len();
        ensure!(
            synthetic.len() == count * per,
            "the generator gave {} values for {count} sets of {per}",
            synthetic.len()
        );
        let rr: Vec<f64> = (0..real.len())
            .map(|i| nearest(&real[i], &real, Some(i)))
            .collect();
        let sr: Vec<f64> = synthetic
            .chunks_exact(per)
            .map(|s| nearest(s, &real, None))
            .collect();
        let (Some(real_to_real), Some(synthetic_to_real)) =
            (Spread::of(rr), Spread::of(sr.clone()))
        else {
            anyhow::bail!("a non-finite distance for label {label} (NaN in the tokens?)");
        };
        let mut answered = |sets: &mut dyn Iterator<Item = &[f32]>| -> Result<f64> {
            let (mut right, mut n) = (0usize, 0usize);
            for t in sets {
                let x = Features {
                    tokens: Some(t),
                    embedding: &[],
                };
                right += usize::from(trained[method.predict(&x, &trained)?] == label);
                n += 1;
            }
            Ok(100.0 * right as f64 / n.max(1) as f64)
        };
        let synthetic_acc = answered(&mut synthetic.chunks_exact(per))?;
        let pool_acc = answered(&mut real.iter().map(Vec::as_slice))?;
        out.push(LabelAudit {
            label,
            pool: real.len(),
            generated: count,
            closer_than_any_real_pair: sr.iter().filter(|&&d| d < real_to_real.min).count(),
            real_to_real,
            synthetic_to_real,
            synthetic_acc,
            pool_acc,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_is_nan_aware_and_ordered() {
        assert!(Spread::of(vec![]).is_none());
        assert!(Spread::of(vec![1.0, f64::NAN]).is_none());
        let s = Spread::of((1..=101).map(f64::from).rev().collect()).unwrap();
        assert_eq!((s.min, s.p5, s.median), (1.0, 6.0, 51.0));
        assert_eq!(rms(&[0.0, 0.0], &[3.0, 4.0]), (12.5f64).sqrt());
        let pool = vec![vec![0.0f32], vec![1.0], vec![5.0]];
        assert_eq!(nearest(&[0.0], &pool, Some(0)), 1.0);
        assert_eq!(nearest(&[4.0], &pool, None), 1.0);
    }
}
