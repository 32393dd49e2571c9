//! Methods the simulator compares, behind one trait, and the two baselines that
//! need no training: zero-shot CLIP and nearest class mean on CLIP embeddings.
//! The learner's variants (full OCW, tuned only, ablations) implement the same
//! trait on top of `anytime_runtime`.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{ensure, Context, Result};
use anytime_core::mixing::{argmax, dot};

use super::metrics::{Consolidation, StageSteps};

/// What a method is given of one image.
#[derive(Debug, Clone, Copy)]
pub struct Features<'a> {
    /// Trunk tokens `[N, D]`, filled for methods that ask ([`Method::needs_tokens`]).
    pub tokens: Option<&'a [f32]>,
    /// Image embedding of the original model, L2-normalised `[E]`.
    pub embedding: &'a [f32],
}

/// A continual learner (or a baseline) under evaluation.
pub trait Method {
    /// Short name used in reports and plots.
    fn name(&self) -> &str;
    /// Learns from one new labelled sample (global label id).
    fn observe(&mut self, x: &Features<'_>, label: u16) -> Result<()>;
    /// Picks one of `candidates` (global label ids); returns its index.
    fn predict(&mut self, x: &Features<'_>, candidates: &[u16]) -> Result<usize>;
    /// Picks one of `candidates` and says how likely the image is none of them
    /// ("none of the above"); `None` when the method has no such signal.
    fn predict_open(&mut self, _x: &Features<'_>, _candidates: &[u16]) -> Result<Option<OpenPick>> {
        Ok(None)
    }
    /// Bytes the method keeps for everything it has observed.
    fn stored_bytes(&self) -> u64 {
        0
    }
    /// Training steps taken so far.
    fn train_steps(&self) -> u64 {
        0
    }
    /// Whether [`Features::tokens`] must be filled (read from the token cache).
    fn needs_tokens(&self) -> bool {
        false
    }
    /// Total seconds spent learning so far, for methods that account it themselves
    /// (methods sharing one learner); `None`: the runner times [`Method::observe`],
    /// [`Method::observe_unlabelled`] and [`Method::end_stage`].
    fn update_seconds(&self) -> Option<f64> {
        None
    }
    /// Whether the method learns from samples without their label (diet protocol):
    /// only then does the runner call [`Method::observe_unlabelled`].
    fn takes_unlabelled(&self) -> bool {
        false
    }
    /// Learns from one new sample whose label is not given.
    fn observe_unlabelled(&mut self, _x: &Features<'_>) -> Result<()> {
        Ok(())
    }
    /// The stage (a diet time step) has delivered all its samples: a method under a
    /// step budget trains now and says what it spent; the others return `None`.
    fn end_stage(&mut self) -> Result<Option<StageSteps>> {
        Ok(None)
    }
    /// The consolidation (SPEC §7) the last [`Method::end_stage`] ran, for a private
    /// learner.
    fn consolidation(&self) -> Option<Consolidation> {
        None
    }
    /// `count` synthetic token sets `[count, N, D]` of the learned `label` (a private
    /// learner's generator), for the privacy audit; `None` for other methods.
    fn synthetic_tokens(
        &mut self,
        _label: u16,
        _count: usize,
        _seed: u64,
    ) -> Result<Option<Vec<f32>>> {
        Ok(None)
    }
}

/// A pick with signals that the image is none of the candidates.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenPick {
    pub pick: usize,
    /// The same signals in the same order on every call.
    pub signals: Vec<NoneSignal>,
}

/// One "none of the above" signal of one image: higher when the image is more likely none
/// of the candidates; "none" is answered above `threshold` (the operating point reported).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NoneSignal {
    pub name: &'static str,
    pub value: f64,
    pub threshold: f64,
}

/// The probabilities `softmax(τ · scores)` with CLIP's fixed `τ = 100`, and their maximum.
pub fn max_softmax(scores: &[f32]) -> f64 {
    let m = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = scores
        .iter()
        .map(|&s| (100.0 * f64::from(s - m)).exp())
        .sum();
    1.0 / sum
}

