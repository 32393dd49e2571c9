//! `bench-store`: the token codec and the mmap store. Codec figures at ViT-B/32 shapes
//! (N = 50, D = 768) on synthetic tokens (low-rank structure plus noise, weights from a
//! random-weight original block's CLS→patch attention), and on the trunk tokens of each
//! `--model` found (the tiny fixture by default; `target/models/vit-b32-random` from
//! `models/make_tiny_clip.py --preset vit-b32` gives real ViT-B/32 shapes, random weights): bytes per record, encode/decode time, reconstruction error, and
//! the cosine between the original block's embedding of T̂ and of T. Store figures: append,
//! sample and reopen throughput of a memory-mapped store with flush-before-ack. Prints tables
//! and writes `target/bench/store.json`.
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use anytime_core::mem_flash::MemFlash;
use anytime_core::ring::{Geometry, LabelRef, RecordRef, Ring};
use anytime_runtime::block::{BlockDims, BlockParams, FrozenHead, LastBlock};
use anytime_runtime::store::{
    decode_tokens, encode_tokens, token_weights, CodecParams, Store, StoreConfig,
};
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde_json::{json, Value};

use super::bench_out;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Images per codec configuration.
    #[arg(long, default_value_t = 16)]
    images: usize,
    /// Records appended to the mmap store.
    #[arg(long, default_value_t = 6000)]
    appends: usize,
    /// Logical capacity of the benchmark store in MiB (small enough that eviction runs).
    #[arg(long, default_value_t = 16)]
    capacity_mib: u64,
    /// Balanced samples of 31 drawn for the sampling figure.
    #[arg(long, default_value_t = 300)]
    samples: usize,
    /// Models (name or path) whose trunk tokens and original block give real-token figures,
    /// e.g. `--model models/tiny-clip --model target/models/vit-b32-random`; each is skipped
    /// with a message when not found.
    #[arg(long = "model", default_value = "models/tiny-clip")]
    models: Vec<String>,
    /// Directory for the temporary store file (default: a fresh temp dir).
    #[arg(long)]
    dir: Option<PathBuf>,
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

/// The configurations reported: (k, bits, weighted).
const CONFIGS: [(u16, u8, bool); 8] = [
    (3, 8, true),
    (3, 4, true),
    (5, 8, true),
    (5, 4, true),
    (8, 8, true),
    (8, 4, true),
    (5, 8, false),
    (5, 32, true),
];

/// ViT-B/32-like tokens: a shared offset, a decaying low-rank spectrum, noise.
fn synthetic_tokens(rng: &mut StdRng, n: usize, d: usize) -> Vec<f32> {
    let rank = 24;
    let offset: Vec<f32> = (0..d).map(|_| gauss(rng) * 0.5).collect();
    let basis: Vec<f32> = (0..rank * d).map(|_| gauss(rng)).collect();
    let mut t = vec![0f32; n * d];
    for i in 0..n {
        let coef: Vec<f32> = (0..rank).map(|r| gauss(rng) / (1.0 + r as f32)).collect();
        for j in 0..d {
            let s: f32 = (0..rank).map(|r| coef[r] * basis[r * d + j]).sum();
            t[i * d + j] = offset[j] + s + 0.05 * gauss(rng);
        }
    }
    t
}

fn gauss(rng: &mut StdRng) -> f32 {
    let u1: f64 = rng.gen_range(1e-12..1.0);
    let u2: f64 = rng.gen();
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb).max(1e-30)
}

fn rel(a: &[f32], b: &[f32], reference: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = reference.iter().map(|x| (*x as f64).powi(2)).sum();
    (num / den.max(1e-30)).sqrt()
}

