//! Class-balanced sampling of stored records (SPEC §4).
//!
//! Rule, for `m` records over the labels present in storage (after the exclusion):
//! - more than `m` labels: `m` distinct labels, chosen uniformly, one record each;
//! - otherwise `⌊m / labels⌋` records per label (all of a label's records when it has fewer),
//!   the rest filled uniformly at random from the records not yet chosen;
//! - fewer than `m` records in all: every record.
//!
//! Within a label records are chosen uniformly without replacement; the result is shuffled.
//! The same index, `m`, seed and exclusion give the same sample.

use crate::error::Error;
use crate::ring::RecordRef;
use crate::rng::SplitMix64;

/// Scratch length (in `u32`) that [`sample_balanced`] needs for `n_labels` label ids.
pub const fn scratch_len(n_labels: usize) -> usize {
    2 * n_labels
}

/// Chooses up to `m` records of `records` (label ids `< n_labels`), skipping the one with
/// sequence `exclude`; writes their indices into `out` and returns how many.
pub fn sample_balanced(
    records: &[RecordRef],
    n_labels: usize,
    m: usize,
    seed: u64,
    exclude: Option<u32>,
    scratch: &mut [u32],
    out: &mut [u32],
) -> Result<usize, Error> {
    if scratch.len() < scratch_len(n_labels) {
        return Err(Error::BufferTooSmall {
            needed: scratch_len(n_labels) as u32,
            got: scratch.len() as u32,
        });
    }
    if out.len() < m {
        return Err(Error::BufferTooSmall {
            needed: m as u32,
            got: out.len() as u32,
        });
    }
    let (need, left) = scratch[..2 * n_labels].split_at_mut(n_labels);
    need.fill(0);
    left.fill(0);
    let keep = |r: &RecordRef| Some(r.seq) != exclude && (r.label as usize) < n_labels;
    let mut total = 0usize;
    for r in records.iter().filter(|r| keep(r)) {
        left[r.label as usize] += 1;
        total += 1;
    }
    let mut rng = SplitMix64::new(seed);
    let mut k = 0usize;
    if total <= m {
        for (i, r) in records.iter().enumerate() {
            if keep(r) {
                out[k] = i as u32;
                k += 1;
            }
        }
        shuffle(&mut out[..k], &mut rng);
        return Ok(k);
    }
    let present = left.iter().filter(|&&c| c > 0).count();
    if present > m {
        // Selection sampling of m labels among the present ones.
        let (mut want, mut rest) = (m as u64, present as u64);
        for l in 0..n_labels {
            if left[l] > 0 {
                if rng.below(rest) < want {
                    need[l] = 1;
                    want -= 1;
                }
                rest -= 1;
            }
        }
    } else {
        let q = (m / present) as u32;
        for l in 0..n_labels {
            need[l] = q.min(left[l]);
        }
    }
    // One pass: selection sampling inside every label at once (index order).
    for (i, r) in records.iter().enumerate() {
        if !keep(r) {
            continue;
        }
        let l = r.label as usize;
        if need[l] > 0 && rng.below(left[l] as u64) < need[l] as u64 {
            out[k] = i as u32;
            k += 1;
            need[l] -= 1;
        }
        left[l] -= 1;
    }
    // Fill the rest uniformly from the records not chosen yet (`out[..k]` is sorted).
    let chosen = k;
    let mut want = (m - k) as u64;
    let mut rest = (total - chosen) as u64;
    let mut c = 0usize;
    for (i, r) in records.iter().enumerate() {
        if want == 0 {
            break;
        }
        if !keep(r) {
            continue;
        }
        if c < chosen && out[c] == i as u32 {
            c += 1;
            continue;
        }
        if rng.below(rest) < want {
            out[k] = i as u32;
            k += 1;
            want -= 1;
        }
        rest -= 1;
    }
    shuffle(&mut out[..k], &mut rng);
    Ok(k)
}

fn shuffle(v: &mut [u32], rng: &mut SplitMix64) {
    for i in (1..v.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        v.swap(i, j);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recs(labels: &[u16]) -> Vec<RecordRef> {
        labels
            .iter()
            .enumerate()
            .map(|(i, &label)| RecordRef {
                offset: 0,
                seq: i as u32 + 1,
                len: 0,
                label,
                flags: 0,
            })
            .collect()
    }

    fn per_label(r: &[RecordRef], idx: &[u32], n: usize) -> Vec<usize> {
        let mut c = vec![0; n];
        for &i in idx {
            c[r[i as usize].label as usize] += 1;
        }
        c
    }

    #[test]
    fn quota_then_fill() {
        // 3 labels: 100, 100, 5 records; m = 31 -> 10, 10, 5 then 6 more from the rest.
        let mut l = vec![0u16; 100];
        l.extend(vec![1u16; 100]);
        l.extend(vec![2u16; 5]);
        let r = recs(&l);
        let mut s = vec![0; scratch_len(3)];
        let mut out = vec![0; 31];
        let k = sample_balanced(&r, 3, 31, 5, None, &mut s, &mut out).unwrap();
        assert_eq!(k, 31);
        let c = per_label(&r, &out, 3);
        assert_eq!(c[2], 5);
        assert!(c[0] >= 10 && c[1] >= 10);
        let mut d = out.clone();
        d.sort();
        d.dedup();
        assert_eq!(d.len(), 31, "no record twice");
        let mut out2 = vec![0; 31];
        sample_balanced(&r, 3, 31, 5, None, &mut s, &mut out2).unwrap();
        assert_eq!(out, out2, "deterministic under a seed");
    }

    #[test]
    fn more_labels_than_m_gives_distinct_labels() {
        let l: Vec<u16> = (0..40u16).flat_map(|x| [x, x]).collect();
        let r = recs(&l);
        let mut s = vec![0; scratch_len(40)];
        let mut out = vec![0; 31];
        assert_eq!(
            sample_balanced(&r, 40, 31, 1, None, &mut s, &mut out),
            Ok(31)
        );
        assert!(per_label(&r, &out, 40).iter().all(|&c| c <= 1));
    }

    #[test]
    fn exclusion_and_small_stores() {
        let r = recs(&[0, 1, 1]);
        let mut s = vec![0; scratch_len(2)];
        let mut out = vec![0; 31];
        let k = sample_balanced(&r, 2, 31, 1, Some(2), &mut s, &mut out).unwrap();
        let mut got = out[..k].to_vec();
        got.sort();
        assert_eq!(got, vec![0, 2]);
    }
}
