"""Small deterministic writers shared by the model scripts: safetensors, PNG,
golden JSON, `manifest.toml` and sha256."""

import hashlib
import json
import struct
import zlib

import numpy as np


def write_safetensors(path, tensors, metadata=None):
    """Writes f32 tensors (a dict, kept in its order) in the safetensors format:
    u64 LE header length, a JSON header padded with spaces to 8 bytes, raw LE data."""
    header, blobs, offset = {}, [], 0
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    for name, arr in tensors.items():
        data = np.ascontiguousarray(arr, dtype="<f4").tobytes()
        header[name] = {
            "dtype": "F32",
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        blobs.append(data)
        offset += len(data)
    head = json.dumps(header, separators=(",", ":")).encode("utf-8")
    head += b" " * (-len(head) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for b in blobs:
            f.write(b)


def read_safetensors(path):
    """Reads back what `write_safetensors` writes (F32 only), as a dict of arrays."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    body = raw[8 + n :]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] == "F32", f"{name}: dtype {info['dtype']}"
        a, b = info["data_offsets"]
        out[name] = np.frombuffer(body[a:b], dtype="<f4").reshape(info["shape"])
    return out


def write_png(path, rgb):
    """Writes an 8-bit RGB PNG (`rgb` u8 `[H, W, 3]`), unfiltered rows, zlib level 9."""
    h, w, _ = rgb.shape
    rows = b"".join(b"\x00" + rgb[y].astype(np.uint8).tobytes() for y in range(h))

    def chunk(kind, data):
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.write(chunk(b"IHDR", ihdr))
        f.write(chunk(b"IDAT", zlib.compress(rows, 9)))
        f.write(chunk(b"IEND", b""))


def _number(v):
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    f = np.float32(v)
    assert np.isfinite(f), "non-finite value in a golden array"
    return str(f)  # numpy's shortest text that reads back as the same f32


def write_golden(path, fields):
    """Writes a JSON object with one key per line; arrays are flat, on one line.

    `fields` is a list of (key, value): value is a string list, a shape (list of
    ints) or a numpy array (written flat, f32 shortest form, ints as ints).
    """
    lines = []
    for key, value in fields:
        if isinstance(value, np.ndarray):
            text = "[" + ",".join(_number(v) for v in value.ravel()) + "]"
        else:
            text = json.dumps(value, ensure_ascii=False)
        lines.append(f"  {json.dumps(key)}: {text}")
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("{\n" + ",\n".join(lines) + "\n}\n")


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 16), b""):
            h.update(block)
    return h.hexdigest()


def _toml_str(s):
    return json.dumps(s, ensure_ascii=False)  # a JSON string is a valid TOML basic string


def write_manifest(path, name, source, licence, dims, mean, std, files, comments=(),
                   learner=None):
    """Writes `manifest.toml`; `files` maps a file name (relative to the model
    folder) to its sha256 hex; `dims` is an ordered dict of integers; `learner` an
    optional dict of the `[learner]` settings (floats)."""
    out = [f"# {c}" for c in comments]
    out += [f"name = {_toml_str(name)}", f"source = {_toml_str(source)}",
            f"licence = {_toml_str(licence)}", "", "[dims]"]
    out += [f"{k} = {int(v)}" for k, v in dims.items()]
    out += ["", "[preprocess]",
            "mean = [" + ", ".join(repr(float(m)) for m in mean) + "]",
            "std = [" + ", ".join(repr(float(s)) for s in std) + "]", ""]
    if learner:
        out += ["[learner]"] + [f"{k} = {float(v)!r}" for k, v in learner.items()] + [""]
    out += ["[files]"]
    out += [f"{_toml_str(k)} = {_toml_str(v)}" for k, v in files.items()]
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("\n".join(out) + "\n")
