//! SPEC §7's per-label aggregate token statistics: per channel, the mean and variance of
//! every token (CLS included) of every sample that contributed, updated online, published
//! once [`MIN_SAMPLES`] samples contributed. Their size does not depend on the number of
//! samples, and they hold no sample's tokens: one sample's record is `2·D` numbers
//! (its per-channel mean and spread) of its `N·D` values.
//!
//! Accumulation is in f64: each sample's per-channel mean and sum of squared deviations
//! (two passes over its `N` tokens), merged into the aggregate by Chan, Golub and LeVeque's
//! pairwise rule (Welford's update for a block of values), so that the result does not
//! drift with the number of samples.
//!
//! [`TokenStats`] format, version 1, little-endian:
//!
//! | bytes | field |
//! |---|---|
//! | 0..4 | magic `AETS` |
//! | 4..6 | version (u16, 1) |
//! | 6..10 | token width `D` (u32) |
//! | 10..14 | tokens per sample `N`, CLS included (u32) |
//! | 14..22 | samples that contributed (u64; tokens = samples·N) |
//! | 22.. | f64: per-channel mean `[D]`, then per-channel sum of squared deviations `[D]` |
//! | last 4 | CRC-32 (ISO-HDLC) of every byte before it |
//!
//! `16·D + 26` bytes in all. [`StatsTable`] format, version 1: magic `AETT`, version (u16,
//! 1), `D` (u32), `N` (u32), entry count (u32), then per entry in increasing label order the
//! label id (u16) and its [`TokenStats`] record, then a CRC-32 of every byte before it.

use std::collections::BTreeMap;

use super::codec::{checked_body, seal, write_header, Header};
use super::PrivateError;

/// Samples a label needs before its statistics are published (SPEC §7).
pub const MIN_SAMPLES: u64 = 8;

/// Floor of a published variance, so that the alignment loss's `1/σ²` stays finite for a
/// channel that was constant over every token seen.
pub const VAR_FLOOR: f32 = 1e-5;

const MAGIC: [u8; 4] = *b"AETS";
const TABLE_MAGIC: [u8; 4] = *b"AETT";
const HEADER_LEN: usize = 22;
const TABLE_HEADER_LEN: usize = 18;
const WHAT: &str = "token statistics";
const TABLE_WHAT: &str = "token statistics table";

/// Chan et al.'s merge of the aggregate `(n_a, mean_a, m2_a)` with a block
/// `(n_b, mean_b, m2_b)`, per channel, into the aggregate.
fn merge_into(
    n_a: f64,
    mean_a: &mut [f64],
    m2_a: &mut [f64],
    n_b: f64,
    mean_b: &[f64],
    m2_b: &[f64],
) {
    let n = n_a + n_b;
    if n_b == 0.0 {
        return;
    }
    for ((ma, sa), (&mb, &sb)) in mean_a
        .iter_mut()
        .zip(m2_a.iter_mut())
        .zip(mean_b.iter().zip(m2_b))
    {
        let delta = mb - *ma;
        *ma += delta * (n_b / n);
        *sa += sb + delta * delta * (n_a * n_b / n);
    }
}

/// Per-channel mean and variance of one label's token sets, aggregated online.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenStats {
    width: usize,
    tokens: usize,
    samples: u64,
    mean: Vec<f64>,
    /// Per-channel sum of squared deviations from the mean over every token seen.
    m2: Vec<f64>,
}

impl TokenStats {
    /// No sample yet, for token sets of `tokens` tokens of width `width` (both non-zero,
    /// and each fitting a u32 as the format stores them).
    pub fn new(width: usize, tokens: usize) -> Result<Self, PrivateError> {
        check_dims(width, tokens)?;
        Ok(TokenStats {
            width,
            tokens,
            samples: 0,
            mean: vec![0.0; width],
            m2: vec![0.0; width],
        })
    }

    /// Token width `D`.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Tokens per sample `N`.
    pub fn tokens_per_sample(&self) -> usize {
        self.tokens
    }

    /// Samples that contributed.
    pub fn samples(&self) -> u64 {
        self.samples
    }

