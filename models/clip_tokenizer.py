"""CLIP-structured byte-level BPE tokenizers in the Hugging Face `tokenizer.json` format.

The vocabulary is laid out as CLIP lays it out: the 256 byte symbols (in the
order of the byte-to-unicode table), the same 256 with the end-of-word suffix
`</w>`, one token per merge in merge order, then `<|startoftext|>` and
`<|endoftext|>` as the last two ids (so end-of-text is the largest id).

The normaliser, pre-tokeniser, post-processor and decoder mirror the published
CLIP `tokenizer.json` (NFC, whitespace squeeze, lower case; CLIP's split regex
then byte-level; `<|startoftext|> ... <|endoftext|>`).
"""

import json
from collections import Counter

SOT = "<|startoftext|>"
EOT = "<|endoftext|>"
EOW = "</w>"

# CLIP's word-splitting pattern (kept identical: the Rust side runs it through fancy-regex).
CLIP_SPLIT = (
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"
)


def bytes_to_unicode():
    """The byte -> printable character table of GPT-2/CLIP, in vocabulary order."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def word_symbols(word):
    """A word as byte symbols, the last one carrying `</w>`."""
    table = bytes_to_unicode()
    chars = [table[b] for b in word.encode("utf-8")]
    chars[-1] += EOW
    return tuple(chars)


def learn_merges(word_counts, num_merges):
    """Greedy BPE: repeatedly merges the most frequent adjacent pair.

    Ties go to the lexicographically smallest pair, so the result depends only
    on the input. Stops early when no pair is left.
    """
    words = {word_symbols(w): c for w, c in sorted(word_counts.items())}
    merges = []
    while len(merges) < num_merges:
        pairs = Counter()
        for syms, c in words.items():
            for a, b in zip(syms, syms[1:]):
                pairs[(a, b)] += c
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        merged = {}
        for syms, c in words.items():
            out, i = [], 0
            while i < len(syms):
                if i + 1 < len(syms) and (syms[i], syms[i + 1]) == best:
                    out.append(syms[i] + syms[i + 1])
                    i += 2
                else:
                    out.append(syms[i])
                    i += 1
            merged[tuple(out)] = merged.get(tuple(out), 0) + c
        words = merged
    return merges


def clip_vocab(merges):
    """Token -> id in CLIP's order; a merge whose result already exists adds no id."""
    symbols = list(bytes_to_unicode().values())
    vocab = {}
    for tok in symbols + [s + EOW for s in symbols] + ["".join(m) for m in merges]:
        vocab.setdefault(tok, len(vocab))
    vocab[SOT] = len(vocab)
    vocab[EOT] = len(vocab)
    return vocab


def tokenizer_dict(merges):
    """The complete `tokenizer.json` content for a CLIP BPE with these merges."""
    vocab = clip_vocab(merges)
    sot, eot = vocab[SOT], vocab[EOT]

    def added(tok_id, content, normalized):
        return {
            "id": tok_id,
            "content": content,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": normalized,
            "special": True,
        }

    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [added(sot, SOT, True), added(eot, EOT, False)],
        "normalizer": {
            "type": "Sequence",
            "normalizers": [
                {"type": "NFC"},
                {"type": "Replace", "pattern": {"Regex": r"\s+"}, "content": " "},
                {"type": "Lowercase"},
            ],
        },
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {
                    "type": "Split",
                    "pattern": {"Regex": CLIP_SPLIT},
                    "behavior": "Removed",
                    "invert": True,
                },
                {
                    "type": "ByteLevel",
                    "add_prefix_space": False,
                    "trim_offsets": True,
                    "use_regex": True,
                },
            ],
        },
        "post_processor": {
            "type": "RobertaProcessing",
            "sep": [EOT, eot],
            "cls": [SOT, sot],
            "trim_offsets": False,
            "add_prefix_space": False,
        },
        "decoder": {
            "type": "ByteLevel",
            "add_prefix_space": True,
            "trim_offsets": True,
            "use_regex": True,
        },
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": EOT,
            "continuing_subword_prefix": "",
            "end_of_word_suffix": EOW,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": [list(m) for m in merges],
        },
    }


def write_tokenizer(path, merges):
    """Writes `tokenizer.json` (UTF-8, stable key order, one trailing newline)."""
    text = json.dumps(tokenizer_dict(merges), ensure_ascii=False, indent=1)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(text + "\n")


def read_merges_txt(path):
    """Merges from a `merges.txt` (`#version` header line, then `a b` per line)."""
    merges = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line or line.startswith("#version"):
                continue
            a, b = line.split(" ")
            merges.append((a, b))
    return merges


def encode_clip(tok, text, context):
    """Ids with SOT/EOT, truncated as OpenCLIP does (the last kept id becomes EOT),
    padded with 0 to `context`. `tok` is a `tokenizers.Tokenizer`."""
    ids = tok.encode(text).ids
    if len(ids) > context:
        ids = ids[:context]
        ids[-1] = tok.token_to_id(EOT)
    return ids + [0] * (context - len(ids))
