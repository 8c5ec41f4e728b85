#!/usr/bin/env python3
"""Resume that cannot mix runs, and the NIAH progress line (docs/EVAL.md §3, issue 20 items 3 and 4).

1. eval --resume: the run's identity (model fingerprint, options that change answers, the data file's
   hash) is recorded next to the predictions (PREDS.run.json); a resume with another --chunk, another
   data file content, another model, or a predictions file without that record is refused with exit 2
   and a message naming what differs, leaving the predictions as they were; the same run resumes.
2. Records are keyed by their line and content, not by RULER's index (a character offset that
   repeats): two records with the same index each get their own prediction, and a resume of a cut
   file runs exactly the missing one; a damaged line is skipped, the valid lines after it are kept.
3. An interrupted eval says "interrupted" in its table.
4. niah --resume: another --seed (or another --needle) is refused (exit 2); the same grid resumes.
5. niah --all-depths (the layout `mtok demo` runs): the progress line ends on "N/N cells ... done"
   and its ETA tracks the time really left (it once ended on "55/55 cells ... ETA 1161s").
"""
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

from harness import args

a = args()
tmp = tempfile.mkdtemp(prefix="mtok-resume-id-")
model = os.path.join(tmp, "needle")
fails = []


def check(cond, msg):
    if not cond:
        fails.append(msg)
        print("FAIL:", msg)