    /// Tokens that contributed (`samples · N`).
    pub fn tokens(&self) -> u64 {
        self.samples * self.tokens as u64
    }

    /// Adds one sample's tokens (`[N, D]`). Refused, changing nothing, when the length is
    /// not `N·D` or a value is NaN or infinite.
    pub fn observe(&mut self, tokens: &[f32]) -> Result<(), PrivateError> {
        let (n, d) = (self.tokens, self.width);
        if tokens.len() != n * d {
            return Err(PrivateError::Shape {
                what: "sample tokens (N·D)",
                expected: n * d,
                found: tokens.len(),
            });
        }
        if tokens.iter().any(|v| !v.is_finite()) {
            return Err(PrivateError::NonFinite {
                what: "sample tokens",
            });
        }
        let mut mean = vec![0.0f64; d];
        for row in tokens.chunks_exact(d) {
            mean.iter_mut().zip(row).for_each(|(m, &x)| *m += x as f64);
        }
        mean.iter_mut().for_each(|m| *m /= n as f64);
        let mut m2 = vec![0.0f64; d];
        for row in tokens.chunks_exact(d) {
            for ((s, &m), &x) in m2.iter_mut().zip(&mean).zip(row) {
                *s += (x as f64 - m).powi(2);
            }
        }
        merge_into(
            self.tokens() as f64,
            &mut self.mean,
            &mut self.m2,
            n as f64,
            &mean,
            &m2,
        );
        self.samples += 1;
        Ok(())
    }

    /// Adds every sample `other` aggregated (of the same `D` and `N`).
    pub fn merge(&mut self, other: &TokenStats) -> Result<(), PrivateError> {
        for (field, expected, found) in [
            ("width", self.width, other.width),
            ("tokens per sample", self.tokens, other.tokens),
        ] {
            if expected != found {
                return Err(PrivateError::Dims {
                    what: WHAT,
                    field,
                    expected,
                    found: found as u64,
                });
            }
        }
        let (na, nb) = (self.tokens() as f64, other.tokens() as f64);
        merge_into(na, &mut self.mean, &mut self.m2, nb, &other.mean, &other.m2);
        self.samples += other.samples;
        Ok(())
    }

    /// The per-channel mean and variance (over tokens, the population variance, floored at
    /// [`VAR_FLOOR`] and capped at `f32::MAX`), once at least [`MIN_SAMPLES`] samples contributed; else `None`.
    pub fn published(&self) -> Option<(Vec<f32>, Vec<f32>)> {
        if self.samples < MIN_SAMPLES {
            return None;
        }
        let count = self.tokens() as f64;
        let mean = self.mean.iter().map(|&m| m as f32).collect();
        let var = self
            .m2
            .iter()
            .map(|&s| ((s / count).min(f32::MAX as f64) as f32).max(VAR_FLOOR))
            .collect();
        Some((mean, var))
    }

    /// Bytes of the encoding of statistics of width `width`.
    pub fn encoded_len(width: usize) -> usize {
        HEADER_LEN + 16 * width + 4
    }

    /// The version 1 encoding (module docs).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::encoded_len(self.width));
        write_header(&mut out, MAGIC, &[self.width, self.tokens]);
        out.extend_from_slice(&self.samples.to_le_bytes());
        for v in self.mean.iter().chain(&self.m2) {
            out.extend_from_slice(&v.to_le_bytes());
        }
        seal(&mut out);
        out
    }

    /// Reads a version 1 encoding of statistics of width `width` and `tokens` tokens per
    /// sample: length, magic, version, dims and checksum are checked; every value must be
    /// finite, every sum of squared deviations non-negative, and statistics of no sample
    /// all zero.
    pub fn from_bytes(bytes: &[u8], width: usize, tokens: usize) -> Result<Self, PrivateError> {
        check_dims(width, tokens)?;
        let expected = Self::encoded_len(width);
        let header = Header {
            what: WHAT,
            magic: MAGIC,
            len: HEADER_LEN,
            short: expected,
            fields: &[("width", 6, width), ("tokens per sample", 10, tokens)],
        };
        let body = checked_body(bytes, &header, |_| expected)?;
        let samples = u64::from_le_bytes(body[14..22].try_into().expect("8 bytes"));
        let mut floats = body[HEADER_LEN..]
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")));
        let mean: Vec<f64> = floats.by_ref().take(width).collect();
        let m2: Vec<f64> = floats.collect();
        let invalid = |why| PrivateError::Invalid { what: WHAT, why };
        if mean.iter().chain(&m2).any(|v| !v.is_finite()) {
            return Err(PrivateError::NonFinite { what: WHAT });
        }
        if mean.iter().any(|m| m.abs() > f32::MAX as f64) {
            return Err(invalid("a mean beyond the range of f32 tokens"));
        }
        if m2.iter().any(|&s| s < 0.0) {
            return Err(invalid("a negative sum of squared deviations"));
        }
        if samples.checked_mul(tokens as u64).is_none() {
            return Err(invalid("more tokens than a u64 counts"));
        }
        if samples == 0 && mean.iter().chain(&m2).any(|&v| v != 0.0) {
            return Err(invalid("values without a sample"));
        }
        Ok(TokenStats {
            width,
            tokens,
            samples,
            mean,
            m2,
        })
    }
}

