"""Plain numpy reference of the CLIP pieces the project relies on.

Weights are held in a flat dict with OpenCLIP's `state_dict` names
(`visual.transformer.resblocks.0.ln_1.weight`, `text_projection`, ...), so the
same code checks the generated tiny model and an exported real one.

Conventions (the layout of `models/README.md`): PyTorch Linear `y = x W^T + b`,
LayerNorm eps 1e-5, attention scale 1/sqrt(width/heads), QuickGELU
`x * sigmoid(1.702 x)`, `in_proj_weight` rows ordered q, k, v.
"""

import numpy as np

LN_EPS = 1e-5

# Names of the block tensors inside a resblock, in `last_block.safetensors` order.
BLOCK_TENSORS = (
    "ln_1.weight",
    "ln_1.bias",
    "attn.in_proj_weight",
    "attn.in_proj_bias",
    "attn.out_proj.weight",
    "attn.out_proj.bias",
    "ln_2.weight",
    "ln_2.bias",
    "mlp.c_fc.weight",
    "mlp.c_fc.bias",
    "mlp.c_proj.weight",
    "mlp.c_proj.bias",
)
HEAD_TENSORS = ("ln_post.weight", "ln_post.bias", "proj")


def layer_norm(x, w, b, eps=LN_EPS):
    """LayerNorm over the last axis, computed in float64."""
    x = x.astype(np.float64)
    mu = x.mean(axis=-1, keepdims=True)
    d = x - mu
    var = (d * d).mean(axis=-1, keepdims=True)
    return d / np.sqrt(var + eps) * w + b


def quick_gelu(x):
    return x / (1.0 + np.exp(-1.702 * x))


def softmax(x, axis=-1):
    x = x - x.max(axis=axis, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


def block_forward(x, p, heads, mask=None):
    """One pre-LN residual attention block on `x` `[B, N, D]`.

    `p` maps the names of `BLOCK_TENSORS` to arrays; `mask` is an optional
    additive `[N, N]` attention mask (the text tower's causal mask).
    """
    x = x.astype(np.float64)
    bsz, n, d = x.shape
    hd = d // heads
    h = layer_norm(x, p["ln_1.weight"], p["ln_1.bias"])
    qkv = h @ p["attn.in_proj_weight"].astype(np.float64).T + p["attn.in_proj_bias"]
    q, k, v = qkv[..., :d], qkv[..., d : 2 * d], qkv[..., 2 * d :]

    def split(t):
        return t.reshape(bsz, n, heads, hd).transpose(0, 2, 1, 3)

    q, k, v = split(q), split(k), split(v)
    scores = (q @ k.transpose(0, 1, 3, 2)) / np.sqrt(hd)
    if mask is not None:
        scores = scores + mask
    a = softmax(scores) @ v
    a = a.transpose(0, 2, 1, 3).reshape(bsz, n, d)
    x = x + a @ p["attn.out_proj.weight"].astype(np.float64).T + p["attn.out_proj.bias"]
    h = layer_norm(x, p["ln_2.weight"], p["ln_2.bias"])
    m = quick_gelu(h @ p["mlp.c_fc.weight"].astype(np.float64).T + p["mlp.c_fc.bias"])
    return x + m @ p["mlp.c_proj.weight"].astype(np.float64).T + p["mlp.c_proj.bias"]


def last_block_embed(tokens, p, heads):
    """Image embeddings `[B, E]` (not normalised) from trunk tokens `[B, N, D]`.

    `p` holds the tensors of `last_block.safetensors` (block names + head names).
    """
    x = block_forward(tokens, p, heads)
    cls = layer_norm(x[:, 0, :], p["ln_post.weight"], p["ln_post.bias"])
    return cls @ p["proj"].astype(np.float64)


def resblock(sd, prefix, i):
    """The tensors of resblock `i` under `prefix` (e.g. `visual.transformer.`)."""
    base = f"{prefix}resblocks.{i}."
    return {name: sd[base + name] for name in BLOCK_TENSORS}


def last_block_tensors(sd, layers):
    """The `last_block.safetensors` dict (TEAM names) from a CLIP state dict."""
    out = resblock(sd, "visual.transformer.", layers - 1)
    out["ln_post.weight"] = sd["visual.ln_post.weight"]
    out["ln_post.bias"] = sd["visual.ln_post.bias"]
    out["proj"] = sd["visual.proj"]
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


def visual_trunk(pixels, sd, dims):
    """Trunk tokens `[B, N, D]`: patch embed, class token, positions, ln_pre, blocks 0..L-2."""
    pt, width = dims["patch"], dims["width"]
    bsz, c, s, _ = pixels.shape
    g = s // pt
    # Patches as [B, g*g, C*pt*pt] in (c, ky, kx) order, matching the conv weight layout.
    patches = (
        pixels.astype(np.float64)
        .reshape(bsz, c, g, pt, g, pt)
        .transpose(0, 2, 4, 1, 3, 5)
        .reshape(bsz, g * g, c * pt * pt)
    )
    x = patches @ sd["visual.conv1.weight"].reshape(width, -1).astype(np.float64).T
    cls = np.broadcast_to(sd["visual.class_embedding"], (bsz, 1, width))
    x = np.concatenate([cls, x], axis=1) + sd["visual.positional_embedding"]
    x = layer_norm(x, sd["visual.ln_pre.weight"], sd["visual.ln_pre.bias"])
    for i in range(dims["layers"] - 1):
        x = block_forward(x, resblock(sd, "visual.transformer.", i), dims["heads"])
    return x


def causal_mask(n):
    """Additive mask: 0 on and below the diagonal, -1e9 above (CLIP uses -inf)."""
    return np.triu(np.full((n, n), -1e9), k=1)


def text_embed(ids, sd, dims):
    """Text embeddings `[B, E]` (not normalised), pooled at the first largest id (EOT)."""
    ids = np.asarray(ids, dtype=np.int64)
    x = sd["token_embedding.weight"][ids].astype(np.float64) + sd["positional_embedding"]
    mask = causal_mask(ids.shape[1])
    for i in range(dims["text_layers"]):
        x = block_forward(x, resblock(sd, "transformer.", i), dims["text_heads"], mask)
    x = layer_norm(x, sd["ln_final.weight"], sd["ln_final.bias"])
    pooled = x[np.arange(ids.shape[0]), ids.argmax(axis=-1)]
    return pooled @ sd["text_projection"].astype(np.float64)


def l2_normalise(x, axis=-1):
    return x / np.linalg.norm(x, axis=axis, keepdims=True)
