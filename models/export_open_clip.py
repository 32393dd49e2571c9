#!/usr/bin/env python3
"""Exports a real OpenAI/OpenCLIP ViT CLIP into the project's model layout.

    pip install -r models/requirements.txt torch open_clip_torch
    python3 models/export_open_clip.py                          # ViT-B-32 / openai
    python3 models/export_open_clip.py --model ViT-B-16 --pretrained openai
    python3 models/export_open_clip.py --model ViT-B-32-quickgelu \\
        --checkpoint my.pt --licence "..." --name my-clip

It needs the network (or open_clip's cache) for the weights. It writes
`visual_trunk.onnx`, `last_block.safetensors`, `textual.onnx`, `tokenizer.json`,
`reference.safetensors` (fixed inputs and open_clip's outputs for the runtime's
golden test), `images/` (with `--images DIR`: real pictures named
`<label>.jpg|png` for its zero-shot check) and `manifest.toml` into `--out`
(default `$ANYTIME_EDGE_ASSETS/models/<name>/`).

How: torch and open_clip only load the checkpoint and compute the reference
outputs. The ONNX graphs are built from the state dict by `onnx_graph.py`, the
same builder as the tiny fixture's, so a real model uses exactly the ops the
tiny model proves on tract and onnxruntime, independently of torch's ONNX
exporter. Then the script checks that the split model equals open_clip's own
forward: onnxruntime trunk + the numpy last block (`clip_numpy.py`) against
`encode_image`, the ONNX text tower against `encode_text` (max abs difference
of the L2-normalised embeddings below 1e-4), the trunk tokens against the input
of the last resblock, and the tokenizer against open_clip's.

Only the plain CLIP structure is accepted (class-token pooling, pre-LN blocks
with QuickGELU, no layer scale, argmax text pooling); anything else is refused
with the reason, rather than exported wrong. OpenCLIP's LAION checkpoints of
ViT-B-32 use GELU, not QuickGELU: they are refused.
"""

import argparse
import gzip
import json
import os
import shutil
import sys
from collections import OrderedDict

import numpy as np
import onnx
import onnxruntime as ort

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import clip_numpy as cn  # noqa: E402
import clip_tokenizer as ct  # noqa: E402
import fixture_io as fio  # noqa: E402
import onnx_graph as og  # noqa: E402

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
TOL = 1e-4
CHECK_TEXTS = [
    "a photo of a cat.",
    "a photo of a dog.",
    "a photo of a hot dog.",
    "a photo of a Golden Retriever, 2 years old!",
]
MODEL_FILES = ["visual_trunk.onnx", "last_block.safetensors", "textual.onnx", "tokenizer.json"]
REFERENCE = "reference.safetensors"
IMAGES = "images"
IMAGE_EXTS = (".jpg", ".jpeg", ".png")
# Labels prompted in reference.safetensors when no --images are given.
DEFAULT_LABELS = ["airplane", "bird", "car", "cat", "dog"]
# Texts checked beyond the label prompts: capitals, punctuation, non-ASCII, and one
# longer than any CLIP context (truncated to `<SOT> ... <EOT>`).
EXTRA_TEXTS = [
    "a photo of a Golden Retriever, 2 years old!",
    "une crème brûlée, s'il vous plaît",
    " ".join(["a very long caption that keeps going"] * 12),
]


class Refused(SystemExit):
    pass


def refuse(msg):
    raise Refused(f"cannot export: {msg}")


def check_block(block, where):
    """Refuses a resblock that is not CLIP's plain pre-LN QuickGELU block."""
    import torch

    mha = getattr(block, "attn", None)
    if not isinstance(mha, torch.nn.MultiheadAttention) or mha.in_proj_weight is None:
        refuse(f"{where}: attention is not an nn.MultiheadAttention with a packed in_proj")
    if mha.in_proj_bias is None or mha.out_proj.bias is None:
        refuse(f"{where}: attention without biases")
    act = type(getattr(block.mlp, "gelu", None)).__name__
    if act != "QuickGELU":
        refuse(f"{where}: MLP activation is {act}, the layout requires QuickGELU "
               "(use an OpenAI checkpoint or a '-quickgelu' model)")
    for name in ("ls_1", "ls_2", "ln_attn"):
        mod = getattr(block, name, None)
        if mod is not None and not isinstance(mod, torch.nn.Identity):
            refuse(f"{where}: has {name} ({type(mod).__name__})")
    if not isinstance(getattr(block.mlp, "ln", torch.nn.Identity()), torch.nn.Identity):
        refuse(f"{where}: has an inner MLP LayerNorm")
    for ln in (block.ln_1, block.ln_2):
        if abs(ln.eps - cn.LN_EPS) > 1e-12:
            refuse(f"{where}: LayerNorm eps {ln.eps}, the layout requires {cn.LN_EPS}")


