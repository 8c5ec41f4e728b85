#!/usr/bin/env python3
"""--resume of `mtok eval` and `mtok niah` keeps every valid line of the old output and refuses
output that is not its own (issue 16, findings 3 and 4), and the jsonl readers a user's file
reaches answer bad bytes with one line naming FILE:LINE and exit 2.

1. eval --resume with predictions for records the data file lacks (more predictions than records,
   the heap overflow of finding 3), or with another task file's references under the same
   indexes: exit 2 naming both files and the line; the predictions file is left as it was.
2. eval --resume with an unparsable line in the middle of preds.jsonl followed by valid lines: the
   valid lines survive byte for byte and are not run again (the run reports how many it runs), a
   warning names preds.jsonl:LINE, the torn last line is dropped, and every record ends up with
   exactly one prediction. A record without index/_id is found again by its line.
3. niah --resume with a garbage line in the middle of results.jsonl: the valid cells survive and
   only the missing ones run ("N cells run, M skipped"); a results file with no cell in it is
   refused (exit 2) and left untouched.
4. eval --data / --score and qa --questions with NUL bytes, non-objects, wrong field types, huge
   numbers, duplicate keys and a long line: exit 2 with FILE:LINE, never a crash.
"""
import json
import os
import subprocess
import sys
import tempfile

from harness import args

a = args()
tmp = tempfile.mkdtemp(prefix="mtok-resume-")
model = os.path.join(tmp, "needle")
fails = []


def check(cond, msg):
    if not cond:
        fails.append(msg)
        print("FAIL:", msg)


