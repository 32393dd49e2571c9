//! The learner's folder: `learner.json` (model, codec, id), the tuned weights file, the
//! store's geometry, and the file-system helpers that keep them consistent.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use anytime_core::codec::CodecParams;

use super::{LearnError, META_FILE};
use crate::block::{BlockDims, FrozenHead};
use crate::train::{load_tuned, TunedState};

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub(super) struct Meta {
    /// The learner's id (hex u64); absent in folders made before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) id: Option<String>,
    pub(super) model: String,
    pub(super) tokens: usize,
    pub(super) width: usize,
    pub(super) embed: usize,
    pub(super) codec_k: u16,
    pub(super) codec_bits: u8,
    pub(super) codec_weighted: bool,
    /// `"private"` for a learner of SPEC §7's private mode; absent for a normal one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) mode: Option<String>,
}

/// `learner.json`'s `mode` of a private learner.
pub(super) const PRIVATE_MODE: &str = "private";

/// Whether the learner folder `dir` is private (`None`: no `learner.json`), read from its
/// `learner.json` alone.
pub(super) fn folder_private(dir: &Path) -> Result<Option<bool>, LearnError> {
    let path = dir.join(META_FILE);
    let Some(meta) = read_meta(&path)? else {
        return Ok(None);
    };
    match meta.mode.as_deref() {
        None => Ok(Some(false)),
        Some(PRIVATE_MODE) => Ok(Some(true)),
        Some(other) => Err(LearnError::State {
            path,
            message: format!("unknown learner mode `{other}`"),
        }),
    }
}

/// The most of `learner.json` read: one is a few hundred bytes; more is not one.
const MAX_META_BYTES: u64 = 65_536;

/// `learner.json` at `path` (`None`: there is none), of which at most [`MAX_META_BYTES`]
/// are read.
fn read_meta(path: &Path) -> Result<Option<Meta>, LearnError> {
    let bytes = match fs::File::open(path) {
        Ok(f) => {
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut std::io::Read::take(f, MAX_META_BYTES), &mut bytes)
                .map_err(|source| io_err(path, source))?;
            bytes
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(io_err(path, source)),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| LearnError::State {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
}

/// The smallest store capacity a learner can use: the largest state blob and four samples.
pub fn min_capacity(record_max: usize, state_max: usize) -> u64 {
    use anytime_core::ring::layout::record_size;
    4 * record_size(record_max as u32) as u64 + record_size(state_max as u32) as u64
}

pub(super) fn check_capacity(
    capacity: u64,
    record_max: usize,
    state_max: usize,
) -> Result<(), LearnError> {
    let min = min_capacity(record_max, state_max);
    if capacity < min {
        return Err(LearnError::Config(format!(
            "a store capacity of {capacity} bytes is below the {min} this model needs (the largest state blob and four samples)"
        )));
    }
    Ok(())
}

/// The tuned weights at `path`, if the file exists (checksum and values checked).
pub(super) fn read_tuned(
    path: &Path,
    dims: &BlockDims,
) -> Result<Option<(TunedState, FrozenHead, Option<String>)>, LearnError> {
    if path.is_file() {
        Ok(Some(load_tuned(path, dims)?))
    } else {
        Ok(None)
    }
}

pub(super) fn format_id(id: u64) -> String {
    format!("{id:016x}")
}

pub(super) fn parse_id(s: &str) -> Option<u64> {
    u64::from_str_radix(s, 16).ok()
}

/// Checks `learner.json` against the model and codec and returns it. A writer (`write`)
/// creates it, with a new id, or gives an older one its id.
pub(super) fn check_meta(
    dir: &Path,
    model: &str,
    dims: &BlockDims,
    codec: &CodecParams,
    write: bool,
    private: bool,
) -> Result<Meta, LearnError> {
    let path = dir.join(META_FILE);
    let meta = Meta {
        id: Some(format_id(rand::random::<u64>() | 1)),
        model: model.to_string(),
        tokens: dims.tokens,
        width: dims.width,
        embed: dims.embed,
        codec_k: codec.k,
        codec_bits: codec.bits,
        codec_weighted: codec.weighted,
        mode: private.then(|| PRIVATE_MODE.to_string()),
    };
    let Some(mut found) = read_meta(&path)? else {
        if !write {
            return Err(LearnError::NotALearner {
                dir: dir.to_path_buf(),
            });
        }
        write_meta(&path, &meta)?;
        return Ok(meta);
    };
    if found.model != meta.model || found.tokens != meta.tokens || found.width != meta.width {
        return Err(LearnError::WrongModel {
            dir: dir.to_path_buf(),
            expected: meta.model,
            found: found.model,
            found_tokens: found.tokens,
            found_width: found.width,
        });
    }
    if found.id.as_deref().and_then(parse_id).is_none() && write {
        found.id = meta.id;
        write_meta(&path, &found)?;
    }
    Ok(found)
}

/// Writes `learner.json` atomically (temporary file, fsync, rename).
pub(super) fn write_meta(path: &Path, meta: &Meta) -> Result<(), LearnError> {
    let text = serde_json::to_vec_pretty(meta).expect("plain struct");
    write_atomic(path, &text)
}

/// Reads the JSON file `path` of a learner folder: `None` when it does not exist, a
/// [`LearnError::State`] naming it when it does not parse.
pub(super) fn read_json<T: serde::de::DeserializeOwned>(
    path: &Path,
) -> Result<Option<T>, LearnError> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| LearnError::State {
                path: path.to_path_buf(),
                message: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(io_err(path, source)),
    }
}

/// Replaces `path` with `bytes` atomically (`<path>.tmp`, fsync, rename, fsync of the
/// folder): a reader or a crash sees the old file or the new one, whole.
pub(super) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), LearnError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let written = fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()))
        .and_then(|()| fs::rename(&tmp, path));
    if let Err(source) = written {
        let _ = fs::remove_file(&tmp);
        return Err(io_err(path, source));
    }
    if let Some(dir) = path.parent() {
        sync_dir(dir);
    }
    Ok(())
}

