#!/usr/bin/env python3
"""Pretrains `mini-clip`, a small CLIP of the true architecture, on real pictures.

    pip install -r models/requirements.txt torch==2.15.0 open_clip_torch==3.3.0
    apt-get install dataset-fashion-mnist          # Fashion-MNIST (IDX .gz)
    export ANYTIME_EDGE_ASSETS=../shared             # CIFAR-10 under data/cifar-10
    python3 models/train_mini_clip.py               # ~55 min on 2 cores
    python3 models/export_mini_clip.py              # export into models/mini-clip/

The model is open_clip's own `CLIP` class with the configuration in
`models/mini-clip.json` (ViT image tower: 56 px, patch 8, so N = 50 tokens like
ViT-B/32, width 128, 6 blocks, QuickGELU; causal text tower: width 64, 3 blocks,
the real CLIP BPE with its 49,408 ids), so that `export_open_clip.py` exports it
exactly as it exports a real OpenAI checkpoint.

Data, mirroring what a real CLIP knows and what it does not: all 60,000 Fashion-MNIST
training images (10 classes) and the CIFAR-10 training images of five classes only
(airplane, automobile, bird, cat, deer). Dog, frog, horse, ship and truck are never
shown: the frozen model is poor on them, the regime the anytime learner exists for.
Each batch is half CIFAR, half Fashion-MNIST.

Loss: CLIP's image-to-text contrastive loss with a learned temperature. A batch's
candidate captions are the 15 class names, each in a prompt template drawn at
random for the step, plus `--distractors` captions of random words of the CLIP
vocabulary (never the five held-out class names): as in CLIP, most captions an
image is contrasted with are not its own.

A real CLIP's text tower gives every name its own embedding, because it has read
them all. Ours must too, or the anytime learner cannot tell the names it was never
shown apart. So the token embedding stays at its random initialisation (frozen: a
name never seen is then as legible to the tower as one it was trained on), and a
word-level text contrastive term (weight `--word-weight`) asks two captions of the
same distractor word, in two templates, to be closer to each other than to the
other words' captions. Without both, the first run of this script mapped dog, frog,
horse, ship and truck to one point (pairwise cosine 1.00).

Everything is seeded (`--seed`); PyTorch's CPU kernels are not bit-reproducible
across machines, so the committed weights are those this script produced, with
its log in `models/mini-clip/TRAINING.md`.
"""

import argparse
import gzip
import json
import math
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIG = os.path.join(HERE, "mini-clip.json")
MODEL = "mini-clip"

CIFAR_SEEN = ["airplane", "automobile", "bird", "cat", "deer"]
CIFAR_UNSEEN = ["dog", "frog", "horse", "ship", "truck"]
CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                 "ship", "truck"]
# The label names the project uses for Fashion-MNIST (host/src/sim/dataset.rs has the same).
FASHION_CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                   "sneaker", "bag", "ankle boot"]
EVAL_TEMPLATE = "a photo of a {}."  # the runtime's prompt (SPEC §1)
TEMPLATES = [
    "a photo of a {}.",
    "a blurry photo of a {}.",
    "a low resolution photo of a {}.",
    "a close-up photo of a {}.",
    "a photo of the {}.",
    "a small photo of a {}.",
    "a good photo of a {}.",
    "a cropped photo of a {}.",
    "a bad photo of a {}.",
    "a black and white photo of a {}.",
    "a pixelated photo of a {}.",
    "itap of a {}.",
    "a picture of a {}.",
    "an image of a {}.",
]
# Words never used as distractors: the held-out classes and their near forms.
HELD_OUT_WORDS = {"dog", "dogs", "puppy", "frog", "frogs", "toad", "horse", "horses", "pony",
                  "ship", "ships", "boat", "boats", "truck", "trucks", "lorry"}
FASHION_DIR = "/usr/share/datasets/fashion-mnist"
SIZE = 56


def log(msg, fh=None):
    line = f"[{time.strftime('%H:%M:%S')}] {msg}"
    print(line, flush=True)
    if fh:
        fh.write(line + "\n")
        fh.flush()


def read_cifar(root, files):
    """CIFAR-10 binary records -> (u8 [n, 32, 32, 3], labels)."""
    raw = b"".join(open(os.path.join(root, f), "rb").read() for f in files)
    rec = np.frombuffer(raw, np.uint8).reshape(-1, 1 + 3072)
    return rec[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), rec[:, 0].astype(np.int64)


def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic, = np.frombuffer(data[:4], ">u4")
    ndim = magic & 0xFF
    dims = np.frombuffer(data[4 : 4 + 4 * ndim], ">u4").astype(int)
    return np.frombuffer(data[4 + 4 * ndim :], np.uint8).reshape(dims)


