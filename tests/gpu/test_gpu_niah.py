#!/usr/bin/env python3
"""NIAH on the CUDA backend: `mtok niah --device cuda` on the planted needle model (docs/NEEDLE.md)
over 1K..64K tokens x 11 depths (0, 10, .., 100 %), 77 cells, each prefilled on its own (4K-token
chunks) and answered by greedy decoding: every cell must score 1.0, as it does on the CPU backend
(tests/test_niah.py). The needle model reads its fact only through attention over the whole prompt,
so a wrong causal mask, a lost KV page or an unstable softmax at 64K shows as a score below 1.

Exit 77 without a usable CUDA device (`mtok info`). --shim runs mtok_shim (the CPU-executed kernels)
on one cell, 1K at 50 %: the same path at a size the shim runs in a minute or two."""
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpulib import Tally, args, run, skip_unless_device  # noqa: E402

a = args()
T = Tally("test_gpu_niah")
if not a.shim:
    skip_unless_device(a.mtok)
lengths, depths, cells = ("1K", "50", 1) if a.shim else ("1K,2K,4K,8K,16K,32K,64K", "0:100:11", 77)

with tempfile.TemporaryDirectory(prefix="mtok-gpu-niah-") as tmp:
    model, out = os.path.join(tmp, "needle"), os.path.join(tmp, "grid")
    r = run(a.mtok, "synth", "--preset", "needle", "--out", model, "-q")
    if T.check(r.returncode == 0, f"synth needle (rc {r.returncode}: {r.stderr[-300:]})"):
        r = run(a.mtok, "niah", "-m", model, "--device", "cuda", "--lengths", lengths, "--depths", depths, "--out", out,
                "--chunk", "4096", "--no-progress", timeout=1800)
        T.check(r.returncode == 0, f"niah --device cuda --lengths {lengths} --depths {depths} (rc {r.returncode}: "
                                   f"{r.stderr.strip()[-400:]})")
        print(r.stdout.strip()[-600:])
        rows = []
        path = os.path.join(out, "results.jsonl")
        if os.path.exists(path):
            for line in open(path):
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    T.check(False, f"results.jsonl line is not JSON: {line[:80]!r}")
        low = [(o.get("length"), o.get("depth"), o.get("score")) for o in rows if o.get("score") != 1.0]
        T.check(len(rows) == cells, f"{len(rows)} cells in results.jsonl (want {cells})")
        T.check(rows and not low, f"every cell scores 1.0 (below: {low[:8]})")
        secs = sum(o.get("seconds", 0) for o in rows)
        print(f"{len(rows)} cells in {secs:.1f} s of cell time")
T.done()
