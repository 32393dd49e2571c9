//! Per-image features for the simulator: trunk tokens (cached on disk, see
//! [`super::cache`]) and the original model's L2-normalised image embeddings
//! (kept in memory, and cached too), plus text embeddings of every label.
//!
//! Two backbones:
//! - [`ClipBackbone`]: the model's tract trunk gives the tokens, the original last
//!   block (CPU) turns them into embeddings, the text tower embeds
//!   "a photo of a {label}.";
//! - [`PixelBackbone`] (`--model pixels`): a model-free stand-in for quick runs and
//!   tests. Its "tokens" are one 8×8 RGB thumbnail (`[1, 192]`), its embedding the
//!   thumbnail centred and normalised, and its label embeddings seeded random unit
//!   vectors, so zero-shot is at chance level and only learning methods can do better.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use anytime_runtime::assets::{ModelAssets, LAST_BLOCK};
use anytime_runtime::block::LastBlock;
use anytime_runtime::encoder::Encoder;
use image::DynamicImage;
use indicatif::ProgressBar;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::cache::{cache_path, Encoding, FeatureCache};
use super::dataset::{Dataset, Split};
use super::method::normalise;

/// Images encoded per trunk call.
const BATCH: usize = 16;

/// Turns images into tokens and tokens into embeddings.
pub trait Backbone {
    /// Identifies the model in cache file names and keys.
    fn id(&self) -> &str;
    /// Shape `[N, D]` of one image's tokens.
    fn token_shape(&self) -> (usize, usize);
    fn embed_dim(&self) -> usize;
    /// Tokens `[B, N, D]` of a batch of images.
    fn tokens(&mut self, images: &[DynamicImage]) -> Result<Vec<f32>>;
    /// L2-normalised embeddings `[B, E]` from tokens `[B, N, D]`.
    fn embed(&self, tokens: &[f32], batch: usize) -> Result<Vec<f32>>;
    /// Codec weights `[B, N]` of SPEC §5: 1 for CLS, the original block's CLS→patch
    /// attention for the patches.
    fn token_weights(&self, tokens: &[f32], batch: usize) -> Result<Vec<f32>>;
    /// L2-normalised label embeddings `[k, E]` of class names.
    fn label_embeddings(&mut self, names: &[String]) -> Result<Vec<f32>>;
}

/// The CLIP model through `anytime_runtime`.
pub struct ClipBackbone {
    id: String,
    encoder: Encoder,
    original: LastBlock,
}

impl std::fmt::Debug for ClipBackbone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipBackbone")
            .field("id", &self.id)
            .finish()
    }
}

impl ClipBackbone {
    /// Loads the encoder and original last block of a model found with
    /// [`ModelAssets::find`].
    pub fn from_assets(assets: &ModelAssets) -> Result<Self> {
        let encoder = Encoder::load(assets)
            .with_context(|| format!("loading the encoder of {}", assets.dir.display()))?;
        assets.verify_file(LAST_BLOCK)?;
        let original = LastBlock::load(&assets.file(LAST_BLOCK), assets.dims().block())
            .with_context(|| format!("loading the last block of {}", assets.dir.display()))?;
        // the sha of the trunk pins the cache to these exact weights
        let trunk_sha = assets
            .manifest
            .files
            .get(anytime_runtime::assets::VISUAL_TRUNK)
            .map(|s| s.chars().take(12).collect::<String>())
            .unwrap_or_default();
        Ok(Self {
            id: format!("{}-{trunk_sha}", assets.manifest.name),
            encoder,
            original,
        })
    }
}

impl Backbone for ClipBackbone {
    fn id(&self) -> &str {
        &self.id
    }

    fn token_shape(&self) -> (usize, usize) {
        let d = self.encoder.dims();
        (d.tokens(), d.width)
    }

    fn embed_dim(&self) -> usize {
        self.encoder.dims().embed_dim
    }

    fn tokens(&mut self, images: &[DynamicImage]) -> Result<Vec<f32>> {
        Ok(self.encoder.encode_images(images)?)
    }

