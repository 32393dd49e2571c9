//! Prediction over any label set (SPEC §2): the original model's `P_o(y|x) =
//! softmax_y(τ z_o·e_y)`, ranked.

use std::path::PathBuf;
use std::sync::Arc;

use safetensors::{Dtype, SafeTensors};

use anytime_core::mixing::{self, dot};

use crate::assets::{AssetsError, ModelAssets, LAST_BLOCK};
use crate::block::{LastBlock, WeightsError};
use crate::encoder::{DynamicImage, Encoder, EncoderError};

/// Fixed inputs and the exporting framework's outputs, in models exported from a real
/// checkpoint (`models/README.md`); checked at every load.
pub const REFERENCE: &str = "reference.safetensors";
/// Max abs difference of normalised embeddings the load-time check allows (the golden
/// test holds 1e-4; a wrong head count or image size is off by > 1e-2).
const REFERENCE_TOL: f32 = 1e-3;

/// The fixed logit scale τ.
pub const LOGIT_SCALE: f32 = 100.0;

/// Errors of prediction.
#[derive(Debug, thiserror::Error)]
pub enum PredictError {
    #[error(transparent)]
    Assets(#[from] AssetsError),
    #[error(transparent)]
    Encoder(#[from] EncoderError),
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error("token value at index {index} is not finite")]
    NonFinite { index: usize },
    #[error(
        "{file}: the model does not reproduce its reference output (max |diff| {diff:.2e}, \
         allowed {tol:.0e}); do manifest.toml's [dims] match the model files?"
    )]
    Reference { file: PathBuf, diff: f32, tol: f32 },
    #[error("{file}: {message}")]
    ReferenceFile { file: PathBuf, message: String },
    #[error("tokens of length {found} are not a whole batch of [N={tokens}, D={width}] sets")]
    Tokens {
        found: usize,
        tokens: usize,
        width: usize,
    },
}

/// A checked label set with its L2-normalised text embeddings `[k, E]`.
#[derive(Debug, Clone)]
pub struct LabelSet {
    pub labels: Vec<String>,
    pub text: Vec<f32>,
}

