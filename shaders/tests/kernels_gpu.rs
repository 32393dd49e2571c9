//! Every kernel against a plain CPU reference on small shapes, on whatever adapter exists
//! (Mesa lavapipe in CI). Without an adapter each test logs a skip (`anytime_testkit::skip`) and passes,
//! unless `ANYTIME_EDGE_REQUIRE_GPU` is set (`.ci/run` sets it): then it fails.
//!
//! Tolerance: `|gpu − ref| ≤ 1e-5 + 1e-4·|ref|` elementwise (f32 kernels against f64 or
//! f32 references with a different summation order; the sums here have ≤ 100 terms).

use anytime_shaders::kernels::{
    adamw, attention_bwd, attention_fwd, col_sum, copy_rows, dense_attention_bwd,
    dense_attention_fwd, gather_rows, layer_norm_bwd, layer_norm_fwd, loss_fwd_bwd, matmul,
    mse_fwd_bwd,
};
use anytime_shaders::{wgpu, GpuContext, GpuError, Kernels};
use anytime_testkit::close;
use rand::{rngs::StdRng, Rng, SeedableRng};

fn gpu(test: &str) -> Option<(GpuContext, Kernels)> {
    match GpuContext::new() {
        Ok(ctx) => {
            let k = Kernels::new(&ctx).expect("kernels build");
            Some((ctx, k))
        }
        Err(GpuError::NoAdapter) => {
            anytime_testkit::skip::gpu_absent(test);
            None
        }
        Err(e) => panic!("GPU context: {e}"),
    }
}

fn rand_vec(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| scale * rng.gen_range(-1.0f32..1.0))
        .collect()
}

/// The file's tolerance (see the top), NaN and infinities failing.
#[track_caller]
fn assert_close(what: &str, got: &[f32], want: &[f64]) {
    anytime_testkit::assert_close(what, got, want, 1e-5, 1e-4);
}

#[test]
fn gpu_matmul_all_layouts_offsets_bias_accumulate() {
    let Some((ctx, k)) = gpu("gpu_matmul_all_layouts_offsets_bias_accumulate") else {
        return;
    };
    let mut rng = StdRng::seed_from_u64(1);
    let (m, n, kk) = (37, 45, 70);
    for (ta, tb, acc, bias) in [
        (false, false, false, false),
        (false, true, true, true),
        (true, false, false, true),
        (true, true, true, false),
    ] {
        // Operands inside larger buffers, at offsets, with padded row strides.
        let (a_rows, a_cols) = if ta { (kk, m) } else { (m, kk) };
        let (b_rows, b_cols) = if tb { (n, kk) } else { (kk, n) };
        let (lda, ldb, ldc) = (a_cols + 3, b_cols + 5, n + 2);
        let (a_off, b_off, c_off, bias_off) = (7, 11, 13, 3);
        let a = rand_vec(&mut rng, a_off + a_rows * lda, 1.0);
        let b = rand_vec(&mut rng, b_off + b_rows * ldb, 1.0);
        let bv = rand_vec(&mut rng, bias_off + n, 1.0);
        let c0 = rand_vec(&mut rng, c_off + m * ldc, 1.0);
        let at = |i: usize, p: usize| {
            if ta {
                a[a_off + p * lda + i]
            } else {
                a[a_off + i * lda + p]
            }
        };
        let bt = |p: usize, j: usize| {
            if tb {
                b[b_off + j * ldb + p]
            } else {
                b[b_off + p * ldb + j]
            }
        };
        let alpha = if ta { 0.5f32 } else { 1.0 };
        let mut want: Vec<f64> = c0.iter().map(|&x| x as f64).collect();
        for i in 0..m {
            for j in 0..n {
                let mut s: f64 = alpha as f64
                    * (0..kk)
                        .map(|p| at(i, p) as f64 * bt(p, j) as f64)
                        .sum::<f64>();
                if bias {
                    s += bv[bias_off + j] as f64;
                }
                let idx = c_off + i * ldc + j;
                want[idx] = if acc { want[idx] + s } else { s };
            }
        }
        let (ga, gb, gbias, gc) = (
            ctx.storage_init("a", &a),
            ctx.storage_init("b", &b),
            ctx.storage_init("bias", &bv),
            ctx.storage_init("c", &c0),
        );
        let layout = |t| {
            if t {
                matmul::Layout::Transposed
            } else {
                matmul::Layout::Plain
            }
        };
        let d = k
            .matmul
            .bind(
                &ctx,
                &matmul::Product {
                    m: m as u32,
                    n: n as u32,
                    k: kk as u32,
                    a: matmul::Operand::new(&ga, a_off as u32, lda as u32),
                    a_layout: layout(ta),
                    b: matmul::Operand::new(&gb, b_off as u32, ldb as u32),
                    b_layout: layout(tb),
                    bias: bias.then(|| matmul::Operand::new(&gbias, bias_off as u32, 0)),
                    c: matmul::Operand::new(&gc, c_off as u32, ldc as u32),
                    accumulate: acc,
                    alpha,
                },
            )
            .expect("bind");
        ctx.run("matmul test", &[d]);
        let got = ctx.read_f32(&gc, c0.len()).expect("read");
        assert_close(&format!("matmul ta={ta} tb={tb}"), &got, &want);
    }
}

