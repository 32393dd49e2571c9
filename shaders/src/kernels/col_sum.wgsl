// Column sums (bias gradients), one thread per column:
// dst[d_off + c] (+)= Σ_r src[s_off + r·lds + c]; flags bit 0 adds instead of overwriting.

struct Params {
    rows: u32,
    cols: u32,
    s_off: u32,
    lds: u32,
    d_off: u32,
    flags: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    if (c >= p.cols) {
        return;
    }
    var acc = 0.0;
    for (var r = 0u; r < p.rows; r += 1u) {
        acc += src[p.s_off + r * p.lds + c];
    }
    let idx = p.d_off + c;
    if ((p.flags & 1u) != 0u) {
        acc += dst[idx];
    }
    dst[idx] = acc;
}
