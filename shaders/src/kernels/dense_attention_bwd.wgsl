// Backward of dense_attention_fwd (same qkv layout and probabilities), from the output
// gradient d_o (rows at do_off, stride ld_do, heads concatenated). Two entry points:
//   ds_main   (one thread per (b, h, i)): dp_ij = d_o_i·v_j, then
//             ds_ij = scale·p_ij (dp_ij − Σ_l p_il dp_il) → dscores (same layout as probs);
//   dqkv_main (one thread per value of dQ, dK and dV, after ds_main), head h's columns:
//             dq_i = Σ_j ds_ij k_j,  dk_j = Σ_i ds_ij q_i,  dv_j = Σ_i p_ij d_o_i,
//             written to dqkv at dq_off, dk_off, dv_off with row stride ld_d.

struct Params {
    batch: u32,
    heads: u32,
    n: u32,
    dh: u32,
    q_off: u32,
    k_off: u32,
    v_off: u32,
    ld: u32,
    do_off: u32,
    ld_do: u32,
    dq_off: u32,
    dk_off: u32,
    dv_off: u32,
    ld_d: u32,
    scale: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> qkv: array<f32>;
@group(0) @binding(2) var<storage, read> probs: array<f32>;
@group(0) @binding(3) var<storage, read> d_o: array<f32>;
@group(0) @binding(4) var<storage, read_write> dscores: array<f32>;
@group(0) @binding(5) var<storage, read_write> dqkv: array<f32>;

@compute @workgroup_size(64, 1, 1)
fn ds_main(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let t = gid.x + gid.y * groups.x * 64u;
    if (t >= p.batch * p.heads * p.n) {
        return;
    }
    let i = t % p.n;
    let h = (t / p.n) % p.heads;
    let b = t / (p.n * p.heads);
    let do_base = p.do_off + (b * p.n + i) * p.ld_do + h * p.dh;
    let v_base = p.v_off + b * p.n * p.ld + h * p.dh;
    let row = t * p.n;
    var dot = 0.0;
    for (var j = 0u; j < p.n; j += 1u) {
        var dp = 0.0;
        for (var c = 0u; c < p.dh; c += 1u) {
            dp += d_o[do_base + c] * qkv[v_base + j * p.ld + c];
        }
        dscores[row + j] = dp;
        dot += dp * probs[row + j];
    }
    for (var j = 0u; j < p.n; j += 1u) {
        dscores[row + j] = p.scale * probs[row + j] * (dscores[row + j] - dot);
    }
}

@compute @workgroup_size(256, 1, 1)
fn dqkv_main(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let width = p.heads * p.dh;
    let e = gid.x + gid.y * groups.x * 256u;
    if (e >= 3u * p.batch * p.n * width) {
        return;
    }
    // e = (part·rows + r)·width + col, part 0: dQ, 1: dK, 2: dV.
    let col = e % width;
    let r = (e / width) % (p.batch * p.n);
    let part = e / (width * p.batch * p.n);
    let i = r % p.n;
    let b = r / p.n;
    let h = col / p.dh;
    // Image b, head h: its n × n block of probabilities and score gradients.
    let block = (b * p.heads + h) * p.n * p.n;
    let first = b * p.n;
    var acc = 0.0;
    if (part == 0u) {
        for (var j = 0u; j < p.n; j += 1u) {
            acc += dscores[block + i * p.n + j] * qkv[p.k_off + (first + j) * p.ld + col];
        }
        dqkv[p.dq_off + r * p.ld_d + col] = acc;
    } else if (part == 1u) {
        for (var l = 0u; l < p.n; l += 1u) {
            acc += dscores[block + l * p.n + i] * qkv[p.q_off + (first + l) * p.ld + col];
        }
        dqkv[p.dk_off + r * p.ld_d + col] = acc;
    } else {
        for (var l = 0u; l < p.n; l += 1u) {
            acc += probs[block + l * p.n + i] * d_o[p.do_off + (first + l) * p.ld_do + col];
        }
        dqkv[p.dv_off + r * p.ld_d + col] = acc;
    }
}
