#!/usr/bin/env python3
"""`mtok serve` driven by lm-evaluation-harness, the client docs/SERVER.md tells users to point at it,
on the synthetic glm4-tiny model (its tokenizer has the GLM-4 special tokens).

- the server starts on --port 0, says where it listens, and /health turns 200 once loaded;
- loglikelihood, checked independently of lm-eval: POST /v1/completions with token ids, echo,
  logprobs 1, max_tokens 1, temperature 0 returns every prompt token's logprob equal (1e-4) to a
  float64 log-softmax of `mtok logits` over the tokenizer's ids, the generated token is the argmax,
  and wherever the token is the argmax its logprob equals max(top_logprobs) exactly (lm-eval's
  is_greedy test compares them with !=);
- `lm_eval --model local-completions` (token-id prompts, remote tokenizer via /tokenizer_info and
  /tokenize) on a 5-question multiple-choice task writes numeric metrics, acc agrees with the
  per-choice loglikelihoods it logged, and every one of its 16 loglikelihoods (and is_greedy)
  equals what `mtok logits` gives with lm-eval's context/continuation split;
- a prompt whose greedy next token is an end-of-turn id still gets that token in the echo arrays
  (lm-eval drops the last entry unconditionally, so without it the last prompt token is lost);
- `lm_eval --model local-chat-completions --apply_chat_template` on a 3-prompt generation task
  writes numeric metrics, and its greedy answer to the first prompt is what `mtok generate --chat`
  answers;
- the per-request log lines carry no prompt text, and SIGTERM stops the server with exit 0.

Needs the `openai` and `lm_eval` packages (scripts/install-test-clients.sh): without them it skips
(exit 77), except under CI (env CI set), where their absence is an install bug and fails."""
import glob
import importlib.util
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

from harness import args, numpy_or_skip

a = args()
missing = [m for m in ("lm_eval", "openai") if importlib.util.find_spec(m) is None]
if missing:
    if os.environ.get("CI"):
        print(f"FAIL python packages {missing} missing under CI: scripts/install-test-clients.sh did not run?")
        sys.exit(1)
    print(f"python packages {missing} missing (scripts/install-test-clients.sh): skipped")
    sys.exit(77)
np = numpy_or_skip()
import openai  # noqa: E402  (after the skip check above)

NAME = "mtok-tiny"  # --served-model-name; lm-eval names its output folder after it
CTX = 4096
TOL = 1e-4
work = tempfile.mkdtemp(prefix="mtok-serve-lmeval-")
DATA = os.path.join(os.path.abspath(a.src), "tests", "data", "lmeval")
ENV = dict(os.environ, OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "passive"),
           XDG_CACHE_HOME=os.path.join(work, "cache"))
# lm-eval and HF datasets: caches in the test folder, never the network (the tasks are local files)
LM_ENV = dict(ENV, HF_HOME=os.path.join(work, "hf"), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
              TOKENIZERS_PARALLELISM="false")
bad = 0


def check(ok, what):
    global bad
    bad += not ok
    print(f"{'ok  ' if ok else 'FAIL'} {what}", flush=True)
    return ok


def mtok(*argv, timeout=120):
    p = subprocess.run([a.mtok, *argv], capture_output=True, timeout=timeout, env=ENV)
    assert p.returncode == 0, f"mtok {' '.join(argv[:3])}: rc={p.returncode} {p.stderr.decode(errors='replace')}"
    return p


def http(base, method, path, body=None, timeout=60):
    """(status, parsed JSON or None, raw body text)"""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, raw = r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read().decode(errors="replace")
    try:
        return status, json.loads(raw), raw
    except ValueError:
        return status, None, raw


def log_softmax_rows(logits, n_valid):
    """float64 log-softmax over the ids the tokenizer has (rows past it are output-layer padding)"""
    x = logits[:, :n_valid].astype(np.float64)
    m = x.max(axis=1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=1, keepdims=True))


