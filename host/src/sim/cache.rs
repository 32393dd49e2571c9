//! On-disk cache of per-image features (trunk tokens `[N, D]`, or embeddings
//! `[1, E]`), so the trunk runs once per image across experiments.
//!
//! One file per dataset, split, model and feature kind (see [`cache_path`]).
//! Little-endian layout:
//!
//! | bytes | field |
//! |---|---|
//! | 4 | magic `AETC` |
//! | 1 | version (1) |
//! | 1 | encoding: 0 = f16 raw, 1 = our token codec (SPEC §5) |
//! | 1 | codec bits (8, 4 or 32; 0 for f16) |
//! | 1 | codec flags: bit 0 = attention-weighted (0 for f16) |
//! | 2 | codec k (u16; 0 for f16) |
//! | 4 | rows per record (u32) |
//! | 4 | columns per record (u32) |
//! | 2 | key length `k` (u16) |
//! | k | key, UTF-8 (model, dataset, split, kind: a mismatch is refused) |
//! | … | records: image index (u32) + payload: `rows·cols` f16 values, or one codec record of `anytime_core::codec::encoded_len` bytes |
//!
//! Records are appended in one write each and have a fixed size, so a torn last
//! record (a run killed mid-write) is recognised by length and cut off on open.
//! An index written twice keeps its first record. The codec encoding stores about
//! 30× less than f16 for ViT-B/32 tokens; its reconstruction is what the learner's
//! store would hold, not the exact tokens.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, ensure, Context, Result};
use anytime_core::codec::{self, CodecParams};
use half::f16;

const MAGIC: &[u8; 4] = b"AETC";
const VERSION: u8 = 1;
const ENCODING_F16: u8 = 0;
const ENCODING_CODEC: u8 = 1;

/// How records are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Every value as an IEEE half float.
    F16,
    /// Our token codec (attention-weighted PCA, quantised).
    Codec(CodecParams),
}

impl Encoding {
    /// Short tag for file names: `f16` or e.g. `k5b8w` (`u` when unweighted).
    pub fn tag(&self) -> String {
        match self {
            Encoding::F16 => "f16".to_owned(),
            Encoding::Codec(p) => {
                format!("k{}b{}{}", p.k, p.bits, if p.weighted { "w" } else { "u" })
            }
        }
    }

    /// encoding, bits, flags, k (u16 LE)
    fn header_bytes(&self) -> [u8; 5] {
        match self {
            Encoding::F16 => [ENCODING_F16, 0, 0, 0, 0],
            Encoding::Codec(p) => {
                let [k0, k1] = p.k.to_le_bytes();
                [ENCODING_CODEC, p.bits, u8::from(p.weighted), k0, k1]
            }
        }
    }

    fn payload_len(&self, rows: usize, cols: usize) -> usize {
        match self {
            Encoding::F16 => 2 * rows * cols,
            Encoding::Codec(p) => codec::encoded_len(rows, cols, p),
        }
    }
}

/// `<dir>/<dataset>-<split>-<model>-<kind>.aetc`, with unsafe characters replaced.
pub fn cache_path(dir: &Path, dataset: &str, split: &str, model: &str, kind: &str) -> PathBuf {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    };
    dir.join(format!(
        "{}-{}-{}-{}.aetc",
        clean(dataset),
        clean(split),
        clean(model),
        clean(kind)
    ))
}

/// An open feature cache.
#[derive(Debug)]
pub struct FeatureCache {
    file: File,
    path: PathBuf,
    rows: usize,
    cols: usize,
    encoding: Encoding,
    payload: usize,
    header_len: u64,
    index: HashMap<u32, u64>,
    end: u64,
    scratch: Vec<f32>,
}

