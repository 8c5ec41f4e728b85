#!/usr/bin/env python3
"""LongBench prompted and generated as its own pred.py scripts do (`mtok eval --prompts`, issue 20 item 1;
docs/EVAL.md §2.1 and §2.5), checked on the exact token ids mtok feeds (`--dump-prompts`).

This script is the independent side: it states pred.py's rules itself — Python's str.format of
dataset2prompt's template, the middle truncation (v1: the halves decoded apart; v2: one decode of the
kept ids, [gMASK]<sop> counted), the chat template except for the raw datasets, samsum's stops and
min_length, v2's $MARKER$ replacements, strip()s and its two --cot passes — and builds the ids from
`mtok tokenize` and the tokenizer file's bytes (Python's own UTF-8 decoding with errors="replace"). The
expected greedy answers come from `mtok logits`, one forward per step. The configuration files are
the project's own fixtures in LongBench's format (tests/data/longbench/gen).

1. v1: chat datasets (truncated English, truncated Chinese cut inside a character, a template with
   literal braces and a context holding "{input}"), raw datasets (trec, lcc), LongBench-E's names, the
   default --max-length (the context less the answer's budget and 16); lines in pred.py's layout that
   `--score DIR` reads; --resume runs only what is missing; template errors as Python raises them.
2. samsum: a tokenizer whose newline is the model's first greedy token (its ranks swapped, the
   weights unchanged) must not stop at once (min_length), and one whose newline comes third must stop
   there, the newline kept in pred.
3. v2: 0-shot and --cot (the CoT pass's stripped text fed as $COT$), result lines in v2's layout
   (context cut to 1000 characters, response, pred null, judge), --resume and --score DIR.
"""
import base64
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile

from harness import args

a = args()
tmp = tempfile.mkdtemp(prefix="mtok-lbgen-")
model = os.path.join(tmp, "tiny")
gen_dir = os.path.join(a.src, "tests", "data", "longbench", "gen")
P1, ML1 = os.path.join(gen_dir, "dataset2prompt.json"), os.path.join(gen_dir, "dataset2maxlen.json")
P2 = os.path.join(gen_dir, "prompts")
fails = []


def check(cond, msg):
    if not cond:
        fails.append(msg)
        print("FAIL:", msg)
    return cond


def mtok(*argv, ok=True):
    r = subprocess.run([a.mtok, *argv], capture_output=True, text=True, timeout=300)
    if ok:
        check(r.returncode == 0, f"mtok {' '.join(argv[:4])}: exit {r.returncode}: {r.stderr[-500:]}")
    return r


r = mtok("synth", "--preset", "glm4-tiny", "--out", model)
if r.returncode:
    sys.exit(1)

# ---- the tokenizer, read from its own files ----
ranks = {}
with open(os.path.join(model, "tokenizer.model")) as f:
    for line in f:
        b64, rk = line.split()
        ranks[int(rk)] = base64.b64decode(b64)
specials = {v["content"]: int(k) for k, v in
            json.load(open(os.path.join(model, "tokenizer_config.json")))["added_tokens_decoder"].items()}
N_VALID = max(max(ranks), max(specials.values())) + 1
GMASK, SOP, USER, ASST, EOT = (specials[s] for s in ("[gMASK]", "<sop>", "<|user|>", "<|assistant|>", "<|endoftext|>"))
CONFIG_EOS = json.load(open(os.path.join(model, "config.json")))["eos_token_id"]


def tok(text, m=model):
    """ids of text without special tokens (tokenizer(text, add_special_tokens=False))"""
    path = os.path.join(tmp, "tok.txt")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    ids = json.loads(mtok("tokenize", "-m", m, "--text-file", path).stdout)
    return ids[2:] if ids[:2] == [GMASK, SOP] else ids


def dec(ids, rk=ranks):
    """decode(ids, skip_special_tokens=True): the bytes, then Python's UTF-8 decoding with replacement"""
    return b"".join(rk[i] for i in ids if i in rk).decode("utf-8", errors="replace")


def cut(text):
    """a line's text ends at a NUL byte (mtok's jsonl reader refuses "\u0000"; docs/EVAL.md §2.1)"""
    return text.split("\x00")[0]