pub(super) fn io_err(path: &Path, source: std::io::Error) -> LearnError {
    LearnError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub(super) fn sync_file(path: &Path) -> Result<(), LearnError> {
    fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|source| io_err(path, source))
}

pub(super) fn sync_dir(dir: &Path) {
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anytime_core::ring::layout::record_size;

    const DIMS: BlockDims = BlockDims::TEST;

    #[test]
    fn learner_json_is_read_up_to_its_bound_and_open_errors_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let meta = check_meta(dir.path(), "m", &DIMS, &CodecParams::DEFAULT, true, true).unwrap();
        let path = dir.path().join(META_FILE);
        // Leading white space up to the bound is still JSON to read whole.
        let json = fs::read(&path).unwrap();
        let mut padded = vec![b' '; MAX_META_BYTES as usize - json.len()];
        padded.extend_from_slice(&json);
        fs::write(&path, &padded).unwrap();
        assert_eq!(read_meta(&path).unwrap(), Some(meta));
        assert_eq!(folder_private(dir.path()).unwrap(), Some(true));
        // Beyond it, the JSON is never reached.
        padded.insert(0, b' ');
        fs::write(&path, &padded).unwrap();
        assert!(read_meta(&path).is_err());
        // No folder: none; a file where the folder should be: an error, not "none".
        assert_eq!(folder_private(&dir.path().join("absent")).unwrap(), None);
        assert!(folder_private(&path).is_err());
        let absent = read_json::<Meta>(&dir.path().join("absent.json")).unwrap();
        assert!(absent.is_none());
        assert!(read_json::<Meta>(&path.join("x.json")).is_err());
        assert!(sync_file(&path).is_ok());
        assert!(sync_file(&dir.path().join("absent")).is_err());
    }

    #[test]
    fn a_folder_of_other_token_shapes_is_another_models() {
        let dir = tempfile::tempdir().unwrap();
        let codec = CodecParams::DEFAULT;
        check_meta(dir.path(), "m", &DIMS, &codec, true, false).unwrap();
        let tokens = BlockDims { tokens: 4, ..DIMS };
        let width = BlockDims {
            width: 8,
            heads: 2,
            ..DIMS
        };
        for (other, model) in [(&tokens, "m"), (&width, "m"), (&DIMS, "n")] {
            let e = check_meta(dir.path(), model, other, &codec, false, false).unwrap_err();
            assert!(matches!(e, LearnError::WrongModel { .. }), "{e}");
        }
        assert!(check_meta(dir.path(), "m", &DIMS, &codec, false, false).is_ok());
    }

    #[test]
    fn learner_ids_are_random_and_never_zero() {
        let ids: std::collections::HashSet<String> = (0..8)
            .map(|_| {
                let dir = tempfile::tempdir().unwrap();
                let m = check_meta(dir.path(), "m", &DIMS, &CodecParams::DEFAULT, true, false);
                m.unwrap().id.unwrap()
            })
            .collect();
        assert_eq!(ids.len(), 8);
        assert!(ids.iter().all(|id| parse_id(id).is_some_and(|v| v != 0)));
    }

    #[test]
    fn the_capacity_holds_four_samples_and_the_state() {
        let min = min_capacity(100, 50);
        assert_eq!(
            min,
            4 * u64::from(record_size(100)) + u64::from(record_size(50))
        );
        assert!(check_capacity(min, 100, 50).is_ok());
        assert!(check_capacity(min - 1, 100, 50).is_err());
    }
}
