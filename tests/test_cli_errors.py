#!/usr/bin/env python3
"""Bad input through the command line: every case must exit 2 with one specific line on stderr.

Writes a glm4-tiny checkpoint with `mtok synth` (3 shards, both namings), damages copies of it one
way each, and runs `mtok logits` / `mtok generate` on them. Needs only the Python standard library."""
import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile

ap = argparse.ArgumentParser()
ap.add_argument("--mtok", required=True)
ap.add_argument("--src")
ap.add_argument("--build")
args = ap.parse_args()
MTOK = args.mtok
failures = []


def run(*cmd, stdin=None):
    p = subprocess.run([MTOK, *cmd], capture_output=True, text=True, input=stdin, timeout=300)
    return p.returncode, p.stdout, p.stderr


def read_st(path):
    with open(path, "rb") as f:
        raw = f.read()
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def write_st(path, header, data):
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + data)


def shard_of(d, name):
    idx = json.load(open(os.path.join(d, "model.safetensors.index.json")))
    return os.path.join(d, idx["weight_map"][name])


def expect(label, d, want, cmd=None):
    cmd = cmd or ["logits", "-m", d, "--tokens", "1,2,3", "--out", os.path.join(d, "out.npy")]
    rc, out, err = run(*cmd)
    lines = [l for l in err.strip().splitlines() if l]
    errs = [l for l in lines if l.startswith("mtok: error: ")]
    # exactly one error line, and it is the last thing printed
    ok = rc == 2 and len(errs) == 1 and errs[0] == lines[-1] and all(w in errs[0] for w in want)
    print(f"{'ok  ' if ok else 'FAIL'} {label}: rc={rc} {lines[-1] if lines else '(no message)'}")
    if not ok:
        failures.append(label)


