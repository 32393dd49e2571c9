//! The frozen CLIP encoder: the visual trunk (blocks 0..L-2) and the text tower,
//! both run by tract, with CLIP's preprocessing and tokenizer and a cache of
//! label embeddings.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use anytime_runtime::assets::ModelAssets;
//! use anytime_runtime::encoder::{load_image, Encoder};
//! let assets = ModelAssets::find("tiny-clip")?;
//! let enc = Encoder::load(&assets)?;
//! let tokens = enc.encode_images(&[load_image("cat.png".as_ref())?])?; // [1, N, D]
//! let labels = enc.encode_texts(&["cat", "dog"])?; // [2, E], L2-normalised
//! # Ok(()) }
//! ```

mod graph;
mod image;
mod text;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

pub use self::image::{decode_image, load_image, preprocess_into, MAX_FILE_BYTES, MAX_IMAGE_SIDE};
pub use self::text::{check_label, check_labels, prompt, LabelError, MAX_LABELS, MAX_LABEL_BYTES};
pub use ::image::DynamicImage;

use crate::assets::{AssetsError, Dims, ModelAssets, Preprocess, TEXTUAL, TOKENIZER, VISUAL_TRUNK};
use graph::{Graph, InputType};
use text::ClipTokenizer;

/// Images per trunk call.
const IMAGE_CHUNK: usize = 8;
/// Prompts per text-tower call.
const TEXT_CHUNK: usize = 64;
/// Most label embeddings kept in the cache; when full it starts over (a server asked for
/// ever new labels must not grow without bound).
pub const LABEL_CACHE_MAX: usize = 4096;

/// Errors of the encoder.
#[derive(Debug, thiserror::Error)]
pub enum EncoderError {
    #[error(transparent)]
    Assets(#[from] AssetsError),
    #[error("cannot read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot use image {path}: {message}")]
    Image { path: PathBuf, message: String },
    #[error("ONNX model {file}: {message}")]
    Onnx { file: PathBuf, message: String },
    #[error("ONNX model {file} has the wrong {what}: expected {expected}, found {found}")]
    ModelShape {
        file: PathBuf,
        what: String,
        expected: String,
        found: String,
    },
    #[error("input for {file} has {found} values, expected {expected}")]
    InputLength {
        file: PathBuf,
        expected: usize,
        found: usize,
    },
    #[error("ONNX model {file} produced a non-finite value at output index {index}")]
    NonFinite { file: PathBuf, index: usize },
    #[error("tokenizer: {message}")]
    Tokenizer { message: String },
    #[error(transparent)]
    Label(#[from] LabelError),
}

/// Environment variable that limits the threads of the frozen encoders (default: every
/// core the process may use).
pub const THREADS_ENV: &str = "ANYTIME_EDGE_THREADS";

/// How the frozen encoders run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncoderOptions {
    /// Threads of the trunk's and the text tower's matrix products (at least 1).
    pub threads: usize,
}

impl Default for EncoderOptions {
    /// `$ANYTIME_EDGE_THREADS` when it is a positive number, else the cores available.
    fn default() -> Self {
        let threads = std::env::var(THREADS_ENV)
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .filter(|&n| n > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        Self { threads }
    }
}

/// The frozen CLIP encoder. Build it once with [`Encoder::load`] and reuse it; it is
/// `Sync`, so threads may share it (the label cache has its own lock).
#[derive(Debug)]
pub struct Encoder {
    dims: Dims,
    norm: Preprocess,
    trunk: Graph,
    text: Graph,
    tokenizer: ClipTokenizer,
    label_cache: Mutex<HashMap<String, Vec<f32>>>,
}

impl Encoder {
    /// Loads the visual trunk, the text tower and the tokenizer of a model,
    /// checking their sha256 against the manifest and their shapes against its dims.
    pub fn load(assets: &ModelAssets) -> Result<Self, EncoderError> {
        Self::load_with(assets, EncoderOptions::default())
    }

    /// [`Encoder::load`] with explicit options.
    pub fn load_with(assets: &ModelAssets, options: EncoderOptions) -> Result<Self, EncoderError> {
        let executor = graph::executor(options.threads.max(1));
        for file in [VISUAL_TRUNK, TEXTUAL, TOKENIZER] {
            assets.verify_file(file)?;
        }
        let dims = assets.dims();
        let s = dims.image_size;
        let trunk = Graph::load(
            &assets.file(VISUAL_TRUNK),
            InputType::F32,
            &[3, s, s],
            &[dims.tokens(), dims.width],
            executor.clone(),
        )?;
        let text = Graph::load(
            &assets.file(TEXTUAL),
            InputType::I64,
            &[dims.context_length],
            &[dims.embed_dim],
            executor,
        )?;
        let tokenizer = ClipTokenizer::load(&assets.file(TOKENIZER), dims.context_length)?;
        Ok(Self {
            dims,
            norm: assets.manifest.preprocess,
            trunk,
            text,
            tokenizer,
            label_cache: Mutex::new(HashMap::new()),
        })
    }

