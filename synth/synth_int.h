/* synth_int.h — private interfaces of mtok synth, shared by synth/synth.c (presets, weights, configs),
 * synth/st_write.c (crash-safe output files, streaming safetensors writer) and synth/synth_tok.c
 * (the byte-level BPE trainer behind tokenizer.model). The public part is synth/mtok_synth.h. */
#ifndef MTOK_SYNTH_INT_H
#define MTOK_SYNTH_INT_H

#include <stdint.h>
#include <stddef.h>

#include "mtok_synth.h"

/* ---- output files (st_write.c) ------------------------------------------------------------------
 * Every file of a checkpoint is written to DIR/.NAME.tmp-PID and only renamed to DIR/NAME by
 * mtok_out_commit(), so an interrupted synth never leaves a half-written file under a real name.
 * mtok_out_free() unlinks whatever was not committed. */
typedef struct {
    char *tmp;   /* temporary path; NULL once renamed */
    char *final; /* DIR/NAME */
} mtok_out_file;

typedef struct {
    const char *dir;
    mtok_out_file *v;
    size_t n, cap;
} mtok_outset;

/* A buffered writer on one temporary file. */
typedef struct {
    int fd;
    const char *path; /* final path, for messages (owned by the outset) */
    char *buf;
    size_t n, cap;
    uint64_t bytes;   /* written so far, buffered bytes included */
} mtok_wfile;

int mtok_out_create(mtok_outset *o, const char *name, mtok_wfile *f);
int mtok_wfile_write(mtok_wfile *f, const void *p, size_t n);
/* Flushes, fsyncs and closes; the file is closed even when this fails. */
int mtok_wfile_close(mtok_wfile *f);
/* Writes a whole small file. */
int mtok_out_text(mtok_outset *o, const char *name, const char *text, size_t len);
/* Renames every file in creation order (so the caller creates the "this is a model" marker,
 * config.json, last), then fsyncs the directory. */
int mtok_out_commit(mtok_outset *o);
void mtok_out_free(mtok_outset *o);

/* ---- safetensors (st_write.c) ------------------------------------------------------------------ */
typedef struct {
    char name[96];
    mtok_dtype dtype;
    int ndim;         /* 1 to 4 (GLM-4V's convolution kernels are 4-D, its boi/eoi 3-D) */
    int64_t shape[4];
    int shard;        /* set by mtok_st_write: 0-based shard index */
    uint64_t off;     /* set by mtok_st_write: begin of the data inside its shard's data area */
} mtok_st_tensor;

uint64_t mtok_st_nbytes(const mtok_st_tensor *t);

/* Fills dst with elements [elem0, elem0 + n) of tensor ti (row-major, in the tensor's dtype). */
typedef int (*mtok_st_fill_fn)(void *user, size_t ti, uint64_t elem0, uint64_t n, void *dst);

/* Writes the tensors, in table order, as model.safetensors (shards == 1) or as
 * model-0000i-of-0000n.safetensors split roughly evenly by bytes + model.safetensors.index.json.
 * Memory use is one chunk buffer, whatever the tensor sizes. */
int mtok_st_write(mtok_outset *o, mtok_st_tensor *t, size_t n, int shards, mtok_st_fill_fn fill, void *user);

/* Removes weight files of another layout (model.safetensors, model-*-of-*.safetensors, the index)
 * from o->dir that o is not about to commit; other files are never touched. */
int mtok_st_remove_stale(const mtok_outset *o);

/* ---- tokenizer (synth_tok.c) ------------------------------------------------------------------- */
#define MTOK_SYN_N_SPECIAL 14
/* The GLM-4 special tokens in id order; they are numbered right after the BPE ranks. */
extern const char *const mtok_syn_specials[MTOK_SYN_N_SPECIAL];

/* Trains byte-level BPE on the embedded corpus and renders a tiktoken rank file
 * ("base64 rank\n" per line, ranks 0..255 = the single bytes). *n_ranks <= max_ranks. */
int mtok_syn_tokenizer(int64_t max_ranks, char **text, size_t *len, int64_t *n_ranks);
/* The same trained on a caller's corpus (the needle model uses public-domain English). */
int mtok_syn_tokenizer_corpus(const char *corpus, size_t n, int64_t max_ranks, char **text, size_t *len,
                              int64_t *n_ranks);

/* ---- SentencePiece (synth_spm.c) ----------------------------------------------------------------
 * A unigram SentencePiece ModelProto (ChatGLM3's kind of tokenizer.model) of at most max_pieces pieces:
 * <unk> <s> </s>, the 256 byte pieces, characters and strings learned from the embedded corpus. */
int mtok_syn_spm(int64_t max_pieces, char **data, size_t *len, int64_t *n_pieces);

#endif
