/* help.c — `mtok COMMAND --help`: what each command does and every option its parser accepts.
 * main.c answers --help here before calling the command, so the commands' parsers stay as they are.
 * tests/test_progress_help.py reads each command's parser in cli/ (every cmd_ file) and fails when an option it
 * accepts is missing from the text below: a new option needs its line here. */
#include <stdio.h>
#include <string.h>

#include "cli.h"

/* The options cli_common_opt (cli/common.c) takes, for every command that calls it. */
static const char COMMON[] =
    "common options (ranges in docs/OPTIONS.md):\n"
    "  -m, --model DIR         checkpoint directory (config.json, *.safetensors, tokenizer)\n"
    "  -t, --threads N         OpenMP threads (default: all cores)\n"
    "  --ctx N                 context limit in tokens (default: the model's)\n"
    "  --chunk N               prefill chunk in tokens (default 512)\n"
    "  --kv-block N            tokens per KV block (default 128)\n"
    "  --rope-base X           override the RoPE base\n"
    "  --ignore-eos            do not stop at the model's end-of-sequence ids\n"
    "  --no-simd               scalar kernels only\n"
    "  --isa avx2|avx512|auto  instruction set of the CPU kernels (default auto = the highest, or $MTOK_ISA)\n"
    "  --matmul-precision fp32|bf16  activations of bf16-weight products: fp32 (default) or rounded to\n"
    "                          bf16 (twice avx512's rate, less accurate; or $MTOK_MATMUL_PRECISION)\n"
    "  --device cpu|cuda|cuda:N  compute device (docs/GPU.md)\n"
    "  --vision-device D       GLM-4V: where the vision tower runs (default: --device's)\n"
    "  -v | -q | --log-level N   more, less (errors only) or a given amount of logging (0..3)\n"
    "  --progress-interval S   seconds between progress lines when stderr is not a terminal (default 10;\n"
    "                          0: a line per update); a terminal gets one line redrawn in place\n"
    "  --no-progress           no progress lines (-q also turns them off)\n"
    "kv store (docs/KVSTORE.md):\n"
    "  --kv-budget BYTES       hot-tier RAM (K/M/G); the rest spills to --kv-dir\n"
    "  --kv-dir DIR            cold-tier directory, created when missing (default $TMPDIR or /var/tmp)\n"
    "  --kv-io auto|uring|threads  cold-tier I/O\n"
    "  --kv-depth N            cold-tier queue depth\n"
    "  --kv-policy exact|window|topk  which KV blocks attention reads\n"
    "  --kv-sinks N  --kv-window N   attention sinks and recent window (window, topk policies)\n"
    "  --kv-topk N             blocks chosen per layer and KV group (topk policy)\n"
    "  --kv-audit RATE         share of steps also computed exactly (topk policy, 0..1)\n"
    "  --kv-fault KIND[:NTH[:COUNT]]  test only: inject cold-tier faults\n"
    "parallel (under mpirun/srun, docs/PARALLEL.md):\n"
    "  --tp N  --cp N  --cp-span TOKENS   tensor and context parallel ranks, tokens per span\n"
    "sampling and length:\n"
    "  --temperature, --temp T  0 (default) is greedy     --top-k K     --top-p P\n"
    "  --repetition-penalty R   --seed S                   -n, --max-new N   tokens to generate\n";

typedef struct {
    const char *name;
    const char *text; /* usage, what it does, its own options */
    int common;       /* 1: the command also takes COMMON (it calls cli_common_opt) */
} cmd_help;

