#!/usr/bin/env python3
"""GLM-4V through the CUDA backend, on the CPU: `mtok_shim` (tests/test_cuda_shim.py says what it is)
runs the vision tower's CUDA ops (core/backend_cuda_vision.c, cuda/k_vision.cu, the prefill attention
kernel with every key at position 0) and the language model's image rows (the spliced embeddings and
the shared RoPE positions of core/backend_cuda.c and backend_cuda_step.c). Every result is compared
with the CPU backend on glm4v-tiny (a 2-layer tower, 2 heads of 32, patches of 7: the padded GEMM
input of 147 -> 152 columns; a 2-layer language model).

Tolerances, as in test_cuda_shim.py: the device rounds every product's input to bf16 (u = 2^-9).
  - The tower alone: about 6 roundings a layer (QKV, Q, P, O, fc1, fc2 inputs) and 5 in the projector
    (windows, GLU projection, gate/up, down inputs): max |d| < b max |ref|, cosine > 1 - b^2 with
    b = (6 layers + 5) u = 3.3e-2 (measured 2.1e-3 and 1 - 4.7e-5).
  - The language model over an image prompt with the tower on the CPU (--vision-device cpu), so both
    backends splice the same rows: b = (6 LM layers + 3) u = 2.9e-2, the 3 for the spliced rows, the
    prompt's largest activations (measured over six images: up to 2.1e-2 and 1 - 3.6e-4).
  - Everything on the device: the tower's error reaches the random tiny language model as a change
    of its input and comes out amplified (six images: up to 7.1e-2 and 1 - 2.6e-3), so this bound is
    an observed one with room: max |d| < 0.15 max |ref|, cosine > 1 - 1e-2.
A language model that ignores the shared positions (RoPE at the slots) gives cosine 0.45: every
bound above separates right from wrong.

Needs numpy and Pillow (else skipped, exit 77) and the mtok_shim binary (else skipped). With
--real-device (tests/gpu/CMakeLists.txt: test_gpu_vision, label cuda) the device runs are the real
mtok's on a GPU instead (exit 77 without a usable device); the bounds stay: the GPU's cuBLASLt and
tensor cores sum in another order than the shim, which these bounds leave room for."""
import json
import os
import shutil
import subprocess
import sys
import tempfile

from harness import args, numpy_or_skip, shim_and_cpu

np = numpy_or_skip()
try:
    from PIL import Image
except ImportError:
    print("Pillow missing: skipped")
    sys.exit(77)
REAL = "--real-device" in sys.argv
if REAL:
    sys.argv.remove("--real-device")
a = args()
if REAL:
    SHIM = CPU = a.mtok  # "SHIM" below: the binary of the device runs
    info = subprocess.run([a.mtok, "info"], capture_output=True, text=True)
    if not any("cuda" in l and " device" in l and "no devices" not in l for l in info.stdout.splitlines()):
        print("no usable CUDA device: skipped")
        sys.exit(77)
else:
    SHIM, CPU = shim_and_cpu(a)

work = tempfile.mkdtemp(prefix="mtok-vision-shim-")
ENV = dict(os.environ, OMP_WAIT_POLICY="passive", XDG_CACHE_HOME=os.path.join(work, "cache"))
for var in ("MTOK_SHIM_MEM_MB", "MTOK_SHIM_DEVICES", "MTOK_CUDA_GRAPHS"):
    ENV.pop(var, None)
U = 2.0 ** -9
B_TOWER = (6 * 2 + 5) * U  # glm4v-tiny: 2 tower layers
B_LM = (6 * 2 + 3) * U  # 2 language-model layers
bad = 0


def check(ok, what):
    global bad
    bad += not ok
    print(f"{'ok  ' if ok else 'FAIL'} {what}", flush=True)


def run(binary, *cmd, env=None):
    return subprocess.run([binary, *cmd], capture_output=True, text=True, timeout=600, env=dict(ENV, **(env or {})))


def last_error(err):
    errs = [l for l in err.strip().splitlines() if l.startswith("mtok: error: ")]
    return errs[-1] if errs else err.strip()[-300:]


def both(label, *cmd, out, dev=("--device", "cuda")):
    """cmd on the CPU and with dev through the shim; the two .npy results or None."""
    res = []
    for binary, extra in ((CPU, ()), (SHIM, dev)):
        path = os.path.join(work, f"{'gpu' if extra else 'cpu'}.npy")
        p = run(binary, *cmd, out, path, "-q", *extra)
        if p.returncode:
            check(False, f"{label}: {'cuda' if extra else 'cpu'} run failed: rc {p.returncode} {last_error(p.stderr)}")
            return None, None
        res.append(np.load(path))
    return res


def close(label, ref, got, b, cos_gap=None):
    """max |d| < b max |ref| and every row's cosine > 1 - cos_gap (b^2 unless given)"""
    if ref is None:
        return
    if ref.shape != got.shape:
        check(False, f"{label}: shapes {ref.shape} vs {got.shape}")
        return
    gap = b * b if cos_gap is None else cos_gap
    cos = float(((got * ref).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))).min())
    rel = float(np.abs(got - ref).max() / np.abs(ref).max())
    check(cos > 1 - gap and rel < b, f"{label}: {ref.shape[0]} rows, min cos 1-{1 - cos:.1e} (> 1-{gap:.1e}), "
          f"max |d| {rel:.1e} of max |ref| (< {b:.1e})")


