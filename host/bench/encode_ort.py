#!/usr/bin/env python3
"""Trunk encode throughput of visual_trunk.onnx in onnxruntime, the reference for
`anytime-host bench-encode`. Prints one JSON line."""
import argparse
import json
import time

import numpy as np
import onnxruntime as ort


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="model folder holding visual_trunk.onnx")
    ap.add_argument("--image-size", type=int, required=True)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    so = ort.SessionOptions()
    so.intra_op_num_threads = a.threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(f"{a.model}/visual_trunk.onnx", so, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(a.seed)
    x = rng.standard_normal((a.batch, 3, a.image_size, a.image_size), dtype=np.float32)
    sess.run(None, {"pixels": x})  # warm-up
    calls = max(1, a.images // a.batch)
    t0 = time.perf_counter()
    total = 0.0
    for _ in range(calls):
        total += float(sess.run(None, {"pixels": x})[0].sum())
    dt = time.perf_counter() - t0
    print(json.dumps({
        "runtime": f"onnxruntime {ort.__version__}",
        "threads": a.threads,
        "batch": a.batch,
        "images": calls * a.batch,
        "seconds": dt,
        "images_per_s": calls * a.batch / dt,
        "checksum": total / calls,
    }))


if __name__ == "__main__":
    main()
