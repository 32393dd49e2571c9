#!/usr/bin/env python3
"""One training step of the tuned last block in PyTorch CPU: the reference of
`anytime-host bench-train`. Same shapes, same loss (SPEC section 4), same AdamW settings
(decay on the four weight matrices only). As in ours, the input tokens (outputs of the
frozen trunk) get no gradient.

--mode same: the CPU path's algorithm (LN1 normalisation of every token; query,
attention, MLP and head for the CLS token only; keys, values and the LN1 output of the
patch tokens never materialised: the query is folded through W_k and the LN1 scale,
u = w1 * (W_k^T q), and the values through abar = sum_j p_j xhat_j, a = w1 * abar + b1).
The embedding is that of the full block.
--mode pruned: CLS-only query, attention and MLP, but keys and values of every token.
--mode dense: the block as a framework writes it (every token through attention and MLP).

Prints one JSON object on stdout: {"step_s": median seconds per step, ...}.
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=["same", "pruned", "dense"], default="same")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--labels", type=int, default=100)
    ap.add_argument("--tokens", type=int, default=50)
    ap.add_argument("--width", type=int, default=768)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--mlp", type=int, default=3072)
    ap.add_argument("--embed", type=int, default=512)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    B, N, D, H, M, E, K = a.batch, a.tokens, a.width, a.heads, a.mlp, a.embed, a.labels
    dh = D // H

    def p(*shape, scale=None, centre=0.0):
        s = scale if scale is not None else 1.0 / (shape[-1] ** 0.5)
        return (centre + s * (2 * torch.rand(*shape) - 1)).requires_grad_(True)

    ln1_w, ln1_b = p(D, scale=0.2, centre=1.0), p(D, scale=0.1)
    w_in, b_in = p(3 * D, D), p(3 * D, scale=0.1)
    w_out, b_out = p(D, D), p(D, scale=0.1)
    ln2_w, ln2_b = p(D, scale=0.2, centre=1.0), p(D, scale=0.1)
    w_fc, b_fc = p(M, D), p(M, scale=0.1)
    w_pr, b_pr = p(D, M), p(D, scale=0.1)
    other = torch.zeros((), requires_grad=True)
    with torch.no_grad():
        lnp_w = 1.0 + 0.2 * (2 * torch.rand(D) - 1)
        lnp_b = 0.1 * (2 * torch.rand(D) - 1)
        proj = (2 * torch.rand(D, E) - 1) / D**0.5
    decayed = [w_in, w_out, w_fc, w_pr]
    rest = [ln1_w, ln1_b, b_in, b_out, ln2_w, ln2_b, b_fc, b_pr, other]
    opt = torch.optim.AdamW(
        [{"params": decayed, "weight_decay": 0.05}, {"params": rest, "weight_decay": 0.0}],
        lr=9.375e-6, betas=(0.9, 0.999), eps=1e-8,
    )
    tokens = 2 * torch.rand(B, N, D) - 1
    labels = torch.arange(B) % K
    text = F.normalize(2 * torch.rand(K, E) - 1, dim=-1)

    def qgelu(x):
        return x * torch.sigmoid(1.702 * x)

    def embed(x):
        h1 = F.layer_norm(x, (D,), ln1_w, ln1_b, 1e-5) if a.mode != "same" else None
        if a.mode == "dense":
            qkv = F.linear(h1, w_in, b_in).view(B, N, 3, H, dh).permute(2, 0, 3, 1, 4)
            q, k, v = qkv[0], qkv[1], qkv[2]
            att = torch.softmax(q @ k.transpose(-1, -2) / dh**0.5, dim=-1)
            o = (att @ v).transpose(1, 2).reshape(B, N, D)
            x2 = x + F.linear(o, w_out, b_out)
            x3 = x2 + F.linear(qgelu(F.linear(F.layer_norm(x2, (D,), ln2_w, ln2_b, 1e-5), w_fc, b_fc)), w_pr, b_pr)
            cls = x3[:, 0]
        elif a.mode == "same":
            xhat = F.layer_norm(x, (D,), None, None, 1e-5)  # no gradient: x is constant
            h1c = xhat[:, 0] * ln1_w + ln1_b
            q = F.linear(h1c, w_in[:D], b_in[:D]).view(B, H, dh).transpose(0, 1)
            qt = (q @ w_in[D:2 * D].view(H, dh, D)).transpose(0, 1) / dh**0.5  # [B, H, D]
            att = torch.softmax((qt * ln1_w) @ xhat.transpose(1, 2), dim=-1)  # [B, H, N]
            av = ((att @ xhat) * ln1_w + ln1_b).transpose(0, 1)  # [H, B, D]
            o = (av @ w_in[2 * D:].view(H, dh, D).transpose(1, 2)).transpose(0, 1).reshape(B, D)
            x2 = x[:, 0] + F.linear(o + b_in[2 * D:], w_out, b_out)
            cls = x2 + F.linear(qgelu(F.linear(F.layer_norm(x2, (D,), ln2_w, ln2_b, 1e-5), w_fc, b_fc)), w_pr, b_pr)
        else:
            q = F.linear(h1[:, 0], w_in[:D], b_in[:D]).view(B, H, 1, dh)
            kv = F.linear(h1, w_in[D:], b_in[D:]).view(B, N, 2, H, dh).permute(2, 0, 3, 1, 4)
            att = torch.softmax(q @ kv[0].transpose(-1, -2) / dh**0.5, dim=-1)
            o = (att @ kv[1]).reshape(B, D)
            x2 = x[:, 0] + F.linear(o, w_out, b_out)
            cls = x2 + F.linear(qgelu(F.linear(F.layer_norm(x2, (D,), ln2_w, ln2_b, 1e-5), w_fc, b_fc)), w_pr, b_pr)
        return F.layer_norm(cls, (D,), lnp_w, lnp_b, 1e-5) @ proj

    def step():
        opt.zero_grad(set_to_none=True)
        z = F.normalize(embed(tokens), dim=-1)
        logits = torch.cat([100.0 * z @ text.T, other.expand(B, 1)], dim=1)
        l1 = F.cross_entropy(logits, labels)
        mask = F.one_hot(labels, K + 1).bool()
        l2 = F.cross_entropy(logits.masked_fill(mask, float("-inf")), torch.full((B,), K))
        loss = l1 + 0.1 * l2
        loss.backward()
        opt.step()
        return loss.item()

    first_loss = step()
    times = []
    for _ in range(max(1, a.steps)):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    print(json.dumps({
        "mode": a.mode,
        "first_loss": first_loss,
        "step_s": statistics.median(times),
        "steps": len(times),
        "threads": a.threads,
        "torch": torch.__version__,
    }))


if __name__ == "__main__":
    main()
