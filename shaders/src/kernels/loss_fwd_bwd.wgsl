// Loss of SPEC §4 and its gradient, one workgroup, one thread per sample (strided).
// For sample r with embedding u (unnormalised), z = u / |u|, label y:
//   logits l_c = τ z·e_c for c in Y, l_other = b;
//   L1 = CE(y; Y ∪ {other}) = lse(all) − l_y,
//   L2 = CE(other; (Y ∪ {other}) \ {y}) = lse(all but y) − b,
//   loss = mean_r (L1 + β L2).
// Writes du = ∂loss/∂u (through the L2 normalisation), ∂loss/∂b into grads[db_off], and
// per-sample stats scratch[8r..8r+8] = (m1, l_y, log s1, m2, log s2, b, correct, ∂loss_r/∂b)
// with L1 = (m1 − l_y) + log s1 and L2 = (m2 − b) + log s2 left for the host to add in f64:
// the logits are O(τ), so adding them in f32 here would cost ~1e-6 absolute per sample.
// Logits (then their gradients) live in scratch[8·batch + r·(|Y|+1) ..].

struct Params {
    batch: u32,
    n_labels: u32,
    embed: u32,
    other_off: u32,
    db_off: u32,
    tau: f32,
    beta: f32,
    inv_batch: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> emb: array<f32>;
@group(0) @binding(2) var<storage, read> text: array<f32>;
@group(0) @binding(3) var<storage, read> labels: array<u32>;
@group(0) @binding(4) var<storage, read> pbuf: array<f32>;
@group(0) @binding(5) var<storage, read_write> demb: array<f32>;
@group(0) @binding(6) var<storage, read_write> scratch: array<f32>;
@group(0) @binding(7) var<storage, read_write> grads: array<f32>;

fn sample(r: u32, bias: f32) {
    let ny = p.n_labels;
    let e_base = r * p.embed;
    let l_base = 8u * p.batch + r * (ny + 1u);
    let label = labels[r];
    var sq = 0.0;
    for (var e = 0u; e < p.embed; e += 1u) {
        sq += emb[e_base + e] * emb[e_base + e];
    }
    let norm = sqrt(sq);
    let inv_norm = 1.0 / norm;
    var best = 0u;
    var best_v = -3.4e38;
    var mx2 = bias;
    for (var c = 0u; c < ny; c += 1u) {
        var dot = 0.0;
        for (var e = 0u; e < p.embed; e += 1u) {
            dot += emb[e_base + e] * text[c * p.embed + e];
        }
        let l = p.tau * (dot * inv_norm);
        scratch[l_base + c] = l;
        if (l > best_v) {
            best_v = l;
            best = c;
        }
        if (c != label) {
            mx2 = max(mx2, l);
        }
    }
    let mx1 = max(best_v, bias);
    var s1 = exp(bias - mx1);
    var s2 = exp(bias - mx2);
    for (var c = 0u; c < ny; c += 1u) {
        let l = scratch[l_base + c];
        s1 += exp(l - mx1);
        if (c != label) {
            s2 += exp(l - mx2);
        }
    }
    // lse = mx + log(s); differences to mx first keep f32 precision at τ = 100.
    let ls1 = log(s1);
    let ls2 = log(s2);
    let l_label = scratch[l_base + label];
    // Gradients of the sample's share of the mean loss w.r.t. its logits.
    for (var c = 0u; c < ny; c += 1u) {
        let l = scratch[l_base + c];
        var g = exp((l - mx1) - ls1);
        if (c == label) {
            g -= 1.0;
        } else {
            g += p.beta * exp((l - mx2) - ls2);
        }
        scratch[l_base + c] = g * p.inv_batch;
    }
    let g_other = (exp((bias - mx1) - ls1) + p.beta * (exp((bias - mx2) - ls2) - 1.0)) * p.inv_batch;
    scratch[l_base + ny] = g_other;
    // dz = τ Σ_c g_c e_c; du = (dz − z (z·dz)) / |u|.
    var zdz = 0.0;
    for (var e = 0u; e < p.embed; e += 1u) {
        var dz = 0.0;
        for (var c = 0u; c < ny; c += 1u) {
            dz += scratch[l_base + c] * text[c * p.embed + e];
        }
        dz *= p.tau;
        demb[e_base + e] = dz;
        zdz += emb[e_base + e] * inv_norm * dz;
    }
    for (var e = 0u; e < p.embed; e += 1u) {
        let z = emb[e_base + e] * inv_norm;
        demb[e_base + e] = (demb[e_base + e] - z * zdz) * inv_norm;
    }
    let st = 8u * r;
    scratch[st] = mx1;
    scratch[st + 1u] = l_label;
    scratch[st + 2u] = ls1;
    scratch[st + 3u] = mx2;
    scratch[st + 4u] = ls2;
    scratch[st + 5u] = bias;
    scratch[st + 6u] = select(0.0, 1.0, best == label);
    scratch[st + 7u] = g_other;
}

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(local_invocation_index) li: u32) {
    let bias = pbuf[p.other_off];
    for (var r = li; r < p.batch; r += 64u) {
        sample(r, bias);
    }
    storageBarrier();
    if (li == 0u) {
        var db = 0.0;
        for (var r = 0u; r < p.batch; r += 1u) {
            db += scratch[8u * r + 7u];
        }
        grads[p.db_off] = db;
    }
}
