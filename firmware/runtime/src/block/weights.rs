//! Loading and saving the block's tensors as safetensors (f32 on write; f32 or f16 on read).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::{tensor::TensorView, Dtype, SafeTensors};
use sha2::{Digest, Sha256};

use super::params::{block_tensor_shapes, head_tensor_shapes, BlockDims, BlockParams, FrozenHead};

/// What can go wrong between a manifest's dims and a safetensors file.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid safetensors file: {message}")]
    Corrupt { path: PathBuf, message: String },
    #[error("{path}: tensor `{name}` is missing (expected shape {expected:?})")]
    Missing {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
    },
    #[error("{path}: tensor `{name}` has shape {found:?}, the manifest dims expect {expected:?}")]
    Shape {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("{path}: tensor `{name}` has dtype {found}, expected F32 (or F16)")]
    Dtype {
        path: PathBuf,
        name: String,
        found: String,
    },
    #[error("{path}: metadata `{key}` is missing or not a number")]
    Metadata { path: PathBuf, key: String },
    #[error("invalid block dims {0:?}")]
    Dims(BlockDims),
    #[error("cannot write {path}: {message}")]
    Write { path: PathBuf, message: String },
    /// The file's tensors do not match the checksum it carries: the bytes were damaged.
    #[error("{path} is damaged: its tensors do not match the checksum it carries")]
    Checksum { path: PathBuf },
    /// A tensor holds NaN or an infinity.
    #[error("{path}: tensor `{name}` holds a value that is not finite")]
    NonFinite { path: PathBuf, name: String },
}

/// A safetensors file read into memory, with typed, shape-checked access by name.
#[derive(Debug)]
pub struct TensorFile {
    path: PathBuf,
    bytes: Vec<u8>,
    metadata: HashMap<String, String>,
}

