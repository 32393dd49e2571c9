// C[m×n] (+)= alpha · op(A)[m×k] · op(B)[k×n] (+ bias[n]), row-major with explicit offsets and
// row strides (elements), so a block of rows or columns inside a larger buffer is used in
// place. op(A) = Aᵀ when flags bit 0 (A stored [k, m]); op(B) = Bᵀ when bit 1 (B stored
// [n, k], a PyTorch Linear weight); bit 2 adds to C; bit 3 adds bias[bias_off + j].
// Tiled: a 16×16 workgroup computes a 32×32 block of C (2×2 per thread) through 32×16
// tiles of A and 16×32 tiles of B in workgroup memory.

struct Params {
    m: u32,
    n: u32,
    k: u32,
    flags: u32,
    a_off: u32,
    lda: u32,
    b_off: u32,
    ldb: u32,
    c_off: u32,
    ldc: u32,
    bias_off: u32,
    alpha: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> c: array<f32>;

const BM: u32 = 32u;
const BN: u32 = 32u;
const BK: u32 = 16u;

var<workgroup> tile_a: array<f32, 512>; // [BM][BK]
var<workgroup> tile_b: array<f32, 512>; // [BK][BN]

fn load_a(i: u32, kk: u32) -> f32 {
    if (i >= p.m || kk >= p.k) {
        return 0.0;
    }
    if ((p.flags & 1u) != 0u) {
        return a[p.a_off + kk * p.lda + i];
    }
    return a[p.a_off + i * p.lda + kk];
}

fn load_b(kk: u32, j: u32) -> f32 {
    if (kk >= p.k || j >= p.n) {
        return 0.0;
    }
    if ((p.flags & 2u) != 0u) {
        return b[p.b_off + j * p.ldb + kk];
    }
    return b[p.b_off + kk * p.ldb + j];
}

fn store(i: u32, j: u32, v: f32) {
    if (i >= p.m || j >= p.n) {
        return;
    }
    var out = p.alpha * v;
    if ((p.flags & 8u) != 0u) {
        out += bias[p.bias_off + j];
    }
    let idx = p.c_off + i * p.ldc + j;
    if ((p.flags & 4u) != 0u) {
        out += c[idx];
    }
    c[idx] = out;
}

@compute @workgroup_size(16, 16, 1)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let row0 = wg.y * BM;
    let col0 = wg.x * BN;
    var acc00 = 0.0;
    var acc01 = 0.0;
    var acc10 = 0.0;
    var acc11 = 0.0;
    let tiles = (p.k + BK - 1u) / BK;
    for (var t = 0u; t < tiles; t += 1u) {
        let k0 = t * BK;
        // 256 threads load 512 elements of each tile, two each.
        for (var e = li; e < 512u; e += 256u) {
            let ar = e / BK;
            let ak = e % BK;
            tile_a[e] = load_a(row0 + ar, k0 + ak);
            let bk = e / BN;
            let bc = e % BN;
            tile_b[e] = load_b(k0 + bk, col0 + bc);
        }
        workgroupBarrier();
        let r = lid.y * 2u;
        let cc = lid.x * 2u;
        for (var q = 0u; q < BK; q += 1u) {
            let a0 = tile_a[r * BK + q];
            let a1 = tile_a[(r + 1u) * BK + q];
            let b0 = tile_b[q * BN + cc];
            let b1 = tile_b[q * BN + cc + 1u];
            acc00 += a0 * b0;
            acc01 += a0 * b1;
            acc10 += a1 * b0;
            acc11 += a1 * b1;
        }
        workgroupBarrier();
    }
    let i = row0 + lid.y * 2u;
    let j = col0 + lid.x * 2u;
    store(i, j, acc00);
    store(i, j + 1u, acc01);
    store(i + 1u, j, acc10);
    store(i + 1u, j + 1u, acc11);
}
