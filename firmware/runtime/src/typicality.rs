//! "None of the above", calibrated: how typical an image's similarity to its best label is
//! of that label's own images.
//!
//! For every learned label the learner keeps the mean and variance of the cosine between
//! the tuned model's embedding of each **new** sample and the label's text embedding,
//! taken before the training step on it (so on an image the model has not trained on,
//! like a query), weighted as OCW weights its estimates (a running mean for the first 100
//! samples, then exponential with η = 0.99). A query image whose best label is `y` gets the
//! score `(mean_y − cos) / std_y`: how many standard deviations its similarity falls below
//! what `y`'s own images get. Answering "none" above `z` then wrongly refuses about the
//! normal tail `P(Z > z)` of `y`'s images (the `--none-rate` of the CLI), and refuses
//! images of labels never learned, which the tuned model does not pull towards `y`.

use std::collections::BTreeMap;

/// Samples a label needs before its score is given.
pub const MIN_SAMPLES: u32 = 10;
/// OCW's η (SPEC §3) and its warm-up length `round(1 / (1 − η))`.
const ETA: f32 = 0.99;
const WARM_UP: u32 = 100;
/// Bytes of one label's entry in the state blob: u16 id, f32 mean, f32 variance, u32 n.
pub const ENTRY_LEN: usize = 14;

/// One label's running statistics of its new samples' cosines.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Typicality {
    pub mean: f32,
    pub var: f32,
    pub n: u32,
}

impl Typicality {
    /// Adds the cosine of one new sample (non-finite values are ignored).
    pub fn observe(&mut self, cos: f32) {
        if !cos.is_finite() {
            return;
        }
        let w = if self.n < WARM_UP {
            1.0 / (self.n as f32 + 1.0)
        } else {
            1.0 - ETA
        };
        let d = cos - self.mean;
        self.mean += w * d;
        self.var = (1.0 - w) * (self.var + w * d * d);
        self.n = self.n.saturating_add(1);
    }

    /// How many standard deviations `cos` falls below the mean; `None` before
    /// [`MIN_SAMPLES`] samples.
    pub fn score(&self, cos: f32) -> Option<f32> {
        (self.n >= MIN_SAMPLES).then(|| (self.mean - cos) / self.var.max(1e-8).sqrt())
    }
}

/// The statistics of every learned label, by store label id.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TypicalityMap(pub BTreeMap<u16, Typicality>);

impl TypicalityMap {
    pub fn observe(&mut self, label: u16, cos: f32) {
        self.0.entry(label).or_default().observe(cos);
    }

    pub fn get(&self, label: u16) -> Option<&Typicality> {
        self.0.get(&label)
    }

    /// `u16` count, then per label (ascending id) u16 id, f32 mean, f32 variance, u32 n,
    /// all little-endian; at most `max_len` bytes (labels beyond it are left out, highest
    /// ids first).
    pub fn encode(&self, max_len: usize) -> Vec<u8> {
        let room = max_len.saturating_sub(2) / ENTRY_LEN;
        let count = self.0.len().min(room).min(usize::from(u16::MAX));
        let mut out = Vec::with_capacity(2 + count * ENTRY_LEN);
        out.extend_from_slice(&(count as u16).to_le_bytes());
        for (id, t) in self.0.iter().take(count) {
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(&t.mean.to_le_bytes());
            out.extend_from_slice(&t.var.to_le_bytes());
            out.extend_from_slice(&t.n.to_le_bytes());
        }
        out
    }

    /// Reads what [`TypicalityMap::encode`] wrote; refuses a wrong length, a repeated or
    /// unordered id, and non-finite or negative statistics.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let count = match bytes {
            [a, b, ..] => usize::from(u16::from_le_bytes([*a, *b])),
            _ => return Err("typicality table shorter than its count".into()),
        };
        if bytes.len() != 2 + count * ENTRY_LEN {
            return Err(format!(
                "typicality table of {} bytes for {count} labels",
                bytes.len()
            ));
        }
        let mut map = BTreeMap::new();
        let mut last = None;
        for e in bytes[2..].chunks_exact(ENTRY_LEN) {
            let id = u16::from_le_bytes([e[0], e[1]]);
            let f = |i: usize| f32::from_le_bytes([e[i], e[i + 1], e[i + 2], e[i + 3]]);
            let t = Typicality {
                mean: f(2),
                var: f(6),
                n: u32::from_le_bytes([e[10], e[11], e[12], e[13]]),
            };
            if last.is_some_and(|l| l >= id) {
                return Err(format!("typicality table: label {id} out of order"));
            }
            if !t.mean.is_finite() || !t.var.is_finite() || t.var < 0.0 {
                return Err(format!("typicality table: label {id} has statistics {t:?}"));
            }
            last = Some(id);
            map.insert(id, t);
        }
        Ok(Self(map))
    }
}

