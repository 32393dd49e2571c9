//! The state blob a learner keeps in its store: counters, the OCW state, the "none"
//! calibration and the learner's id, in a versioned little-endian layout.

use super::{Ocw, OCW_CAPACITY};
use crate::typicality::{self, TypicalityMap};

/// Version 4 keeps the original model's cosines and the arrival histogram in the typicality
/// table, version 3 added the learner's id, version 2 the table (1 to 3 are still read).
const STATE_VERSION: u8 = 4;
/// Bytes before the OCW state in a version 3 or 4 blob.
const STATE_HEADER_LEN: usize = 29;
/// Largest state blob: header, OCW length and state, arrival histogram, typicality table.
pub(super) const STATE_MAX_LEN: usize = STATE_HEADER_LEN
    + Ocw::MAX_ENCODED_LEN
    + typicality::ARRIVALS_LEN
    + 2
    + typicality::ENTRY_LEN * OCW_CAPACITY;

/// Persisted in the store's state blob.
#[derive(Debug, Clone, PartialEq)]
pub struct LearnerState {
    /// Samples learned.
    pub learned: u64,
    /// Optimiser step of the newest tuned checkpoint.
    pub checkpoint_step: u64,
    pub(super) ocw: Box<Ocw>,
    /// Per label, the original model's cosines of its new samples, and the pooled arrival
    /// scores (the "none" calibration).
    pub(super) typical: TypicalityMap,
    /// The id of the learner the blob belongs to (`None` in blobs of versions 1 and 2).
    pub(super) learner: Option<u64>,
}

impl LearnerState {
    pub(super) fn new() -> Self {
        Self {
            learned: 0,
            checkpoint_step: 0,
            ocw: Box::new(Ocw::new()),
            typical: TypicalityMap::default(),
            learner: None,
        }
    }

    /// Version 4: version byte, learned (u64), checkpoint step (u64), learner id (u64), the
    /// OCW state's length (u32) and bytes, then the arrival histogram and the typicality
    /// table (`TypicalityMap::encode_with_arrivals`); all little-endian. At most `max_len`
    /// bytes: typicality entries that do not fit are left out.
    pub(super) fn encode(&self, max_len: usize) -> Vec<u8> {
        let h = STATE_HEADER_LEN;
        let mut buf = vec![0u8; h + Ocw::MAX_ENCODED_LEN];
        buf[0] = STATE_VERSION;
        buf[1..9].copy_from_slice(&self.learned.to_le_bytes());
        buf[9..17].copy_from_slice(&self.checkpoint_step.to_le_bytes());
        buf[17..25].copy_from_slice(&self.learner.unwrap_or(0).to_le_bytes());
        // MAX_ENCODED_LEN always suffices (see OcwState::to_slice).
        let n = self.ocw.to_slice(&mut buf[h..]).unwrap_or(0);
        buf[25..29].copy_from_slice(&(n as u32).to_le_bytes());
        buf.truncate(h + n);
        let table = self
            .typical
            .encode_with_arrivals(max_len.saturating_sub(buf.len()));
        buf.extend_from_slice(&table);
        buf
    }