/// Codec figures for one set of images (`tokens` = `[B, N, D]`) through `block`.
fn codec_rows(label: &str, block: &LastBlock, tokens: &[f32], batch: usize) -> Result<Vec<Value>> {
    let (n, d) = (block.dims.tokens, block.dims.width);
    let w = token_weights(block, tokens, batch);
    let z_ref = block.forward_embeddings(tokens, batch);
    let e = block.dims.embed;
    let mut rows = Vec::new();
    println!(
        "\ncodec on {label} (N = {n}, D = {d}, {batch} images; raw f32 tokens {} bytes)",
        n * d * 4
    );
    println!(
        "{:>3} {:>5} {:>8} {:>8} {:>11} {:>11} {:>10} {:>12} {:>10}",
        "k",
        "bits",
        "weights",
        "bytes",
        "encode µs",
        "decode µs",
        "rel err",
        "centred err",
        "cos(z)"
    );
    for (k, bits, weighted) in CONFIGS {
        let p = CodecParams { k, bits, weighted };
        let mut recon = vec![0f32; batch * n * d];
        let (mut enc_s, mut dec_s, mut bytes) = (0.0, 0.0, 0);
        let (mut err, mut cerr) = (0.0, 0.0);
        for b in 0..batch {
            let t = &tokens[b * n * d..(b + 1) * n * d];
            let wb = &w[b * n..(b + 1) * n];
            let t0 = Instant::now();
            let rec = encode_tokens(t, wb, n, d, &p).context("encode")?;
            enc_s += t0.elapsed().as_secs_f64();
            let t1 = Instant::now();
            let (back, _, _) = decode_tokens(&rec).context("decode")?;
            dec_s += t1.elapsed().as_secs_f64();
            bytes = rec.len();
            err += rel(t, &back, t);
            // Error relative to the tokens' spread around their mean (the part PCA models).
            let mean: Vec<f32> = (0..d)
                .map(|j| (0..n).map(|i| t[i * d + j]).sum::<f32>() / n as f32)
                .collect();
            let centred: Vec<f32> = (0..n * d).map(|x| t[x] - mean[x % d]).collect();
            cerr += rel(t, &back, &centred);
            recon[b * n * d..(b + 1) * n * d].copy_from_slice(&back);
        }
        let z = block.forward_embeddings(&recon, batch);
        let cos: Vec<f64> = (0..batch)
            .map(|b| cosine(&z[b * e..(b + 1) * e], &z_ref[b * e..(b + 1) * e]))
            .collect();
        let cos_mean = cos.iter().sum::<f64>() / batch as f64;
        let cos_min = cos.iter().cloned().fold(f64::INFINITY, f64::min);
        let bf = batch as f64;
        let wname = if weighted { "attn" } else { "uniform" };
        println!(
            "{k:>3} {bits:>5} {wname:>8} {bytes:>8} {:>11.1} {:>11.1} {:>10.4} {:>12.4} {:>10.5}",
            1e6 * enc_s / bf,
            1e6 * dec_s / bf,
            err / bf,
            cerr / bf,
            cos_mean
        );
        rows.push(json!({
            "tokens": label, "k": k, "bits": bits, "weighted": weighted, "bytes": bytes,
            "raw_bytes": n * d * 4, "encode_us": 1e6 * enc_s / bf, "decode_us": 1e6 * dec_s / bf,
            "rel_error": err / bf, "centred_rel_error": cerr / bf,
            "embedding_cosine_mean": cos_mean, "embedding_cosine_min": cos_min,
        }));
    }
    Ok(rows)
}

pub fn run(args: Args) -> Result<()> {
    let mut rng = StdRng::seed_from_u64(args.seed);
    let mut report = serde_json::Map::new();

    // Codec at ViT-B/32 shapes, random-weight original block.
    let dims = BlockDims::VIT_B32;
    let block = LastBlock::new(
        dims,
        BlockParams::random(&dims, args.seed),
        FrozenHead::random(&dims, args.seed + 1),
    );
    let mut tokens = Vec::new();
    for _ in 0..args.images {
        tokens.extend(synthetic_tokens(&mut rng, dims.tokens, dims.width));
    }
    let mut rows = codec_rows(
        "synthetic ViT-B/32-shaped tokens, random block",
        &block,
        &tokens,
        args.images,
    )?;

    // Codec on each model's trunk tokens (demo images + random-pixel images).
    for model in &args.models {
        match trunk_tokens(model, args.images, &mut rng) {
            Ok((name, block, tokens, batch)) => {
                rows.extend(codec_rows(
                    &format!("{name} trunk tokens"),
                    &block,
                    &tokens,
                    batch,
                )?);
            }
            Err(e) => println!("\nmodel {model} skipped: {e:#}"),
        }
    }
    report.insert("codec".into(), Value::Array(rows));
    report.insert("store".into(), store_figures(&args, &mut rng)?);
    let path = bench_out("store.json", &Value::Object(report))?;
    println!("\nwrote {}", path.display());
    Ok(())
}

/// The trunk tokens of `images` images (the model's demo images, then random pixels) and the
/// model's original last block.
fn trunk_tokens(
    model: &str,
    images: usize,
    rng: &mut StdRng,
) -> Result<(String, LastBlock, Vec<f32>, usize)> {
    use anytime_runtime::assets::ModelAssets;
    use anytime_runtime::encoder::Encoder;
    let assets = ModelAssets::find(model).with_context(|| format!("finding model {model}"))?;
    let dims = assets.dims();
    let block = LastBlock::load(&assets.file("last_block.safetensors"), dims.block())
        .context("loading the block")?;
    let encoder = Encoder::load(&assets).context("loading the encoder")?;
    let s = dims.image_size;
    let mut pics = Vec::new();
    let img_dir = assets.dir.join("images");
    if let Ok(rd) = std::fs::read_dir(&img_dir) {
        let mut paths: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for p in paths {
            if let Ok(img) = image::open(&p) {
                pics.push(img);
            }
        }
    }
    while pics.len() < images {
        let mut img = image::RgbImage::new(s as u32, s as u32);
        for px in img.pixels_mut() {
            *px = image::Rgb([rng.gen(), rng.gen(), rng.gen()]);
        }
        pics.push(image::DynamicImage::ImageRgb8(img));
    }
    pics.truncate(images.max(1));
    let tokens = encoder.encode_images(&pics).context("running the trunk")?;
    let name = assets
        .dir
        .file_name()
        .map_or_else(|| model.to_string(), |n| n.to_string_lossy().into_owned());
    Ok((name, block, tokens, pics.len()))
}

