#!/usr/bin/env python3
"""LongBench scored as LongBench scores it (docs/EVAL.md §2).

The expected numbers come from this script's own statement of LongBench's metric definitions
(LongBench/metrics.py, eval.py, v2's result.py) run on the real packages those scripts import:
`rouge` (ROUGE-L), `fuzzywuzzy` (code similarity, over difflib as LongBench's requirements leave it),
`jieba` (Chinese words) and numpy (LongBench-E's bucket means). Without them the test skips (77),
unless CI is set. Checked:
  1. `mtok eval --score DIR` on tests/data/longbench/pred (hand-made predictions for all 21 v1
     datasets, English, Chinese and code) prints eval.py's result.json, byte for byte;
  2. with --longbench-e, the 0-4k / 4-8k / 8k+ buckets (one empty: NaN);
  3. `mtok eval --segment` yields python jieba's words on a few thousand generated sentences;
  4. LongBench v2 result files (judge given, or the letter extracted from the response) give
     result.py's table;
  5. the lookups that must fail do: a retrieval answer without its paragraph number, an unknown
     dataset file, a Chinese dataset with no jieba data.
The rouge package walks its LCS table back recursively; eval.py scores 0 where that walk passes
Python's recursion limit. The fixtures hold one prediction on each side of that limit, and this
script calls the metrics from the same stack depth as eval.py (module -> scorer -> metric)."""
import json
import math
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
import warnings

warnings.simplefilter("ignore")  # fuzzywuzzy's note that python-Levenshtein is absent, numpy's empty means
try:
    import numpy as np
    import jieba
    from fuzzywuzzy import fuzz
    from rouge import Rouge
except ImportError as e:
    print(f"{e.name} missing (pip install rouge fuzzywuzzy jieba numpy): skipped")
    sys.exit(1 if os.environ.get("CI") else 77)
import logging

jieba.setLogLevel(logging.ERROR)
JIEBA_DIR = os.path.dirname(jieba.__file__)
DATA = os.path.join(a.src, "tests", "data", "longbench")
fails = []


def check(cond, msg):
    if not cond:
        fails.append(msg)
        print("FAIL:", msg)


def mtok(*argv):
    return subprocess.run([a.mtok, *argv], capture_output=True, text=True, timeout=300)


# ---- LongBench's metrics, restated ----
def norm_en(s):
    s = "".join(c for c in s.lower() if c not in set(string.punctuation))
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", s).split())


ZH_PUNCT = set(string.punctuation + "！？｡。＂＃＄％＆＇（）＊＋，－／：；＜＝＞＠［＼］＾＿｀｛｜｝～｟｠｢｣､、〃》「」『』【】〔〕"
               "〖〗〘〙〚〛〜〝〞〟〰〾〿–—‘’‛“”„‟…‧﹏.")


def norm_zh(s):
    return "".join("".join(c for c in s.lower() if c not in ZH_PUNCT).split())


def f1(p, g):
    same = sum((Counter(p) & Counter(g)).values())
    if same == 0:
        return 0
    pr, rc = 1.0 * same / len(p), 1.0 * same / len(g)
    return (2 * pr * rc) / (pr + rc)


def qa_f1(pred, gt, **k):
    return f1(norm_en(pred).split(), norm_en(gt).split())


def qa_f1_zh(pred, gt, **k):
    p = [w for w in (norm_zh(t) for t in jieba.cut(pred, cut_all=False)) if w]
    g = [w for w in (norm_zh(t) for t in jieba.cut(gt, cut_all=False)) if w]
    return f1(p, g)


def rouge_l(pred, gt, **k):
    try:
        return Rouge().get_scores([pred], [gt], avg=True)["rouge-l"]["f"]
    except Exception:  # empty sides, and RecursionError in the package's LCS walk-back
        return 0.0


def rouge_zh(pred, gt, **k):
    return rouge_l(" ".join(jieba.cut(pred, cut_all=False)), " ".join(jieba.cut(gt, cut_all=False)))


def classification(pred, gt, all_classes, **k):
    found = [c for c in all_classes if c in pred]
    for c in found:  # removal while iterating, as LongBench does it
        if c in gt and c != gt:
            found.remove(c)
    return 1.0 / len(found) if gt in found else 0.0


