#!/usr/bin/env python3
"""Which of an aarch64 binary's hot loops are NEON-vectorised: per function, the
floating-point instructions on 128-bit vectors (`fmla v0.4s, ...`) and on scalars
(`fmadd s0, ...`), from `aarch64-linux-gnu-objdump -d`. A loop the compiler vectorised
shows vector instructions (scalar ones remain for tails and reductions); one it did not
shows scalar ones only.

    python3 host/bench/neon_census.py BINARY [SUBSTRING ...]

Lists the functions whose demangled name contains a SUBSTRING (default: this project's
crates and matrixmultiply's kernels), tests left out, most vector instructions first.
"""

import re
import subprocess
import sys

VECTOR = re.compile(
    r"\bf(?:mla|mls|mul|add|sub|div|sqrt|max|min|maxnm|minnm|neg|abs|cvtl2?|cvtn2?)\s+v\d+\.[24][sd]\b"
)
SCALAR = re.compile(
    r"\bf(?:madd|msub|nmadd|mla|mul|add|sub|div|sqrt|max|min|maxnm|minnm|neg|abs|cvt)\s+[sd]\d+\b"
)
HEADER = re.compile(r"^[0-9a-f]+ <(.*)>:$")
DEFAULT = ["anytime_", "matrixmultiply::sgemm_kernel"]


def census(binary):
    out = subprocess.run(
        ["aarch64-linux-gnu-objdump", "-d", "-C", "--no-show-raw-insn", binary],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    counts, name = {}, None
    for line in out.splitlines():
        m = HEADER.match(line)
        if m:
            name = m.group(1)
            continue
        if name is None:
            continue
        v, s = bool(VECTOR.search(line)), bool(SCALAR.search(line))
        if v or s:
            c = counts.setdefault(name, [0, 0])
            c[0] += v
            c[1] += s
    return counts


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    wanted = sys.argv[2:] or DEFAULT
    rows = [
        (v, s, n)
        for n, (v, s) in census(sys.argv[1]).items()
        if any(w in n for w in wanted) and "tests::" not in n
    ]
    print(f"{'vector':>7} {'scalar':>7}  function")
    for v, s, n in sorted(rows, key=lambda r: (-r[0], -r[1])):
        print(f"{v:>7} {s:>7}  {n[:160]}")


if __name__ == "__main__":
    main()