impl LabelSet {
    /// Checks `labels` and embeds their prompts with `encoder` (cached).
    pub fn embed<S: AsRef<str>>(encoder: &Encoder, labels: &[S]) -> Result<Self, EncoderError> {
        let text = encoder.encode_texts(labels)?;
        let labels = crate::encoder::check_labels(labels)?;
        Ok(Self { labels, text })
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// The answer for one image.
#[derive(Debug, Clone)]
pub struct Prediction {
    /// Which model produced the probabilities ("original", or "mixed" with OCW).
    pub model: &'static str,
    /// Probabilities in label-set order.
    pub probs: Vec<f32>,
    /// `(label, probability)`, most probable first.
    pub ranked: Vec<(String, f32)>,
    /// `P_t(other|x)` when a tuned model took part.
    pub other: Option<f32>,
    /// How atypical the image is of its best label, in standard deviations (see
    /// [`crate::typicality`]): high for an image of none of the labels. `None` where the
    /// best label was not learned (or not on enough samples yet).
    pub none_score: Option<f32>,
}

impl Prediction {
    pub fn new(
        model: &'static str,
        probs: Vec<f32>,
        labels: &[String],
        other: Option<f32>,
    ) -> Self {
        let mut ranked: Vec<(String, f32)> =
            labels.iter().cloned().zip(probs.iter().copied()).collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
        Self {
            model,
            probs,
            ranked,
            other,
            none_score: None,
        }
    }

    /// Index (in label-set order) of the most probable label (0 when none is a number).
    pub fn best(&self) -> usize {
        mixing::argmax(&self.probs).unwrap_or(0)
    }
}

/// Zero-shot CLIP: the frozen encoder and the original last block.
#[derive(Debug)]
pub struct Predictor {
    /// Shared so that images and labels can be encoded without holding a learner's lock.
    pub encoder: Arc<Encoder>,
    pub original: LastBlock,
}

impl Predictor {
    /// Finds and loads a model by name or path.
    pub fn load(name_or_path: &str) -> Result<Self, PredictError> {
        let assets = ModelAssets::find(name_or_path)?;
        Self::from_assets(&assets)
    }

    pub fn from_assets(assets: &ModelAssets) -> Result<Self, PredictError> {
        assets.verify_file(LAST_BLOCK)?;
        let encoder = Arc::new(Encoder::load(assets)?);
        let original = LastBlock::load(&assets.file(LAST_BLOCK), assets.dims().block())?;
        let p = Self { encoder, original };
        p.check_reference(assets)?;
        Ok(p)
    }

    /// Where the manifest lists [`REFERENCE`]: the first reference image through trunk and
    /// block must give the reference embedding, so that `[dims]` that do not match the
    /// files (a wrong head count, say) are refused instead of silently predicting wrong.
    fn check_reference(&self, assets: &ModelAssets) -> Result<(), PredictError> {
        if !assets.manifest.files.contains_key(REFERENCE) {
            return Ok(());
        }
        assets.verify_file(REFERENCE)?;
        let file = assets.file(REFERENCE);
        let bad = |message: String| PredictError::ReferenceFile {
            file: file.clone(),
            message,
        };
        let bytes = std::fs::read(&file).map_err(|e| bad(e.to_string()))?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
        let first_row = |name: &str, row: usize| -> Result<Vec<f32>, PredictError> {
            let t = st.tensor(name).map_err(|e| bad(format!("{name}: {e}")))?;
            let shape = t.shape();
            if t.dtype() != Dtype::F32 || shape.len() < 2 || shape[0] == 0 {
                return Err(bad(format!(
                    "{name}: expected f32 [B, ..], found {:?} {shape:?}",
                    t.dtype()
                )));
            }
            let per: usize = shape[1..].iter().product();
            if per != row {
                return Err(bad(format!(
                    "{name} has rows of {per} values; manifest.toml's [dims] make {row}"
                )));
            }
            Ok(t.data()[..4 * per]
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect())
        };
        let d = self.encoder.dims();
        let pixels = first_row("pixels", 3 * d.image_size * d.image_size)?;
        let reference = first_row("image_embeds", d.embed_dim)?;
        let ours = self.embed(&self.encoder.encode_pixels(1, &pixels)?)?;
        let want = crate::encoder::l2_normalised(&reference);
        let diff = ours
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, |m, x| {
                if x.is_nan() || m.is_nan() {
                    f32::NAN
                } else {
                    m.max(x)
                }
            });
        if diff.is_nan() || diff > REFERENCE_TOL {
            return Err(PredictError::Reference {
                file,
                diff,
                tol: REFERENCE_TOL,
            });
        }
        Ok(())
    }

    /// Checks labels and embeds their prompts (cached).
    pub fn label_set<S: AsRef<str>>(&self, labels: &[S]) -> Result<LabelSet, PredictError> {
        Ok(LabelSet::embed(&self.encoder, labels)?)
    }

    /// `P_o` for images.
    pub fn predict(
        &self,
        images: &[DynamicImage],
        set: &LabelSet,
    ) -> Result<Vec<Prediction>, PredictError> {
        let tokens = self.encoder.encode_images(images)?;
        self.predict_tokens(&tokens, set)
    }

    /// `P_o` for trunk tokens `[B, N, D]`.
    pub fn predict_tokens(
        &self,
        tokens: &[f32],
        set: &LabelSet,
    ) -> Result<Vec<Prediction>, PredictError> {
        let z = self.embed(tokens)?;
        let e = self.encoder.dims().embed_dim;
        Ok(z.chunks(e)
            .map(|zi| {
                let p = zero_shot_probs(zi, &set.text, LOGIT_SCALE);
                Prediction::new("original", p, &set.labels, None)
            })
            .collect())
    }

    /// L2-normalised original-model embeddings `[B, E]` for tokens `[B, N, D]`.
    pub fn embed(&self, tokens: &[f32]) -> Result<Vec<f32>, PredictError> {
        let d = self.encoder.dims();
        let per = d.tokens() * d.width;
        if tokens.is_empty() || !tokens.len().is_multiple_of(per) {
            return Err(PredictError::Tokens {
                found: tokens.len(),
                tokens: d.tokens(),
                width: d.width,
            });
        }
        if let Some(index) = tokens.iter().position(|v| !v.is_finite()) {
            return Err(PredictError::NonFinite { index });
        }
        Ok(self.original.forward_embeddings(tokens, tokens.len() / per))
    }
}

/// `τ z·e_y` for each row `e_y` of `text` (`[k, E]`).
pub fn logits(z: &[f32], text: &[f32], scale: f32) -> Vec<f32> {
    text.chunks(z.len()).map(|e| scale * dot(z, e)).collect()
}

/// `softmax_y(τ z·e_y)` over the rows of `text` (`[k, E]`).
pub fn zero_shot_probs(z: &[f32], text: &[f32], scale: f32) -> Vec<f32> {
    let mut p = logits(z, text, scale);
    mixing::softmax_in_place(&mut p);
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_shot_prefers_the_closest_text() {
        let z = [0.6, 0.8];
        let text = [1.0, 0.0, 0.0, 1.0, -1.0, 0.0];
        let p = zero_shot_probs(&z, &text, LOGIT_SCALE);
        assert_eq!(mixing::argmax(&p), Some(1));
        assert!(anytime_testkit::close(
            p.iter().sum::<f32>(),
            1.0,
            1e-6,
            0.0
        ));
        // τ = 100: a cosine gap of 0.2 is a factor e^20.
        assert!((p[1] / p[0] - 20f32.exp()).abs() / 20f32.exp() < 1e-3);
    }

    #[test]
    fn ranking_is_by_probability() {
        let labels = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        let p = Prediction::new("original", vec![0.2, 0.5, 0.3], &labels, None);
        let order: Vec<&str> = p.ranked.iter().map(|(l, _)| l.as_str()).collect();
        assert_eq!(order, ["b", "c", "a"]);
        assert_eq!(p.best(), 1);
    }
}
