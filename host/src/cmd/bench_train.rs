//! `bench-train`: one training step of the tuned block on the CPU path, against the SGEMM
//! roofline of the same GEMM library measured in the same run, and against the same step
//! in PyTorch CPU (`host/bench/train_step_torch.py`, same shapes, same threads) when torch
//! is installed, and the wgpu path on whatever adapter exists (its time includes reading
//! the per-sample loss statistics back, which ends every step). Prints a table and writes
//! `target/bench/train_step.json`. The CPU step also gets A/B comparisons in alternating
//! rounds (the thin-GEMM kernel on and off; its AVX-512 builds against its AVX2 ones,
//! where the CPU has AVX-512; idle pool workers kept awake or left to sleep; the large
//! arrays on huge pages or not, and on cache lines or 16 bytes past one, each as two
//! backends; the weight matrices' AdamW update fused into backward or run after it; its
//! vector builds prefetching or not), the roofline ratio again with the SGEMM and the step in alternating rounds
//! (this VM's speed drifts between the two otherwise), and its AdamW update is timed on
//! its own. Last, GEMM libraries on the step's product shapes (ours, `matrixmultiply`,
//! the `gemm` crate; see `gemm_libs`).
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use anytime_linalg::{AlignedVec, Gemm, GemmOptions, MatMut, MatRef, Placement};
use anytime_runtime::block::{memory_report, step_flops, BlockDims, BlockParams, FrozenHead};
use anytime_runtime::train::adamw::adamw_update;
use anytime_runtime::train::gpu::GpuBackend;
use anytime_runtime::train::{
    Batch, CpuBackend, CpuOptions, MaskedBatch, MaskedState, TrainBackend, TrainConfig, TrainError,
    TunedState,
};
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde_json::json;

use super::{bench_out, gemm_libs, median};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Shapes: `vit-b32` (N=50, D=768, 12 heads, MLP 3072, E=512) or `tiny` (50, 64, 4, 256, 32).
    #[arg(long, default_value = "vit-b32")]
    shapes: String,
    /// Batch size B.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Label set size |Y|.
    #[arg(long, default_value_t = 100)]
    labels: usize,
    /// Timed steps (after one warm-up step).
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// Threads of the CPU path (the rayon pool) and of PyTorch (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// The PyTorch reference script.
    #[arg(long, default_value = "host/bench/train_step_torch.py")]
    script: PathBuf,
    /// Python interpreter for the reference.
    #[arg(long, default_value = "python3")]
    python: String,
    /// Skip the wgpu path.
    #[arg(long)]
    no_gpu: bool,
}

fn dims_of(name: &str) -> Result<BlockDims> {
    Ok(match name {
        "vit-b32" => BlockDims::VIT_B32,
        "tiny" => BlockDims {
            width: 64,
            heads: 4,
            mlp: 256,
            tokens: 50,
            embed: 32,
        },
        other => bail!("unknown shapes `{other}` (vit-b32 or tiny)"),
    })
}

/// An `[m,k]·[k,n]` SGEMM through the same library and threads as the step, its
/// operands made once.
struct Sgemm {
    dims: (usize, usize, usize),
    a: AlignedVec,
    b: AlignedVec,
    c: AlignedVec,
}