/// L2-normalised text embeddings of every global label, `[labels, E]` row-major.
#[derive(Debug, Clone)]
pub struct LabelEmbeddings {
    dim: usize,
    rows: Vec<f32>,
}

impl LabelEmbeddings {
    /// Wraps `rows` (`[k, dim]`); every row is L2-normalised here.
    pub fn new(dim: usize, mut rows: Vec<f32>) -> Result<Self> {
        ensure!(
            dim > 0 && rows.len().is_multiple_of(dim),
            "{} values are not rows of {dim}",
            rows.len()
        );
        for r in rows.chunks_exact_mut(dim) {
            normalise(r);
        }
        Ok(Self { dim, rows })
    }

    /// Number of labels.
    pub fn len(&self) -> usize {
        self.rows.len() / self.dim
    }

    /// The embedding of global label `label`.
    pub fn row(&self, label: u16) -> Result<&[f32]> {
        let i = usize::from(label) * self.dim;
        self.rows.get(i..i + self.dim).with_context(|| {
            format!(
                "no text embedding for label {label} ({} labels)",
                self.len()
            )
        })
    }
}

/// Scales `v` to unit length (left as it is when it is all zeros).
pub fn normalise(v: &mut [f32]) {
    anytime_runtime::block::l2_normalise(v, v.len().max(1));
}

fn pick(scores: &[f32]) -> Result<usize> {
    argmax(scores).context("no candidate label to choose from")
}

/// Zero-shot CLIP: the candidate whose text embedding is closest (cosine) to the
/// image embedding. Learns nothing.
#[derive(Debug, Clone)]
pub struct ZeroShot {
    text: Arc<LabelEmbeddings>,
}

impl ZeroShot {
    pub fn new(text: Arc<LabelEmbeddings>) -> Self {
        Self { text }
    }
}

impl Method for ZeroShot {
    fn name(&self) -> &str {
        "zero-shot"
    }

    fn observe(&mut self, _x: &Features<'_>, _label: u16) -> Result<()> {
        Ok(())
    }

    fn predict(&mut self, x: &Features<'_>, candidates: &[u16]) -> Result<usize> {
        let scores = candidates
            .iter()
            .map(|&l| Ok(dot(x.embedding, self.text.row(l)?)))
            .collect::<Result<Vec<f32>>>()?;
        pick(&scores)
    }

    /// The maximum softmax probability's complement (the classic open-set baseline).
    fn predict_open(&mut self, x: &Features<'_>, candidates: &[u16]) -> Result<Option<OpenPick>> {
        let scores = candidates
            .iter()
            .map(|&l| Ok(dot(x.embedding, self.text.row(l)?)))
            .collect::<Result<Vec<f32>>>()?;
        Ok(Some(OpenPick {
            pick: pick(&scores)?,
            signals: vec![NoneSignal {
                name: "1-max_p",
                value: 1.0 - max_softmax(&scores),
                threshold: 0.5,
            }],
        }))
    }
}

/// Nearest class mean on the original model's image embeddings: each observed
/// label's prototype is the normalised mean of its normalised embeddings; the
/// candidate with the most similar prototype wins. A label never observed falls
/// back to its text embedding (its zero-shot prototype), so the method answers for
/// any label set. Image–image cosines run higher than image–text ones, so observed
/// labels are favoured over unobserved ones; that is the baseline as it is.
#[derive(Debug, Clone)]
pub struct NearestClassMean {
    text: Arc<LabelEmbeddings>,
    sums: HashMap<u16, (Vec<f32>, u64)>,
}

impl NearestClassMean {
    pub fn new(text: Arc<LabelEmbeddings>) -> Self {
        Self {
            text,
            sums: HashMap::new(),
        }
    }