impl FeatureCache {
    /// Opens (or creates) the cache at `path` for records of `rows × cols` values
    /// stored as `encoding`, identified by `key`. A file written for another key,
    /// shape or encoding is an error that names it (delete it to rebuild).
    pub fn open(path: &Path, key: &str, rows: u32, cols: u32, encoding: Encoding) -> Result<Self> {
        ensure!(rows > 0 && cols > 0, "empty feature shape {rows}×{cols}");
        if let Encoding::Codec(p) = encoding {
            ensure!(
                p.k >= 1 && u32::from(p.k) <= rows && rows <= 65535 && cols <= 65535,
                "the token codec with k = {} cannot store {rows}×{cols} tokens (needs 1 ≤ k ≤ N)",
                p.k
            );
            ensure!(
                matches!(p.bits, 4 | 8 | 32),
                "codec bits must be 4, 8 or 32, not {}",
                p.bits
            );
        }
        let key_len = u16::try_from(key.len()).context("cache key longer than 65535 bytes")?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .with_context(|| format!("opening token cache {}", path.display()))?;
        let mut header = Vec::with_capacity(20 + key.len());
        header.extend_from_slice(MAGIC);
        header.push(VERSION);
        header.extend_from_slice(&encoding.header_bytes());
        header.extend_from_slice(&rows.to_le_bytes());
        header.extend_from_slice(&cols.to_le_bytes());
        header.extend_from_slice(&key_len.to_le_bytes());
        header.extend_from_slice(key.as_bytes());
        let header_len = header.len() as u64;
        let len = file.metadata()?.len();
        if len < header_len {
            // new, or torn while its header was written: start over
            file.set_len(0)?;
            file.write_all(&header)?;
        } else {
            let mut found = vec![0u8; header.len()];
            file.read_exact(&mut found)?;
            if found != header {
                bail!(
                    "token cache {} was written for another model, dataset, shape or encoding \
                     (expected key `{key}`, {rows}×{cols}, {}); delete it to rebuild",
                    path.display(),
                    encoding.tag()
                );
            }
        }
        let (rows, cols) = (rows as usize, cols as usize);
        let payload = encoding.payload_len(rows, cols);
        let record = 4 + payload as u64;
        let len = file.metadata()?.len();
        let count = (len - header_len) / record;
        let end = header_len + count * record;
        if end != len {
            log::warn!("token cache {}: cutting a torn last record", path.display());
            file.set_len(end)?;
        }
        let mut index = HashMap::with_capacity(count as usize);
        let mut id = [0u8; 4];
        for k in 0..count {
            let at = header_len + k * record;
            file.seek(SeekFrom::Start(at))?;
            file.read_exact(&mut id)?;
            index.entry(u32::from_le_bytes(id)).or_insert(at + 4);
        }
        Ok(Self {
            file,
            path: path.to_path_buf(),
            rows,
            cols,
            encoding,
            payload,
            header_len,
            index,
            end,
            scratch: Vec::new(),
        })
    }