/// The aggregate statistics of every label, by label id.
#[derive(Clone, Debug, PartialEq)]
pub struct StatsTable {
    width: usize,
    tokens: usize,
    labels: BTreeMap<u16, TokenStats>,
}

impl StatsTable {
    /// No label yet, for token sets of `tokens` tokens of width `width`.
    pub fn new(width: usize, tokens: usize) -> Result<Self, PrivateError> {
        check_dims(width, tokens)?;
        Ok(StatsTable {
            width,
            tokens,
            labels: BTreeMap::new(),
        })
    }

    /// Token width `D`.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Tokens per sample `N`.
    pub fn tokens_per_sample(&self) -> usize {
        self.tokens
    }

    /// Adds one sample's tokens (`[N, D]`) to `label`'s statistics (created at its first
    /// sample); refused as [`TokenStats::observe`] refuses, changing nothing.
    pub fn observe(&mut self, label: u16, tokens: &[f32]) -> Result<(), PrivateError> {
        match self.labels.get_mut(&label) {
            Some(s) => s.observe(tokens),
            None => {
                let mut s = TokenStats::new(self.width, self.tokens)?;
                s.observe(tokens)?;
                self.labels.insert(label, s);
                Ok(())
            }
        }
    }

    /// `label`'s statistics, if it has any.
    pub fn get(&self, label: u16) -> Option<&TokenStats> {
        self.labels.get(&label)
    }

    /// `label`'s published mean and variance ([`TokenStats::published`]).
    pub fn published(&self, label: u16) -> Option<(Vec<f32>, Vec<f32>)> {
        self.labels.get(&label).and_then(TokenStats::published)
    }

    /// The labels whose statistics are published, in increasing order.
    pub fn published_labels(&self) -> Vec<u16> {
        let published = self.labels.iter().filter(|(_, s)| s.samples >= MIN_SAMPLES);
        published.map(|(&l, _)| l).collect()
    }

    /// Sets `label`'s statistics (of the table's dims: the caller's contract).
    pub(crate) fn replace(&mut self, label: u16, stats: TokenStats) {
        debug_assert_eq!((stats.width, stats.tokens), (self.width, self.tokens));
        self.labels.insert(label, stats);
    }

    /// Forgets `label`'s statistics, returning them.
    pub fn remove(&mut self, label: u16) -> Option<TokenStats> {
        self.labels.remove(&label)
    }

    /// The labels and their statistics, in increasing label order.
    pub fn iter(&self) -> impl Iterator<Item = (u16, &TokenStats)> {
        self.labels.iter().map(|(&l, s)| (l, s))
    }

    /// Labels with statistics.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether no label has statistics.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Bytes of the encoding of a table of `labels` labels of width `width`.
    pub fn encoded_len(width: usize, labels: usize) -> usize {
        TABLE_HEADER_LEN + labels * (2 + TokenStats::encoded_len(width)) + 4
    }