def mtok(*argv, timeout=300):
    try:
        return subprocess.run([a.mtok, *argv], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(argv, -9, "", f"timed out after {timeout} s")


def last(r):
    lines = r.stderr.strip().splitlines()
    return lines[-1] if lines else ""


r = mtok("synth", "--preset", "needle", "--out", model)
if r.returncode != 0:
    print(r.stderr)
    sys.exit(1)

# ---- 1. the identity of an eval run ----
data = os.path.join(tmp, "niah_single_1.jsonl")
recs = [{"index": 40 + (i // 2), "input": f"Facts.<|fact:{i}:{i + 3}|> Ask <|ask:{i}|>",
         "outputs": [f"<|val:{i + 3}|>"], "length": 0, "answer_prefix": f"<|ask:{i}|>"} for i in range(6)]  # indexes repeat: 40 40 41 41 42 42
with open(data, "w") as f:
    f.write("".join(json.dumps(x) + "\n" for x in recs))
preds = os.path.join(tmp, "preds.jsonl")
EV = ["eval", "-m", model, "--data", data, "--out", preds, "--special", "--max-new", "1", "--threads", "2"]
r = mtok(*EV)
check(r.returncode == 0, f"eval: exit {r.returncode}: {last(r)}")
side = preds + ".run.json"
check(os.path.exists(side), "eval must record its run next to the predictions")
good = open(preds).read().splitlines()
check(len(good) == 6, f"{len(good)} predictions for 6 records whose indexes repeat")
for l in good:  # each record's own answer: predictions were not mixed up by their shared index
    o = json.loads(l)
    check(o["outputs"][0] in o["pred"], f"prediction {o.get('data_line')}: {o['pred'][:40]!r} lacks {o['outputs']}")


def refused(argv, what, name):
    before = open(preds, "rb").read()
    r = mtok(*argv)
    check(r.returncode == 2 and what in last(r), f"{name}: exit {r.returncode}, want 2 naming {what!r}: {last(r)}")
    check(open(preds, "rb").read() == before, f"{name}: a refused resume must leave the predictions as they were")


refused(EV + ["--resume", "--chunk", "64"], "chunk", "another --chunk")
refused(["eval", "-m", model, "--data", data, "--out", preds, "--max-new", "1", "--resume"], "template",
        "without --special")
other_model = os.path.join(tmp, "needle2")
mtok("synth", "--preset", "needle", "--out", other_model, "--dtype", "f32")  # the fingerprint: config + tensor table
refused(["eval", "-m", other_model] + EV[3:] + ["--resume"], "model_fingerprint", "another model")
with open(data, "a") as f:  # the data file grows: the predictions no longer tell its whole run
    f.write(json.dumps({"index": 99, "input": "Facts. Ask <|ask:1|>", "outputs": ["<|val:4|>"]}) + "\n")
refused(EV + ["--resume"], "data", "another data file content")
with open(data, "w") as f:
    f.write("".join(json.dumps(x) + "\n" for x in recs))
os.rename(side, side + ".away")
refused(EV + ["--resume"], "no run record", "predictions without a run record")
os.rename(side + ".away", side)

# ---- 2. keyed by line and content; a damaged line costs only itself ----
with open(preds, "w") as f:  # records 1, 3 and 5 lost; a damaged line between valid ones; a torn end
    f.write("\n".join([good[0], '{"index": 40, "pred": "\x01 oops', good[2], good[4], '{"index": 42, "pr']))
r = mtok(*EV, "--resume")
err = r.stderr
check(r.returncode == 0, f"resume: exit {r.returncode}: {last(r)}")
check("preds.jsonl:2:" in err, f"the damaged line must be named: {err[-400:]}")
check("running the other 3" in err, f"resume must run only the 3 missing records: {err[-400:]}")
after = open(preds).read().splitlines()
check(after[:3] == [good[0], good[2], good[4]], "the valid lines after the damaged one must survive, in order")
lines_of = sorted(json.loads(l)["data_line"] for l in after)
check(lines_of == [1, 2, 3, 4, 5, 6], f"after resume, predictions for data lines {lines_of}")
for l in after:
    o = json.loads(l)
    check(o["outputs"][0] in o["pred"], f"resumed prediction {o.get('data_line')}: {o['pred'][:40]!r}")
r = mtok(*EV, "--resume")
check(r.returncode == 0 and "running the other 0" in r.stderr, f"the same run resumes: {last(r)}")

# ---- 3. an interrupted eval says so in its table ----
big = os.path.join(tmp, "big.jsonl")
filler = " ".join(["In the beginning God created the heaven and the earth."] * 400)
with open(big, "w") as f:
    for i in range(40):
        f.write(json.dumps({"index": i, "input": f"{filler} <|fact:{i % 16}:{i % 60}|> {filler} <|ask:{i % 16}|>",
                            "outputs": [f"<|val:{i % 60}|>"]}) + "\n")
bp = os.path.join(tmp, "big.preds.jsonl")
p = subprocess.Popen([a.mtok, "eval", "-m", model, "--data", big, "--out", bp, "--special", "--max-new", "1",
                      "--threads", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
t0 = time.time()
while time.time() - t0 < 120 and p.poll() is None:  # bounded poll: interrupt once a prediction is out
    if os.path.exists(bp) and os.path.getsize(bp) > 0:
        break
    time.sleep(0.05)
p.send_signal(signal.SIGINT)
so, se = p.communicate(timeout=120)
n_done = len(open(bp).read().splitlines()) if os.path.exists(bp) else 0
if n_done < 40:
    check(p.returncode == 130 and "interrupted" in so, f"SIGINT after {n_done} of 40: exit {p.returncode}, "
          f"table: {so[:300]!r}")
else:
    print("note: the eval finished before the interrupt; nothing to check")

# ---- 4. niah --resume and its identity ----
out = os.path.join(tmp, "niah")
NI = ["niah", "-m", model, "--out", out, "--lengths", "512,1K", "--depths", "0,50,100", "--threads", "2"]
r = mtok(*NI)
check(r.returncode == 0 and os.path.exists(os.path.join(out, "results.jsonl.run.json")),
      f"niah: exit {r.returncode}, run record written: {last(r)}")
res = os.path.join(out, "results.jsonl")
cells = open(res).read().splitlines()
with open(res, "w") as f:
    f.write("\n".join(cells[:3]) + "\n")
before = open(res, "rb").read()
r = mtok(*NI, "--resume", "--seed", "9")
check(r.returncode == 2 and "seed" in last(r) and open(res, "rb").read() == before,
      f"niah resume with another seed: exit {r.returncode}: {last(r)}")
r = mtok(*NI, "--resume", "--needle", "text")
check(r.returncode == 2 and "needle" in last(r), f"niah resume with text needles: exit {r.returncode}: {last(r)}")
r = mtok(*NI, "--resume")
check(r.returncode == 0 and "3 cells run, 3 skipped" in r.stdout, f"niah resume: {r.stdout[-200:]} {last(r)}")

# ---- 5. the all-depths progress line ----
out = os.path.join(tmp, "alld")
t0 = time.time()
r = mtok("niah", "-m", model, "--out", out, "--lengths", "1K,4K,16K", "--depths", "0:100:11", "--all-depths",
         "--threads", "2", "--chunk", "1024", "--progress")
wall = time.time() - t0
check(r.returncode == 0, f"all-depths: exit {r.returncode}: {last(r)}")
draws = [d for d in re.split(r"[\r\n]", r.stderr) if d.startswith("niah: ")]


def secs(t):
    m = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", t)
    return None if not m or not t else int(m[1] or 0) * 3600 + int(m[2] or 0) * 60 + int(m[3] or 0)


check(draws and re.match(r"niah: 33/33 cells .*done in", draws[-1]), f"the last progress line: {draws[-1:]}")
# every estimate made after the first length's prefill (the fit needs a few chunks): within a factor
# of 3 of the time really left, plus a few seconds of slack for a loaded machine
bad = []
for d in draws:
    m = re.search(r"elapsed (\S+)  ETA (\S+)", d)
    if not m or secs(m[1]) is None or secs(m[2]) is None:
        continue
    el, eta = secs(m[1]), secs(m[2])
    left = wall - el
    if el >= 0.2 * wall and not (eta <= 3 * left + 5 and eta >= left / 3 - 5):
        bad.append(f"elapsed {el}s: ETA {eta}s, {left:.0f}s left")
check(not bad, f"the ETA must track the time left (run took {wall:.0f}s): {bad[:5]}")

print("FAILED: %d checks" % len(fails) if fails else "all resume identity checks passed")
sys.exit(1 if fails else 0)