#[test]
fn gpu_matmul_rejects_short_buffers() {
    let Some((ctx, k)) = gpu("gpu_matmul_rejects_short_buffers") else {
        return;
    };
    let small = ctx.storage_zeroed("small", 10);
    let big = ctx.storage_zeroed("big", 1000);
    let err = k
        .matmul
        .bind(
            &ctx,
            &matmul::Product {
                m: 4,
                n: 4,
                k: 4,
                a: matmul::Operand::new(&small, 0, 4),
                a_layout: matmul::Layout::Plain,
                b: matmul::Operand::new(&big, 0, 4),
                b_layout: matmul::Layout::Plain,
                bias: None,
                c: matmul::Operand::new(&big, 0, 4),
                accumulate: false,
                alpha: 1.0,
            },
        )
        .unwrap_err();
    assert!(matches!(
        err,
        GpuError::Size {
            kernel: "matmul",
            binding: "a",
            expected: 16,
            found: 10
        }
    ));
}

/// Reference LayerNorm: `(y, mean, rstd)`.
fn ln_ref(x: &[f32], d: usize, w: &[f32], b: &[f32]) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let rows = x.len() / d;
    let (mut y, mut mu, mut rs) = (vec![0.0; x.len()], vec![0.0; rows], vec![0.0; rows]);
    for r in 0..rows {
        let xr = &x[r * d..(r + 1) * d];
        let mean = xr.iter().map(|&v| v as f64).sum::<f64>() / d as f64;
        let var = xr.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / d as f64;
        let rstd = 1.0 / (var + 1e-5).sqrt();
        for i in 0..d {
            y[r * d + i] = (xr[i] as f64 - mean) * rstd * w[i] as f64 + b[i] as f64;
        }
        mu[r] = mean;
        rs[r] = rstd;
    }
    (y, mu, rs)
}

#[test]
fn gpu_layer_norm_forward_and_backward() {
    let Some((ctx, k)) = gpu("gpu_layer_norm_forward_and_backward") else {
        return;
    };
    let mut rng = StdRng::seed_from_u64(2);
    let (rows, d) = (13, 24);
    let x: Vec<f32> = rand_vec(&mut rng, rows * d, 2.0)
        .iter()
        .map(|v| v + 0.5)
        .collect();
    // Scale and shift inside a larger "parameter" buffer.
    let wb = rand_vec(&mut rng, 5 + 2 * d, 1.0);
    let (w, b) = (&wb[5..5 + d], &wb[5 + d..]);
    let dy = rand_vec(&mut rng, rows * d, 1.0);
    let dx0 = rand_vec(&mut rng, rows * d, 1.0);
    let (y_ref, mu, rs) = ln_ref(&x, d, w, b);

    let gx = ctx.storage_init("x", &x);
    let gwb = ctx.storage_init("wb", &wb);
    let gy = ctx.storage_zeroed("y", rows * d);
    let gstats = ctx.storage_zeroed("stats", 2 * rows);
    let gdy = ctx.storage_init("dy", &dy);
    let gdx = ctx.storage_init("dx", &dx0);
    let ggrads = ctx.storage_zeroed("grads", 3 + 2 * d);
    let mut ds = vec![k
        .layer_norm_fwd
        .bind(
            &ctx,
            &layer_norm_fwd::LayerNormFwdArgs {
                rows: rows as u32,
                width: d as u32,
                eps: 1e-5,
                x: &gx,
                wb: &gwb,
                w_off: 5,
                b_off: (5 + d) as u32,
                y: &gy,
                stats: &gstats,
            },
        )
        .unwrap()];
    ds.extend(
        k.layer_norm_bwd
            .bind(
                &ctx,
                &layer_norm_bwd::LayerNormBwdArgs {
                    rows: rows as u32,
                    width: d as u32,
                    x: &gx,
                    wb: &gwb,
                    w_off: 5,
                    stats: &gstats,
                    dy: &gdy,
                    dx: &gdx,
                    accumulate: true,
                    grads: Some(layer_norm_bwd::ParamGrads {
                        buffer: &ggrads,
                        dw_off: 3,
                        db_off: (3 + d) as u32,
                    }),
                },
            )
            .unwrap(),
    );
    ctx.run("layer norm test", &ds);
    assert_close("ln y", &ctx.read_f32(&gy, rows * d).unwrap(), &y_ref);
    let stats: Vec<f64> = mu.iter().zip(&rs).flat_map(|(&m, &r)| [m, r]).collect();
    assert_close(
        "ln stats",
        &ctx.read_f32(&gstats, 2 * rows).unwrap(),
        &stats,
    );

    let mut dx_ref: Vec<f64> = dx0.iter().map(|&v| v as f64).collect();
    let mut dw = vec![0.0f64; d];
    let mut db = vec![0.0f64; d];
    for r in 0..rows {
        let xh: Vec<f64> = (0..d)
            .map(|i| (x[r * d + i] as f64 - mu[r]) * rs[r])
            .collect();
        let g: Vec<f64> = (0..d).map(|i| dy[r * d + i] as f64 * w[i] as f64).collect();
        let mg = g.iter().sum::<f64>() / d as f64;
        let mgx = g.iter().zip(&xh).map(|(a, b)| a * b).sum::<f64>() / d as f64;
        for i in 0..d {
            dx_ref[r * d + i] += rs[r] * (g[i] - mg - xh[i] * mgx);
            dw[i] += dy[r * d + i] as f64 * xh[i];
            db[i] += dy[r * d + i] as f64;
        }
    }
    assert_close("ln dx", &ctx.read_f32(&gdx, rows * d).unwrap(), &dx_ref);
    let grads = ctx.read_f32(&ggrads, 3 + 2 * d).unwrap();
    assert_close("ln dw", &grads[3..3 + d], &dw);
    assert_close("ln db", &grads[3 + d..], &db);
}

