#!/usr/bin/env python3
"""Writes (or, with --check, verifies) codec_svd_reference.bin: the SPEC §5 codec's
reconstruction computed independently with numpy's SVD, for `firmware/core/tests/codec.rs`.

    python3 firmware/core/tests/data/codec_svd_reference.py           # write
    python3 firmware/core/tests/data/codec_svd_reference.py --check   # compare (CI)

Weighted PCA as FORMAT.md §2 defines it: mu = sum_i w_i T_i / sum_i w_i, X = T - mu, the
k directions V = the top-k right singular vectors of diag(sqrt(w)) X, C = X V^T (the
unweighted centred tokens), reconstruction T_hat = C V + mu (sign-free: V's signs cancel).
Tokens: N = 50 rows of width D = 64, rank-6 structure with well separated singular values
plus noise and an off-structure first (CLS) row; weights: CLS 1, the rest a softmax, like
the block's attention. For k = 1..5 the file holds T_hat, and for plain PCA (all weights 1)
too.

Layout, little-endian: magic b"SVDREF1\\0", then u32 n, d, k_max, then f32 tokens [n, d],
f32 weights [n], then for weighted in (1, 0), for k in 1..k_max: f32 T_hat [n, d].
"""

import os
import struct
import sys

import numpy as np

N, D, K_MAX = 50, 64, 5
HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "codec_svd_reference.bin")
MAGIC = b"SVDREF1\0"


def inputs():
    rng = np.random.default_rng(0)
    r = 6
    a = rng.standard_normal((N, r)) * np.array([8.0, 6.0, 4.5, 3.0, 2.0, 1.2])
    b = np.linalg.qr(rng.standard_normal((D, r)))[0].T  # orthonormal rows
    t = a @ b + 0.5 + 0.05 * rng.standard_normal((N, D))
    t[0] = 3.0 * rng.standard_normal(D)  # the CLS row lies off the patches' structure
    logits = 2.0 * rng.standard_normal(N - 1)
    e = np.exp(logits - logits.max())
    w = np.concatenate([[1.0], e / e.sum()])
    return t.astype(np.float32), w.astype(np.float32)


def reconstruct(t, w, k):
    t64, w64 = t.astype(np.float64), w.astype(np.float64)
    mu = (w64[:, None] * t64).sum(0) / w64.sum()
    x = t64 - mu
    _, _, vt = np.linalg.svd(np.sqrt(w64)[:, None] * x, full_matrices=False)
    v = vt[:k]
    return (x @ v.T) @ v + mu


def build():
    t, w = inputs()
    parts = [MAGIC, struct.pack("<3I", N, D, K_MAX), t.tobytes(), w.tobytes()]
    recs = []
    for weights in (w, np.ones_like(w)):
        for k in range(1, K_MAX + 1):
            recs.append(reconstruct(t, weights, k).astype(np.float32))
    parts += [r.tobytes() for r in recs]
    return b"".join(parts)


def main():
    data = build()
    if "--check" in sys.argv[1:]:
        with open(OUT, "rb") as f:
            old = f.read()
        a = np.frombuffer(old[len(MAGIC) + 12:], dtype="<f4")
        b = np.frombuffer(data[len(MAGIC) + 12:], dtype="<f4")
        if old[:len(MAGIC) + 12] != data[:len(MAGIC) + 12] or a.shape != b.shape:
            raise SystemExit(f"{OUT}: header or size differs from what this script makes")
        diff = float(np.max(np.abs(a.astype(np.float64) - b)))
        if not diff <= 1e-5:
            raise SystemExit(f"{OUT}: max |diff| {diff} from what this script makes")
        print(f"codec SVD reference reproduced (max |diff| {diff:.1e})")
        return
    with open(OUT, "wb") as f:
        f.write(data)
    print(f"wrote {OUT} ({len(data)} bytes)")


if __name__ == "__main__":
    main()