def mtok(*argv, timeout=300):
    try:
        return subprocess.run([a.mtok, *argv], capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(argv, -9, b"", f"timed out after {timeout} s".encode())


def last(r):
    lines = r.stderr.decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else ""


def write(path, lines, end="\n"):
    with open(path, "wb") as f:
        f.write(b"\n".join(l if isinstance(l, bytes) else l.encode() for l in lines) + end.encode())


r = mtok("synth", "--preset", "needle", "--out", model)
if r.returncode != 0:
    print(r.stderr.decode())
    sys.exit(1)

# ---- eval data: 6 RULER records (short prompts: only the bookkeeping is under test) ----
data = os.path.join(tmp, "niah_single_1.jsonl")
recs = [{"index": i, "input": f"Facts.<|fact:{i}:{i + 3}|> Ask <|ask:{i}|>", "outputs": [f"<|val:{i + 3}|>"],
         "length": 0} for i in range(6)]
write(data, [json.dumps(x) for x in recs])
preds = os.path.join(tmp, "preds.jsonl")
EV = ["eval", "-m", model, "--data", data, "--out", preds, "--special", "--max-new", "1"]
r = mtok(*EV)
check(r.returncode == 0, f"eval: exit {r.returncode}: {last(r)}")
good = open(preds, "rb").read().splitlines()
check(len(good) == 6, f"eval wrote {len(good)} predictions, want 6")

# 1a. more predictions than records (finding 3): other tasks, other indexes
extra = [json.dumps({"index": 100 + i, "task": f"t{i}", "outputs": ["x"], "pred": "x"}).encode() for i in range(40)]
write(preds, good + extra)
before = open(preds, "rb").read()
r = mtok(*EV, "--resume")
msg = last(r)
check(r.returncode == 2 and "preds.jsonl:7:" in msg and "niah_single_1.jsonl" in msg and "another data file" in msg,
      f"resume with predictions for records the data lacks: exit {r.returncode}: {msg}")
check(open(preds, "rb").read() == before, "a refused resume must leave the predictions file as it was")

# 1b. the same indexes, another task file's references (RULER numbers every file from 0)
other = [json.loads(l) for l in good]
other[3]["outputs"] = ["<|val:60|>"]
write(preds, [json.dumps(o) for o in other])
r = mtok(*EV, "--resume")
msg = last(r)
check(r.returncode == 2 and "preds.jsonl:4:" in msg and "niah_single_1.jsonl:4" in msg and "references" in msg,
      f"resume with another file's references: exit {r.returncode}: {msg}")

# 2. garbage in the middle, valid lines after it, a torn last line (finding 4)
kept = [good[0], good[1], good[3], good[4]]
write(preds, [good[0], good[1], b'{"index": 2, "pred": "x\x00 oops', b"[1, 2]", good[3], good[4], b'{"index": 5, "pr'],
      end="")
r = mtok(*EV, "--resume")
err = r.stderr.decode(errors="replace")
check(r.returncode == 0, f"resume over a damaged file: exit {r.returncode}: {last(r)}")
check("preds.jsonl:3:" in err and "preds.jsonl:4:" in err, f"the skipped lines must be named: {err[-600:]}")
check("running the other 2" in err, f"resume must run only records 2 and 5: {err[-600:]}")
after = open(preds, "rb").read().splitlines()
check(after[:4] == kept, "the valid lines must survive byte for byte, in order")
idx = sorted(json.loads(l)["index"] for l in after)
check(idx == list(range(6)), f"after resume: indexes {idx}")
check(not os.path.exists(preds + ".tmp"), "the temporary file must be gone")
r = mtok(*EV, "--resume")
check(r.returncode == 0 and "running the other 0" in r.stderr.decode() and open(preds, "rb").read().splitlines() == after,
      "a complete predictions file: nothing runs, nothing changes")
# a duplicate prediction is dropped with a warning
write(preds, after + [after[2]])
r = mtok(*EV, "--resume")
check(r.returncode == 0 and "preds.jsonl:7: a second prediction" in r.stderr.decode(errors="replace")
      and len(open(preds, "rb").read().splitlines()) == 6, f"duplicate prediction: {last(r)}")
# a file of which no line is a prediction is not ours: refused, untouched
write(preds, [b"hello", b"world"])
r = mtok(*EV, "--resume")
check(r.returncode == 2 and "refusing to overwrite" in last(r) and open(preds, "rb").read() == b"hello\nworld\n",
      f"not a predictions file: exit {r.returncode}: {last(r)}")
# --out pointing at the data file
r = mtok("eval", "-m", model, "--data", data, "--out", data, "--special")
check(r.returncode == 1 and "--data" in last(r) and len(open(data).read().splitlines()) == 6,
      f"--out = --data: exit {r.returncode}: {last(r)}")

# records without index/_id are found again by their line
lb = os.path.join(tmp, "noid.jsonl")
write(lb, [json.dumps({"input": f"<|ask:{i}|>", "answers": ["x"]}) for i in range(3)])
lbp = os.path.join(tmp, "noid.preds.jsonl")
r = mtok("eval", "-m", model, "--data", lb, "--out", lbp, "--special", "--max-new", "1")
lines = open(lbp, "rb").read().splitlines()
check(r.returncode == 0 and [json.loads(l).get("data_line") for l in lines] == [1, 2, 3],
      f"records without an id carry their data line: {lines}")
write(lbp, lines[:2])
r = mtok("eval", "-m", model, "--data", lb, "--out", lbp, "--special", "--max-new", "1", "--resume")
check(r.returncode == 0 and "running the other 1" in r.stderr.decode() and len(open(lbp).read().splitlines()) == 3,
      f"resume without ids: {r.stderr.decode()[-300:]}")

# ---- 3. niah --resume ----
out = os.path.join(tmp, "niah")
NI = ["niah", "-m", model, "--out", out, "--lengths", "512", "--depths", "0,25,50,75,100", "--threads", "2"]
r = mtok(*NI)
check(r.returncode == 0, f"niah: exit {r.returncode}: {last(r)}")
res = os.path.join(out, "results.jsonl")
cells = open(res, "rb").read().splitlines()
check(len(cells) == 5, f"niah wrote {len(cells)} cells")
bad_cell = json.loads(cells[2])
bad_cell["depth"] = "deep"
write(res, [cells[0], b"\x00\x01garbage", cells[1], json.dumps(bad_cell).encode(), cells[3], b'{"length": 512, "de'],
      end="")
r = mtok(*NI, "--resume")
so, se = r.stdout.decode(), r.stderr.decode(errors="replace")
check(r.returncode == 0 and "2 cells run, 3 skipped" in so, f"niah resume: exit {r.returncode}: {so[-300:]} {se[-300:]}")
check("results.jsonl:2:" in se and "results.jsonl:4:" in se, f"niah: the skipped lines must be named: {se[-500:]}")
after = open(res, "rb").read().splitlines()
check(after[:3] == [cells[0], cells[1], cells[3]], "niah: the valid cells must survive byte for byte")
keys = sorted(json.loads(l)["depth"] for l in after)
check(keys == [0, 25, 50, 75, 100], f"niah: depths after resume {keys}")
write(res, [b"not a cell", b'{"a": 1}'])
r = mtok(*NI, "--resume")
check(r.returncode == 2 and "refusing to overwrite" in last(r) and open(res, "rb").read() == b'not a cell\n{"a": 1}\n',
      f"niah: a file without cells: exit {r.returncode}: {last(r)}")

# ---- 4. bad bytes in the files a user hands over ----
base = {"index": 0, "outputs": ["x"], "pred": "x"}
cases = [
    ("nul", b'{"index": 0, "outputs": ["x"], "pred": "a\x00b"}', 1),
    ("nul-escape", b'{"index": 0, "outputs": ["x"], "pred": "a\\u0000b"}', 1),
    ("array", b"[1, 2, 3]", 1),
    ("number", b"42", 1),
    ("outputs-string", json.dumps({**base, "outputs": "x"}).encode(), 1),
    ("outputs-item", json.dumps({**base, "outputs": ["x", 3]}).encode(), 1),
    ("pred-number", json.dumps({**base, "pred": 5}).encode(), 1),
    ("index-object", json.dumps({**base, "index": {"a": 1}}).encode(), 1),
    ("task-list", json.dumps({**base, "task": ["a"]}).encode(), 1),
    ("huge-int", b'{"index": 123456789012345678901234567890, "outputs": ["x"], "pred": "x"}', 1),
    ("huge-real", b'{"index": 0, "outputs": ["x"], "pred": "x", "length": 1e999}', 1),
    ("deep", b'{"index": 0, "outputs": ["x"], "pred": "x", "d": ' + b"[" * 5000 + b"]" * 5000 + b"}", 1),
    ("torn", b'{"index": 0, "outputs": ["x"], "pred": "x"}\n{"index": 1, "out', 2),
    ("invalid-utf8", b'{"index": 0, "outputs": ["x"], "pred": "\xff\xfe"}', 1),
]
for name, body, line in cases:
    path = os.path.join(tmp, f"bad-{name}.jsonl")
    with open(path, "wb") as f:
        f.write(body + (b"\n" if name != "torn" else b""))
    r = mtok("eval", "--score", path)
    msg = last(r)
    check(r.returncode == 2 and f"bad-{name}.jsonl:{line}:" in msg, f"--score {name}: exit {r.returncode}: {msg}")
dup = os.path.join(tmp, "dup.jsonl")
write(dup, [json.dumps(recs[0]), json.dumps(recs[1]), json.dumps(recs[0])])
r = mtok("eval", "-m", model, "--data", dup, "--out", os.path.join(tmp, "d.out"), "--special")
check(r.returncode == 2 and "dup.jsonl:3:" in last(r) and "line 1" in last(r), f"duplicate index: {last(r)}")
empty = os.path.join(tmp, "empty.jsonl")
write(empty, [""])
r = mtok("eval", "--score", empty)
check(r.returncode == 2 and "no records" in last(r), f"empty data: exit {r.returncode}: {last(r)}")
# a long prediction scores in linear time (the metrics once compared every pair of positions)
long = os.path.join(tmp, "long.jsonl")
write(long, [json.dumps({"index": 0, "outputs": ["a" * 200000 + "b"], "pred": "a " * 2000000 + "a" * 400000})])
r = mtok("eval", "--score", long, timeout=60)
check(r.returncode == 0 and b"score {" in r.stdout, f"long prediction: exit {r.returncode}: {last(r)}")

# qa --questions: read before the model loads, strictly
qf = os.path.join(tmp, "q.jsonl")
for name, body, line in [("nul", b'{"question": "hi"}\n{"question": "a\x00b"}\n', 2),
                         ("number", b'{"question": "hi"}\n\n{"question": 7}\n', 3),
                         ("array", b'["question"]\n', 1),
                         ("empty-q", b'{"question": ""}\n', 1),
                         ("missing", b'{"id": 1}\n', 1),
                         ("huge", b'{"question": "x", "id": 1e999}\n', 1),
                         ("torn", b'{"question": "hi"}\n{"question": "h', 2)]:
    with open(qf, "wb") as f:
        f.write(body)
    r = mtok("qa", "-m", model, "-f", data, "--questions", qf)
    check(r.returncode == 2 and f"q.jsonl:{line}:" in last(r), f"qa --questions {name}: exit {r.returncode}: {last(r)}")
with open(qf, "wb") as f:
    f.write(b"\n\n")
r = mtok("qa", "-m", model, "-f", data, "--questions", qf)
check(r.returncode == 2 and "no questions" in last(r), f"qa with no questions: exit {r.returncode}: {last(r)}")

print("FAILED: %d checks" % len(fails) if fails else "all resume / reader checks passed")
sys.exit(1 if fails else 0)
