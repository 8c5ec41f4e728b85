#!/usr/bin/env python3
"""Per-rank weight and KV bytes of GLM-4-9B-Chat(-1M) under tensor x context parallelism, and whether
they fit on 80 GB / 141 GB GPUs: the tables of docs/PARALLEL.md ("What fits where").

The split is core/tp.c's: attention by KV group (tp > groups: each rank holds one group's K/V
projection, replicated, and a share of its query heads), gate/up and dense/down 1/tp, output layer
1/tp by vocabulary rows, embedding and norms on every rank. KV: max(groups/tp, 1) groups per rank,
positions split evenly over cp ranks. Shapes from docs/GLM.md §1, bf16 everywhere.
Run: python3 scripts/parallel-fit.py (prints Markdown)."""

GIB = 1024**3
L, E, HEADS, D, F, V, BF16 = 40, 4096, 32, 128, 13696, 151552, 2
MODELS = {"GLM-4-9B-Chat": 2, "GLM-4-9B-Chat-1M": 4}  # KV groups
# Usable device memory: what cudaMemGetInfo reports as total on an H100 80GB (81559 MiB) and an H200
# 141GB (143771 MiB); the headroom is what a rank needs besides weights and KV: CUDA context and
# NCCL buffers (~1.5 GiB), the prefill chunk's activations, attention workspace and one chunk of
# vocab-sliced fp32 logits (~1 GiB at chunk 256), and allocator fragmentation.
GPUS = {"80 GB": 81559 / 1024, "141 GB": 143771 / 1024}
HEADROOM_GIB = 6.0
TP = (1, 2, 4, 8)
CP = (1, 2, 4, 8)
CTX = {"128K": 131072, "1M": 1048576}


def weights_per_rank(G, tp):
    g_rank = max(G // tp, 1)              # K/V groups held (replicated when tp > G)
    q_rows = HEADS * D // tp              # query heads of this rank
    kv_rows = 2 * g_rank * D
    qkv = (q_rows + kv_rows) * E + (q_rows + kv_rows)  # weight + bias
    dense = E * (HEADS * D // tp)
    mlp = 2 * (F // tp) * E + E * (F // tp)
    norms = 2 * E
    layer = qkv + dense + mlp + norms
    return BF16 * (L * layer + V * E + (V // tp) * E + E)  # + embedding (whole) + head slice + final norm


def kv_per_rank(G, tp, cp, tokens):
    return 2 * L * max(G // tp, 1) * D * BF16 * tokens / cp


def gib(x):
    return x / GIB


def main():
    total = {m: weights_per_rank(G, 1) for m, G in MODELS.items()}
    print("Weights per rank (GiB, bf16):\n")
    print("| model | tp=1 | tp=2 | tp=4 | tp=8 |")
    print("|---|---|---|---|---|")
    for m, G in MODELS.items():
        print(f"| {m} (G={G}) | " + " | ".join(f"{gib(weights_per_rank(G, tp)):.2f}" for tp in TP) + " |")
    print(f"\n(tp=1 totals: {', '.join(f'{m} {total[m]:,} B' for m in MODELS)})\n")
    for ctx, n in CTX.items():
        print(f"Per rank at {ctx} tokens: KV GiB / weights + KV GiB, and the GPUs it fits on with "
              f"{HEADROOM_GIB:g} GiB headroom (80 = 80 GB H100/A100, 141 = 141 GB H200):\n")
        print("| model | tp | " + " | ".join(f"cp={cp}" for cp in CP) + " |")
        print("|---|---|" + "---|" * len(CP))
        for m, G in MODELS.items():
            for tp in TP:
                cells = []
                for cp in CP:
                    kv = kv_per_rank(G, tp, cp, n)
                    used = gib(weights_per_rank(G, tp) + kv)
                    fits = [name.split()[0] for name, cap in GPUS.items() if used + HEADROOM_GIB <= cap]
                    cells.append(f"{gib(kv):.2f} / {used:.1f}: {'+'.join(fits) if fits else 'neither'}")
                print(f"| {m} | {tp} | " + " | ".join(cells) + " |")
        print()

if __name__ == "__main__":
    main()