def read_fashion(split):
    prefix = "train" if split == "train" else "t10k"
    imgs = read_idx(os.path.join(FASHION_DIR, f"{prefix}-images-idx3-ubyte.gz"))
    labels = read_idx(os.path.join(FASHION_DIR, f"{prefix}-labels-idx1-ubyte.gz"))
    return np.repeat(imgs[..., None], 3, axis=3), labels.astype(np.int64)


def to_model_size(images):
    """u8 [n, h, w, 3] -> u8 [n, 3, 56, 56], bicubic as the runtime resizes (PIL's
    bicubic, a = -0.5, the kernel of the `image` crate's CatmullRom)."""
    from PIL import Image

    out = np.empty((len(images), 3, SIZE, SIZE), np.uint8)
    for i, im in enumerate(images):
        out[i] = np.asarray(Image.fromarray(im).resize((SIZE, SIZE), Image.BICUBIC)).transpose(2, 0, 1)
    return out


def distractor_words(tokenizer_module):
    """Whole-word alphabetic tokens of CLIP's BPE (4-12 letters), held-out names removed."""
    from open_clip.tokenizer import default_bpe

    lines = gzip.open(default_bpe()).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    words = set()
    for line in lines:
        merged = "".join(line.split())
        if merged.endswith("</w>"):
            w = merged[:-4]
            if w.isalpha() and w.isascii() and 4 <= len(w) <= 12:
                words.add(w)
    words -= HELD_OUT_WORDS
    return sorted(words)


class Data:
    def __init__(self, assets, log_fh):
        root = os.path.join(assets, "data", "cifar-10", "cifar-10-batches-bin")
        x, y = read_cifar(root, [f"data_batch_{i}.bin" for i in range(1, 6)])
        keep = np.isin(y, range(5))  # airplane .. deer: ids 0..4 in CIFAR-10's order
        self.cifar_x, self.cifar_y = to_model_size(x[keep]), y[keep]
        x, y = read_cifar(root, ["test_batch.bin"])
        self.cifar_test_x, self.cifar_test_y = to_model_size(x), y
        x, y = read_fashion("train")
        self.fashion_x, self.fashion_y = to_model_size(x), y
        x, y = read_fashion("test")
        self.fashion_test_x, self.fashion_test_y = to_model_size(x), y
        log(f"data: CIFAR-10 seen-class train {len(self.cifar_y)}, CIFAR-10 test "
            f"{len(self.cifar_test_y)}, Fashion-MNIST train {len(self.fashion_y)}, test "
            f"{len(self.fashion_test_y)}", log_fh)


class Stream:
    """Endless shuffled passes over `n` items."""

    def __init__(self, n, rng):
        self.n, self.rng, self.order, self.pos, self.epochs = n, rng, None, n, 0

    def take(self, k):
        out = []
        while k:
            if self.pos == self.n:
                self.order, self.pos = self.rng.permutation(self.n), 0
                self.epochs += 1
            m = min(k, self.n - self.pos)
            out.append(self.order[self.pos : self.pos + m])
            self.pos, k = self.pos + m, k - m
        return np.concatenate(out)


def augment(batch_u8, rng, pad=4):
    """Random translation (reflect-padded crop) and horizontal flip, on u8 [b, 3, S, S]."""
    import torch

    b = batch_u8.shape[0]
    padded = np.pad(batch_u8, ((0, 0), (0, 0), (pad, pad), (pad, pad)), mode="reflect")
    dx, dy = rng.integers(0, 2 * pad + 1, b), rng.integers(0, 2 * pad + 1, b)
    flip = rng.random(b) < 0.5
    out = np.empty_like(batch_u8)
    for i in range(b):
        crop = padded[i, :, dy[i] : dy[i] + SIZE, dx[i] : dx[i] + SIZE]
        out[i] = crop[:, :, ::-1] if flip[i] else crop
    return torch.from_numpy(out)


def normalise(u8, mean, std):
    return (u8.float() / 255.0 - mean) / std


def image_features(model, images_u8, mean, std, batch=500):
    import torch

    with torch.inference_mode():
        return torch.cat([
            model.encode_image(normalise(torch.from_numpy(images_u8[i : i + batch]), mean, std),
                               normalize=True)
            for i in range(0, len(images_u8), batch)])


