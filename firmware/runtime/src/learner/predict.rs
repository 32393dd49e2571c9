//! Prediction by a learner: the original model, the tuned one and their OCW mixture
//! (SPEC §2).

use anytime_core::mixing::{self, dot};

use super::{LearnError, Learner, Mixing, Trainer};
use crate::block::LastBlock;
use crate::encoder::DynamicImage;
use crate::predict::{logits, zero_shot_probs, LabelSet, Prediction, LOGIT_SCALE};
use crate::train::first_non_finite_params;
use crate::typicality;

impl Learner {
    /// The "none" calibration of a label (see [`crate::typicality`]), if it was learned.
    pub fn typicality(
        &mut self,
        label: &str,
    ) -> Result<Option<typicality::Typicality>, LearnError> {
        let Some(id) = self.store.find_label(label)? else {
            return Ok(None);
        };
        Ok(self.state.typical.get(id).copied())
    }

    /// Checks labels and embeds their prompts (cached).
    pub fn label_set<S: AsRef<str>>(&self, labels: &[S]) -> Result<LabelSet, LearnError> {
        Ok(self.predictor.label_set(labels)?)
    }

    /// The frozen encoder, shared: encode images
    /// ([`crate::encoder::Encoder::encode_images`]) and label sets ([`LabelSet::embed`])
    /// with it outside a lock that guards the learner, then hand the tokens to
    /// [`Learner::learn_tokens_in`] or [`Learner::predict_tokens`].
    pub fn encoder(&self) -> std::sync::Arc<crate::encoder::Encoder> {
        std::sync::Arc::clone(&self.predictor.encoder)
    }

    /// Predicts images over any label set (SPEC §2) with the chosen mixing.
    pub fn predict_images(
        &mut self,
        images: &[DynamicImage],
        set: &LabelSet,
        mixing: Mixing,
    ) -> Result<Vec<Prediction>, LearnError> {
        let tokens = self.predictor.encoder.encode_images(images)?;
        self.predict_tokens(&tokens, set, mixing)
    }

    /// The tuned model's L2-normalised embeddings `[B, E]` of trunk tokens `[B, N, D]`.
    pub fn tuned_embeddings(&mut self, tokens: &[f32]) -> Result<Vec<f32>, LearnError> {
        let per = self.dims.tokens_len();
        if tokens.is_empty() || !tokens.len().is_multiple_of(per) {
            return Err(crate::predict::PredictError::Tokens {
                found: tokens.len(),
                tokens: self.dims.tokens,
                width: self.dims.width,
            }
            .into());
        }
        if let Some(index) = tokens.iter().position(|v| !v.is_finite()) {
            return Err(LearnError::NonFinite { index });
        }
        let (tuned, _) = self.tuned_block()?;
        Ok(tuned.forward_embeddings(tokens, tokens.len() / per))
    }

