#!/usr/bin/env python3
"""`mtok eval --score PREDS.jsonl` (no model): RULER's string_match_all / string_match_part and
SQuAD-style exact match / token F1 on hand-made predictions with case, punctuation, articles,
repeated tokens, several references and empty predictions, against this script's own
implementation of the published definitions (docs/EVAL.md §1.4, §2)."""
import json
import os
import re
import string
import subprocess
import sys
import tempfile
from collections import Counter

from harness import args

a = args()
tmp = tempfile.mkdtemp(prefix="mtok-evalmetrics-")
fails = []


def norm(s):
    s = "".join(ch for ch in s.lower() if ch not in set(string.punctuation))
    return re.sub(r"\b(a|an|the)\b", " ", s).split()


def f1(p, refs):
    best = 0.0
    for r in refs:
        a_, b = norm(p), norm(r)
        c = sum((Counter(a_) & Counter(b)).values())
        if c:
            pr, rc = c / len(a_), c / len(b)
            best = max(best, 2 * pr * rc / (pr + rc))
    return best


def pre(p):  # RULER: control characters become newlines
    return "".join("\n" if ord(c) < 0x20 else c for c in p).strip()


ruler = [("The magic numbers are 1234567 and 7654321.", ["1234567", "7654321"]),
         ("only 1234567", ["1234567", "7654321", "1111111"]),
         ("", ["42"]),
         ("ANSWER: Quiet-Harbor", ["quiet-harbor"]),
         ("nothing here", ["9999999"])]
qa = [("The Eiffel Tower", ["Eiffel Tower", "the tower"]),
      ("in Paris, France.", ["Paris"]),
      ("a a a dog dog cat", ["the dog and a cat", "dog"]),
      ("Mount Everest!", ["mount everest"]),
      ("   ", ["x"])]
files = {}
for name, rows, key in (("niah_multikey_1", ruler, "outputs"), ("qa_2", ruler[:3], "outputs"), ("lb", qa, "answers")):
    path = os.path.join(tmp, name + ".jsonl")
    with open(path, "w") as f:
        for i, (p, refs) in enumerate(rows):
            rec = {"index": i, key: refs, "pred": p}
            if key == "answers":
                rec["dataset"] = "hotpotqa"
            f.write(json.dumps(rec) + "\n")
    files[name] = (path, rows)
for name, (path, rows) in files.items():
    r = subprocess.run([a.mtok, "eval", "--score", path], capture_output=True, text=True)
    if r.returncode != 0:
        fails.append(f"{name}: exit {r.returncode}: {r.stderr}")
        continue
    got = [json.loads(l[6:]) for l in r.stdout.splitlines() if l.startswith("score {")]
    if len(got) != 1:
        fails.append(f"{name}: score lines {r.stdout}")
        continue
    g = got[0]
    n = len(rows)
    want = {
        "string_match_all": 100 * sum(sum(x.lower() in pre(p).lower() for x in refs) / len(refs) for p, refs in rows) / n,
        "string_match_part": 100 * sum(max(x.lower() in pre(p).lower() for x in refs) for p, refs in rows) / n,
        "exact_match": 100 * sum(max(norm(pre(p)) == norm(x) for x in refs) for p, refs in rows) / n,
        "token_f1": 100 * sum(f1(pre(p), refs) for p, refs in rows) / n,
    }
    for k, v in want.items():
        if abs(g[k] - v) > 1e-6:
            fails.append(f"{name}: {k} mtok {g[k]} != {v}")
    # a LongBench dataset (hotpotqa) is scored with its own metric, named as LongBench's metrics.py names it
    metric = {"niah_multikey_1": "all", "qa_2": "part", "lb": "qa_f1_score"}[name]
    if g["metric"] != metric:
        fails.append(f"{name}: metric {g['metric']} != {metric}")
    if name == "niah_multikey_1" and g["nulls"] != 1:
        fails.append(f"{name}: nulls {g['nulls']}")
# a record without pred is bad input (exit 2)
bad = os.path.join(tmp, "bad.jsonl")
open(bad, "w").write('{"index": 0, "outputs": ["x"]}\n')
r = subprocess.run([a.mtok, "eval", "--score", bad], capture_output=True, text=True)
if r.returncode != 2:
    fails.append(f"missing pred: exit {r.returncode}")
for f in fails:
    print("FAIL:", f)
print("FAILED" if fails else "all metric checks passed")
sys.exit(1 if fails else 0)
