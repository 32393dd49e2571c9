"""Builds CLIP ONNX graphs (opset 17) from a numpy state dict with `onnx.helper`.

Only plain ops are used (Conv, Reshape, Transpose, Concat, Add, Sub, Mul, Div,
MatMul, Sqrt, ReduceMean, ReduceSum, ReduceMax, Sigmoid, Softmax, Gather, Equal,
Cast, Unsqueeze, Expand, Shape) so that tract and onnxruntime both run them.
LayerNorm, attention and QuickGELU are decomposed. The batch dimension is the
symbolic `batch`: reshapes copy it with 0, and the class token is expanded to a
shape computed from `Shape(pixels)`.
"""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from clip_numpy import LN_EPS, causal_mask, resblock

OPSET = 17
PRODUCER = "anytime-edge models/onnx_graph.py"


class Graph:
    """A growing list of nodes and initializers with generated unique names."""

    def __init__(self):
        self.nodes = []
        self.inits = []
        self.count = 0

    def _name(self, hint):
        self.count += 1
        return f"{hint}_{self.count}"

    def const(self, hint, array):
        name = self._name(hint)
        self.inits.append(numpy_helper.from_array(np.array(array, order="C"), name))
        return name

    def f32(self, hint, array):
        return self.const(hint, np.asarray(array, dtype=np.float32))

    def i64(self, hint, values):
        return self.const(hint, np.asarray(values, dtype=np.int64))

    def op(self, op_type, inputs, hint=None, out=None, **attrs):
        out = out or self._name(hint or op_type.lower())
        self.nodes.append(
            helper.make_node(op_type, inputs, [out], name=self._name("n_" + op_type), **attrs)
        )
        return out

    def layer_norm(self, x, w, b, hint):
        mean = self.op("ReduceMean", [x], f"{hint}_mean", axes=[-1], keepdims=1)
        d = self.op("Sub", [x, mean], f"{hint}_centred")
        var = self.op("ReduceMean", [self.op("Mul", [d, d])], f"{hint}_var", axes=[-1], keepdims=1)
        eps = self.f32(f"{hint}_eps", LN_EPS)
        std = self.op("Sqrt", [self.op("Add", [var, eps])], f"{hint}_std")
        y = self.op("Div", [d, std], f"{hint}_xhat")
        y = self.op("Mul", [y, self.f32(f"{hint}_w", w)])
        return self.op("Add", [y, self.f32(f"{hint}_b", b)], f"{hint}_out")

    def linear(self, x, w, b, hint):
        """`x W^T + b` with a PyTorch-layout weight `[out, in]`."""
        y = self.op("MatMul", [x, self.f32(f"{hint}_wt", np.asarray(w).T)])
        return self.op("Add", [y, self.f32(f"{hint}_b", b)], f"{hint}_out")

    def quick_gelu(self, x, hint):
        k = self.f32(f"{hint}_k", 1.702)
        s = self.op("Sigmoid", [self.op("Mul", [x, k])])
        return self.op("Mul", [x, s], f"{hint}_out")

    def block(self, x, p, heads, hint, mask=None, out=None):
        """A pre-LN residual attention block on `[batch, n, d]`."""
        d = p["ln_1.weight"].shape[0]
        hd = d // heads
        w_in, b_in = p["attn.in_proj_weight"], p["attn.in_proj_bias"]
        h = self.layer_norm(x, p["ln_1.weight"], p["ln_1.bias"], f"{hint}_ln1")
        split_shape = self.i64(f"{hint}_heads_shape", [0, 0, heads, hd])
        q = self.linear(h, w_in[:d], b_in[:d], f"{hint}_q")
        k = self.linear(h, w_in[d : 2 * d], b_in[d : 2 * d], f"{hint}_k")
        v = self.linear(h, w_in[2 * d :], b_in[2 * d :], f"{hint}_v")
        q = self.op("Transpose", [self.op("Reshape", [q, split_shape])], perm=[0, 2, 1, 3])
        kt = self.op("Transpose", [self.op("Reshape", [k, split_shape])], perm=[0, 2, 3, 1])
        v = self.op("Transpose", [self.op("Reshape", [v, split_shape])], perm=[0, 2, 1, 3])
        scores = self.op("MatMul", [q, kt])
        scale = self.f32(f"{hint}_scale", 1.0 / np.sqrt(hd))
        scores = self.op("Mul", [scores, scale], f"{hint}_scores")
        if mask is not None:
            scores = self.op("Add", [scores, mask], f"{hint}_masked")
        attn = self.op("Softmax", [scores], f"{hint}_attn", axis=-1)
        a = self.op("Transpose", [self.op("MatMul", [attn, v])], perm=[0, 2, 1, 3])
        a = self.op("Reshape", [a, self.i64(f"{hint}_merge_shape", [0, 0, d])])
        a = self.linear(a, p["attn.out_proj.weight"], p["attn.out_proj.bias"], f"{hint}_out_proj")
        x = self.op("Add", [x, a], f"{hint}_res1")
        h = self.layer_norm(x, p["ln_2.weight"], p["ln_2.bias"], f"{hint}_ln2")
        h = self.linear(h, p["mlp.c_fc.weight"], p["mlp.c_fc.bias"], f"{hint}_fc")
        h = self.quick_gelu(h, f"{hint}_gelu")
        h = self.linear(h, p["mlp.c_proj.weight"], p["mlp.c_proj.bias"], f"{hint}_proj")
        return self.op("Add", [x, h], f"{hint}_res2", out=out)

    def model(self, name, inputs, outputs):
        graph = helper.make_graph(self.nodes, name, inputs, outputs, self.inits)
        m = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET)],
            producer_name=PRODUCER,
            producer_version="1",
        )
        m.ir_version = 8  # the IR of opset 17, readable by older runtimes
        onnx.checker.check_model(m, full_check=True)
        return m


