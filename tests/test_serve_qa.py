#!/usr/bin/env python3
"""The server's acceptance case: a long document asked many questions over HTTP costs one prefill.

The needle model (docs/NEEDLE.md) serves a 64K-token document (65536 tokens: 128 full chunks of 512);
11 questions are sent as /v1/completions requests whose prompt is the document followed by the
question. Checks:
- every question after the first reuses the whole document: usage.prompt_tokens_details.cached_tokens
  equals the document's length, and the server log's `prompt=P cached=C` fields add up to one document
  prefill plus the questions' own tokens, as `mtok qa`'s summary counts them;
- the answers (greedy) are exactly `mtok qa -f DOC --questions Q.jsonl` on the same document and
  questions.
The needle model reads its circuit only from special tokens, which qa's plain-text document and
questions cannot contain, so its answers barely depend on the question; the same case therefore runs
first on glm4-tiny with an 8K-token document, whose answers do differ between questions (checked),
so a request answered with another question's state would show.

How the requests match `mtok qa` token for token: qa (cli/cmd_kv.c) prefills [gMASK]<sop> + the
document's text (no special-token parsing), then per question truncates back to the document and feeds
document + the question's ids (without --chat: the question's text tokenized alone). The HTTP
requests therefore send token-id prompts, document ids + question ids: a text prompt would be
tokenized as one string and could merge tokens across the document/question boundary.
Bit-identical answers also need the same prefill chunks (docs/SESSION_API.md: a position's bits
depend on the chunk it was computed in): the document is a whole number of chunks, so the first
request's last chunk starts where qa's question chunk starts; and no two questions start with the
same token, so a later request shares exactly the document with the session (which holds the
previous question and answer) and computes its question from the document's end, as qa does.

Size: 64K tokens prefill in ~45 s with 2 threads on the 2-core CI machine (measured with `mtok
prefill` on the needle model), once for qa and once for the server: the test takes about 100 s."""
import json
import os
import random
import shutil
import subprocess
import time

from harness import args
from serve_util import Checks, Server, cli_tokenize, synth, test_env, workdir

a = args()
check = Checks()
work = workdir("mtok-serve-qa-")
env = test_env(work)
CHUNK = 512
N_GEN = 8
CANDIDATES = ["What", "Where", "Who", "Tell", "Name", "Is", "Which", "How", "Does", "Give", "Find", "And", "Say",
              "List", "Whence", "Can", "Did", "Shall", "Then", "Why", "When", "Be", "Unto", "Behold"]
WORDS = "the river stone apple north quiet lamp sea seven green house road and God said unto him land water".split()


def tokens_of_file(model, path):
    p = subprocess.run([a.mtok, "tokenize", "-m", model, "--text-file", path], capture_output=True, text=True,
                       timeout=120, env=env)
    if p.returncode:
        raise RuntimeError(p.stderr)
    return json.loads(p.stdout)