def read_dims(model):
    """The `[dims]` of the manifest, read from the model, after structure checks."""
    import torch

    if type(model).__name__ != "CLIP":
        refuse(f"model class {type(model).__name__}; only open_clip's plain CLIP is supported")
    v = model.visual
    if type(v).__name__ != "VisionTransformer":
        refuse(f"visual tower {type(v).__name__} is not a VisionTransformer")
    if getattr(v, "attn_pool", None) is not None or getattr(v, "global_average_pool", False):
        refuse("visual tower pools with attention or by average, not the class token")
    if getattr(v, "pool_type", "tok") != "tok" or v.proj is None:
        refuse("visual tower does not pool the class token through `proj`")
    if isinstance(v.ln_pre, torch.nn.Identity) or v.conv1.bias is not None:
        refuse("visual tower without ln_pre or with a patch-embedding bias")
    if getattr(model, "text_pool_type", "argmax") != "argmax":
        refuse(f"text pooling is {model.text_pool_type}, not argmax (end-of-text)")
    if not isinstance(model.text_projection, torch.nn.Parameter):
        refuse("text_projection is not a plain matrix")
    if getattr(model, "attn_mask", None) is None:
        refuse("text tower has no causal mask")
    vis_blocks, txt_blocks = v.transformer.resblocks, model.transformer.resblocks
    for i, b in enumerate(vis_blocks):
        check_block(b, f"visual block {i}")
    for i, b in enumerate(txt_blocks):
        check_block(b, f"text block {i}")
    for ln in (v.ln_pre, v.ln_post, model.ln_final):
        if abs(ln.eps - cn.LN_EPS) > 1e-12:
            refuse(f"LayerNorm eps {ln.eps}")
    kh, kw = v.conv1.kernel_size
    if kh != kw or tuple(v.conv1.stride) != (kh, kw):
        refuse("patch embedding is not a square, non-overlapping convolution")
    n = v.positional_embedding.shape[0]
    grid = int(round((n - 1) ** 0.5))
    if grid * grid + 1 != n:
        refuse(f"{n} visual positions is not a square grid plus the class token")
    ctx = model.positional_embedding.shape[0]
    vocab = model.token_embedding.num_embeddings
    if vocab * ctx >= 2**24:
        refuse("vocab * context too large for the exact float end-of-text search")
    return OrderedDict(
        width=v.conv1.out_channels,
        heads=vis_blocks[0].attn.num_heads,
        layers=len(vis_blocks),
        patch=kh,
        image_size=grid * kh,
        mlp=vis_blocks[0].mlp.c_fc.out_features,
        embed_dim=v.proj.shape[1],
        context_length=ctx,
        vocab_size=vocab,
        text_width=model.ln_final.weight.shape[0],
        text_heads=txt_blocks[0].attn.num_heads,
        text_layers=len(txt_blocks),
    )


def openclip_merges():
    """The merges of open_clip's bundled CLIP BPE, as `SimpleTokenizer` reads them."""
    from open_clip.tokenizer import default_bpe

    lines = gzip.open(default_bpe()).read().decode("utf-8").split("\n")
    return [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]


def write_tokenizer(out_path, hf_tokenizer, vocab_size):
    if hf_tokenizer:
        shutil.copyfile(hf_tokenizer, out_path)
        return
    if vocab_size != 49408:
        refuse(f"vocab size {vocab_size} is not CLIP's BPE; pass --hf-tokenizer")
    ct.write_tokenizer(out_path, openclip_merges())


def session(path):
    opts = ort.SessionOptions()
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def report(name, got, want, tol=TOL):
    diff = float(np.max(np.abs(np.asarray(got, np.float64) - np.asarray(want, np.float64))))
    ok = diff < tol
    print(f"  {'ok' if ok else 'FAILED':6} {name}: max |diff| = {diff:.3g} (tolerance {tol:g})")
    return ok


def fixed_pixels(s):
    """The seeded normal pixels `[2, 3, S, S]` of the checks and of reference.safetensors."""
    return np.random.default_rng(0).standard_normal((2, 3, s, s)).astype(np.float32)


