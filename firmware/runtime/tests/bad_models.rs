//! Bad model folders give clear errors that name the file, tensor or shapes at fault.
use std::fs;
use std::path::{Path, PathBuf};

use anytime_runtime::assets::{bundled_models_dir, sha256_file, AssetsError, ModelAssets};
use anytime_runtime::encoder::{Encoder, EncoderError};
use anytime_runtime::predict::{PredictError, Predictor};

/// A copy of the tiny model in a temporary folder.
fn copy_tiny() -> (tempfile::TempDir, PathBuf) {
    copy_model("tiny-clip")
}

/// A copy of a bundled model's top-level files (what loading reads) in a temporary folder.
fn copy_model(name: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dst = tmp.path().join(format!("{name}-copy"));
    fs::create_dir(&dst).unwrap();
    let src = bundled_models_dir().join(name);
    for entry in fs::read_dir(&src).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            fs::copy(entry.path(), dst.join(entry.file_name())).unwrap();
        }
    }
    (tmp, dst)
}

/// Rewrites the manifest's sha256 of `file` to match its current content.
fn reseal(dir: &Path, file: &str) {
    let manifest = dir.join("manifest.toml");
    let text = fs::read_to_string(&manifest).unwrap();
    let sha = sha256_file(&dir.join(file)).unwrap();
    let key = format!("\"{file}\" = \"");
    let out: Vec<String> = text
        .lines()
        .map(|l| {
            if l.starts_with(&key) {
                format!("{key}{sha}\"")
            } else {
                l.to_string()
            }
        })
        .collect();
    fs::write(manifest, out.join("\n")).unwrap();
}

fn edit_manifest(dir: &Path, from: &str, to: &str) {
    let p = dir.join("manifest.toml");
    let text = fs::read_to_string(&p).unwrap();
    assert!(text.contains(from), "manifest has no {from:?}");
    fs::write(p, text.replacen(from, to, 1)).unwrap();
}

#[test]
fn corrupt_onnx_names_the_file() {
    let (_tmp, dir) = copy_tiny();
    fs::write(
        dir.join("visual_trunk.onnx"),
        b"\x08\x07garbage that is not a protobuf",
    )
    .unwrap();
    reseal(&dir, "visual_trunk.onnx");
    let err = Encoder::load(&ModelAssets::open(&dir).unwrap()).unwrap_err();
    assert!(matches!(err, EncoderError::Onnx { .. }), "{err}");
    assert!(err.to_string().contains("visual_trunk.onnx"), "{err}");
}

#[test]
fn wrong_shaped_onnx_is_refused_with_both_shapes() {
    let (_tmp, dir) = copy_tiny();
    // The manifest says D = 64; a model folder claiming D = 32 does not fit the trunk.
    edit_manifest(&dir, "width = 64", "width = 32");
    let err = Encoder::load(&ModelAssets::open(&dir).unwrap()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, EncoderError::ModelShape { .. }), "{msg}");
    assert!(
        msg.contains("visual_trunk.onnx") && msg.contains("32") && msg.contains("64"),
        "{msg}"
    );

    // The text tower where the trunk should be: its input is not an image.
    let (_tmp2, dir2) = copy_tiny();
    fs::copy(dir2.join("textual.onnx"), dir2.join("visual_trunk.onnx")).unwrap();
    reseal(&dir2, "visual_trunk.onnx");
    let err = Encoder::load(&ModelAssets::open(&dir2).unwrap()).unwrap_err();
    assert!(err.to_string().contains("visual_trunk.onnx"), "{err}");
}

#[test]
fn manifest_and_safetensors_mismatch_names_tensor_and_shapes() {
    let (_tmp, dir) = copy_tiny();
    edit_manifest(&dir, "mlp = 256", "mlp = 128");
    let err = Predictor::from_assets(&ModelAssets::open(&dir).unwrap()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, PredictError::Weights(_)), "{msg}");
    assert!(msg.contains("mlp.c_fc"), "{msg}");
    assert!(msg.contains("128") && msg.contains("256"), "{msg}");
}

#[test]
fn checksum_mismatch_and_missing_files_are_reported() {
    let (_tmp, dir) = copy_tiny();
    let mut tok = fs::read(dir.join("tokenizer.json")).unwrap();
    tok.push(b' ');
    fs::write(dir.join("tokenizer.json"), tok).unwrap();
    let err = Encoder::load(&ModelAssets::open(&dir).unwrap()).unwrap_err();
    assert!(
        matches!(err, EncoderError::Assets(AssetsError::Checksum { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("tokenizer.json"));

    fs::remove_file(dir.join("textual.onnx")).unwrap();
    let err = ModelAssets::open(&dir).unwrap_err();
    assert!(matches!(err, AssetsError::MissingFile { .. }), "{err}");
    assert!(err.to_string().contains("textual.onnx"));
}

#[test]
fn corrupt_manifest_is_reported() {
    let (_tmp, dir) = copy_tiny();
    fs::write(dir.join("manifest.toml"), "name = [unclosed").unwrap();
    let err = ModelAssets::open(&dir).unwrap_err();
    assert!(matches!(err, AssetsError::Manifest { .. }), "{err}");
    edit_manifest_fresh(&dir);
}

fn edit_manifest_fresh(dir: &Path) {
    // An absurd dimension is refused before anything is allocated for it.
    let src = bundled_models_dir().join("tiny-clip/manifest.toml");
    let text = fs::read_to_string(src)
        .unwrap()
        .replacen("width = 64", "width = 10000000", 1);
    fs::write(dir.join("manifest.toml"), text).unwrap();
    let err = ModelAssets::open(dir).unwrap_err();
    assert!(err.to_string().contains("implausibly large"), "{err}");
}

#[test]
fn non_finite_pixels_and_wrong_lengths_are_refused() {
    let enc = Encoder::load(&ModelAssets::find("tiny-clip").unwrap()).unwrap();
    let n = 3 * 56 * 56;
    let mut pixels = vec![0.0f32; n];
    pixels[10] = f32::NAN;
    let err = enc.encode_pixels(1, &pixels).unwrap_err();
    assert!(err.to_string().contains("non-finite"), "{err}");
    let err = enc.encode_pixels(2, &pixels).unwrap_err();
    assert!(matches!(err, EncoderError::InputLength { .. }), "{err}");
}

#[test]
fn nan_tokens_are_refused_by_prediction() {
    let p = Predictor::load("tiny-clip").unwrap();
    let set = p.label_set(&["cat", "dog"]).unwrap();
    let d = p.encoder.dims();
    let mut tokens = vec![0.1f32; d.tokens() * d.width];
    assert!(p.predict_tokens(&tokens, &set).is_ok());
    tokens[5] = f32::INFINITY;
    assert!(p.predict_tokens(&tokens, &set).is_err());
    assert!(p.predict_tokens(&tokens[1..], &set).is_err());
}

/// `[dims]` that divide evenly but do not match the files (8 heads for a 4-head block)
/// pass every shape check; the load-time reference check refuses them.
#[test]
fn dims_that_do_not_match_the_files_are_refused_at_load() {
    let (_tmp, dir) = copy_model("mini-clip");
    Predictor::from_assets(&ModelAssets::open(&dir).unwrap()).expect("the unchanged copy loads");
    edit_manifest(&dir, "heads = 4\n", "heads = 8\n");
    let err = Predictor::from_assets(&ModelAssets::open(&dir).unwrap()).unwrap_err();
    assert!(
        matches!(err, PredictError::Reference { diff, .. } if diff > 1e-2),
        "{err}"
    );
    assert!(err.to_string().contains("[dims]"), "{err}");
}
