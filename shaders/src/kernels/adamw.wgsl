// AdamW over one tensor of a flat parameter buffer (PyTorch's order, as the CPU path):
// p ← p·keep (keep = 1 − lr·wd when the tensor decays, else 1),
// m ← β1 m + (1−β1) g, v ← β2 v + (1−β2) g², p ← p − step_size · m / (sqrt(v)·inv_sqrt_c2 + eps)
// with step_size = lr / (1−β1ᵗ) and inv_sqrt_c2 = 1 / sqrt(1−β2ᵗ) computed on the host.

struct Tensor {
    offset: u32,
    len: u32,
    decay: u32,
    _pad: u32,
}

struct Step {
    keep: f32,
    step_size: f32,
    inv_sqrt_c2: f32,
    eps: f32,
    beta1: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
}

@group(0) @binding(0) var<uniform> t: Tensor;
@group(0) @binding(1) var<uniform> s: Step;
@group(0) @binding(2) var<storage, read_write> params: array<f32>;
@group(0) @binding(3) var<storage, read> grads: array<f32>;
@group(0) @binding(4) var<storage, read_write> m: array<f32>;
@group(0) @binding(5) var<storage, read_write> v: array<f32>;

@compute @workgroup_size(256, 1, 1)
fn main(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let k = gid.x + gid.y * groups.x * 256u;
    if (k >= t.len) {
        return;
    }
    let i = t.offset + k;
    var w = params[i];
    if (t.decay != 0u) {
        w *= s.keep;
    }
    let g = grads[i];
    let mi = s.beta1 * m[i] + s.one_minus_beta1 * g;
    let vi = s.beta2 * v[i] + s.one_minus_beta2 * g * g;
    m[i] = mi;
    v[i] = vi;
    let denom = sqrt(vi) * s.inv_sqrt_c2 + s.eps;
    params[i] = w - s.step_size * mi / denom;
}