impl Sgemm {
    fn new(m: usize, k: usize, n: usize) -> Self {
        let mut s = Sgemm {
            dims: (m, k, n),
            a: (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect(),
            b: (0..k * n).map(|i| (i % 5) as f32 * 0.1).collect(),
            c: AlignedVec::zeros(m * n),
        };
        s.gflops(); // warm-up
        s
    }

    /// GFLOP/s of one product.
    fn gflops(&mut self) -> f64 {
        let (m, k, n) = self.dims;
        let t = Instant::now();
        let (a, b) = (MatRef::new(&self.a, m, k, k), MatRef::new(&self.b, k, n, n));
        Gemm::new(GemmOptions::default()).matmul(a, b, MatMut::new(&mut self.c, m, n, n), false);
        std::hint::black_box(&self.c);
        2.0 * (m * k * n) as f64 / t.elapsed().as_secs_f64() / 1e9
    }
}

/// Best-of-5 SGEMM GFLOP/s of `[m,k]·[k,n]` through the same library and threads.
fn sgemm_gflops(m: usize, k: usize, n: usize) -> f64 {
    let mut s = Sgemm::new(m, k, n);
    (0..5).map(|_| s.gflops()).fold(0.0, f64::max)
}

/// Rounds of every same-run comparison, and steps timed per round.
const ROUNDS: usize = 8;
const ROUND_STEPS: usize = 3;

/// The roofline ratio with the SGEMM and the step timed in alternating rounds (a
/// 1600×768·768×3072 SGEMM before and after [`ROUND_STEPS`] steps), so that both see the same machine state:
/// medians over the rounds of the ratio, of the SGEMM GFLOP/s and of the step seconds.
struct Interleaved {
    ratio: f64,
    sgemm_gflops: f64,
    step_s: f64,
    rounds: usize,
}

fn interleaved_roofline(
    cpu: &mut CpuBackend,
    batch: &Batch<'_>,
    flops: f64,
) -> Result<Interleaved> {
    let mut gemm = Sgemm::new(1600, 768, 3072);
    let (mut ratios, mut sgemm, mut steps) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        // The faster of an SGEMM before and one after the round's steps: one product is
        // short enough that a single hiccup would make its round's ratio look better.
        let before = gemm.gflops();
        let (_, step_s) = time_backend(cpu, batch, ROUND_STEPS)?;
        let g = before.max(gemm.gflops());
        ratios.push(flops / step_s / 1e9 / g);
        sgemm.push(g);
        steps.push(step_s);
    }
    Ok(Interleaved {
        ratio: median(&mut ratios),
        sgemm_gflops: median(&mut sgemm),
        step_s: median(&mut steps),
        rounds: ROUNDS,
    })
}

fn torch_reference(
    a: &Args,
    dims: &BlockDims,
    threads: usize,
    mode: &str,
) -> Option<serde_json::Value> {
    let out = Command::new(&a.python)
        .arg(&a.script)
        .args(["--mode", mode])
        .args([
            "--batch",
            &a.batch.to_string(),
            "--labels",
            &a.labels.to_string(),
        ])
        .args([
            "--tokens",
            &dims.tokens.to_string(),
            "--width",
            &dims.width.to_string(),
        ])
        .args([
            "--heads",
            &dims.heads.to_string(),
            "--mlp",
            &dims.mlp.to_string(),
        ])
        .args([
            "--embed",
            &dims.embed.to_string(),
            "--steps",
            &a.steps.to_string(),
        ])
        .args(["--threads", &threads.to_string()])
        .output();
    match out {
        Ok(o) if o.status.success() => serde_json::from_slice(&o.stdout).ok(),
        Ok(o) => {
            log::warn!(
                "PyTorch reference ({mode}) failed: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            None
        }
        Err(e) => {
            log::warn!("cannot run {}: {e}", a.python);
            None
        }
    }
}

/// Median forward and step seconds of `be` over `steps` (after one warm-up step).
fn time_backend(
    be: &mut dyn TrainBackend,
    batch: &Batch<'_>,
    steps: usize,
) -> Result<(f64, f64), TrainError> {
    be.step(batch)?; // warm-up (and, on the GPU, pipeline and plan creation)
    let mut fwd = Vec::new();
    let mut step = Vec::new();
    for _ in 0..steps.max(1) {
        let t = Instant::now();
        std::hint::black_box(be.loss(batch)?);
        fwd.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        std::hint::black_box(be.step(batch)?);
        step.push(t.elapsed().as_secs_f64());
    }
    Ok((median(&mut fwd), median(&mut step)))
}

/// Median time (s) of the dense `L_r` step (SPEC §8: mask, every token through the block
/// forward and backward, AdamW of the block and the mask head) on `tokens`, after a warm-up.
fn time_masked(
    be: &mut dyn TrainBackend,
    dims: &BlockDims,
    tokens: &[f32],
    steps: usize,
) -> Result<f64, TrainError> {
    let mut masked = MaskedState::init(dims, 3);
    be.masked_step(&MaskedBatch { tokens, seed: 0 }, &mut masked, 1.0)?;
    let mut times = Vec::new();
    for i in 0..steps.max(1) {
        let t = Instant::now();
        std::hint::black_box(be.masked_step(
            &MaskedBatch {
                tokens,
                seed: i as u64 + 1,
            },
            &mut masked,
            1.0,
        )?);
        times.push(t.elapsed().as_secs_f64());
    }
    Ok(median(&mut times))
}

/// Step times (s) with one switch of the CPU path on and off, interleaved in one run.
struct Ab {
    on_s: f64,
    off_s: f64,
    rounds: usize,
}

impl Ab {
    /// Prints the two rows of the comparison: `on` (after "A/B, N rounds: ") and `off`.
    fn print(&self, on: &str, off: &str) {
        let first = format!("  A/B, {} rounds: {on}", self.rounds);
        println!("{first:<44} {:>10.1}", self.on_s * 1e3);
        println!("{:<44} {:>10.1}", format!("  A/B: {off}"), self.off_s * 1e3);
    }

    /// The comparison in the JSON report.
    fn json(&self) -> serde_json::Value {
        json!({
            "rounds": self.rounds,
            "steps_per_round": ROUND_STEPS,
            "step_s_on": self.on_s,
            "step_s_off": self.off_s,
        })
    }
}

/// Times the step of `cpu` with its options and with `set(options, false)`, in
/// alternating rounds of steps, so both see the same machine state (this VM's speed
/// drifts by 20 % and more between runs); the medians over the rounds. Leaves the
/// backend's options as they were.
fn ab(cpu: &mut CpuBackend, batch: &Batch<'_>, set: fn(&mut CpuOptions, bool)) -> Result<Ab> {
    let (mut on, mut off) = (Vec::new(), Vec::new());
    let base = cpu.options();
    for _ in 0..ROUNDS {
        for (flag, out) in [(true, &mut on), (false, &mut off)] {
            let mut options = base;
            set(&mut options, flag);
            cpu.set_options(options);
            let r = time_backend(cpu, batch, ROUND_STEPS);
            cpu.set_options(base);
            out.push(r?.1);
        }
    }
    Ok(Ab {
        on_s: median(&mut on),
        off_s: median(&mut off),
        rounds: ROUNDS,
    })
}

/// Times the step of `cpu` against a second backend with the same state, made by
/// `make`, in alternating rounds, as [`ab`] does.
fn ab_backends(
    cpu: &mut CpuBackend,
    batch: &Batch<'_>,
    make: impl FnOnce(&CpuBackend) -> Result<CpuBackend, TrainError>,
) -> Result<Ab> {
    let mut off = make(cpu).context("building the CPU backend")?;
    let (mut t_on, mut t_off) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        t_on.push(time_backend(cpu, batch, ROUND_STEPS)?.1);
        t_off.push(time_backend(&mut off, batch, ROUND_STEPS)?.1);
    }
    Ok(Ab {
        on_s: median(&mut t_on),
        off_s: median(&mut t_off),
        rounds: ROUNDS,
    })
}

