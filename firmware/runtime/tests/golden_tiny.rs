//! Golden tests on the generated tiny CLIP: tract's trunk plus our last block against
//! onnxruntime's outputs stored in `models/tiny-clip/golden.json`.
use anytime_runtime::assets::{bundled_models_dir, ModelAssets};
use anytime_runtime::encoder::{l2_normalised, Encoder, LABEL_CACHE_MAX};
use anytime_runtime::predict::Predictor;
use anytime_testkit::{close, max_abs_diff};
use serde_json::Value;

fn golden() -> Value {
    let path = bundled_models_dir().join("tiny-clip/golden.json");
    serde_json::from_slice(&std::fs::read(path).expect("golden.json")).expect("valid json")
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number") as f32)
        .collect()
}

fn normalised_rows(v: &[f32], width: usize) -> Vec<f32> {
    v.chunks(width).flat_map(l2_normalised).collect()
}

#[test]
fn trunk_tokens_equal_onnxruntime() {
    let g = golden();
    let enc = Encoder::load(&ModelAssets::find("tiny-clip").unwrap()).unwrap();
    let pixels = floats(&g["pixels"]);
    let batch = g["pixels_shape"][0].as_u64().unwrap() as usize;
    let tokens = enc.encode_pixels(batch, &pixels).unwrap();
    let d = max_abs_diff(&tokens, &floats(&g["tokens"]));
    assert!(d < 1e-4, "max abs diff of trunk tokens {d}");
}

#[test]
fn trunk_plus_last_block_equals_the_full_model() {
    let g = golden();
    let p = Predictor::load("tiny-clip").unwrap();
    let e = p.encoder.dims().embed_dim;
    let batch = g["pixels_shape"][0].as_u64().unwrap() as usize;
    let tokens = p
        .encoder
        .encode_pixels(batch, &floats(&g["pixels"]))
        .unwrap();
    let ours = p.embed(&tokens).unwrap();
    let reference = normalised_rows(&floats(&g["image_embeds"]), e);
    let d = max_abs_diff(&ours, &reference);
    assert!(d < 1e-4, "max abs diff of normalised embeddings {d}");
    // Batch independence: one image alone gives the same embedding.
    let n = tokens.len() / batch;
    let single = p.embed(&tokens[n..2 * n]).unwrap();
    assert!(max_abs_diff(&single, &ours[e..2 * e]) < 1e-5);
}

#[test]
fn text_ids_and_embeddings_equal_onnxruntime() {
    let g = golden();
    let enc = Encoder::load(&ModelAssets::find("tiny-clip").unwrap()).unwrap();
    let texts: Vec<&str> = g["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    let ids = enc.tokenize(&texts).unwrap();
    let expected: Vec<i64> = g["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect();
    assert_eq!(ids, expected);
    let e = enc.dims().embed_dim;
    let ours = normalised_rows(&enc.encode_raw_texts(&texts).unwrap(), e);
    let reference = normalised_rows(&floats(&g["text_embeds"]), e);
    let d = max_abs_diff(&ours, &reference);
    assert!(d < 1e-4, "max abs diff of normalised text embeddings {d}");
}

#[test]
fn label_embeddings_are_cached_and_normalised() {
    let enc = Encoder::load(&ModelAssets::find("tiny-clip").unwrap()).unwrap();
    let a = enc.encode_texts(&["cat", "dog"]).unwrap();
    let b = enc.encode_texts(&["dog", "cat"]).unwrap();
    let e = enc.dims().embed_dim;
    assert_eq!(&a[..e], &b[e..]);
    assert_eq!(&a[e..], &b[..e]);
    for row in a.chunks(e) {
        let n: f32 = row.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!(close(n, 1.0f32, 1e-5, 0.0), "norm {n}");
    }
    // Prompts are "a photo of a {label}.": equal to the raw embedding of that text.
    let raw = enc.encode_raw_texts(&["a photo of a cat."]).unwrap();
    assert!(max_abs_diff(&l2_normalised(&raw), &a[..e]) < 1e-6);
    assert_eq!(enc.cached_labels(), 2);

    // Ever new labels never grow the cache past its bound, and answers stay the same.
    let many: Vec<String> = (0..LABEL_CACHE_MAX + 10).map(|i| format!("l{i}")).collect();
    for chunk in many.chunks(1000) {
        enc.encode_texts(chunk).unwrap();
        assert!(enc.cached_labels() <= LABEL_CACHE_MAX);
    }
    assert_eq!(enc.encode_texts(&["cat", "dog"]).unwrap(), a);
}
