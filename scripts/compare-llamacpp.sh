#!/usr/bin/env bash
# compare-llamacpp.sh — mtok and llama.cpp side by side on the same glm4-1b weights, the same machine
# and the same window: bf16 and f16 prefill (512 and 4096 tokens) and decode (32 tokens at depths 4K
# and 16K), 2 threads, the engines alternated ABBA (mtok, llama.cpp, llama.cpp, mtok) per dtype so
# that drift in the neighbours' load falls on both alike. Every run records the load average
# (uptime) before and after it. docs/PERFORMANCE.md ("mtok vs llama.cpp") has the figures.
#
#   scripts/compare-llamacpp.sh [--mtok BIN] [--work DIR] [--out DIR] [--threads N] [--isa L]
#                               [--dtypes "bf16 f16"] [--precisions "fp32 bf16"] [--reps N] [--setup-only]
#
# Setup (each step skipped when its result is already in --work, default /tmp/llamacpp; nothing is
# written into the repository):
#   1. llama.cpp's source from PyPI's llama-cpp-python sdist (vendor/llama.cpp) — the registries this
#      project's machines reach are Debian's and PyPI — built natively: cmake -DGGML_NATIVE=ON, Release,
#      OpenMP, target llama-bench.
#   2. a venv with what llama.cpp's convert_hf_to_gguf.py imports: torch (the converter's tensors are
#      torch tensors throughout; it cannot run without it), numpy, safetensors, transformers.
#   3. the weights: `mtok synth --preset glm4-1b --naming hf --dtype D` (the HF checkpoint format,
#      GlmForCausalLM), converted by llama.cpp's converter to D. The converter's vocab step loads the
#      tokenizer through transformers' AutoTokenizer, which for GLM-4 means the model repository's own
#      tokenizer code (not in a synthetic checkpoint); convert_synth.py below replaces only that step:
#      it reads the tiktoken-format tokenizer.model (token, rank) and writes the same gpt2-style BPE
#      vocab with merges and the "chatglm-bpe" pre-tokenizer that the converter writes for GLM-4. The
#      tensors go through the converter unchanged. mtok reads the synthesized directory itself, so both
#      engines compute with identical weight values.
# Runs (per dtype, ABBA; for bf16 weights mtok runs once per --matmul-precision in --precisions, in
# reverse order on the way back: fp32 is mtok's default, bf16 rounds the activations as llama.cpp's
# bf16 path does):
#   mtok:      mtok bench -m DIR --threads 2 --prompt 512,4096 --depths 4096,16384 --gen 32 --reps 2 --json
#                         [--matmul-precision P]
#   llama.cpp: llama-bench -m F.gguf -t 2 -p 512,4096 -n 0 -r 2 -o json       (prefill)
#              llama-bench -m F.gguf -t 2 -p 0 -n 32 -d 4096,16384 -r 1 -o json (decode at depth)
# both with their defaults otherwise (chunk / ubatch 512, OpenMP's default wait policy). Prefill is
# compared as the mean over the reps (mtok: tokens / seconds_mean; llama-bench: avg_ts); decode as one
# 32-token run at each depth (tok/s). The summary table is written into the output folder (its summary table file).
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
MTOK=$here/build/mtok
WORK=/tmp/llamacpp
OUT=
THREADS=2
ISA=auto
DTYPES="bf16 f16"
REPS=2
PRECISIONS="fp32 bf16"
SETUP_ONLY=0
LLAMA_PY_VERSION=0.3.36 # the llama-cpp-python sdist whose vendor/llama.cpp is built

while [ $# -gt 0 ]; do
    case $1 in
    --mtok) MTOK=$2; shift 2 ;;
    --work) WORK=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --threads) THREADS=$2; shift 2 ;;
    --isa) ISA=$2; shift 2 ;;
    --dtypes) DTYPES=$2; shift 2 ;;
    --reps) REPS=$2; shift 2 ;;
    --precisions) PRECISIONS=$2; shift 2 ;;
    --setup-only) SETUP_ONLY=1; shift ;;
    *) echo "usage: $0 [--mtok BIN] [--work DIR] [--out DIR] [--threads N] [--isa L] [--dtypes LIST] [--precisions LIST] [--reps N] [--setup-only]" >&2
       exit 1 ;;
    esac
