#!/usr/bin/env python3
"""Long-document chat (issue 20, item 5) on glm4-tiny, greedy.

- `prefill --chat` saves the document as a user message; `qa --chat` asks each question as the next
  user turn: from the saved KV and from -f DOC the answers are the same, and a KV saved without --chat
  gets a warning.
- `mtok chat -f DOC`, `chat --load-kv F` and `/load DOC` inside the chat hold the same conversation, so
  the first answer equals qa --chat's, and the question turn computes only its own tokens (the
  document was prefilled once). A /load of a missing file is reported and the chat goes on.
- Ctrl-C (SIGINT) while an answer streams stops that answer and the chat takes the next message; at
  the prompt the first Ctrl-C prints a hint and the second ends the chat with exit 0.
Needs only the Python standard library."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

from harness import args

a = args()
MTOK = a.mtok
bad = []
passed = 0


def check(ok, what):
    global passed
    print(("ok   " if ok else "FAIL ") + what)
    if ok:
        passed += 1
    else:
        bad.append(what)


def run(*cmd, stdin=""):
    return subprocess.run([MTOK, *cmd], capture_output=True, text=True, input=stdin, timeout=180)


def prompts(err):
    return [int(x) for x in re.findall(r"prompt (\d+) tokens", err)]


def doc_checks(tmp, model):
    doc = os.path.join(tmp, "doc.txt")
    words = "the keeper of the lighthouse wrote that the blue boat left the harbour at noon".split()
    with open(doc, "w") as f:
        f.write(" ".join(words[(i * 5) % len(words)] for i in range(150)))
    qs = os.path.join(tmp, "q.jsonl")
    with open(qs, "w") as f:
        f.write(json.dumps({"question": "When did the boat leave?"}) + "\n")
        f.write(json.dumps({"question": "Who wrote it?"}) + "\n")
    gen = ["-n", "6", "--ignore-eos"]
    chat_kv, raw_kv = os.path.join(tmp, "chat.kv"), os.path.join(tmp, "raw.kv")
    p = run("prefill", "-m", model, "-f", doc, "--chat", "--save-kv", chat_kv)
    r = run("prefill", "-m", model, "-f", doc, "--save-kv", raw_kv)
    m = re.search(r"prefilled (\d+) tokens", p.stderr)
    n_doc = int(m.group(1)) if m else 0
    check(p.returncode == 0 and r.returncode == 0 and n_doc > 100, f"prefill --chat saved {n_doc} document tokens")

    def answers(*src):
        q = run("qa", "-m", model, *src, "--questions", qs, "--chat", *gen)
        return q, [json.loads(l)["answer"] for l in q.stdout.splitlines() if l.startswith("{")]

    q1, by_kv = answers("--load-kv", chat_kv)
    q2, by_doc = answers("-f", doc)
    check(q1.returncode == 0 and len(by_kv) == 2 and by_kv == by_doc and "without --chat" not in q1.stderr,
          f"qa --chat: the answers from prefill --chat's KV equal those of -f DOC ({by_kv!r})")
    q3, _ = answers("--load-kv", raw_kv)
    check(q3.returncode == 0 and "saved without --chat" in q3.stderr, "qa --chat on a KV saved without --chat warns")
    first = by_kv[0] if by_kv else None

    question = "When did the boat leave?\n"
    for label, cmd, stdin in (("chat -f DOC", ["-f", doc], question),
                              ("chat --load-kv F", ["--load-kv", chat_kv], question),
                              ("/load DOC in the chat", [], f"/load {doc}\n" + question)):
        c = run("chat", "-m", model, *cmd, *gen, stdin=stdin)
        turns = prompts(c.stderr)
        check(c.returncode == 0 and first and c.stdout.startswith(first) and len(turns) == 1 and 0 < turns[0] < 40,
              f"{label}: the first answer equals qa --chat's and the turn computed {turns} tokens, not the document")
    c = run("chat", "-m", model, *gen, stdin=f"/load {os.path.join(tmp, 'missing.txt')}\nHello\n")
    check(c.returncode == 0 and "missing.txt" in c.stderr and len(prompts(c.stderr)) == 1,
          "/load of a missing file: one error line and the chat goes on")


class Reader(threading.Thread):
    """Collects a pipe's bytes as they come, so the test can wait on what the chat printed."""

    def __init__(self, pipe):
        super().__init__(daemon=True)
        self.pipe, self.data, self.lock = pipe, b"", threading.Lock()
        self.start()

    def run(self):
        for chunk in iter(lambda: self.pipe.read1(65536), b""):
            with self.lock:
                self.data += chunk

    def text(self):
        with self.lock:
            return self.data.decode("utf-8", "replace")


def wait_for(cond, what, limit=60):
    """Polls cond (bounded): the chat's output is the only signal of where it is."""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    check(False, f"timed out waiting for {what}")
    return False


def ctrl_c_checks(model):
    # a long answer (the context is the limit) that only Ctrl-C ends soon
    p = subprocess.Popen([MTOK, "chat", "-m", model, "-n", "7000", "--ignore-eos", "--ctx", "8192"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = Reader(p.stdout), Reader(p.stderr)
    try:
        p.stdin.write(b"Hello there\n")
        p.stdin.flush()
        ok = wait_for(lambda: len(out.text()) > 0, "the first answer to stream")
        if ok:
            p.send_signal(signal.SIGINT)
            ok = wait_for(lambda: "finish: cancelled" in err.text(), "the first answer to stop")
        gen = [int(x) for x in re.findall(r"generated (\d+) tokens", err.text())]
        check(ok and p.poll() is None and "[interrupted]" in err.text() and gen and gen[0] < 7000,
              f"Ctrl-C stops the answer after {gen[:1]} of 7000 tokens, the chat stays")
        if ok:  # at the prompt: a hint, and the chat still takes a message
            p.send_signal(signal.SIGINT)
            ok = wait_for(lambda: "Ctrl-C again" in err.text(), "the hint at the prompt")
        if ok:
            n0 = len(out.text())
            p.stdin.write(b"Tell me more\n")
            p.stdin.flush()
            ok = wait_for(lambda: len(out.text()) > n0 + 1, "the second answer to stream")
        if ok:
            p.send_signal(signal.SIGINT)
            ok = wait_for(lambda: err.text().count("finish: cancelled") == 2, "the second answer to stop")
        check(ok and p.poll() is None, "after a Ctrl-C at the prompt the next message is answered (and stopped)")
        if ok:
            p.send_signal(signal.SIGINT)
            ok = wait_for(lambda: err.text().count("Ctrl-C again") == 2, "the second hint")
        if ok:
            p.send_signal(signal.SIGINT)
            ok = wait_for(lambda: p.poll() is not None, "the chat to end")
        check(ok and p.returncode == 0, f"a second Ctrl-C at the prompt ends the chat (exit {p.poll()})")
    finally:
        if p.poll() is None:
            p.kill()
        p.wait()


tmp = tempfile.mkdtemp(prefix="mtok-chatdoc-")
try:
    model = os.path.join(tmp, "tiny")
    s = run("synth", "--preset", "glm4-tiny", "--out", model, "-q")
    if s.returncode:
        print("synth failed:", s.stderr)
        sys.exit(1)
    doc_checks(tmp, model)
    ctrl_c_checks(model)
finally:
    shutil.rmtree(tmp, ignore_errors=True)
print(f"{passed} passed, {len(bad)} failed")
sys.exit(1 if bad else 0)
