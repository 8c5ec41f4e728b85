#!/usr/bin/env python3
"""ctest: mtok's logits on the committed fixture checkpoints against the independent numpy reference.

    python3 tests/test_logits_ref.py --mtok BUILD/mtok --src REPO --build BUILD [--ref-only]

For every fixture in tests/data/models/ (see docs/REFERENCE.md) it runs
    mtok logits -m DIR --tokens <520 ids of tokens.txt> --out OUT.npy
(float32 [n_tokens, vocab], docs/DESIGN.md §3), computes tests/ref/glm_ref.py's logits with the fixture's
TRUE RoPE base (g4-hf-wrongtheta says 10000 in config.json; mtok must correct it to 1e8) and requires
per position: cosine >= 0.9999, and the same argmax wherever the reference's top two logits are more than
2e-2 * max|logit| apart. A second, short run (37 tokens) must match the reference's first 37 rows.

Before touching mtok it checks the reference itself:
  - the fixtures are consistent (g2-hf-sharded holds g2-chatglm's weights, g4-hf-wrongtheta g4's; the
    configs give the expected literal RoPE bases);
  - glm_ref agrees with Hugging Face GlmForCausalLM's logits stored in hf_golden_*.npz (written by
    tests/ref/check_against_hf.py with torch; no torch needed here);
  - positive control: a reference with a bf16 KV cache passes the criterion;
  - negative controls: a wrong RoPE base, no QKV bias, NeoX instead of interleaved pairs, a flipped RoPE
    sign, the wrong GQA mapping (h % G), and the literal (wrong) rope_theta of g4-hf-wrongtheta are all
    rejected (min cosine < 0.999) -- the test can fail.
Exit: 0 pass, 1 fail, 77 skip (numpy missing, or no mtok binary: reference checks only).
"""

import argparse
import os
import subprocess
import sys
import tempfile

try:
    import numpy as np
except ImportError:
    print("SKIP: numpy is not installed")
    sys.exit(77)

MIN_COS = 0.9999          # per position, engine vs reference
ARGMAX_MARGIN = 2e-2      # argmax must agree where top1 - top2 > ARGMAX_MARGIN * max|ref logit|
NEG_MAX_COS = 0.999       # a negative control must fall below this somewhere
GOLDEN_MIN_COS = 0.99999  # reference vs HF golden (float16-stored logits)
SHORT_N = 37

# fixture -> (true RoPE base, base literally implied by config.json)
FIXTURES = {
    "g2-chatglm": (5e6, 5e6),
    "g2-hf-sharded": (5e6, 5e6),
    "g4-chatglm-sharded": (1e8, 1e8),
    "g4-hf-wrongtheta": (1e8, 1e4),
}


class Checker:
    def __init__(self):
        self.failures = []

    def fail(self, msg):
        print("FAIL: " + msg)
        self.failures.append(msg)

    def expect(self, cond, msg):
        if not cond:
            self.fail(msg)
        return cond


def criterion(ref_mod, test, ref):
    """(passes, figures) for the engine criterion."""
    r = ref_mod.compare_logits(test, ref, argmax_margin=ARGMAX_MARGIN)
    ok = bool(np.all(np.isfinite(test))) and r["cosine"].min() >= MIN_COS and len(r["argmax_bad"]) == 0
    return ok, r


def describe(r):
    worst = int(np.argmin(r["cosine"]))
    return ("min cos %.7f (pos %d)  max rel err %.2e  argmax %d/%d checked positions differ"
            % (r["cosine"].min(), worst, r["rel_err"].max(), len(r["argmax_bad"]), len(r["argmax_checked"])))