def make_doc(model, n_tokens, seed, path):
    """Random words, then " the" (one token that never merges with the word before it) until
    [gMASK]<sop> + text is exactly n_tokens ids."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        f.write(" ".join(rng.choice(WORDS) for _ in range(1000)))
    per_word = len(tokens_of_file(model, path)) / 1000
    text = " ".join(rng.choice(WORDS) for _ in range(int(0.95 * n_tokens / per_word)))
    the = cli_tokenize(a.mtok, model, " the the", env=env)
    assert len(the) == 2 and the[0] == the[1], f"' the' is not one token: {the}"
    for _ in range(2):
        with open(path, "w") as f:
            f.write(text)
        n = 2 + len(tokens_of_file(model, path))
        if n >= n_tokens:
            break
        text += " the" * (n_tokens - n)
    return n


def questions(model, seed, path):
    """11 questions of random words whose first tokens differ (plain text: qa without --chat)."""
    rng = random.Random(seed)
    qs, firsts = [], set()
    for w in CANDIDATES:
        q = w + " " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9))) + "?"
        ids = cli_tokenize(a.mtok, model, q, env=env)
        if ids[0] not in firsts and len(qs) < 11:
            firsts.add(ids[0])
            qs.append((q, ids))
    with open(path, "w") as f:
        for i, (q, _) in enumerate(qs):
            f.write(json.dumps({"id": i, "question": q}) + "\n")
    return qs


def case(preset, doc_tokens, seed):
    """One document of doc_tokens tokens, 11 questions: mtok qa, then the same over HTTP."""
    tag = f"{preset} {doc_tokens // 1024}K"
    common = ["--chunk", str(CHUNK), "--ctx", str(doc_tokens + 4096), "--threads", "2"]
    model = synth(a.mtok, preset, os.path.join(work, preset), env)
    doc = os.path.join(work, f"{preset}-doc.txt")
    n = make_doc(model, doc_tokens, seed, doc)
    check(n == doc_tokens, f"{tag}: the document is {n} tokens ({doc_tokens // CHUNK} chunks of {CHUNK})")
    qfile = os.path.join(work, f"{preset}-q.jsonl")
    qs = questions(model, seed, qfile)
    check(len(qs) == 11, f"{tag}: 11 questions with distinct first tokens ({len(qs)})")

    t0 = time.monotonic()
    p = subprocess.run([a.mtok, "qa", "-m", model, "-f", doc, "--questions", qfile, "-n", str(N_GEN), *common],
                       capture_output=True, text=True, timeout=600, env=env)
    t_qa = time.monotonic() - t0
    check(p.returncode == 0, f"{tag}: mtok qa: exit {p.returncode} {p.stderr[-500:]}")
    ref = [json.loads(x) for x in p.stdout.splitlines() if x.strip()]
    summ = [x for x in p.stderr.splitlines() if "qa summary " in x]
    summary = json.loads(summ[0].split("qa summary ", 1)[1]) if summ else {}
    print(f"     {tag}: mtok qa in {t_qa:.1f} s: {summary}")
    check(len(ref) == len(qs) and [r["question_tokens"] for r in ref] == [len(ids) for _, ids in qs],
          f"{tag}: mtok qa answered every question, with the question ids computed here")

    t0 = time.monotonic()
    with Server(a.mtok, model, *common, env=env) as srv:
        doc_ids = srv.tokenize(open(doc).read(), add_special_tokens=True)
        check(len(doc_ids) == doc_tokens, f"{tag}: /tokenize of the document with [gMASK]<sop>: {len(doc_ids)} ids")
        mark = srv.mark()
        answers, cached, prompt_tokens = [], [], []
        for i, (q, ids) in enumerate(qs):
            r = srv.post("/v1/completions", {"model": preset, "prompt": doc_ids + ids, "max_tokens": N_GEN,
                                             "temperature": 0}, timeout=300)
            if r.status != 200:
                check(False, f"{tag}: question {i}: {r}")
                break
            u = r.json["usage"]
            answers.append(r.json["choices"][0]["text"])
            cached.append(u["prompt_tokens_details"]["cached_tokens"])
            prompt_tokens.append(u["prompt_tokens"])
        check(answers == [x["answer"] for x in ref], f"{tag}: the answers are mtok qa's: "
              f"{[(i, g, w) for i, (g, w) in enumerate(zip(answers, [x['answer'] for x in ref])) if g != w] or 'all'}")
        print(f"     {tag}: {len(set(answers))} different answers, e.g. {answers[:2]}")
        check(prompt_tokens == [doc_tokens + len(ids) for _, ids in qs], f"{tag}: prompt_tokens: {prompt_tokens}")
        check(len(cached) == len(qs) and cached[0] < doc_tokens and all(c == doc_tokens for c in cached[1:]),
              f"{tag}: questions 2..{len(qs)} reuse the whole document: cached_tokens {cached}")
        log = srv.wait_requests(len(qs), 20, start=mark)
        computed = [int(x["prompt"]) - int(x["cached"]) for x in log if "prompt" in x and "cached" in x]
        print(f"     {tag}: server log, tokens computed per request: {computed}")
        want = doc_tokens + sum(len(ids) for _, ids in qs) - (cached[0] if cached else 0)
        check(len(computed) == len(qs) and sum(computed) == want,
              f"{tag}: the log's prompt - cached adds up to one document prefill plus the questions: "
              f"{sum(computed)} vs {want}")
        check(summary.get("document_tokens_computed") == doc_tokens
              and sum(computed) + (cached[0] if cached else 0) == doc_tokens + summary.get("question_tokens", -1),
              f"{tag}: the same prefill as mtok qa's: document {summary.get('document_tokens_computed')} + questions "
              f"{summary.get('question_tokens')}")
        check(srv.stop() == 0, f"{tag}: SIGTERM: exit 0")
    print(f"     {tag}: server part in {time.monotonic() - t0:.1f} s")
    return answers


try:
    tiny = case("glm4-tiny", 16 * CHUNK, 5)
    check(len(set(tiny)) >= 2, f"glm4-tiny: the answers depend on the question ({len(set(tiny))} different)")
    case("needle", 128 * CHUNK, 7)
except Exception as e:  # noqa: BLE001 - any crash of the test itself is a failure with its trace
    import traceback
    traceback.print_exc()
    check(False, f"test aborted: {type(e).__name__}: {e}")
finally:
    shutil.rmtree(work, ignore_errors=True)
check.exit()