try:
    d = os.path.join(work, "v")
    p = run(SHIM, "synth", "--preset", "glm4v-tiny", "--out", d, "-q")
    assert p.returncode == 0, p.stderr
    rng = np.random.default_rng(5)
    y, x = np.mgrid[0:45, 0:70].astype(np.float64)
    pix = np.stack([255 * x / 70, 255 * y / 45, 128 + 90 * np.sin(x / 5.0 + y / 3.0)], -1) + rng.normal(0, 20, (45, 70, 3))
    img = os.path.join(work, "p.png")
    Image.fromarray(np.clip(np.rint(pix), 0, 255).astype(np.uint8)).save(img)
    msgs = os.path.join(work, "m.json")
    json.dump([{"role": "system", "content": "Answer in a word."},
               {"role": "user", "content": "What is in the picture?", "image": True}], open(msgs, "w"))

    # ---- the tower alone: mtok image ----
    ref, got = both("vision tower", "image", "-m", d, "--image", img, out="--out")
    close("mtok image: the tower's 18 rows on cuda vs cpu", ref, got, B_TOWER)

    # ---- the image prompt: spliced rows, shared positions, every row's logits ----
    prompt = ("logits", "-m", d, "--messages", msgs, "--image", img, "--generation-prompt")
    ref, got = both("image prompt", *prompt, out="--out", dev=("--device", "cuda", "--vision-device", "cpu"))
    close("logits --messages --image, the language model on cuda, the tower on the cpu (--vision-device cpu)",
          ref, got, B_LM)
    ref, got = both("image prompt", *prompt, out="--out")
    close("logits --messages --image, all on cuda, vs all on the cpu (every row, image rows included)", ref, got,
          0.15, 1e-2)

    # ---- after the image: rows through plain mtok_forward continue from the image's last position ----
    p = run(CPU, "tokenize", "-m", d, "--messages", msgs, "--generation-prompt")
    ids = json.loads(p.stdout) if p.returncode == 0 else []
    ids_path = os.path.join(work, "ids.json")
    json.dump(ids, open(ids_path, "w"))
    n = len(ids) - 3 + 18  # the expanded rows
    for split in (n - 1, n - 4):  # a one-row step (a captured decode graph) and a 4-row decode chunk
        ref, got = both(f"split {split}", "image", "-m", d, "--prompt-ids", ids_path, "--image", img, "--split",
                        str(split), out="--logits-out", dev=("--device", "cuda", "--vision-device", "cpu"))
        if ref is not None and ref.shape == got.shape:
            close(f"image --prompt-ids --split {split} of {n} on cuda: the rows after the split (plain mtok_forward, "
                  f"positions continuing after the image)", ref[split:], got[split:], B_LM)

    # ---- generation after an image on the device: the prompt's rows and the decode steps ----
    outs = []
    for binary, extra in ((CPU, ()), (SHIM, ("--device", "cuda"))):
        p = run(binary, "generate", "-m", d, "--chat", "-p", "What is in the picture?", "--image", img, "-n", "6",
                "--ignore-eos", "--temperature", "0", *extra)
        outs.append(p)
    check(all(p.returncode == 0 for p in outs) and outs[1].stdout.strip() != "",
          f"generate --chat --image on cuda runs and streams text: {outs[1].stdout.strip()[:60]!r} (cpu: "
          f"{outs[0].stdout.strip()[:60]!r}){'' if outs[1].returncode == 0 else ' ' + last_error(outs[1].stderr)}")

    # ---- bad input: a head size the device's attention kernel has no instance of (16), refused by
    # name; the CPU runs the same tower ----
    d16 = os.path.join(work, "v16")
    shutil.copytree(d, d16)
    cfg = json.load(open(os.path.join(d16, "config.json")))
    cfg["vision_config"]["num_heads"] *= 2  # 64 wide: 4 heads of 16 (the weights' shapes do not change)
    json.dump(cfg, open(os.path.join(d16, "config.json"), "w"))
    out16 = os.path.join(work, "h16.npy")
    pc = run(CPU, "image", "-m", d16, "--image", img, "--out", out16, "-q")
    pg = run(SHIM, "image", "-m", d16, "--image", img, "--out", out16, "-q", "--device", "cuda")
    e = last_error(pg.stderr)
    check(pc.returncode == 0 and pg.returncode == 1 and "head_dim 16" in e and "32, 64, 112 or 128" in e,
          f"head_dim 16 on cuda: exit {pg.returncode}, {e[:160]} (cpu: exit {pc.returncode})")

    # ---- bad input: a device too small for the tower next to the session (the shim's memory) ----
    p = None if REAL else run(SHIM, "image", "-m", d, "--image", img, "--out", os.path.join(work, "x.npy"), "--device", "cuda",
            env={"MTOK_SHIM_MEM_MB": "64"})
    if p is not None:
        e = last_error(p.stderr)
        check(p.returncode != 0 and "the vision tower needs" in e and "GiB are free" in e,
              f"a device without room for the tower: exit {p.returncode}, {e[:200]}")
finally:
    shutil.rmtree(work, ignore_errors=True)
sys.exit(1 if bad else 0)
