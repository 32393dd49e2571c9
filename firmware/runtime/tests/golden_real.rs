//! Golden test on real CLIP models exported by `models/export_open_clip.py`: tract's trunk
//! plus our last block, the tokenizer and the text tower against open_clip's own outputs
//! stored in `reference.safetensors`, and zero-shot prediction of the model's reference
//! pictures (`images/<label>[_<n>].<ext>`).
//!
//! Runs on every bundled model folder (`models/`) and every folder under
//! `$ANYTIME_EDGE_ASSETS/models/` holding `manifest.toml` and `reference.safetensors`:
//! the bundled `mini-clip` always has one.
//!
//! Tolerances: normalised embeddings within 1e-4 max abs, as for the tiny model. The export
//! script measures its ONNX graphs against open_clip at ~1e-7 on ViT-B/32 shapes (12 layers,
//! width 768), and tract agrees with onnxruntime to ~1e-5, so 1e-4 leaves room for f32
//! accumulation order without hiding a wrong op.
use std::path::{Path, PathBuf};

use anytime_runtime::assets::{assets_root, bundled_models_dir, ModelAssets, MANIFEST};
use anytime_runtime::encoder::{l2_normalised, load_image, preprocess_into};
use anytime_runtime::predict::{Predictor, REFERENCE};
use anytime_testkit::max_abs_diff;
use safetensors::{Dtype, SafeTensors};

/// A folder of model folders exported by open_clip in this run (see `.ci/run`).
const REFERENCE_MODELS_ENV: &str = "ANYTIME_EDGE_REFERENCE_MODELS";
const IMAGES: &str = "images";
/// Max abs difference allowed between normalised embeddings.
const EMBED_TOL: f64 = 1e-4;
/// Mean abs difference allowed between our preprocessing (the `image` crate's Catmull-Rom
/// resize) and open_clip's (PIL bicubic), in normalised pixel units: 0.02 is about 1.4
/// levels of 255. The two resamplers round differently; a wrong crop, channel order or
/// normalisation is off by far more.
const PREPROCESS_MEAN_TOL: f32 = 0.02;

/// Model folders under `models_dir` with a reference, sorted.
fn real_models(models_dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(models_dir) else {
        return Vec::new();
    };
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|d| d.join(MANIFEST).is_file() && d.join(REFERENCE).is_file())
        .collect();
    dirs.sort();
    dirs
}

/// The tensors and metadata of `reference.safetensors`.
struct Reference {
    bytes: Vec<u8>,
    metadata: std::collections::HashMap<String, String>,
}

impl Reference {
    fn open(path: &Path) -> Self {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let (_, meta) = SafeTensors::read_metadata(&bytes).expect("a safetensors header");
        let metadata = meta.metadata().clone().unwrap_or_default();
        Self { bytes, metadata }
    }

    /// Tensor `name`: its shape and raw little-endian data, of dtype `dtype`.
    fn raw(&self, name: &str, dtype: Dtype) -> (Vec<usize>, Vec<u8>) {
        let st = SafeTensors::deserialize(&self.bytes).expect("valid safetensors");
        let t = st
            .tensor(name)
            .unwrap_or_else(|_| panic!("{REFERENCE} has no `{name}`"));
        assert_eq!(t.dtype(), dtype, "{REFERENCE}: dtype of `{name}`");
        (t.shape().to_vec(), t.data().to_vec())
    }

    fn f32(&self, name: &str) -> (Vec<usize>, Vec<f32>) {
        let (shape, data) = self.raw(name, Dtype::F32);
        let v = data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        (shape, v)
    }

    fn i64(&self, name: &str) -> (Vec<usize>, Vec<i64>) {
        let (shape, data) = self.raw(name, Dtype::I64);
        let v = data
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        (shape, v)
    }

    /// A JSON list of strings from the metadata.
    fn strings(&self, key: &str) -> Vec<String> {
        let text = self
            .metadata
            .get(key)
            .unwrap_or_else(|| panic!("{REFERENCE} metadata has no `{key}`"));
        serde_json::from_str(text).unwrap_or_else(|e| panic!("metadata `{key}`: {e}"))
    }
}

/// The label of a picture file stem `<label>` or `<label>_<n>`.
fn picture_label(stem: &str) -> &str {
    match stem.rsplit_once('_') {
        Some((base, n))
            if !base.is_empty() && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) =>
        {
            base
        }
        _ => stem,
    }
}