    fn embed(&self, tokens: &[f32], batch: usize) -> Result<Vec<f32>> {
        let (n, d) = self.token_shape();
        anyhow::ensure!(
            tokens.len() == batch * n * d,
            "token batch has the wrong size"
        );
        Ok(self.original.forward_embeddings(tokens, batch))
    }

    fn token_weights(&self, tokens: &[f32], batch: usize) -> Result<Vec<f32>> {
        let (n, d) = self.token_shape();
        anyhow::ensure!(
            tokens.len() == batch * n * d,
            "token batch has the wrong size"
        );
        let patches = self.original.cls_attention(tokens, batch);
        let mut w = Vec::with_capacity(batch * n);
        for row in patches.chunks_exact(n - 1) {
            w.push(1.0);
            w.extend_from_slice(row);
        }
        Ok(w)
    }

    fn label_embeddings(&mut self, names: &[String]) -> Result<Vec<f32>> {
        Ok(self.encoder.encode_texts(names)?)
    }
}

/// The model-free stand-in (see the module documentation).
#[derive(Debug, Clone, Default)]
pub struct PixelBackbone;

const THUMB: u32 = 8;

impl Backbone for PixelBackbone {
    fn id(&self) -> &str {
        "pixels"
    }

    fn token_shape(&self) -> (usize, usize) {
        (1, (3 * THUMB * THUMB) as usize)
    }

    fn embed_dim(&self) -> usize {
        (3 * THUMB * THUMB) as usize
    }

    fn tokens(&mut self, images: &[DynamicImage]) -> Result<Vec<f32>> {
        let mut out = Vec::with_capacity(images.len() * self.embed_dim());
        for img in images {
            let t = img
                .resize_exact(THUMB, THUMB, image::imageops::FilterType::Triangle)
                .to_rgb8();
            out.extend(t.pixels().flat_map(|p| p.0.map(|v| f32::from(v) / 255.0)));
        }
        Ok(out)
    }

    fn embed(&self, tokens: &[f32], _batch: usize) -> Result<Vec<f32>> {
        let e = self.embed_dim();
        let mut out = tokens.to_vec();
        for row in out.chunks_exact_mut(e) {
            let mean = row.iter().sum::<f32>() / e as f32;
            row.iter_mut().for_each(|v| *v -= mean);
            normalise(row);
        }
        Ok(out)
    }

    fn token_weights(&self, _tokens: &[f32], batch: usize) -> Result<Vec<f32>> {
        Ok(vec![1.0; batch])
    }

    fn label_embeddings(&mut self, names: &[String]) -> Result<Vec<f32>> {
        let e = self.embed_dim();
        let mut out = Vec::with_capacity(names.len() * e);
        for name in names {
            // FNV-1a of the name seeds the vector: the same name, the same embedding
            let seed = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
            });
            let mut rng = StdRng::seed_from_u64(seed);
            let mut row: Vec<f32> = (0..e).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
            normalise(&mut row);
            out.extend(row);
        }
        Ok(out)
    }
}

/// Embeddings of the images a plan uses, and the token caches to read tokens from.
pub struct FeatureTable {
    embed_dim: usize,
    /// `[source][split]` → image index → embedding.
    embeddings: Vec<[HashMap<u32, Vec<f32>>; 2]>,
    tokens: Vec<[Option<FeatureCache>; 2]>,
}

impl std::fmt::Debug for FeatureTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeatureTable")
            .field("embed_dim", &self.embed_dim)
            .finish()
    }
}

fn split_slot(split: Split) -> usize {
    match split {
        Split::Train => 0,
        Split::Test => 1,
    }
}

fn split_name(split: Split) -> &'static str {
    match split {
        Split::Train => "train",
        Split::Test => "test",
    }
}