done
MTOK=$(realpath "$MTOK")
[ -x "$MTOK" ] || { echo "no mtok binary at $MTOK (build it, or pass --mtok)" >&2; exit 1; }
mkdir -p "$WORK"
OUT=${OUT:-$WORK/run-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
log() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$OUT/log.txt" >&2; }
load() { uptime | sed 's/.*load average: //'; }

# ---- 1. llama.cpp, built natively ----
SRC=$WORK/llama_cpp_python-$LLAMA_PY_VERSION/vendor/llama.cpp
BENCH=$WORK/build/bin/llama-bench
if [ ! -d "$SRC" ]; then
    log "fetching llama-cpp-python $LLAMA_PY_VERSION (sdist) from PyPI"
    pip download --no-binary :all: --no-deps "llama-cpp-python==$LLAMA_PY_VERSION" -d "$WORK"
    tar -xzf "$WORK/llama_cpp_python-$LLAMA_PY_VERSION.tar.gz" -C "$WORK"
fi
if [ ! -x "$BENCH" ]; then
    log "building llama-bench (GGML_NATIVE=ON)"
    cmake -S "$SRC" -B "$WORK/build" -DGGML_NATIVE=ON -DCMAKE_BUILD_TYPE=Release -DGGML_OPENMP=ON \
        -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF >"$WORK/cmake.log"
    cmake --build "$WORK/build" -j"$(nproc)" --target llama-bench >"$WORK/build.log"
fi

# ---- 2. the converter's Python ----
PY=$WORK/venv/bin/python
if ! "$PY" -c 'import torch, numpy, safetensors, transformers' 2>/dev/null; then
    log "installing the converter's packages into $WORK/venv"
    python3 -m venv "$WORK/venv"
    "$WORK/venv/bin/pip" install -q torch numpy safetensors transformers sentencepiece protobuf
fi

cat >"$WORK/convert_synth.py" <<'EOF'
# llama.cpp's convert_hf_to_gguf.py with its GLM vocab step replaced (see compare-llamacpp.sh):
# the tokenizer of a synthetic checkpoint is a tiktoken-format tokenizer.model (base64 token, rank)
# without the model repository's tokenizer code that AutoTokenizer would load.
# usage: python convert_synth.py LLAMA_CPP_DIR <convert_hf_to_gguf.py arguments>
import base64
import json
import sys
from pathlib import Path

src = Path(sys.argv.pop(1))
sys.path.insert(0, str(src))
sys.path.insert(1, str(src / "gguf-py"))
import convert_hf_to_gguf  # noqa: E402
import gguf  # noqa: E402
from conversion.chatglm import ChatGLMModel  # noqa: E402  (GlmForCausalLM's converter class)


def set_vocab(self):
    ranks = {}
    for line in (self.dir_model / "tokenizer.model").read_bytes().splitlines():
        if line.strip():
            tok, rank = line.split()
            ranks[base64.b64decode(tok)] = int(rank)
    n = self.hparams["vocab_size"]
    tokens = [f"[PAD{i}]" for i in range(n)]
    types = [gguf.TokenType.UNUSED] * n
    for b, r in ranks.items():
        tokens[r] = ChatGLMModel.token_bytes_to_string(b)
        types[r] = gguf.TokenType.NORMAL
    # the merge that makes each multi-byte token: BPE over the tokens ranked before it
    merges = []
    for b, r in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(b) > 1:
            merges.append(" ".join(map(ChatGLMModel.token_bytes_to_string, ChatGLMModel.bpe(ranks, b, max_rank=r))))
    special = {}
    cfg = json.loads((self.dir_model / "tokenizer_config.json").read_text())
    for i, d in cfg.get("added_tokens_decoder", {}).items():
        tokens[int(i)], types[int(i)] = d["content"], gguf.TokenType.CONTROL
        special[d["content"]] = int(i)
    w = self.gguf_writer
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("chatglm-bpe")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_eos_token_id(special["<|endoftext|>"])
    w.add_unk_token_id(special["<|endoftext|>"])
    if "<|user|>" in special:
        w.add_eot_token_id(special["<|user|>"])


ChatGLMModel.set_vocab = set_vocab
convert_hf_to_gguf.main()
EOF

# ---- 3. the weights ----
for dt in $DTYPES; do
    if [ ! -f "$WORK/g1b-$dt/model.safetensors" ]; then
        log "synthesizing glm4-1b ($dt, HF naming)"
        "$MTOK" synth --preset glm4-1b --naming hf --dtype "$dt" --out "$WORK/g1b-$dt" -q
    fi
    if [ ! -f "$WORK/g1b-$dt.gguf" ]; then
        log "converting to $WORK/g1b-$dt.gguf"
        "$PY" "$WORK/convert_synth.py" "$SRC" "$WORK/g1b-$dt" --outtype "$dt" --outfile "$WORK/g1b-$dt.gguf" \
            >"$WORK/convert-$dt.log" 2>&1
    fi
done
[ "$SETUP_ONLY" = 1 ] && { log "setup done in $WORK"; exit 0; }

# ---- the runs: ABBA per dtype ----
{
    echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "cpu: $(lscpu | sed -n 's/^Model name: *//p')"
    echo "mtok: $MTOK ($(cd "$here" && git rev-parse --short HEAD 2>/dev/null || echo '?'), tree may carry uncommitted changes)"
    echo "llama.cpp: llama-cpp-python $LLAMA_PY_VERSION vendor/llama.cpp, GGML_NATIVE=ON"
    echo "threads: $THREADS, isa: $ISA"
} >"$OUT/meta.txt"
cat "$OUT/meta.txt" >&2

run_mtok() { # dtype index precision
    local f=$OUT/mtok-$1-$2-$3 rc=0
    load >"$f.load0"
    "$MTOK" bench -m "$WORK/g1b-$1" --threads "$THREADS" --isa "$ISA" --matmul-precision "$3" --prompt 512,4096 \
        --depths 4096,16384 --gen 32 --reps "$REPS" --json --no-progress >"$f.json" 2>"$f.err" || rc=$?
    load >"$f.load1"
    echo $rc >"$f.rc"
    log "mtok $1 #$2 ($3) rc $rc, load $(cat "$f.load0") -> $(cat "$f.load1")"
}
run_llama() {
    local f=$OUT/llama-$1-$2 rc=0
    load >"$f.load0"
    "$BENCH" -m "$WORK/g1b-$1.gguf" -t "$THREADS" -p 512,4096 -n 0 -r "$REPS" -o json >"$f.pp.json" 2>"$f.err" || rc=$?
    "$BENCH" -m "$WORK/g1b-$1.gguf" -t "$THREADS" -p 0 -n 32 -d 4096,16384 -r 1 -o json >"$f.tg.json" 2>>"$f.err" || rc=$?
    load >"$f.load1"
    echo $rc >"$f.rc"
    log "llama.cpp $1 #$2 rc $rc, load $(cat "$f.load0") -> $(cat "$f.load1")"
}
for dt in $DTYPES; do
    precs=fp32 # the precision changes only the products of bf16 weights
    [ "$dt" = bf16 ] && precs=$PRECISIONS
    back=$(echo $precs | tr ' ' '\n' | tac | tr '\n' ' ')
    for p in $precs; do run_mtok "$dt" 1 "$p"; done
    run_llama "$dt" 2
    run_llama "$dt" 3
    for p in $back; do run_mtok "$dt" 4 "$p"; done
done

# ---- the table ----
python3 - "$OUT" "$PRECISIONS" $DTYPES >"$OUT/summary.md" <<'EOF'
import json, os, sys

out, precisions, dtypes = sys.argv[1], sys.argv[2].split(), sys.argv[3:]


def rd(p):
    try:
        with open(p) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def ld(f):
    with open(f) as h:
        return h.read().split(",")[0].strip()


print("| dtype | run | pp512 tok/s | pp4096 tok/s | tg32 @4K tok/s | tg32 @16K tok/s | load before → after | note |")
print("| --- | --- | --- | --- | --- | --- | --- | --- |")
means = {}
for dt in dtypes:
    precs = precisions if dt == "bf16" else ["fp32"]
    runs = [(1, "mtok", p) for p in precs] + [(2, "llama", ""), (3, "llama", "")] + \
        [(4, "mtok", p) for p in reversed(precs)]
    for i, eng, prec in runs:
        base = os.path.join(out, f"{eng}-{dt}-{i}" + (f"-{prec}" if prec else ""))
        eng = f"mtok {prec}" if prec else eng
        row, note = {}, ""
        if prec:
            b = rd(base + ".json") or {}
            for p in b.get("prefill", []):
                row[f"pp{p['tokens']}"] = p["tokens"] / p["seconds_mean"]
            for d in b.get("decode", []):
                row[f"tg{d['depth']}"] = d["tok_s"]
            pk = b.get("peak", {})
            fr = [f"{100 * p.get('frac_peak_mean', 0):.0f}%" for p in b.get("prefill", [])]
            note = (f"{pk.get('kernel_isa')}; prefill {'/'.join(fr)} of {pk.get('name')} ({pk.get('gflops', 0):.0f} "
                    f"GFLOP/s, {pk.get('dots_per_product')} instruction(s) per multiply-add)")
            if not b.get("check", {}).get("ok", False):
                note += f"; check: min_cos {b.get('check', {}).get('min_cos')}"
        else:
            for r in (rd(base + ".pp.json") or []):
                row[f"pp{r['n_prompt']}"] = r["avg_ts"]
            for r in (rd(base + ".tg.json") or []):
                row[f"tg{r['n_depth']}"] = r["avg_ts"]
            pp = (rd(base + ".pp.json") or [{}])[0]
            note = f"fa {pp.get('flash_attn')}, ubatch {pp.get('n_ubatch')}"
        for k, v in row.items():
            means.setdefault((dt, eng, k), []).append(v)
        cells = [f"{row[k]:.1f}" if k in row else "—" for k in ("pp512", "pp4096", "tg4096", "tg16384")]
        print(f"| {dt} | {eng} #{i} | " + " | ".join(cells) + f" | {ld(base + '.load0')} → {ld(base + '.load1')} | {note} |")
print()
print("| dtype | mtok / llama.cpp (means of the two runs each) | pp512 | pp4096 | tg32 @4K | tg32 @16K |")
print("| --- | --- | --- | --- | --- | --- |")
for dt in dtypes:
    for prec in (precisions if dt == "bf16" else ["fp32"]):
        cells = []
        for k in ("pp512", "pp4096", "tg4096", "tg16384"):
            a, b = means.get((dt, f"mtok {prec}", k)), means.get((dt, "llama", k))
            cells.append(f"{(sum(a) / len(a)) / (sum(b) / len(b)):.2f}x" if a and b else "—")
        print(f"| {dt} | mtok --matmul-precision {prec} | " + " | ".join(cells) + " |")
EOF
cat "$OUT/summary.md"
log "results in $OUT"
