//! Finding a model on disk and reading its manifest.
//!
//! A model is a folder holding `manifest.toml`, `visual_trunk.onnx`,
//! `last_block.safetensors`, `textual.onnx` and `tokenizer.json` (see
//! `models/README.md`). It is found by path, or by name under
//! `$ANYTIME_EDGE_ASSETS/models/`, or among the models bundled with the
//! project (`models/` of the workspace, which holds the generated tiny model).

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// Environment variable naming the folder that holds real assets
/// (`models/NAME/`, `data/NAME/`).
pub const ASSETS_ENV: &str = "ANYTIME_EDGE_ASSETS";

/// The files every model folder must hold, besides `manifest.toml`.
pub const MODEL_FILES: [&str; 4] = [VISUAL_TRUNK, LAST_BLOCK, TEXTUAL, TOKENIZER];
pub const VISUAL_TRUNK: &str = "visual_trunk.onnx";
pub const LAST_BLOCK: &str = "last_block.safetensors";
pub const TEXTUAL: &str = "textual.onnx";
pub const TOKENIZER: &str = "tokenizer.json";
pub const MANIFEST: &str = "manifest.toml";

/// Errors while locating or checking a model.
#[derive(Debug, thiserror::Error)]
pub enum AssetsError {
    #[error("model `{name}` not found; looked in: {}", display_paths(.tried))]
    NotFound { name: String, tried: Vec<PathBuf> },
    #[error("model folder {dir} has no `{file}`")]
    MissingFile { dir: PathBuf, file: String },
    #[error("cannot read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid manifest {path}: {message}")]
    Manifest { path: PathBuf, message: String },
    #[error("checksum mismatch for {path}: manifest says sha256 {expected}, file has {found}")]
    Checksum {
        path: PathBuf,
        expected: String,
        found: String,
    },
}

