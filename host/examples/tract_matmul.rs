//! A minimal reproduction for tract's maintainers (issue 17): one ONNX `MatMul` of the
//! trunk's product class, loaded, optimised and run as the runtime's encoder does (the
//! batch left symbolic, one thread), or with the batch made concrete before optimising
//! (`concrete`), timed on its own. `host/bench/tract_matmul_repro.py`
//! writes the ONNX files, runs this and onnxruntime in alternating rounds, and prints the
//! ratio.
//!
//!     cargo run --release -p anytime-host --example tract_matmul -- FILE.onnx BATCH M K CALLS [symbolic|concrete]
//!
//! Prints one JSON line: seconds per call (the best of 3 rounds of CALLS), GFLOP/s, and
//! the sum of the output's magnitudes (to check against onnxruntime's).

use std::time::Instant;

use tract_onnx::prelude::*;

fn main() -> TractResult<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = || -> ! {
        eprintln!("usage: tract_matmul FILE.onnx BATCH M K CALLS [symbolic|concrete]");
        std::process::exit(2)
    };
    if !(5..=6).contains(&args.len()) {
        usage();
    }
    let concrete = match args.get(5).map(String::as_str) {
        None | Some("symbolic") => false,
        Some("concrete") => true,
        Some(_) => usage(),
    };
    let (batch, m, k, calls): (usize, usize, usize, usize) = (
        args[1].parse()?,
        args[2].parse()?,
        args[3].parse()?,
        args[4].parse()?,
    );
    let mut model = tract_onnx::onnx().model_for_path(&args[0])?;
    let sym = model.sym("batch");
    let b: TDim = if concrete { batch.into() } else { sym.into() };
    let shape: TVec<TDim> = tvec![b, m.into(), k.into()];
    model.set_input_fact(0, InferenceFact::dt_shape(f32::datum_type(), shape))?;
    let plan = model.into_optimized()?.into_runnable()?;
    let x: Vec<f32> = (0..batch * m * k)
        .map(|i| ((i * 7919) % 13) as f32 * 0.1 - 0.6)
        .collect();
    let input = Tensor::from_shape(&[batch, m, k], &x)?;
    let out = plan.run(tvec![input.clone().into()])?;
    let view = out[0].to_plain_array_view::<f32>()?;
    let n = view.shape()[2];
    let sum: f64 = view.iter().map(|&v| f64::from(v).abs()).sum();
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let t = Instant::now();
        for _ in 0..calls {
            std::hint::black_box(plan.run(tvec![input.clone().into()])?);
        }
        best = best.min(t.elapsed().as_secs_f64() / calls as f64);
    }
    let flop = 2.0 * (batch * m * k * n) as f64;
    println!(
        "{{\"runtime\": \"tract-onnx\", \"concrete\": {concrete}, \"batch\": {batch}, \"m\": {m}, \"k\": {k}, \"n\": {n}, \
         \"seconds\": {best}, \"gflops\": {}, \"sum\": {sum}}}",
        flop / best / 1e9
    );
    Ok(())
}