def zero_shot(model, tokenizer, feats, labels, names):
    """Top-1 zero-shot accuracy over `names` with the runtime's prompt, and the predictions."""
    import torch

    with torch.inference_mode():
        text = model.encode_text(tokenizer([EVAL_TEMPLATE.format(n) for n in names]),
                                 normalize=True)
        preds = (feats @ text.T).argmax(1).numpy()
    return float((preds == labels).mean()), preds


def evaluate(model, tokenizer, data, mean, std):
    model.eval()
    cifar = image_features(model, data.cifar_test_x, mean, std)
    fashion = image_features(model, data.fashion_test_x, mean, std)
    y = data.cifar_test_y
    seen = y < 5
    cifar5, _ = zero_shot(model, tokenizer, cifar[torch_mask(seen)], y[seen], CIFAR_SEEN)
    fashion_acc, _ = zero_shot(model, tokenizer, fashion, data.fashion_test_y, FASHION_CLASSES)
    cifar10, preds = zero_shot(model, tokenizer, cifar, y, CIFAR_CLASSES)
    import torch

    with torch.inference_mode():
        names = model.encode_text(tokenizer([EVAL_TEMPLATE.format(n) for n in CIFAR_CLASSES]),
                                  normalize=True)
        cos = names @ names.T
        off = ~torch.eye(len(CIFAR_CLASSES), dtype=torch.bool)
    res = {
        # how far apart the prompts of the ten CIFAR-10 names are (1.0: indistinguishable)
        "cifar10_names_max_cos": float(cos[off].max()),
        "cifar10_seen5_5way": cifar5,
        "fashion_mnist_10way": fashion_acc,
        "cifar10_10way": cifar10,
        "cifar10_10way_on_seen": float((preds[seen] == y[seen]).mean()),
        "cifar10_10way_on_unseen": float((preds[~seen] == y[~seen]).mean()),
    }
    model.train()
    return res