def verify(model, open_clip, model_name, out, dims, sd):
    """Split model vs open_clip's forward; returns True when everything agrees."""
    import torch

    ok = True
    pixels = fixed_pixels(dims["image_size"])
    captured = {}
    last = model.visual.transformer.resblocks[-1]
    hook = last.register_forward_pre_hook(lambda mod, args: captured.setdefault("x", args[0]))
    with torch.no_grad():
        ref_img = model.encode_image(torch.from_numpy(pixels)).float().numpy()
    hook.remove()
    ref_tokens = captured["x"].float().numpy()
    if ref_tokens.shape[0] != 2:  # sequence-first blocks: [N, B, D]
        ref_tokens = ref_tokens.transpose(1, 0, 2)

    trunk = session(os.path.join(out, "visual_trunk.onnx"))
    tokens = trunk.run(["tokens"], {"pixels": pixels})[0]
    scale = float(np.abs(ref_tokens).max())
    ok &= report("trunk tokens vs open_clip (relative to max |token|)",
                 tokens / scale, ref_tokens / scale)
    one = trunk.run(["tokens"], {"pixels": pixels[:1]})[0]
    ok &= report("trunk batch 1 vs batch 2 (relative)", one[0] / scale, tokens[0] / scale)
    block = fio.read_safetensors(os.path.join(out, "last_block.safetensors"))
    emb = cn.last_block_embed(tokens, block, dims["heads"])
    ok &= report("trunk + numpy last block vs encode_image (normalised)",
                 cn.l2_normalise(emb), cn.l2_normalise(ref_img))

    tokenizer = open_clip.get_tokenizer(model_name)
    ref_ids = tokenizer(CHECK_TEXTS).numpy().astype(np.int64)
    try:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(os.path.join(out, "tokenizer.json"))
        ids = np.array([ct.encode_clip(tok, t, dims["context_length"]) for t in CHECK_TEXTS])
        same = np.array_equal(ids, ref_ids)
        print(f"  {'ok' if same else 'FAILED':6} tokenizer.json ids equal open_clip's")
        ok &= same
    except ImportError:
        print("  skip   tokenizer.json check: the `tokenizers` package is not installed")
    with torch.no_grad():
        ref_txt = model.encode_text(torch.from_numpy(ref_ids)).float().numpy()
    text = session(os.path.join(out, "textual.onnx"))
    txt = text.run(["text_embeds"], {"input_ids": ref_ids})[0]
    ok &= report("textual.onnx vs encode_text (normalised)",
                 cn.l2_normalise(txt), cn.l2_normalise(ref_txt))
    ok &= report("numpy text tower vs encode_text (normalised)",
                 cn.l2_normalise(cn.text_embed(ref_ids, sd, dims)), cn.l2_normalise(ref_txt))
    return bool(ok)


def picture_label(stem):
    """The label of a picture named `<label>` or `<label>_<n>` (several of one label)."""
    base, sep, num = stem.rpartition("_")
    return base if sep and num.isdigit() and base else stem


def find_images(folder, min_labels=2):
    """`(label, path)` of the pictures `<label>[_<n>].<jpg|jpeg|png>` in `folder`, by file
    name; refused with fewer than `min_labels` labels."""
    found = []
    for entry in sorted(os.listdir(folder)):
        path = os.path.join(folder, entry)
        stem, ext = os.path.splitext(entry)
        if not os.path.isfile(path) or ext.lower() not in IMAGE_EXTS:
            continue
        label = picture_label(stem)
        if not label.strip() or label != label.strip():
            refuse(f"--images: {entry!r}: the label (file stem) is empty or has outer spaces")
        found.append((label, path))
    if len({label for label, _ in found}) < min_labels:
        refuse(f"--images {folder}: needs pictures of at least {min_labels} labels, named "
               f"<label>[_<n>]{IMAGE_EXTS}")
    return found


