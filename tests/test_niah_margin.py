#!/usr/bin/env python3
"""The needle model's planted circuit, measured with the independent numpy reference
(tests/ref/glm_ref.py), not with mtok's forward pass.

A ~2K-token prompt (Genesis haystack, one <|fact:K:V|>, three distractor facts with other keys, the
question <|ask:K|> and the answer prefix <|ask:K|>) goes through glm_ref.forward with a hook on
layer 1. At the answer position, head 0's attention scores q.k/sqrt(128) must give:
  - the needle a margin over every other position of at least ln(1e6) + 6 (enough for a softmax over
    a million haystack tokens whose scores spread like these), and at most 100 ("tens, not hundreds",
    docs/DESIGN.md §5, so a scale bug still shows);
  - the distractor facts no advantage over the haystack;
and the logits must put <|val:V|> first by a clear margin. mtok's own logits (mtok logits) must
agree on the argmax. The figures are printed for docs/NEEDLE.md.
Exit 77 when numpy is missing."""
import math
import os
import subprocess
import sys
import tempfile

from harness import args, numpy_or_skip

a = args()
np = numpy_or_skip()
sys.path.insert(0, os.path.join(a.src, "tests", "ref"))
import glm_ref  # noqa: E402

tmp = tempfile.mkdtemp(prefix="mtok-margin-")
model = os.path.join(tmp, "needle")
r = subprocess.run([a.mtok, "synth", "--preset", "needle", "--out", model], capture_output=True, text=True)
if r.returncode:
    print(r.stderr)
    sys.exit(1)

corpus = open(os.path.join(a.src, "eval", "corpus_kjv.c")).read()
text = "".join(l.strip()[1:-1] for l in corpus.splitlines() if l.strip().startswith('"') and l.strip().endswith('"'))
text = text.replace('\\"', '"').replace("\\n", "\n")[:8000]
cut = [i + 1 for i, ch in enumerate(text) if ch == "." and i + 1 < len(text) and text[i + 1] == " "]
K, V = 5, 37
a1, a2 = cut[len(cut) // 3], cut[2 * len(cut) // 3]
prompt = ("[gMASK]<sop><|user|>\n" + text[:cut[5]] + "<|fact:9:3|>" + text[cut[5]:a1] + f"<|fact:{K}:{V}|>" +
          text[a1:a2] + "<|fact:2:37|>" + text[a2:] + "<|fact:11:60|>\n" + f"<|ask:{K}|><|assistant|><|ask:{K}|>")
pf = os.path.join(tmp, "prompt.txt")
open(pf, "w").write(prompt)
r = subprocess.run([a.mtok, "tokenize", "-m", model, "--text-file", pf, "--special"], capture_output=True, text=True)
ids = [int(x) for x in r.stdout.strip()[1:-1].split(",")]
n = len(ids)
m = glm_ref.load_model(model)
cap = {}


def hook(name, layer, arr):
    if layer == m.cfg.n_layers - 1 and name in ("q", "k"):
        cap[name] = arr


logits = glm_ref.forward(m, ids, dtype=np.float64, kv_bf16=True, hook=hook)
q, k = cap["q"], cap["k"]
s = (k[:, 0, :] @ q[-1, 0, :]) / math.sqrt(m.cfg.head_dim)
# positions of the facts: the ids of <|fact:K:V|> are first_extra + K*64 + V
tok_ids = subprocess.run([a.mtok, "tokenize", "-m", model, "--special", "--text", f"<|fact:{K}:{V}|><|fact:9:3|>"
                          f"<|fact:2:37|><|fact:11:60|><|val:{V}|>"], capture_output=True, text=True).stdout
fid, d1, d2, d3, vid = [int(x) for x in tok_ids.strip()[1:-1].split(",")]
pos = ids.index(fid)
others = np.delete(s, pos)
dist = np.array([s[ids.index(d)] for d in (d1, d2, d3)])
hay = np.delete(s, [pos] + [ids.index(d) for d in (d1, d2, d3)])
margin = s[pos] - others.max()
# a softmax over N haystack tokens scoring like these: needle weight = 1 / (1 + N * E[exp(s - s_needle)])
lse_1m = math.log(1e6) + math.log(np.mean(np.exp(hay - hay.max()))) + hay.max()
w_1m = 1.0 / (1.0 + math.exp(lse_1m - s[pos]))
lg = logits[-1]
order = np.argsort(lg)[::-1]
print(f"prompt {n} tokens; head 0 of layer {m.cfg.n_layers - 1} at the answer position:")
print(f"  needle score {s[pos]:.2f}; haystack mean {hay.mean():.2f} std {hay.std():.2f} max {hay.max():.2f}; "
      f"distractor facts {', '.join('%.2f' % x for x in dist)}")
print(f"  margin over every other position {margin:.2f}; ln(1e6) = {math.log(1e6):.2f}; "
      f"needle weight against 1M such haystack tokens {w_1m:.9f}")
print(f"  logits: <|val:{V}|> {lg[vid]:.2f}, next best id {order[1]} {lg[order[1]]:.2f} "
      f"(margin {lg[vid] - lg[order[1]]:.2f}); argmax id {order[0]}")
fails = []
if not (math.log(1e6) + 6 <= margin <= 100):
    fails.append(f"attention margin {margin:.2f} outside [ln(1e6)+6, 100]")
if dist.max() > hay.max() + 1.0:
    fails.append(f"a distractor fact scores {dist.max():.2f} above the haystack max {hay.max():.2f}")
if w_1m < 0.999:
    fails.append(f"needle weight against 1M haystack tokens {w_1m}")
if order[0] != vid or lg[vid] - lg[order[1]] < 5:
    fails.append(f"logits: argmax {order[0]} (want {vid}), margin {lg[vid] - lg[order[1]]:.2f}")
# mtok's forward pass agrees on the answer
npy = os.path.join(tmp, "l.npy")
r = subprocess.run([a.mtok, "logits", "-m", model, "--tokens", ",".join(map(str, ids)), "--out", npy],
                   capture_output=True, text=True)
if r.returncode:
    fails.append("mtok logits: " + r.stderr[-300:])
else:
    ml = np.load(npy)[-1]
    if int(np.argmax(ml[:len(lg)])) != vid:
        fails.append(f"mtok's argmax {int(np.argmax(ml))} != <|val:{V}|> ({vid})")
    print(f"  mtok: <|val:{V}|> logit {ml[vid]:.2f} (reference {lg[vid]:.2f})")
for f in fails:
    print("FAIL:", f)
sys.exit(1 if fails else 0)