fn display_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Architecture figures of a CLIP model, as written in `manifest.toml` `[dims]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dims {
    /// Visual token width `D`.
    pub width: usize,
    /// Visual attention heads.
    pub heads: usize,
    /// Visual transformer blocks in total (the trunk holds `layers - 1`).
    pub layers: usize,
    /// Patch size in pixels.
    pub patch: usize,
    /// Input image side in pixels.
    pub image_size: usize,
    /// MLP hidden width of the visual blocks.
    pub mlp: usize,
    /// Joint embedding width `E`.
    pub embed_dim: usize,
    /// Text context length in tokens.
    pub context_length: usize,
    pub vocab_size: usize,
    pub text_width: usize,
    pub text_heads: usize,
    pub text_layers: usize,
}

impl Dims {
    /// Tokens per image `N`: patches plus the class token.
    pub fn tokens(&self) -> usize {
        let side = self.image_size / self.patch;
        side * side + 1
    }

    /// Shapes of the last block and its head.
    pub fn block(&self) -> crate::block::BlockDims {
        crate::block::BlockDims {
            width: self.width,
            heads: self.heads,
            mlp: self.mlp,
            tokens: self.tokens(),
            embed: self.embed_dim,
        }
    }

    fn check(&self) -> Result<(), String> {
        let positive = [
            ("width", self.width),
            ("heads", self.heads),
            ("layers", self.layers),
            ("patch", self.patch),
            ("image_size", self.image_size),
            ("mlp", self.mlp),
            ("embed_dim", self.embed_dim),
            ("context_length", self.context_length),
            ("vocab_size", self.vocab_size),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("dims.{name} must be positive"));
        }
        if !self.width.is_multiple_of(self.heads) {
            return Err(format!(
                "dims.width {} is not divisible by dims.heads {}",
                self.width, self.heads
            ));
        }
        if !self.image_size.is_multiple_of(self.patch) {
            return Err(format!(
                "dims.image_size {} is not a multiple of dims.patch {}",
                self.image_size, self.patch
            ));
        }
        if self.layers < 2 {
            return Err("dims.layers must be at least 2 (a trunk and a last block)".into());
        }
        // Absurd sizes are rejected before anything is allocated for them.
        if self.width > 8192 || self.image_size > 4096 || self.context_length > 4096 {
            return Err("dims are implausibly large".into());
        }
        let bounds = [
            ("mlp", self.mlp, 16 * self.width),
            ("embed_dim", self.embed_dim, 8192),
            ("heads", self.heads, self.width),
            ("layers", self.layers, 256),
            ("vocab_size", self.vocab_size, 1 << 20),
            ("text_width", self.text_width, 8192),
            ("text_heads", self.text_heads, self.text_width.max(1)),
            ("text_layers", self.text_layers, 256),
        ];
        if let Some((name, v, max)) = bounds.iter().find(|(_, v, max)| v > max) {
            return Err(format!(
                "dims.{name} = {v} is implausibly large (at most {max})"
            ));
        }
        Ok(())
    }
}

/// Image normalisation constants (`[preprocess]` in the manifest).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preprocess {
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Default for Preprocess {
    /// CLIP's published constants.
    fn default() -> Self {
        Self {
            mean: [0.481_454_66, 0.457_827_5, 0.408_210_73],
            std: [0.268_629_54, 0.261_302_6, 0.275_777_1],
        }
    }
}

/// The parsed `manifest.toml` of a model.
#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    pub name: String,
    pub source: String,
    pub licence: String,
    pub dims: Dims,
    #[serde(default)]
    pub preprocess: Preprocess,
    /// The learner's settings chosen for this model (`[learner]`, optional).
    #[serde(default)]
    pub learner: LearnerDefaults,
    /// sha256 (lower-case hex) of each file, by file name.
    pub files: BTreeMap<String, String>,
}

/// Learner settings a model ships with (`[learner]` in the manifest); each is used where
/// the caller sets none.
#[derive(Debug, Clone, Copy, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LearnerDefaults {
    /// AdamW learning rate of the tuned block (positive and finite).
    pub lr: Option<f32>,
}

/// A located model folder with its manifest.
#[derive(Debug, Clone)]
pub struct ModelAssets {
    pub dir: PathBuf,
    pub manifest: Manifest,
}

impl ModelAssets {
    /// Finds a model by path (a folder holding `manifest.toml`) or by name, in
    /// `$ANYTIME_EDGE_ASSETS/models/NAME`, then in the project's bundled `models/NAME`.
    pub fn find(name_or_path: &str) -> Result<Self, AssetsError> {
        let mut tried = Vec::new();
        for dir in candidate_dirs(name_or_path) {
            if dir.join(MANIFEST).is_file() {
                return Self::open(&dir);
            }
            tried.push(dir);
        }
        Err(AssetsError::NotFound {
            name: name_or_path.to_string(),
            tried,
        })
    }

    /// Opens the model folder `dir`, parses and checks its manifest, and checks that
    /// every model file is present (checksums are verified by [`ModelAssets::verify`]).
    pub fn open(dir: &Path) -> Result<Self, AssetsError> {
        let path = dir.join(MANIFEST);
        let text = fs::read_to_string(&path).map_err(|source| AssetsError::Io {
            path: path.clone(),
            source,
        })?;
        let manifest: Manifest = toml::from_str(&text).map_err(|e| AssetsError::Manifest {
            path: path.clone(),
            message: e.to_string(),
        })?;
        manifest
            .dims
            .check()
            .map_err(|message| AssetsError::Manifest {
                path: path.clone(),
                message,
            })?;
        if let Some(lr) = manifest
            .learner
            .lr
            .filter(|lr| !(lr.is_finite() && *lr > 0.0))
        {
            return Err(AssetsError::Manifest {
                path,
                message: format!("[learner] lr = {lr} is not a positive finite number"),
            });
        }
        for file in MODEL_FILES {
            if !dir.join(file).is_file() {
                return Err(AssetsError::MissingFile {
                    dir: dir.to_path_buf(),
                    file: file.to_string(),
                });
            }
            if !manifest.files.contains_key(file) {
                return Err(AssetsError::Manifest {
                    path: path.clone(),
                    message: format!("[files] has no sha256 for `{file}`"),
                });
            }
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            manifest,
        })
    }

    /// Path of one of the model's files.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn dims(&self) -> Dims {
        self.manifest.dims
    }

    /// Verifies the sha256 of `file` against the manifest.
    pub fn verify_file(&self, file: &str) -> Result<(), AssetsError> {
        let path = self.file(file);
        let Some(expected) = self.manifest.files.get(file) else {
            return Err(AssetsError::Manifest {
                path: self.file(MANIFEST),
                message: format!("[files] has no sha256 for `{file}`"),
            });
        };
        let found = sha256_file(&path)?;
        if !found.eq_ignore_ascii_case(expected) {
            return Err(AssetsError::Checksum {
                path,
                expected: expected.clone(),
                found,
            });
        }
        Ok(())
    }

    /// Verifies the sha256 of every file listed in the manifest.
    pub fn verify(&self) -> Result<(), AssetsError> {
        self.manifest
            .files
            .keys()
            .try_for_each(|file| self.verify_file(file))
    }
}

/// Where a model called `name_or_path` may live, in search order.
fn candidate_dirs(name_or_path: &str) -> Vec<PathBuf> {
    let mut dirs = vec![PathBuf::from(name_or_path)];
    let is_plain_name = !name_or_path.is_empty()
        && !name_or_path.contains(['/', '\\'])
        && name_or_path != "."
        && name_or_path != "..";
    if is_plain_name {
        if let Some(root) = std::env::var_os(ASSETS_ENV) {
            dirs.push(PathBuf::from(root).join("models").join(name_or_path));
        }
        dirs.push(bundled_models_dir().join(name_or_path));
    }
    dirs
}

/// The project's own `models/` folder (the generated tiny model lives there).
pub fn bundled_models_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models");
    dir.canonicalize().unwrap_or(dir)
}

/// The folder named by `$ANYTIME_EDGE_ASSETS`, if set.
pub fn assets_root() -> Option<PathBuf> {
    std::env::var_os(ASSETS_ENV).map(PathBuf::from)
}

/// Lower-case hex sha256 of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<String, AssetsError> {
    let io = |source| AssetsError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = fs::File::open(path).map_err(io)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_model_names_every_place_tried() {
        let err = ModelAssets::find("no-such-model-xyz").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("no-such-model-xyz"), "{msg}");
        assert!(msg.contains("models"), "{msg}");
        assert!(matches!(err, AssetsError::NotFound { .. }));
    }

    #[test]
    fn dims_reject_inconsistent_figures() {
        let mut d = Dims {
            width: 64,
            heads: 4,
            layers: 3,
            patch: 8,
            image_size: 56,
            mlp: 256,
            embed_dim: 32,
            context_length: 16,
            vocab_size: 100,
            text_width: 32,
            text_heads: 2,
            text_layers: 2,
        };
        assert!(d.check().is_ok());
        assert_eq!(d.tokens(), 50);
        d.heads = 5;
        assert!(d.check().unwrap_err().contains("divisible"));
        d.heads = 4;
        d.image_size = 60;
        assert!(d.check().unwrap_err().contains("multiple"));
        d.image_size = 56;
        // Refused before anything is allocated for them.
        for (set, name) in [
            (
                (|d: &mut Dims| d.mlp = 100_000_000_000) as fn(&mut Dims),
                "dims.mlp",
            ),
            (|d| d.layers = 100_000, "dims.layers"),
            (|d| d.embed_dim = 1 << 30, "dims.embed_dim"),
            (|d| d.vocab_size = 1 << 40, "dims.vocab_size"),
            (|d| d.text_layers = 1 << 20, "dims.text_layers"),
        ] {
            let mut big = d;
            set(&mut big);
            let e = big.check().unwrap_err();
            assert!(e.contains(name) && e.contains("implausibly large"), "{e}");
        }
    }
}
