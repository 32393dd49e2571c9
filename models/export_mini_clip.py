#!/usr/bin/env python3
"""Exports the pretrained mini-CLIP into `models/mini-clip/` with its demo pictures.

    python3 models/train_mini_clip.py     # writes target/mini-clip/checkpoint.pt
    python3 models/export_mini_clip.py    # writes models/mini-clip/

The export is `export_open_clip.py`'s, the same as for a real OpenAI checkpoint (trunk
ONNX, last block safetensors, text ONNX, the real CLIP tokenizer, open_clip's reference
outputs, manifest). Before it, this script picks the demo pictures from the CIFAR-10
**test** split: for each of the ten classes the first `--per-class` test images in
file order, except that for the five pretraining classes only images the model gets
right zero-shot (over the ten CIFAR-10 labels) are taken, so that the demo's "before"
shows what the model knows; for the five held-out classes the first ones, whatever the
model answers. `--learn-count` **training** images of `--learn-class` and as many of each
pretraining class (first in file order) go to `images/learn/`, for the demo to learn
from: the new class, and the known ones as what it is not. The pictures are 32×32 PNGs,
as CIFAR-10 has them.
"""

import argparse
import os
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import fixture_io as fio  # noqa: E402
import train_mini_clip as tm  # noqa: E402

# The learner's learning rate on this model, chosen on a validation split of the CIFAR-10
# training images (BENCHMARKS.md, "Simulator").
LEARNER_LR = 3e-4
LICENCE = ("MIT OR Apache-2.0 (weights trained by models/train_mini_clip.py on CIFAR-10 "
           "and Fashion-MNIST (MIT))")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=os.path.join("target", "mini-clip", "checkpoint.pt"),
                   help="relative to the repository root")
    p.add_argument("--out", default=os.path.join(HERE, "mini-clip"))
    p.add_argument("--assets", default=os.environ.get("ANYTIME_EDGE_ASSETS"))
    p.add_argument("--per-class", type=int, default=3)
    p.add_argument("--learn-class", default="truck")
    p.add_argument("--learn-count", type=int, default=10)
    p.add_argument("--learner-lr", type=float, default=LEARNER_LR,
                   help="the learner's learning rate written into the manifest")
    args = p.parse_args()
    args.out = os.path.abspath(args.out)
    args.assets = args.assets and os.path.abspath(args.assets)
    if not args.assets:
        p.error("set ANYTIME_EDGE_ASSETS or give --assets (CIFAR-10 under data/cifar-10)")

    import open_clip
    import torch

    open_clip.add_model_config(tm.CONFIG)
    os.chdir(ROOT)
    model = open_clip.create_model(tm.MODEL, pretrained=args.checkpoint, device="cpu",
                                   precision="fp32").eval()
    tokenizer = open_clip.get_tokenizer(tm.MODEL)
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)

    root = os.path.join(args.assets, "data", "cifar-10", "cifar-10-batches-bin")
    test_x, test_y = tm.read_cifar(root, ["test_batch.bin"])
    feats = tm.image_features(model, tm.to_model_size(test_x), mean, std)
    _, preds = tm.zero_shot(model, tokenizer, feats, test_y, tm.CIFAR_CLASSES)

    demo = os.path.join(ROOT, "target", "mini-clip-demo")
    if os.path.isdir(demo):
        for dirpath, _, files in os.walk(demo, topdown=False):
            for f in files:
                os.remove(os.path.join(dirpath, f))
            os.rmdir(dirpath)
    os.makedirs(os.path.join(demo, "learn"))
    for c, name in enumerate(tm.CIFAR_CLASSES):
        idx = np.flatnonzero(test_y == c)
        if name in tm.CIFAR_SEEN:
            idx = idx[preds[idx] == c]
        for k, i in enumerate(idx[: args.per_class]):
            fio.write_png(os.path.join(demo, f"{name}_{k + 1}.png"), test_x[i])
        print(f"{name}: test images {list(idx[: args.per_class])}")
    train_x, train_y = tm.read_cifar(root, [f"data_batch_{i}.bin" for i in range(1, 6)])
    for name in tm.CIFAR_SEEN + [args.learn_class]:
        idx = np.flatnonzero(train_y == tm.CIFAR_CLASSES.index(name))[: args.learn_count]
        for k, i in enumerate(idx):
            fio.write_png(os.path.join(demo, "learn", f"{name}_{k + 1}.png"), train_x[i])
        print(f"learn: {name} training images {list(idx)}")

    cmd = [sys.executable, os.path.join(HERE, "export_open_clip.py"),
           "--model-config", os.path.relpath(tm.CONFIG, ROOT), "--model", tm.MODEL,
           "--checkpoint", args.checkpoint, "--name", "mini-clip", "--out", os.path.relpath(args.out, ROOT),
           "--licence", LICENCE, "--images", os.path.relpath(demo, ROOT),
           "--zero-shot-labels", ",".join(tm.CIFAR_SEEN)]
    if args.learner_lr:
        cmd += ["--learner-lr", repr(args.learner_lr)]
    print(" ".join(cmd))
    subprocess.run(cmd, check=True)


if __name__ == "__main__":
    main()