    pub fn dims(&self) -> Dims {
        self.dims
    }

    /// CLIP preprocessing of images into `[B, 3, S, S]` pixels.
    pub fn preprocess(&self, images: &[DynamicImage]) -> Vec<f32> {
        let mut out = Vec::with_capacity(images.len() * 3 * self.dims.image_size.pow(2));
        for img in images {
            preprocess_into(img, self.dims.image_size, &self.norm, &mut out);
        }
        out
    }

    /// Trunk output tokens `[B, N, D]` for preprocessed pixels `[B, 3, S, S]`.
    pub fn encode_pixels(&self, batch: usize, pixels: &[f32]) -> Result<Vec<f32>, EncoderError> {
        let per = 3 * self.dims.image_size.pow(2);
        if pixels.len() != batch * per {
            return Err(EncoderError::InputLength {
                file: VISUAL_TRUNK.into(),
                expected: batch * per,
                found: pixels.len(),
            });
        }
        if let Some(i) = pixels.iter().position(|v| !v.is_finite()) {
            return Err(EncoderError::Image {
                path: PathBuf::from("<pixels>"),
                message: format!("non-finite pixel value at index {i}"),
            });
        }
        let mut out = Vec::with_capacity(batch * self.trunk.output_len());
        for chunk in pixels.chunks(IMAGE_CHUNK * per) {
            out.extend(self.trunk.run_f32(chunk.len() / per, chunk)?);
        }
        Ok(out)
    }

    /// Trunk output tokens `[B, N, D]` (the last block's input) for images.
    pub fn encode_images(&self, images: &[DynamicImage]) -> Result<Vec<f32>, EncoderError> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let pixels = self.preprocess(images);
        self.encode_pixels(images.len(), &pixels)
    }

    /// Padded token ids of the prompt for each label, `[k, context]`.
    pub fn tokenize(&self, texts: &[&str]) -> Result<Vec<i64>, EncoderError> {
        let mut ids = Vec::with_capacity(texts.len() * self.dims.context_length);
        for t in texts {
            ids.extend(self.tokenizer.encode(t)?);
        }
        Ok(ids)
    }

    /// Raw (not normalised) text-tower outputs `[k, E]` for whole texts (no prompt).
    pub fn encode_raw_texts(&self, texts: &[&str]) -> Result<Vec<f32>, EncoderError> {
        let ctx = self.dims.context_length;
        let ids = self.tokenize(texts)?;
        let mut out = Vec::with_capacity(texts.len() * self.dims.embed_dim);
        for chunk in ids.chunks(TEXT_CHUNK * ctx) {
            out.extend(self.text.run_i64(chunk.len() / ctx, chunk)?);
        }
        Ok(out)
    }

    /// L2-normalised embeddings `[k, E]` of the prompts "a photo of a {label}."
    /// for a checked label set; computed once per label and cached (the text tower runs
    /// outside the cache's lock).
    pub fn encode_texts<S: AsRef<str>>(&self, labels: &[S]) -> Result<Vec<f32>, EncoderError> {
        let labels = check_labels(labels)?;
        let e = self.dims.embed_dim;
        let mut out = vec![0f32; labels.len() * e];
        let mut missing: Vec<usize> = Vec::new();
        {
            let cache = self.cache();
            for (i, l) in labels.iter().enumerate() {
                match cache.get(l) {
                    Some(v) => out[i * e..(i + 1) * e].copy_from_slice(v),
                    None => missing.push(i),
                }
            }
        }
        if missing.is_empty() {
            return Ok(out);
        }
        let prompts: Vec<String> = missing.iter().map(|&i| prompt(&labels[i])).collect();
        let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
        let raw = self.encode_raw_texts(&refs)?;
        let mut cache = self.cache();
        for (&i, row) in missing.iter().zip(raw.chunks(e)) {
            let v = l2_normalised(row);
            out[i * e..(i + 1) * e].copy_from_slice(&v);
            if cache.len() >= LABEL_CACHE_MAX {
                cache.clear();
            }
            cache.insert(labels[i].clone(), v);
        }
        Ok(out)
    }

    /// Labels whose embeddings are cached now.
    pub fn cached_labels(&self) -> usize {
        self.cache().len()
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<f32>>> {
        // The cache holds finished rows only: a panic elsewhere cannot leave it torn.
        self.label_cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// `v / ‖v‖` (a zero vector stays zero): [`crate::block::l2_normalise`] of one row.
pub fn l2_normalised(v: &[f32]) -> Vec<f32> {
    let mut out = v.to_vec();
    crate::block::l2_normalise(&mut out, v.len().max(1));
    out
}