/// Median seconds of the AdamW update alone (a copy of the state, zero gradients):
/// element-wise over 7 arrays of every trainable parameter, so it measures how fast
/// the machine streams them.
fn time_adamw(dims: &BlockDims, cfg: &TrainConfig, state: &TunedState, steps: usize) -> f64 {
    let mut s = state.clone();
    let grads = BlockParams::zeros(dims);
    let mut times: Vec<f64> = (0..steps.max(1))
        .map(|_| {
            let t = Instant::now();
            adamw_update(
                dims,
                cfg,
                &mut s.optim,
                &mut s.params,
                &mut s.other_bias,
                &grads,
                0.0,
            );
            t.elapsed().as_secs_f64()
        })
        .collect();
    median(&mut times)
}

/// What the wgpu path measured.
struct GpuRun {
    adapter: String,
    fwd_s: f64,
    step_s: f64,
    memory: anytime_runtime::train::gpu::GpuMemory,
}

fn wgpu_run(
    dims: BlockDims,
    cfg: TrainConfig,
    head: FrozenHead,
    state: TunedState,
    batch: &Batch<'_>,
    steps: usize,
) -> Result<Option<GpuRun>> {
    let mut gpu = match GpuBackend::new(dims, cfg, head, state) {
        Ok(g) => g,
        Err(TrainError::NoAdapter) => return Ok(None),
        Err(e) => return Err(e).context("building the wgpu backend"),
    };
    let (fwd_s, step_s) = time_backend(&mut gpu, batch, steps)?;
    Ok(Some(GpuRun {
        adapter: gpu.adapter(),
        fwd_s,
        step_s,
        memory: gpu.memory(),
    }))
}

