#!/usr/bin/env python3
"""A minimal reproduction for tract's maintainers (issue 17): the trunk's matrix products
as single-MatMul ONNX graphs, `x [batch, M, K] · W [K, N]` with W a constant and the
batch symbolic (as our trunk's graph has it), run by tract (`host/examples/tract_matmul.rs`,
the runtime's loading path; also with the batch made concrete before optimising) and by
onnxruntime, one thread each, in alternating rounds. Prints per shape the GFLOP/s of each
(the best round of each) and the ratios to onnxruntime, and checks that all give the same
sum of output magnitudes.

    cargo build --release -p anytime-host --example tract_matmul
    python3 host/bench/tract_matmul_repro.py [--rounds 3] [--out DIR]
"""

import argparse
import json
import os
import subprocess
import tempfile
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

# (batch, M, K, N): the ViT-B/32 trunk's MLP up, MLP down and attention projection, at one
# image (M = 50 tokens) and eight.
SHAPES = [
    (1, 50, 768, 3072),
    (1, 50, 3072, 768),
    (1, 50, 768, 768),
    (8, 50, 768, 3072),
    (8, 50, 3072, 768),
]


def write_model(path, k, n):
    w = (np.arange(k * n) * 104729 % 11).astype(np.float32).reshape(k, n) * 0.1 - 0.5
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", None, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", None, n])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, path)


def ort_round(sess, x, calls):
    t = time.perf_counter()
    for _ in range(calls):
        y = sess.run(None, {"x": x})[0]
    return (time.perf_counter() - t) / calls, float(np.abs(y.astype(np.float64)).sum())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--tract", default="target/release/examples/tract_matmul")
    ap.add_argument("--out", help="folder for the ONNX files (default: a temporary one)")
    a = ap.parse_args()
    out = a.out or tempfile.mkdtemp(prefix="tract-matmul-")
    os.makedirs(out, exist_ok=True)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    print(f"onnxruntime {ort.__version__}, one thread; files in {out}")
    print(f"{'batch x M x K . K x N':<24} {'tract':>8} {'concrete':>9} {'ort':>8} {'tract/ort':>10} {'concrete/ort':>13}  (GFLOP/s)")
    rows = []
    for batch, m, k, n in SHAPES:
        path = os.path.join(out, f"matmul_{k}x{n}.onnx")
        if not os.path.exists(path):
            write_model(path, k, n)
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        x = ((np.arange(batch * m * k) * 7919 % 13).astype(np.float32) * 0.1 - 0.6).reshape(batch, m, k)
        ort_round(sess, x, 2)  # warm-up
        best = {"ort": float("inf"), "symbolic": float("inf"), "concrete": float("inf")}
        sums = {}
        for _ in range(a.rounds):
            for _ in range(3):  # as the example does: its best of 3 runs of `calls`
                s, sums["ort"] = ort_round(sess, x, a.calls)
                best["ort"] = min(best["ort"], s)
            for mode in ("symbolic", "concrete"):
                r = subprocess.run(
                    [a.tract, path, str(batch), str(m), str(k), str(a.calls), mode],
                    check=True, capture_output=True, text=True,
                )
                t = json.loads(r.stdout)
                best[mode] = min(best[mode], t["seconds"])
                sums[mode] = t["sum"]
        for mode in ("symbolic", "concrete"):
            rel = abs(sums[mode] - sums["ort"]) / max(abs(sums["ort"]), 1e-30)
            assert rel < 1e-4, f"tract ({mode}) and onnxruntime differ: {sums}"
        flop = 2.0 * batch * m * k * n
        g = {key: flop / v / 1e9 for key, v in best.items()}
        row = {"batch": batch, "m": m, "k": k, "n": n, "gflops": g,
               "ratio_symbolic": g["symbolic"] / g["ort"], "ratio_concrete": g["concrete"] / g["ort"]}
        rows.append(row)
        print(f"{f'{batch}x{m}x{k} . {k}x{n}':<24} {g['symbolic']:>8.1f} {g['concrete']:>9.1f} {g['ort']:>8.1f}"
              f" {row['ratio_symbolic']:>10.2f} {row['ratio_concrete']:>13.2f}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