    /// Predicts trunk tokens `[B, N, D]` over any label set (SPEC §2).
    pub fn predict_tokens(
        &mut self,
        tokens: &[f32],
        set: &LabelSet,
        mixing: Mixing,
    ) -> Result<Vec<Prediction>, LearnError> {
        let z_o = self.predictor.embed(tokens)?;
        if mixing == Mixing::OriginalOnly {
            return Ok(self.predictor.predict_tokens(tokens, set)?);
        }
        let batch = tokens.len() / self.dims.tokens_len();
        let (z_t, b) = {
            let (tuned, b) = self.tuned_block()?;
            (tuned.forward_embeddings(tokens, batch), *b)
        };
        // Store ids of the query's labels (none for labels never learned: α = 0).
        let mut known: Vec<Option<u16>> = Vec::with_capacity(set.len());
        for l in &set.labels {
            known.push(self.store.find_label(l)?);
        }
        let e = self.dims.embed;
        let k = set.len();
        let mut out = Vec::with_capacity(batch);
        for (zo, zt) in z_o.chunks(e).zip(z_t.chunks(e)) {
            let original = zero_shot_probs(zo, &set.text, LOGIT_SCALE);
            let mut with_other = logits(zt, &set.text, LOGIT_SCALE);
            with_other.push(b);
            let mut tuned = vec![0f32; k];
            let p_other = mixing::tuned_probabilities(&with_other, &mut tuned).unwrap_or(0.0);
            let alphas: Vec<f32> = known
                .iter()
                .map(|id| match (mixing, id) {
                    (Mixing::TunedOnly, _) => 1.0,
                    (_, None) => 0.0,
                    (Mixing::Ocw, Some(id)) => self.state.ocw.alpha(*id),
                    (Mixing::OcwOther, Some(id)) => self.state.ocw.alpha_with_other(*id, p_other),
                    (Mixing::OcwHard, Some(id)) => match self.state.ocw.get(*id) {
                        Some(s) if s.c_tuned > s.c_original => 1.0,
                        _ => 0.0,
                    },
                    (Mixing::Fixed(a), Some(id)) => {
                        if self.state.ocw.get(*id).is_some() {
                            a
                        } else {
                            0.0
                        }
                    }
                    (Mixing::OriginalOnly, _) => 0.0,
                })
                .collect();
            let mut mixed = vec![0f32; k];
            // Lengths agree by construction.
            let _ = mixing::mix(&tuned, &original, &alphas, &mut mixed);
            let name = if mixing == Mixing::TunedOnly {
                "tuned"
            } else {
                "mixed"
            };
            let mut p = Prediction::new(name, mixed, &set.labels, Some(p_other));
            let best = p.best();
            p.none_score = known[best].and_then(|id| {
                let cos = dot(zo, &set.text[best * e..(best + 1) * e]);
                self.state.typical.score(id, cos)
            });
            out.push(p);
        }
        Ok(out)
    }

    /// The "none" calibration of one new sample of `ids[y]` (before the step on it): its
    /// raw score as a query over the learned labels `ids` (text rows `text[..ids.len()]`,
    /// the OCW mixture's pick) into the arrival histogram, then its original model's
    /// cosine into its label's statistics (see [`crate::typicality`]).
    pub(super) fn observe_none(
        &mut self,
        z_o: &[f32],
        z_t: &[f32],
        text: &[f32],
        ids: &[u16],
        y: usize,
    ) {
        let e = self.dims.embed;
        let text = &text[..ids.len() * e];
        let original = zero_shot_probs(z_o, text, LOGIT_SCALE);
        // P̃_t: the tuned softmax over the labels alone (SPEC §2)
        let tuned = zero_shot_probs(z_t, text, LOGIT_SCALE);
        let alphas: Vec<f32> = ids.iter().map(|&id| self.state.ocw.alpha(id)).collect();
        let mut mixed = vec![0f32; ids.len()];
        // Lengths agree by construction.
        let _ = mixing::mix(&tuned, &original, &alphas, &mut mixed);
        let row = |i: usize| &text[i * e..(i + 1) * e];
        if let Some(pick) = mixing::argmax(&mixed) {
            self.state
                .typical
                .observe_arrival(ids[pick], dot(z_o, row(pick)));
        }
        if let Some(&id) = ids.get(y) {
            self.state.typical.observe(id, dot(z_o, row(y)));
        }
    }

    fn tuned_block(&mut self) -> Result<&(LastBlock, f32), LearnError> {
        if self.tuned.is_none() {
            // The parameters alone (not the optimiser's moments, twice their size).
            let mut trained = match &mut self.trainer {
                Trainer::Pending { state, .. } => (state.params.clone(), state.other_bias),
                Trainer::Built { backend, .. } => backend.params()?,
            };
            if let Some(name) = first_non_finite_params(&trained.0, trained.1) {
                self.roll_back(&format!("`{name}` is not finite"))?;
                if let Trainer::Pending { state, .. } = &self.trainer {
                    trained = (state.params.clone(), state.other_bias);
                }
            }
            let (params, other_bias) = trained;
            let head = self.predictor.original.head.clone();
            let block = LastBlock::new(self.dims, params, head);
            self.tuned = Some((block, other_bias));
        }
        Ok(self.tuned.as_ref().expect("set above"))
    }
}