impl FeatureTable {
    /// Computes (or reads from the caches in `cache_dir`) the features of
    /// `needed[source] = (train indices, test indices)`, storing tokens as
    /// `encoding`. Without a cache directory nothing is written and tokens are not
    /// kept. Embeddings always come from the exact trunk tokens (they are computed
    /// before the tokens are stored) and are cached in f16.
    pub fn build(
        backbone: &mut dyn Backbone,
        sources: &[Dataset],
        needed: &[(Vec<u32>, Vec<u32>)],
        cache_dir: Option<&PathBuf>,
        encoding: Encoding,
        progress: &ProgressBar,
    ) -> Result<Self> {
        let (n, d) = backbone.token_shape();
        let e = backbone.embed_dim();
        let mut embeddings = Vec::with_capacity(sources.len());
        let mut token_caches = Vec::with_capacity(sources.len());
        for (ds, (train, test)) in sources.iter().zip(needed) {
            let mut per_split: [HashMap<u32, Vec<f32>>; 2] = Default::default();
            let mut caches: [Option<FeatureCache>; 2] = Default::default();
            for (split, indices) in [(Split::Train, train), (Split::Test, test)] {
                let slot = split_slot(split);
                let sname = split_name(split);
                let key = |kind: &str| {
                    format!(
                        "{}|{}|{}|{sname}|{kind}",
                        backbone.id(),
                        ds.name,
                        ds.root.display()
                    )
                };
                let tok_kind = format!("tokens-{}", encoding.tag());
                let mut tok_cache = match cache_dir {
                    Some(dir) => Some(FeatureCache::open(
                        &cache_path(dir, &ds.name, sname, backbone.id(), &tok_kind),
                        &key(&tok_kind),
                        n as u32,
                        d as u32,
                        encoding,
                    )?),
                    None => None,
                };
                let mut emb_cache = match cache_dir {
                    Some(dir) => Some(FeatureCache::open(
                        &cache_path(dir, &ds.name, sname, backbone.id(), "embeddings"),
                        &key("embeddings"),
                        1,
                        e as u32,
                        Encoding::F16,
                    )?),
                    None => None,
                };
                let out = &mut per_split[slot];
                let mut missing = Vec::new();
                for &i in indices {
                    let cached = match emb_cache.as_mut() {
                        Some(c) => c.get(i)?,
                        None => None,
                    };
                    match cached {
                        Some(mut v) => {
                            normalise(&mut v); // undo the f16 rounding of the norm
                            out.insert(i, v);
                            progress.inc(1);
                        }
                        None => missing.push(i),
                    }
                }
                for chunk in missing.chunks(BATCH) {
                    let mut tokens = Vec::with_capacity(chunk.len() * n * d);
                    let mut to_encode = Vec::new();
                    for &i in chunk {
                        if let Some(t) = match tok_cache.as_mut() {
                            Some(c) => c.get(i)?,
                            None => None,
                        } {
                            tokens.push((i, t));
                        } else {
                            to_encode.push(i);
                        }
                    }
                    if !to_encode.is_empty() {
                        let items = ds.items(split);
                        let images = to_encode
                            .iter()
                            .map(|&i| {
                                let item = items.get(i as usize).with_context(|| {
                                    format!("{} has no {sname} image {i}", ds.name)
                                })?;
                                ds.load(item)
                            })
                            .collect::<Result<Vec<_>>>()?;
                        let fresh = backbone.tokens(&images)?;
                        let weights = match (&tok_cache, encoding) {
                            (Some(_), Encoding::Codec(_)) => {
                                Some(backbone.token_weights(&fresh, to_encode.len())?)
                            }
                            _ => None,
                        };
                        for (k, (&i, t)) in
                            to_encode.iter().zip(fresh.chunks_exact(n * d)).enumerate()
                        {
                            if let Some(c) = tok_cache.as_mut() {
                                c.put(i, t, weights.as_ref().map(|w| &w[k * n..(k + 1) * n]))?;
                            }
                            tokens.push((i, t.to_vec()));
                        }
                    }
                    let flat: Vec<f32> =
                        tokens.iter().flat_map(|(_, t)| t.iter().copied()).collect();
                    let emb = backbone.embed(&flat, tokens.len())?;
                    for ((i, _), z) in tokens.iter().zip(emb.chunks_exact(e)) {
                        if let Some(c) = emb_cache.as_mut() {
                            c.put(*i, z, None)?;
                        }
                        out.insert(*i, z.to_vec());
                    }
                    progress.inc(chunk.len() as u64);
                }
                if let Some(c) = &tok_cache {
                    log::debug!(
                        "{} {sname}: {} images in the token cache ({} bytes, {} per image)",
                        ds.name,
                        c.len(),
                        c.file_bytes(),
                        c.payload_bytes()
                    );
                }
                caches[slot] = tok_cache;
            }
            embeddings.push(per_split);
            token_caches.push(caches);
        }
        Ok(Self {
            embed_dim: e,
            embeddings,
            tokens: token_caches,
        })
    }

