// QuickGELU backward, elementwise: dx = dy · (σ + 1.702 x σ (1 − σ)), σ = σ(1.702 x).

struct Params {
    len: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> dy: array<f32>;
@group(0) @binding(3) var<storage, read_write> dx: array<f32>;

@compute @workgroup_size(256, 1, 1)
fn main(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let i = gid.x + gid.y * groups.x * 256u;
    if (i >= p.len) {
        return;
    }
    let v = x[i];
    let s = 1.0 / (1.0 + exp(-1.702 * v));
    dx[i] = dy[i] * (s + 1.702 * v * s * (1.0 - s));
}