def write_reference(model, open_clip, model_name, out, dims, weights, images, checked=None,
                    learn=None):
    """Writes reference.safetensors (fixed inputs and open_clip's outputs) and copies
    `images` (from `find_images`) to `<out>/images/`, and `learn` (more of them) to
    `<out>/images/learn/`; returns the written files' names, relative to `out`. Each
    picture whose label is in `checked` (default: every label) must be ranked first."""
    import torch
    from PIL import Image
    from safetensors.numpy import save_file

    labels = sorted({label for label, _ in images}) or DEFAULT_LABELS
    checked = set(labels if checked is None else checked)
    texts = [f"a photo of a {label}." for label in labels] + EXTRA_TEXTS
    pixels = fixed_pixels(dims["image_size"])
    input_ids = open_clip.get_tokenizer(model_name)(texts).numpy().astype(np.int64)
    with torch.no_grad():
        image_embeds = model.encode_image(torch.from_numpy(pixels)).float().numpy()
        text_embeds = model.encode_text(torch.from_numpy(input_ids)).float().numpy()
    tensors = {"pixels": pixels, "image_embeds": image_embeds,
               "input_ids": input_ids, "text_embeds": text_embeds}
    written = [REFERENCE]
    folder = os.path.join(out, IMAGES)
    if os.path.isdir(folder):
        shutil.rmtree(folder)  # no stale pictures from an earlier export
    names = []
    if images:
        from open_clip.transform import PreprocessCfg, image_transform_v2

        cfg = PreprocessCfg(**open_clip.get_model_preprocess_cfg(model))
        if cfg.resize_mode != "shortest" or cfg.interpolation != "bicubic":
            print(f"  note   open_clip preprocesses with resize_mode={cfg.resize_mode}, "
                  f"interpolation={cfg.interpolation}; the runtime resizes the shortest "
                  "side, bicubic")
        preprocess = image_transform_v2(cfg, is_train=False)
        os.makedirs(folder)
        batch = []
        for _, path in images:
            name = os.path.basename(path)
            shutil.copyfile(path, os.path.join(folder, name))
            names.append(name)
            written.append(f"{IMAGES}/{name}")
            with Image.open(path) as img:
                batch.append(preprocess(img.convert("RGB")).numpy())
        image_pixels = np.stack(batch).astype(np.float32)
        with torch.no_grad():
            emb = model.encode_image(torch.from_numpy(image_pixels)).float().numpy()
        tensors["image_pixels"] = image_pixels
        tensors["image_pixels_embeds"] = emb
        # open_clip's own zero-shot on its own preprocessing, over the picture labels.
        cos = cn.l2_normalise(emb) @ cn.l2_normalise(text_embeds[: len(labels)]).T
        wrong = [(names[i], labels[j]) for i, j in enumerate(cos.argmax(1))
                 if labels[j] != images[i][0] and images[i][0] in checked]
        for name, label in wrong:
            print(f"  {'note' if weights == 'random-init' else 'FAILED':6} open_clip ranks "
                  f"{label!r} first for {name}")
        if wrong and weights != "random-init":
            raise SystemExit("open_clip itself misclassifies a reference picture: use a "
                             "clearer one; manifest not written")
        if not wrong:
            print(f"  ok     open_clip ranks the own label first for each of the "
                  f"{sum(label in checked for label, _ in images)} pictures of "
                  f"{sorted(checked)}")
        for path in learn or []:
            os.makedirs(os.path.join(folder, "learn"), exist_ok=True)
            name = os.path.basename(path)
            shutil.copyfile(path, os.path.join(folder, "learn", name))
            written.append(f"{IMAGES}/learn/{name}")
    metadata = {
        "model": model_name,
        "weights": weights,
        "texts": json.dumps(texts, ensure_ascii=False),
        "labels": json.dumps(labels, ensure_ascii=False),
        "images": json.dumps(names, ensure_ascii=False),
        "image_labels": json.dumps([label for label, _ in images], ensure_ascii=False),
        "zero_shot_labels": json.dumps(sorted(checked), ensure_ascii=False),
        "logit_scale": repr(float(model.logit_scale.detach().exp())),
    }
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()},
              os.path.join(out, REFERENCE), metadata=metadata)
    return written


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="ViT-B-32", help="open_clip model name")
    p.add_argument("--pretrained", default="openai", help="open_clip pretrained tag")
    p.add_argument("--checkpoint", help="local checkpoint file (instead of --pretrained)")
    p.add_argument("--random-init", action="store_true",
                   help="no weights at all, open_clip's random init (to test this script offline)")
    p.add_argument("--hf-tokenizer", help="a Hugging Face tokenizer.json to copy "
                   "(default: built from open_clip's CLIP BPE)")
    p.add_argument("--name", help="model folder name (default: <model>-<pretrained>)")
    p.add_argument("--licence", help="licence of the weights (default: MIT for openai)")
    p.add_argument("--out", help="output folder (default: $ANYTIME_EDGE_ASSETS/models/<name>)")
    p.add_argument("--images", metavar="DIR",
                   help="a folder of a few real pictures named <label>[_<n>].jpg|png, copied "
                   "to <out>/images/ for the runtime's zero-shot check (each must be ranked "
                   "first among all the labels by open_clip, see --zero-shot-labels); "
                   "pictures in DIR/learn/ are copied to <out>/images/learn/ as they are")
    p.add_argument("--zero-shot-labels", metavar="L1,L2,...",
                   help="only pictures of these labels must be ranked first (default: all; "
                   "a model trained without some labels cannot name them)")
    p.add_argument("--learner-lr", type=float,
                   help="the learner's learning rate for this model ([learner] lr)")
    p.add_argument("--model-config", metavar="JSON",
                   help="an open_clip model configuration file; --model is its file stem")
    args = p.parse_args()
    images = find_images(args.images) if args.images else []
    learn = []
    if args.images and os.path.isdir(os.path.join(args.images, "learn")):
        learn = [path for _, path in find_images(os.path.join(args.images, "learn"), 1)]
    checked = args.zero_shot_labels.split(",") if args.zero_shot_labels else None

    import open_clip
    import torch

    if args.model_config:
        open_clip.add_model_config(args.model_config)
    tag = None if args.random_init else args.checkpoint or args.pretrained
    kind = "random" if args.random_init else "local" if args.checkpoint else args.pretrained
    name = args.name or f"{args.model}-{kind}".lower()
    licence = args.licence
    if licence is None and args.random_init:
        licence = "MIT OR Apache-2.0 (random weights)"
    elif licence is None:
        if args.checkpoint or args.pretrained != "openai":
            p.error("--licence is required for weights other than OpenAI's")
        licence = "MIT (OpenAI CLIP weights, github.com/openai/CLIP)"
    out = args.out
    if out is None:
        root = os.environ.get("ANYTIME_EDGE_ASSETS")
        if not root:
            p.error("give --out or set ANYTIME_EDGE_ASSETS")
        out = os.path.join(root, "models", name)
    os.makedirs(out, exist_ok=True)

    torch.manual_seed(0)  # --random-init: the same weights from run to run
    model = open_clip.create_model(args.model, pretrained=tag, device="cpu", precision="fp32")
    model.eval()
    if args.random_init:
        # open_clip's init leaves biases at 0 and LayerNorms at identity: perturb every
        # parameter so that the checks below exercise all of them.
        with torch.no_grad():
            gen = torch.Generator().manual_seed(0)
            for prm in model.parameters():
                prm.add_(0.02 * torch.randn(prm.shape, generator=gen))
    dims = read_dims(model)
    print(f"{args.model} / {tag}: {dict(dims)}")
    sd = {k: v.detach().float().cpu().numpy() for k, v in model.state_dict().items()}

    onnx.save(og.visual_trunk_model(sd, dims), os.path.join(out, "visual_trunk.onnx"))
    onnx.save(og.textual_model(sd, dims), os.path.join(out, "textual.onnx"))
    block = cn.last_block_tensors(sd, dims["layers"])
    fio.write_safetensors(os.path.join(out, "last_block.safetensors"), block,
                          metadata={"source": f"{args.model}/{tag}"})
    write_tokenizer(os.path.join(out, "tokenizer.json"), args.hf_tokenizer, dims["vocab_size"])

    print("checks:")
    torch.manual_seed(0)
    if not verify(model, open_clip, args.model, out, dims, sd):
        raise SystemExit("the split model does not equal open_clip's; manifest not written")

    weights = "random-init" if args.random_init else "checkpoint" if args.checkpoint \
        else f"pretrained:{args.pretrained}"
    extra = write_reference(model, open_clip, args.model, out, dims, weights, images, checked,
                            learn)

    v = model.visual
    mean = tuple(getattr(v, "image_mean", None) or OPENAI_MEAN)
    std = tuple(getattr(v, "image_std", None) or OPENAI_STD)
    files = OrderedDict((f, fio.sha256(os.path.join(out, f))) for f in MODEL_FILES + extra)
    version = getattr(open_clip, "__version__", "?")
    source = f"open_clip {version}: create_model({args.model!r}, pretrained={tag!r}); " \
             "exported by models/export_open_clip.py"
    fio.write_manifest(os.path.join(out, "manifest.toml"), name, source, licence, dims,
                       mean, std, files,
                       comments=["Written by models/export_open_clip.py. Layout: models/README.md."],
                       learner={"lr": args.learner_lr} if args.learner_lr else None)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