#[test]
fn gpu_attention_forward_and_backward() {
    let Some((ctx, k)) = gpu("gpu_attention_forward_and_backward") else {
        return;
    };
    let mut rng = StdRng::seed_from_u64(3);
    // 70 keys: more than one 64-thread pass over the keys.
    let (batch, heads, n_k, d) = (2usize, 3usize, 70usize, 12usize);
    let shape = attention_fwd::AttentionShape {
        batch: batch as u32,
        heads: heads as u32,
        n_k: n_k as u32,
        width: d as u32,
    };
    let qt = rand_vec(&mut rng, batch * heads * d, 1.0);
    let h1 = rand_vec(&mut rng, batch * n_k * d, 1.5);
    let dav = rand_vec(&mut rng, batch * heads * d, 1.0);
    let dh1_0 = rand_vec(&mut rng, batch * n_k * d, 1.0);
    let hv = |b: usize, j: usize, c: usize| h1[(b * n_k + j) * d + c] as f64;

    let mut probs = vec![0.0f64; batch * heads * n_k];
    let mut av = vec![0.0f64; batch * heads * d];
    let mut dqt = vec![0.0f64; av.len()];
    let mut dh1: Vec<f64> = dh1_0.iter().map(|&v| v as f64).collect();
    for b in 0..batch {
        for h in 0..heads {
            let t = b * heads + h;
            let q = |c: usize| qt[t * d + c] as f64;
            let da = |c: usize| dav[t * d + c] as f64;
            let s: Vec<f64> = (0..n_k)
                .map(|j| (0..d).map(|c| q(c) * hv(b, j, c)).sum::<f64>())
                .collect();
            let mx = s.iter().cloned().fold(f64::MIN, f64::max);
            let sum: f64 = s.iter().map(|v| (v - mx).exp()).sum();
            let p: Vec<f64> = s.iter().map(|v| (v - mx).exp() / sum).collect();
            probs[t * n_k..(t + 1) * n_k].copy_from_slice(&p);
            for c in 0..d {
                av[t * d + c] = (0..n_k).map(|j| p[j] * hv(b, j, c)).sum();
            }
            let dp: Vec<f64> = (0..n_k)
                .map(|j| (0..d).map(|c| da(c) * hv(b, j, c)).sum())
                .collect();
            let dot: f64 = p.iter().zip(&dp).map(|(a, b)| a * b).sum();
            for j in 0..n_k {
                let ds = p[j] * (dp[j] - dot);
                for c in 0..d {
                    dqt[t * d + c] += ds * hv(b, j, c);
                    dh1[(b * n_k + j) * d + c] += p[j] * da(c) + ds * q(c);
                }
            }
        }
    }
    let (gqt, gh1, gdav) = (
        ctx.storage_init("qt", &qt),
        ctx.storage_init("h1", &h1),
        ctx.storage_init("dav", &dav),
    );
    let gp = ctx.storage_zeroed("probs", probs.len());
    let gav = ctx.storage_zeroed("av", av.len());
    let gds = ctx.storage_zeroed("dscores", probs.len());
    let gdqt = ctx.storage_zeroed("dqt", av.len());
    let gdh1 = ctx.storage_init("dh1", &dh1_0);
    let mut ds = vec![k
        .attention_fwd
        .bind(&ctx, &shape, &gqt, &gh1, &gp, &gav)
        .unwrap()];
    ds.extend(
        k.attention_bwd
            .bind(
                &ctx,
                &shape,
                &attention_bwd::AttentionBwdArgs {
                    qt: &gqt,
                    h1: &gh1,
                    probs: &gp,
                    dav: &gdav,
                    dscores: &gds,
                    dqt: &gdqt,
                    dh1: &gdh1,
                    accumulate: true,
                },
            )
            .unwrap(),
    );
    ctx.run("attention test", &ds);
    assert_close("probs", &ctx.read_f32(&gp, probs.len()).unwrap(), &probs);
    assert_close("av", &ctx.read_f32(&gav, av.len()).unwrap(), &av);
    assert_close("dqt", &ctx.read_f32(&gdqt, av.len()).unwrap(), &dqt);
    assert_close("dh1", &ctx.read_f32(&gdh1, dh1.len()).unwrap(), &dh1);
}

