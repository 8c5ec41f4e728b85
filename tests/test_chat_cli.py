#!/usr/bin/env python3
"""`mtok chat` end to end on glm4-tiny: several turns from stdin, /reset, EOF. Each turn must only
prefill the tokens after the prefix already in the KV cache (the earlier turns are not recomputed),
and greedy decoding with a reused prefix must equal a fresh one-shot run of the same conversation."""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

ap = argparse.ArgumentParser()
ap.add_argument("--mtok", required=True)
ap.add_argument("--src")
ap.add_argument("--build")
a = ap.parse_args()
tmp = tempfile.mkdtemp(prefix="mtok-chat-")
bad = []
try:
    m = os.path.join(tmp, "tiny")
    subprocess.run([a.mtok, "synth", "--preset", "glm4-tiny", "--out", m, "-q"], check=True, capture_output=True)
    p = subprocess.run([a.mtok, "chat", "-m", m, "-n", "6", "--ignore-eos"], input="Hello there\nTell me more\n/reset\nHi\n",
                       capture_output=True, text=True, timeout=120)
    if p.returncode != 0:
        bad.append(f"chat exited {p.returncode}: {p.stderr}")
    prompts = [int(x) for x in re.findall(r"prompt (\d+) tokens", p.stderr)]
    print("prefilled per turn:", prompts)
    if len(prompts) != 3:
        bad.append(f"expected 3 turns, saw {len(prompts)}")
    else:
        # turn 1: [gMASK]<sop><|user|>\nHello there<|assistant|>; turn 2 adds the reply and one user
        # turn, so it must prefill fewer tokens than the whole conversation holds
        full = subprocess.run([a.mtok, "tokenize", "-m", m, "--text", "Tell me more"], capture_output=True, text=True)
        n_user2 = len(full.stdout.strip("[]\n").split(","))
        if not (prompts[1] < prompts[0] + 6 + n_user2 + 3):
            bad.append(f"turn 2 prefilled {prompts[1]} tokens: the cached prefix was not reused")
        # after /reset only the new conversation runs; its prefix [gMASK]<sop> is still cached
        if prompts[2] > prompts[0]:
            bad.append(f"turn after /reset prefilled {prompts[2]} tokens")
    # the first reply equals `generate --chat` of the same message
    g = subprocess.run([a.mtok, "generate", "-m", m, "--chat", "-p", "Hello there", "-n", "6", "--ignore-eos"],
                       capture_output=True, text=True, timeout=120)
    if g.returncode != 0 or not g.stdout or not p.stdout.startswith(g.stdout):
        bad.append(f"chat reply {p.stdout[:80]!r} differs from generate --chat {g.stdout[:80]!r}")
finally:
    shutil.rmtree(tmp, ignore_errors=True)
for b in bad:
    print("FAIL", b)
print(f"{4 - len(bad)} passed, {len(bad)} failed")
sys.exit(1 if bad else 0)