tmp = tempfile.mkdtemp(prefix="mtok-err-")
try:
    base = os.path.join(tmp, "base")
    rc, out, err = run("synth", "--preset", "glm4-tiny", "--out", base, "--shards", "3", "-q")
    if rc != 0:
        print("synth failed:", err)
        sys.exit(1)
    rc, out, err = run("logits", "-m", base, "--tokens", "1,2,3", "--out", os.path.join(tmp, "ok.npy"))
    if rc != 0:
        print("the undamaged checkpoint does not load:", err)
        sys.exit(1)

    def copy(label):
        d = os.path.join(tmp, label)
        shutil.copytree(base, d)
        return d

    L0 = "transformer.encoder.layers.0.self_attention.query_key_value.weight"

    d = copy("truncated")
    p = shard_of(d, "transformer.output_layer.weight")
    size = os.path.getsize(p)
    with open(p, "r+b") as f:
        f.truncate(size - 1000)
    expect("truncated shard", d, [os.path.basename(p)])

    d = copy("lying-offsets")
    p = shard_of(d, L0)
    h, data = read_st(p)
    b, e = h[L0]["data_offsets"]
    h[L0]["data_offsets"] = [b, e + 4096 * 1024 * 1024]
    write_st(p, h, data)
    expect("lying header offsets", d, [os.path.basename(p), L0])

    d = copy("overlap")
    p = shard_of(d, L0)
    h, data = read_st(p)
    names = sorted((k for k in h if k != "__metadata__"), key=lambda k: h[k]["data_offsets"][0])
    a, bname = names[0], names[1]
    sa = h[a]["data_offsets"]
    sb = h[bname]["data_offsets"]
    h[bname]["data_offsets"] = [sa[0], sa[0] + (sb[1] - sb[0])]
    write_st(p, h, data)
    expect("overlapping tensors", d, [os.path.basename(p)])

    d = copy("missing-tensor")
    name = "transformer.encoder.layers.1.mlp.dense_4h_to_h.weight"
    p = shard_of(d, name)
    h, data = read_st(p)
    del h[name]
    write_st(p, h, data)
    idx_path = os.path.join(d, "model.safetensors.index.json")
    idx = json.load(open(idx_path))
    del idx["weight_map"][name]
    json.dump(idx, open(idx_path, "w"))
    expect("missing tensor", d, [name])

    d = copy("wrong-shape")
    name = "transformer.encoder.layers.0.mlp.dense_h_to_4h.weight"
    p = shard_of(d, name)
    h, data = read_st(p)
    r, c = h[name]["shape"]
    h[name]["shape"] = [c, r]
    write_st(p, h, data)
    expect("wrong shape", d, [name, "shape"])

    d = copy("wrong-dtype")
    name = "transformer.encoder.layers.0.self_attention.dense.weight"
    p = shard_of(d, name)
    h, data = read_st(p)
    r, c = h[name]["shape"]
    h[name]["dtype"] = "I8"
    h[name]["shape"] = [r, 2 * c]  # same byte count, so only the dtype is wrong
    write_st(p, h, data)
    expect("wrong dtype", d, [name, "I8"])

    d = copy("missing-key")
    cfg = json.load(open(os.path.join(d, "config.json")))
    del cfg["num_layers"]
    cfg.pop("num_hidden_layers", None)
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"))
    expect("missing config key", d, ["config.json", "num_layers"])

    d = copy("unknown-arch")
    cfg = json.load(open(os.path.join(d, "config.json")))
    cfg["model_type"] = "llama"
    cfg["architectures"] = ["LlamaForCausalLM"]
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"))
    expect("unknown architecture", d, ["config.json", "llama"])

    d = copy("bad-json")
    with open(os.path.join(d, "config.json"), "w") as f:
        f.write('{"model_type": "chatglm", ')
    expect("config not JSON", d, ["config.json"])

    # prompt longer than --ctx: refused before any compute, exit 2
    long_prompt = "the quick brown fox jumps over the lazy dog " * 40
    expect("prompt longer than --ctx", base, ["context"],
           ["generate", "-m", base, "-p", long_prompt, "--ctx", "64", "-n", "4"])
    ids = ",".join(str(i % 200 + 1) for i in range(100))
    expect("logits past --ctx", base, ["context"],
           ["logits", "-m", base, "--tokens", ids, "--ctx", "50", "--out", os.path.join(tmp, "x.npy")])
    expect("token id outside vocab", base, ["vocabulary"],
           ["logits", "-m", base, "--tokens", "1,999999", "--out", os.path.join(tmp, "x.npy")])
    expect("missing directory", base, ["nonexistent"],
           ["logits", "-m", os.path.join(tmp, "nonexistent"), "--tokens", "1", "--out", os.path.join(tmp, "x.npy")])

    # usage errors are exit 1
    rc, _, err = run("logits", "-m", base)
    if rc != 1:
        failures.append("usage exit code")
        print("FAIL usage: rc", rc, err)

    # --device: a malformed name is a usage error (exit 1) naming the accepted forms
    out_npy = os.path.join(tmp, "x.npy")
    for dev, want in (("gpu", "expected cpu, cuda or cuda:N"), ("cuda:x", "device index"), ("cuda:-1", "device index"),
                      ("cuda:", "device index"), ("cudax", "expected cpu, cuda or cuda:N")):
        rc, _, err = run("logits", "-m", base, "--tokens", "1", "--out", out_npy, "--device", dev)
        ok = rc == 1 and want in err
        print(f"{'ok  ' if ok else 'FAIL'} --device {dev}: rc={rc} {err.strip().splitlines()[-1] if err.strip() else ''}")
        if not ok:
            failures.append(f"--device {dev}")
    # --device cuda where it cannot run: a build without the backend says so (usage, exit 1); a build
    # with it on a machine without a GPU names the missing driver or device (exit 3, MTOK_ERESOURCE)
    rc, info, _ = run("info")
    cuda_line = next((l for l in info.splitlines() if l.startswith("cuda: ")), "")
    if "not built" in cuda_line:
        rc, _, err = run("logits", "-m", base, "--tokens", "1", "--out", out_npy, "--device", "cuda")
        ok = rc == 1 and "built without the CUDA backend" in err
    elif "no devices" in cuda_line:
        rc, _, err = run("logits", "-m", base, "--tokens", "1", "--out", out_npy, "--device", "cuda")
        ok = rc == 3 and ("driver" in err or "device" in err) and not os.path.exists(out_npy)
    else:
        rc, err, ok = 0, "(a GPU is present: nothing to refuse)", True
    print(f"{'ok  ' if ok else 'FAIL'} --device cuda without a usable GPU ({cuda_line}): rc={rc} "
          f"{err.strip().splitlines()[-1] if err.strip() else ''}")
    if not ok:
        failures.append("--device cuda without a GPU")
finally:
    shutil.rmtree(tmp, ignore_errors=True)

print(f"{len(failures)} failed" if failures else "all error paths ok")
sys.exit(1 if failures else 0)