def chat(text):
    return [GMASK, SOP, USER] + tok("\n") + tok(text) + [ASST]


def dumps(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(l) for l in f if l.strip()]


def write_jsonl(path, recs):
    with open(path, "w", encoding="utf-8") as f:
        for r in recs:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def npy_last_row(path):
    """the last row of mtok logits' float32 [n, vocab] .npy"""
    with open(path, "rb") as f:
        data = f.read()
    hl = struct.unpack("<H", data[8:10])[0]
    shape = eval(data[10:10 + hl].decode("latin1"))["shape"]  # the header is a Python dict literal
    n, v = shape
    body = data[10 + hl:]
    return struct.unpack(f"<{v}f", body[(n - 1) * v * 4:n * v * 4])


def greedy(m, prompt, max_new, stops, min_new=0):
    """generate(do_sample=False) from logits: argmax over the tokenizer's ids, stops masked for the
    first min_new tokens, the stop id kept and ending it"""
    out = []
    for step in range(max_new):
        lg = npy_last_row_of(m, prompt + out)
        cand = [k for k in range(N_VALID) if not (step < min_new and k in stops)]
        best = max(cand, key=lambda k: (lg[k], -k))
        out.append(best)
        if best in stops:
            break
    return out


def npy_last_row_of(m, ids):
    path = os.path.join(tmp, "lg.npy")
    mtok("logits", "-m", m, "--tokens", ",".join(map(str, ids)), "--out", path)
    return npy_last_row(path)


# ---- pred.py's v1 rules, stated here ----
prompts1, maxlen1 = json.load(open(P1)), json.load(open(ML1))
RAW = ["trec", "triviaqa", "samsum", "lsht", "lcc", "repobench-p"]


def v1_expect(rec, max_length):
    ds = rec["dataset"]
    if ds not in prompts1 and ds.endswith("_e"):
        ds = ds[:-2]
    prompt = prompts1[ds].format(**rec)
    ids = tok(prompt)
    truncated = len(ids) > max_length
    if truncated:
        half = int(max_length / 2)
        prompt = dec(ids[:half]) + dec(ids[-half:])
    fed = [GMASK, SOP] + tok(prompt) if ds in RAW else chat(prompt)
    return fed, truncated, prompt, maxlen1[ds]


words = ("anna went to the market and bought seven green apples while bob stayed home reading "
         "an old book about ships rivers and the long winter").split()


def text(n, seed):
    return " ".join(words[(i * 7 + seed) % len(words)] for i in range(n)).capitalize() + "."


zh = "安娜去了市场买了七个青苹果，鲍勃在家里读一本关于船和河流的旧书。冬天很长。"
recs = [
    {"input": "Who went to the market?", "context": text(120, 1), "answers": ["Anna"], "length": 120,
     "dataset": "hotpotqa", "language": "en", "all_classes": None, "_id": "hq-1"},
    {"input": "What did Bob read?", "context": text(90, 3), "answers": ["a book"], "length": 90,
     "dataset": "hotpotqa", "language": "en", "all_classes": None, "_id": "hq-2"},
    {"input": "谁去了市场？", "context": zh * 3, "answers": ["安娜"], "length": 120, "dataset": "multifieldqa_zh",
     "language": "zh", "all_classes": None, "_id": "zh-1"},
    {"input": "鲍勃读什么？", "context": zh * 4 + "很", "answers": ["旧书"], "length": 160,
     "dataset": "multifieldqa_zh", "language": "zh", "all_classes": None, "_id": "zh-2"},
    {"input": "unused", "context": "A short report: {input} is {not} a field here.", "answers": ["short"],
     "length": 9, "dataset": "gov_report", "language": "en", "all_classes": None, "_id": "gr-1"},
    {"input": "What city is the capital?", "context": "Question: Who wrote it?\nType: Human\n", "answers": ["Location"],
     "length": 12, "dataset": "trec", "language": "en", "all_classes": ["Human", "Location"], "_id": "tr-1"},
    {"input": "", "context": "def f(x):\n    return x + 1\n", "answers": ["    pass"], "length": 8,
     "dataset": "lcc", "language": "en", "all_classes": None, "_id": "lc-1"},
    {"input": "Who stayed home?", "context": text(100, 5), "answers": ["Bob"], "length": 100,
     "dataset": "hotpotqa_e", "language": "en", "all_classes": None, "_id": "he-1"},
]
data1 = os.path.join(tmp, "v1.jsonl")
write_jsonl(data1, recs)
MAXLEN = 75  # odd: int(75 / 2) = 37 tokens each side
out1, dump1 = os.path.join(tmp, "v1.preds.jsonl"), os.path.join(tmp, "v1.dump.jsonl")
mtok("eval", "-m", model, "--data", data1, "--out", out1, "--prompts", P1, "--maxlen", ML1, "--max-length",
     str(MAXLEN), "--dump-prompts", dump1)
