#!/usr/bin/env python3
"""RULER- and LongBench-format jsonl round trip through `mtok eval`, with the needle model.

This script is the independent side: it writes the data files itself (RULER lines: index, input,
outputs, length, answer_prefix; LongBench lines: context, input, answers, dataset, _id), knows the
true answer of every sample (the value of the queried fact), and computes the scores mtok must
report with its own implementation of RULER's string_match_all / string_match_part and SQuAD-style
exact match / token F1. Some references are deliberately wrong or partial, so the expected scores
are not all 100. It also checks that the predictions file carries `pred` for every sample, that
--resume skips finished samples, and that questions sharing a LongBench context reuse its prefill.
"""
import json
import os
import random
import re
import string
import subprocess
import sys
import tempfile
from collections import Counter

from harness import args

a = args()
tmp = tempfile.mkdtemp(prefix="mtok-evalruler-")
model = os.path.join(tmp, "needle")
fails = []


def check(cond, msg):
    if not cond:
        fails.append(msg)
        print("FAIL:", msg)


def run(*args):
    r = subprocess.run([a.mtok, *args], capture_output=True, text=True, timeout=600)
    check(r.returncode == 0, f"mtok {' '.join(args[:3])}...: exit {r.returncode}: {r.stderr[-400:]}")
    return r


# ---- metrics, written from the RULER / SQuAD definitions ----
def sm_all(pred, refs):
    return sum(1.0 if r.lower() in pred.lower() else 0.0 for r in refs) / len(refs)


def sm_part(pred, refs):
    return max(1.0 if r.lower() in pred.lower() else 0.0 for r in refs)


