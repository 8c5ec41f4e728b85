#!/usr/bin/env python3
"""`mtok tokenize` against the tiktoken goldens (tests/data/tok/goldens.jsonl, made by
tests/ref/make_tok_fixtures.py with tiktoken and a custom GLM-4-pattern rank file): the command line
must print exactly the golden ids, as one JSON array, for both tokenizer file formats."""
import json
import os
import shutil
import subprocess
import sys
import tempfile

from harness import args

a = args()
tokdir = os.path.join(a.src, "tests", "data", "tok")
goldens = [json.loads(l) for l in open(os.path.join(tokdir, "goldens.jsonl"), encoding="utf-8")]
tmp = tempfile.mkdtemp(prefix="mtok-tokcli-")
bad = 0
try:
    # one directory per format: mtok prefers tokenizer.model when both are present
    for fmt in ("tokenizer.model", "tokenizer.json"):
        d = os.path.join(tmp, fmt.replace(".", "_"))
        os.makedirs(d)
        shutil.copy(os.path.join(tokdir, fmt), d)
        for i, g in enumerate(goldens):
            f = os.path.join(tmp, f"text{i}.txt")
            with open(f, "w", encoding="utf-8", newline="") as fh:
                fh.write(g["text"])
            cmd = [a.mtok, "tokenize", "-m", d, "--text-file", f] + (["--special"] if g["special"] else [])
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
            got = json.loads(p.stdout) if p.returncode == 0 else None
            if got != g["ids"]:
                bad += 1
                print(f"FAIL {fmt} #{i} {g['text'][:40]!r}: rc={p.returncode} got {got} want {g['ids']} {p.stderr}")
    # --text gives the same as --text-file
    p = subprocess.run([a.mtok, "tokenize", "-m", os.path.join(tmp, "tokenizer_model"), "--text", goldens[0]["text"]],
                       capture_output=True, text=True)
    if json.loads(p.stdout) != goldens[0]["ids"]:
        bad += 1
        print("FAIL --text")
finally:
    shutil.rmtree(tmp, ignore_errors=True)
print(f"{2 * len(goldens) + 1 - bad} passed, {bad} failed")
sys.exit(1 if bad else 0)
