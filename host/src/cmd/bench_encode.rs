//! `bench-encode`: trunk encode throughput of tract against onnxruntime (python) on the same
//! ONNX file with the same thread count, measured in one run, as a ratio.
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result};
use anytime_runtime::assets::ModelAssets;
use anytime_runtime::encoder::Encoder;
use rand::{Rng, SeedableRng};
use serde_json::json;

use super::bench_out;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Model name or folder.
    #[arg(long, default_value = "tiny-clip")]
    model: String,
    /// Images per trunk call.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Images timed (rounded down to whole batches).
    #[arg(long, default_value_t = 64)]
    images: usize,
    /// The onnxruntime reference script.
    #[arg(long, default_value = "host/bench/encode_ort.py")]
    script: PathBuf,
    /// Python interpreter for the reference.
    #[arg(long, default_value = "python3")]
    python: String,
}

pub fn run(a: Args) -> Result<()> {
    let assets = ModelAssets::find(&a.model)?;
    let dims = assets.dims();
    let enc = Encoder::load(&assets).context("loading the encoder")?;
    let per = 3 * dims.image_size * dims.image_size;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let pixels: Vec<f32> = (0..a.batch * per)
        .map(|_| rng.gen_range(-2.0..2.0))
        .collect();
    enc.encode_pixels(a.batch, &pixels)?; // warm-up
    let calls = (a.images / a.batch).max(1);
    let t0 = Instant::now();
    for _ in 0..calls {
        std::hint::black_box(enc.encode_pixels(a.batch, &pixels)?);
    }
    let secs = t0.elapsed().as_secs_f64();
    let ours = (calls * a.batch) as f64 / secs;

    let out = Command::new(&a.python)
        .arg(&a.script)
        .args(["--model", &assets.dir.to_string_lossy()])
        .args(["--image-size", &dims.image_size.to_string()])
        .args([
            "--batch",
            &a.batch.to_string(),
            "--images",
            &(calls * a.batch).to_string(),
        ])
        .args(["--threads", "1"])
        .output();
    let reference: Option<serde_json::Value> = match out {
        Ok(o) if o.status.success() => serde_json::from_slice(&o.stdout).ok(),
        Ok(o) => {
            log::warn!(
                "onnxruntime reference failed: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            None
        }
        Err(e) => {
            log::warn!("cannot run {}: {e}", a.python);
            None
        }
    };
    let ort = reference.as_ref().and_then(|r| r["images_per_s"].as_f64());

    println!(
        "trunk encode, model {} (N={}, D={}, {} trunk blocks), batch {}, 1 thread",
        assets.manifest.name,
        dims.tokens(),
        dims.width,
        dims.layers - 1,
        a.batch
    );
    println!("{:<28} {:>12}", "runtime", "images/s");
    println!("{:<28} {:>12.1}", "tract-onnx 0.23 (ours)", ours);
    match ort {
        Some(r) => {
            println!("{:<28} {:>12.1}", "onnxruntime (python)", r);
            println!("{:<28} {:>12.2}", "ratio tract / onnxruntime", ours / r);
        }
        None => println!("onnxruntime reference: not available (see warning)"),
    }
    let report = json!({
        "model": assets.manifest.name,
        "dims": {"tokens": dims.tokens(), "width": dims.width, "trunk_blocks": dims.layers - 1, "image_size": dims.image_size},
        "batch": a.batch,
        "threads": 1,
        "images": calls * a.batch,
        "tract_images_per_s": ours,
        "onnxruntime": reference,
        "ratio_tract_over_onnxruntime": ort.map(|r| ours / r),
    });
    let path = bench_out("encode.json", &report)?;
    println!("wrote {}", path.display());
    Ok(())
}