def reference_checks(G, models, tokens, refs, ck):
    # 1. Fixture consistency.
    m = {name: G.load_model(os.path.join(models, name)) for name in FIXTURES}
    for name, (_, literal) in FIXTURES.items():
        ck.expect(abs(m[name].cfg.rope_base - literal) <= 1e-6 * literal,
                  "%s: config implies RoPE base %g, expected %g" % (name, m[name].cfg.rope_base, literal))
    for a, b in (("g2-chatglm", "g2-hf-sharded"), ("g4-chatglm-sharded", "g4-hf-wrongtheta")):
        same = all(np.array_equal(m[a].globals()[k], m[b].globals()[k]) for k in ("embed", "final_norm", "output"))
        for i in range(m[a].cfg.n_layers):
            la, lb = m[a].layer(i), m[b].layer(i)
            same = same and all(np.array_equal(la[k], lb[k]) for k in la)
        ck.expect(same, "%s and %s should hold the same weights" % (a, b))
    print("fixtures: %s" % "; ".join("%s %s" % (n, m[n].cfg) for n in FIXTURES))

    # 2. Reference vs the committed Hugging Face goldens.
    for name in FIXTURES:
        path = os.path.join(models, "hf_golden_%s.npz" % name)
        if not os.path.exists(path):
            continue
        g = np.load(path, allow_pickle=False)
        ck.expect(list(g["tokens"]) == list(tokens), "%s: golden was made for other tokens" % path)
        ck.expect(float(g["rope_base"]) == FIXTURES[name][0], "%s: golden RoPE base %g" % (path, g["rope_base"]))
        ref = refs[name]
        pos = g["positions"]
        r = G.compare_logits(g["logits"].astype(np.float64), ref[pos], argmax_margin=ARGMAX_MARGIN)
        top1_ok = np.argmax(ref, 1) == g["top5"][:, 0]
        s = np.sort(ref, 1)
        clear = (s[:, -1] - s[:, -2]) > ARGMAX_MARGIN * np.abs(ref).max(1)
        print("ref vs HF golden %-20s min cos %.9f  max abs %.2e  top-1 agree %d/%d (%d/%d clear)  [%s]"
              % (name, r["cosine"].min(), r["max_abs"], top1_ok.sum(), len(top1_ok),
                 (top1_ok & clear).sum(), clear.sum(), g["versions"]))
        ck.expect(r["cosine"].min() >= GOLDEN_MIN_COS and np.all(top1_ok[clear]),
                  "glm_ref disagrees with the HF golden %s" % path)

    # 3. Positive control: a correct engine with a bf16 KV cache passes.
    for name in ("g2-chatglm", "g4-chatglm-sharded"):
        ok, r = criterion(G, G.forward(m[name], tokens, rope_base=FIXTURES[name][0], kv_bf16=True), refs[name])
        print("positive control %-18s bf16 KV:        %s -> %s" % (name, describe(r), "pass" if ok else "REJECTED"))
        ck.expect(ok, "%s: the bf16-KV reference does not pass the criterion (thresholds too tight)" % name)

    # 4. Negative controls: each bug must be rejected.
    controls = [
        ("g2-chatglm", "RoPE base 1e4", dict(rope_base=1e4)),
        ("g2-chatglm", "no QKV bias", dict(rope_base=5e6, qkv_bias=False)),
        ("g2-chatglm", "NeoX pairing", dict(rope_base=5e6, rope_style="neox")),
        ("g4-chatglm-sharded", "RoPE base 5e6", dict(rope_base=5e6)),
        ("g4-chatglm-sharded", "no QKV bias", dict(rope_base=1e8, qkv_bias=False)),
        ("g4-chatglm-sharded", "RoPE sign flip", dict(rope_base=1e8, rope_style="conj")),
        ("g4-chatglm-sharded", "GQA h % G", dict(rope_base=1e8, gqa_modulo=True)),
        ("g4-hf-wrongtheta", "literal rope_theta", dict()),  # the config's 10000, uncorrected
    ]
    for name, what, kw in controls:
        ok, r = criterion(G, G.forward(m[name], tokens, **kw), refs[name])
        rejected = (not ok) and r["cosine"].min() < NEG_MAX_COS
        print("negative control %-18s %-18s %s -> %s" % (name, what + ":", describe(r),
                                                          "rejected" if rejected else "NOT REJECTED"))
        ck.expect(rejected, "%s: negative control '%s' was not rejected" % (name, what))


