// Rows gathered by index: dst[d_off + i·ldd + c] (+)= src[s_off + index[i]·lds + c] for
// i < rows, c < cols. An index of src_rows or more (NONE = 0xFFFFFFFF) stands for a row of
// zeros. flags bit 0 adds instead of overwriting.

struct Params {
    rows: u32,
    cols: u32,
    s_off: u32,
    lds: u32,
    d_off: u32,
    ldd: u32,
    src_rows: u32,
    flags: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read> index: array<u32>;
@group(0) @binding(3) var<storage, read_write> dst: array<f32>;

@compute @workgroup_size(256, 1, 1)
fn main(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let t = gid.x + gid.y * groups.x * 256u;
    if (t >= p.rows * p.cols) {
        return;
    }
    let i = t / p.cols;
    let c = t % p.cols;
    let r = index[i];
    var v = 0.0;
    if (r < p.src_rows) {
        v = src[p.s_off + r * p.lds + c];
    }
    let idx = p.d_off + i * p.ldd + c;
    if ((p.flags & 1u) != 0u) {
        v += dst[idx];
    }
    dst[idx] = v;
}
