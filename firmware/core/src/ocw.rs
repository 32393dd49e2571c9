//! Online class-wise weighting (OCW) state, SPEC §3.
//!
//! For every label the learner has trained on, two running accuracy estimates are
//! kept: `c_t` for the tuned last block and `c_o` for the original one, plus the
//! number `n` of new samples of that label seen so far. They are updated once per
//! **new** labelled sample, before the training step on it, and turned into the
//! mixing weight `α(y) = c_t / (c_t + c_o + 1e-8)` at prediction time
//! (see [`crate::mixing`]).
//!
//! Update rule, with `a_m = 1` when model `m` predicted the sample's label
//! correctly over the current training label set:
//! - warm-up while `n < WARMUP` (= round(1/(1−η)) = 100): `c ← (c·n + a)/(n+1)`,
//!   i.e. the exact running mean of the first `WARMUP` outcomes;
//! - afterwards an exponential moving average `c ← η c + (1−η) a` with `η = 0.99`.
//!
//! One count `n(y)` is shared by both models: both estimates are always updated
//! together, so two counts would always be equal (the SPEC's notation is `n(y)`).
//! After warm-up `n` keeps counting (saturating at `u32::MAX`).
//!
//! The state lives in a fixed-capacity, label-sorted `heapless::Vec` (capacity
//! `N` labels, a const generic) and is persisted with [`OcwState::to_slice`] /
//! [`OcwState::from_bytes`]: one version byte followed by the postcard encoding
//! of the entries. Decoding never panics: wrong versions, truncated or garbage
//! bytes, unsorted or duplicate labels and accuracies outside `[0, 1]` are all
//! reported as errors.

use heapless::Vec;
use serde::{Deserialize, Serialize};

use crate::Error;

/// EMA factor η of SPEC §3.
pub const ETA: f32 = 0.99;

/// Number of samples averaged exactly before the EMA takes over: round(1/(1−η)).
pub const WARMUP: u32 = 100;

/// The `1e-8` in the denominator of α, which keeps it defined when both estimates are 0.
pub const ALPHA_EPS: f32 = 1e-8;

/// Version byte written in front of the serialised state.
pub const FORMAT_VERSION: u8 = 1;

/// Accuracy estimates of one label.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct LabelStats {
    /// `c_t(y)`: accuracy estimate of the tuned model, in `[0, 1]`.
    pub c_tuned: f32,
    /// `c_o(y)`: accuracy estimate of the original model, in `[0, 1]`.
    pub c_original: f32,
    /// `n(y)`: new samples of this label observed so far.
    pub n: u32,
}

impl LabelStats {
    /// Folds in the outcome of one new sample for both models (SPEC §3).
    pub fn observe(&mut self, tuned_correct: bool, original_correct: bool) {
        let a_t = if tuned_correct { 1.0 } else { 0.0 };
        let a_o = if original_correct { 1.0 } else { 0.0 };
        if self.n < WARMUP {
            let n = self.n as f32;
            self.c_tuned = (self.c_tuned * n + a_t) / (n + 1.0);
            self.c_original = (self.c_original * n + a_o) / (n + 1.0);
        } else {
            self.c_tuned = ETA * self.c_tuned + (1.0 - ETA) * a_t;
            self.c_original = ETA * self.c_original + (1.0 - ETA) * a_o;
        }
        // rounding must never push an estimate out of [0, 1]: decoding refuses that
        self.c_tuned = self.c_tuned.clamp(0.0, 1.0);
        self.c_original = self.c_original.clamp(0.0, 1.0);
        self.n = self.n.saturating_add(1);
    }

    /// `α = c_t / (c_t + c_o + 1e-8)`.
    pub fn alpha(&self) -> f32 {
        alpha(self.c_tuned, self.c_original)
    }

    /// `α' = (1−p) c_t / ((1−p) c_t + c_o + 1e-8)` with `p = P_t(other|x)`.
    pub fn alpha_with_other(&self, p_other: f32) -> f32 {
        alpha_with_other(self.c_tuned, self.c_original, p_other)
    }