    /// The version 1 encoding (module docs).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::encoded_len(self.width, self.labels.len()));
        let count = self.labels.len();
        write_header(&mut out, TABLE_MAGIC, &[self.width, self.tokens, count]);
        for (label, s) in &self.labels {
            out.extend_from_slice(&label.to_le_bytes());
            out.extend_from_slice(&s.to_bytes());
        }
        seal(&mut out);
        out
    }

    /// Reads a version 1 encoding of a table of width `width` and `tokens` tokens per
    /// sample: the table's header, length and checksum, then each entry as
    /// [`TokenStats::from_bytes`] does; labels must be strictly increasing.
    pub fn from_bytes(bytes: &[u8], width: usize, tokens: usize) -> Result<Self, PrivateError> {
        check_dims(width, tokens)?;
        let entry = 2 + TokenStats::encoded_len(width);
        let expected = |b: &[u8]| {
            let count = u32::from_le_bytes(b[14..18].try_into().expect("4 bytes")) as usize;
            count
                .checked_mul(entry)
                .and_then(|e| e.checked_add(TABLE_HEADER_LEN + 4))
                .unwrap_or(usize::MAX)
        };
        let header = Header {
            what: TABLE_WHAT,
            magic: TABLE_MAGIC,
            len: TABLE_HEADER_LEN,
            short: TABLE_HEADER_LEN + 4,
            fields: &[("width", 6, width), ("tokens per sample", 10, tokens)],
        };
        let body = checked_body(bytes, &header, expected)?;
        let mut labels = BTreeMap::new();
        let mut last = None;
        for e in body[TABLE_HEADER_LEN..].chunks_exact(entry) {
            let label = u16::from_le_bytes(e[..2].try_into().expect("2 bytes"));
            if last.is_some_and(|l| l >= label) {
                return Err(PrivateError::Invalid {
                    what: TABLE_WHAT,
                    why: "labels not in strictly increasing order",
                });
            }
            last = Some(label);
            labels.insert(label, TokenStats::from_bytes(&e[2..], width, tokens)?);
        }
        Ok(StatsTable {
            width,
            tokens,
            labels,
        })
    }
}

