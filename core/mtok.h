/* mtok.h — the one public header of libmtok.
 *
 * Lifecycles come in pairs (load/free, create/free). Every function that can fail returns 0 or a
 * negative MTOK_E* code and leaves a one-line message in mtok_errmsg() (thread-local), naming the
 * file and the object at fault. Nothing in the library calls exit() or abort().
 * Sizes that grow with context length are int64_t / size_t. */
#ifndef MTOK_H
#define MTOK_H

#include <stddef.h>
#include <stdint.h>

#include "../base/mtok_base.h"

#ifdef __cplusplus
extern "C" {
#endif

#define MTOK_VERSION "0.1.0"

/* Errors (MTOK_E*, mtok_err, mtok_errmsg), logging, dtypes and size helpers: base/mtok_base.h. */

/* ---------------------------------------------------------------------------------------------- */
/* Model description, filled from config.json in either naming (see core/config.c).               */
typedef enum { MTOK_NAMING_CHATGLM = 0, MTOK_NAMING_HF = 1 } mtok_naming;

#define MTOK_MAX_EOS 8
typedef struct {
    mtok_naming naming;     /* which tensor names the checkpoint uses */
    int64_t n_layers;       /* num_layers | num_hidden_layers */
    int64_t hidden;         /* hidden_size */
    int64_t n_heads;        /* num_attention_heads */
    int64_t n_kv_groups;    /* multi_query_group_num | num_key_value_heads */
    int64_t head_dim;       /* kv_channels | head_dim */
    int64_t ffn;            /* ffn_hidden_size | intermediate_size */
    int64_t vocab;          /* padded_vocab_size | vocab_size: rows of embedding and output layer */
    int64_t rope_dim;       /* rotated dims per head: head_dim * partial_rotary_factor (0.5 for GLM) */
    double rope_base;       /* effective RoPE base used by the forward pass */
    double rope_base_config;/* the base as the config states it (before correction/override) */
    float norm_eps;         /* layernorm_epsilon | rms_norm_eps */
    int64_t max_ctx;        /* seq_length | max_position_embeddings */
    int qkv_bias;           /* add_qkv_bias | attention_bias */
    int32_t eos_ids[MTOK_MAX_EOS];
    int n_eos;
    int32_t pad_id;
    mtok_dtype dtype;       /* dtype of the 2-D weights */
} mtok_config;

typedef struct mtok_model mtok_model;

typedef struct {
    double rope_base;   /* > 0: override the RoPE base (--rope-base) */
    /* tensor parallel (docs/PARALLEL.md): load only this rank's slices of a tp-way split.
     * tp_size 0 or 1: the whole model. */
    int tp_rank, tp_size;
} mtok_load_params;

/* Loads DIR/config.json + safetensors (single or sharded). Weights are mmapped and used in place. */
int mtok_model_load(const char *dir, const mtok_load_params *p, mtok_model **out);
void mtok_model_free(mtok_model *m);
const mtok_config *mtok_model_config(const mtok_model *m);
/* XXH3-64 of the config + tensor table (mtok info). Saved KV files carry more: this combined with a hash
 * of every weight byte (core/identity.c). */
uint64_t mtok_model_fingerprint(const mtok_model *m);
/* Bytes of all mapped weight tensors. */
uint64_t mtok_model_weight_bytes(const mtok_model *m);

/* ---------------------------------------------------------------------------------------------- */
/* Token id vectors.                                                                               */
typedef struct {
    int32_t *v;
    size_t n, cap;
} mtok_ids;
int mtok_ids_push(mtok_ids *a, int32_t id);
int mtok_ids_append(mtok_ids *a, const int32_t *ids, size_t n);
void mtok_ids_free(mtok_ids *a);

/* ---------------------------------------------------------------------------------------------- */
/* Tokenizer: SentencePiece or tiktoken-style tokenizer.model, or HF tokenizer.json (byte-level BPE). */
typedef struct mtok_tokenizer mtok_tokenizer;

/* Loads DIR/tokenizer.model if present, else DIR/tokenizer.json. */
int mtok_tokenizer_load(const char *dir, mtok_tokenizer **out);
/* Loads one explicit file (format chosen by content). */
int mtok_tokenizer_load_file(const char *path, mtok_tokenizer **out);
void mtok_tokenizer_free(mtok_tokenizer *t);
/* Appends the ids of text to out. allow_special = 0: special-token strings are plain text
 * (the reference default); 1: they map to their ids. */
int mtok_tokenize(const mtok_tokenizer *t, const char *text, size_t len, int allow_special, mtok_ids *out);
/* Id of a special token string such as "[gMASK]", or -1. ChatGLM3's "sop"/"eop" answer to "<sop>"/"<eop>" too. */
int32_t mtok_token_special(const mtok_tokenizer *t, const char *s);
/* Raw bytes of a token (special tokens: their string). NULL for ids outside the vocabulary. */
const char *mtok_token_bytes(const mtok_tokenizer *t, int32_t id, size_t *len);
/* Number of ids the tokenizer can produce (ranks + specials). */
int64_t mtok_tokenizer_n_vocab(const mtok_tokenizer *t);
/* "sentencepiece" (ChatGLM3's tokenizer.model), "tiktoken" (GLM-4's), "tokenizer.json"; "none" for NULL. */
const char *mtok_tokenizer_kind(const mtok_tokenizer *t);
/* The chat_template of the tokenizer_config.json beside the tokenizer file, or NULL. */
const char *mtok_tokenizer_chat_template(const mtok_tokenizer *t);
int mtok_token_is_special(const mtok_tokenizer *t, int32_t id);

/* Streaming decoder: never emits a partial UTF-8 character. Zero-initialize before use. */
typedef struct {
    unsigned char pend[8]; /* [0..n_pend): an incomplete character (<= 3 bytes); [6], [7]: SentencePiece's
                            * decoding state (core/tokenizer.c) */
    int n_pend;
} mtok_decoder;
/* Writes the complete text that the token adds into out and returns the bytes written. Invalid
 * bytes become U+FFFD (3 bytes each), so cap >= mtok_tokenizer_max_token_len() + 8 is always enough;
 * the decoder never writes past cap. */
size_t mtok_decode_next(const mtok_tokenizer *t, mtok_decoder *d, int32_t id, char *out, size_t cap);
/* Flushes pending bytes (invalid trailing UTF-8 becomes U+FFFD). */
size_t mtok_decode_flush(mtok_decoder *d, char *out, size_t cap);
size_t mtok_tokenizer_max_token_len(const mtok_tokenizer *t);
/* Decodes a whole id sequence into a malloc'ed NUL-terminated string (invalid UTF-8 -> U+FFFD);
 * *out_len (optional) gets its length, since decoded text may itself contain NUL bytes. */
char *mtok_detokenize(const mtok_tokenizer *t, const int32_t *ids, size_t n, size_t *out_len);

/* ---------------------------------------------------------------------------------------------- */
/* GLM chat formats, GLM-4's and ChatGLM3's (docs/GLM.md §5), and tool calls.                      */
typedef struct {
    const char *role;       /* "system" | "user" | "assistant" | "observation" */
    const char *metadata;   /* assistant: tool name of a call; may be NULL */
    const char *content;
    const char *tools_json; /* system message only: JSON array of tool definitions; may be NULL */
} mtok_message;

/* [gMASK]<sop> + messages + (optionally) <|assistant|>, as token ids, in the format of the tokenizer's
 * family (a SentencePiece tokenizer is ChatGLM3's). On error out is left as it was. */
int mtok_chat_encode(const mtok_tokenizer *t, const mtok_message *msgs, size_t n, int add_generation_prompt,
                     mtok_ids *out);
/* The same with GLM-4V's image (docs/VISION.md §4): message image_msg (an index into msgs; -1: no
 * image, which is mtok_chat_encode) carries the conversation's one image, whose placeholder ids {boi,
 * <|endoftext|>, eoi} go right after its role line's "\n" and before its content, as glm-4v-9b's
 * template puts them; that message renders even without text. An index rather than a field of
 * mtok_message: one image per conversation is all the model takes, and it keeps the struct's
 * positional initialisers elsewhere valid. image_ids: the checkpoint's config.json ids
 * (mtok_vision_config's boi_id, pad_id, eoi_id), or NULL for the tokenizer's <|begin_of_image|>,
 * <|endoftext|>, <|end_of_image|> (GLM-4's 151339, 151329, 151340 where it lacks them). MTOK_EINPUT for
 * an image on a message whose role is not user, an index out of range, and any image with ChatGLM3
 * (it has no vision). */
int mtok_chat_encode_ex(const mtok_tokenizer *t, const mtok_message *msgs, size_t n, int add_generation_prompt,
                        long image_msg, const int32_t image_ids[3], mtok_ids *out);
/* Checks a JSON array of tool definitions by the rules mtok_chat_encode applies (each entry an object;
 * function objects with a one-line name; built-in python/simple_browser/cogview tools only when
 * chat_template, the checkpoint's tokenizer_config.json template, describes them). */
int mtok_tools_check(const char *tools_json, const char *chat_template);
/* Renders the same conversation as text (special tokens as their strings; GLM-4's format, and no
 * built-in tools: it has no checkpoint to describe them). malloc'ed. */
int mtok_chat_render(const mtok_message *msgs, size_t n, int add_generation_prompt, char **out);

typedef struct {
    int is_tool_call;
    char *name;       /* tool name (metadata line) or NULL */
    char *arguments;  /* JSON text of the arguments (validated) or NULL */
    char *content;    /* the reply text after the metadata line */
} mtok_reply;
/* Parses an assistant reply "metadata\ncontent": non-empty metadata + a JSON object (GLM-4), or + a fenced
 * tool_call(name=literal, ...) block (ChatGLM3, read as Python literals, never run) = tool call; arguments
 * is then JSON (ChatGLM3: as Python's json.dumps writes the keyword arguments). */
int mtok_reply_parse(const char *text, mtok_reply *out);
void mtok_reply_free(mtok_reply *r);

/* ---------------------------------------------------------------------------------------------- */
/* Session: the forward-pass state and KV cache of one sequence.                                   */
typedef struct mtok_session mtok_session;
/* Prefill tokens per chunk by default: each chunk widens every weight once (the GEMM packs W per
 * chunk), so larger chunks amortize that; 512 measured best on glm4-1b (docs/PERFORMANCE.md), the
 * scratch grows as chunk x ffn floats. */
#define MTOK_DEFAULT_CHUNK 512
/* Bounds mtok_session_create enforces (MTOK_EUSAGE beyond them): scratch memory is O(chunk x width),
 * OpenMP team sizes past a few thousand crash its runtime, and positions stay far from int64 limits. */
#define MTOK_MAX_CHUNK (1 << 20)
#define MTOK_MAX_THREADS 1024
#define MTOK_MAX_CTX ((int64_t)1 << 40)
typedef struct {
    int64_t ctx;           /* context limit in tokens (0: the model's max_ctx) */
    int threads;           /* OpenMP threads (0: all cores) */
    int64_t prefill_chunk; /* tokens per prefill chunk (0: MTOK_DEFAULT_CHUNK) */
    int64_t kv_block;      /* tokens per KV block (0: KVS_DEFAULT_BLOCK_TOKENS, 128, kvstore/kvstore.h) */
    /* KV store (docs/KVSTORE.md) */
    uint64_t kv_budget;    /* hot-tier bytes incl. the staging ring (0: unlimited, nothing spills) */
    const char *kv_dir;    /* cold-tier directory (NULL: $TMPDIR, else /var/tmp) */
    int kv_io;             /* 0 auto (io_uring, else the thread pool), 1 io_uring, 2 threads */
    int kv_policy;         /* 0 exact (default), 1 window (StreamingLLM: sinks + recent window),
                            * 2 topk (query-aware block selection over block key bounds) */
    int64_t kv_sinks;      /* tokens kept hot from the start, attention sinks (0: 4) */
    int64_t kv_window;     /* window and topk policies: recent tokens always attended (0: 4096 window, 1024 topk) */
    int kv_depth;          /* cold-tier queue depth (0: 32) */
    int64_t kv_topk;       /* topk policy: blocks chosen per layer and KV group besides sinks/window (0: 64) */
    double kv_audit;       /* topk policy: share of attention steps also run exactly to audit (0: none) */
    /* parallel runs (docs/PARALLEL.md): a communicator per axis from parallel/parallel.h, NULL for
     * one rank. The model must have been loaded with the matching tp_rank/tp_size. */
    struct mp_comm *world;   /* every rank of the job; rank 0 leads (tokenizes, samples, prints), the
                              * others run mtok_session_serve() */
    struct mp_comm *tp_comm; /* tensor parallel: ranks holding the other head/ffn/vocab slices */
    struct mp_comm *cp_comm; /* context parallel: ranks holding the other spans of positions */
    int64_t cp_span;         /* context parallel: tokens per span, assigned round-robin (0: 4096) */
    const char *kv_fault;  /* test-only fault injection "KIND[:NTH[:COUNT]]" (docs/KVSTORE.md); NULL normally */
    const char *device;    /* compute device: "cpu" (NULL: the CPU), "cuda" (device 0) or "cuda:N" (docs/GPU.md) */
} mtok_session_params;

/* Parses a device name ("cpu", "cuda", "cuda:N") into *index: -1 for the CPU, N >= 0 for CUDA device N.
 * MTOK_EUSAGE with a message for anything else, or for cuda in a build without the CUDA backend. */
int mtok_device_parse(const char *name, int *index);
/* The session's compute device as mtok_device_parse reads it: "cpu" or "cuda:N" (the session's
 * storage). What a vision tower run for the session uses (core/vision_prompt.c). */
const char *mtok_session_device(const mtok_session *s);
/* One line on the CUDA backend of this build: "built (sm_80, sm_90a), N devices: NAME, ..." or why
 * there is none ("not built", "built (...); no devices: no NVIDIA driver"); returns the device count. */
int mtok_cuda_describe(char *buf, size_t cap);

/* Per-stage device time of a session's forward steps (the CUDA backend; `mtok bench --device cuda`).
 * mtok_session_profile(s, 1) makes every later op run on its own between timing events (no graphs:
 * the figures are those of the eager step); (s, 0) stops. mtok_session_stage_times adds up the
 * times since profiling began. MTOK_EUSAGE on a backend that does not time its ops (the CPU). */
typedef struct {
    double embed_ms, norm_ms, qkv_ms, attn_ms, attn_out_ms, mlp_ms, residual_ms, logits_ms; /* summed */
    int64_t chunks; /* forward chunks timed */
} mtok_stage_times;
int mtok_session_profile(mtok_session *s, int on);
int mtok_session_stage_times(const mtok_session *s, mtok_stage_times *out);

int mtok_session_create(const mtok_model *m, const mtok_session_params *p, mtok_session **out);
/* Frees the session; on the leading rank of a parallel run this also releases the serving ranks. */
void mtok_session_free(mtok_session *s);
/* Parallel runs: the ranks other than 0 call this after creating their session; it executes the
 * forward, reset and truncate calls the leader makes on its session, in step, until the leader
 * frees its session. Returns 0 then, or an error (the job is normally aborted first). */
int mtok_session_serve(mtok_session *s);
/* 1 when the session is one rank of a parallel run and not its leader. */
int mtok_session_is_follower(const mtok_session *s);
void mtok_session_reset(mtok_session *s);
/* Keeps the first n tokens of the sequence (n <= pos); later positions are forgotten. */
int mtok_session_truncate(mtok_session *s, int64_t n);
int64_t mtok_session_pos(const mtok_session *s);
int64_t mtok_session_ctx(const mtok_session *s);
/* Tokens per prefill chunk (the prefill_chunk parameter or MTOK_DEFAULT_CHUNK). */
int64_t mtok_session_chunk(const mtok_session *s);
const mtok_config *mtok_session_config(const mtok_session *s);
/* Runs ids through the model at positions pos..pos+n-1. If all_logits is non-NULL it receives
 * [n][vocab] fp32 logits of every position; the last position's logits are always available
 * through mtok_session_logits(). Fails with MTOK_EINPUT if pos+n exceeds the context limit. */
int mtok_forward(mtok_session *s, const int32_t *ids, int64_t n, float *all_logits);
const float *mtok_session_logits(const mtok_session *s);
/* ---- GLM-4V: explicit positions and embedding rows (docs/VISION.md §4) ----
 * mtok_forward_ex runs n tokens like mtok_forward, with optional explicit RoPE positions (pos: [n],
 * each >= 0 and non-decreasing, and not below the held tokens' last; NULL: rope_next, rope_next + 1,
 * ..., which is what mtok_forward does) and an optional span of rows whose embeddings are given
 * (embeds: [embed_n][hidden] fp32, host, replacing rows [embed_first, embed_first + embed_n) of the
 * call; NULL: none). One span per session (one image per conversation: a second is MTOK_EUSAGE).
 * all_logits: [n][vocab] or NULL, as mtok_forward. On the CPU and CUDA backends; refused on parallel runs
 * (--tp/--cp) when positions differ from slots or rows are given. On error the session is as before
 * the call. */
typedef struct {
    const int32_t *ids;
    int64_t n;
    const int64_t *pos;
    const float *embeds;
    int64_t embed_first, embed_n;
    float *all_logits;
} mtok_forward_params;
int mtok_forward_ex(mtok_session *s, const mtok_forward_params *p);
/* The RoPE positions of the held tokens 0..pos-1 (NULL while they equal the slots). */
const int64_t *mtok_session_positions(const mtok_session *s);
/* Bytes of KV currently held (hot + cold). */
uint64_t mtok_session_kv_bytes(const mtok_session *s);
/* The token ids at positions 0..pos-1. */
const int32_t *mtok_session_tokens(const mtok_session *s);
typedef struct {
    const char *io;       /* cold-tier I/O in use: "none", "io_uring", "threads" */
    const char *io_note;  /* how it was set up (fallback reason, queue depth) */
    uint64_t hot_bytes, cold_bytes;
    uint64_t spill_writes, spill_reads, bytes_written, bytes_read, dropped; /* bytes_read: all cold reads */
    int64_t tokens_computed; /* tokens run through the model since the session was created */
    /* attention accounting since the session was created (docs/KVSTORE.md, topk): bf16 K+V bytes the
     * attention kernels read (hot or cold; per KV group attending) and what exact attention would
     * have read for the same steps; RAM of the block key summaries (topk) */
    uint64_t bytes_attended, bytes_exact, summary_bytes;
    /* --kv-audit (topk): steps audited, (step, layer, query, head) rows audited, cold bytes the
     * audits read (included in bytes_read), and the share of the exact softmax mass the chosen
     * blocks held: minimum and mean over the audited rows (0 when none) */
    uint64_t audit_steps, audit_rows, audit_bytes_read;
    double audit_mass_min, audit_mass_mean;
} mtok_kv_stats;
void mtok_session_kv_stats(const mtok_session *s, mtok_kv_stats *out);
/* Saves the session's tokens and KV to path (format: docs/KVSTORE.md), atomically. */
int mtok_session_save_kv(mtok_session *s, const char *path);
/* Replaces the session's state with a saved cache. With prompt == NULL every saved token is loaded;
 * otherwise only the longest saved prefix the prompt starts with (block hash chain), so the caller
 * prefills prompt[*n_loaded..]. A file from another model, truncated or corrupt: MTOK_EINPUT. */
int mtok_session_load_kv(mtok_session *s, const char *path, const int32_t *prompt, size_t n_prompt,
                         int64_t *n_loaded);

/* ---------------------------------------------------------------------------------------------- */
/* Sampling.                                                                                       */
typedef struct {
    float temperature;        /* 0: greedy */
    int top_k;                /* 0: off */
    float top_p;              /* 1: off */
    float repetition_penalty; /* 1: off (CTRL-style: positive logits divided, negative multiplied) */
    uint64_t seed;
} mtok_sampler_params;
typedef struct mtok_sampler mtok_sampler;
int mtok_sampler_create(const mtok_sampler_params *p, int64_t vocab, mtok_sampler **out);
void mtok_sampler_free(mtok_sampler *s);
/* Samples from logits [vocab] (modified in place). history: ids seen so far (for the penalty).
 * n_valid: ids >= n_valid (padding rows beyond the tokenizer) are never sampled. */
int32_t mtok_sample(mtok_sampler *s, float *logits, int64_t n_valid, const int32_t *history, size_t n_history);

/* ---------------------------------------------------------------------------------------------- */
/* Requests: feed a prompt with prefix reuse, then generate (core/feed.c, core/generate.c).        */
/* The contract in full, with a server's use of it: docs/SESSION_API.md.                           */

/* Returned (positive: not an error, no message) by mtok_session_feed when the request's cancel flag
 * or progress callback stopped it. */
#define MTOK_CANCELLED 1

/* Streaming: called once per generated token with the text it releases (possibly empty: text that
 * may begin a stop string is held back, and the decoder never splits a UTF-8 character), then once
 * with id -1 for the held-back rest. Nonzero cancels the request after this token. */
typedef int (*mtok_stream_cb)(int32_t id, const char *text, size_t len, void *user);
/* Prefill progress: called after each chunk; done of total tokens computed so far by this feed.
 * Nonzero cancels the request before the next chunk (after the last chunk the prompt is fed whatever
 * it returns; set the cancel flag to also stop the decode). */
typedef int (*mtok_progress_cb)(int64_t done, int64_t total, void *user);

/* Everything zero is a valid request: greedy, no tokens generated (only the prompt is fed), the
 * config's eos ids stop, nothing streamed. */
typedef struct {
    int64_t max_tokens;            /* tokens to generate at most; < 0: until a stop or the context limit */
    const int32_t *stop_ids;       /* ids that stop generation besides the config's eos ids */
    int n_stop_ids;
    int ignore_eos;                /* 1: the config's eos ids do not stop generation */
    const char *const *stop_strings; /* non-empty strings that stop generation when the text contains
                                      * them; the text returned and streamed ends before the match */
    int n_stop_strings;
    mtok_sampler_params sampler;   /* temperature 0: greedy; top_p and repetition_penalty 0 mean off */
    mtok_sampler *sampler_state;   /* optional: use this sampler instead (its random stream continues
                                    * from request to request, as in mtok chat); sampler is then unused */
    /* Cancellation: when *cancel is nonzero (another thread or a signal handler may set it), the
     * request stops at the next boundary: between prefill chunks or before a decode step. */
    volatile int *cancel;
    mtok_stream_cb on_token;
    mtok_progress_cb on_prefill;
    void *user;                    /* passed to the callbacks */
} mtok_request;

typedef enum {
    MTOK_FINISH_NONE = 0,  /* the request has not run */
    MTOK_FINISH_STOP,      /* a stop id or stop string (result.stop_id / result.stop_string say which) */
    MTOK_FINISH_LENGTH,    /* max_tokens generated or the context limit reached */
    MTOK_FINISH_CANCELLED, /* the cancel flag or a callback stopped it */
    MTOK_FINISH_ERROR,     /* mtok_generate returned an error (mtok_errmsg()) */
} mtok_finish;
const char *mtok_finish_name(mtok_finish f); /* "stop", "length", "cancelled", "error", "none" */

typedef struct {
    int64_t prompt_tokens;    /* ids given (an image prompt: its rows, the placeholder triple expanded) */
    int64_t cached_tokens;    /* of them, reused from what the session held */
    int64_t computed_tokens;  /* of them, run through the model (cached + computed < prompt when cancelled) */
    int64_t generated_tokens; /* tokens sampled, the stop id not counted */
    double prefill_s, decode_s;
} mtok_usage;

typedef struct {
    mtok_finish finish;
    int32_t stop_id;          /* the stop id that ended generation, else -1 */
    int stop_string;          /* index into the request's stop_strings that matched, else -1 */
    mtok_usage usage;
    mtok_ids tokens;          /* generated ids (the one that completed a stop string included) */
    char *text;               /* their text as streamed, NUL-terminated (NULL when nothing was generated) */
    size_t text_len;          /* bytes of text (decoded text may itself contain NUL bytes) */
} mtok_result;
void mtok_result_free(mtok_result *r);

/* Makes the session hold exactly ids[0..n): keeps the longest common prefix of what it holds and ids,
 * truncates the rest and prefills the new part in chunks of mtok_session_chunk() tokens, so the
 * logits of position n-1 are current (when the session already holds all of ids, position n-1 is
 * computed again). req (may be NULL) supplies cancel, on_prefill and user. Returns 0,
 * MTOK_CANCELLED (the session then holds ids[0..k) for the chunks finished before the cancel, every
 * one of them exactly as an uncancelled feed computes it, so feeding ids again continues where it
 * stopped), or an error (the session then holds what it held before the failing chunk). usage (may
 * be NULL) receives prompt, cached and computed tokens and prefill_s; the rest is zeroed. */
int mtok_session_feed(mtok_session *s, const int32_t *ids, int64_t n, const mtok_request *req, mtok_usage *usage);

/* Feeds prompt[0..n) as mtok_session_feed does, then samples, streams and feeds back one token at a
 * time until a stop id, a stop string, max_tokens, the context limit or a cancel. res receives the
 * outcome (mtok_result_free it, whatever the return). Afterwards the session holds the prompt and
 * the generated tokens fed back: after a stop id (never fed itself) all of res->tokens, otherwise all
 * but the last (mtok_session_pos tells). Returns 0 for every finish but MTOK_FINISH_ERROR, else the
 * error. */
int mtok_generate(mtok_session *s, const mtok_tokenizer *t, const int32_t *prompt, int64_t n,
                  const mtok_request *req, mtok_result *res);

/* ---------------------------------------------------------------------------------------------- */
/* Checkpoint values (mtok check). mtok_model_load has checked dtypes and shapes; this scans every  */
/* value of every tensor in every shard, bound by the loader or not, for NaN and Inf.              */
typedef struct {
    const char *name, *file; /* valid during the callback only */
    mtok_dtype dtype;
    uint64_t n_elems, n_nan, n_inf;
    int64_t first_bad;       /* element index of the first NaN or Inf */
    int64_t cols;            /* last dimension of a tensor of 2+ dimensions (0 for 1-D): row = first_bad / cols */
} mtok_tensor_check;
typedef struct {
    uint64_t n_tensors, n_bad, bytes; /* tensors scanned, those holding NaN or Inf, bytes scanned */
} mtok_check_summary;
typedef void (*mtok_check_cb)(const mtok_tensor_check *t, void *user);
/* Scans with `threads` OpenMP threads (0: 2); cb (may be NULL) gets each tensor that holds NaN or
 * Inf, in name order. progress_s >= 0: progress in MB scanned on stderr at that interval (base/
 * mtok_base.h; < 0: none). Returns 0 with *out filled whatever the values are, or an error. */
int mtok_model_check(const mtok_model *m, int threads, double progress_s, mtok_check_cb cb, void *user,
                     mtok_check_summary *out);

#ifdef __cplusplus
}
#endif
#endif