def ref_logprobs(ids):
    out = os.path.join(work, "ref.npy")
    mtok("logits", "-m", model, "--tokens", ",".join(map(str, ids)), "--out", out)
    lg = np.load(out)
    assert lg.shape[0] == len(ids), lg.shape
    return log_softmax_rows(lg, n_valid)


def wait_for(pred, seconds, what):
    """bounded poll: the server is a separate process, its progress is only visible from outside"""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        if srv.poll() is not None:
            raise RuntimeError(f"mtok serve exited ({srv.returncode}) while waiting for {what}:\n{serve_log()}")
        time.sleep(0.05)
    raise RuntimeError(f"timed out after {seconds} s waiting for {what}:\n{serve_log()}")


def serve_log():
    with open(log_path, encoding="utf-8", errors="replace") as f:
        return f.read()


def lm_eval(model_type, model_args, task, out, *extra):
    """lm_eval's command line, as a user runs it; from the task folder, which names its data
    files relative to the working directory"""
    cmd = [sys.executable, "-m", "lm_eval", "--model", model_type, "--model_args", model_args,
           "--tasks", task, "--include_path", DATA, "--output_path", out, "--log_samples", *extra]
    p = subprocess.run(cmd, cwd=DATA, capture_output=True, text=True, timeout=180, env=LM_ENV)
    if not check(p.returncode == 0, f"lm_eval {model_type} {task}: exit 0"):
        print(p.stdout[-3000:], p.stderr[-6000:], sep="\n")
        return None, []
    res = glob.glob(os.path.join(out, "**", "results_*.json"), recursive=True)
    smp = glob.glob(os.path.join(out, "**", f"samples_{task}_*.jsonl"), recursive=True)
    if not check(len(res) == 1 and len(smp) == 1, f"{task}: one results JSON and one samples file written"):
        return None, []
    with open(res[0]) as f:
        results = json.load(f)["results"].get(task, {})
    with open(smp[0]) as f:
        samples = sorted((json.loads(l) for l in f if l.strip()), key=lambda s: s["doc_id"])
    return results, samples


def numeric(results, key):
    v = results.get(key) if results else None
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


