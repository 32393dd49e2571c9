// Squared error of pred against the target `want` ([rows, cols], dense) and its gradient,
// one thread per row: d = pred − want; row_sq[i] = Σ_c d²; grad = scale·d (scale =
// 2/count for the gradient of the mean). The host adds row_sq up (in f64) for the loss.

struct Params {
    rows: u32,
    cols: u32,
    scale: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> pred: array<f32>;
@group(0) @binding(2) var<storage, read> want: array<f32>;
@group(0) @binding(3) var<storage, read_write> grad: array<f32>;
@group(0) @binding(4) var<storage, read_write> row_sq: array<f32>;

@compute @workgroup_size(64, 1, 1)
fn main(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let i = gid.x + gid.y * groups.x * 64u;
    if (i >= p.rows) {
        return;
    }
    let base = i * p.cols;
    var sq = 0.0;
    for (var c = 0u; c < p.cols; c += 1u) {
        let d = pred[base + c] - want[base + c];
        sq += d * d;
        grad[base + c] = p.scale * d;
    }
    row_sq[i] = sq;
}
