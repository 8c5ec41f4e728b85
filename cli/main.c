/* main.c — the mtok command: the usage text and the dispatch to subcommands (cli/cmd_*.c); what they
 * share is cli/common.c. Exit codes (docs/DESIGN.md §3): 0 success, 1 usage, 2 bad input, 3 resource. */
#include <stdio.h>
#include <string.h>

#include "cli.h"

static const char USAGE[] =
    "usage: mtok COMMAND [options]\n"
    "commands:\n"
    "  generate -m DIR (-p TEXT | -f FILE) [--chat] [--system S] [-n N] [sampling]   stream a continuation\n"
    "  chat     -m DIR [-f DOC | --load-kv F] [--system S] [--tools FILE.json]   interactive chat (GLM-4\n"
    "           template) about a document if given; /load FILE in the chat; Ctrl-C stops an answer\n"
    "  tokenize -m DIR (--text T | --text-file F) [--special]   print ids as one JSON array\n"
    "  logits   -m DIR (--tokens 1,2,3 | --text-file F) --out F.npy   fp32 logits of every position\n"
    "  synth    --preset NAME --out DIR [--naming chatglm|hf] [--shards N] [--seed S] [--dtype bf16|f16|f32]\n"
    "  info     [-m DIR]                                     version, backends, model summary\n"
    "  check    -m DIR [--threads N]                         every tensor: dtype, shape, NaN/Inf (exit 2 if bad)\n"
    "  niah     -m DIR --lengths L1,L2.. --depths D1,D2..|A:B:N --out DIR [--variants V,..] [--resume]\n"
    "                                                       needle grid: results.jsonl, heatmap.png, table\n"
    "  eval     -m DIR --data F.jsonl --out preds.jsonl [--special] [--resume] | eval --score PREDS.jsonl\n"
    "  demo     [--dir DIR] [--out DIR] [--max-len N]        the needle model on a NIAH grid, with a heatmap\n"
    "  bench    -m DIR [--prompt N,.. --gen N --depths D,.. --reps N] [--json]   speed vs this machine's limits\n"
    "  bench    --preset NAME [--synth-dir D --naming chatglm|hf --keep-synth] ...   synthesize the model on the spot\n"
    "  bench    --device cuda[:N] (-m DIR | --preset NAME) [--chunk N --depths D,.. --topk-depths D,..|none\n"
    "           --stage-steps N --check-tokens N --limits-copy-mb N --limits-gemm M,N,K --limits-reps N]\n"
    "           [--json | --json-out F]          GPU decode GB/s vs measured copy, prefill vs cuBLASLt GEMM\n"
    "  bench limits [--json]                                 triad and read bandwidth, peak per instruction class\n"
    "  bench kv [--kv-dir D] [--kv-block N | --block-bytes N] [--kv-depth N] [--size BYTES] [--json]\n"
    "                                                       cold-tier KV write/read-back GB/s and IOPS\n"
    "  prefill  -m DIR (-f DOC | -p TEXT) [--chat] [--save-kv F]   prefill a document once, save its KV\n"
    "  qa       -m DIR (--load-kv F | -f DOC) --questions Q.jsonl [--chat]   questions from one prefill\n"
    "  generate ... --load-kv F                              continue after a saved document (prefix reuse)\n"
    "  serve    -m DIR [--host H --port P --api-key K --served-model-name N --sessions N --max-queue N\n"
    "           --max-body BYTES --keepalive S]            OpenAI-compatible HTTP server (docs/SERVER.md)\n"
    "  image    -m DIR --image F --out X.npy [--preprocessed] | --size N --image F --out X.npy --preprocessed\n"
    "                                                       GLM-4V image embeddings (docs/VISION.md)\n"
    "mtok COMMAND --help lists every option of a command.\n"
    "common options:\n"
    "  --threads N  --ctx N  --chunk N  --kv-block N  --rope-base X  --ignore-eos  --no-simd\n"
    "  --isa avx2|avx512|auto  --matmul-precision fp32|bf16 (the CPU kernels' arithmetic)\n"
    "  --device cpu|cuda|cuda:N (the CUDA backend: docs/GPU.md)  --vision-device D (GLM-4V's tower)\n"
    "  -v | -q | --log-level N   --progress-interval S (progress lines when stderr is not a terminal)\n"
    "  --no-progress\n"
    "kv store: --kv-budget BYTES (hot RAM, K/M/G)  --kv-dir DIR  --kv-io auto|uring|threads  --kv-depth N\n"
    "  --kv-policy exact|window|topk  --kv-sinks N  --kv-window N (window 4096, topk 1024)\n"
    "  --kv-topk N (blocks per layer and KV group, 64)  --kv-audit RATE (0..1)\n"
    "  (test only: --kv-fault KIND[:NTH[:COUNT]])\n"
    "parallel (under mpirun/srun, docs/PARALLEL.md): --tp N  --cp N  --cp-span TOKENS\n"
    "sampling: --temperature T (0 = greedy)  --top-k K  --top-p P  --repetition-penalty R  --seed S\n"
    "numeric options take decimal values within the ranges in docs/OPTIONS.md; sizes and token counts\n"
    "  also take K/M/G/T suffixes (powers of 1024)\n";



int main(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        fputs(USAGE, argc < 2 ? stderr : stdout);
        return argc < 2 ? 1 : 0;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("mtok %s\n", MTOK_VERSION);
        return 0;
    }
    static const struct {
        const char *name;
        int (*fn)(int, char **);
    } cmds[] = {{"generate", cmd_generate}, {"chat", cmd_chat},   {"tokenize", cmd_tokenize},
                {"logits", cmd_logits},     {"info", cmd_info},   {"synth", cmd_synth},
                {"demo", cmd_demo},         {"niah", cmd_niah},   {"eval", cmd_eval},
                {"bench", cmd_bench},       {"prefill", cmd_prefill}, {"qa", cmd_qa}, {"check", cmd_check},
                {"serve", cmd_serve}, {"image", cmd_image}};
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++)
        if (!strcmp(argv[1], cmds[i].name))
            return cli_help_wanted(argc - 1, argv + 1) ? (cli_help(argv[1]) ? 1 : 0) : cmds[i].fn(argc - 1, argv + 1);
    return cli_usage_error("unknown command '%s'", argv[1]);
}
