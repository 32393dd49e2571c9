//! `bench-encode`: trunk encode throughput of tract against onnxruntime (python) on the same
//! ONNX file with the same thread count, measured in one run, as a ratio.
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result};
use anytime_runtime::assets::ModelAssets;
use anytime_runtime::encoder::{Encoder, EncoderOptions};
use rand::{Rng, SeedableRng};
use serde_json::json;

use super::bench_out;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Model name or folder.
    #[arg(long, default_value = "tiny-clip")]
    model: String,
    /// Images per trunk call (comma-separated: one row each).
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    batch: Vec<usize>,
    /// Threads of both runtimes (comma-separated: one row each).
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    threads: Vec<usize>,
    /// Images timed per row (rounded down to whole batches, at least one batch).
    #[arg(long, default_value_t = 64)]
    images: usize,
    /// Timed rounds per row, ours and onnxruntime's alternating; the best round counts.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// The onnxruntime reference script.
    #[arg(long, default_value = "host/bench/encode_ort.py")]
    script: PathBuf,
    /// Python interpreter for the reference.
    #[arg(long, default_value = "python3")]
    python: String,
}

/// Images/s of onnxruntime for one configuration, or why not.
fn onnxruntime(
    a: &Args,
    dir: &std::path::Path,
    size: usize,
    batch: usize,
    threads: usize,
    images: usize,
) -> Result<serde_json::Value, String> {
    let o = Command::new(&a.python)
        .arg(&a.script)
        .args(["--model", &dir.to_string_lossy()])
        .args(["--image-size", &size.to_string()])
        .args(["--batch", &batch.to_string()])
        .args(["--images", &images.to_string()])
        .args(["--threads", &threads.to_string()])
        .output()
        .map_err(|e| format!("cannot run {}: {e}", a.python))?;
    if !o.status.success() {
        return Err(String::from_utf8_lossy(&o.stderr).trim().to_string());
    }
    serde_json::from_slice(&o.stdout).map_err(|e| format!("reference output: {e}"))
}

pub fn run(a: Args) -> Result<()> {
    anyhow::ensure!(
        !a.batch.contains(&0) && !a.threads.contains(&0) && a.rounds > 0,
        "batch, threads and rounds must be positive"
    );
    let assets = ModelAssets::find(&a.model)?;
    let dims = assets.dims();
    let per = 3 * dims.image_size * dims.image_size;
    println!(
        "trunk encode, model {} (N={}, D={}, {} trunk blocks); best of {} rounds, alternating",
        assets.manifest.name,
        dims.tokens(),
        dims.width,
        dims.layers - 1,
        a.rounds
    );
    println!(
        "{:>6} {:>8} {:>16} {:>18} {:>8}",
        "batch", "threads", "tract images/s", "onnxruntime img/s", "ratio"
    );
    let mut rows = Vec::new();
    for &threads in &a.threads {
        let enc = Encoder::load_with(&assets, EncoderOptions { threads })
            .context("loading the encoder")?;
        for &batch in &a.batch {
            let mut rng = rand::rngs::StdRng::seed_from_u64(0);
            let pixels: Vec<f32> = (0..batch * per).map(|_| rng.gen_range(-2.0..2.0)).collect();
            enc.encode_pixels(batch, &pixels)?; // warm-up
            let calls = (a.images / batch).max(1);
            let (mut ours, mut ort, mut why) = (0.0f64, None::<f64>, None);
            let mut reference = serde_json::Value::Null;
            for _ in 0..a.rounds {
                let t0 = Instant::now();
                for _ in 0..calls {
                    std::hint::black_box(enc.encode_pixels(batch, &pixels)?);
                }
                ours = ours.max((calls * batch) as f64 / t0.elapsed().as_secs_f64());
                match onnxruntime(
                    &a,
                    &assets.dir,
                    dims.image_size,
                    batch,
                    threads,
                    calls * batch,
                ) {
                    Ok(r) => {
                        if let Some(v) = r["images_per_s"].as_f64() {
                            if ort.is_none_or(|o| v > o) {
                                ort = Some(v);
                                reference = r;
                            }
                        }
                    }
                    Err(e) => why = Some(e),
                }
            }
            if let (None, Some(w)) = (ort, &why) {
                log::warn!("onnxruntime reference failed: {w}");
            }
            let ratio = ort.map(|o| ours / o);
            println!(
                "{batch:>6} {threads:>8} {ours:>16.2} {:>18} {:>8}",
                ort.map_or("–".into(), |o| format!("{o:.2}")),
                ratio.map_or("–".into(), |r| format!("{r:.2}"))
            );
            rows.push(json!({
                "batch": batch, "threads": threads, "images": calls * batch,
                "tract_images_per_s": ours, "onnxruntime": reference,
                "ratio_tract_over_onnxruntime": ratio,
            }));
        }
    }
    let report = json!({
        "model": assets.manifest.name,
        "dims": {"tokens": dims.tokens(), "width": dims.width, "trunk_blocks": dims.layers - 1, "image_size": dims.image_size},
        "rounds": a.rounds,
        "rows": rows,
    });
    let path = bench_out("encode.json", &report)?;
    println!("wrote {}", path.display());
    Ok(())
}
