//! "None of the above", calibrated: how typical an image's similarity to its best label is
//! of that label's own images, on a scale where a threshold means a refusal rate.
//!
//! For every learned label the learner keeps the mean and variance of the cosine between
//! the **original** (frozen) model's embedding of each **new** sample and the label's text
//! embedding, weighted as OCW weights its estimates (a running mean for the first 100
//! samples, then exponential with η = 0.99). The frozen embedding does not drift as the
//! tuned block trains, so old samples' cosines stay what a query's would be; the tuned
//! model's cosines (this score before state version 4) grew as it trained, and images of
//! learned labels were refused far less often than asked (issue 22, BENCHMARKS.md).
//!
//! A query whose best label (the mixture's pick) is `y` gets the raw score
//! `(mean_y − cos) / std_y`. Its distribution on images of learned labels is not normal and
//! depends on how often the pick is wrong, so the raw score is not reported as it is: each
//! new sample's raw score, asked as a query would be (over the learned labels, before the
//! step on it), goes into one pooled histogram of recent arrivals ([`ArrivalScores`], the
//! last ~2,000 samples weigh), and the reported score is `Φ⁻¹(1 − p)` with `p` the share of
//! those arrivals scoring higher: answering "none" above `Φ⁻¹(1 − r)` (the `--none-rate r`
//! of the CLI) refuses about a share `r` of images like the learner's recent samples.

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

/// Bins of [`ArrivalScores`]: width 1/8 from −8 to 8 (scores beyond fall in the end bins).
pub const BINS: usize = 128;
const LO: f32 = -8.0;
const WIDTH: f32 = 1.0 / 8.0;
/// Each new arrival multiplies the older ones' weight by this: the last ~2,000 count.
const FADE: f32 = 1.0 - 1.0 / 2000.0;
/// Arrival weight below which the raw score is reported as it is (normal assumption).
pub const MIN_ARRIVALS: f32 = 50.0;
/// Bytes of [`ArrivalScores`] in the state blob: u16 bin count, f32 weight per bin.
pub const ARRIVALS_LEN: usize = 2 + 4 * BINS;

/// A fading histogram of raw scores of new samples, pooled over labels.
#[derive(Debug, Clone, PartialEq)]
pub struct ArrivalScores {
    pub weights: [f32; BINS],
}

impl Default for ArrivalScores {
    fn default() -> Self {
        Self {
            weights: [0.0; BINS],
        }
    }
}

impl ArrivalScores {
    /// Adds one raw score (non-finite values are ignored).
    pub fn observe(&mut self, raw: f32) {
        if !raw.is_finite() {
            return;
        }
        self.weights.iter_mut().for_each(|w| *w *= FADE);
        let bin = ((raw - LO) / WIDTH).floor().clamp(0.0, (BINS - 1) as f32) as usize;
        self.weights[bin] += 1.0;
    }

    /// Total weight of the arrivals (at most `1 / (1 − FADE)`).
    pub fn total(&self) -> f32 {
        self.weights.iter().sum()
    }

    /// Share of the arrivals' weight above `raw` (uniform within a bin), smoothed away
    /// from 0 and 1 by half an arrival; `None` below [`MIN_ARRIVALS`].
    pub fn share_above(&self, raw: f32) -> Option<f32> {
        let total = self.total();
        if total.is_nan() || total < MIN_ARRIVALS || raw.is_nan() {
            return None;
        }
        let x = ((raw - LO) / WIDTH).clamp(0.0, BINS as f32);
        let bin = (x.floor() as usize).min(BINS - 1);
        let above: f32 = self.weights[bin + 1..].iter().sum::<f32>()
            + self.weights[bin] * (1.0 - (x - bin as f32)).clamp(0.0, 1.0);
        Some(((above + 0.5) / (total + 1.0)).clamp(f32::MIN_POSITIVE, 1.0))
    }

    /// The calibrated score `Φ⁻¹(1 − p)` of a raw score, `p` its [`share_above`]; the raw
    /// score itself while too few arrivals are in.
    ///
    /// [`share_above`]: ArrivalScores::share_above
    pub fn calibrate(&self, raw: f32) -> f32 {
        match self.share_above(raw) {
            Some(p) if p < 1.0 => threshold_for_rate(p).unwrap_or(raw),
            Some(_) => f32::NEG_INFINITY,
            None => raw,
        }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&(BINS as u16).to_le_bytes());
        for w in &self.weights {
            out.extend_from_slice(&w.to_le_bytes());
        }
    }

    /// Reads [`ARRIVALS_LEN`] bytes; refuses another bin count and non-finite or negative
    /// weights.
    fn decode(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() != ARRIVALS_LEN {
            return Err(format!("arrival histogram of {} bytes", bytes.len()));
        }
        let bins = usize::from(u16::from_le_bytes([bytes[0], bytes[1]]));
        if bins != BINS {
            return Err(format!(
                "arrival histogram of {bins} bins (this build: {BINS})"
            ));
        }
        let mut weights = [0f32; BINS];
        for (w, b) in weights.iter_mut().zip(bytes[2..].chunks_exact(4)) {
            *w = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            if !w.is_finite() || *w < 0.0 {
                return Err(format!("arrival histogram weight {w}"));
            }
        }
        Ok(Self { weights })
    }
}

/// The statistics of every learned label, by store label id, and the pooled arrivals.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TypicalityMap(pub BTreeMap<u16, Typicality>, pub ArrivalScores);