def run_mtok(mtok, model_dir, toks, out, timeout=600):
    cmd = [mtok, "logits", "-m", model_dir, "--tokens", ",".join(str(t) for t in toks), "--out", out]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, "timed out after %d s" % timeout
    if p.returncode != 0:
        tail = (p.stderr or p.stdout).strip().splitlines()[-10:]
        return None, "exit %d: %s" % (p.returncode, "\n    ".join(tail))
    try:
        arr = np.load(out, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - report any unreadable output
        return None, "cannot read %s: %s" % (out, e)
    return arr, None


def engine_checks(G, mtok, models, tokens, refs, ck, tmp):
    for name in FIXTURES:
        ref = refs[name]
        for n in (len(tokens), SHORT_N) if name == "g2-chatglm" else (len(tokens),):
            out = os.path.join(tmp, "%s-%d.npy" % (name, n))
            arr, err = run_mtok(mtok, os.path.join(models, name), tokens[:n], out)
            tag = "%s (%d tokens)" % (name, n)
            if err:
                ck.fail("mtok logits on %s: %s" % (tag, err))
                continue
            if not ck.expect(arr.dtype == np.float32 and arr.shape == (n, ref.shape[1]),
                             "%s: output is %s %s, expected float32 %s" % (tag, arr.dtype, arr.shape,
                                                                          (n, ref.shape[1]))):
                continue
            if not ck.expect(np.all(np.isfinite(arr)), "%s: non-finite logits" % tag):
                continue
            ok, r = criterion(G, arr, ref[:n])
            print("mtok %-28s %s -> %s" % (tag, describe(r), "pass" if ok else "FAIL"))
            if not ok:
                worst = [int(i) for i in np.argsort(r["cosine"])[:5]]
                bad = [int(i) for i in r["argmax_bad"][:5]]
                ck.fail("%s: mtok logits do not match the reference (worst positions %s; argmax differs at %s)"
                        % (tag, worst, bad))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mtok", help="path to the mtok binary")
    ap.add_argument("--src", default=os.path.normpath(os.path.join(os.path.dirname(__file__), "..")))
    ap.add_argument("--build", help="build directory (unused)")
    ap.add_argument("--ref-only", action="store_true", help="only the reference checks")
    ap.add_argument("--keep", help="keep mtok outputs in this directory")
    a = ap.parse_args()

    sys.path.insert(0, os.path.join(a.src, "tests", "ref"))
    import glm_ref as G  # noqa: E402

    models = os.path.join(a.src, "tests", "data", "models")
    tokens = G.read_tokens(os.path.join(models, "tokens.txt"))
    refs = {name: G.forward(G.load_model(os.path.join(models, name), rope_base=base), tokens)
            for name, (base, _) in FIXTURES.items()}
    ck = Checker()
    reference_checks(G, models, tokens, refs, ck)
    if ck.failures:
        print("FAILED: the reference checks failed (%d); not testing mtok" % len(ck.failures))
        return 1

    if a.ref_only or not a.mtok or not os.path.exists(a.mtok):
        print("SKIP: reference checks passed; no mtok binary%s" % (" at " + a.mtok if a.mtok else ""))
        return 77
    if a.keep:
        os.makedirs(a.keep, exist_ok=True)
        engine_checks(G, os.path.abspath(a.mtok), models, tokens, refs, ck, a.keep)
    else:
        with tempfile.TemporaryDirectory(prefix="mtok-logits-") as tmp:
            engine_checks(G, os.path.abspath(a.mtok), models, tokens, refs, ck, tmp)
    if ck.failures:
        print("FAILED: %d problem(s)" % len(ck.failures))
        return 1
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