    /// Number of cached images.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn contains(&self, image: u32) -> bool {
        self.index.contains_key(&image)
    }

    /// Size of the file in bytes.
    pub fn file_bytes(&self) -> u64 {
        self.end
    }

    /// Bytes stored per image (index excluded).
    pub fn payload_bytes(&self) -> usize {
        self.payload
    }

    /// The features of `image` as f32 (widened or decoded); `None` when not cached.
    pub fn get(&mut self, image: u32) -> Result<Option<Vec<f32>>> {
        let Some(&at) = self.index.get(&image) else {
            return Ok(None);
        };
        let mut raw = vec![0u8; self.payload];
        self.file.seek(SeekFrom::Start(at))?;
        self.file
            .read_exact(&mut raw)
            .with_context(|| format!("reading image {image} from {}", self.path.display()))?;
        let values = match self.encoding {
            Encoding::F16 => raw
                .chunks_exact(2)
                .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Encoding::Codec(_) => {
                let mut out = vec![0f32; self.rows * self.cols];
                let shape = codec::decode(&raw, &mut out)
                    .map_err(|e| anyhow!("image {image} in {}: {e}", self.path.display()))?;
                ensure!(
                    shape == (self.rows, self.cols),
                    "image {image} in {} decodes to {shape:?}",
                    self.path.display()
                );
                out
            }
        };
        Ok(Some(values))
    }

    /// Appends the features of `image`: rounded to f16, or encoded with the codec
    /// using `weights` (one per row, SPEC §5; `None` = all 1). Does nothing if cached.
    pub fn put(&mut self, image: u32, values: &[f32], weights: Option<&[f32]>) -> Result<()> {
        let n = self.rows * self.cols;
        ensure!(
            values.len() == n,
            "{} values given, the cache {} holds {n} per image",
            values.len(),
            self.path.display(),
        );
        if self.contains(image) {
            return Ok(());
        }
        let mut rec = Vec::with_capacity(4 + self.payload);
        rec.extend_from_slice(&image.to_le_bytes());
        match self.encoding {
            Encoding::F16 => {
                for &v in values {
                    rec.extend_from_slice(&f16::from_f32(v).to_le_bytes());
                }
            }
            Encoding::Codec(p) => {
                let ones;
                let w = match weights {
                    Some(w) => w,
                    None => {
                        ones = vec![1.0; self.rows];
                        &ones
                    }
                };
                let need = codec::encode_scratch_len(self.rows, self.cols, usize::from(p.k));
                self.scratch.resize(need, 0.0);
                rec.resize(4 + self.payload, 0);
                codec::encode(
                    values,
                    w,
                    self.rows,
                    self.cols,
                    &p,
                    &mut self.scratch,
                    &mut rec[4..],
                )
                .map_err(|e| anyhow!("encoding image {image} for {}: {e}", self.path.display()))?;
            }
        }
        self.file.seek(SeekFrom::Start(self.end))?;
        self.file
            .write_all(&rec)
            .with_context(|| format!("appending to {}", self.path.display()))?;
        self.index.insert(image, self.end + 4);
        self.end += rec.len() as u64;
        debug_assert!(self.end >= self.header_len);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(seed: u32, n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((seed as usize * 31 + i) % 17) as f32 * 0.25 - 2.0)
            .collect()
    }

    #[test]
    fn put_get_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        let path = cache_path(tmp.path(), "my data", "train", "tiny/clip", "tokens");
        assert!(path.ends_with("my_data-train-tiny_clip-tokens.aetc"));
        {
            let mut c = FeatureCache::open(&path, "k", 3, 4, Encoding::F16).unwrap();
            assert_eq!(c.len(), 0);
            c.put(7, &values(7, 12), None).unwrap();
            c.put(2, &values(2, 12), None).unwrap();
            c.put(7, &values(99, 12), None).unwrap(); // ignored: first record wins
            assert!(c.put(3, &values(3, 11), None).is_err());
            // exactly representable in f16, so equal after the round trip
            assert_eq!(c.get(7).unwrap().unwrap(), values(7, 12));
            assert_eq!(c.get(5).unwrap(), None);
        }
        let mut c = FeatureCache::open(&path, "k", 3, 4, Encoding::F16).unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c.get(2).unwrap().unwrap(), values(2, 12));
        assert_eq!(c.get(7).unwrap().unwrap(), values(7, 12));
    }

    #[test]
    fn f16_rounding_is_small() {
        let tmp = tempfile::tempdir().unwrap();
        let mut c = FeatureCache::open(&tmp.path().join("c"), "k", 1, 3, Encoding::F16).unwrap();
        c.put(0, &[0.1, -3.3, 1000.3], None).unwrap();
        let back = c.get(0).unwrap().unwrap();
        for (a, b) in back.iter().zip([0.1f32, -3.3, 1000.3]) {
            assert!(anytime_testkit::close(*a, b, 0.0, 1e-3), "{a} vs {b}");
        }
    }

    #[test]
    fn other_key_or_shape_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("c.aetc");
        FeatureCache::open(&path, "model-a", 2, 2, Encoding::F16)
            .unwrap()
            .put(0, &[1.0; 4], None)
            .unwrap();
        let err = FeatureCache::open(&path, "model-b", 2, 2, Encoding::F16)
            .unwrap_err()
            .to_string();
        assert!(err.contains("delete it"), "{err}");
        assert!(FeatureCache::open(&path, "model-a", 2, 3, Encoding::F16).is_err());
        std::fs::write(&path, b"garbage that is long enough to be a header").unwrap();
        assert!(FeatureCache::open(&path, "model-a", 2, 2, Encoding::F16).is_err());
    }

    #[test]
    fn torn_tail_is_cut() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("c.aetc");
        let full_len;
        {
            let mut c = FeatureCache::open(&path, "k", 1, 4, Encoding::F16).unwrap();
            c.put(1, &[1.0; 4], None).unwrap();
            c.put(2, &[2.0; 4], None).unwrap();
            full_len = c.file_bytes();
        }
        assert_eq!(std::fs::metadata(&path).unwrap().len(), full_len);
        // kill mid-write: the second record loses its last 3 bytes
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(full_len - 3).unwrap();
        drop(f);
        let mut c = FeatureCache::open(&path, "k", 1, 4, Encoding::F16).unwrap();
        assert_eq!(c.len(), 1);
        assert_eq!(c.get(1).unwrap().unwrap(), [1.0; 4]);
        assert_eq!(c.get(2).unwrap(), None);
        c.put(2, &[2.5; 4], None).unwrap();
        drop(c);
        let mut c = FeatureCache::open(&path, "k", 1, 4, Encoding::F16).unwrap();
        assert_eq!(c.get(2).unwrap().unwrap(), [2.5; 4]);
        // a file torn inside its header starts over
        std::fs::write(&path, b"AET").unwrap();
        assert_eq!(
            FeatureCache::open(&path, "k", 1, 4, Encoding::F16)
                .unwrap()
                .len(),
            0
        );
    }

    fn tokens(n: usize, d: usize, seed: u32) -> Vec<f32> {
        // a rank-2 structure plus a mean: k = 3 reconstructs it almost exactly
        (0..n * d)
            .map(|x| {
                let (i, j) = ((x / d) as f32, (x % d) as f32);
                0.5 + (i * 0.3 + seed as f32).sin() * (j * 0.2).cos()
                    + 0.1 * (i * 0.7).cos() * (j * 0.5).sin()
            })
            .collect()
    }

    #[test]
    fn codec_encoding_round_trips_within_quantisation() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("codec.aetc");
        let p = CodecParams {
            k: 3,
            bits: 8,
            weighted: true,
        };
        let (n, d) = (10, 16);
        let t = tokens(n, d, 1);
        let mut w = vec![1.0f32 / (n - 1) as f32; n];
        w[0] = 1.0;
        {
            let mut c =
                FeatureCache::open(&path, "k", n as u32, d as u32, Encoding::Codec(p)).unwrap();
            assert_eq!(c.payload_bytes(), codec::encoded_len(n, d, &p));
            assert!(c.payload_bytes() < 2 * n * d);
            c.put(4, &t, Some(&w)).unwrap();
            c.put(5, &tokens(n, d, 2), None).unwrap();
            assert!(c.put(6, &t, Some(&w[..3])).is_err());
        }
        let mut c = FeatureCache::open(&path, "k", n as u32, d as u32, Encoding::Codec(p)).unwrap();
        assert_eq!(c.len(), 2);
        let back = c.get(4).unwrap().unwrap();
        let err = anytime_testkit::max_abs_diff(&back, &t);
        assert!(err < 0.05, "max error {err}");
        // another encoding of the same file is refused
        assert!(FeatureCache::open(&path, "k", n as u32, d as u32, Encoding::F16).is_err());
        let p4 = CodecParams { bits: 4, ..p };
        assert!(FeatureCache::open(&path, "k", n as u32, d as u32, Encoding::Codec(p4)).is_err());
        assert_eq!(Encoding::Codec(p4).tag(), "k3b4w");
        assert_eq!(Encoding::F16.tag(), "f16");
    }

    #[test]
    fn codec_needs_k_at_most_n() {
        let tmp = tempfile::tempdir().unwrap();
        let p = CodecParams {
            k: 5,
            bits: 8,
            weighted: true,
        };
        let err = FeatureCache::open(&tmp.path().join("c"), "k", 1, 192, Encoding::Codec(p))
            .unwrap_err()
            .to_string();
        assert!(err.contains("k = 5"), "{err}");
    }
}