fn normalised_rows(v: &[f32], width: usize) -> Vec<f32> {
    v.chunks(width).flat_map(l2_normalised).collect()
}

/// Our normalised embeddings of `pixels` `[B, 3, S, S]` against open_clip's `reference`.
fn check_image_embeds(p: &Predictor, what: &str, pixels: &[f32], batch: usize, reference: &[f32]) {
    let e = p.encoder.dims().embed_dim;
    let tokens = p.encoder.encode_pixels(batch, pixels).unwrap();
    let ours = p.embed(&tokens).unwrap();
    let d = max_abs_diff(&ours, &normalised_rows(reference, e));
    println!("  {what}: trunk (tract) + last block vs open_clip encode_image: max |diff| {d:.3e}");
    assert!(
        d < EMBED_TOL,
        "{what}: max abs diff of normalised embeddings {d}"
    );
}

fn check_model(dir: &Path) {
    println!("{}:", dir.display());
    let assets = ModelAssets::open(dir).unwrap();
    // Every file the manifest lists, the reference and the pictures included.
    assets.verify().unwrap();
    let listed = |file: &str| {
        assert!(
            assets.manifest.files.contains_key(file),
            "{MANIFEST} [files] does not list {file}"
        );
    };
    listed(REFERENCE);
    let r = Reference::open(&assets.file(REFERENCE));
    let p = Predictor::from_assets(&assets).unwrap();
    let dims = assets.dims();
    let (e, s) = (dims.embed_dim, dims.image_size);

    // Seeded normal pixels.
    let (shape, pixels) = r.f32("pixels");
    let (eshape, image_embeds) = r.f32("image_embeds");
    assert_eq!(shape[1..], [3, s, s], "shape of `pixels`");
    assert_eq!(eshape, [shape[0], e], "shape of `image_embeds`");
    check_image_embeds(&p, "seeded pixels", &pixels, shape[0], &image_embeds);

    // Tokenizer and text tower.
    let texts = r.strings("texts");
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let (ishape, input_ids) = r.i64("input_ids");
    assert_eq!(ishape, [texts.len(), dims.context_length]);
    assert_eq!(p.encoder.tokenize(&refs).unwrap(), input_ids, "token ids");
    println!(
        "  tokenizer: the {} texts' ids equal open_clip's",
        texts.len()
    );
    let (_, text_embeds) = r.f32("text_embeds");
    let text_ref = normalised_rows(&text_embeds, e);
    let ours = normalised_rows(&p.encoder.encode_raw_texts(&refs).unwrap(), e);
    let d = max_abs_diff(&ours, &text_ref);
    println!("  text tower (tract) vs open_clip encode_text: max |diff| {d:.3e}");
    assert!(
        d < EMBED_TOL,
        "max abs diff of normalised text embeddings {d}"
    );

    // The label set prompts "a photo of a {label}.": its rows are the first texts'.
    let labels = r.strings("labels");
    let set = p.label_set(&labels).unwrap();
    let d = max_abs_diff(&set.text, &text_ref[..labels.len() * e]);
    assert!(d < EMBED_TOL, "label-set embeddings vs the prompts' {d}");

    // Reference pictures: open_clip's preprocessing of them, then zero-shot from the files.
    let names = r.strings("images");
    let folder = dir.join(IMAGES);
    let mut on_disk: Vec<String> = match std::fs::read_dir(&folder) {
        Ok(entries) => entries
            .map(|e| e.unwrap())
            .filter(|e| e.file_type().unwrap().is_file())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    };
    on_disk.sort();
    assert_eq!(
        on_disk,
        names,
        "{} differs from the reference's list",
        folder.display()
    );
    names.iter().for_each(|n| listed(&format!("{IMAGES}/{n}")));
    if names.is_empty() {
        println!("  zero-shot: no reference pictures (export with --images DIR)");
        return;
    }
    let (pshape, image_pixels) = r.f32("image_pixels");
    let (_, image_pixels_embeds) = r.f32("image_pixels_embeds");
    assert_eq!(pshape, [names.len(), 3, s, s], "shape of `image_pixels`");
    check_image_embeds(
        &p,
        "pictures",
        &image_pixels,
        names.len(),
        &image_pixels_embeds,
    );

    let images: Vec<_> = names
        .iter()
        .map(|n| load_image(&folder.join(n)).unwrap())
        .collect();
    let per = 3 * s * s;
    for ((name, img), theirs) in names.iter().zip(&images).zip(image_pixels.chunks(per)) {
        let mut ours = Vec::new();
        preprocess_into(img, s, &assets.manifest.preprocess, &mut ours);
        let mean = ours
            .iter()
            .zip(theirs)
            .map(|(a, b)| (a - b).abs())
            .sum::<f32>()
            / per as f32;
        let max = max_abs_diff(&ours, theirs);
        println!("  preprocess {name} vs open_clip: mean |diff| {mean:.3e}, max {max:.3e}");
        assert!(
            mean < PREPROCESS_MEAN_TOL,
            "{name}: preprocessing differs from open_clip's by {mean} on average"
        );
    }

    let stems: Vec<&str> = names
        .iter()
        .map(|n| picture_label(Path::new(n).file_stem().unwrap().to_str().unwrap()))
        .collect();
    let mut distinct: Vec<&str> = stems.clone();
    distinct.sort_unstable();
    distinct.dedup();
    let mut sorted_labels: Vec<&str> = labels.iter().map(String::as_str).collect();
    sorted_labels.sort_unstable();
    assert_eq!(distinct, sorted_labels, "labels are the pictures' stems");
    // Older exports rank every picture; a model trained without some labels names only
    // those it knows (`zero_shot_labels`).
    let checked: Vec<String> = if r.metadata.contains_key("zero_shot_labels") {
        r.strings("zero_shot_labels")
    } else {
        labels.clone()
    };
    let weights = r.metadata.get("weights").map_or("?", String::as_str);
    let random = weights == "random-init";
    for ((name, stem), pred) in names
        .iter()
        .zip(&stems)
        .zip(p.predict(&images, &set).unwrap())
    {
        let top: Vec<String> = pred
            .ranked
            .iter()
            .take(3)
            .map(|(l, q)| format!("{l} {q:.3}"))
            .collect();
        println!("  zero-shot {name}: {}", top.join(", "));
        if !random && checked.iter().any(|c| c == stem) {
            assert_eq!(pred.ranked[0].0, *stem, "zero-shot of {name}");
        }
    }
    if random {
        println!("  zero-shot: not asserted, the weights are `{weights}` (random)");
    } else {
        println!("  zero-shot: each picture of {checked:?} has its own label ranked first");
    }
}