    fn is_valid(&self) -> bool {
        (0.0..=1.0).contains(&self.c_tuned) && (0.0..=1.0).contains(&self.c_original)
    }
}

/// `α(y) = c_t / (c_t + c_o + 1e-8)` (SPEC §2).
pub fn alpha(c_tuned: f32, c_original: f32) -> f32 {
    c_tuned / (c_tuned + c_original + ALPHA_EPS)
}

/// The variant `α'(y) = (1−p) c_t / ((1−p) c_t + c_o + 1e-8)`, `p = P_t(other|x)`.
///
/// `p` is clamped to `[0, 1]`; a NaN `p` is treated as 0 (plain α).
pub fn alpha_with_other(c_tuned: f32, c_original: f32, p_other: f32) -> f32 {
    let keep = if p_other.is_nan() {
        1.0
    } else {
        1.0 - p_other.clamp(0.0, 1.0)
    };
    alpha(keep * c_tuned, c_original)
}

/// One persisted entry: a label id and its estimates.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Entry {
    label: u16,
    stats: LabelStats,
}

/// OCW state for up to `N` labels, sorted by label id.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct OcwState<const N: usize> {
    entries: Vec<Entry, N>,
}

impl<const N: usize> OcwState<N> {
    /// Upper bound of [`Self::to_slice`]'s output: version byte, length varint
    /// (≤ 5 bytes) and per entry a u16 varint (≤ 3), two f32 (8) and a u32 varint (≤ 5).
    pub const MAX_ENCODED_LEN: usize = 1 + 5 + N * (3 + 8 + 5);

    /// An empty state.
    pub const fn new() -> Self {
        Self {
            entries: Vec::new(),
        }
    }

    /// Number of labels held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no label has been observed.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Maximum number of labels.
    pub const fn capacity(&self) -> usize {
        N
    }

    /// Forgets every label.
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    fn position(&self, label: u16) -> Result<usize, usize> {
        self.entries.binary_search_by_key(&label, |e| e.label)
    }

    /// Estimates of `label`, `None` if it was never trained on.
    pub fn get(&self, label: u16) -> Option<LabelStats> {
        self.position(label).ok().map(|i| self.entries[i].stats)
    }

    /// Sets the estimates of `label`. Returns the previous ones if the label was
    /// present; when the label is new and the state is full, hands `(label, stats)` back.
    pub fn insert(
        &mut self,
        label: u16,
        stats: LabelStats,
    ) -> Result<Option<LabelStats>, (u16, LabelStats)> {
        match self.position(label) {
            Ok(i) => Ok(Some(core::mem::replace(&mut self.entries[i].stats, stats))),
            Err(i) => match self.entries.insert(i, Entry { label, stats }) {
                Ok(()) => Ok(None),
                Err(e) => Err((e.label, e.stats)),
            },
        }
    }

    /// Removes `label`, returning its estimates if it was present.
    pub fn remove(&mut self, label: u16) -> Option<LabelStats> {
        self.position(label)
            .ok()
            .map(|i| self.entries.remove(i).stats)
    }

    /// Updates `label` with the outcome of one **new** sample (call before the
    /// training step on it) and returns the updated estimates.
    pub fn observe(
        &mut self,
        label: u16,
        tuned_correct: bool,
        original_correct: bool,
    ) -> Result<LabelStats, Error> {
        let i = match self.position(label) {
            Ok(i) => i,
            Err(i) => {
                let fresh = Entry {
                    label,
                    stats: LabelStats::default(),
                };
                self.entries
                    .insert(i, fresh)
                    .map_err(|_| Error::OcwFull { label })?;
                i
            }
        };
        let stats = &mut self.entries[i].stats;
        stats.observe(tuned_correct, original_correct);
        Ok(*stats)
    }

    /// `α(label)`; 0 for a label never trained on (so the original model decides).
    pub fn alpha(&self, label: u16) -> f32 {
        self.get(label).map_or(0.0, |s| s.alpha())
    }