/// Where the dense attention test keeps Q, K, V (and dQ, dK, dV) in its buffers: element
/// `off + r·stride + c` of block `off`.
struct Blocks {
    q: usize,
    k: usize,
    v: usize,
    stride: usize,
}

impl Blocks {
    fn operand<'a>(&self, buffer: &'a wgpu::Buffer) -> dense_attention_fwd::QkvOperand<'a> {
        dense_attention_fwd::QkvOperand {
            buffer,
            q: self.q as u32,
            k: self.k as u32,
            v: self.v as u32,
            stride: self.stride as u32,
        }
    }
}

#[test]
fn gpu_dense_attention_forward_and_backward() {
    let Some((ctx, k)) = gpu("gpu_dense_attention_forward_and_backward") else {
        return;
    };
    let mut rng = StdRng::seed_from_u64(8);
    let (batch, heads, n, dh) = (2usize, 3usize, 11usize, 4usize);
    let (w, rows) = (heads * dh, batch * n);
    let shape = dense_attention_fwd::DenseAttentionShape {
        batch: batch as u32,
        heads: heads as u32,
        tokens: n as u32,
        head_dim: dh as u32,
    };
    let scale = 0.7f32;
    // Blocks at offsets, out of order, with padded strides; what lies around them must
    // come back untouched.
    let src = Blocks {
        q: 3 + w,
        k: 3,
        v: 3 + 2 * w,
        stride: 3 * w + 5,
    };
    let dst = Blocks {
        q: 7 + 2 * w,
        k: 7,
        v: 7 + w,
        stride: 3 * w + 2,
    };
    let (o_off, ldo, do_off, lddo) = (2usize, w + 3, 1usize, w + 1);
    let qkv = rand_vec(&mut rng, src.q + rows * src.stride, 1.5);
    let d_out = rand_vec(&mut rng, do_off + rows * lddo, 1.0);
    let out0 = rand_vec(&mut rng, o_off + rows * ldo, 1.0);
    let dqkv0 = rand_vec(&mut rng, dst.q + rows * dst.stride, 1.0);
    let at =
        |off: usize, r: usize, h: usize, c: usize| qkv[off + r * src.stride + h * dh + c] as f64;
    let g_o = |r: usize, h: usize, c: usize| d_out[do_off + r * lddo + h * dh + c] as f64;

    // f64 reference, per image and head.
    let mut probs = vec![0.0f64; batch * heads * n * n];
    let mut out: Vec<f64> = out0.iter().map(|&v| v as f64).collect();
    let mut dqkv: Vec<f64> = dqkv0.iter().map(|&v| v as f64).collect();
    for b in 0..batch {
        for h in 0..heads {
            let blk = (b * heads + h) * n * n;
            let row = |i: usize| b * n + i;
            let mut ds = vec![0.0f64; n * n];
            for i in 0..n {
                let s: Vec<f64> = (0..n)
                    .map(|j| {
                        scale as f64
                            * (0..dh)
                                .map(|c| at(src.q, row(i), h, c) * at(src.k, row(j), h, c))
                                .sum::<f64>()
                    })
                    .collect();
                let mx = s.iter().cloned().fold(f64::MIN, f64::max);
                let z: f64 = s.iter().map(|v| (v - mx).exp()).sum();
                let p: Vec<f64> = s.iter().map(|v| (v - mx).exp() / z).collect();
                probs[blk + i * n..blk + (i + 1) * n].copy_from_slice(&p);
                for c in 0..dh {
                    out[o_off + row(i) * ldo + h * dh + c] =
                        (0..n).map(|j| p[j] * at(src.v, row(j), h, c)).sum();
                }
                let dp: Vec<f64> = (0..n)
                    .map(|j| {
                        (0..dh)
                            .map(|c| g_o(row(i), h, c) * at(src.v, row(j), h, c))
                            .sum()
                    })
                    .collect();
                let dot: f64 = p.iter().zip(&dp).map(|(a, b)| a * b).sum();
                for j in 0..n {
                    ds[i * n + j] = scale as f64 * p[j] * (dp[j] - dot);
                }
            }
            for i in 0..n {
                for c in 0..dh {
                    let col = h * dh + c;
                    dqkv[dst.q + row(i) * dst.stride + col] = (0..n)
                        .map(|j| ds[i * n + j] * at(src.k, row(j), h, c))
                        .sum();
                    dqkv[dst.k + row(i) * dst.stride + col] = (0..n)
                        .map(|l| ds[l * n + i] * at(src.q, row(l), h, c))
                        .sum();
                    dqkv[dst.v + row(i) * dst.stride + col] = (0..n)
                        .map(|l| probs[blk + l * n + i] * g_o(row(l), h, c))
                        .sum();
                }
            }
        }
    }

    let (gqkv, gdo) = (
        ctx.storage_init("qkv", &qkv),
        ctx.storage_init("d out", &d_out),
    );
    let gp = ctx.storage_zeroed("probs", probs.len());
    let gout = ctx.storage_init("out", &out0);
    let gds = ctx.storage_zeroed("dscores", probs.len());
    let gdqkv = ctx.storage_init("dqkv", &dqkv0);
    let mut ds = k
        .dense_attention_fwd
        .bind(
            &ctx,
            &shape,
            &dense_attention_fwd::DenseAttentionFwdArgs {
                qkv: src.operand(&gqkv),
                scale,
                probs: &gp,
                out: matmul::Operand::new(&gout, o_off as u32, ldo as u32),
            },
        )
        .unwrap()
        .to_vec();
    ds.extend(
        k.dense_attention_bwd
            .bind(
                &ctx,
                &shape,
                &dense_attention_bwd::DenseAttentionBwdArgs {
                    qkv: src.operand(&gqkv),
                    scale,
                    probs: &gp,
                    d_out: matmul::Operand::new(&gdo, do_off as u32, lddo as u32),
                    dscores: &gds,
                    dqkv: dst.operand(&gdqkv),
                },
            )
            .unwrap(),
    );
    ctx.run("dense attention test", &ds);
    assert_close("probs", &ctx.read_f32(&gp, probs.len()).unwrap(), &probs);
    assert_close("out", &ctx.read_f32(&gout, out.len()).unwrap(), &out);
    assert_close("dqkv", &ctx.read_f32(&gdqkv, dqkv.len()).unwrap(), &dqkv);
}

