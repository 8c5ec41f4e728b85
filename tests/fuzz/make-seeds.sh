#!/usr/bin/env bash
# Regenerates tests/fuzz/fixtures and tests/fuzz/corpus (docs/FUZZING.md) from files mtok itself
# writes: `mtok synth` checkpoints and tokenizers, `mtok prefill --save-kv` caches, tests/data.
# Usage: tests/fuzz/make-seeds.sh [MTOK_BINARY]   (default: build/mtok; any build of the same tree)
# The corpus holds only these seeds; inputs the fuzzer finds stay in the run's scratch directory
# (tests/fuzz/run.sh), and a crash becomes a file under tests/fuzz/regressions/ by hand.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
src="$(cd "$here/../.." && pwd)"
mtok="${1:-$src/build/mtok}"
[ -x "$mtok" ] || { echo "make-seeds: $mtok is not an executable mtok (build first, or pass its path)" >&2; exit 1; }
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
fx="$here/fixtures"
co="$here/corpus"
rm -rf "$fx" "$co"
mkdir -p "$fx/tok" "$fx/ckpt" "$fx/eval" \
  "$co"/{config,safetensors,st_index,tok_model,tok_config,tok_json,kvfile,tools} \
  "$co"/{eval_data,eval_preds,niah_results,niah_report,qa_questions}

q() { "$mtok" "$@" -q >/dev/null 2>&1 || "$mtok" "$@"; }
q synth --preset glm4-tiny --out "$tmp/tiny"
q synth --preset glm4-tiny --naming hf --out "$tmp/tinyhf"
q synth --preset glm4-tiny --naming hf --shards 2 --out "$tmp/tinyhf2"
q synth --preset needle --out "$tmp/needle"

# ---- fixtures: glm4-tiny checkpoints shrunk to hidden 16 (4 heads x 4, 2 KV groups, ffn 16, vocab 32),
# so that a whole checkpoint is a few KB and the fuzzer mutates the header, not megabytes of weights.
# The tensor names, order, dtypes, metadata and padding are the synth writer's; only the dimensions
# are mapped (each old size has one new size) and the data offsets recomputed.
python3 - "$tmp" "$fx/ckpt" <<'EOF'
import json, os, struct, sys
tmp, out = sys.argv[1], sys.argv[2]
DIM = {16: 1, 128: 8, 256: 16, 512: 32, 704: 16, 1024: 32, 1408: 32}
CFG = {"hidden_size": 16, "kv_channels": 4, "head_dim": 4, "ffn_hidden_size": 16, "intermediate_size": 16,
       "padded_vocab_size": 32, "vocab_size": 32, "seq_length": 4096, "max_position_embeddings": 4096,
       "eos_token_id": [29, 30, 31], "pad_token_id": 29}
def shrink_config(src, dst):
    c = json.load(open(src))
    for k, v in CFG.items():
        if k in c: c[k] = v
    json.dump(c, open(dst, "w"), indent=2)
