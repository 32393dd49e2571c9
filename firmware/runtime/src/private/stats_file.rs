//! `stats.bin`: the per-label token statistics of a private learner, persisted so that one
//! `learn` writes one label's bytes (positioned writes and an fsync), and a power cut at
//! any byte of that write leaves the label's previous statistics and every other label's
//! intact.
//!
//! Format, version 1, little-endian (`firmware/core/FORMAT.md` §4):
//!
//! | bytes | field |
//! |---|---|
//! | 0..4 | magic `AESF` |
//! | 4..6 | version (u16, 1) |
//! | 6..10 | token width `D` (u32) |
//! | 10..14 | tokens per sample `N` (u32) |
//! | 14..18 | slot size `S = 16·D + 40` (u32) |
//! | 18..28 | zero |
//! | 28..32 | CRC-32 (ISO-HDLC) of bytes 0..28 |
//! | 32 + (2·id + s)·S .. | slot `s` ∈ {0, 1} of label `id` |
//!
//! A slot: sequence number (u64, ≥ 1, per label), label id (u16), the label's
//! [`TokenStats`] encoding (`16·D + 26` bytes), CRC-32 of every byte of the slot before it.
//! A label's statistics are those of its valid slot with the higher sequence number; a
//! slot that is all zero, torn (bytes missing past the end of the file) or fails its CRC,
//! label id or [`TokenStats::from_bytes`] is ignored. A write goes to the label's other
//! slot (the one that does not hold its newest statistics) with the next sequence number,
//! so the newest valid slot is never overwritten. A label's first write extends the file
//! over both its slots (zero until written): the file is as long as its highest label's
//! slots reach, its size depends on the label ids, never on the samples.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::codec::{seal, write_header};
use super::{PrivateError, StatsTable, TokenStats, MIN_SAMPLES};

const MAGIC: [u8; 4] = *b"AESF";
/// Bytes of the header.
pub const STATS_HEADER_LEN: usize = 32;
const WHAT: &str = "statistics file";

/// Errors of [`StatsFile`].
#[derive(Debug, thiserror::Error)]
pub enum StatsFileError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Format {
        path: PathBuf,
        #[source]
        source: PrivateError,
    },
}

/// Bytes of one slot for token width `width`.
pub fn slot_len(width: usize) -> usize {
    8 + 2 + TokenStats::encoded_len(width) + 4
}

/// The header of a file of `width` and `tokens`.
fn header(width: usize, tokens: usize) -> Vec<u8> {
    let mut h = Vec::with_capacity(STATS_HEADER_LEN);
    write_header(&mut h, MAGIC, &[width, tokens, slot_len(width)]);
    h.resize(STATS_HEADER_LEN - 4, 0);
    seal(&mut h);
    h
}

/// Offset of slot `s` of label `label`.
fn slot_offset(width: usize, label: u16, s: usize) -> u64 {
    (STATS_HEADER_LEN + (2 * label as usize + s) * slot_len(width)) as u64
}

/// The sequence number and statistics of a slot's bytes, if it is valid.
fn read_slot(bytes: &[u8], label: u16, width: usize, tokens: usize) -> Option<(u64, TokenStats)> {
    if bytes.len() != slot_len(width) || bytes.iter().all(|&b| b == 0) {
        return None;
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    if anytime_core::crc32::crc32(body) != u32::from_le_bytes(crc.try_into().ok()?) {
        return None;
    }
    let seq = u64::from_le_bytes(body[..8].try_into().ok()?);
    let id = u16::from_le_bytes(body[8..10].try_into().ok()?);
    if seq == 0 || id != label {
        return None;
    }
    let stats = TokenStats::from_bytes(&body[10..], width, tokens).ok()?;
    Some((seq, stats))
}

/// A slot's bytes.
fn slot_bytes(label: u16, seq: u64, stats: &TokenStats) -> Vec<u8> {
    let mut out = Vec::with_capacity(slot_len(stats.width()));
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&label.to_le_bytes());
    out.extend_from_slice(&stats.to_bytes());
    seal(&mut out);
    out
}

/// Where a label's newest statistics lie: their slot and sequence number.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Newest {
    slot: usize,
    seq: u64,
}

/// `stats.bin`, open to write, with the table it holds.
#[derive(Debug)]
pub struct StatsFile {
    path: PathBuf,
    file: File,
    table: StatsTable,
    newest: BTreeMap<u16, Newest>,
    durable: bool,
}