d1 = {d["data_line"]: d for d in dumps(dump1)}
p1 = {p["data_line"]: p for p in dumps(out1)}
check(len(d1) == len(recs) and len(p1) == len(recs), f"v1: {len(d1)} dumps, {len(p1)} predictions for {len(recs)}")
split_char = False
for ln, rec in enumerate(recs, 1):
    fed, truncated, prompt, max_new = v1_expect(rec, MAXLEN)
    d, p = d1.get(ln), p1.get(ln)
    if not check(d is not None and p is not None, f"v1 line {ln}: no dump or prediction"):
        continue
    split_char |= truncated and "\ufffd" in prompt
    check(d["ids"] == fed, f"v1 {rec['_id']}: fed ids differ from pred.py's ({len(d['ids'])} vs {len(fed)} tokens)")
    check(d["truncated"] == truncated and d["max_new"] == max_new and d["max_length"] == MAXLEN,
          f"v1 {rec['_id']}: truncated {d['truncated']} max_new {d['max_new']}, expected {truncated} {max_new}")
    check(len(d["gen"]) <= max_new and (len(d["gen"]) == max_new or d["gen"][-1] in CONFIG_EOS),
          f"v1 {rec['_id']}: {len(d['gen'])} tokens generated, neither {max_new} nor ended by an eos id")
    check(p["pred"] == cut(dec(d["gen"])), f"v1 {rec['_id']}: pred is not the generated ids decoded without specials")
    check(list(p)[:4] == ["pred", "answers", "all_classes", "length"], f"v1 {rec['_id']}: line layout {list(p)}")
    check(p["answers"] == rec["answers"] and p["all_classes"] == rec["all_classes"] and p["length"] == rec["length"],
          f"v1 {rec['_id']}: answers / all_classes / length not the record's")
check(split_char, "v1: no truncation cut a character (the fixture should test U+FFFD halves)")
check(sum(d["truncated"] for d in d1.values()) >= 4, "v1: fewer than 4 prompts truncated")

# the default max length: the context less the answer's budget and 16
out_d, dump_d = os.path.join(tmp, "vd.preds.jsonl"), os.path.join(tmp, "vd.dump.jsonl")
mtok("eval", "-m", model, "--ctx", "160", "--data", data1, "--out", out_d, "--prompts", P1, "--maxlen", ML1,
     "--dump-prompts", dump_d)
for d in dumps(dump_d):
    rec = recs[d["data_line"] - 1]
    want = 160 - maxlen1[rec["dataset"].replace("_e", "")] - 16
    fed, truncated, _, _ = v1_expect(rec, want)
    check(d["max_length"] == want and d["ids"] == fed and d["truncated"] == truncated,
          f"default max length, {rec['_id']}: {d['max_length']} (want {want}), ids equal: {d['ids'] == fed}")

# LongBench's layout: a folder of <dataset>.jsonl that --score reads as eval.py does
sdir = os.path.join(tmp, "pred", "tiny")
os.makedirs(sdir)
hq = os.path.join(tmp, "hq.jsonl")
write_jsonl(hq, [r for r in recs if r["dataset"] == "hotpotqa"])
mtok("eval", "-m", model, "--data", hq, "--out", os.path.join(sdir, "hotpotqa.jsonl"), "--prompts", P1, "--maxlen",
     ML1, "--max-length", str(MAXLEN))