def share(pred, want):
    nums = re.findall(r"\d+", pred)
    return 0.0 if not nums else sum(n == want for n in nums) / len(nums)


def retrieval(pred, gt, **k):
    return share(pred, re.findall(r"Paragraph (\d+)", gt)[0])


def retrieval_zh(pred, gt, **k):
    return share(pred, re.findall(r"段落(\d+)", gt)[0])


def count(pred, gt, **k):
    return share(pred, str(gt))


def code_sim(pred, gt, **k):
    line = next((l for l in pred.lstrip("\n").split("\n") if "`" not in l and "#" not in l and "//" not in l), "")
    return fuzz.ratio(line, gt) / 100


METRIC = {"narrativeqa": qa_f1, "qasper": qa_f1, "multifieldqa_en": qa_f1, "multifieldqa_zh": qa_f1_zh,
          "hotpotqa": qa_f1, "2wikimqa": qa_f1, "musique": qa_f1, "dureader": rouge_zh, "gov_report": rouge_l,
          "qmsum": rouge_l, "multi_news": rouge_l, "vcsum": rouge_zh, "trec": classification, "triviaqa": qa_f1,
          "samsum": rouge_l, "lsht": classification, "passage_retrieval_en": retrieval, "passage_count": count,
          "passage_retrieval_zh": retrieval_zh, "lcc": code_sim, "repobench-p": code_sim}


def scorer(ds, rows, classes, e):
    buckets, total = {"0-4k": [], "4-8k": [], "8k+": []}, 0.0
    for r in rows:
        pred = r["pred"]
        if ds in ("trec", "triviaqa", "samsum", "lsht"):
            pred = pred.lstrip("\n").split("\n")[0]
        s = 0.0
        for g in r["answers"]:
            s = max(s, METRIC[ds](pred, g, all_classes=classes))
        total += s
        buckets["0-4k" if r["length"] < 4000 else "4-8k" if r["length"] < 8000 else "8k+"].append(s)
    if not e:
        return round(100 * total / len(rows), 2)
    return {k: round(100 * np.mean(v), 2) for k, v in buckets.items()}


pred_dir = os.path.join(DATA, "pred")
names = sorted(f for f in os.listdir(pred_dir) if f.endswith("jsonl"))
check(len(names) == 21, f"fixtures for all 21 datasets: {names}")
files = {}
for f in names:
    rows = [json.loads(l) for l in open(os.path.join(pred_dir, f), encoding="utf-8")]
    files[f.split(".")[0]] = rows
# 1, 2: the metrics are called from module level through scorer(), as eval.py calls them
expect = {}
for e in (0, 1):
    result = {}
    for ds, rows in sorted(files.items()):
        result[ds] = scorer(ds, rows, rows[-1]["all_classes"], e)
    expect[e] = json.dumps(result, ensure_ascii=False, indent=4) + "\n"
for e in (0, 1):
    r = mtok("eval", "--score", pred_dir, "--jieba", JIEBA_DIR, *(["--longbench-e"] if e else []))
    check(r.returncode == 0, f"eval --score DIR{' --longbench-e' if e else ''}: exit {r.returncode}: {r.stderr[-300:]}")
    if r.returncode == 0 and r.stdout != expect[e]:
        got = json.loads(r.stdout.replace("NaN", "null"))
        want = json.loads(expect[e].replace("NaN", "null"))
        diff = {k: (got.get(k), v) for k, v in want.items() if got.get(k) != v}
        check(False, f"result.json{' (LongBench-E)' if e else ''} differs (mtok, expected): {diff or r.stdout}")
check(" 0.0" not in expect[0] and "NaN" in expect[1], "the fixtures give no dataset 0 and leave one bucket empty")
gov = files["gov_report"]


def at_scorer_depth(pred, gt):  # module -> here -> metric, as eval.py's module -> scorer -> metric
    return rouge_l(pred, gt)


check(at_scorer_depth(gov[5]["pred"], "w0") == 0.0 and at_scorer_depth(gov[6]["pred"], "w0") > 0,
      "the fixtures straddle the rouge package's recursion limit")