impl StatsFile {
    /// Opens `path`, or creates it (its header written to `<path>.tmp`, synced, renamed)
    /// when absent, for statistics of width `width` and `tokens` tokens per sample.
    /// Refused when the header is damaged or of other dims; damaged slots are ignored
    /// (module docs).
    pub fn open_or_create(
        path: &Path,
        width: usize,
        tokens: usize,
    ) -> Result<Self, StatsFileError> {
        let io = |source| StatsFileError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Err(source) = StatsTable::new(width, tokens) {
            return Err(StatsFileError::Format {
                path: path.to_path_buf(),
                source,
            });
        }
        if !path.exists() {
            let mut tmp = path.as_os_str().to_owned();
            tmp.push(".tmp");
            let tmp = PathBuf::from(tmp);
            File::create(&tmp)
                .and_then(|mut f| {
                    f.write_all(&header(width, tokens))
                        .and_then(|()| f.sync_all())
                })
                .and_then(|()| fs::rename(&tmp, path))
                .map_err(io)?;
            if let Some(dir) = path.parent() {
                if let Ok(d) = File::open(dir) {
                    let _ = d.sync_all();
                }
            }
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io)?;
        let bytes = fs::read(path).map_err(io)?;
        let (table, newest) =
            parse(&bytes, width, tokens).map_err(|source| StatsFileError::Format {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(StatsFile {
            path: path.to_path_buf(),
            file,
            table,
            newest,
            durable: true,
        })
    }

    /// Reads the table of the file at `path` without opening it to write.
    pub fn read(path: &Path, width: usize, tokens: usize) -> Result<StatsTable, StatsFileError> {
        let bytes = fs::read(path).map_err(|source| StatsFileError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        parse(&bytes, width, tokens)
            .map(|(t, _)| t)
            .map_err(|source| StatsFileError::Format {
                path: path.to_path_buf(),
                source,
            })
    }

    /// [`Self::read`] with the dims the file's header gives (for tools that know none).
    pub fn read_found(path: &Path) -> Result<StatsTable, StatsFileError> {
        let bytes = fs::read(path).map_err(|source| StatsFileError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let format = |source| StatsFileError::Format {
            path: path.to_path_buf(),
            source,
        };
        if bytes.len() < STATS_HEADER_LEN {
            return Err(format(PrivateError::Length {
                what: WHAT,
                expected: STATS_HEADER_LEN,
                found: bytes.len(),
            }));
        }
        let width = super::codec::u32_at(&bytes, 6) as usize;
        let tokens = super::codec::u32_at(&bytes, 10) as usize;
        parse(&bytes, width, tokens).map(|(t, _)| t).map_err(format)
    }

    /// Whether each write is synced before it returns (`false` only where nothing must
    /// survive a crash: simulations).
    pub fn set_durable(&mut self, durable: bool) {
        self.durable = durable;
    }

    /// The statistics held.
    pub fn table(&self) -> &StatsTable {
        &self.table
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Adds one sample's tokens to `label`'s statistics and, once they count at least
    /// [`MIN_SAMPLES`] samples, writes them to the label's other slot: statistics of fewer
    /// samples stay in memory only (a restart loses them), so that nothing written
    /// describes fewer than 8 samples. Refused as [`StatsTable::observe`] refuses, changing
    /// nothing; after an I/O error the table in memory is as before and the file holds the
    /// label's previous statistics or the new ones.
    pub fn observe(&mut self, label: u16, tokens: &[f32]) -> Result<(), StatsFileError> {
        let mut stats = match self.table.get(label) {
            Some(s) => s.clone(),
            None => TokenStats::new(self.table.width(), self.table.tokens_per_sample())
                .expect("the table's dims"),
        };
        stats
            .observe(tokens)
            .map_err(|source| StatsFileError::Format {
                path: self.path.clone(),
                source,
            })?;
        if stats.samples() < MIN_SAMPLES {
            self.table.replace(label, stats);
            return Ok(());
        }
        self.put(label, stats)
    }

    /// The positioned write that stores `stats` as `label`'s: its offset, bytes, and the
    /// slot's place.
    fn planned(&self, label: u16, stats: &TokenStats) -> (u64, Vec<u8>, Newest) {
        let (slot, seq) = match self.newest.get(&label) {
            Some(n) => (1 - n.slot, n.seq + 1),
            None => (0, 1),
        };
        let at = slot_offset(self.table.width(), label, slot);
        (at, slot_bytes(label, seq, stats), Newest { slot, seq })
    }

    fn put(&mut self, label: u16, stats: TokenStats) -> Result<(), StatsFileError> {
        let (at, bytes, newest) = self.planned(label, &stats);
        let io = |source| StatsFileError::Io {
            path: self.path.clone(),
            source,
        };
        // A label's two slots are made at its first write, so that the file's size is
        // fixed by its highest label (the hole reads as zero: empty slots).
        let pair_end = slot_offset(self.table.width(), label, 1) + bytes.len() as u64;
        let len = self.file.metadata().map_err(io)?.len();
        if len < pair_end {
            self.file.set_len(pair_end).map_err(io)?;
        }
        self.file.write_all_at(&bytes, at).map_err(io)?;
        if self.durable {
            self.file.sync_data().map_err(io)?;
        }
        self.newest.insert(label, newest);
        self.table.replace(label, stats);
        Ok(())
    }
}

/// The table and newest slots of a file's bytes.
fn parse(
    bytes: &[u8],
    width: usize,
    tokens: usize,
) -> Result<(StatsTable, BTreeMap<u16, Newest>), PrivateError> {
    let mut table = StatsTable::new(width, tokens)?;
    let h = STATS_HEADER_LEN;
    if bytes.len() < h {
        return Err(PrivateError::Length {
            what: WHAT,
            expected: h,
            found: bytes.len(),
        });
    }
    let found: [u8; 4] = bytes[..4].try_into().expect("4 bytes");
    if found != MAGIC {
        return Err(PrivateError::Magic { what: WHAT, found });
    }
    let crc = u32::from_le_bytes(bytes[h - 4..h].try_into().expect("4 bytes"));
    if anytime_core::crc32::crc32(&bytes[..h - 4]) != crc {
        return Err(PrivateError::Checksum { what: WHAT });
    }
    let version = u16::from_le_bytes(bytes[4..6].try_into().expect("2 bytes"));
    if version != super::codec::VERSION {
        return Err(PrivateError::Version {
            what: WHAT,
            found: version,
            supported: super::codec::VERSION,
        });
    }
    for (field, at, expected) in [
        ("width", 6, width),
        ("tokens per sample", 10, tokens),
        ("slot size", 14, slot_len(width)),
    ] {
        let got = super::codec::u32_at(bytes, at);
        if got as usize != expected {
            return Err(PrivateError::Dims {
                what: WHAT,
                field,
                expected,
                found: got as u64,
            });
        }
    }
    let s = slot_len(width);
    let mut newest = BTreeMap::new();
    let pairs = (bytes.len() - h).div_ceil(2 * s).min(1 << 16);
    for label in 0..pairs {
        let label = label as u16;
        let mut best: Option<(usize, u64, TokenStats)> = None;
        for slot in 0..2 {
            let at = slot_offset(width, label, slot) as usize;
            let Some(b) = bytes.get(at..at + s) else {
                continue;
            };
            if let Some((seq, st)) = read_slot(b, label, width, tokens) {
                if best.as_ref().is_none_or(|(_, q, _)| seq > *q) {
                    best = Some((slot, seq, st));
                }
            }
        }
        if let Some((slot, seq, st)) = best {
            newest.insert(label, Newest { slot, seq });
            table.replace(label, st);
        }
    }
    Ok((table, newest))
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: usize = 3;
    const N: usize = 4;

    fn sample(seed: u32) -> Vec<f32> {
        (0..N * D)
            .map(|i| ((i as u32 * 7 + seed * 13) % 11) as f32 * 0.25 - 1.0)
            .collect()
    }

    /// A file with labels 0, 2 and 5 of 8, 9 and 8 samples; returns its path's folder.
    fn filled() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stats.bin");
        let mut f = StatsFile::open_or_create(&path, D, N).unwrap();
        let labels = (0..8).flat_map(|_| [0u16, 2, 5]).chain([2]);
        for (i, label) in labels.enumerate() {
            f.observe(label, &sample(i as u32)).unwrap();
        }
        (dir, path)
    }

    #[test]
    fn statistics_of_fewer_than_8_samples_are_never_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stats.bin");
        let mut f = StatsFile::open_or_create(&path, D, N).unwrap();
        let empty = fs::read(&path).unwrap();
        for i in 0..MIN_SAMPLES as u32 - 1 {
            f.observe(4, &sample(i)).unwrap();
            assert_eq!(f.table().get(4).unwrap().samples(), u64::from(i) + 1);
            assert_eq!(fs::read(&path).unwrap(), empty, "{} samples written", i + 1);
        }
        // A restart loses them; the 8th sample of a fresh count is written.
        drop(f);
        assert!(StatsFile::read(&path, D, N).unwrap().get(4).is_none());
        let mut f = StatsFile::open_or_create(&path, D, N).unwrap();
        for i in 0..MIN_SAMPLES as u32 {
            f.observe(4, &sample(i)).unwrap();
        }
        drop(f);
        let back = StatsFile::read(&path, D, N).unwrap();
        assert_eq!(back.get(4).unwrap().samples(), MIN_SAMPLES);
    }

    #[test]
    fn stats_file_reopens_with_every_label_and_a_size_independent_of_samples() {
        let (_dir, path) = filled();
        let mut f = StatsFile::open_or_create(&path, D, N).unwrap();
        let before = f.table().clone();
        assert_eq!(before.get(2).unwrap().samples(), 9);
        assert_eq!(StatsFile::read(&path, D, N).unwrap(), before);
        let size = fs::metadata(&path).unwrap().len();
        assert_eq!(size, (STATS_HEADER_LEN + 12 * slot_len(D)) as u64);
        for i in 0..50 {
            f.observe(5, &sample(i)).unwrap();
        }
        drop(f);
        assert_eq!(fs::metadata(&path).unwrap().len(), size);
        let again = StatsFile::read(&path, D, N).unwrap();
        assert_eq!(again.get(5).unwrap().samples(), 58);
        assert_eq!(again.get(0), before.get(0));
        assert!(matches!(
            StatsFile::read(&path, D + 1, N),
            Err(StatsFileError::Format {
                source: PrivateError::Dims { .. },
                ..
            })
        ));
        let mut bad = fs::read(&path).unwrap();
        bad[7] ^= 1;
        fs::write(&path, &bad).unwrap();
        assert!(matches!(
            StatsFile::read(&path, D, N),
            Err(StatsFileError::Format {
                source: PrivateError::Checksum { .. },
                ..
            })
        ));
    }

    /// A power cut at every byte of a slot write (the write's first `c` bytes reach the
    /// file, the file no longer than they reach when the write extended it), and a flipped
    /// byte anywhere in the written slot: reopening gives the label's previous statistics
    /// or the new ones, whole, and every other label's intact; a later write works.
    #[test]
    fn a_cut_or_flip_in_a_slot_write_keeps_the_previous_statistics() {
        let (_dir, path) = filled();
        let base = fs::read(&path).unwrap();
        let f = StatsFile::open_or_create(&path, D, N).unwrap();
        let old = f.table().clone();
        // Label 2 (a rewrite inside the file) and 7 (a new label extending it).
        for label in [2u16, 7] {
            let mut new = old.get(label).cloned().unwrap_or_else(|| {
                // A new label's first write holds its first 8 samples.
                let mut t = TokenStats::new(D, N).unwrap();
                for i in 0..MIN_SAMPLES as u32 - 1 {
                    t.observe(&sample(40 + i)).unwrap();
                }
                t
            });
            new.observe(&sample(99)).unwrap();
            let (at, bytes, _) = f.planned(label, &new);
            let at = at as usize;
            let check = |image: &[u8], what: &str| {
                fs::write(&path, image).unwrap();
                let mut g = StatsFile::open_or_create(&path, D, N).unwrap();
                let t = g.table().clone();
                let got = t.get(label);
                assert!(
                    got == old.get(label) || got == Some(&new),
                    "label {label}, {what}: neither the old nor the new statistics"
                );
                for (l, s) in old.iter().filter(|(l, _)| *l != label) {
                    assert_eq!(t.get(l), Some(s), "label {l} after {what}");
                }
                g.observe(label, &sample(5)).unwrap();
                let back = StatsFile::read(&path, D, N).unwrap();
                let before = got.map_or(0, TokenStats::samples);
                if before + 1 >= MIN_SAMPLES {
                    assert_eq!(back.get(label).unwrap().samples(), before + 1, "{what}");
                } else {
                    assert_eq!(back.get(label), got, "{what}: kept in memory only");
                }
                got == Some(&new)
            };
            for c in 0..=bytes.len() {
                let mut image = base.clone();
                if image.len() < at + c {
                    image.resize(at + c, 0);
                }
                image[at..at + c].copy_from_slice(&bytes[..c]);
                let whole = check(&image, &format!("a cut at byte {c}"));
                assert_eq!(whole, c == bytes.len(), "label {label}, cut at {c}");
            }
            let mut full = base.clone();
            full.resize(full.len().max(at + bytes.len()), 0);
            full[at..at + bytes.len()].copy_from_slice(&bytes);
            for i in 0..bytes.len() {
                let mut image = full.clone();
                image[at + i] ^= 0x10;
                assert!(!check(&image, &format!("a flip of byte {i}")));
            }
        }
    }
}