srv = None
try:
    model = os.path.join(work, "tiny")
    mtok("synth", "--preset", "glm4-tiny", "--out", model, "-q")
    # the tokenizer's id count: ids at or past it are padding rows of the output layer, which the
    # server's log-softmax leaves out (as the sampler does); and the end-of-turn ids
    info = mtok("info", "-m", model).stdout.decode()
    m = re.search(r"^tokenizer: (\d+) ids", info, re.M)
    sm = re.search(r"^\s*stop ids: ([\d ]+)$", info, re.M)
    assert m and sm, "mtok info prints no tokenizer size or stop ids"
    n_valid, stop_ids = int(m.group(1)), {int(x) for x in sm.group(1).split()}

    # --- the server: --port 0, the bound address from its first line, /health polled until ready
    log_path = os.path.join(work, "serve.log")
    with open(log_path, "w") as log:
        srv = subprocess.Popen([a.mtok, "serve", "-m", model, "--port", "0", "--served-model-name", NAME,
                                "--ctx", str(CTX), "--threads", "2"],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log, env=ENV)
    hostport = wait_for(lambda: re.search(r"mtok serve: listening on http://([^\s/]+):(\d+)", serve_log()),
                        30, "the listening line")
    port = int(hostport.group(2))
    check(port > 0, f"--port 0 bound port {port}")
    base = f"http://127.0.0.1:{port}"

    def health_ok():
        try:
            st, body, _ = http(base, "GET", "/health", timeout=5)
        except OSError:
            return None
        return st == 200 and body == {"status": "ok"}

    wait_for(health_ok, 60, "GET /health 200")
    # the flag /health reads may be set just before the line is written: poll, briefly
    wait_for(lambda: "mtok serve: ready" in serve_log(), 10, "the 'mtok serve: ready' line")

    # --- the openai client lists the served model
    client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=60)
    ids_listed = [mdl.id for mdl in client.models.list().data]
    check(ids_listed == [NAME], f"openai client: /v1/models lists {ids_listed}")

    # --- loglikelihood against mtok logits: an ASCII prompt, then 6 greedy tokens appended so that
    # some positions hold the argmax (on a random model the prompt's own tokens rarely do)
    text = "Question: where do boats sail? Answer: on the sea"
    ids = json.loads(mtok("tokenize", "-m", model, "--text", text).stdout)
    st, tk, _ = http(base, "POST", "/tokenize", {"prompt": text, "add_special_tokens": False})
    check(st == 200 and tk and tk.get("tokens") == ids and tk.get("count") == len(ids),
          f"/tokenize gives mtok tokenize's {len(ids)} ids")
    n_text = len(ids)
    for _ in range(6):
        ids.append(int(np.argmax(ref_logprobs(ids)[-1])))
    lsm = ref_logprobs(ids)
    n = len(ids)
    st, r, raw = http(base, "POST", "/v1/completions",
                      {"model": "anything", "prompt": [ids], "echo": True, "logprobs": 1, "max_tokens": 1,
                       "temperature": 0})
    ok = check(st == 200 and r and len(r.get("choices", [])) == 1, f"/v1/completions echo+logprobs: 200 ({raw[:200]})")
    if ok:
        ch = r["choices"][0]
        lp = ch.get("logprobs") or {}
        tl, top, toks = lp.get("token_logprobs", []), lp.get("top_logprobs", []), lp.get("tokens", [])
        ok = check(len(tl) == n + 1 and len(top) == n + 1 and len(toks) == n + 1
                   and len(lp.get("text_offset", [])) == n + 1,
                   f"echo arrays hold the {n} prompt tokens and the generated one (got {len(tl)})")
    if ok:
        check(tl[0] is None and top[0] is None, "first prompt token: null logprob and top_logprobs")
        got = np.array(tl[1:n], dtype=np.float64)
        want = np.array([lsm[j - 1, ids[j]] for j in range(1, n)])
        err = float(np.max(np.abs(got - want)))
        check(err < TOL, f"prompt token logprobs = log-softmax of mtok logits (max |diff| {err:.2e})")
        top_err = max(abs(max(top[j].values()) - lsm[j - 1].max()) for j in range(1, n + 1))
        check(top_err < TOL, f"top_logprobs hold the argmax logprob (max |diff| {top_err:.2e})")
        # exactness where the token is (clearly) the argmax; strictly below where it clearly is not
        srt = np.sort(lsm, axis=1)
        margin = srt[:, -1] - srt[:, -2]
        greedy = [j for j in range(1, n) if ids[j] == int(np.argmax(lsm[j - 1])) and margin[j - 1] > 1e-3]
        other = [j for j in range(1, n) if lsm[j - 1].max() - lsm[j - 1, ids[j]] > 1e-3]
        check(len(greedy) >= 6 and all(tl[j] == max(top[j].values()) for j in greedy),
              f"{len(greedy)} argmax positions: token_logprobs == max(top_logprobs) exactly")
        check(all(tl[j] < max(top[j].values()) for j in other),
              f"{len(other)} non-argmax positions: token_logprobs < max(top_logprobs)")
        check(abs(tl[n] - lsm[n - 1].max()) < TOL and tl[n] == max(top[n].values()),
              "temperature 0: the generated token is the argmax, its logprob that of the top entry")
        check("".join(toks[:n_text]) == text, "echoed token strings spell the prompt")
        offs = lp["text_offset"]

        def chars(t):
            # a byte piece ("bytes:\\xNN..."): the characters it begins (serve/run.c n_chars)
            if t.startswith("bytes:"):
                return sum(1 for b in bytes.fromhex(t[6:].replace("\\x", "")) if b & 0xC0 != 0x80)
            return len(t)
        check(all(offs[j] == sum(chars(t) for t in toks[:j]) for j in range(n + 1)),
              f"text_offset: each token's character offset in the echoed text: {offs[:n + 1]} vs "
              f"{[sum(chars(t) for t in toks[:j]) for j in range(n + 1)]} for {toks[:n + 1]}")
        u = r.get("usage", {})
        check(u.get("prompt_tokens") == n and u.get("completion_tokens") == 1 and u.get("total_tokens") == n + 1,
              f"usage counts {n} prompt + 1 completion tokens ({u})")
        check(ch.get("finish_reason") == "length", f"finish_reason length after max_tokens 1 ({ch.get('finish_reason')})")

    # --- lm-eval, loglikelihood: local-completions with token-id prompts and the remote tokenizer
    out = os.path.join(work, "lm-mc")
    margs = (f"base_url={base}/v1/completions,model={NAME},tokenized_requests=True,max_length={CTX},"
             "num_concurrent=1,max_retries=1")
    results, samples = lm_eval("local-completions", margs, "mtok_mc", out)
    check(numeric(results, "acc,none") and numeric(results, "acc_norm,none") and 0 <= results["acc,none"] <= 1,
          f"mtok_mc: numeric acc and acc_norm ({results and {k: results.get(k) for k in ('acc,none', 'acc_norm,none')}})")
    if check(len(samples) == 5, f"mtok_mc: 5 documents logged ({len(samples)})"):
        lls = [[float(c[0][0]) for c in s["resps"]] for s in samples]
        check(all(math.isfinite(x) and x < 0 for ll in lls for x in ll), "every choice's loglikelihood finite and < 0")
        accs = [float(s["acc"]) for s in samples]
        want_acc = [1.0 if int(np.argmax(ll)) == int(s["doc"]["answer"]) else 0.0 for ll, s in zip(lls, samples)]
        check(accs == want_acc and abs(np.mean(accs) - results["acc,none"]) < 1e-12,
              "acc is the argmax of the logged loglikelihoods, averaged")
        # every request recomputed the way lm-eval splits context and continuation (api/model.py
        # _encode_pair: trailing spaces of the context move to the continuation; the whole string
        # is encoded and the context's ids cut off), with the server's /tokenize as its tokenizer
        worst, greedy_diff, stop_prefix = 0.0, [], None
        for s in samples:
            for k, c in enumerate(s["resps"]):
                arg = s["arguments"][f"gen_args_{k}"]
                ctx, cont = arg["arg_0"], arg["arg_1"]
                sp = len(ctx) - len(ctx.rstrip())
                if sp:
                    ctx, cont = ctx[:-sp], ctx[-sp:] + cont
                whole, cenc = (http(base, "POST", "/tokenize", {"prompt": t, "add_special_tokens": False})[1]["tokens"]
                               for t in (ctx + cont, ctx))
                lsm_w = ref_logprobs(whole)
                ll = sum(lsm_w[j - 1, whole[j]] for j in range(len(cenc), len(whole)))
                gr = all(whole[j] == int(np.argmax(lsm_w[j - 1])) for j in range(len(cenc), len(whole)))
                worst = max(worst, abs(ll - float(c[0][0])))
                if str(gr) != str(c[0][1]):
                    greedy_diff.append((s["doc_id"], k))
                # a prefix whose greedy next token is an end-of-turn id, for the check below
                am = np.argmax(lsm_w, axis=1)
                hit = next((j for j in range(len(whole)) if int(am[j]) in stop_ids), None)
                if stop_prefix is None and hit is not None:
                    stop_prefix = whole[:hit + 1]
        check(worst < 1e-3 and not greedy_diff,
              f"all {sum(len(s['resps']) for s in samples)} requests: lm-eval's loglikelihoods match mtok logits "
              f"(max |diff| {worst:.3g}), is_greedy differs at {greedy_diff}")
        # the generated token stays in the echo arrays when it is an end-of-turn id: lm-eval's
        # [ctxlen:-1] slice always drops the last entry, so without it the last prompt token is lost
        if check(stop_prefix is not None, "some prompt prefix has an end-of-turn id as its greedy next token"):
            n = len(stop_prefix)
            st, r, raw = http(base, "POST", "/v1/completions",
                              {"model": NAME, "prompt": stop_prefix, "echo": True, "logprobs": 1, "max_tokens": 1,
                               "temperature": 0})
            ch = (r or {}).get("choices", [{}])[0]
            lp = ch.get("logprobs") or {}
            check(st == 200 and len(lp.get("token_logprobs", [])) == n + 1
                  and (r.get("usage") or {}).get("completion_tokens") == 1 and ch.get("finish_reason") == "stop",
                  f"greedy end-of-turn after {n} prompt tokens: echo arrays hold {len(lp.get('token_logprobs', []))} "
                  f"entries (want {n + 1}), usage {r and r.get('usage')}, finish {ch.get('finish_reason')}")

    # --- lm-eval, generation: local-chat-completions with the chat template applied by the server
    out = os.path.join(work, "lm-gen")
    margs = f"base_url={base}/v1/chat/completions,model={NAME},num_concurrent=1,max_retries=1"
    results, samples = lm_eval("local-chat-completions", margs, "mtok_gen", out, "--apply_chat_template")
    check(numeric(results, "exact_match,none"), f"mtok_gen: numeric exact_match ({results})")
    if check(len(samples) == 3 and all(isinstance(s["resps"][0][0], str) for s in samples),
             f"mtok_gen: 3 documents with text answers ({len(samples)})"):
        msgs = json.loads(samples[0]["arguments"]["gen_args_0"]["arg_0"][0])
        if check(len(msgs) == 1 and msgs[0]["role"] == "user", f"lm-eval sent one user message ({msgs})"):
            max_gen = samples[0]["arguments"]["gen_args_0"]["arg_1"]["max_gen_toks"]
            p = mtok("generate", "-m", model, "--chat", "-p", msgs[0]["content"], "-n", str(max_gen),
                     "--temperature", "0")
            cli = p.stdout.decode("utf-8", errors="replace")
            cli = cli[:-1] if cli.endswith("\n") else cli  # the newline generate prints after the answer
            got = samples[0]["resps"][0][0]
            check(got == cli, f"greedy chat answer = mtok generate --chat's ({got!r} vs {cli!r})")

    # --- the log: one line per request with its fields, no prompt text (no -v)
    log = serve_log()
    reqs = [l for l in log.splitlines() if l.startswith("mtok serve: req ")]
    fields = ("status=", "prompt=", "cached=", "completion=", "queue_ms=", "finish=")
    check(len(reqs) >= 16 + 3 and all(all(f in l for f in fields) for l in reqs),
          f"{len(reqs)} request log lines, each with {' '.join(fields)}")
    check(not any(q in log for q in ("boats sail", "Name a colour", "colour?")), "no prompt text in the log")

    # --- SIGTERM: stops with exit 0
    srv.send_signal(signal.SIGTERM)
    try:
        rc = srv.wait(timeout=30)
    except subprocess.TimeoutExpired:
        rc = None
    check(rc == 0 and "mtok serve: stopped" in serve_log(), f"SIGTERM: exit {rc}, 'mtok serve: stopped' logged")
except (AssertionError, RuntimeError, OSError, subprocess.TimeoutExpired, KeyError, TypeError, ValueError) as e:
    check(False, f"{type(e).__name__}: {e}")
finally:
    if srv is not None and srv.poll() is None:
        srv.kill()
        srv.wait()
    if bad:
        print(f"kept {work} for inspection")
    else:
        shutil.rmtree(work, ignore_errors=True)
print(f"{'FAILED' if bad else 'passed'}: {bad} failure(s)")
sys.exit(1 if bad else 0)