def norm(s):
    s = "".join(ch for ch in s.lower() if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return s.split()


def em(pred, refs):
    return max(1.0 if norm(pred) == norm(r) else 0.0 for r in refs)


def f1(pred, refs):
    best = 0.0
    for r in refs:
        p, g = norm(pred), norm(r)
        common = sum((Counter(p) & Counter(g)).values())
        if common:
            pr, rc = common / len(p), common / len(g)
            best = max(best, 2 * pr * rc / (pr + rc))
    return best


def reported(stdout):
    return {json.loads(l[6:])["task"]: json.loads(l[6:]) for l in stdout.splitlines() if l.startswith("score {")}


run("synth", "--preset", "needle", "--out", model)
rng = random.Random(7)
words = ("the land was without form and void and darkness was upon the face of the deep "
         "and the spirit moved upon the face of the waters").split()


def haystack(n_sent, facts):
    """n_sent filler sentences with the fact tokens spliced in at the given sentence indexes."""
    out = []
    for i in range(n_sent):
        for at, k, v in facts:
            if at == i:
                out.append(f"<|fact:{k}:{v}|>")
        out.append(" " + " ".join(rng.choice(words) for _ in range(12)).capitalize() + ".")
    return "".join(out)


# ---- RULER: two tasks, one scored with string_match_all, one (qa_*) with string_match_part ----
truth = {}
expect = {}
for task in ("niah_single_1", "qa_1"):
    lines = []
    for i in range(6):
        k, v = rng.randrange(16), rng.randrange(64)
        d = rng.randrange(16, 64)
        while d == v:
            d = rng.randrange(16, 64)
        facts = [(rng.randrange(40), k, v)] + [(rng.randrange(40), (k + 1 + j) % 16, rng.randrange(64)) for j in range(3)]
        inp = "Some facts are hidden in the text below." + haystack(40, facts) + f"\n<|ask:{k}|>"
        right, wrong = f"<|val:{v}|>", f"<|val:{d}|>"
        outputs = [[right], [right, wrong], [wrong], [right.upper()], [wrong, right], [right]][i]
        lines.append({"index": i, "input": inp, "outputs": outputs, "length": 0, "answer_prefix": f"<|ask:{k}|>"})
        truth[(task, i)] = right
    path = os.path.join(tmp, task + ".jsonl")
    with open(path, "w") as f:
        for l in lines:
            f.write(json.dumps(l) + "\n")
    metric = sm_part if task.startswith("qa") else sm_all
    # the needle model answers every question right: the prediction contains the true value
    expect[task] = round(100 * sum(metric(truth[(task, l["index"])], l["outputs"]) for l in lines) / len(lines), 2)

    preds = os.path.join(tmp, task + ".preds.jsonl")
    r = run("eval", "-m", model, "--data", path, "--out", preds, "--special", "--max-new", "2")
    got = reported(r.stdout)
    check(task in got, f"{task}: no score line in {r.stdout[-300:]}")
    pl = [json.loads(l) for l in open(preds)]
    check(len(pl) == 6 and all("pred" in p and "index" in p for p in pl), f"{task}: predictions file")
    for p in pl:
        check(truth[(task, p["index"])] in p["pred"], f"{task} #{p['index']}: pred {p['pred']!r} lacks the answer")
    # recompute from the predictions with this script's metrics
    mine = round(100 * sum((sm_part if task.startswith("qa") else sm_all)(p["pred"], p["outputs"]) for p in pl) / 6, 2)
    if task in got:
        check(abs(got[task]["score"] - expect[task]) < 0.01, f"{task}: mtok {got[task]['score']} != expected {expect[task]}")
        check(abs(got[task]["score"] - mine) < 0.01, f"{task}: mtok {got[task]['score']} != rescored {mine}")
        check(got[task]["metric"] == ("part" if task.startswith("qa") else "all"), f"{task}: metric {got[task]['metric']}")
    # --resume: a complete predictions file means nothing runs again; a cut one completes
    with open(preds) as f:
        keep = f.read().splitlines()[:2]
    with open(preds, "w") as f:
        f.write("\n".join(keep) + "\n" + '{"index": 4, "pr')  # and a line torn by a killed run
    run("eval", "-m", model, "--data", path, "--out", preds, "--special", "--max-new", "2", "--resume")
    pl = [json.loads(l) for l in open(preds)]
    check(sorted(p["index"] for p in pl) == list(range(6)), f"{task}: resume left {[p['index'] for p in pl]}")

# ---- LongBench: three questions on one shared context, scored with EM and token F1 ----
facts = [(5 * j, j, rng.randrange(64)) for j in range(6)]
ctx = haystack(60, facts)
lb = []
for j, (at, k, v) in enumerate(facts[:4]):
    answers = [f"<|val:{v}|>"] if j != 3 else ["value unknown"]
    lb.append({"_id": f"q{j}", "dataset": "needle_qa", "context": ctx, "input": f"<|ask:{k}|>", "answers": answers,
               "answer_prefix": f"<|ask:{k}|>"})
path = os.path.join(tmp, "longbench.jsonl")
with open(path, "w") as f:
    for l in lb:
        f.write(json.dumps(l) + "\n")
preds = os.path.join(tmp, "longbench.preds.jsonl")
r = run("eval", "-m", model, "--data", path, "--out", preds, "--special", "--max-new", "1")
pl = [json.loads(l) for l in open(preds)]
check(len(pl) == 4 and all("context" not in p for p in pl), "LongBench predictions: 4 lines without the context")
got = reported(r.stdout).get("needle_qa")
check(got is not None, "LongBench: no needle_qa score line")
if got:
    e_em = round(100 * sum(em(p["pred"], p["answers"]) for p in pl) / 4, 2)
    e_f1 = round(100 * sum(f1(p["pred"], p["answers"]) for p in pl) / 4, 2)
    check(abs(got["exact_match"] - e_em) < 0.01 and abs(got["token_f1"] - e_f1) < 0.01,
          f"LongBench: mtok EM {got['exact_match']} F1 {got['token_f1']} != {e_em} {e_f1}")
    check(abs(e_em - 75.0) < 0.01, f"LongBench: the model must answer 3 of 4 exactly (EM {e_em})")
toks = sorted(p["prompt_tokens"] for p in pl)
check(toks[0] > 600, f"LongBench prompt tokens {toks}")

print("FAILED: %d checks" % len(fails) if fails else "all eval round-trip checks passed")
sys.exit(1 if fails else 0)