r = mtok("eval", "--score", sdir)
check(r.returncode == 0 and '"hotpotqa"' in r.stdout, f"--score DIR on mtok's own lines: {r.stdout}{r.stderr}")

# --resume: the kept lines stay byte for byte, only the missing records run
with open(out1, "rb") as f:
    lines = f.read().splitlines(keepends=True)
with open(out1, "wb") as f:
    f.writelines(lines[:5])
n_dump = len(dumps(dump1))
mtok("eval", "-m", model, "--data", data1, "--out", out1, "--prompts", P1, "--maxlen", ML1, "--max-length",
     str(MAXLEN), "--dump-prompts", dump1, "--resume")
with open(out1, "rb") as f:
    now = f.read().splitlines(keepends=True)
check(now[:5] == lines[:5] and len(now) == len(recs), f"v1 --resume: {len(now)} lines, kept ones equal: {now[:5] == lines[:5]}")
check(len(dumps(dump1)) - n_dump == len(recs) - 5, f"v1 --resume ran {len(dumps(dump1)) - n_dump} records, not {len(recs) - 5}")

# template errors as Python's str.format raises them
bad = os.path.join(tmp, "bad_prompts.json")
for tmpl, msg in (("one } brace {context}", "Single '}'"), ("{context} and {nothere}", "nothere"),
                  ("{context} {input!r}", "conversions")):
    with open(bad, "w") as f:
        json.dump({"hotpotqa": tmpl}, f)
    r = mtok("eval", "-m", model, "--data", hq, "--out", os.path.join(tmp, "bad.jsonl"), "--prompts", bad, "-n", "2",
             ok=False)
    check(r.returncode == 2 and msg in r.stderr, f"template {tmpl!r}: exit {r.returncode}, {r.stderr.strip()[-200:]}")
gr = prompts1["gov_report"].format(**recs[4])  # the fixture's literal braces, a context's "{input}" left as it is
check("{in a few sentences}" in gr and "like }." in gr and "{input} is {not}" in gr, f"gov_report's prompt: {gr!r}")

# ---- 2. samsum: stops at the tokenizer's eos or the newline, and not on its first token ----
def swapped_model(name, x):
    """the tiny model with a tokenizer whose newline is id x (ranks of "\\n" and x exchanged)"""
    d = os.path.join(tmp, name)
    os.makedirs(d)
    for fn in os.listdir(model):
        if fn != "tokenizer.model":
            os.symlink(os.path.join(model, fn), os.path.join(d, fn))
    rk = dict(ranks)
    nl = [k for k, v in ranks.items() if v == b"\n"][0]
    rk[nl], rk[x] = rk[x], rk[nl]
    with open(os.path.join(d, "tokenizer.model"), "w") as f:
        for i in sorted(rk):
            f.write(base64.b64encode(rk[i]).decode() + f" {i}\n")
    return d, rk


def samsum_case(want_at):
    """a dialogue whose greedy answer's token want_at (0-based), made the newline by a swapped
    tokenizer, leaves the prompt's ids as they were; returns (model dir, ranks, record, ids, natural)"""
    for seed in range(40):
        rec = {"input": f"Dialogue: Tom: {text(6, seed)} Amy: {text(5, seed + 2)} Summary:", "context":
               f"Dialogue: Ben: {text(7, seed + 1)} Summary: Ben talks.", "answers": ["x"], "length": 20,
               "dataset": "samsum", "language": "en", "all_classes": None, "_id": f"ss-{want_at}-{seed}"}
        prompt = prompts1["samsum"].format(**rec)
        if "\n" in prompt:
            continue
        ids = [GMASK, SOP] + tok(prompt)
        nat = greedy(model, ids, want_at + 1, [])
        x = nat[want_at]
        if x >= len(ranks) or x in nat[:want_at] or ranks[x] == b"\n" or ranks[x] in prompt.encode():
            continue
        d, rk = swapped_model(f"nl{want_at}-{seed}", x)
        if [GMASK, SOP] + tok(prompt, d) != ids:
            shutil.rmtree(d)
            continue
        return d, rk, rec, ids, x
    return None