static const cmd_help HELP[] = {
    {"generate",
     "usage: mtok generate -m DIR (-p TEXT | -f FILE) [--chat [--system S] [--tools F.json] [--image F]]\n"
     "                     [--load-kv F] [-n N]\n"
     "Streams a continuation of the prompt to stdout; statistics and progress go to stderr.\n"
     "  -p, --prompt TEXT       the prompt\n"
     "  -f, --file FILE         the prompt from a file\n"
     "  --chat                  wrap the prompt in the GLM-4 chat template as a user turn\n"
     "  --system S              a system message (with --chat)\n"
     "  --tools F.json          tool definitions, a JSON array (with --chat)\n"
     "  --image F               GLM-4V: a PNG or JPEG that goes with the user turn (with --chat)\n"
     "  --no-prefix             no [gMASK]<sop> before a plain prompt\n"
     "  --load-kv F             start from a saved document (mtok prefill --save-kv): reuse its prefix, or\n"
     "                          continue after it\n",
     1},
    {"chat",
     "usage: mtok chat -m DIR [-f DOC | --load-kv F] [--system S] [--tools F.json] [--image F] [-n N]\n"
     "Interactive multi-turn chat (GLM-4 template) on stdin/stdout; earlier turns are never recomputed.\n"
     "  -f, --file DOC          open a document: it becomes the first user message and is prefilled at once\n"
     "  --load-kv F             open a saved document (mtok prefill --chat --save-kv F)\n"
     "  --system S              a system message\n"
     "  --tools F.json          tool definitions; calls are printed and answered with an observation line\n"
     "  --image F               GLM-4V: a PNG or JPEG that goes with your first message\n"
     "in the chat: /load FILE (a document or a saved KV; starts a new conversation about it),\n"
     "  /image FILE (GLM-4V: the image goes with your next message; one per conversation),\n"
     "  /reset (clears the turns and the image, keeps the system message and the document), /exit or EOF\n"
     "  quits.\n"
     "  Ctrl-C stops the answer being generated (it stays in the conversation as far as it went);\n"
     "  at the prompt a second Ctrl-C quits.\n",
     1},
    {"tokenize",
     "usage: mtok tokenize -m DIR (--text T | --text-file F) [--special]\n"
     "       mtok tokenize -m DIR --messages F [--tools T] [--generation-prompt]\n"
     "Prints the token ids as one JSON array.\n"
     "  --text T                the text\n"
     "  --text-file F           the text from a file\n"
     "  --special               special-token strings map to their ids (default: plain text)\n"
     "  --messages F            a conversation: JSON array of {\"role\", \"content\", \"metadata\"?, \"image\"?}\n"
     "                          (roles system, user, assistant, observation; \"tool\" means observation),\n"
     "                          rendered in the checkpoint's chat format (GLM-4 or ChatGLM3), [gMASK] prefix\n"
     "                          included; \"image\": true on one user message puts GLM-4V's image placeholder\n"
     "                          <|begin_of_image|><|endoftext|><|end_of_image|> after its role line\n"
     "  --tools T               tool definitions (a JSON array) for the first system message (one is\n"
     "                          added before the others when there is none)\n"
     "  --generation-prompt     end with <|assistant|>, the start of the model's reply\n",
     1},
    {"logits",
     "usage: mtok logits -m DIR (--tokens 1,2,3 | --text-file F) --out F.npy\n"
     "       mtok logits -m DIR --messages M.json [--generation-prompt] [--image F] --out F.npy\n"
     "Writes the float32 [n_tokens, vocab] logits of every position.\n"
     "  --tokens IDS            comma-separated token ids\n"
     "  --text-file F           tokenize this file (its ids only: no [gMASK]<sop> prefix)\n"
     "  --messages M.json       a conversation in the chat template (as mtok tokenize --messages)\n"
     "  --generation-prompt     end it with <|assistant|>\n"
     "  --image F               GLM-4V: a PNG or JPEG on the message marked \"image\": true, else on the\n"
     "                          first user message; the rows are the expanded sequence, image rows\n"
     "                          included ([n - 3 + (grid/2)^2 + 2, vocab])\n"
     "  --out F.npy             the output file\n",
     1},
    {"synth",
     "usage: mtok synth --preset NAME --out DIR [--naming chatglm|hf] [--shards N] [--seed S] [--dtype D]\n"
     "Writes a synthetic checkpoint in the real format.\n"
     "  --list                  print the presets and exit\n"
     "  --preset NAME           the shapes to synthesize\n"
     "  --out DIR               the checkpoint directory to write\n"
     "  --naming chatglm|hf     tensor naming (default chatglm)\n"
     "  --shards N              safetensors shards\n"
     "  --seed S                seed of the weights (here not the sampler's)\n"
     "  --dtype bf16|f16|f32    weight dtype (default bf16)\n",
     1},
    {"info",
     "usage: mtok info [-m DIR]\n"
     "Version, kernels, CUDA, io_uring and cold-tier I/O, CPUs; with -m the model's shapes, fingerprint and\n"
     "tokenizer. No options of its own.\n",
     1},
    {"check",
     "usage: mtok check -m DIR [--threads N]\n"
     "Scans every tensor of a checkpoint: dtype, shape, NaN/Inf counts with the first bad element; exit 2\n"
     "if any is bad. No options of its own (--threads: scan threads, default 2).\n",
     1},
    {"niah",
     "usage: mtok niah -m DIR --lengths L1,L2.. --depths D1,D2..|A:B:N --out DIR [options]\n"
     "Needle-in-a-haystack grid: results.jsonl, heatmap.png and the score table (docs/NEEDLE.md).\n"
     "  --lengths L1,L2..       haystack lengths in tokens (K/M suffixes)\n"
     "  --depths D1,..|A:B:N    needle depths in percent, or N depths from A to B\n"
     "  --out, -o DIR           output directory\n"
     "  --variants, --variant V,..  single, multikey, multivalue, multiquery\n"
     "  --haystack FILE         haystack text (default: the built-in corpus)\n"
     "  --noise                 a repeated noise sentence as the haystack\n"
     "  --needle auto|facts|text  needle kind\n"
     "  --n-extra N             extra needles (0..15)\n"
     "  --resume                keep the cells already in results.jsonl\n"
     "  --all-depths            every depth of a length from one prefill\n"
     "  --title T               heatmap title\n"
     "  --progress | --no-progress  force the progress line on or off\n",
     1},
    {"eval",
     "usage: mtok eval -m DIR --data F.jsonl --out preds.jsonl [--special] [--resume]\n"
     "       [--prompts dataset2prompt.json --maxlen dataset2maxlen.json | --prompts prompts/ [--cot]] [--max-length N]\n"
     "       | mtok eval --score PREDS\n"
     "Runs RULER / LongBench-style records and scores the predictions (docs/EVAL.md).\n"
     "  --data F.jsonl          the records\n"
     "  --out preds.jsonl       the predictions\n"
     "  --score PREDS           score existing predictions only (no model)\n"
     "  --metric all|part|em|f1 the metric\n"
     "  --special               special-token strings in inputs map to their ids\n"
     "  --resume                keep the predictions already in --out\n"
     "  --longbench-e           score LongBench-E: by length bucket (0-4k, 4-8k, 8k+)\n"
     "  --jieba DIR             jieba's dictionary folder, for the Chinese LongBench metrics\n"
     "  --segment FILE          print jieba's words of each line of FILE (as the Chinese metrics segment)\n"
     "LongBench prompted and generated as its pred.py (your checkout's files; docs/EVAL.md 2.1, 2.5):\n"
     "  --prompts FILE|DIR      v1: config/dataset2prompt.json; v2: the prompts/ folder (0shot*.txt)\n"
     "  --maxlen FILE           v1: config/dataset2maxlen.json, each dataset's tokens to generate\n"
     "  --max-length N          pred.py's model2maxlen: longer prompts keep their first and last halves\n"
     "                          (default: the context less the answer's tokens and 16)\n"
     "  --cot                   v2: a chain-of-thought pass (1024 tokens), then the answer pass\n"
     "  --dump-prompts FILE     write each prompt's token ids and the ids generated, one JSON line per pass\n",
     1},
    {"demo",
     "usage: mtok demo [--dir DIR] [--out DIR] [--max-len N] [--no-spill]\n"
     "Builds the planted needle model once and runs a NIAH grid with the KV spilled to disk.\n"
     "  --dir DIR               where the needle model lives (default ~/.cache/mtok/needle)\n"
     "  --out DIR               results directory\n"
     "  --max-len N             longest haystack (default 64K)\n"
     "  --no-spill              keep the whole KV in RAM\n",
     1},
    {"bench",
     "usage: mtok bench (-m DIR | --preset NAME) [--prompt N,.. --gen N --depths D,.. --reps N] [--json]\n"
     "       mtok bench limits [--threads N] [--array-mb N] [--reps N] [--isa avx2|avx512|auto] [--json]\n"
     "       mtok bench kv [--kv-dir D] [--kv-block N | --block-bytes N] [--kv-depth N] [--size BYTES] [--json]\n"
     "       mtok bench --device cuda[:N] (-m DIR | --preset NAME) [options below]\n"
     "Speed against this machine's limits measured in the same run; every run also checks its logits.\n"
     "  --prompt N,..           prefill lengths (default 512)\n"
     "  --gen N                 decode steps per depth (default 32)\n"
     "  --depths D,..           decode depths (default 0,4096,16384,32768; cuda 4096)\n"
     "  --reps N                repetitions (best and mean reported)\n"
     "  --check-tokens N        tokens of the SIMD-vs-scalar logits check (default 32)\n"
     "  --array-mb N            limits: MiB per STREAM array\n"
     "  --json                  one JSON report on stdout instead of text\n"
     "  --preset NAME           synthesize the model on the spot (mtok synth --list)\n"
     "  --synth-dir D  --naming chatglm|hf  --keep-synth   where and how (kept after the run)\n"
     "bench kv: --block-bytes N (block size in bytes), --size BYTES (data written and read back)\n"
     "bench --device cuda: --topk-depths D,..|none  --stage-steps N  --json-out F\n"
     "  --limits-copy-mb N  --limits-gemm M,N,K  --limits-reps N   (docs/GPU.md)\n",
     1},
    {"prefill",
     "usage: mtok prefill -m DIR (-f DOC | -p TEXT) [--chat] [--save-kv F]\n"
     "Prefills a document once (progress on stderr) and saves its KV cache.\n"
     "  -f, --file DOC          the document\n"
     "  -p, --prompt TEXT       the document as text\n"
     "  --chat                  the document as a user message of the chat template:\n"
     "                          [gMASK]<sop><|user|>\\n DOC, for qa --chat and mtok chat --load-kv\n"
     "  --save-kv F             write the KV cache (atomically)\n",
     1},
    {"qa",
     "usage: mtok qa -m DIR (--load-kv F | -f DOC) --questions Q.jsonl [--chat] [-n N]\n"
     "Answers many questions from one document prefill; one JSON line per answer on stdout.\n"
     "  --load-kv F             the document from a saved KV (mtok prefill --save-kv)\n"
     "  -f, --file DOC          prefill the document here\n"
     "  --questions Q.jsonl     one {\"question\": ..} (or \"input\", \"prompt\") per line\n"
     "  --chat                  each question a user turn of its own after the document, then the\n"
     "                          assistant's answer: with -f DOC (or a KV from prefill --chat) the prompt is\n"
     "                          the chat encoding of [user: document, user: question]\n",
     1},
    {"serve",
     "usage: mtok serve -m DIR [--host H] [--port P] [--api-key K] [--served-model-name N] [--sessions N]\n"
     "       [--max-queue N] [--max-body BYTES] [--keepalive S]\n"
     "OpenAI-compatible HTTP server (docs/SERVER.md).\n"
     "  --host H                address to listen on (default 127.0.0.1)\n"
     "  --port P                port (default 8000)\n"
     "  --api-key K             require this bearer key\n"
     "  --served-model-name N   the model name clients see\n"
     "  --sessions N            concurrent sessions (default 1)\n"
     "  --max-queue N           requests waiting for a session (default 8)\n"
     "  --max-body BYTES        largest request body (default 64M)\n"
     "  --keepalive S           idle keep-alive seconds (default 15)\n",
     1},
    {"image",
     "usage: mtok image -m DIR --image F --out X.npy [--preprocessed]\n"
     "       mtok image --size N --image F --out X.npy --preprocessed\n"
     "       mtok image -m DIR [--image F] --prompt-ids IDS.json [--logits-out L.npy] [--layout-out L.json]\n"
     "                  [--split K]\n"
     "Runs one image through GLM-4V's preprocessing and vision tower (docs/VISION.md) and writes a float32\n"
     ".npy: the [(grid/2)^2 + 2, hidden] embeddings, or with --preprocessed the [3, S, S] normalised image.\n"
     "With --prompt-ids: the prompt's image triple expanded to the tower's rows at their shared position\n"
     "(docs/VISION.md section 4) and the language model run over the expanded rows.\n"
     "  --image F               a PNG or JPEG\n"
     "  --out X.npy             the output file\n"
     "  --preprocessed          write the preprocessed image instead of running the tower (with -m DIR only\n"
     "                          its config.json is read, for image_size)\n"
     "  --size N                the image size for --preprocessed without -m (1..16384)\n"
     "  --prompt-ids IDS.json   a prompt as a JSON array of token ids (the image as <|begin_of_image|>\n"
     "                          <|endoftext|><|end_of_image|>; without them it runs as text)\n"
     "  --logits-out L.npy      the [n, vocab] float32 logits of every expanded row, image rows included\n"
     "  --layout-out L.json     the expanded ids, each row's RoPE position and the image's rows\n"
     "  --split K               rows from K on (after the image) through plain mtok_forward, as decoding\n",
     1},
};

int cli_help_wanted(int argc, char **argv) {
    if (argc >= 2 && (!strcmp(argv[1], "-h") || !strcmp(argv[1], "help"))) return 1;
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--help")) return 1;
    return 0;
}

int cli_help(const char *cmd) {
    for (size_t i = 0; i < sizeof HELP / sizeof HELP[0]; i++) {
        if (strcmp(HELP[i].name, cmd)) continue;
        fputs(HELP[i].text, stdout);
        if (HELP[i].common) fputs(COMMON, stdout);
        return 0;
    }
    return cli_usage_error("no help for '%s'", cmd);
}