    /// `α'(label)` given `P_t(other|x)`; 0 for a label never trained on.
    pub fn alpha_with_other(&self, label: u16, p_other: f32) -> f32 {
        self.get(label).map_or(0.0, |s| s.alpha_with_other(p_other))
    }

    /// Fills `out[i]` with the weight of `labels[i]`: α, or α' when `p_other` is given.
    pub fn alphas_into(
        &self,
        labels: &[u16],
        p_other: Option<f32>,
        out: &mut [f32],
    ) -> Result<(), Error> {
        if labels.len() != out.len() {
            return Err(Error::InvalidShape);
        }
        for (o, &l) in out.iter_mut().zip(labels) {
            *o = match p_other {
                Some(p) => self.alpha_with_other(l, p),
                None => self.alpha(l),
            };
        }
        Ok(())
    }

    /// Labels and their estimates, in increasing label order.
    pub fn iter(&self) -> impl Iterator<Item = (u16, LabelStats)> + '_ {
        self.entries.iter().map(|e| (e.label, e.stats))
    }

    /// Serialises into `buf` (version byte + postcard) and returns the bytes written.
    /// [`Self::MAX_ENCODED_LEN`] bytes always suffice.
    pub fn to_slice(&self, buf: &mut [u8]) -> Result<usize, Error> {
        let too_small = Error::BufferTooSmall {
            needed: Self::MAX_ENCODED_LEN as u32,
            got: buf.len() as u32,
        };
        let (version, rest) = buf.split_first_mut().ok_or(too_small)?;
        *version = FORMAT_VERSION;
        let used = postcard::to_slice(&self.entries, rest)
            .map_err(|_| too_small)?
            .len();
        Ok(1 + used)
    }

    /// Reads a state written by [`Self::to_slice`]. Trailing bytes are ignored.
    /// Never panics; every malformed input is an error.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Error> {
        let (&version, rest) = bytes.split_first().ok_or(Error::CorruptOcwState)?;
        if version != FORMAT_VERSION {
            return Err(Error::UnsupportedOcwVersion {
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        let entries: Vec<Entry, N> =
            postcard::from_bytes(rest).map_err(|_| Error::CorruptOcwState)?;
        let sorted = entries.windows(2).all(|w| w[0].label < w[1].label);
        if !sorted || !entries.iter().all(|e| e.stats.is_valid()) {
            return Err(Error::CorruptOcwState);
        }
        Ok(Self { entries })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Within 1e-6, both finite.
    fn close(a: f32, b: f32) -> bool {
        anytime_testkit::close(a, b, 1e-6, 0.0)
    }

    #[test]
    fn warmup_length_is_round_of_one_over_one_minus_eta() {
        assert_eq!(libm::roundf(1.0 / (1.0 - ETA)) as u32, WARMUP);
    }

    #[test]
    fn warmup_is_the_exact_running_mean() {
        let mut s = LabelStats::default();
        let mut hits_t = 0u32;
        let mut hits_o = 0u32;
        for i in 0..WARMUP {
            // tuned right on multiples of 3, original right on even samples
            let (t, o) = (i % 3 == 0, i % 2 == 0);
            hits_t += t as u32;
            hits_o += o as u32;
            s.observe(t, o);
            let n = (i + 1) as f32;
            assert!(
                close(s.c_tuned, hits_t as f32 / n),
                "step {i}: {}",
                s.c_tuned
            );
            assert!(
                close(s.c_original, hits_o as f32 / n),
                "step {i}: {}",
                s.c_original
            );
            assert_eq!(s.n, i + 1);
        }
    }

    #[test]
    fn warmup_of_constant_outcomes_is_exact() {
        let mut s = LabelStats::default();
        for _ in 0..WARMUP {
            s.observe(true, false);
            assert_eq!(s.c_tuned, 1.0);
            assert_eq!(s.c_original, 0.0);
        }
    }

    #[test]
    fn ema_after_warmup() {
        let mut s = LabelStats {
            c_tuned: 0.5,
            c_original: 0.25,
            n: WARMUP,
        };
        s.observe(true, false);
        assert!(close(s.c_tuned, 0.99 * 0.5 + 0.01));
        assert!(close(s.c_original, 0.99 * 0.25));
        assert_eq!(s.n, WARMUP + 1);
        // and the other way round: the tuned model wrong, the original right
        let (t, o) = (s.c_tuned, s.c_original);
        s.observe(false, true);
        assert!(close(s.c_tuned, 0.99 * t), "{s:?}");
        assert!(close(s.c_original, 0.99 * o + 0.01), "{s:?}");
        // many more hits converge towards 1 geometrically
        let mut expected_gap = 1.0 - s.c_tuned;
        for _ in 0..200 {
            s.observe(true, true);
            expected_gap *= ETA;
        }
        assert!(anytime_testkit::close(
            1.0 - s.c_tuned,
            expected_gap,
            1e-4,
            0.0
        ));
    }

    #[test]
    fn the_sample_that_ends_warmup_is_still_averaged() {
        let mut s = LabelStats::default();
        for _ in 0..WARMUP - 1 {
            s.observe(false, false);
        }
        s.observe(true, true); // n = 99 → mean of 100 outcomes
        assert!(close(s.c_tuned, 1.0 / WARMUP as f32));
        s.observe(true, true); // n = 100 → EMA
        assert!(close(s.c_tuned, ETA * 0.01 + 0.01));
    }

    #[test]
    fn long_runs_stay_in_range() {
        let mut s = LabelStats::default();
        for _ in 0..5000 {
            s.observe(true, false);
        }
        assert!(s.c_tuned <= 1.0 && s.c_tuned > 0.999 && s.c_original == 0.0);
        assert!(s.is_valid());
    }

    #[test]
    fn count_saturates() {
        let mut s = LabelStats {
            c_tuned: 1.0,
            c_original: 1.0,
            n: u32::MAX,
        };
        s.observe(true, true);
        assert_eq!(s.n, u32::MAX);
    }

    #[test]
    fn alpha_rules() {
        let mut st = OcwState::<4>::new();
        assert_eq!(st.alpha(7), 0.0, "never trained → 0");
        assert_eq!(st.alpha_with_other(7, 0.3), 0.0);
        st.observe(7, true, false).unwrap();
        assert!(close(st.alpha(7), 1.0), "c_t=1, c_o=0 → 1");
        st.insert(
            8,
            LabelStats {
                c_tuned: 0.0,
                c_original: 0.0,
                n: 3,
            },
        )
        .unwrap();
        assert_eq!(st.alpha(8), 0.0, "both 0 → 0, no NaN");
        // ε is added, never taken: a tiny c_t (after a long run of wrong answers) against
        // c_o = 0 gives c_t / (c_t + ε), inside [0, 1].
        assert!(close(alpha(1e-9, 0.0), 1.0 / 11.0), "{}", alpha(1e-9, 0.0));
        st.insert(
            9,
            LabelStats {
                c_tuned: 0.6,
                c_original: 0.2,
                n: 5,
            },
        )
        .unwrap();
        assert!(close(st.alpha(9), 0.75));
        // α' with P_t(other) = 0.5: 0.3 / (0.3 + 0.2)
        assert!(close(st.alpha_with_other(9, 0.5), 0.6));
        assert!(close(st.alpha_with_other(9, 0.0), st.alpha(9)));
        assert_eq!(st.alpha_with_other(9, 1.0), 0.0);
        assert!(close(st.alpha_with_other(9, f32::NAN), st.alpha(9)));
        assert!(close(st.alpha_with_other(9, -3.0), st.alpha(9)));

        let mut out = [9.0; 3];
        st.alphas_into(&[9, 7, 42], None, &mut out).unwrap();
        assert!(close(out[0], 0.75) && close(out[1], 1.0) && out[2] == 0.0);
        st.alphas_into(&[9, 7, 42], Some(0.5), &mut out).unwrap();
        assert!(close(out[0], 0.6));
        assert_eq!(
            st.alphas_into(&[1], None, &mut out),
            Err(Error::InvalidShape)
        );
    }

    #[test]
    fn insert_hands_value_back_when_full_and_keeps_order() {
        let mut st = OcwState::<2>::new();
        let s = LabelStats {
            c_tuned: 0.1,
            c_original: 0.2,
            n: 1,
        };
        assert_eq!(st.insert(5, s), Ok(None));
        assert_eq!(st.insert(1, s), Ok(None));
        assert_eq!(st.insert(3, s), Err((3, s)));
        assert_eq!(st.observe(4, true, true), Err(Error::OcwFull { label: 4 }));
        // an existing label still updates when full
        let s2 = LabelStats { n: 9, ..s };
        assert_eq!(st.insert(5, s2), Ok(Some(s)));
        assert!(st.observe(1, true, true).is_ok());
        let labels: std::vec::Vec<u16> = st.iter().map(|(l, _)| l).collect();
        assert_eq!(labels, [1, 5]);
        assert_eq!(st.remove(1).map(|s| s.n), Some(2));
        assert_eq!(st.len(), 1);
        assert_eq!(st.capacity(), 2);
    }

    fn sample_state() -> OcwState<16> {
        let mut st = OcwState::<16>::new();
        for (i, label) in [900u16, 3, 65535, 0, 17].into_iter().enumerate() {
            for k in 0..(i * 40 + 1) {
                st.observe(label, k % 2 == 0, k % 5 == 0).unwrap();
            }
        }
        st
    }

    #[test]
    fn round_trip() {
        let st = sample_state();
        let mut buf = [0u8; OcwState::<16>::MAX_ENCODED_LEN];
        let used = st.to_slice(&mut buf).unwrap();
        assert_eq!(buf[0], FORMAT_VERSION);
        let back = OcwState::<16>::from_bytes(&buf[..used]).unwrap();
        assert_eq!(back, st);
        // trailing bytes are ignored
        assert_eq!(OcwState::<16>::from_bytes(&buf).unwrap(), st);
        // an empty state round-trips too
        let empty = OcwState::<16>::new();
        let used = empty.to_slice(&mut buf).unwrap();
        assert_eq!(OcwState::<16>::from_bytes(&buf[..used]).unwrap(), empty);
    }

    #[test]
    fn len_is_empty_and_clear_count_labels() {
        let mut st = OcwState::<4>::new();
        assert!(st.is_empty());
        assert_eq!((st.len(), st.capacity()), (0, 4));
        st.observe(7, true, false).unwrap();
        st.observe(2, false, true).unwrap();
        st.observe(7, true, true).unwrap();
        assert!(!st.is_empty());
        assert_eq!(st.len(), 2);
        st.clear();
        assert!(st.is_empty());
        assert_eq!(st.len(), 0);
        assert_eq!(st.get(7), None);
    }

    #[test]
    fn full_state_fits_max_encoded_len() {
        let mut st = OcwState::<8>::new();
        for l in 0..8u16 {
            st.insert(
                u16::MAX - l,
                LabelStats {
                    c_tuned: 0.3,
                    c_original: 1.0,
                    n: u32::MAX,
                },
            )
            .unwrap();
        }
        let mut buf = [0u8; OcwState::<8>::MAX_ENCODED_LEN];
        let used = st.to_slice(&mut buf).unwrap();
        assert_eq!(OcwState::<8>::from_bytes(&buf[..used]).unwrap(), st);
        // The bound is tight but for the length varint (1 byte here, 5 allowed): the
        // store budgets the state blob by it.
        assert_eq!(OcwState::<8>::MAX_ENCODED_LEN - used, 4);
        assert!(matches!(
            st.to_slice(&mut buf[..used - 1]),
            Err(Error::BufferTooSmall { got, .. }) if got as usize == used - 1
        ));
        assert!(matches!(
            st.to_slice(&mut []),
            Err(Error::BufferTooSmall { got: 0, .. })
        ));
    }

    #[test]
    fn bad_bytes_are_errors() {
        type S = OcwState<16>;
        assert_eq!(S::from_bytes(&[]), Err(Error::CorruptOcwState));
        assert_eq!(
            S::from_bytes(&[0]),
            Err(Error::UnsupportedOcwVersion {
                found: 0,
                supported: FORMAT_VERSION
            })
        );
        assert_eq!(
            S::from_bytes(&[FORMAT_VERSION]),
            Err(Error::CorruptOcwState)
        );
        // more entries than the capacity
        assert_eq!(
            S::from_bytes(&[FORMAT_VERSION, 17]),
            Err(Error::CorruptOcwState)
        );

        let st = sample_state();
        let mut buf = [0u8; S::MAX_ENCODED_LEN];
        let used = st.to_slice(&mut buf).unwrap();
        // every truncation fails cleanly
        for cut in 0..used {
            assert!(S::from_bytes(&buf[..cut]).is_err(), "cut at {cut}");
        }
        // a larger capacity reads a smaller one's bytes, a smaller one refuses
        assert!(OcwState::<64>::from_bytes(&buf[..used]).is_ok());
        assert_eq!(
            OcwState::<2>::from_bytes(&buf[..used]),
            Err(Error::CorruptOcwState)
        );
    }

    #[test]
    fn invalid_contents_are_rejected() {
        type S = OcwState<4>;
        let encode = |entries: &[(u16, f32, f32, u32)]| {
            let mut v: Vec<Entry, 4> = Vec::new();
            for &(label, tuned, original, n) in entries {
                v.push(Entry {
                    label,
                    stats: LabelStats {
                        c_tuned: tuned,
                        c_original: original,
                        n,
                    },
                })
                .unwrap();
            }
            let mut buf = [0u8; S::MAX_ENCODED_LEN];
            buf[0] = FORMAT_VERSION;
            let n = postcard::to_slice(&v, &mut buf[1..]).unwrap().len();
            S::from_bytes(&buf[..1 + n])
        };
        assert!(encode(&[(1, 0.5, 0.5, 1), (2, 0.5, 0.5, 1)]).is_ok());
        assert_eq!(
            encode(&[(2, 0.5, 0.5, 1), (1, 0.5, 0.5, 1)]),
            Err(Error::CorruptOcwState)
        );
        assert_eq!(
            encode(&[(1, 0.5, 0.5, 1), (1, 0.5, 0.5, 1)]),
            Err(Error::CorruptOcwState)
        );
        assert_eq!(
            encode(&[(1, f32::NAN, 0.5, 1)]),
            Err(Error::CorruptOcwState)
        );
        assert_eq!(encode(&[(1, 0.5, 1.5, 1)]), Err(Error::CorruptOcwState));
        assert_eq!(encode(&[(1, -0.1, 0.5, 1)]), Err(Error::CorruptOcwState));
    }

    #[test]
    fn random_bytes_never_panic() {
        // xorshift bytes: decoding must return, Ok or Err, without panicking
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for len in 0..200usize {
            let mut buf = [0u8; 200];
            for b in buf.iter_mut().take(len) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            buf[0] = if len % 2 == 0 { FORMAT_VERSION } else { buf[0] };
            let _ = OcwState::<8>::from_bytes(&buf[..len]);
        }
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn any_bytes_decode_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
                let _ = OcwState::<8>::from_bytes(&bytes);
            }

            #[test]
            fn any_history_stays_in_range_and_round_trips(
                events in proptest::collection::vec((0u16..12, any::<bool>(), any::<bool>()), 0..400)
            ) {
                let mut st = OcwState::<12>::new();
                for (label, t, o) in events {
                    st.observe(label, t, o).unwrap();
                }
                for (label, s) in st.iter() {
                    prop_assert!((0.0..=1.0).contains(&s.c_tuned) && (0.0..=1.0).contains(&s.c_original));
                    let a = st.alpha(label);
                    prop_assert!((0.0..=1.0).contains(&a));
                }
                let mut buf = [0u8; OcwState::<12>::MAX_ENCODED_LEN];
                let used = st.to_slice(&mut buf).unwrap();
                prop_assert_eq!(OcwState::<12>::from_bytes(&buf[..used]).unwrap(), st);
            }
        }
    }
}