for want_at in (0, 2):
    case = samsum_case(want_at)
    if not check(case is not None, f"samsum: no dialogue found whose greedy token {want_at} can be the newline"):
        continue
    d, rk, rec, ids, nl = case
    data = os.path.join(tmp, f"ss{want_at}.jsonl")
    write_jsonl(data, [rec])
    out, dump = os.path.join(tmp, f"ss{want_at}.preds.jsonl"), os.path.join(tmp, f"ss{want_at}.dump.jsonl")
    mtok("eval", "-m", d, "--data", data, "--out", out, "--prompts", P1, "--maxlen", ML1, "--dump-prompts", dump)
    dd, pp = dumps(dump), dumps(out)
    if not check(len(dd) == 1 and len(pp) == 1, f"samsum {want_at}: {len(dd)} dumps"):
        continue
    # pred.py: eos_token_id=[tokenizer.eos_token_id, encode("\n")[-1]] (replacing the model's), min_length=context+1
    want = greedy(d, ids, maxlen1["samsum"], [EOT, nl], min_new=1)
    check(dd[0]["ids"] == ids, f"samsum {want_at}: fed ids are not [gMASK]<sop> + the raw prompt")
    check(dd[0]["gen"] == want, f"samsum {want_at}: generated {dd[0]['gen']}, pred.py's rules give {want}")
    check(pp[0]["pred"] == cut(dec(want, rk)), f"samsum {want_at}: pred {pp[0]['pred']!r}, want {dec(want, rk)!r}")
    if want_at == 0:
        check(dd[0]["gen"][:1] != [nl], "samsum: the first token was the newline (min_length ignored)")
    else:
        check(dd[0]["gen"][-1] == nl and len(dd[0]["gen"]) == 3 and pp[0]["pred"].endswith("\n"),
              f"samsum: did not stop at the newline with it kept: {dd[0]['gen']} {pp[0]['pred']!r}")


# ---- 3. LongBench v2 ----
def v2_prompt(tmpl, rec, cot=None):
    p = tmpl.replace('$DOC$', rec["context"].strip()).replace('$Q$', rec["question"].strip())
    for c in "ABCD":
        p = p.replace(f"$C_{c}$", rec[f"choice_{c}"].strip())
    return p.replace('$COT$', cot) if cot is not None else p