def read_st(path):
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    return json.loads(b[8:8 + n])  # key order kept (Python 3.7+ dicts)
def write_st(hdr, path):
    off, h = 0, {}
    for k, v in hdr.items():
        if k == "__metadata__": h[k] = v; continue
        shape = [DIM[d] for d in v["shape"]]
        n = 2
        for d in shape: n *= d
        h[k] = {"dtype": v["dtype"], "shape": shape, "data_offsets": [off, off + n]}
        off += n
    j = json.dumps(h, separators=(",", ":")).encode()
    j += b" " * ((8 - (8 + len(j)) % 8) % 8)  # the data area starts 8-byte aligned, as st_write.c pads it
    # deterministic non-zero bf16 data: 0x3c00 + i (small positive numbers)
    data = b"".join(struct.pack("<H", 0x3c00 + (i % 256)) for i in range(off // 2))
    open(path, "wb").write(struct.pack("<Q", len(j)) + j + data)
for name, sub in (("chatglm", "tiny"), ("hf", "tinyhf")):
    os.makedirs(f"{out}/{name}")
    shrink_config(f"{tmp}/{sub}/config.json", f"{out}/{name}/config.json")
    write_st(read_st(f"{tmp}/{sub}/model.safetensors"), f"{out}/{name}/model.safetensors")
os.makedirs(f"{out}/hf2")
shrink_config(f"{tmp}/tinyhf2/config.json", f"{out}/hf2/config.json")
for i in (1, 2):
    f = f"model-0000{i}-of-00002.safetensors"
    write_st(read_st(f"{tmp}/tinyhf2/{f}"), f"{out}/hf2/{f}")
idx = json.load(open(f"{tmp}/tinyhf2/model.safetensors.index.json"))
idx["metadata"]["total_size"] = sum(os.path.getsize(f"{out}/hf2/model-0000{i}-of-00002.safetensors") for i in (1, 2))
json.dump(idx, open(f"{out}/hf2/model.safetensors.index.json", "w"), indent=2)
EOF
cp "$tmp/tiny/tokenizer.model" "$tmp/tiny/tokenizer_config.json" "$fx/tok/"
for d in chatglm hf; do  # the fixtures must load, or the targets would only ever test error paths
  "$mtok" info -m "$fx/ckpt/$d" -q >/dev/null
done
cp "$fx/tok/tokenizer.model" "$fx/tok/tokenizer_config.json" "$fx/ckpt/hf2/"
"$mtok" info -m "$fx/ckpt/hf2" -q >/dev/null
rm "$fx/ckpt/hf2/tokenizer.model" "$fx/ckpt/hf2/tokenizer_config.json"

# ---- corpora
cp "$tmp/tiny/config.json" "$co/config/glm4-tiny-chatglm.json"
cp "$tmp/tinyhf/config.json" "$co/config/glm4-tiny-hf.json"
cp "$tmp/needle/config.json" "$co/config/needle.json"
for d in "$src"/tests/data/models/*/; do cp "$d/config.json" "$co/config/data-$(basename "$d").json"; done
cp "$fx/ckpt/chatglm/config.json" "$co/config/fixture-chatglm.json"
cp "$fx/ckpt/hf/config.json" "$co/config/fixture-hf.json"

cp "$fx/ckpt/chatglm/model.safetensors" "$co/safetensors/chatglm.safetensors"
cp "$fx/ckpt/hf/model.safetensors" "$co/safetensors/hf.safetensors"
cp "$fx/ckpt/hf2/model-00001-of-00002.safetensors" "$co/safetensors/hf2-shard1.safetensors"

cp "$fx/ckpt/hf2/model.safetensors.index.json" "$co/st_index/hf2.index.json"
cp "$src/tests/data/models/g4-chatglm-sharded/model.safetensors.index.json" "$co/st_index/data-g4-chatglm-sharded.index.json"

cp "$tmp/tiny/tokenizer.model" "$co/tok_model/glm4-tiny.model"
cp "$src/tests/data/tok/tokenizer.model" "$co/tok_model/data.model"
cp "$tmp/tiny/tokenizer_config.json" "$co/tok_config/glm4-tiny.json"
cp "$src/tests/data/tok/tokenizer.json" "$co/tok_json/data.json"

# tools: the two shapes tools_text (core/chat.c) accepts
cat > "$co/tools/wrapped.json" <<'EOF'
[{"type": "function", "function": {"name": "get_weather", "description": "Current weather of a city",
  "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "城市"}},
  "required": ["city"]}}}]
EOF
cat > "$co/tools/bare.json" <<'EOF'
[{"name": "search", "description": "Web search", "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}},
 {"name": "add", "parameters": {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}}}]
EOF
printf 'get_weather\n{"city": "Paris", "unit": "celsius"}' > "$co/tools/reply-call.txt"

# kvfile: caches saved by prefill from the glm4-tiny model, 16-token blocks; the first byte is the
# target's mode (fuzz_kvfile.c): 0 = the file as saved, 0x07 = with a prompt, 0x0f topk cache,
# 0x13 32-token cache blocks, 0x23 a spilling cache
kv() {  # kv NAME MODE POLICY TEXT
  "$mtok" prefill -m "$tmp/tiny" -p "$4" --kv-block 16 --kv-policy "$3" --save-kv "$tmp/$1.kv" -q
  { printf "\\x$2"; cat "$tmp/$1.kv"; } > "$co/kvfile/$1"
}
kv exact-20tok 00 exact "The quick brown fox jumps over the lazy dog, then rests."
kv exact-5tok 07 exact "Hello"
kv topk-20tok 0f topk "In the beginning God created the heaven and the earth."
kv exact-block32 13 exact "And the earth was without form, and void."
kv exact-spill 23 exact "And God said, Let there be light: and there was light. And God saw the light, that it was good: and God divided the light from the darkness. And God called the light Day, and the darkness he called Night."

# eval: a RULER task file (the fixture fuzz_eval_preds matches predictions against) and a LongBench
# file, the predictions `mtok eval` writes for them (glm4-tiny: the answers are noise, the format is
# real), niah's results.jsonl (the needle model, two variants), qa questions
cat > "$fx/eval/niah_single_1.jsonl" <<'EOF'
{"index": 0, "input": "The special magic number for apple is 4242. What is the special magic number for apple?", "outputs": ["4242"], "length": 24, "answer_prefix": " Answer:"}
{"index": 1, "input": "Keys: red=1, blue=2. What are the values of red and blue?", "outputs": ["1", "2"], "length": 18}
{"index": 2, "input": "Nothing to find here.", "outputs": ["none"], "length": 6}
EOF
cat > "$tmp/longbench.jsonl" <<'EOF'
{"_id": "q0", "dataset": "hotpotqa", "context": "Paris is the capital of France. Berlin is the capital of Germany.", "input": "What is the capital of France?", "answers": ["Paris"], "length": 16, "all_classes": null}
{"_id": "q1", "dataset": "hotpotqa", "context": "The river flows north.", "input": "Which way does the river flow?", "answers": ["north", "northward"], "length": 9}
EOF
cp "$fx/eval/niah_single_1.jsonl" "$tmp/"
"$mtok" eval -m "$tmp/tiny" --data "$tmp/niah_single_1.jsonl" --out "$tmp/ruler.preds.jsonl" -n 4 -q >/dev/null
"$mtok" eval -m "$tmp/tiny" --data "$tmp/longbench.jsonl" --out "$tmp/lb.preds.jsonl" -n 4 -q >/dev/null
cp "$fx/eval/niah_single_1.jsonl" "$co/eval_data/ruler.jsonl"
cp "$tmp/longbench.jsonl" "$co/eval_data/longbench.jsonl"
cp "$tmp/ruler.preds.jsonl" "$co/eval_data/ruler.preds.jsonl"
cp "$tmp/lb.preds.jsonl" "$co/eval_data/lb.preds.jsonl"
cp "$tmp/ruler.preds.jsonl" "$co/eval_preds/ruler.preds.jsonl"
cp "$tmp/lb.preds.jsonl" "$co/eval_preds/lb.preds.jsonl"
head -c -20 "$tmp/ruler.preds.jsonl" > "$co/eval_preds/ruler-torn.preds.jsonl"  # a run killed mid-write
"$mtok" niah -m "$tmp/needle" --lengths 256,512 --depths 0,50 --variants single,multikey --out "$tmp/niah" -q >/dev/null
cp "$tmp/niah/results.jsonl" "$co/niah_results/results.jsonl"
cp "$tmp/niah/results.jsonl" "$co/niah_report/results.jsonl"
printf '{"id": 1, "question": "Who created the heaven?"}\n{"id": "b", "input": "What was without form?"}\n{"prompt": "What is light?"}\n' \
  > "$co/qa_questions/questions.jsonl"

du -sh "$fx" "$co"
