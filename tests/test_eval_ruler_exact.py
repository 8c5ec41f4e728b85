#!/usr/bin/env python3
"""RULER exactly as its own Python scores and runs it (docs/EVAL.md §1.4-1.6, issue 20 item 2).

The independent side is this script's own rendering of RULER's rules (NVIDIA/RULER:scripts/eval/evaluate.py and
NVIDIA/RULER:scripts/eval/synthetic/constants.py, written from their definitions): postprocess_pred (str.strip(),
[\\x00-\\x1f] -> newline, strip()), `r.lower() in pred.lower()` on Python strings, task score
round(sum / n * 100, 2), nulls = empty predictions.

1. `mtok eval --score DIR` on tests/data/ruler/preds, a folder of RULER prediction files as
   NVIDIA/RULER:scripts/pred/call_api.py writes them (every task of synthetic.yaml; qa_2 split in two chunk files;
   one task whose `index` repeats, as RULER's character offsets do), full of cases where ASCII case
   folding or a plain strip gives another score: Zoë/ZOË, Österreich, İ, final sigma, ẞ/ß, Unicode
   spaces and control characters around the answer. Every task's score and nulls must equal this
   script's; one file scored alone takes its task from its name.
2. With the needle model: RULER's data layout TASK/validation.jsonl gives each record its task's
   output length (tokens_to_generate: vt 30, qa_* 32, niah_* 128; the needle model never stops by
   itself, so an answer's tokens count the budget); an input that already carries the GLM-4 chat
   template is fed as it is, not wrapped again; the prediction lines carry every field evaluate.py
   reads (index, pred, input even when long, outputs, others) and score again as a folder.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

from harness import args

a = args()
tmp = tempfile.mkdtemp(prefix="mtok-ruler-exact-")
fails = []


def check(cond, msg):
    if not cond:
        fails.append(msg)
        print("FAIL:", msg)


def mtok(*argv):
    return subprocess.run([a.mtok, *argv], capture_output=True, text=True, timeout=600)


def scores(stdout):
    return {json.loads(l[6:])["task"]: json.loads(l[6:]) for l in stdout.splitlines() if l.startswith("score {")}


# ---- RULER's rules, from their definitions ----
def postprocess(p):
    return re.sub(r"[\x00-\x1f]", "\n", p.strip()).strip()


def ruler_task_score(lines, part):
    preds = [postprocess(l["pred"]) for l in lines]
    refs = [l["outputs"] for l in lines]
    if part:
        s = sum(max(1.0 if r.lower() in p.lower() else 0.0 for r in ref) for p, ref in zip(preds, refs))
    else:
        s = sum(sum(1.0 if r.lower() in p.lower() else 0.0 for r in ref) / len(ref) for p, ref in zip(preds, refs))
    return round(s / len(preds) * 100, 2), sum(len(p) == 0 for p in preds)


def ascii_score(lines, part):
    low = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
    preds = [re.sub(r"[\x00-\x1f]", "\n", l["pred"]).translate(low) for l in lines]
    hits = [[r.translate(low) in p for r in l["outputs"]] for p, l in zip(preds, lines)]
    s = sum((max(h) if part else sum(h) / len(h)) for h in hits)
    return round(s / len(lines) * 100, 2), sum(p.strip(" \n") == "" for p in preds)


# ---- 1. RULER's own prediction files, as a folder ----
fixtures = os.path.join(a.src, "tests", "data", "ruler", "preds")
preds_dir = os.path.join(tmp, "preds")
shutil.copytree(fixtures, preds_dir)
tasks = {}
for name in sorted(os.listdir(fixtures)):
    task = re.sub(r"-\d+$", "", name[:-6])  # qa_2-0.jsonl, qa_2-1.jsonl: chunks of qa_2
    with open(os.path.join(fixtures, name), encoding="utf-8") as f:
        tasks.setdefault(task, []).extend(json.loads(l) for l in f if l.strip())
check(len(tasks) == 13, f"the fixtures cover RULER's 13 tasks: {sorted(tasks)}")
r = mtok("eval", "--score", preds_dir)
check(r.returncode == 0, f"eval --score DIR: exit {r.returncode}: {r.stderr[-400:]}")
got = scores(r.stdout)
order = ["niah_single_1", "niah_single_2", "niah_single_3", "niah_multikey_1", "niah_multikey_2", "niah_multikey_3",
         "niah_multivalue", "niah_multiquery", "vt", "cwe", "fwe", "qa_1", "qa_2"]
check(list(got) == order, f"tasks in synthetic.yaml's order: {list(got)}")
ascii_differs = 0
for task, lines in tasks.items():
    part = task.startswith("qa")
    want, nulls = ruler_task_score(lines, part)
    g = got.get(task)
    if not g:
        check(False, f"{task}: no score line")
        continue
    check(g["n"] == len(lines), f"{task}: {g['n']} samples scored, want {len(lines)}")
    check(g["metric"] == ("part" if part else "all"), f"{task}: metric {g['metric']}")
    check(f"{g['score']:.2f}" == f"{want:.2f}", f"{task}: mtok {g['score']:.2f}, RULER's rules {want:.2f}")
    check(g["nulls"] == nulls, f"{task}: {g['nulls']} nulls, RULER's rules {nulls}")
    # the fixtures must matter: ASCII-only case folding and a plain control-character swap (what
    # mtok did before) score most tasks otherwise
    if ascii_score(lines, part) != (want, nulls):
        ascii_differs += 1
check(ascii_differs >= 7, f"fixtures too easy: only {ascii_differs} tasks depend on non-ASCII text")

# one RULER file alone: the task is its name
r = mtok("eval", "--score", os.path.join(fixtures, "niah_multikey_2.jsonl"))
g = scores(r.stdout).get("niah_multikey_2")
want, _ = ruler_task_score(tasks["niah_multikey_2"], False)
check(r.returncode == 0 and g and f"{g['score']:.2f}" == f"{want:.2f}", f"one file: {r.stdout[-300:]} {r.stderr[-300:]}")

# ---- 2. running RULER data with the needle model ----
model = os.path.join(tmp, "needle")
r = mtok("synth", "--preset", "needle", "--out", model)
if r.returncode != 0:
    print(r.stderr)
    sys.exit(1)


def count_tokens(text):
    r = mtok("tokenize", "-m", model, "--special", "--text", text)
    return len(json.loads(r.stdout)) if r.returncode == 0 else -1


data = os.path.join(tmp, "data")
budgets = {"vt": 30, "qa_1": 32, "niah_single_2": 128}
long_input = "Filler sentence about nothing in particular. " * 150 + "<|fact:3:7|> Ask <|ask:3|>"
for task in budgets:
    os.makedirs(os.path.join(data, task))
    with open(os.path.join(data, task, "validation.jsonl"), "w") as f:
        for i in range(2):
            inp = long_input if i == 1 else f"Facts.<|fact:{i + 2}:{i + 9}|> Ask <|ask:{i + 2}|>"
            # a character offset, as RULER's niah writes it: the same for both records
            f.write(json.dumps({"index": 77, "input": inp, "outputs": [f"<|val:{9 if i == 0 else 7}|>"],
                                "length": 4096, "length_w_model_temp": 4110, "answer_prefix": ""}) + "\n")
out_dir = os.path.join(tmp, "out")
os.makedirs(out_dir)
for task, budget in budgets.items():
    out = os.path.join(out_dir, task + ".jsonl")
    r = mtok("eval", "-m", model, "--data", os.path.join(data, task, "validation.jsonl"), "--out", out, "--special")
    check(r.returncode == 0, f"{task}: exit {r.returncode}: {r.stderr[-300:]}")
    lines = [json.loads(l) for l in open(out)] if os.path.exists(out) else []
    check(len(lines) == 2, f"{task}: {len(lines)} predictions")
    for l in lines:
        n = count_tokens(l.get("pred", ""))
        # the needle model never ends its answer: it generates the whole budget
        check(budget - 4 <= n <= budget, f"{task}: an answer of {n} tokens, RULER's budget is {budget}")
        # what evaluate.py reads: line['input'], line['pred'], line.get('outputs'), line['others'].get('id', line['index'])
        try:
            _ = (l["input"], l["pred"], l.get("outputs"), l["others"].get("id", l["index"]), l["truncation"], l["length"])
        except (KeyError, AttributeError) as e:
            check(False, f"{task}: a prediction evaluate.py cannot read: missing {e}: {sorted(l)}")
    check(any(len(l.get("input", "")) > 4096 for l in lines), f"{task}: the long input must stay in the predictions")
r = mtok("eval", "--score", out_dir)
got = scores(r.stdout)
check(r.returncode == 0 and sorted(got) == sorted(budgets), f"mtok's predictions as a folder: {r.stdout[-300:]}")

# an input that already carries the chat template (RULER's chatglm-chat data) is not wrapped again
body = "Some text about the harbor. Which harbor?"
tpl = f"[gMASK]<sop><|user|>\n{body}<|assistant|>"
path = os.path.join(tmp, "templated.jsonl")
with open(path, "w") as f:
    f.write(json.dumps({"index": 0, "input": tpl, "outputs": ["x"]}) + "\n")
out = os.path.join(tmp, "templated.preds.jsonl")
r = mtok("eval", "-m", model, "--data", path, "--out", out, "--max-new", "1")
line = json.loads(open(out).readline()) if r.returncode == 0 else {}
want = count_tokens(tpl)
check(line.get("prompt_tokens") == want, f"a templated input: {line.get('prompt_tokens')} prompt tokens, its own "
      f"tokens are {want} (wrapped again, or its markers read as text)")

print("FAILED: %d checks" % len(fails) if fails else "all RULER exactness checks passed")
sys.exit(1 if fails else 0)