def torch_mask(mask):
    import torch

    return torch.from_numpy(mask)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=58.0,
                   help="wall-clock budget of the whole run, loading and evaluation included; "
                   "the learning rate's cosine runs over it, and training stops in time for "
                   "the final evaluation")
    p.add_argument("--steps", type=int, default=None,
                   help="optimiser steps instead of a time budget (batch --batch)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=1.5e-3)
    p.add_argument("--warmup", type=int, default=150)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--distractors", type=int, default=32)
    p.add_argument("--word-weight", type=float, default=1.0,
                   help="weight of the word-level text contrastive term")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--final-eval-minutes", type=float, default=1.0,
                   help="time kept for the final evaluation and saving")
    p.add_argument("--assets", default=os.environ.get("ANYTIME_EDGE_ASSETS"))
    p.add_argument("--out", default=os.path.join(HERE, "..", "target", "mini-clip"),
                   help="folder for the checkpoint and the log")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    args = p.parse_args()
    if not args.assets:
        p.error("set ANYTIME_EDGE_ASSETS or give --assets (CIFAR-10 under data/cifar-10)")

    import open_clip
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    os.makedirs(args.out, exist_ok=True)
    log_fh = open(os.path.join(args.out, "train.log"), "w")
    log(f"settings: {json.dumps(vars(args))}", log_fh)
    log(f"torch {torch.__version__}, open_clip {open_clip.__version__}, numpy {np.__version__}, "
        f"threads {torch.get_num_threads()}", log_fh)
    t_start = time.time()

    open_clip.add_model_config(CONFIG)
    model = open_clip.create_model(MODEL, pretrained=None, device="cpu", precision="fp32")
    tokenizer = open_clip.get_tokenizer(MODEL)
    # Frozen at its random init: every token, seen in training or not, is a vector the
    # tower has learned to read (see the module documentation).
    model.token_embedding.weight.requires_grad_(False)
    n_params = sum(p.numel() for p in model.parameters())
    n_vis = sum(p.numel() for p in model.visual.parameters())
    log(f"model: {n_params} parameters ({n_vis} in the image tower)", log_fh)
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)

    data = Data(args.assets, log_fh)
    words = distractor_words(open_clip)
    log(f"distractor vocabulary: {len(words)} words", log_fh)
    class_names = CIFAR_SEEN + FASHION_CLASSES  # caption index = class index here
    cifar_stream = Stream(len(data.cifar_y), rng)
    fashion_stream = Stream(len(data.fashion_y), rng)

    decay, no_decay = [], []
    for name, prm in model.named_parameters():
        if not prm.requires_grad:
            continue
        (no_decay if prm.ndim < 2 or "embedding" in name or "logit_scale" in name
         else decay).append(prm)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.98), eps=1e-6)

    # The schedule runs over steps (--steps) or over the time left (--minutes): linear
    # warm-up, then a cosine from the peak to 0 at the last step or at the deadline.
    deadline = t_start + 60 * (args.minutes - args.final_eval_minutes)

    def progress(step, t_warm):
        if args.steps is not None:
            return (step - args.warmup) / max(1, args.steps - args.warmup)
        return (time.time() - t_warm) / max(1e-9, deadline - t_warm)

    def lr_at(step, t_warm):
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        t = min(1.0, max(0.0, progress(step, t_warm)))
        return 0.5 * args.lr * (1 + math.cos(math.pi * t))

    def checkpoint_eval(step):
        res = evaluate(model, tokenizer, data, mean, std)
        res.update(step=step, minutes=(time.time() - t_start) / 60)
        log(f"eval {json.dumps(res)}", log_fh)
        torch.save(model.state_dict(), os.path.join(args.out, "checkpoint.pt"))
        return res

    fwd = torch.compile(model) if args.compile else model
    model.train()
    half = args.batch // 2
    history = []
    t_train = time.time()
    loss_avg, acc_avg = None, None
    t_warm, mid_done, step = None, False, 0
    while True:
        if step == args.warmup:
            t_warm = time.time()
        done = (step >= args.steps) if args.steps is not None else (
            t_warm is not None and time.time() >= deadline)
        if done:
            break
        lr = lr_at(step, t_warm)
        ci, fi = cifar_stream.take(half), fashion_stream.take(args.batch - half)
        x = torch.cat([augment(data.cifar_x[ci], rng), augment(data.fashion_x[fi], rng)])
        x = normalise(x, mean, std)
        y = torch.from_numpy(np.concatenate([data.cifar_y[ci], 5 + data.fashion_y[fi]]))
        templates = rng.integers(0, len(TEMPLATES), len(class_names))
        captions = [TEMPLATES[t].format(n) for t, n in zip(templates, class_names)]
        drawn = rng.choice(len(words), args.distractors, replace=False)
        for w in drawn:
            captions.append(TEMPLATES[rng.integers(0, len(TEMPLATES))].format(words[w]))
        # the same words again, each in another template drawn at random
        captions += [TEMPLATES[rng.integers(0, len(TEMPLATES))].format(words[w]) for w in drawn]
        for g in opt.param_groups:
            g["lr"] = lr
        img, txt_all, scale = fwd(x, tokenizer(captions))
        n_cap = len(class_names) + args.distractors
        txt, again = txt_all[:n_cap], txt_all[n_cap:]
        logits = scale * img @ txt.T
        loss_image = F.cross_entropy(logits, y)
        # word-level text contrastive: each word's second caption against its first
        word_logits = 10.0 * again @ txt[len(class_names):].T
        target = torch.arange(args.distractors)
        loss_word = 0.5 * (F.cross_entropy(word_logits, target)
                           + F.cross_entropy(word_logits.T, target))
        loss = loss_image + args.word_weight * loss_word
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
            acc = float((logits.argmax(1) == y).float().mean())
        lv = float(loss_image.detach())
        loss_avg = lv if loss_avg is None else 0.98 * loss_avg + 0.02 * lv
        acc_avg = acc if acc_avg is None else 0.98 * acc_avg + 0.02 * acc
        if step % 50 == 0:
            el = time.time() - t_train
            log(f"step {step} ({(time.time() - t_start) / 60:.1f} min) loss {loss_avg:.3f} "
                f"word loss {float(loss_word):.3f} "
                f"batch acc {acc_avg:.3f} "
                f"lr {lr:.2e} scale {float(scale):.1f} {el / (step + 1):.2f} s/step "
                f"(CIFAR passes {cifar_stream.epochs}, Fashion-MNIST passes "
                f"{fashion_stream.epochs})", log_fh)
        step += 1
        if not mid_done and t_warm is not None and progress(step, t_warm) >= 0.5:
            mid_done = True
            history.append(checkpoint_eval(step))

    log(f"trained {step} steps ({step * args.batch} images)", log_fh)
    history.append(checkpoint_eval(step))

    total = time.time() - t_start
    summary = {"settings": vars(args), "parameters": n_params, "image_tower_parameters": n_vis,
               "wall_seconds": total, "train_seconds": time.time() - t_train, "steps": step,
               "cifar_passes": cifar_stream.epochs, "fashion_passes": fashion_stream.epochs,
               "history": history, "final": history[-1],
               "torch": torch.__version__, "open_clip": open_clip.__version__}
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    log(f"done in {total / 60:.1f} min: {json.dumps(history[-1])}", log_fh)


if __name__ == "__main__":
    sys.exit(main())