pub fn run(a: Args) -> Result<()> {
    let dims = dims_of(&a.shapes)?;
    let threads = a.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .context("starting the thread pool")?;

    let roofline = sgemm_gflops(1600, 768, 3072);
    let kv_gemm = sgemm_gflops(a.batch * dims.tokens, dims.width, 2 * dims.width);
    let gemm_libs = gemm_libs::step_shapes(a.batch, dims.width, dims.mlp, dims.tokens)
        .into_iter()
        .map(|s| gemm_libs::time_shape(s, ROUNDS, threads))
        .collect::<Result<Vec<_>>>()?;

    let mut rng = StdRng::seed_from_u64(0);
    let tokens: AlignedVec = (0..a.batch * dims.tokens_len())
        .map(|_| rng.gen_range(-1.0..1.0))
        .collect();
    let labels: Vec<u32> = (0..a.batch).map(|i| (i % a.labels) as u32).collect();
    let mut text: Vec<f32> = (0..a.labels * dims.embed)
        .map(|_| rng.gen_range(-1.0..1.0))
        .collect();
    anytime_runtime::block::l2_normalise(&mut text, dims.embed);
    let batch = Batch {
        tokens: &tokens,
        labels: &labels,
        text: &text,
        n_labels: a.labels,
    };

    let state = TunedState::fresh(&dims, BlockParams::random(&dims, 1));
    let head = FrozenHead::random(&dims, 2);
    let cfg = TrainConfig::default();
    let options = CpuOptions::default();
    let mut cpu = CpuBackend::with_options(dims, cfg.clone(), head.clone(), state.clone(), options)
        .context("building the CPU backend")?;
    let (fwd_s, step_s) = time_backend(&mut cpu, &batch, a.steps)?;
    // The thin-GEMM kernel (when this CPU has it), then the kept-awake workers.
    let thin = if options.gemm.thin_active() {
        Some(ab(&mut cpu, &batch, |o, on| o.gemm.thin = on)?)
    } else {
        None
    };
    let avx512 = if options.gemm.thin_avx512_active() {
        Some(ab(&mut cpu, &batch, |o, on| o.gemm.thin_avx512 = on)?)
    } else {
        None
    };
    let awake = ab(&mut cpu, &batch, |o, on| o.keep_awake = on)?;
    let fused = ab(&mut cpu, &batch, |o, on| o.fused_update = on)?;
    let prefetch = ab(&mut cpu, &batch, |o, on| o.update_prefetch = on)?;
    let twin = |options: CpuOptions| {
        let (cfg, head) = (&cfg, &head);
        move |c: &CpuBackend| {
            let state = c.state_ref().clone();
            CpuBackend::with_options(dims, cfg.clone(), head.clone(), state, options)
        }
    };
    // Huge pages are asked for when a backend is made: a second one made without.
    let no_huge = CpuOptions {
        huge_pages: false,
        ..options
    };
    let huge = ab_backends(&mut cpu, &batch, twin(no_huge))?;
    // Large arrays on cache lines: a second backend whose arrays, and whose steps'
    // buffers, start 16 bytes past a line, as `malloc` puts them.
    let past_line = CpuOptions {
        gemm: GemmOptions {
            placement: Placement::PastLine,
            ..options.gemm
        },
        ..options
    };
    let lines = ab_backends(&mut cpu, &batch, twin(past_line))?;
    let flops = step_flops(&dims, a.batch, a.labels);
    let inter = interleaved_roofline(&mut cpu, &batch, flops.executed as f64)?;
    let adamw_s = time_adamw(&dims, &cfg, cpu.state_ref(), a.steps);
    let masked_s = time_masked(&mut cpu, &dims, batch.tokens, a.steps)?;
    drop(cpu);
    let gflops = flops.executed as f64 / step_s / 1e9;
    let mem = memory_report(&dims, a.batch);

    let modes = [
        ("same", "PyTorch CPU, same algorithm"),
        ("pruned", "PyTorch CPU, CLS-only but keys/values"),
        ("dense", "PyTorch CPU, dense block"),
    ];
    let torch: Vec<(&str, &str, Option<serde_json::Value>)> = modes
        .iter()
        .map(|&(m, label)| (m, label, torch_reference(&a, &dims, threads, m)))
        .collect();
    let t_step = |r: &Option<serde_json::Value>| r.as_ref().and_then(|r| r["step_s"].as_f64());
    let gpu = if a.no_gpu {
        None
    } else {
        wgpu_run(dims, cfg, head, state, &batch, a.steps)?
    };

    println!(
        "training step, shapes {} (N={}, D={}, heads {}, MLP {}, E={}), B={}, |Y|={}, {} threads",
        a.shapes,
        dims.tokens,
        dims.width,
        dims.heads,
        dims.mlp,
        dims.embed,
        a.batch,
        a.labels,
        threads
    );
    println!(
        "FLOPs per step: {:.3} G executed (CLS-only, keys/values folded; {:.3} G more with the input tokens' gradient), {:.2} G dense equivalent",
        flops.executed as f64 / 1e9,
        flops.token_grad as f64 / 1e9,
        flops.dense as f64 / 1e9
    );
    println!("{:<44} {:>10} {:>10}", "", "ms", "GFLOP/s");
    println!(
        "{:<44} {:>10} {:>10.1}",
        "SGEMM 1600x768 . 768x3072 (matrixmultiply)", "", roofline
    );
    println!(
        "{:<44} {:>10} {:>10.1}",
        format!(
            "SGEMM {}x{} . {}x{} (k/v shape)",
            a.batch * dims.tokens,
            dims.width,
            dims.width,
            2 * dims.width
        ),
        "",
        kv_gemm
    );
    println!(
        "{:<44} {:>10.1} {:>10}",
        "CPU path: forward + loss",
        fwd_s * 1e3,
        ""
    );
    println!(
        "{:<44} {:>10.1} {:>10.1}",
        "CPU path: step (fwd, bwd, AdamW)",
        step_s * 1e3,
        gflops
    );
    println!(
        "{:<44} {:>10.1} {:>10}",
        "  of which AdamW alone (timed apart)",
        adamw_s * 1e3,
        ""
    );
    println!(
        "{:<44} {:>10.2}",
        "roofline ratio (step / SGEMM)",
        gflops / roofline
    );
    println!(
        "{:<44} {:>10.2}",
        format!(
            "  same, SGEMM and step in {} alternating rounds",
            inter.rounds
        ),
        inter.ratio
    );
    println!(
        "{:<44} {:>10.1} {:>10.1}",
        "    (their medians: step ms, SGEMM GFLOP/s)",
        inter.step_s * 1e3,
        inter.sgemm_gflops
    );
    match &thin {
        Some(t) => t.print("thin kernel on", "off (every product on matrixmultiply)"),
        None => println!("thin-GEMM kernel: not in use on this CPU (matrixmultiply only)"),
    }
    match &avx512 {
        Some(t) => t.print("thin kernel on AVX-512", "on AVX2"),
        None => println!("thin kernel's AVX-512 build: not in use on this CPU"),
    }
    awake.print("idle workers kept awake", "off (idle rayon workers sleep)");
    fused.print(
        "update fused into bwd",
        "off (gradients stored, then AdamW)",
    );
    prefetch.print("AdamW prefetching", "off (hardware prefetch only)");
    huge.print("arrays on huge pages", "on 4 KiB pages (another backend)");
    lines.print(
        "arrays on cache lines",
        "16 bytes past one (another backend)",
    );
    for (_, label, r) in &torch {
        match t_step(r) {
            Some(t) => {
                println!("{:<44} {:>10.1}", label, t * 1e3);
                println!("{:<44} {:>10.2}", "  ratio ours / that", step_s / t);
            }
            None => println!("{label}: not available (see warning)"),
        }
    }
    println!(
        "{:<44} {:>10.1} {:>10.1}",
        "CPU path: dense L_r step (mask, fwd, bwd, AdamW)",
        masked_s * 1e3,
        flops.dense as f64 / masked_s / 1e9
    );
    let dense_torch = torch
        .iter()
        .find(|(m, _, _)| *m == "dense")
        .and_then(|(_, _, r)| t_step(r));
    if let Some(t) = dense_torch {
        println!(
            "{:<44} {:>10.2}",
            "  ratio ours / PyTorch CPU, dense block",
            masked_s / t
        );
    }
    let gpu_gflops = gpu.as_ref().map(|g| flops.executed as f64 / g.step_s / 1e9);
    match (&gpu, gpu_gflops) {
        (Some(g), Some(gf)) => {
            println!(
                "{:<44} {:>10.1} {:>10}",
                "wgpu path: forward + loss",
                g.fwd_s * 1e3,
                ""
            );
            println!(
                "{:<44} {:>10.1} {:>10.1}",
                "wgpu path: step (fwd, bwd, AdamW)",
                g.step_s * 1e3,
                gf
            );
            println!("  adapter: {}", g.adapter);
        }
        _ if a.no_gpu => println!("wgpu path: skipped (--no-gpu)"),
        _ => println!("wgpu path: no GPU adapter"),
    }
    let mib = |b: usize| b as f64 / (1024.0 * 1024.0);
    println!(
        "CPU memory (MiB): weights {:.1}, gradients {:.3} (+ a strip of {:.2} per thread; weight matrices' {:.1} not held in a step), optimiser {:.1}, saved activations {:.1}, backward scratch {:.1}",
        mib(mem.weights), mib(mem.gradients), mib(mem.gradient_strip_per_thread), mib(mem.weight_gradients), mib(mem.optimiser), mib(mem.activations), mib(mem.backward_scratch)
    );
    if let Some(g) = &gpu {
        let m = &g.memory;
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        println!(
            "GPU buffers (MiB): weights {:.1}, gradients {:.1}, optimiser {:.1}, batch plan (inputs, activations, backward) {:.1}",
            mib(m.weights), mib(m.gradients), mib(m.optimiser), mib(m.plan)
        );
    }

    gemm_libs::print(&gemm_libs, ROUNDS);

    let report = json!({
        "shapes": a.shapes,
        "dims": {"tokens": dims.tokens, "width": dims.width, "heads": dims.heads, "mlp": dims.mlp, "embed": dims.embed},
        "batch": a.batch,
        "labels": a.labels,
        "threads": threads,
        "steps_timed": a.steps.max(1),
        "flops_executed": flops.executed,
        "flops_token_grad_extra": flops.token_grad,
        "flops_dense": flops.dense,
        "sgemm_1600x768x3072_gflops": roofline,
        "sgemm_kv_shape_gflops": kv_gemm,
        "gemm_libraries": gemm_libs::json(&gemm_libs),
        "cpu_forward_loss_s": fwd_s,
        "cpu_step_s": step_s,
        "cpu_step_gflops": gflops,
        "cpu_adamw_alone_s": adamw_s,
        "cpu_masked_step_s": masked_s,
        "cpu_masked_step_gflops_dense": flops.dense as f64 / masked_s / 1e9,
        "ratio_masked_step_over_torch_dense": dense_torch.map(|t| masked_s / t),
        "roofline_ratio": gflops / roofline,
        "roofline_interleaved": json!({
            "rounds": inter.rounds,
            "steps_per_round": ROUND_STEPS,
            "ratio_median": inter.ratio,
            "sgemm_gflops_median": inter.sgemm_gflops,
            "step_s_median": inter.step_s,
        }),
        "thin_kernel_ab": thin.as_ref().map(Ab::json),
        "thin_avx512_ab": avx512.as_ref().map(Ab::json),
        "huge_pages_ab": huge.json(),
        "line_aligned_ab": lines.json(),
        "fused_update_ab": fused.json(),
        "update_prefetch_ab": prefetch.json(),
        "keep_awake_ab": awake.json(),
        "torch": torch.iter().map(|(m, _, r)| json!({
            "mode": m,
            "result": r,
            "ratio_ours_over_torch": t_step(r).map(|t| step_s / t),
        })).collect::<Vec<_>>(),
        "wgpu": gpu.as_ref().map(|g| json!({
            "adapter": g.adapter,
            "forward_loss_s": g.fwd_s,
            "step_s": g.step_s,
            "step_gflops": gpu_gflops,
            "memory_bytes": {
                "weights": g.memory.weights,
                "gradients": g.memory.gradients,
                "optimiser": g.memory.optimiser,
                "plan": g.memory.plan,
            },
        })),
        "memory_bytes": {
            "weights": mem.weights,
            "gradients": mem.gradients,
            "gradient_strip_per_thread": mem.gradient_strip_per_thread,
            "weight_gradients_not_held": mem.weight_gradients,
            "optimiser": mem.optimiser,
            "saved_activations": mem.activations,
            "backward_scratch": mem.backward_scratch,
        },
    });
    let path = bench_out("train_step.json", &report)?;
    println!("wrote {}", path.display());
    Ok(())
}