#[test]
fn gpu_dense_attention_rejects_bad_arguments() {
    let Some((ctx, k)) = gpu("gpu_dense_attention_rejects_bad_arguments") else {
        return;
    };
    let shape = dense_attention_fwd::DenseAttentionShape {
        batch: 2,
        heads: 2,
        tokens: 3,
        head_dim: 4,
    };
    let (rows, w) = (6, 8);
    let qkv = ctx.storage_zeroed("qkv", rows * 3 * w);
    let probs = ctx.storage_zeroed("probs", 2 * 2 * 9);
    let short = ctx.storage_zeroed("short", 2 * 2 * 9 - 1);
    let out = ctx.storage_zeroed("out", rows * w);
    let dscores = ctx.storage_zeroed("dscores", 2 * 2 * 9);
    let dqkv = ctx.storage_zeroed("dqkv", rows * 3 * w);
    let fused = |b| dense_attention_fwd::QkvOperand::fused(b, w as u32);
    let fwd = |probs, out| {
        k.dense_attention_fwd
            .bind(
                &ctx,
                &shape,
                &dense_attention_fwd::DenseAttentionFwdArgs {
                    qkv: fused(&qkv),
                    scale: 0.5,
                    probs,
                    out: matmul::Operand::new(out, 0, w as u32),
                },
            )
            .map(|_| ())
    };
    assert!(fwd(&probs, &out).is_ok());
    assert!(matches!(
        fwd(&short, &out),
        Err(GpuError::Size {
            kernel: "dense_attention_fwd",
            binding: "probs",
            expected: 36,
            found: 35
        })
    ));
    assert!(matches!(fwd(&out, &out), Err(GpuError::Args { .. })));
    let bwd = |dqkv_blocks| {
        k.dense_attention_bwd
            .bind(
                &ctx,
                &shape,
                &dense_attention_bwd::DenseAttentionBwdArgs {
                    qkv: fused(&qkv),
                    scale: 0.5,
                    probs: &probs,
                    d_out: matmul::Operand::new(&out, 0, w as u32),
                    dscores: &dscores,
                    dqkv: dqkv_blocks,
                },
            )
            .map(|_| ())
    };
    assert!(bwd(fused(&dqkv)).is_ok());
    // dK over half of dQ's columns: written twice.
    let overlapping = dense_attention_fwd::QkvOperand {
        k: 4,
        ..fused(&dqkv)
    };
    let err = bwd(overlapping).unwrap_err();
    assert!(
        matches!(&err, GpuError::Args { kernel: "dense_attention_bwd", message } if message.contains("overlap")),
        "{err}"
    );
}

#[test]
fn gpu_quick_gelu_forward_and_backward() {
    let Some((ctx, k)) = gpu("gpu_quick_gelu_forward_and_backward") else {
        return;
    };
    let mut rng = StdRng::seed_from_u64(4);
    let n = 1000;
    let x = rand_vec(&mut rng, n, 6.0);
    let dy = rand_vec(&mut rng, n, 1.0);
    let sig = |v: f64| 1.0 / (1.0 + (-1.702 * v).exp());
    let y_ref: Vec<f64> = x.iter().map(|&v| v as f64 * sig(v as f64)).collect();
    let dx_ref: Vec<f64> = x
        .iter()
        .zip(&dy)
        .map(|(&v, &g)| {
            let (v, s) = (v as f64, sig(v as f64));
            g as f64 * (s + 1.702 * v * s * (1.0 - s))
        })
        .collect();
    let (gx, gdy) = (ctx.storage_init("x", &x), ctx.storage_init("dy", &dy));
    let (gy, gdx) = (ctx.storage_zeroed("y", n), ctx.storage_zeroed("dx", n));
    let ds = [
        k.quick_gelu_fwd.bind(&ctx, n as u32, &gx, &gy).unwrap(),
        k.quick_gelu_bwd
            .bind(&ctx, n as u32, &gx, &gdy, &gdx)
            .unwrap(),
    ];
    ctx.run("gelu test", &ds);
    assert_close("gelu y", &ctx.read_f32(&gy, n).unwrap(), &y_ref);
    assert_close("gelu dx", &ctx.read_f32(&gdx, n).unwrap(), &dx_ref);
}

