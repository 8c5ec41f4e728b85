#!/usr/bin/env python3
"""`mtok tokenize` on the SentencePiece fixture (tests/data/tok/spm, made by tests/ref/make_spm_fixtures.py)
against the `sentencepiece` package run now, on the fixture's test texts (English, Chinese, code, emoji, runs
of white space, special-token spellings, invalid UTF-8, NUL, empty) and on the committed goldens, so a stale
golden file and a library that disagrees with the package both show. Skips (77) without the package."""
import json
import os
import subprocess
import sys
import tempfile

from harness import args

a = args()
try:
    import sentencepiece
except ImportError:
    print("sentencepiece not installed: skipped")
    sys.exit(77)
sys.path.insert(0, os.path.join(a.src, "tests", "ref"))
from make_spm_fixtures import TEXTS  # noqa: E402

d = os.path.join(a.src, "tests", "data", "tok", "spm")
sp = sentencepiece.SentencePieceProcessor(model_file=os.path.join(d, "tokenizer.model"))
goldens = [json.loads(l) for l in open(os.path.join(d, "goldens.jsonl"), encoding="utf-8")]
golden_ids = {bytes.fromhex(g["text_hex"]): g["ids"] for g in goldens if "text_hex" in g}
bad = 0
with tempfile.TemporaryDirectory(prefix="mtok-spm-") as tmp:
    for i, t in enumerate(TEXTS):
        f = os.path.join(tmp, f"t{i}.txt")
        with open(f, "wb") as fh:
            fh.write(t)
        p = subprocess.run([a.mtok, "tokenize", "-m", d, "--text-file", f], capture_output=True, timeout=60)
        got = json.loads(p.stdout) if p.returncode == 0 else None
        want = sp.encode(t)
        ok = got == want and golden_ids.get(t) == want
        bad += not ok
        print(("ok  " if ok else "FAIL") + f" #{i} {t[:32]!r}: {len(want)} ids"
              + ("" if ok else f" got {got} want {want} golden {golden_ids.get(t)} {p.stderr.decode()[-200:]}"))
print(f"{len(TEXTS) - bad} of {len(TEXTS)} texts equal")
sys.exit(1 if bad else 0)
