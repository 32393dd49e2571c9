// LayerNorm backward from the saved statistics of layer_norm_fwd. Two entry points over
// one layout:
//   dx      (one thread per row):    dx = rstd · (g − mean(g) − x̂ · mean(g · x̂)), g = dy · w;
//                                    flags bit 0 adds to dx instead of overwriting it.
//   dparams (one thread per column): grads[dw_off + j] = Σ_r dy[r, j] · x̂[r, j],
//                                    grads[db_off + j] = Σ_r dy[r, j].

struct Params {
    rows: u32,
    width: u32,
    w_off: u32,
    dw_off: u32,
    db_off: u32,
    flags: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> wb: array<f32>;
@group(0) @binding(3) var<storage, read> stats: array<f32>;
@group(0) @binding(4) var<storage, read> dy: array<f32>;
@group(0) @binding(5) var<storage, read_write> dx: array<f32>;
@group(0) @binding(6) var<storage, read_write> grads: array<f32>;

@compute @workgroup_size(64, 1, 1)
fn dx_main(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let r = gid.x + gid.y * groups.x * 64u;
    if (r >= p.rows) {
        return;
    }
    let base = r * p.width;
    let mean = stats[2u * r];
    let rstd = stats[2u * r + 1u];
    var sum_g = 0.0;
    var sum_gx = 0.0;
    for (var i = 0u; i < p.width; i += 1u) {
        let g = dy[base + i] * wb[p.w_off + i];
        let xh = (x[base + i] - mean) * rstd;
        sum_g += g;
        sum_gx += g * xh;
    }
    let a = sum_g / f32(p.width);
    let c = sum_gx / f32(p.width);
    for (var i = 0u; i < p.width; i += 1u) {
        let g = dy[base + i] * wb[p.w_off + i];
        let xh = (x[base + i] - mean) * rstd;
        var v = rstd * (g - a - xh * c);
        if ((p.flags & 1u) != 0u) {
            v += dx[base + i];
        }
        dx[base + i] = v;
    }
}

@compute @workgroup_size(64, 1, 1)
fn dparams_main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let j = gid.x;
    if (j >= p.width) {
        return;
    }
    var dw = 0.0;
    var db = 0.0;
    for (var r = 0u; r < p.rows; r += 1u) {
        let idx = r * p.width + j;
        let xh = (x[idx] - stats[2u * r]) * stats[2u * r + 1u];
        dw += dy[idx] * xh;
        db += dy[idx];
    }
    grads[p.dw_off + j] = dw;
    grads[p.db_off + j] = db;
}
