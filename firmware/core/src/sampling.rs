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

    /// Runs `sample_balanced` for `seeds` seeds, checks the rule's invariants on every sample
    /// (size, no record twice, no excluded or out-of-range record, each present label's
    /// quota), and returns how often each record was chosen and how often record `i` landed
    /// at position `p` (`at[p * len + i]`).
    fn tally(
        r: &[RecordRef],
        n_labels: usize,
        m: usize,
        seeds: u64,
        exclude: Option<u32>,
    ) -> (Vec<u32>, Vec<u32>) {
        let kept: Vec<usize> = (0..r.len())
            .filter(|&i| Some(r[i].seq) != exclude && (r[i].label as usize) < n_labels)
            .collect();
        let mut count = vec![0u32; n_labels];
        for &i in &kept {
            count[r[i].label as usize] += 1;
        }
        let present = count.iter().filter(|&&c| c > 0).count();
        let mut hits = vec![0u32; r.len()];
        let mut at = vec![0u32; r.len() * r.len()];
        let mut s = vec![0; scratch_len(n_labels)];
        let mut out = vec![u32::MAX; m];
        for seed in 0..seeds {
            let k = sample_balanced(r, n_labels, m, seed, exclude, &mut s, &mut out).unwrap();
            assert_eq!(k, m.min(kept.len()), "seed {seed}");
            let mut sorted = out[..k].to_vec();
            sorted.sort();
            sorted.dedup();
            assert_eq!(sorted.len(), k, "a record twice (seed {seed})");
            assert!(sorted.iter().all(|&i| kept.contains(&(i as usize))));
            let got = per_label(r, &out[..k], n_labels);
            for l in 0..n_labels {
                if kept.len() <= m {
                    assert_eq!(got[l], count[l] as usize);
                } else if present > m {
                    assert!(got[l] <= 1, "label {l} twice (seed {seed})");
                } else {
                    let q = (m / present).min(count[l] as usize);
                    assert!(got[l] >= q, "label {l}: {} < quota {q}", got[l]);
                }
            }
            for (p, &i) in out[..k].iter().enumerate() {
                hits[i as usize] += 1;
                at[p * r.len() + i as usize] += 1;
            }
        }
        (hits, at)
    }

    /// Asserts that every count in `c` lies within `tol` (relative) of `want`.
    fn near(c: &[u32], want: f64, tol: f64, what: &str) {
        for (i, &x) in c.iter().enumerate() {
            let rel = (x as f64 - want).abs() / want;
            assert!(rel <= tol, "{what} {i}: {x} against {want:.0}");
        }
    }

    #[test]
    fn within_a_label_and_in_the_fill_every_record_is_equally_likely() {
        // Labels 0 and 1: 10 records each, label 2: 2; m = 9 -> quota 3, 3, 2, then 1 of the
        // 17 left. A record of label 0 or 1 is chosen with p = 3/10 + 7/10 * 1/17.
        let mut l = vec![0u16; 10];
        l.extend([1u16; 10]);
        l.extend([2u16; 2]);
        let r = recs(&l);
        let seeds = 6000;
        let (hits, _) = tally(&r, 3, 9, seeds, None);
        let p = 3.0 / 10.0 + 7.0 / 10.0 / 17.0;
        near(&hits[..20], p * seeds as f64, 0.08, "record");
        assert!(hits[20..].iter().all(|&h| h == seeds as u32));
        // The fill alone: quota 1 a label, then 2 of the 18 left (p = 1/10 + 9/10 * 2/18).
        let mut l = vec![0u16; 10];
        l.extend([1u16; 10]);
        let r = recs(&l);
        let (hits, _) = tally(&r, 2, 4, seeds, None);
        near(&hits, 0.2 * seeds as f64, 0.1, "record");
    }

    #[test]
    fn labels_are_chosen_uniformly_when_there_are_more_than_m() {
        // 24 labels present of ids 0..48 (odd ids absent), 2 records each; m = 6.
        let l: Vec<u16> = (0..48u16).step_by(2).flat_map(|x| [x, x]).collect();
        let r = recs(&l);
        let seeds = 4000;
        let (hits, _) = tally(&r, 48, 6, seeds, None);
        let per_label: Vec<u32> = hits.chunks(2).map(|c| c[0] + c[1]).collect();
        near(&per_label, 6.0 / 24.0 * seeds as f64, 0.1, "label");
        near(&hits, 6.0 / 48.0 * seeds as f64, 0.15, "record");
    }

    #[test]
    fn absent_label_ids_do_not_count_as_present() {
        // Ids 0..64 with only 16 present: m = 20 > 16 present, so every present label gets
        // its quota of one and 4 more come from the fill.
        let l: Vec<u16> = (0..64u16).step_by(4).flat_map(|x| [x, x, x]).collect();
        let r = recs(&l);
        tally(&r, 64, 20, 300, None);
    }

    #[test]
    fn the_order_is_a_uniform_permutation() {
        // Fewer records than m: all are returned, shuffled; each record at each position
        // with p = 1/4 (a missing shuffle, or one that never leaves a record in place, fails).
        let r = recs(&[0, 1, 1, 0]);
        let seeds = 4000;
        let (hits, at) = tally(&r, 2, 31, seeds, None);
        assert!(hits.iter().all(|&h| h == seeds as u32));
        near(&at[..16], seeds as f64 / 4.0, 0.1, "position x record");
        // A sample drawn with quotas is shuffled too: its first record is any record.
        let l: Vec<u16> = (0..4u16).flat_map(|x| [x; 4]).collect();
        let r = recs(&l);
        let (_, at) = tally(&r, 4, 8, seeds, None);
        near(
            &at[..16],
            8.0 / 16.0 / 8.0 * seeds as f64,
            0.25,
            "first-position record",
        );
    }

    #[test]
    fn out_of_range_labels_are_skipped() {
        let r = recs(&[0, 1, 2, 2, 1, 0, 2]);
        let (hits, _) = tally(&r, 2, 31, 20, None);
        assert_eq!(hits, [20, 20, 0, 0, 20, 20, 0]);
        let (hits, _) = tally(&r, 2, 2, 200, Some(1));
        assert_eq!(hits[0], 0);
        assert_eq!(hits[2] + hits[3] + hits[6], 0);
    }

    #[test]
    fn whatever_out_held_before_does_not_matter() {
        // `out` beyond the chosen prefix holds stale indices from earlier calls; none may be
        // taken for a chosen record.
        let r = recs(&[0, 0, 1, 1]);
        let mut s = vec![0; scratch_len(2)];
        for stale in 0..4u32 {
            for seed in 0..64 {
                let mut out = vec![stale; 3];
                assert_eq!(
                    sample_balanced(&r, 2, 3, seed, None, &mut s, &mut out),
                    Ok(3)
                );
                let mut got = out.clone();
                got.sort();
                got.dedup();
                assert_eq!(got.len(), 3, "stale {stale}, seed {seed}: {out:?}");
            }
        }
    }

    #[test]
    fn buffer_sizes_are_checked_exactly() {
        let r = recs(&[0, 1, 1]);
        let mut out = vec![0; 3];
        let mut s = vec![0; scratch_len(2) - 1];
        assert_eq!(
            sample_balanced(&r, 2, 3, 1, None, &mut s, &mut out),
            Err(Error::BufferTooSmall { needed: 4, got: 3 })
        );
        let mut s = vec![0; scratch_len(2)];
        assert_eq!(sample_balanced(&r, 2, 3, 1, None, &mut s, &mut out), Ok(3));
        assert_eq!(
            sample_balanced(&r, 2, 4, 1, None, &mut s, &mut out),
            Err(Error::BufferTooSmall { needed: 4, got: 3 })
        );
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