fn store_figures(args: &Args, rng: &mut StdRng) -> Result<Value> {
    let tmp = tempfile_dir(args.dir.clone())?;
    let path = tmp.join("bench.store");
    let payload_len = 5314usize; // a k = 5, 8-bit ViT-B/32 record
    let config = StoreConfig::new(args.capacity_mib << 20, payload_len as u32);
    let mut store = Store::create(&path, config)?;
    let labels: Vec<u16> = (0..10)
        .map(|i| store.label_id(&format!("class-{i}")))
        .collect::<Result<_, _>>()?;
    let payloads: Vec<Vec<u8>> = (0..16)
        .map(|_| (0..payload_len).map(|_| rng.gen()).collect())
        .collect();
    let t0 = Instant::now();
    for i in 0..args.appends {
        let l = labels[rng.gen_range(0..labels.len())];
        store.append(l, &payloads[i % payloads.len()])?;
    }
    let append_s = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let mut drawn = 0;
    for s in 0..args.samples {
        drawn += store.sample_balanced(31, s as u64, None)?.len();
    }
    let sample_s = t1.elapsed().as_secs_f64();
    let live = store.len();
    let counts = store.counts();
    drop(store);
    let t2 = Instant::now();
    let store = Store::open(&path)?;
    let reopen_s = t2.elapsed().as_secs_f64();
    let geo = store.geometry();
    let file_len = std::fs::metadata(&path)?.len();
    drop(store);
    let _ = std::fs::remove_file(&path);

    // The same appends on the in-memory NOR model: the ring's own cost without msync.
    let g = Geometry::for_capacity(
        args.capacity_mib << 20,
        geo.segment_size,
        payload_len as u32,
    )?;
    let flash = MemFlash::new(vec![0u8; g.region_len() as usize], 4096);
    let mut ring: Ring<_, Vec<RecordRef>, Vec<LabelRef>> =
        Ring::create(flash, g, Vec::new(), Vec::new())?;
    for i in 0..10 {
        ring.label_id(&format!("class-{i}"))?;
    }
    let t3 = Instant::now();
    for i in 0..args.appends {
        ring.append(rng.gen_range(0..10), 0, &payloads[i % payloads.len()])?;
    }
    let mem_append_s = t3.elapsed().as_secs_f64();

    let per_append_us = 1e6 * append_s / args.appends as f64;
    println!(
        "\nmmap store: {} segments × {} KiB, capacity {} MiB, file {} MiB",
        geo.segment_count,
        geo.segment_size / 1024,
        args.capacity_mib,
        file_len >> 20
    );
    println!("  append (flush before ack), {payload_len}-byte records: {:.0} records/s ({per_append_us:.1} µs each, {:.1} MB/s)",
        args.appends as f64 / append_s, args.appends as f64 * payload_len as f64 / append_s / 1e6);
    println!(
        "  same appends on the in-memory ring (no msync): {:.0} records/s",
        args.appends as f64 / mem_append_s
    );
    println!(
        "  balanced sample of 31 (read + CRC check): {:.0} samples/s ({:.2} ms each)",
        args.samples as f64 / sample_s,
        1e3 * sample_s / args.samples as f64
    );
    println!(
        "  reopen (recovery scan of {live} records): {:.1} ms",
        1e3 * reopen_s
    );
    println!(
        "  live records per label after {} appends: {counts:?}",
        args.appends
    );
    Ok(json!({
        "payload_bytes": payload_len, "record_bytes": anytime_core::ring::layout::record_size(payload_len as u32),
        "segment_size": geo.segment_size, "segment_count": geo.segment_count,
        "capacity_bytes": geo.capacity, "file_bytes": file_len, "appends": args.appends,
        "append_per_s": args.appends as f64 / append_s, "append_us": per_append_us,
        "mem_append_per_s": args.appends as f64 / mem_append_s,
        "sample31_per_s": args.samples as f64 / sample_s, "samples_drawn": drawn,
        "reopen_ms": 1e3 * reopen_s, "live_records": live, "counts": counts,
    }))
}

fn tempfile_dir(dir: Option<PathBuf>) -> Result<PathBuf> {
    let d = dir.unwrap_or_else(|| {
        std::env::temp_dir().join(format!("anytime-bench-store-{}", std::process::id()))
    });
    std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    Ok(d)
}
