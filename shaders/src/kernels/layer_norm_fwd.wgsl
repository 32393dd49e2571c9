// LayerNorm over the last dimension of x[rows, width], one thread per row:
// y = (x − mean) · rstd · w + b, rstd = 1 / sqrt(var + eps) (biased variance, two passes).
// Saves stats[2r] = mean, stats[2r + 1] = rstd for the backward kernel.

struct Params {
    rows: u32,
    width: u32,
    w_off: u32,
    b_off: u32,
    eps: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> wb: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<storage, read_write> stats: array<f32>;

@compute @workgroup_size(64, 1, 1)
fn main(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let r = gid.x + gid.y * groups.x * 64u;
    if (r >= p.rows) {
        return;
    }
    let base = r * p.width;
    var sum = 0.0;
    for (var i = 0u; i < p.width; i += 1u) {
        sum += x[base + i];
    }
    let mean = sum / f32(p.width);
    var sq = 0.0;
    for (var i = 0u; i < p.width; i += 1u) {
        let d = x[base + i] - mean;
        sq += d * d;
    }
    let rstd = 1.0 / sqrt(sq / f32(p.width) + p.eps);
    for (var i = 0u; i < p.width; i += 1u) {
        y[base + i] = (x[base + i] - mean) * rstd * wb[p.w_off + i] + wb[p.b_off + i];
    }
    stats[2u * r] = mean;
    stats[2u * r + 1u] = rstd;
}