#[test]
fn gpu_copy_rows_and_col_sum() {
    let Some((ctx, k)) = gpu("gpu_copy_rows_and_col_sum") else {
        return;
    };
    let mut rng = StdRng::seed_from_u64(5);
    let (rows, cols, lds, ldd) = (9usize, 6usize, 10usize, 8usize);
    let src = rand_vec(&mut rng, 2 + rows * lds, 1.0);
    let dst0 = rand_vec(&mut rng, 1 + rows * ldd, 1.0);
    let (gs, gd) = (
        ctx.storage_init("src", &src),
        ctx.storage_init("dst", &dst0),
    );
    let sums0 = rand_vec(&mut rng, cols + 4, 1.0);
    let gsum = ctx.storage_init("sums", &sums0);
    let ds = [
        k.copy_rows
            .bind(
                &ctx,
                &copy_rows::CopyArgs {
                    rows: rows as u32,
                    cols: cols as u32,
                    src: &gs,
                    s_off: 2,
                    lds: lds as u32,
                    dst: &gd,
                    d_off: 1,
                    ldd: ldd as u32,
                    accumulate: true,
                },
            )
            .unwrap(),
        k.col_sum
            .bind(
                &ctx,
                &col_sum::ColSumArgs {
                    rows: rows as u32,
                    cols: cols as u32,
                    src: &gs,
                    s_off: 2,
                    lds: lds as u32,
                    dst: &gsum,
                    d_off: 4,
                    accumulate: false,
                },
            )
            .unwrap(),
    ];
    ctx.run("copy test", &ds);
    let mut want: Vec<f64> = dst0.iter().map(|&v| v as f64).collect();
    let mut sums: Vec<f64> = sums0.iter().map(|&v| v as f64).collect();
    sums[4..].fill(0.0);
    for r in 0..rows {
        for c in 0..cols {
            want[1 + r * ldd + c] += src[2 + r * lds + c] as f64;
            sums[4 + c] += src[2 + r * lds + c] as f64;
        }
    }
    assert_close("copy_rows", &ctx.read_f32(&gd, want.len()).unwrap(), &want);
    assert_close("col_sum", &ctx.read_f32(&gsum, sums.len()).unwrap(), &sums);
}

#[test]
fn gpu_gather_rows_and_mse() {
    let Some((ctx, k)) = gpu("gpu_gather_rows_and_mse") else {
        return;
    };
    let mut rng = StdRng::seed_from_u64(9);
    let (src_rows, cols, lds, ldd) = (7usize, 5usize, 8usize, 6usize);
    let src = rand_vec(&mut rng, 3 + src_rows * lds, 1.0);
    // Repeats, out of order, NONE and an index past the source: zeros.
    let index = [4u32, 0, 6, 4, gather_rows::NONE, 7, 2];
    let rows = index.len();
    let dst0 = rand_vec(&mut rng, 2 + rows * ldd, 1.0);
    let mut gathered: Vec<f64> = dst0.iter().map(|&v| v as f64).collect();
    for (i, &r) in index.iter().enumerate() {
        for c in 0..cols {
            let v = if (r as usize) < src_rows {
                src[3 + r as usize * lds + c] as f64
            } else {
                0.0
            };
            gathered[2 + i * ldd + c] += v;
        }
    }
    let pred = rand_vec(&mut rng, rows * cols, 1.0);
    let target = rand_vec(&mut rng, rows * cols, 1.0);
    let scale = 2.0 / (rows * cols) as f32;
    let grad: Vec<f64> = pred
        .iter()
        .zip(&target)
        .map(|(&p, &t)| scale as f64 * (p as f64 - t as f64))
        .collect();
    let row_sq: Vec<f64> = pred
        .chunks(cols)
        .zip(target.chunks(cols))
        .map(|(p, t)| {
            p.iter()
                .zip(t)
                .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
                .sum()
        })
        .collect();

    let (gsrc, gdst) = (
        ctx.storage_init("src", &src),
        ctx.storage_init("dst", &dst0),
    );
    let gindex = ctx.storage_init_bytes("index", bytemuck::cast_slice(&index));
    let (gpred, gtarget) = (
        ctx.storage_init("pred", &pred),
        ctx.storage_init("target", &target),
    );
    let (ggrad, gsq) = (
        ctx.storage_zeroed("grad", rows * cols),
        ctx.storage_zeroed("row sq", rows),
    );
    let ds = [
        k.gather_rows
            .bind(
                &ctx,
                &gather_rows::GatherArgs {
                    rows: rows as u32,
                    cols: cols as u32,
                    src: matmul::Operand::new(&gsrc, 3, lds as u32),
                    src_rows: src_rows as u32,
                    index: &gindex,
                    dst: matmul::Operand::new(&gdst, 2, ldd as u32),
                    accumulate: true,
                },
            )
            .unwrap(),
        k.mse_fwd_bwd
            .bind(
                &ctx,
                &mse_fwd_bwd::MseArgs {
                    rows: rows as u32,
                    cols: cols as u32,
                    scale,
                    pred: &gpred,
                    target: &gtarget,
                    grad: &ggrad,
                    row_sq: &gsq,
                },
            )
            .unwrap(),
    ];
    ctx.run("gather and mse test", &ds);
    let got = ctx.read_f32(&gdst, gathered.len()).unwrap();
    assert_close("gather_rows", &got, &gathered);
    assert_close(
        "mse grad",
        &ctx.read_f32(&ggrad, rows * cols).unwrap(),
        &grad,
    );
    assert_close("mse row sums", &ctx.read_f32(&gsq, rows).unwrap(), &row_sq);
}