/// The bundled trained models (`mini-clip`): always present.
#[test]
fn bundled_models_equal_open_clip_reference() {
    let dirs = real_models(&bundled_models_dir());
    assert!(
        dirs.iter().any(|d| d.ends_with("mini-clip")),
        "no bundled mini-clip with {REFERENCE} in {dirs:?}"
    );
    for dir in dirs {
        check_model(&dir);
    }
}

/// Models that open_clip itself exported in this run: CI installs torch and open_clip,
/// exports a random-init mini-clip into the folder `$ANYTIME_EDGE_REFERENCE_MODELS` names
/// (`.ci/run`), and this test must find one there. Unset: logged, not a failure.
#[test]
fn models_open_clip_exported_in_this_run_equal_its_reference() {
    const TEST: &str = "models_open_clip_exported_in_this_run_equal_its_reference";
    let Some(root) = std::env::var_os(REFERENCE_MODELS_ENV) else {
        let why = format!("${REFERENCE_MODELS_ENV} is not set (.ci/run sets it)");
        anytime_testkit::skip::not_here(TEST, &why);
        return;
    };
    let dirs = real_models(Path::new(&root));
    assert!(
        !dirs.is_empty(),
        "${REFERENCE_MODELS_ENV}={}: no model folder with {REFERENCE}",
        Path::new(&root).display()
    );
    for dir in dirs {
        check_model(&dir);
    }
}

#[test]
fn real_models_equal_open_clip_reference() {
    // No setting provides a real CLIP in CI (its weights are never downloaded there), so
    // its absence is logged, never a failure; the bundled models above always run.
    const TEST: &str = "real_models_equal_open_clip_reference";
    let Some(root) = assets_root() else {
        let why = "$ANYTIME_EDGE_ASSETS is not set, so no real CLIP model (models/README.md)";
        anytime_testkit::skip::not_here(TEST, why);
        return;
    };
    let dirs = real_models(&root.join("models"));
    if dirs.is_empty() {
        let models = root.join("models");
        let why = format!(
            "no real CLIP model with {REFERENCE} under {} (see models/README.md)",
            models.display()
        );
        anytime_testkit::skip::not_here(TEST, &why);
        return;
    }
    for dir in dirs {
        check_model(&dir);
    }
}
