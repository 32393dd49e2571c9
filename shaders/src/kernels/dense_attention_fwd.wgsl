// Dense multi-head attention: every query of an image over that image's n keys, per head.
// Rows r = b·n + i of qkv hold token i of image b; head h, channel c of its query is at
// qkv[q_off + r·ld + h·dh + c] (keys at k_off, values at v_off). Two entry points:
//   scores_main (one thread per (b, h, i)): s_j = scale·q_i·k_j, p = softmax(s)
//               (max-subtracted) → probs[((b·heads + h)·n + i)·n + j];
//   out_main    (one thread per output value, after scores_main):
//               o[o_off + r·ld_o + h·dh + c] = Σ_j p_ij v_j[h·dh + c].

struct Params {
    batch: u32,
    heads: u32,
    n: u32,
    dh: u32,
    q_off: u32,
    k_off: u32,
    v_off: u32,
    ld: u32,
    o_off: u32,
    ld_o: u32,
    scale: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> qkv: array<f32>;
@group(0) @binding(2) var<storage, read_write> probs: array<f32>;
@group(0) @binding(3) var<storage, read_write> o: array<f32>;

@compute @workgroup_size(64, 1, 1)
fn scores_main(
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
    let q_base = p.q_off + (b * p.n + i) * p.ld + h * p.dh;
    let k_base = p.k_off + b * p.n * p.ld + h * p.dh;
    let row = t * p.n;
    var mx = -3.4e38;
    for (var j = 0u; j < p.n; j += 1u) {
        var s = 0.0;
        for (var c = 0u; c < p.dh; c += 1u) {
            s += qkv[q_base + c] * qkv[k_base + j * p.ld + c];
        }
        s *= p.scale;
        probs[row + j] = s;
        mx = max(mx, s);
    }
    var sum = 0.0;
    for (var j = 0u; j < p.n; j += 1u) {
        let e = exp(probs[row + j] - mx);
        probs[row + j] = e;
        sum += e;
    }
    let inv = 1.0 / sum;
    for (var j = 0u; j < p.n; j += 1u) {
        probs[row + j] *= inv;
    }
}

@compute @workgroup_size(256, 1, 1)
fn out_main(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let width = p.heads * p.dh;
    let e = gid.x + gid.y * groups.x * 256u;
    if (e >= p.batch * p.n * width) {
        return;
    }
    let col = e % width;
    let r = e / width;
    let i = r % p.n;
    let b = r / p.n;
    let h = col / p.dh;
    let row = ((b * p.heads + h) * p.n + i) * p.n;
    let v_base = p.v_off + b * p.n * p.ld + col;
    var acc = 0.0;
    for (var j = 0u; j < p.n; j += 1u) {
        acc += probs[row + j] * qkv[v_base + j * p.ld];
    }
    o[p.o_off + r * p.ld_o + col] = acc;
}