def v2_fed(prompt, max_len):
    """query_llm: tokenizer.encode counts [gMASK]<sop>; the kept ids decoded as one text; the server's chat template"""
    ids = [GMASK, SOP] + tok(prompt)
    if len(ids) > max_len:
        ids = ids[:max_len // 2] + ids[-max_len // 2:]
        prompt = dec(ids)
    return chat(prompt)


t0, tcot, tans = (open(os.path.join(P2, n), encoding="utf-8").read() for n in
                  ("0shot.txt", "0shot_cot.txt", "0shot_cot_ans.txt"))
v2recs = [
    {"_id": "v2-a", "domain": "Single-Document QA", "sub_domain": "Novel", "difficulty": "easy", "length": "short",
     "question": "  Who went to the market?\n", "choice_A": " Anna", "choice_B": "Bob ", "choice_C": "Tom",
     "choice_D": "Amy", "answer": "A", "context": "\n " + text(700, 2) + " \n"},
    {"_id": "v2-b", "domain": "Code", "sub_domain": "Repo", "difficulty": "hard", "length": "medium",
     "question": "Which choice?", "choice_A": "one", "choice_B": "two", "choice_C": "three", "choice_D": "four",
     "answer": "C", "context": "A document that names $Q$ and $C_A$ literally. " + zh * 2},
]
data2 = os.path.join(tmp, "v2.jsonl")
write_jsonl(data2, v2recs)
V2LEN = 121  # odd: 60 tokens kept at the head, 61 at the tail
for cot in (False, True):
    tag = "cot" if cot else "0shot"
    out, dump = os.path.join(tmp, f"v2{tag}", "GLM.jsonl"), os.path.join(tmp, f"v2{tag}.dump.jsonl")
    os.makedirs(os.path.dirname(out))
    mtok("eval", "-m", model, "--data", data2, "--out", out, "--prompts", P2, "--max-length", str(V2LEN),
         "--dump-prompts", dump, *(["--cot"] if cot else []))
    dd, pp = dumps(dump), {p["_id"]: p for p in dumps(out)}
    check(len(dd) == len(v2recs) * (2 if cot else 1), f"v2 {tag}: {len(dd)} passes")
    trunc = 0
    for rec in v2recs:
        mine = [x for x in dd if x["data_line"] == v2recs.index(rec) + 1]
        p = pp.get(rec["_id"])
        if not check(p is not None and len(mine) == (2 if cot else 1), f"v2 {tag} {rec['_id']}: missing"):
            continue
        response_cot = None
        if cot:
            first = mine[0]
            fed = v2_fed(v2_prompt(tcot, rec), V2LEN)
            check(first["pass"] == "cot" and first["max_new"] == 1024 and first["ids"] == fed,
                  f"v2 cot {rec['_id']}: the CoT pass's ids or budget differ from pred.py's")
            response_cot = dec(first["gen"]).strip()
            check(p.get("response_cot") == cut(response_cot), f"v2 cot {rec['_id']}: response_cot is not the CoT stripped")
        last = mine[-1]
        prompt = v2_prompt(tans if cot else t0, rec, response_cot)
        fed = v2_fed(prompt, V2LEN)
        trunc += len([GMASK, SOP] + tok(prompt)) > V2LEN
        check(last["pass"] == "answer" and last["max_new"] == 128 and last["ids"] == fed,
              f"v2 {tag} {rec['_id']}: the answer pass's ids or budget differ from pred.py's")
        response = dec(last["gen"]).strip()
        keys = ["_id", "domain", "sub_domain", "difficulty", "length", "question", "choice_A", "choice_B", "choice_C",
                "choice_D", "answer", "context"] + (["response_cot"] if cot else []) + ["response", "pred", "judge"]
        check(list(p)[:len(keys)] == keys, f"v2 {tag}: layout {list(p)}")
        check(p["context"] == rec["context"][:1000] and p["response"] == cut(response) and p["pred"] is None and
              p["judge"] is False, f"v2 {tag} {rec['_id']}: context / response / pred / judge")
    check(trunc >= 1, f"v2 {tag}: no prompt truncated")
    # v2's result.py reads the folder
    r = mtok("eval", "--score", os.path.dirname(out))
    check(r.returncode == 0 and "GLM" in r.stdout, f"v2 {tag} --score DIR: {r.stdout}{r.stderr}")
    r = mtok("eval", "--score", out)  # one v2 file: its accuracy (no letter was extracted: 0)
    check(r.returncode == 0 and '"metric":"accuracy","score":0.0' in r.stdout, f"v2 {tag} --score FILE: {r.stdout}")
    # --resume accepts v2's lines (answer, pred null) and runs only the missing record
    with open(out, "rb") as f:
        lines = f.read().splitlines(keepends=True)
    with open(out, "wb") as f:
        f.writelines(lines[:1])
    n = len(dumps(dump))
    mtok("eval", "-m", model, "--data", data2, "--out", out, "--prompts", P2, "--max-length", str(V2LEN),
         "--dump-prompts", dump, "--resume", *(["--cot"] if cot else []))
    with open(out, "rb") as f:
        now = f.read().splitlines(keepends=True)
    check(now[:1] == lines[:1] and len(now) == 2 and len(dumps(dump)) - n == (2 if cot else 1),
          f"v2 {tag} --resume: {len(now)} lines, {len(dumps(dump)) - n} passes run")

r = mtok("eval", "-m", model, "--data", data2, "--out", os.path.join(tmp, "noprompts.jsonl"), "-n", "2", ok=False)
check(r.returncode == 2 and "--prompts" in r.stderr, f"v2 without --prompts: exit {r.returncode} {r.stderr[-200:]}")

if fails:
    print(f"{len(fails)} failures")
    sys.exit(1)
shutil.rmtree(tmp, ignore_errors=True)
print("ok")