#[test]
fn gpu_adamw_matches_reference() {
    let Some((ctx, k)) = gpu("gpu_adamw_matches_reference") else {
        return;
    };
    let mut rng = StdRng::seed_from_u64(6);
    let n = 300;
    let p0 = rand_vec(&mut rng, n, 1.0);
    let g = rand_vec(&mut rng, n, 1e-2);
    let m0 = rand_vec(&mut rng, n, 1e-3);
    let v0: Vec<f32> = rand_vec(&mut rng, n, 1e-5)
        .iter()
        .map(|x| x.abs())
        .collect();
    let (lr, wd, b1, b2, eps, t) = (1e-3f32, 0.05f32, 0.9f32, 0.999f32, 1e-8f32, 3i32);
    let step_size = (lr as f64 / (1.0 - (b1 as f64).powi(t))) as f32;
    let inv_sqrt_c2 = (1.0 / (1.0 - (b2 as f64).powi(t)).sqrt()) as f32;
    let step = adamw::Step {
        keep: 1.0 - lr * wd,
        step_size,
        inv_sqrt_c2,
        eps,
        beta1: b1,
        one_minus_beta1: 1.0 - b1,
        beta2: b2,
        one_minus_beta2: 1.0 - b2,
    };
    let (gp, gg, gm, gv) = (
        ctx.storage_init("p", &p0),
        ctx.storage_init("g", &g),
        ctx.storage_init("m", &m0),
        ctx.storage_init("v", &v0),
    );
    let gstep = ctx.uniform("step", &step);
    let bufs = adamw::AdamBuffers {
        params: &gp,
        grads: &gg,
        m: &gm,
        v: &gv,
        step: &gstep,
    };
    // First 100 decayed, the rest not.
    let ds = [
        k.adamw
            .bind(
                &ctx,
                adamw::Tensor {
                    offset: 0,
                    len: 100,
                    decay: 1,
                    _pad: 0,
                },
                &bufs,
            )
            .unwrap(),
        k.adamw
            .bind(
                &ctx,
                adamw::Tensor {
                    offset: 100,
                    len: 200,
                    decay: 0,
                    _pad: 0,
                },
                &bufs,
            )
            .unwrap(),
    ];
    ctx.run("adamw test", &ds);
    let (mut pw, mut mw, mut vw) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
    for i in 0..n {
        let keep = if i < 100 { 1.0 - lr * wd } else { 1.0 };
        let p = p0[i] * keep;
        let m = b1 * m0[i] + (1.0 - b1) * g[i];
        let v = b2 * v0[i] + (1.0 - b2) * g[i] * g[i];
        pw[i] = (p - step_size * m / (v.sqrt() * inv_sqrt_c2 + eps)) as f64;
        mw[i] = m as f64;
        vw[i] = v as f64;
    }
    assert_close("adamw p", &ctx.read_f32(&gp, n).unwrap(), &pw);
    assert_close("adamw m", &ctx.read_f32(&gm, n).unwrap(), &mw);
    assert_close("adamw v", &ctx.read_f32(&gv, n).unwrap(), &vw);
}

