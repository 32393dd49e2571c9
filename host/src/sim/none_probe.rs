//! Candidate "none of the above" signals, measured beside the learner's own (issue 22):
//! per-label statistics a device could keep (cosines of the tuned and the frozen
//! embeddings to a label's text, to its image prototype, over the whole history or a
//! recent window) and two references a device could not afford (a Mahalanobis distance
//! with a pooled covariance, and the nearest stored embedding).

use std::collections::BTreeMap;

use anytime_core::mixing::{argmax, dot};
use anytime_runtime::typicality::{threshold_for_rate, Typicality};

use super::method::{normalise, NoneSignal};

/// Samples before a statistic gives a score (as [`anytime_runtime::typicality`]).
const MIN_SAMPLES: u32 = 10;
/// The fast window's weight floor: about the last 20 samples count.
const FAST: f32 = 0.05;

/// Running mean and variance with weight `max(1/(n+1), FAST)`.
#[derive(Debug, Clone, Copy, Default)]
struct Window {
    mean: f32,
    var: f32,
    n: u32,
}

impl Window {
    fn observe(&mut self, x: f32) {
        let w = (1.0 / (self.n as f32 + 1.0)).max(FAST);
        let d = x - self.mean;
        self.mean += w * d;
        self.var = (1.0 - w) * (self.var + w * d * d);
        self.n += 1;
    }

    fn score(&self, x: f32) -> Option<f32> {
        (self.n >= MIN_SAMPLES).then(|| (self.mean - x) / self.var.max(1e-8).sqrt())
    }
}

#[derive(Debug, Clone, Default)]
struct LabelStats {
    tuned_text: Typicality,
    tuned_text_fast: Window,
    orig_text: Typicality,
    proto: Typicality,
    proto_fast: Window,
    /// Sum of the label's frozen embeddings.
    sum: Vec<f32>,
    n: u32,
}

impl LabelStats {
    fn prototype(&self) -> Option<Vec<f32>> {
        (self.n > 0).then(|| {
            let mut p = self.sum.clone();
            normalise(&mut p);
            p
        })
    }
}

/// A whitening matrix `[E, E]` (row-major, lower triangular) and whitened label means.
type Whitened = (Vec<f64>, BTreeMap<u16, Vec<f64>>);

/// The probe's per-label statistics and stored embeddings.
#[derive(Debug, Default)]
pub struct NoneProbe {
    labels: BTreeMap<u16, LabelStats>,
    /// Every learned sample's frozen embedding, with its label.
    stored: Vec<(u16, Vec<f32>)>,
    /// Whitening `L⁻¹` of the pooled within-label covariance and whitened label means,
    /// rebuilt after new samples.
    whitened: Option<Whitened>,
    /// Arrival z-scores (statistics before the sample) of the frozen text cosine and of
    /// the prototype cosine against the sample's own label, and of the frozen text cosine
    /// against the mixture's pick.
    arrivals: [Vec<f32>; 3],
    /// Their empirical (1 − r) quantiles for r = .01, .05, .10: all history, last 2000.
    quantiles: Option<[[[f64; 3]; 2]; 3]>,
    /// Labels learned so far, ascending.
    pub learned: Vec<u16>,
}

fn z(stat: Option<f32>) -> f64 {
    // a label without statistics yet is never refused
    stat.map_or(-1e9, f64::from)
}

impl NoneProbe {
    /// One new sample of `label`, before the training step on it: frozen embedding
    /// `z_o`, tuned `z_t`, the label's text embedding `text`.
    pub fn observe(&mut self, label: u16, z_o: &[f32], z_t: &[f32], text: &[f32]) {
        if let Err(i) = self.learned.binary_search(&label) {
            self.learned.insert(i, label);
        }
        let s = self.labels.entry(label).or_default();
        let (ct, co) = (dot(z_t, text), dot(z_o, text));
        if let Some(v) = s.orig_text.score(co) {
            self.arrivals[0].push(v);
        }
        if let (Some(p), true) = (s.prototype(), s.proto.n >= MIN_SAMPLES) {
            if let Some(v) = s.proto.score(dot(z_o, &p)) {
                self.arrivals[1].push(v);
            }
        }
        self.quantiles = None;
        s.tuned_text.observe(ct);
        s.tuned_text_fast.observe(ct);
        s.orig_text.observe(co);
        if let Some(p) = s.prototype() {
            let c = dot(z_o, &p);
            s.proto.observe(c);
            s.proto_fast.observe(c);
        }
        if s.sum.is_empty() {
            s.sum = vec![0.0; z_o.len()];
        }
        s.sum.iter_mut().zip(z_o).for_each(|(a, b)| *a += b);
        s.n += 1;
        self.stored.push((label, z_o.to_vec()));
        self.whitened = None;
    }

    /// The arrival score of the query's own statistic: the frozen text z-score against
    /// the label the mixture picks over the learned labels (`text_pick` its text).
    pub fn observe_pick(&mut self, picked: u16, z_o: &[f32], text_pick: &[f32]) {
        if let Some(v) = self
            .labels
            .get(&picked)
            .and_then(|s| s.orig_text.score(dot(z_o, text_pick)))
        {
            self.arrivals[2].push(v);
        }
    }