    /// Reads version 4, 3 (a table of the tuned model's cosines, no arrival histogram), 2 (as
    /// 3 without the learner id) or 1 (learned, checkpoint step, then the OCW state to the
    /// end; no table). The tables of versions 2 and 3 are checked and dropped: their
    /// cosines are not the ones scored now, and a label is calibrated again from its next
    /// new samples.
    pub(super) fn decode(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() < 17 {
            return Err(format!("state blob of {} bytes is too short", bytes.len()));
        }
        let u64_at = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&bytes[i..i + 8]);
            u64::from_le_bytes(a)
        };
        let mut learner = None;
        let (ocw_bytes, table) = match bytes[0] {
            1 => (&bytes[17..], None),
            v @ (2..=4) => {
                let at = if v >= 3 {
                    if bytes.len() < 25 {
                        return Err("state blob too short for its learner id".into());
                    }
                    learner = Some(u64_at(17)).filter(|&id| id != 0);
                    25
                } else {
                    17
                };
                let len = bytes
                    .get(at..at + 4)
                    .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
                    .ok_or("state blob too short for its OCW length")?;
                let end = (at + 4)
                    .checked_add(len)
                    .filter(|&e| e <= bytes.len())
                    .ok_or_else(|| format!("OCW state of {len} bytes overruns the blob"))?;
                (&bytes[at + 4..end], Some((v, &bytes[end..])))
            }
            v => {
                return Err(format!(
                    "state version {v} (this build reads 1 to {STATE_VERSION})"
                ))
            }
        };
        let ocw = Ocw::from_bytes(ocw_bytes).map_err(|e| format!("OCW state: {e}"))?;
        let typical = match table {
            Some((4, t)) => TypicalityMap::decode_with_arrivals(t)?,
            Some((_, t)) => {
                TypicalityMap::decode(t)?;
                TypicalityMap::default()
            }
            None => TypicalityMap::default(),
        };
        Ok(Self {
            learned: u64_at(1),
            checkpoint_step: u64_at(9),
            ocw: Box::new(ocw),
            typical,
            learner,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// The blob an earlier build wrote: version 3 (with the learner id) or 2, the OCW state
    /// of `v4` and a typicality table alone (no arrival histogram).
    fn older(version: u8, v4: &[u8], table: &[u8]) -> Vec<u8> {
        let ocw_len = u32::from_le_bytes(v4[25..29].try_into().unwrap()) as usize;
        let mut out = vec![version];
        out.extend_from_slice(&v4[1..17]);
        if version == 3 {
            out.extend_from_slice(&v4[17..25]);
        }
        out.extend_from_slice(&v4[25..29 + ocw_len]);
        out.extend_from_slice(table);
        out
    }

    #[test]
    fn state_blob_round_trips_and_rejects_garbage() {
        let mut s = LearnerState::new();
        s.learned = 42;
        s.checkpoint_step = 40;
        s.ocw.observe(3, true, false).unwrap();
        s.typical.observe(3, 0.25);
        s.typical.1.observe(1.5);
        let bytes = s.encode(usize::MAX);
        assert_eq!(LearnerState::decode(&bytes).unwrap(), s);
        assert!(LearnerState::decode(&bytes[..5]).is_err());
        assert!(LearnerState::decode(&bytes[..bytes.len() - 1]).is_err());
        let mut bad = bytes.clone();
        bad[0] = 9;
        assert!(LearnerState::decode(&bad).unwrap_err().contains("version"));
        // a negative histogram weight is refused
        let ocw_len = u32::from_le_bytes(bytes[25..29].try_into().unwrap()) as usize;
        let mut neg = bytes.clone();
        let w0 = 29 + ocw_len + 2;
        neg[w0..w0 + 4].copy_from_slice(&(-1f32).to_le_bytes());
        assert!(LearnerState::decode(&neg).unwrap_err().contains("weight"));
        // a blob with no room for the table keeps everything else
        let small = s.encode(bytes.len() - 1);
        let back = LearnerState::decode(&small).unwrap();
        assert_eq!((back.learned, back.checkpoint_step), (42, 40));
        assert!(back.typical.0.is_empty());
        assert_eq!(back.typical.1, s.typical.1, "the histogram is kept");
        // the learner id round-trips; 0 reads as none
        s.learner = Some(0xabc);
        assert_eq!(LearnerState::decode(&s.encode(usize::MAX)).unwrap(), s);
        s.learner = None;
        // versions 3 and 2: the OCW state is read, the tuned model's table dropped
        let table = s.typical.encode(usize::MAX);
        for v in [3, 2] {
            let old = LearnerState::decode(&older(v, &bytes, &table)).unwrap();
            assert_eq!((old.learned, old.ocw.clone()), (42, s.ocw.clone()), "v{v}");
            assert_eq!(old.typical, TypicalityMap::default(), "v{v}");
            // a corrupt old table is still refused
            let mut torn = older(v, &bytes, &table);
            torn.pop();
            assert!(LearnerState::decode(&torn).is_err(), "v{v}");
        }
        // version 1 (no OCW length, no table) is still read
        let mut v1 = vec![1u8];
        v1.extend_from_slice(&bytes[1..17]);
        v1.extend_from_slice(&bytes[29..29 + ocw_len]);
        let old = LearnerState::decode(&v1).unwrap();
        assert_eq!(old.ocw, s.ocw);
        assert!(old.typical.0.is_empty());
        // every cut of a blob is refused, none read past its end
        for (v, blob) in [(1, &v1), (4, &bytes)] {
            for n in 0..blob.len().min(40) {
                assert!(LearnerState::decode(&blob[..n]).is_err(), "v{v}, {n} bytes");
            }
        }
    }

    /// The largest blob fits `STATE_MAX_LEN` (what the store's record bound is sized by), and
    /// the bound is the blob of a full state but for the slack of its varints, exactly (a
    /// count of 1 takes 1 of its 5 bytes; the entry count 4096, 2 of 5).
    #[test]
    fn a_full_state_fits_its_bound_tightly() {
        let mut s = LearnerState::new();
        (s.learned, s.checkpoint_step, s.learner) = (u64::MAX, u64::MAX, Some(u64::MAX));
        for i in 0..OCW_CAPACITY as u16 {
            // Ids of three varint bytes, as large as they come.
            let id = u16::MAX - i;
            s.ocw.observe(id, true, false).unwrap();
            s.typical.observe(id, 0.5);
        }
        s.typical.1.observe(1.0);
        let len = s.encode(usize::MAX).len();
        assert!(len <= STATE_MAX_LEN, "{len} > {STATE_MAX_LEN}");
        let slack = 4 * OCW_CAPACITY + 3;
        assert_eq!(STATE_MAX_LEN - len, slack, "{STATE_MAX_LEN} - {len}");
        assert_eq!(LearnerState::decode(&s.encode(usize::MAX)).unwrap(), s);
    }

    /// Golden blobs of versions 1 to 4 (`tests/data/learner_state_v{1,2,3,4}.bin`, written
    /// by this test under `ANYTIME_EDGE_WRITE_GOLDEN=1` only where absent) decode to the
    /// state they were written from, and version 4 is what this build writes: a format
    /// change that breaks reading a learner saved by an earlier build fails here.
    #[test]
    fn learner_state_golden_files_of_versions_1_to_4_read() {
        let mut s = LearnerState::new();
        (s.learned, s.checkpoint_step) = (1234, 1200);
        for (label, t, o) in [(3, true, false), (3, false, false), (7, true, true)] {
            s.ocw.observe(label, t, o).unwrap();
        }
        for (label, cos) in [(3, 0.25), (3, 0.5), (7, -0.125)] {
            s.typical.observe(label, cos);
        }
        for raw in [-0.5, 0.25, 2.0, 9.0] {
            s.typical.1.observe(raw);
        }
        let mut with_id = s.clone();
        with_id.learner = Some(0x0123_4567_89ab_cdef);
        let v4 = with_id.encode(usize::MAX);
        // Versions 3, 2 and 1 as earlier builds wrote them.
        let table = s.typical.encode(usize::MAX);
        let (v3, v2) = (older(3, &v4, &table), older(2, &v4, &table));
        let ocw_len = u32::from_le_bytes(v4[25..29].try_into().unwrap()) as usize;
        let mut v1 = vec![1u8];
        v1.extend_from_slice(&v4[1..17]);
        v1.extend_from_slice(&v4[29..29 + ocw_len]);
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
        let golden = |name: &str, fresh: &[u8]| {
            let path = dir.join(name);
            if std::env::var("ANYTIME_EDGE_WRITE_GOLDEN").is_ok_and(|v| v == "1") && !path.exists()
            {
                std::fs::write(&path, fresh).unwrap();
            }
            std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        };
        let (g1, g2, g3, g4) = (
            golden("learner_state_v1.bin", &v1),
            golden("learner_state_v2.bin", &v2),
            golden("learner_state_v3.bin", &v3),
            golden("learner_state_v4.bin", &v4),
        );
        assert_eq!((g1[0], g2[0], g3[0], g4[0]), (1, 2, 3, 4), "version bytes");
        assert_eq!(STATE_VERSION, 4, "a new version needs a new golden file");
        assert_eq!(LearnerState::decode(&g4).unwrap(), with_id);
        assert_eq!(g4, v4, "this build writes other bytes than version 4's");
        assert_eq!(g3, v3, "version 3's layout, as this build derives it");
        assert_eq!(g2, v2, "version 2's layout, as this build derives it");
        for (g, id) in [(&g3, with_id.learner), (&g2, None)] {
            let old = LearnerState::decode(g).unwrap();
            assert_eq!((old.learned, old.checkpoint_step), (1234, 1200));
            assert_eq!((old.ocw, old.learner), (s.ocw.clone(), id));
            assert_eq!(
                old.typical,
                TypicalityMap::default(),
                "tuned cosines dropped"
            );
        }
        let old = LearnerState::decode(&g1).unwrap();
        assert_eq!((old.learned, old.checkpoint_step), (1234, 1200));
        assert_eq!(old.ocw, s.ocw);
        assert!(old.typical.0.is_empty());
        let t3 = s.typical.get(3).unwrap();
        assert_eq!(t3.n, 2);
    }
}