impl TypicalityMap {
    /// The calibrated score of a query whose best label is `label` and whose original
    /// embedding has cosine `cos` to it; `None` when the label has too few samples.
    pub fn score(&self, label: u16, cos: f32) -> Option<f32> {
        let raw = self.get(label)?.score(cos)?;
        Some(self.1.calibrate(raw))
    }

    /// One new sample's raw score as a query (best label `picked`, cosine `cos` to it),
    /// before its own statistics are updated.
    pub fn observe_arrival(&mut self, picked: u16, cos: f32) {
        if let Some(raw) = self.get(picked).and_then(|t| t.score(cos)) {
            self.1.observe(raw);
        }
    }

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
        Ok(Self(map, ArrivalScores::default()))
    }

    /// The arrival histogram ([`ARRIVALS_LEN`] bytes), then the table of [`encode`] in at
    /// most `max_len − ARRIVALS_LEN` bytes.
    ///
    /// [`encode`]: TypicalityMap::encode
    pub fn encode_with_arrivals(&self, max_len: usize) -> Vec<u8> {
        let mut out = Vec::new();
        self.1.encode(&mut out);
        out.extend_from_slice(&self.encode(max_len.saturating_sub(ARRIVALS_LEN)));
        out
    }

    /// Reads what [`encode_with_arrivals`] wrote.
    ///
    /// [`encode_with_arrivals`]: TypicalityMap::encode_with_arrivals
    pub fn decode_with_arrivals(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() < ARRIVALS_LEN {
            return Err("typicality state shorter than its arrival histogram".into());
        }
        let arrivals = ArrivalScores::decode(&bytes[..ARRIVALS_LEN])?;
        let map = Self::decode(&bytes[ARRIVALS_LEN..])?;
        Ok(Self(map.0, arrivals))
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
    fn arrivals_calibrate_to_the_share_that_scored_higher() {
        let mut a = ArrivalScores::default();
        // raw scores 0, 0.05, …, 4.95 in turn: a share `1 − x / 5` lies above `x`
        for j in 0..2000 {
            a.observe((j % 100) as f32 * 0.05);
            if j == 40 {
                assert_eq!(a.share_above(1.0), None, "below MIN_ARRIVALS");
                assert_eq!(a.calibrate(1.0), 1.0, "the raw score until then");
            }
        }
        a.observe(f32::NAN);
        assert!(a.total() > 1000.0 && a.total() < 2000.0, "{}", a.total());
        for (raw, share) in [(2.5, 0.5), (4.0, 0.2), (4.75, 0.05), (-3.0, 1.0)] {
            let p = a.share_above(raw).unwrap();
            assert!(anytime_testkit::close(p, share, 0.02, 0.0), "{raw}: {p}");
        }
        assert!(anytime_testkit::close(a.calibrate(2.5), 0.0, 0.06, 0.0));
        assert!(anytime_testkit::close(a.calibrate(4.75), 1.645, 0.15, 0.0));
        // above every arrival: large but finite; the order of raw scores is kept
        let top = a.calibrate(20.0);
        assert!(top.is_finite() && top > 3.0, "{top}");
        let mut last = f32::NEG_INFINITY;
        for i in -100..200 {
            let c = a.calibrate(i as f32 * 0.05);
            assert!(c >= last, "not monotone at {i}: {c} < {last}");
            last = c;
        }
    }

    #[test]
    fn arrival_scores_follow_the_mixture_pick_and_round_trip() {
        let mut m = TypicalityMap::default();
        // the picked label has no statistics yet: nothing to score
        m.observe_arrival(3, 0.5);
        assert_eq!(m.1.total(), 0.0);
        for i in 0..20 {
            m.observe(3, 0.2 + 0.01 * (i % 5) as f32);
        }
        m.observe_arrival(3, 0.0);
        assert!(anytime_testkit::close(m.1.total(), 1.0, 1e-6, 0.0));
        // too few arrivals: the raw score
        let raw = m.get(3).unwrap().score(0.1).unwrap();
        assert_eq!(m.score(3, 0.1), Some(raw));
        assert_eq!(m.score(4, 0.1), None, "label never learned");
        let bytes = m.encode_with_arrivals(usize::MAX);
        assert_eq!(bytes.len(), ARRIVALS_LEN + 2 + ENTRY_LEN);
        assert_eq!(TypicalityMap::decode_with_arrivals(&bytes).unwrap(), m);
        // no room for the table: the histogram alone
        let short = m.encode_with_arrivals(ARRIVALS_LEN + 2);
        let back = TypicalityMap::decode_with_arrivals(&short).unwrap();
        assert_eq!((back.0.len(), &back.1), (0, &m.1));
        // refused: torn, another bin count, a NaN or negative weight
        assert!(TypicalityMap::decode_with_arrivals(&bytes[..ARRIVALS_LEN - 1]).is_err());
        let mut bins = bytes.clone();
        bins[0] = 64;
        assert!(TypicalityMap::decode_with_arrivals(&bins)
            .unwrap_err()
            .contains("bins"));
        for bad in [f32::NAN, -1.0, f32::INFINITY] {
            let mut w = bytes.clone();
            w[2..6].copy_from_slice(&bad.to_le_bytes());
            assert!(TypicalityMap::decode_with_arrivals(&w).is_err(), "{bad}");
        }
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
