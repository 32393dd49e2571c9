// Attention of one query per (batch item, head) in the folded form the block uses:
// the query is already folded through the key projection, q̃ = s·W_k,hᵀ q_h ([width]),
// so the scores are dot products with the LayerNorm'd tokens h1 and the key bias drops
// out of the softmax. One workgroup per (b, h):
//   s_j = q̃·h1[b, j] (j < n_k), p = softmax(s) (max-subtracted) → probs[b, h, :],
//   a = Σ_j p_j h1[b, j] → av[b, h, :]   (the value projection is a matmul afterwards).
// Layouts: qt, av [batch, heads, width]; h1 [batch·n_k, width]; probs [batch, heads, n_k].

struct Params {
    batch: u32,
    heads: u32,
    n_k: u32,
    width: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> qt: array<f32>;
@group(0) @binding(2) var<storage, read> h1: array<f32>;
@group(0) @binding(3) var<storage, read_write> probs: array<f32>;
@group(0) @binding(4) var<storage, read_write> av: array<f32>;

const WG: u32 = 64u;

@compute @workgroup_size(64, 1, 1)
fn main(
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
        var s = 0.0;
        for (var d = 0u; d < p.width; d += 1u) {
            s += qt[q_base + d] * h1[h_base + j * p.width + d];
        }
        probs[p_base + j] = s;
    }
    storageBarrier();
    // Every thread reduces the (short) row itself: no shared-memory tree needed.
    var mx = -3.4e38;
    for (var j = 0u; j < p.n_k; j += 1u) {
        mx = max(mx, probs[p_base + j]);
    }
    var sum = 0.0;
    for (var j = 0u; j < p.n_k; j += 1u) {
        sum += exp(probs[p_base + j] - mx);
    }
    let inv = 1.0 / sum;
    storageBarrier();
    for (var j = li; j < p.n_k; j += WG) {
        probs[p_base + j] = exp(probs[p_base + j] - mx) * inv;
    }
    storageBarrier();
    for (var d = li; d < p.width; d += WG) {
        var acc = 0.0;
        for (var j = 0u; j < p.n_k; j += 1u) {
            acc += probs[p_base + j] * h1[h_base + j * p.width + d];
        }
        av[q_base + d] = acc;
    }
}