def _visual_tokens(g, sd, dims, blocks, out=None):
    """Patch embedding, class token, positions, ln_pre and `blocks` resblocks."""
    width, patch = dims["width"], dims["patch"]
    grid = dims["image_size"] // patch
    x = g.op("Conv", ["pixels", g.f32("conv1_w", sd["visual.conv1.weight"])], "patch_embed",
             kernel_shape=[patch, patch], strides=[patch, patch])
    x = g.op("Reshape", [x, g.i64("grid_shape", [0, width, grid * grid])])
    x = g.op("Transpose", [x], "patches", perm=[0, 2, 1])
    # The class token broadcast to [batch, 1, width]; batch comes from Shape(pixels).
    batch = g.op("Gather", [g.op("Shape", ["pixels"]), g.i64("zero", [0])], "batch_dim", axis=0)
    cls_shape = g.op("Concat", [batch, g.i64("cls_tail", [1, width])], "cls_shape", axis=0)
    cls_emb = np.asarray(sd["visual.class_embedding"]).reshape(1, 1, width)
    cls = g.op("Expand", [g.f32("class_embedding", cls_emb), cls_shape], "cls")
    x = g.op("Concat", [cls, x], "with_cls", axis=1)
    x = g.op("Add", [x, g.f32("positional_embedding", sd["visual.positional_embedding"])])
    x = g.layer_norm(x, sd["visual.ln_pre.weight"], sd["visual.ln_pre.bias"], "ln_pre")
    for i in range(blocks):
        last = out if i == blocks - 1 else None
        x = g.block(x, resblock(sd, "visual.transformer.", i), dims["heads"], f"block{i}", out=last)
    return x


def _pixels_input(dims):
    s = dims["image_size"]
    return helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 3, s, s])


def visual_trunk_model(sd, dims):
    """`pixels` `[batch, 3, S, S]` -> `tokens` `[batch, N, D]` (blocks 0..L-2)."""
    g = Graph()
    _visual_tokens(g, sd, dims, dims["layers"] - 1, out="tokens")
    n = (dims["image_size"] // dims["patch"]) ** 2 + 1
    out = helper.make_tensor_value_info("tokens", TensorProto.FLOAT, ["batch", n, dims["width"]])
    return g.model("visual_trunk", [_pixels_input(dims)], [out])


def visual_full_model(sd, dims):
    """`pixels` -> `image_embeds` `[batch, E]`: every block, ln_post on CLS, proj."""
    g = Graph()
    x = _visual_tokens(g, sd, dims, dims["layers"])
    cls = g.op("Gather", [x, g.i64("cls_index", 0)], "cls_token", axis=1)
    cls = g.layer_norm(cls, sd["visual.ln_post.weight"], sd["visual.ln_post.bias"], "ln_post")
    g.op("MatMul", [cls, g.f32("proj", sd["visual.proj"])], out="image_embeds")
    out = helper.make_tensor_value_info(
        "image_embeds", TensorProto.FLOAT, ["batch", dims["embed_dim"]]
    )
    return g.model("visual_full", [_pixels_input(dims)], [out])


def textual_model(sd, dims):
    """`input_ids` i64 `[batch, C]` -> `text_embeds` `[batch, E]`.

    Pooling takes the first position holding the largest id (EOT), like
    `argmax`: score = id * C + (C - 1 - position) is unique per row, and the
    one-hot of its maximum selects that position.
    """
    ctx = dims["context_length"]
    # ids * ctx + position must be exact in f32 for the search of the largest id.
    assert dims["vocab_size"] * ctx < 2**24, "vocab * context too large"
    g = Graph()
    x = g.op("Gather", [g.f32("token_embedding", sd["token_embedding.weight"]), "input_ids"],
             "tok_emb", axis=0)
    x = g.op("Add", [x, g.f32("positional_embedding", sd["positional_embedding"])])
    mask = g.f32("causal_mask", causal_mask(ctx))
    for i in range(dims["text_layers"]):
        x = g.block(x, resblock(sd, "transformer.", i), dims["text_heads"], f"block{i}", mask)
    x = g.layer_norm(x, sd["ln_final.weight"], sd["ln_final.bias"], "ln_final")
    ids = g.op("Cast", ["input_ids"], "ids_f", to=TensorProto.FLOAT)
    score = g.op("Mul", [ids, g.f32("ctx", float(ctx))])
    score = g.op("Add", [score, g.f32("rev_pos", np.arange(ctx - 1, -1, -1))], "eot_score")
    best = g.op("ReduceMax", [score], "eot_best", axes=[1], keepdims=1)
    onehot = g.op("Cast", [g.op("Equal", [score, best])], "eot_onehot", to=TensorProto.FLOAT)
    onehot = g.op("Unsqueeze", [onehot, g.i64("last_axis", [2])], "eot_weights")
    pooled = g.op("ReduceSum", [g.op("Mul", [x, onehot]), g.i64("seq_axis", [1])], "pooled",
                  keepdims=0)
    g.op("MatMul", [pooled, g.f32("text_projection", sd["text_projection"])], out="text_embeds")
    inp = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", ctx])
    out = helper.make_tensor_value_info(
        "text_embeds", TensorProto.FLOAT, ["batch", dims["embed_dim"]]
    )
    return g.model("textual", [inp], [out])