# 3: jieba's words on generated sentences (dictionary words, unknown characters for the HMM, ASCII,
# numbers with decimals and percent signs, whitespace and punctuation)
rng = random.Random(3)
words = [l.split(" ")[0] for l in open(os.path.join(JIEBA_DIR, "dict.txt"), encoding="utf-8")]
han = [chr(c) for c in range(0x4E00, 0x9FD6)]
other = list("abcXYZ0123456789+#&._%-!?,。，、“”()（）: \t\u3000\u00a0") + ["1.5%", "3.14", "C++", "\r\n", "Ｆｕｌｌ"]
lines = []
for i in range(3000):
    parts = []
    for _ in range(rng.randint(1, 12)):
        x = rng.random()
        parts.append(rng.choice(words) if x < 0.5 else "".join(rng.choice(han) for _ in range(rng.randint(1, 4)))
                     if x < 0.8 else "".join(rng.choice(other) for _ in range(rng.randint(1, 3))))
    lines.append("".join(parts).replace("\n", ""))
tmp = tempfile.mkdtemp(prefix="mtok-longbench-")
seg = os.path.join(tmp, "zh.txt")
with open(seg, "w", encoding="utf-8", newline="") as f:
    f.write("\n".join(lines) + "\n")
r = mtok("eval", "--segment", seg, "--jieba", JIEBA_DIR)
check(r.returncode == 0, f"eval --segment: exit {r.returncode}: {r.stderr[-300:]}")
if r.returncode == 0:
    got = [json.loads(l) for l in r.stdout.split("\n") if l]
    bad = [(l, g) for l, g in zip(lines, got) if list(jieba.cut(l)) != g]
    check(len(got) == len(lines) and not bad, f"jieba words: {len(bad)} of {len(lines)} sentences differ, first "
          f"{bad[0] if bad else None}")

# 4: LongBench v2's result table
LETTER = (re.compile(r"The correct answer is \(([A-D])\)"), re.compile(r"The correct answer is ([A-D])"))


def letter(resp):
    resp = resp.replace("*", "")
    for rx in LETTER:
        m = rx.search(resp)
        if m:
            return m.group(1)
    return None


v2_dir = os.path.join(DATA, "v2")
out = ["Model\tOverall\tEasy\tHard\tShort\tMedium\tLong"]
for f in sorted(os.listdir(v2_dir)):
    rows = [json.loads(l) for l in open(os.path.join(v2_dir, f), encoding="utf-8")]
    acc = {k: [] for k in ("all", "easy", "hard", "short", "medium", "long")}
    for p in rows:
        judge = p["judge"] if "judge" in p else letter(p["response"]) == p["answer"]
        for k in ("all", "easy" if p["difficulty"] == "easy" else "hard",
                  p["length"] if p["length"] in ("short", "medium") else "long"):
            acc[k].append(int(judge))
    out.append(".".join(f.split(".")[:-1]) + "".join(
        "\t" + (str(round(100 * sum(v) / len(v), 1)) if v else "-") for v in acc.values()))
r = mtok("eval", "--score", v2_dir)
check(r.returncode == 0 and r.stdout == "\n".join(out) + "\n",
      f"v2 table: exit {r.returncode}\n{r.stdout}!=\n" + "\n".join(out) + f"\n{r.stderr[-300:]}")

# 5: what must be refused, with exit 2 and the file named
bad = os.path.join(tmp, "bad")
for name, line, env in (("passage_retrieval_en", {"pred": "1", "answers": ["no number"], "all_classes": None}, None),
                        ("not_a_dataset", {"pred": "1", "answers": ["1"], "all_classes": None}, None),
                        ("vcsum", {"pred": "你好", "answers": ["你好"], "all_classes": None}, "nojieba")):
    os.makedirs(bad, exist_ok=True)
    for old in os.listdir(bad):
        os.remove(os.path.join(bad, old))
    with open(os.path.join(bad, name + ".jsonl"), "w") as f:
        f.write(json.dumps(line) + "\n")
    extra = ["--jieba", os.path.join(tmp, "nowhere")] if env else []
    r = mtok("eval", "--score", bad, *extra)
    check(r.returncode == 2 and name + ".jsonl" in r.stderr, 
          f"{name}: exit {r.returncode}, {r.stderr.strip()[-200:]}")

print("FAILED: %d checks" % len(fails) if fails else "all LongBench checks passed")
sys.exit(1 if fails else 0)