#[test]
fn gpu_loss_matches_reference() {
    let Some((ctx, k)) = gpu("gpu_loss_matches_reference") else {
        return;
    };
    let mut rng = StdRng::seed_from_u64(7);
    let (batch, ny, e) = (5usize, 4usize, 8usize);
    let (tau, beta, bias) = (10.0f64, 0.1f64, 0.4f32);
    let emb = rand_vec(&mut rng, batch * e, 1.0);
    let mut text = rand_vec(&mut rng, ny * e, 1.0);
    for row in text.chunks_exact_mut(e) {
        let n = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        row.iter_mut().for_each(|v| *v /= n);
    }
    let labels: Vec<u32> = (0..batch as u32).map(|i| i % ny as u32).collect();
    // Reference in f64.
    let mut demb = vec![0.0f64; batch * e];
    let (mut l1s, mut l2s, mut db) = (vec![], vec![], 0.0f64);
    for r in 0..batch {
        let u: Vec<f64> = emb[r * e..(r + 1) * e].iter().map(|&v| v as f64).collect();
        let norm = u.iter().map(|v| v * v).sum::<f64>().sqrt();
        let z: Vec<f64> = u.iter().map(|v| v / norm).collect();
        let mut l: Vec<f64> = (0..ny)
            .map(|c| tau * (0..e).map(|i| z[i] * text[c * e + i] as f64).sum::<f64>())
            .collect();
        l.push(bias as f64);
        let y = labels[r] as usize;
        let lse = |skip: Option<usize>| {
            let vals: Vec<f64> = (0..=ny)
                .filter(|&c| Some(c) != skip)
                .map(|c| l[c])
                .collect();
            let mx = vals.iter().cloned().fold(f64::MIN, f64::max);
            mx + vals.iter().map(|v| (v - mx).exp()).sum::<f64>().ln()
        };
        let (lse1, lse2) = (lse(None), lse(Some(y)));
        l1s.push(lse1 - l[y]);
        l2s.push(lse2 - l[ny]);
        let g: Vec<f64> = (0..=ny)
            .map(|c| {
                let p1 = (l[c] - lse1).exp() - f64::from(u8::from(c == y));
                let p2 =
                    if c == y { 0.0 } else { (l[c] - lse2).exp() } - f64::from(u8::from(c == ny));
                (p1 + beta * p2) / batch as f64
            })
            .collect();
        db += g[ny];
        let dz: Vec<f64> = (0..e)
            .map(|i| tau * (0..ny).map(|c| g[c] * text[c * e + i] as f64).sum::<f64>())
            .collect();
        let zdz: f64 = z.iter().zip(&dz).map(|(a, b)| a * b).sum();
        for i in 0..e {
            demb[r * e + i] = (dz[i] - z[i] * zdz) / norm;
        }
    }
    let gemb = ctx.storage_init("emb", &emb);
    let gtext = ctx.storage_init("text", &text);
    let glabels = ctx.storage_init_bytes("labels", bytemuck::cast_slice(&labels));
    let gp = ctx.storage_init("params", &[0.0, 0.0, bias]);
    let gdemb = ctx.storage_zeroed("demb", batch * e);
    let scratch_len = loss_fwd_bwd::scratch_len(batch, ny);
    let gscratch = ctx.storage_zeroed("scratch", scratch_len);
    let ggrads = ctx.storage_zeroed("grads", 4);
    let d = k
        .loss_fwd_bwd
        .bind(
            &ctx,
            &loss_fwd_bwd::LossArgs {
                batch: batch as u32,
                n_labels: ny as u32,
                embed: e as u32,
                tau: tau as f32,
                beta: beta as f32,
                emb: &gemb,
                text: &gtext,
                labels: &glabels,
                pbuf: &gp,
                other_off: 2,
                demb: &gdemb,
                scratch: &gscratch,
                grads: &ggrads,
                db_off: 3,
            },
        )
        .unwrap();
    ctx.run("loss test", &[d]);
    let raw = ctx
        .read_f32(&gscratch, loss_fwd_bwd::STATS_PER_SAMPLE * batch)
        .unwrap();
    for (r, chunk) in raw.chunks(loss_fwd_bwd::STATS_PER_SAMPLE).enumerate() {
        let st = loss_fwd_bwd::SampleStats::from_raw(chunk);
        assert!(close(st.label, l1s[r], 1e-5, 1e-5), "L1[{r}]");
        assert!(close(st.other, l2s[r], 1e-5, 1e-5), "L2[{r}]");
    }
    assert_close("d emb", &ctx.read_f32(&gdemb, batch * e).unwrap(), &demb);
    assert_close("d b", &ctx.read_f32(&ggrads, 4).unwrap()[3..], &[db]);
}

/// `read_f32_at` reads a slice from an element offset (one scalar of a larger buffer, as
/// the training backend reads `b`) and refuses a slice past the end.
#[test]
fn gpu_read_f32_at_reads_from_an_offset() {
    let Some((ctx, _)) = gpu("gpu_read_f32_at_reads_from_an_offset") else {
        return;
    };
    let data: Vec<f32> = (0..10).map(|i| i as f32 * 0.5).collect();
    let buf = ctx.storage_init("offset read", &data);
    assert_eq!(ctx.read_f32_at(&buf, 7, 1).unwrap(), [3.5]);
    assert_eq!(ctx.read_f32_at(&buf, 2, 3).unwrap(), data[2..5]);
    assert_eq!(ctx.read_f32_at(&buf, 0, 10).unwrap(), data);
    assert!(ctx.read_f32_at(&buf, 4, 0).unwrap().is_empty());
    for (offset, len) in [(9, 2), (10, 1), (usize::MAX / 8, 1)] {
        let e = ctx.read_f32_at(&buf, offset, len).unwrap_err();
        assert!(
            matches!(e, GpuError::Readback { .. }),
            "{offset}+{len}: {e}"
        );
    }
}
