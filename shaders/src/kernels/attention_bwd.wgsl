// Backward of attention_fwd (same layouts and uniform, plus flags). Two entry points:
//   ds_main  (one workgroup per (b, h)): dp_j = da·h1[b, j], ds_j = p_j (dp_j − Σ_l p_l dp_l)
//            → dscores[b, h, :]; dq̃ = Σ_j ds_j h1[b, j] → dqt[b, h, :].
//   dh1_main (one thread per (b, j, d), after ds_main):
//            dh1[b, j, d] (+)= Σ_h p[b, h, j]·da[b, h, d] + ds[b, h, j]·q̃[b, h, d];
//            flags bit 0 adds to dh1 instead of overwriting it.
// da = dav is the gradient of av.

struct Params {
    batch: u32,
    heads: u32,
    n_k: u32,
    width: u32,
    flags: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> qt: array<f32>;
@group(0) @binding(2) var<storage, read> h1: array<f32>;
@group(0) @binding(3) var<storage, read> probs: array<f32>;
@group(0) @binding(4) var<storage, read> dav: array<f32>;
@group(0) @binding(5) var<storage, read_write> dscores: array<f32>;
@group(0) @binding(6) var<storage, read_write> dqt: array<f32>;
@group(0) @binding(7) var<storage, read_write> dh1: array<f32>;

const WG: u32 = 64u;

@compute @workgroup_size(64, 1, 1)
fn ds_main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let t = wg.x + wg.y * groups.x;
    if (t >= p.batch * p.heads) {
        return;
    }
    let b = t / p.heads;
    let q_base = t * p.width;
    let h_base = b * p.n_k * p.width;
    let p_base = t * p.n_k;
    for (var j = li; j < p.n_k; j += WG) {
        var dp = 0.0;
        for (var d = 0u; d < p.width; d += 1u) {
            dp += dav[q_base + d] * h1[h_base + j * p.width + d];
        }
        dscores[p_base + j] = dp;
    }
    storageBarrier();
    var dot = 0.0;
    for (var j = 0u; j < p.n_k; j += 1u) {
        dot += dscores[p_base + j] * probs[p_base + j];
    }
    storageBarrier();
    for (var j = li; j < p.n_k; j += WG) {
        dscores[p_base + j] = probs[p_base + j] * (dscores[p_base + j] - dot);
    }
    storageBarrier();
    for (var d = li; d < p.width; d += WG) {
        var acc = 0.0;
        for (var j = 0u; j < p.n_k; j += 1u) {
            acc += dscores[p_base + j] * h1[h_base + j * p.width + d];
        }
        dqt[q_base + d] = acc;
    }
}

@compute @workgroup_size(256, 1, 1)
fn dh1_main(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let i = gid.x + gid.y * groups.x * 256u;
    if (i >= p.batch * p.n_k * p.width) {
        return;
    }
    let d = i % p.width;
    let j = (i / p.width) % p.n_k;
    let b = i / (p.width * p.n_k);
    var acc = 0.0;
    for (var h = 0u; h < p.heads; h += 1u) {
        let t = b * p.heads + h;
        acc += probs[t * p.n_k + j] * dav[t * p.width + d] + dscores[t * p.n_k + j] * qt[t * p.width + d];
    }
    if ((p.flags & 1u) != 0u) {
        acc += dh1[i];
    }
    dh1[i] = acc;
}