/// `z` such that a standard normal exceeds it with probability `rate` (0 < rate < 1):
/// the score above which a label's own images are refused at about that rate.
pub fn threshold_for_rate(rate: f32) -> Option<f32> {
    if !(rate > 0.0 && rate < 1.0) {
        return None;
    }
    // Acklam's rational approximation of the normal quantile (relative error < 1.2e-9).
    let p = 1.0 - f64::from(rate);
    let a = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    let b = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    let c = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    let d = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    let tail = |q: f64| {
        (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5])
            / ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1.0)
    };
    let z = if p < 0.02425 {
        tail((-2.0 * p.ln()).sqrt())
    } else if p > 1.0 - 0.02425 {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q
            / (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1.0)
    };
    Some(z as f32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warm_up_gives_the_plain_mean_and_variance() {
        let xs = [0.2f32, 0.4, 0.3, 0.5, 0.1];
        let mut t = Typicality::default();
        xs.iter().for_each(|&x| t.observe(x));
        let mean = xs.iter().sum::<f32>() / 5.0;
        let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f32>() / 5.0;
        assert!(anytime_testkit::close(t.mean, mean, 1e-6, 0.0), "{t:?}");
        assert!(anytime_testkit::close(t.var, var, 1e-6, 0.0), "{t:?}");
        assert_eq!(t.n, 5);
        t.observe(f32::NAN);
        assert_eq!(t.n, 5, "a NaN is not a sample");
        assert_eq!(t.score(0.0), None, "fewer than MIN_SAMPLES");
    }

    #[test]
    fn after_warm_up_old_samples_fade() {
        let mut t = Typicality::default();
        (0..100).for_each(|_| t.observe(0.0));
        (0..500).for_each(|_| t.observe(1.0));
        assert!(t.mean > 0.99, "{t:?}");
        let z = t.score(0.9).unwrap();
        assert!(z > 0.0 && z.is_finite(), "{z}");
        // a sample at the mean scores 0; below it, positive; above it, negative
        let mut u = Typicality::default();
        [0.1f32, 0.3]
            .repeat(10)
            .into_iter()
            .for_each(|x| u.observe(x));
        assert!(anytime_testkit::close(
            u.score(0.2).unwrap(),
            0.0,
            1e-3,
            0.0
        ));
        assert!(u.score(0.0).unwrap() > 1.9);
        assert!(u.score(0.4).unwrap() < -1.9);
    }

    #[test]
    fn table_round_trips_and_refuses_garbage() {
        let mut m = TypicalityMap::default();
        m.observe(7, 0.25);
        m.observe(3, 0.5);
        m.observe(3, 0.75);
        let bytes = m.encode(usize::MAX);
        assert_eq!(bytes.len(), 2 + 2 * ENTRY_LEN);
        assert_eq!(TypicalityMap::decode(&bytes).unwrap(), m);
        // room for one entry only: the lowest id is kept
        let short = m.encode(2 + ENTRY_LEN + 3);
        assert_eq!(TypicalityMap::decode(&short).unwrap().0.len(), 1);
        assert!(TypicalityMap::decode(&short).unwrap().get(3).is_some());
        assert!(TypicalityMap::decode(&bytes[..bytes.len() - 1]).is_err());
        assert!(TypicalityMap::decode(&[]).is_err());
        let mut swapped = bytes.clone();
        swapped[2..2 + ENTRY_LEN].copy_from_slice(&bytes[2 + ENTRY_LEN..]);
        swapped[2 + ENTRY_LEN..].copy_from_slice(&bytes[2..2 + ENTRY_LEN]);
        assert!(TypicalityMap::decode(&swapped)
            .unwrap_err()
            .contains("order"));
        let mut nan = bytes.clone();
        nan[4..8].copy_from_slice(&f32::NAN.to_le_bytes());
        assert!(TypicalityMap::decode(&nan).is_err());
    }

    #[test]
    fn thresholds_are_normal_quantiles() {
        for (rate, z) in [
            (0.5, 0.0),
            (0.05, 1.644_853_6),
            (0.01, 2.326_347_9),
            (0.001, 3.090_232),
        ] {
            let got = threshold_for_rate(rate).unwrap();
            assert!(
                anytime_testkit::close(got, z, 1e-5, 0.0),
                "{rate}: {got} vs {z}"
            );
        }
        assert!(threshold_for_rate(0.0).is_none());
        assert!(threshold_for_rate(1.0).is_none());
        assert!(threshold_for_rate(f32::NAN).is_none());
    }
}