    /// Signals for one image over `candidates` (learned labels; `text` their rows),
    /// `best` the mixture's pick, `mixed` its probabilities.
    pub fn signals(
        &mut self,
        candidates: &[u16],
        text: &[f32],
        z_o: &[f32],
        z_t: &[f32],
        best: usize,
        mixed: &[f32],
    ) -> Vec<NoneSignal> {
        let e = z_o.len();
        let row = |i: usize| &text[i * e..(i + 1) * e];
        let stats = |i: usize| self.labels.get(&candidates[i]);
        let cos_t: Vec<f32> = (0..candidates.len()).map(|i| dot(z_t, row(i))).collect();
        let cos_o: Vec<f32> = (0..candidates.len()).map(|i| dot(z_o, row(i))).collect();
        let protos: Vec<Option<Vec<f32>>> = (0..candidates.len())
            .map(|i| stats(i).and_then(LabelStats::prototype))
            .collect();
        let cos_p: Vec<Option<f32>> = protos
            .iter()
            .map(|p| p.as_ref().map(|p| dot(z_o, p)))
            .collect();
        let b = stats(best);
        let tt = z(b.and_then(|s| s.tuned_text.score(cos_t[best])));
        let tt_fast = z(b.and_then(|s| s.tuned_text_fast.score(cos_t[best])));
        let ot = z(b.and_then(|s| s.orig_text.score(cos_o[best])));
        let pz = z(b.and_then(|s| cos_p[best].and_then(|c| s.proto.score(c))));
        let pz_fast = z(b.and_then(|s| cos_p[best].and_then(|c| s.proto_fast.score(c))));
        let pz_min = (0..candidates.len())
            .map(|i| z(stats(i).and_then(|s| cos_p[i].and_then(|c| s.proto.score(c)))))
            .fold(f64::INFINITY, f64::min);
        let ncm = 1.0
            - cos_p
                .iter()
                .flatten()
                .fold(f32::NEG_INFINITY, |m, &c| m.max(c)) as f64;
        let ot_best = argmax(&cos_o).unwrap_or(0);
        let tt_best = argmax(&cos_t).unwrap_or(0);
        let mut sorted = mixed.to_vec();
        sorted.sort_by(|a, b| b.total_cmp(a));
        let margin = 1.0 - f64::from(sorted[0] - sorted.get(1).copied().unwrap_or(0.0));
        let disagree = f64::from(u8::from(ot_best != tt_best)) + 0.5 * (1.0 - f64::from(sorted[0]));
        let tuned_max = super::method::max_softmax(&cos_t);
        let (knn1, knn10) = self.knn(candidates, z_o);
        let maha = self.mahalanobis(candidates, z_o);
        let mut out = vec![
            sig("tuned_z", tt, 0.05),
            sig("tt_fast", tt_fast, 0.05),
            sig("orig_text_z", ot, 0.05),
            sig("proto_z", pz, 0.05),
            sig("proto_z_fast", pz_fast, 0.05),
            sig("proto_z_min", pz_min, 0.05),
            NoneSignal {
                name: "ncm_dist",
                value: ncm,
                threshold: 0.5,
            },
            NoneSignal {
                name: "margin",
                value: margin,
                threshold: 0.5,
            },
            NoneSignal {
                name: "disagree",
                value: disagree,
                threshold: 0.75,
            },
            NoneSignal {
                name: "tuned_1-max_p",
                value: 1.0 - tuned_max,
                threshold: 0.5,
            },
            NoneSignal {
                name: "knn1",
                value: knn1,
                threshold: 0.5,
            },
            NoneSignal {
                name: "knn10",
                value: knn10,
                threshold: 0.5,
            },
            NoneSignal {
                name: "maha",
                value: maha,
                threshold: 1e9,
            },
        ];
        let at_rates: [(&'static str, &'static str, f64); 6] = [
            ("tuned_z@.01", "tuned_z@.10", tt),
            ("tt_fast@.01", "tt_fast@.10", tt_fast),
            ("orig_text_z@.01", "orig_text_z@.10", ot),
            ("proto_z@.01", "proto_z@.10", pz),
            ("proto_z_fast@.01", "proto_z_fast@.10", pz_fast),
            ("proto_z_min@.01", "proto_z_min@.10", pz_min),
        ];
        for (low, high, v) in at_rates {
            out.push(sig(low, v, 0.01));
            out.push(sig(high, v, 0.10));
        }
        let q = *self.quantiles.get_or_insert_with(|| {
            let quant = |v: &[f32]| {
                let mut v = v.to_vec();
                v.sort_by(f32::total_cmp);
                [0.01, 0.05, 0.10].map(|r| {
                    if v.is_empty() {
                        1e9
                    } else {
                        let i = ((1.0 - r) * (v.len() - 1) as f64).round() as usize;
                        f64::from(v[i])
                    }
                })
            };
            let recent = |v: &[f32]| quant(&v[v.len().saturating_sub(2000)..]);
            [
                [quant(&self.arrivals[0]), recent(&self.arrivals[0])],
                [quant(&self.arrivals[1]), recent(&self.arrivals[1])],
                [quant(&self.arrivals[2]), recent(&self.arrivals[2])],
            ]
        });
        let names: [[[&'static str; 3]; 2]; 3] = [
            [
                ["otz_emp@.01", "otz_emp@.05", "otz_emp@.10"],
                ["otz_emp2k@.01", "otz_emp2k@.05", "otz_emp2k@.10"],
            ],
            [
                ["pz_emp@.01", "pz_emp@.05", "pz_emp@.10"],
                ["pz_emp2k@.01", "pz_emp2k@.05", "pz_emp2k@.10"],
            ],
            [
                ["otpick@.01", "otpick@.05", "otpick@.10"],
                ["otpick2k@.01", "otpick2k@.05", "otpick2k@.10"],
            ],
        ];
        for (sig_i, v) in [ot, pz, ot].into_iter().enumerate() {
            for w in 0..2 {
                for r in 0..3 {
                    out.push(NoneSignal {
                        name: names[sig_i][w][r],
                        value: v,
                        threshold: q[sig_i][w][r],
                    });
                }
            }
        }
        out
    }

    /// `1 −` the largest and the 10th largest cosine to a stored frozen embedding of
    /// one of `candidates`.
    fn knn(&self, candidates: &[u16], z_o: &[f32]) -> (f64, f64) {
        let mut top = [f32::NEG_INFINITY; 10];
        for (l, v) in &self.stored {
            if !candidates.contains(l) {
                continue;
            }
            let c = dot(z_o, v);
            if c > top[9] {
                top[9] = c;
                top.sort_by(|a, b| b.total_cmp(a));
            }
        }
        (1.0 - f64::from(top[0]), 1.0 - f64::from(top[9]))
    }

    /// Smallest squared Mahalanobis distance to a learned label's mean, with the pooled
    /// within-label covariance (+ a ridge).
    fn mahalanobis(&mut self, candidates: &[u16], z_o: &[f32]) -> f64 {
        if self.whitened.is_none() {
            self.whitened = self.whiten();
        }
        let Some((w, means)) = &self.whitened else {
            return 0.0;
        };
        let e = z_o.len();
        let x: Vec<f64> = z_o.iter().map(|&v| f64::from(v)).collect();
        let wx: Vec<f64> = (0..e)
            .map(|i| (0..=i).map(|j| w[i * e + j] * x[j]).sum())
            .collect();
        candidates
            .iter()
            .filter_map(|l| means.get(l))
            .map(|m| {
                wx.iter()
                    .zip(m)
                    .map(|(a, b)| (a - b) * (a - b))
                    .sum::<f64>()
            })
            .fold(f64::INFINITY, f64::min)
    }

    fn whiten(&self) -> Option<Whitened> {
        let e = self.stored.first()?.1.len();
        let mut means: BTreeMap<u16, Vec<f64>> = BTreeMap::new();
        for (l, s) in &self.labels {
            means.insert(
                *l,
                s.sum
                    .iter()
                    .map(|&v| f64::from(v) / f64::from(s.n))
                    .collect(),
            );
        }
        let mut cov = vec![0f64; e * e];
        for (l, v) in &self.stored {
            let m = &means[l];
            let d: Vec<f64> = v.iter().zip(m).map(|(&a, b)| f64::from(a) - b).collect();
            for i in 0..e {
                for j in 0..=i {
                    cov[i * e + j] += d[i] * d[j];
                }
            }
        }
        let n = self.stored.len() as f64;
        for i in 0..e {
            for j in 0..=i {
                cov[i * e + j] /= n;
            }
            cov[i * e + i] += 1e-4;
        }
        // Cholesky (lower), then its inverse.
        let mut l = vec![0f64; e * e];
        for i in 0..e {
            for j in 0..=i {
                let s: f64 = (0..j).map(|k| l[i * e + k] * l[j * e + k]).sum();
                if i == j {
                    l[i * e + i] = (cov[i * e + i] - s).max(1e-12).sqrt();
                } else {
                    l[i * e + j] = (cov[i * e + j] - s) / l[j * e + j];
                }
            }
        }
        let mut w = vec![0f64; e * e];
        for c in 0..e {
            for i in c..e {
                let rhs = if i == c { 1.0 } else { 0.0 };
                let s: f64 = (c..i).map(|k| l[i * e + k] * w[k * e + c]).sum();
                w[i * e + c] = (rhs - s) / l[i * e + i];
            }
        }
        let wm = means
            .into_iter()
            .map(|(k, m)| {
                let v = (0..e)
                    .map(|i| (0..=i).map(|j| w[i * e + j] * m[j]).sum())
                    .collect();
                (k, v)
            })
            .collect();
        Some((w, wm))
    }
}

fn sig(name: &'static str, value: f64, rate: f32) -> NoneSignal {
    NoneSignal {
        name,
        value,
        threshold: f64::from(threshold_for_rate(rate).unwrap_or(f32::INFINITY)),
    }
}