/// Refuses zero dims and dims a u32 cannot store.
fn check_dims(width: usize, tokens: usize) -> Result<(), PrivateError> {
    for (what, v) in [("token width", width), ("tokens per sample", tokens)] {
        if v == 0 || v > u32::MAX as usize {
            return Err(PrivateError::Setting {
                what,
                value: v as f64,
                why: "between 1 and 2³² − 1",
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use anytime_testkit::{assert_close, close};
    use rand::{rngs::StdRng, Rng, SeedableRng};

    const D: usize = 3;
    const N: usize = 4;

    /// `count` samples `[N, D]`: channel `c` around `offset·(c+1)`, spread 1 + c.
    fn samples(count: usize, offset: f32, seed: u64) -> Vec<Vec<f32>> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..count)
            .map(|_| {
                (0..N * D)
                    .map(|i| {
                        let c = (i % D) as f32;
                        offset * (c + 1.0) + (1.0 + c) * rng.gen_range(-1.0f32..1.0)
                    })
                    .collect()
            })
            .collect()
    }

    /// Per-channel mean and population variance of every token of `samples`, two passes
    /// in f64.
    fn reference(samples: &[Vec<f32>]) -> (Vec<f64>, Vec<f64>) {
        let rows: Vec<&[f32]> = samples.iter().flat_map(|s| s.chunks_exact(D)).collect();
        let m = rows.len() as f64;
        let mean: Vec<f64> = (0..D)
            .map(|c| rows.iter().map(|r| r[c] as f64).sum::<f64>() / m)
            .collect();
        let var = (0..D)
            .map(|c| {
                rows.iter()
                    .map(|r| (r[c] as f64 - mean[c]).powi(2))
                    .sum::<f64>()
                    / m
            })
            .collect();
        (mean, var)
    }

    fn stats_of(samples: &[Vec<f32>]) -> TokenStats {
        let mut s = TokenStats::new(D, N).unwrap();
        samples.iter().for_each(|x| s.observe(x).unwrap());
        s
    }

    #[test]
    fn stats_match_a_two_pass_reference_and_publish_from_eight_samples() {
        // A large offset: a naive sum of squares would lose the spread.
        let xs = samples(40, 1e4, 1);
        let mut s = TokenStats::new(D, N).unwrap();
        for (i, x) in xs.iter().enumerate() {
            assert_eq!(
                s.published().is_some(),
                i as u64 >= MIN_SAMPLES,
                "{i} samples"
            );
            s.observe(x).unwrap();
        }
        assert_eq!((s.samples(), s.tokens()), (40, 40 * N as u64));
        let (mean, var) = reference(&xs);
        let (pm, pv) = s.published().unwrap();
        assert_close("mean", &s.mean, &mean, 0.0, 1e-12);
        assert_close("variance", &pv, &var, 0.0, 1e-6);
        assert_close("published mean", &pm, &mean, 0.0, 1e-7);
        // A constant channel is published at the floor.
        let mut flat = TokenStats::new(D, N).unwrap();
        for _ in 0..MIN_SAMPLES {
            flat.observe(&[2.5; N * D]).unwrap();
        }
        let (m, v) = flat.published().unwrap();
        assert_eq!((m, v), (vec![2.5; D], vec![VAR_FLOOR; D]));
    }

    #[test]
    fn stats_merge_in_any_split_equals_one_pass() {
        let xs = samples(13, 3.0, 2);
        let whole = stats_of(&xs);
        for cut in [0, 1, 6, 13] {
            let mut a = stats_of(&xs[..cut]);
            a.merge(&stats_of(&xs[cut..])).unwrap();
            assert_eq!(a.samples(), 13);
            assert_close("mean", &a.mean, &whole.mean, 0.0, 1e-12);
            assert_close("m2", &a.m2, &whole.m2, 0.0, 1e-12);
        }
        let other = TokenStats::new(D + 1, N).unwrap();
        assert!(matches!(
            whole.clone().merge(&other),
            Err(PrivateError::Dims { field: "width", .. })
        ));
    }

    #[test]
    fn stats_refuse_wrong_lengths_and_non_finite_tokens_unchanged() {
        let mut s = stats_of(&samples(3, 1.0, 3));
        let before = s.clone();
        for len in [0, N * D - 1, N * D + 1, 2 * N * D] {
            let e = s.observe(&vec![0.0; len]).unwrap_err();
            let want = PrivateError::Shape {
                what: "sample tokens (N·D)",
                expected: N * D,
                found: len,
            };
            assert_eq!(e, want);
        }
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut x = vec![1.0; N * D];
            x[5] = bad;
            assert!(matches!(s.observe(&x), Err(PrivateError::NonFinite { .. })));
        }
        assert_eq!(s, before);
        assert!(TokenStats::new(0, N).is_err() && TokenStats::new(D, 0).is_err());
    }

    /// Re-seals `bytes` with the CRC of its body (to reach the checks after it).
    fn reseal(bytes: &mut [u8]) {
        let n = bytes.len() - 4;
        let crc = anytime_core::crc32::crc32(&bytes[..n]);
        bytes[n..].copy_from_slice(&crc.to_le_bytes());
    }

    #[test]
    fn stats_bytes_round_trip_with_a_size_independent_of_the_samples() {
        let one = stats_of(&samples(1, 1.0, 4));
        let many = stats_of(&samples(100, 1.0, 5));
        for s in [&one, &many, &TokenStats::new(D, N).unwrap()] {
            let b = s.to_bytes();
            assert_eq!(b.len(), TokenStats::encoded_len(D));
            assert_eq!(b.len(), 16 * D + 26);
            assert_eq!(&TokenStats::from_bytes(&b, D, N).unwrap(), s);
        }
    }

    #[test]
    fn stats_bytes_are_refused_when_damaged_truncated_foreign_or_invalid() {
        use PrivateError as E;
        let s = stats_of(&samples(9, 1.0, 6));
        let good = s.to_bytes();
        let read = |b: &[u8]| TokenStats::from_bytes(b, D, N);
        for cut in [0, 3, HEADER_LEN, good.len() - 1] {
            let want = E::Length {
                what: WHAT,
                expected: good.len(),
                found: cut,
            };
            assert_eq!(read(&good[..cut]).unwrap_err(), want, "cut at {cut}");
        }
        let mut long = good.clone();
        long.push(0);
        assert!(matches!(read(&long), Err(E::Length { .. })));
        let mut v2 = good.clone();
        v2[4] = 2;
        assert!(matches!(read(&v2), Err(E::Version { found: 2, .. })));
        let mut magic = good.clone();
        magic[0] = b'X';
        assert!(matches!(read(&magic), Err(E::Magic { .. })));
        let wide = TokenStats::from_bytes(&good, D + 1, N).unwrap_err();
        assert!(matches!(
            wide,
            E::Dims {
                field: "width",
                expected: 4,
                found: 3,
                ..
            }
        ));
        let longer = TokenStats::from_bytes(&good, D, N + 1).unwrap_err();
        assert!(matches!(
            longer,
            E::Dims {
                field: "tokens per sample",
                ..
            }
        ));
        for i in 0..good.len() {
            for bit in 0..8 {
                let mut b = good.clone();
                b[i] ^= 1 << bit;
                assert!(read(&b).is_err(), "bit {bit} of byte {i} read silently");
            }
        }
        // Under a valid checksum: NaN, an infinity, a negative spread, values of no sample.
        let at_mean = HEADER_LEN;
        let at_m2 = HEADER_LEN + 8 * D;
        for (at, v) in [(at_mean, f64::NAN), (at_m2, f64::INFINITY)] {
            let mut b = good.clone();
            b[at..at + 8].copy_from_slice(&v.to_le_bytes());
            reseal(&mut b);
            assert_eq!(read(&b).unwrap_err(), E::NonFinite { what: WHAT });
        }
        let mut b = good.clone();
        b[at_m2..at_m2 + 8].copy_from_slice(&(-1.0f64).to_le_bytes());
        reseal(&mut b);
        assert!(matches!(read(&b), Err(E::Invalid { .. })));
        let mut b = good.clone();
        b[14..22].copy_from_slice(&0u64.to_le_bytes());
        reseal(&mut b);
        assert!(matches!(read(&b), Err(E::Invalid { .. })));
    }

    #[test]
    fn stats_table_publishes_per_label_and_round_trips() {
        let mut t = StatsTable::new(D, N).unwrap();
        for (i, x) in samples(20, 2.0, 7).iter().enumerate() {
            t.observe(if i < 12 { 7 } else { 3 }, x).unwrap();
        }
        t.observe(500, &samples(1, 0.0, 8)[0]).unwrap();
        assert_eq!(t.published_labels(), vec![3, 7]);
        assert!(t.published(500).is_none() && t.published(9).is_none());
        assert_eq!(t.get(7).unwrap().samples(), 12);
        assert!(t.observe(3, &[0.0; 2]).is_err());
        assert_eq!(t.get(3).unwrap().samples(), 8);
        let b = t.to_bytes();
        assert_eq!(b.len(), StatsTable::encoded_len(D, 3));
        assert_eq!(StatsTable::from_bytes(&b, D, N).unwrap(), t);
        let empty = StatsTable::new(D, N).unwrap();
        assert_eq!(
            StatsTable::from_bytes(&empty.to_bytes(), D, N).unwrap(),
            empty
        );
        let read = |b: &[u8]| StatsTable::from_bytes(b, D, N);
        for cut in [0, TABLE_HEADER_LEN, b.len() - 1] {
            assert!(matches!(read(&b[..cut]), Err(PrivateError::Length { .. })));
        }
        // A count larger than the bytes, and labels out of order, under valid checksums.
        let mut big = b.clone();
        big[14..18].copy_from_slice(&u32::MAX.to_le_bytes());
        reseal(&mut big);
        assert!(matches!(read(&big), Err(PrivateError::Length { .. })));
        let entry = 2 + TokenStats::encoded_len(D);
        let mut swapped = b.clone();
        let first = TABLE_HEADER_LEN;
        swapped.copy_within(first + entry..first + entry + 2, first);
        reseal(&mut swapped);
        assert!(matches!(read(&swapped), Err(PrivateError::Invalid { .. })));
        assert!(close(t.published(3).unwrap().0[0], 2.0, 2.0, 0.0));
    }
}