    /// The prototype of `label`: the class mean if observed, else the text embedding.
    pub fn prototype(&self, label: u16) -> Result<Vec<f32>> {
        match self.sums.get(&label) {
            Some((sum, _)) => {
                let mut p = sum.clone();
                normalise(&mut p);
                Ok(p)
            }
            None => Ok(self.text.row(label)?.to_vec()),
        }
    }
}

impl Method for NearestClassMean {
    fn name(&self) -> &str {
        "ncm"
    }

    fn observe(&mut self, x: &Features<'_>, label: u16) -> Result<()> {
        let dim = x.embedding.len();
        let (sum, n) = self
            .sums
            .entry(label)
            .or_insert_with(|| (vec![0.0; dim], 0));
        ensure!(
            sum.len() == dim,
            "embedding width {dim} changed from {}",
            sum.len()
        );
        let mut e = x.embedding.to_vec();
        normalise(&mut e);
        sum.iter_mut().zip(&e).for_each(|(s, v)| *s += v);
        *n += 1;
        Ok(())
    }

    fn predict(&mut self, x: &Features<'_>, candidates: &[u16]) -> Result<usize> {
        let scores = candidates
            .iter()
            .map(|&l| Ok(dot(x.embedding, &self.prototype(l)?)))
            .collect::<Result<Vec<f32>>>()?;
        pick(&scores)
    }

    /// One f32 sum per observed label and embedding channel.
    fn stored_bytes(&self) -> u64 {
        self.sums
            .values()
            .map(|(s, _)| 4 * s.len() as u64 + 8)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text() -> Arc<LabelEmbeddings> {
        // label 0 → x axis, 1 → y axis, 2 → z axis (given unnormalised)
        Arc::new(LabelEmbeddings::new(3, vec![2., 0., 0., 0., 3., 0., 0., 0., 0.5]).unwrap())
    }

    fn f(e: &[f32]) -> Features<'_> {
        Features {
            tokens: None,
            embedding: e,
        }
    }

    #[test]
    fn label_embeddings_are_normalised_and_checked() {
        let t = text();
        assert_eq!(t.row(1).unwrap(), [0., 1., 0.]);
        assert_eq!(t.len(), 3);
        assert!(t.row(3).is_err());
        assert!(LabelEmbeddings::new(3, vec![1.0; 4]).is_err());
    }

    #[test]
    fn zero_shot_is_argmax_cosine_over_candidates() {
        let mut z = ZeroShot::new(text());
        let x = [0.1, 0.9, 0.3];
        assert_eq!(z.predict(&f(&x), &[0, 1, 2]).unwrap(), 1);
        assert_eq!(z.predict(&f(&x), &[2, 0]).unwrap(), 0);
        assert!(z.predict(&f(&x), &[]).is_err());
        assert!(z.predict(&f(&x), &[7]).is_err());
        z.observe(&f(&x), 0).unwrap();
        assert_eq!(z.predict(&f(&x), &[0, 1, 2]).unwrap(), 1);
    }

    #[test]
    fn ncm_uses_class_means_and_falls_back_to_text() {
        let mut m = NearestClassMean::new(text());
        // images of label 2 all lie near the y axis, far from label 2's text (z)
        for e in [[0.1, 1.0, 0.0], [-0.1, 1.0, 0.1]] {
            m.observe(&f(&e), 2).unwrap();
        }
        let x = [0.0, 1.0, 0.05];
        // zero-shot would say label 1 (y axis); NCM now says label 2
        assert_eq!(m.predict(&f(&x), &[0, 1, 2]).unwrap(), 2);
        // without label 2 among the candidates, the text prototypes decide
        assert_eq!(m.predict(&f(&x), &[0, 1]).unwrap(), 1);
        assert_eq!(m.prototype(0).unwrap(), [1., 0., 0.]);
        assert_eq!(m.stored_bytes(), 4 * 3 + 8);
        assert!(m.observe(&f(&[1.0, 0.0]), 2).is_err());
    }
}