    /// The embedding of one image.
    pub fn embedding(&self, source: u16, split: Split, index: u32) -> Result<&[f32]> {
        self.embeddings
            .get(usize::from(source))
            .and_then(|s| s[split_slot(split)].get(&index))
            .map(Vec::as_slice)
            .with_context(|| {
                format!(
                    "no features for {} image {index} of source {source}",
                    split_name(split)
                )
            })
    }

    /// The cached trunk tokens of one image (needs a cache directory).
    pub fn tokens(&mut self, source: u16, split: Split, index: u32) -> Result<Vec<f32>> {
        let cache = self
            .tokens
            .get_mut(usize::from(source))
            .and_then(|s| s[split_slot(split)].as_mut())
            .context("tokens are only available with a token cache directory")?;
        cache
            .get(index)?
            .with_context(|| format!("image {index} is not in the token cache"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::synthetic::{write_image_folder, SyntheticSpec};

    #[test]
    fn pixel_backbone_features_and_cache_reuse() {
        let tmp = tempfile::tempdir().unwrap();
        let spec = SyntheticSpec {
            classes: 2,
            train_per_class: 3,
            test_per_class: 1,
            size: 16,
            seed: 0,
        };
        let root = write_image_folder(tmp.path(), "px", &spec).unwrap();
        let ds = Dataset::open_dir(&root).unwrap();
        let needed = vec![((0..6).collect::<Vec<u32>>(), vec![0u32, 1])];
        let cache = tmp.path().join("cache");
        let bar = ProgressBar::hidden();
        let mut table = FeatureTable::build(
            &mut PixelBackbone,
            std::slice::from_ref(&ds),
            &needed,
            Some(&cache),
            Encoding::F16,
            &bar,
        )
        .unwrap();
        assert_eq!(bar.position(), 8);
        let z = table.embedding(0, Split::Train, 4).unwrap().to_vec();
        assert_eq!(z.len(), 192);
        assert!(anytime_testkit::close(
            z.iter().map(|v| v * v).sum::<f32>(),
            1.0,
            1e-4,
            0.0
        ));
        assert_eq!(table.tokens(0, Split::Test, 1).unwrap().len(), 192);
        assert!(table.embedding(0, Split::Test, 5).is_err());

        // a second build reads everything from the caches, even with the images gone
        std::fs::remove_dir_all(&root).unwrap();
        let table2 = FeatureTable::build(
            &mut PixelBackbone,
            &[ds],
            &needed,
            Some(&cache),
            Encoding::F16,
            &ProgressBar::hidden(),
        )
        .unwrap();
        let z2 = table2.embedding(0, Split::Train, 4).unwrap();
        let cos: f32 = z.iter().zip(z2).map(|(a, b)| a * b).sum();
        assert!(cos > 0.9999, "{cos}");
    }

    #[test]
    fn pixel_label_embeddings_are_seeded_by_name() {
        let mut b = PixelBackbone;
        let a = b.label_embeddings(&["cat".into(), "dog".into()]).unwrap();
        let again = b.label_embeddings(&["dog".into()]).unwrap();
        assert_eq!(&a[192..], &again[..]);
        assert_ne!(&a[..192], &a[192..]);
    }
}
