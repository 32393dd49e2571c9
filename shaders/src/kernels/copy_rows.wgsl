// Strided copy of a rows × cols block: dst[d_off + r·ldd + c] (+)= src[s_off + r·lds + c];
// flags bit 0 adds instead of overwriting (residual branches, gathering CLS rows).

struct Params {
    rows: u32,
    cols: u32,
    s_off: u32,
    lds: u32,
    d_off: u32,
    ldd: u32,
    flags: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;

@compute @workgroup_size(256, 1, 1)
fn main(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let t = gid.x + gid.y * groups.x * 256u;
    if (t >= p.rows * p.cols) {
        return;
    }
    let r = t / p.cols;
    let c = t % p.cols;
    var v = src[p.s_off + r * p.lds + c];
    let idx = p.d_off + r * p.ldd + c;
    if ((p.flags & 1u) != 0u) {
        v += dst[idx];
    }
    dst[idx] = v;
}