impl TensorFile {
    /// Reads and validates the header of `path`.
    pub fn open(path: &Path) -> Result<Self, WeightsError> {
        let bytes = std::fs::read(path).map_err(|source| WeightsError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| WeightsError::Corrupt {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let metadata = meta.metadata().clone().unwrap_or_default();
        // Validates offsets against the buffer once, so `get` cannot fail on layout.
        SafeTensors::deserialize(&bytes).map_err(|e| WeightsError::Corrupt {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Ok(TensorFile {
            path: path.to_path_buf(),
            bytes,
            metadata,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// SHA-256 (hex) of every tensor, by name: name, dtype, shape and bytes (see
    /// [`tensors_digest`]).
    pub fn digest(&self) -> Result<String, WeightsError> {
        let st = SafeTensors::deserialize(&self.bytes).map_err(|e| WeightsError::Corrupt {
            path: self.path.clone(),
            message: e.to_string(),
        })?;
        let mut all: Vec<(String, TensorView<'_>)> = st.tensors();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        let mut h = Sha256::new();
        for (name, view) in &all {
            digest_one(
                &mut h,
                name,
                &format!("{:?}", view.dtype()),
                view.shape(),
                view.data(),
            );
        }
        Ok(hex(&h.finalize()))
    }

    /// A string from the file's `__metadata__`.
    pub fn metadata(&self, key: &str) -> Option<&str> {
        self.metadata.get(key).map(String::as_str)
    }

    /// Tensor `name` as f32, checked against `shape` (f16 is converted).
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, WeightsError> {
        let st = SafeTensors::deserialize(&self.bytes).map_err(|e| WeightsError::Corrupt {
            path: self.path.clone(),
            message: e.to_string(),
        })?;
        let view = st.tensor(name).map_err(|_| WeightsError::Missing {
            path: self.path.clone(),
            name: name.to_string(),
            expected: shape.to_vec(),
        })?;
        if view.shape() != shape {
            return Err(WeightsError::Shape {
                path: self.path.clone(),
                name: name.to_string(),
                expected: shape.to_vec(),
                found: view.shape().to_vec(),
            });
        }
        let data = view.data();
        match view.dtype() {
            Dtype::F32 => Ok(data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()),
            Dtype::F16 => Ok(data
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect()),
            other => Err(WeightsError::Dtype {
                path: self.path.clone(),
                name: name.to_string(),
                found: format!("{other:?}"),
            }),
        }
    }

    /// The block's trainable tensors.
    pub fn block_params(&self, dims: &BlockDims) -> Result<BlockParams, WeightsError> {
        let mut p = BlockParams::zeros(dims);
        for (t, (name, shape)) in p.tensors_mut().into_iter().zip(block_tensor_shapes(dims)) {
            *t = self.get(name, &shape)?.into();
        }
        Ok(p)
    }

    /// Tensors of the block's shapes stored under `prefix` + the usual names.
    pub fn block_params_prefixed(
        &self,
        dims: &BlockDims,
        prefix: &str,
    ) -> Result<BlockParams, WeightsError> {
        let mut p = BlockParams::zeros(dims);
        for (t, (name, shape)) in p.tensors_mut().into_iter().zip(block_tensor_shapes(dims)) {
            *t = self.get(&format!("{prefix}{name}"), &shape)?.into();
        }
        Ok(p)
    }

    /// The frozen head (`ln_post`, `proj`).
    pub fn frozen_head(&self, dims: &BlockDims) -> Result<FrozenHead, WeightsError> {
        let [w, b, p] = head_tensor_shapes(dims);
        Ok(FrozenHead {
            ln_post_w: self.get(w.0, &w.1)?.into(),
            ln_post_b: self.get(b.0, &b.1)?.into(),
            proj: self.get(p.0, &p.1)?.into(),
        })
    }
}

/// Loads `last_block.safetensors`: the block's tensors and the frozen head, each checked
/// against `dims` (missing tensor, wrong shape, wrong dtype and corrupt files are errors).
pub fn load_block(
    path: &Path,
    dims: &BlockDims,
) -> Result<(BlockParams, FrozenHead), WeightsError> {
    if !dims.is_valid() {
        return Err(WeightsError::Dims(*dims));
    }
    let f = TensorFile::open(path)?;
    Ok((f.block_params(dims)?, f.frozen_head(dims)?))
}

/// One f32 tensor to write.
#[derive(Debug)]
pub struct NamedTensor<'a> {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: &'a [f32],
}

/// Writes f32 tensors and string metadata to `path` (atomically: temp file + rename).
pub fn write_tensors(
    path: &Path,
    tensors: &[NamedTensor<'_>],
    metadata: HashMap<String, String>,
) -> Result<(), WeightsError> {
    let werr = |message: String| WeightsError::Write {
        path: path.to_path_buf(),
        message,
    };
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|t| t.data.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let mut views = Vec::with_capacity(tensors.len());
    for (t, b) in tensors.iter().zip(&bytes) {
        if t.shape.iter().product::<usize>() != t.data.len() {
            return Err(werr(format!(
                "tensor `{}`: shape {:?} vs {} values",
                t.name,
                t.shape,
                t.data.len()
            )));
        }
        let v = TensorView::new(Dtype::F32, t.shape.clone(), b)
            .map_err(|e| werr(format!("tensor `{}`: {e}", t.name)))?;
        views.push((t.name.clone(), v));
    }
    let meta = if metadata.is_empty() {
        None
    } else {
        Some(metadata)
    };
    safetensors::serialize_to_file(views, meta, path).map_err(|e| werr(e.to_string()))
}

/// The block's and the head's tensors under their `last_block.safetensors` names.
pub fn block_named_tensors<'a>(
    dims: &BlockDims,
    params: &'a BlockParams,
    head: &'a FrozenHead,
) -> Vec<NamedTensor<'a>> {
    let mut out: Vec<NamedTensor<'a>> = block_tensor_shapes(dims)
        .into_iter()
        .zip(params.tensors())
        .map(|((name, shape), data)| NamedTensor {
            name: name.to_string(),
            shape,
            data,
        })
        .collect();
    out.extend(
        head_tensor_shapes(dims)
            .into_iter()
            .zip(head.tensors())
            .map(|((name, shape), data)| NamedTensor {
                name: name.to_string(),
                shape,
                data,
            }),
    );
    out
}

/// Saves a block and its head as a `last_block.safetensors`-compatible file.
pub fn save_block(
    path: &Path,
    dims: &BlockDims,
    params: &BlockParams,
    head: &FrozenHead,
) -> Result<(), WeightsError> {
    write_tensors(
        path,
        &block_named_tensors(dims, params, head),
        HashMap::new(),
    )
}

/// SHA-256 (hex) of f32 tensors as [`TensorFile::digest`] computes it from a file.
pub fn tensors_digest(tensors: &[NamedTensor<'_>]) -> String {
    let mut sorted: Vec<&NamedTensor<'_>> = tensors.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut h = Sha256::new();
    for t in sorted {
        let bytes: Vec<u8> = t.data.iter().flat_map(|x| x.to_le_bytes()).collect();
        digest_one(&mut h, &t.name, "F32", &t.shape, &bytes);
    }
    hex(&h.finalize())
}

fn digest_one(h: &mut Sha256, name: &str, dtype: &str, shape: &[usize], data: &[u8]) {
    h.update((name.len() as u64).to_le_bytes());
    h.update(name.as_bytes());
    h.update((dtype.len() as u64).to_le_bytes());
    h.update(dtype.as_bytes());
    h.update((shape.len() as u64).to_le_bytes());
    for &d in shape {
        h.update((d as u64).to_le_bytes());
    }
    h.update((data.len() as u64).to_le_bytes());
    h.update(data);
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
