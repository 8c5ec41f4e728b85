/* backend_cuda_step.c — one forward chunk on the CUDA backend, from embed to chunk_end: how its ops
 * reach the device, the non-finite checks, the tensor hook and per-stage timing.
 *
 * Modes (backend_cuda.h cu_mode). A chunk runs EAGER (every op launched on the run stream as it is
 * called) unless it is a decode step that can be a CUDA graph: one token, the exact KV policy (the
 * kernels attend "every block up to kv_len" with no list to send), no hook, no profiling, every KV
 * row before it already on the device (so no upload), and MTOK_CUDA_GRAPHS not "0"; under the topk
 * policy the same when the device chooses the blocks (topk_dev: k_topk.cu's kernels read the step
 * block like the others, and core/attn.c reads nothing back). Such a step is
 *   - CAPTURE when no graph exists yet: every op is launched on the run stream AND recorded on the
 *     capture stream (the same launches, twice), so the step computes eagerly whatever happens to the
 *     capture; chunk_end instantiates the recording for the next steps. A capture that fails is
 *     abandoned with a log line and the step is not affected (it never was the graph's to compute).
 *   - REPLAY when one exists: the ops do only their host part (embed fills the pinned step block;
 *     the attention its bookkeeping) and chunk_end launches the graph, whose first node copies the
 *     step block up. Everything a replay reads that changes per token is in the step block (ck.h).
 * Graph-style steps (CAPTURE, REPLAY) keep each layer's new q | k | v row apart (backend_cuda.c
 * cu_qkv), copy every layer's K and V rows to pinned staging in one copy after the last layer, and
 * kvs_write them to the host store in chunk_end; eager steps write them at once (the topk policy
 * reads the store's key summaries before that layer's attention).
 * The graph computes the logits of its row: a step is captured only when the previous one asked for
 * logits (decoding), and a replayed step that asks for none (a library caller's one-token chunks of a
 * longer forward) leaves them unread.
 *
 * Non-finite values. Each check (ck_check) folds the first NaN/Inf of a tensor into one 64-bit
 * record as (seq << 41 | index << 1 | is_inf), keeping the minimum; seq numbers the checks of the
 * step in the order the CPU backend makes them, and a host table says what each one checked. chunk_end
 * reads the record once and turns the smallest key into the CPU backend's message
 * (mtok_backend_nonfinite). With a hook each check is read at once, so the pass stops where the CPU's
 * does and the hook sees the same tensors. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend_cuda.h"

#define NO_KEY (~0ull)

int cu_sync(mtok_backend_state *st, const char *what) {
    if (st->mode == CU_CAPTURE) cu_capture_abort(st, "a synchronisation inside the step", 0);
    cudaError_t e = cudaStreamSynchronize(st->run);
    return e == cudaSuccess ? 0 : cu_fail(e, what);
}

void cu_capture_abort(mtok_backend_state *st, const char *why, int disable) {
    if (st->mode != CU_CAPTURE) return;
    cudaGraph_t g = NULL;
    cudaStreamEndCapture(st->cap, &g);
    if (g) cudaGraphDestroy(g);
    (void)cudaGetLastError();
    st->mode = CU_EAGER;
    st->n_issue = 1;
    if (disable && !st->graphs_off) {
        st->graphs_off = 1;
        mtok_log(1, "cuda: decode graph capture failed (%s); decode steps run eagerly from now on", why);
    } else {
        mtok_log(2, "cuda: decode graph capture abandoned (%s); this step runs eagerly", why);
    }
}

int cu_issue_fail(mtok_backend_state *st, int k, int e, const char *what) {
    if (st->mode == CU_CAPTURE && st->issue[k] == st->cap) {
        char why[160];
        snprintf(why, sizeof why, "%s: %s", what, cudaGetErrorString((cudaError_t)e));
        cu_capture_abort(st, why, 1);
        return 0;
    }
    return cu_fail((cudaError_t)e, what);
}

/* ---- the step ---- */

static int graphs_wanted(void) {
    const char *v = getenv("MTOK_CUDA_GRAPHS");
    return !(v && !strcmp(v, "0"));
}

int cu_step_init(mtok_backend_state *st) {
    st->cap_chk = (uint32_t)(16 + 8 * st->L + st->p.chunk);
    st->chk = malloc(st->cap_chk * sizeof *st->chk);
    st->gchk = malloc(st->cap_chk * sizeof *st->gchk);
    if (!st->chk || !st->gchk)
        return mtok_err(MTOK_ERESOURCE, "out of memory for the check table");
    st->graphs_off = !graphs_wanted();
    st->last_logits = 1;
    return 0;
}

static void graph_drop(mtok_backend_state *st) {
    if (st->gexec) cudaGraphExecDestroy(st->gexec);
    st->gexec = NULL;
    st->n_gchk = 0;
}

void cu_step_free(mtok_backend_state *st) {
    cu_capture_abort(st, "the session ends", 0);
    graph_drop(st);
    free(st->gchk);
    free(st->chk);
    if (st->ev) {
        for (int i = 0; i < 2 * st->cap_ev; i++)
            if (st->ev[i]) cudaEventDestroy(st->ev[i]);
        free(st->ev);
        free(st->ev_stage);
    }
    free(st->hbuf);
    (void)cudaGetLastError();
    if (st->n_captured || st->n_replayed || st->n_eager_decode)
        mtok_log(2, "cuda: decode steps: %lld captured, %lld replayed from a graph, %lld eager",
                 (long long)st->n_captured, (long long)st->n_replayed, (long long)st->n_eager_decode);
}

static size_t a16(size_t x) { return (x + 15) / 16 * 16; }

/* Every layer's positions [0, n) are on the device (backend_cuda_attn.c keeps prefix): nothing to upload. */
static int kv_resident(const mtok_backend_state *st, int64_t n) {
    for (int64_t l = 0; l < st->L; l++)
        if (st->prefix[l] < n) return 0;
    return 1;
}

int cu_step_begin(mtok_backend_state *st, const mtok_chunk *c) {
    int rc = 0;
    if (st->in_step) {
        /* the previous chunk failed part-way: its work may still be queued, reading the pinned step
         * block this one is about to fill, and it may have left a key in the record */
        cu_capture_abort(st, "the previous chunk failed", 0);
        st->mode = CU_EAGER;
        cudaError_t e = cudaStreamSynchronize(st->run);
        if (e == cudaSuccess) e = cudaMemsetAsync(st->rec_d, 0xff, sizeof *st->rec_d, st->run);
        if (e != cudaSuccess) return cu_fail(e, "cleaning up after a failed chunk");
    }
    st->in_step = 1;
    st->ch = *c;
    st->ch.ids = NULL;
    st->n_chk = 0;
    st->logits_out = NULL;
    st->logits_rows = 0;
    st->logits_asked = 0;
    st->up_off = 0;
    st->sticky_rc = 0;
    st->n_ev = 0;
    st->ev_open = 0;
    memset(st->list_used, 0, (size_t)st->L);
    st->sync_checks = st->p.hook && st->p.hook->fn;

    /* topk_dev: with every row before the step on the device, core/attn.c finds kv_holds true for every
     * layer, so every layer's blocks are chosen on the device and nothing is read back */
    const int decode_graph = c->n == 1 && !c->embeds && (st->p.kv_exact || st->topk_dev) && c->append &&
                             !st->sync_checks && !st->prof_on && !st->graphs_off && kv_resident(st, c->kv_pos);
    st->mode = CU_EAGER;
    st->issue[0] = st->run, st->issue[1] = st->cap;
    st->n_issue = 1;
    if (decode_graph) {
        if (st->gexec) {
            st->mode = CU_REPLAY;
            st->n_issue = 0;
        } else if (st->last_logits) {
            cudaError_t e = cudaStreamBeginCapture(st->cap, cudaStreamCaptureModeThreadLocal);
            if (e == cudaSuccess) {
                st->mode = CU_CAPTURE;
                st->n_issue = 2;
            } else {
                (void)cudaGetLastError();
                st->graphs_off = 1;
                mtok_log(1, "cuda: cudaStreamBeginCapture failed (%s); decode steps run eagerly",
                         cudaGetErrorString(e));
            }
        }
    }
    if (st->mode == CU_EAGER && c->n == 1) st->n_eager_decode++;
    st->deferred_kv = st->mode != CU_EAGER;
    cu_prof_begin(st); /* the embed stage: the step block copy and the gather (cu_prof_end in embed) */

    /* the step block: header | ids [n] | cs [n][half] | sn [n][half] (the offsets depend on n only,
     * so every one-token step has the same pointers, as a graph needs) */
    const int64_t n = c->n, half = st->half;
    uint8_t *h = st->step_h;
    const ck_step hdr = {.n = n, .pos = c->pos, .kv_pos = c->kv_pos, .kv_len = c->kv_pos + (c->append ? n : 0),
                         .append = c->append};
    memcpy(h, &hdr, sizeof hdr);
    const size_t o_ids = 64, o_cs = o_ids + a16((size_t)n * 4), o_sn = o_cs + (size_t)(n * half) * 4;
    const size_t bytes = o_sn + (size_t)(n * half) * 4;
    memcpy(h + o_ids, c->ids, (size_t)n * 4);
    float *cs = (float *)(h + o_cs), *sn = (float *)(h + o_sn);
    for (int64_t t = 0; t < n; t++) /* the angles in double (kernels.h): rope_table has nothing left to do */
        mk_rope_table(cs + t * half, sn + t * half, st->c->rope_dim, st->c->rope_base,
                      c->rope_pos ? c->rope_pos[t] : c->pos + t); /* GLM-4V: a position of its own per row */
    st->stp_d = (const ck_step *)st->step_d;
    st->ids_d = (const int32_t *)(st->step_d + o_ids);
    st->cs_d = (const float *)(st->step_d + o_cs);
    st->sn_d = (const float *)(st->step_d + o_sn);
    for (int k = 0; k < st->n_issue && !rc; k++) {
        cudaError_t e = cudaMemcpyAsync(st->step_d, h, bytes, cudaMemcpyHostToDevice, st->issue[k]);
        if (e != cudaSuccess) rc = cu_issue_fail(st, k, e, "the step block copy");
    }
    return rc;
}

/* ---- non-finite checks ---- */

static int record_error(mtok_backend_state *st, unsigned long long key, const cu_check_entry *tab, uint32_t n) {
    if (key == NO_KEY) return 0;
    const uint32_t seq = (uint32_t)(key >> 41);
    const int is_inf = (int)(key & 1);
    const int64_t idx = (int64_t)((key >> 1) & ((1ull << 40) - 1));
    if (seq >= n)
        return mtok_err(MTOK_EINTERNAL, "cuda: the non-finite record names check %u of a step that made %u", seq, n);
    const cu_check_entry *e = &tab[seq];
    if (!e->what) { /* one q | k | v row (cu_qkv): the part the element falls in */
        const int64_t qd = st->qd, kd = st->kd;
        const char *what = idx < qd ? "query projection" : idx < qd + kd ? "key projection" : "value projection";
        const int64_t el = idx < qd ? idx : idx < qd + kd ? idx - qd : idx - qd - kd;
        return mtok_backend_nonfinite(st->p.m, is_inf ? INFINITY : NAN, st->ch.pos + e->row0, 0, el, what, e->layer);
    }
    return mtok_backend_nonfinite(st->p.m, is_inf ? INFINITY : NAN, st->ch.pos + e->row0, idx / e->width,
                                  idx % e->width, e->what, e->layer);
}

/* Reads and resets the record now (eager only); 0 or the error of its key. */
static int checks_flush(mtok_backend_state *st) {
    cudaError_t e = cudaMemcpyAsync(st->rec_h, st->rec_d, sizeof *st->rec_d, cudaMemcpyDeviceToHost, st->run);
    if (e == cudaSuccess) e = cudaMemsetAsync(st->rec_d, 0xff, sizeof *st->rec_d, st->run);
    if (e != cudaSuccess) return cu_fail(e, "reading the non-finite record");
    int rc = cu_sync(st, "reading the non-finite record");
    return rc ? rc : record_error(st, *st->rec_h, st->chk, st->n_chk);
}

int cu_check(mtok_backend_state *st, const float *x, int64_t rows, int64_t width, int64_t row0, const char *what,
             int64_t layer) {
    if (st->mode == CU_REPLAY || rows * width == 0) return 0;
    if (st->n_chk == st->cap_chk) { /* more checks than a step makes (a long logits call): read them now */
        if (st->mode == CU_CAPTURE) cu_capture_abort(st, "the check table is full", 0);
        int rc = checks_flush(st);
        if (rc) return rc;
        st->n_chk = 0;
    }
    const uint32_t seq = st->n_chk;
    st->chk[st->n_chk++] = (cu_check_entry){.what = what, .layer = layer, .row0 = row0, .width = width};
    for (int k = 0; k < st->n_issue; k++) {
        int e = ck_check(st->issue[k], x, rows, width, st->rec_d, seq);
        if (e && (e = cu_issue_fail(st, k, e, "ck_check"))) return e;
    }
    return st->sync_checks ? checks_flush(st) : 0;
}

/* ---- the hook ---- */

int cu_emit(mtok_backend_state *st, const char *name, int64_t layer, int64_t pos, const float *x, int64_t rows,
            int64_t cols) {
    if (!cu_hook_on(st)) return 0;
    const size_t n = (size_t)(rows * cols);
    if (n > st->hbuf_n) {
        float *b = realloc(st->hbuf, n * sizeof *b);
        if (!b) return mtok_err(MTOK_ERESOURCE, "out of memory for a host copy of %s (%zu floats)", name, n);
        st->hbuf = b, st->hbuf_n = n;
    }
    cudaError_t e = cudaMemcpyAsync(st->hbuf, x, n * sizeof *x, cudaMemcpyDeviceToHost, st->run);
    if (e != cudaSuccess) return cu_fail(e, "copying a tensor for the hook");
    int rc = cu_sync(st, "copying a tensor for the hook");
    if (rc) return rc;
    mtok_hook_emit(st->p.hook, name, layer, pos, st->hbuf, rows, cols, MTOK_MEM_HOST);
    return 0;
}

/* ---- per-stage timing ---- */

void cu_prof_begin(mtok_backend_state *st) {
    st->ev_open = 0;
    if (!st->prof_on || st->mode != CU_EAGER || st->n_ev >= st->cap_ev) return;
    st->ev_open = cudaEventRecord(st->ev[2 * st->n_ev], st->run) == cudaSuccess;
    (void)cudaGetLastError();
}

void cu_prof_end(mtok_backend_state *st, cu_stage stage) {
    if (!st->ev_open) return;
    st->ev_open = 0;
    if (cudaEventRecord(st->ev[2 * st->n_ev + 1], st->run) == cudaSuccess) st->ev_stage[st->n_ev++] = (uint8_t)stage;
    (void)cudaGetLastError();
}

int cu_profile(mtok_backend_state *st, int on) {
    if (on && !st->ev) {
        st->cap_ev = (int)(16 + 12 * st->L);
        st->ev = calloc((size_t)(2 * st->cap_ev), sizeof *st->ev);
        st->ev_stage = calloc((size_t)st->cap_ev, 1);
        if (!st->ev || !st->ev_stage) return mtok_err(MTOK_ERESOURCE, "out of memory for the timing events");
        for (int i = 0; i < 2 * st->cap_ev; i++) {
            cudaError_t e = cudaEventCreate(&st->ev[i]);
            if (e != cudaSuccess) return cu_fail(e, "cudaEventCreate");
        }
    }
    if (on && !st->prof_on) memset(&st->times, 0, sizeof st->times);
    st->prof_on = on != 0;
    return 0;
}

int cu_stage_times(const mtok_backend_state *st, mtok_stage_times *out) {
    if (!st->ev) return mtok_err(MTOK_EUSAGE, "per-stage times: profiling was never turned on (mtok_session_profile)");
    *out = st->times;
    return 0;
}

static void prof_collect(mtok_backend_state *st) {
    if (!st->n_ev) return;
    double *slot[ST_COUNT] = {&st->times.embed_ms, &st->times.norm_ms,     &st->times.qkv_ms,
                              &st->times.attn_ms,  &st->times.attn_out_ms, &st->times.mlp_ms,
                              &st->times.residual_ms, &st->times.logits_ms};
    for (int i = 0; i < st->n_ev; i++) {
        float ms = 0;
        if (cudaEventElapsedTime(&ms, st->ev[2 * i], st->ev[2 * i + 1]) == cudaSuccess) *slot[st->ev_stage[i]] += ms;
    }
    (void)cudaGetLastError();
    st->times.chunks++;
    st->n_ev = 0;
}

/* ---- the end of a chunk ---- */

int cu_chunk_end(mtok_backend_state *st, const mtok_chunk *c) {
    int rc = 0;
    const cu_check_entry *tab = st->chk;
    uint32_t n_tab = st->n_chk;
    cudaError_t e;
    if (st->mode == CU_REPLAY) {
        if ((e = cudaGraphLaunch(st->gexec, st->run)) != cudaSuccess) {
            /* the step's work did not run: an error (forward_run rolls the chunk back), and no graph
             * from now on, so a retry runs eagerly */
            rc = cu_fail(e, "cudaGraphLaunch of the decode step");
            graph_drop(st);
            st->graphs_off = 1;
            return rc;
        }
        st->n_replayed++;
        mtok_log(3, "cuda: decode step at position %lld replayed from the graph (%lld replays)", (long long)c->pos,
                 (long long)st->n_replayed);
        tab = st->gchk, n_tab = st->n_gchk;
    } else if (st->mode == CU_CAPTURE) {
        cudaGraph_t g = NULL;
        cudaGraphExec_t x = NULL;
        e = cudaStreamEndCapture(st->cap, &g);
        if (e == cudaSuccess && st->logits_out) e = cudaGraphInstantiate(&x, g, 0);
        if (g) cudaGraphDestroy(g);
        st->mode = CU_EAGER;
        st->n_issue = 1;
        if (e != cudaSuccess) {
            (void)cudaGetLastError();
            st->graphs_off = 1;
            mtok_log(1, "cuda: the decode graph could not be built (%s); decode steps run eagerly",
                     cudaGetErrorString(e));
        } else if (!x) { /* the step asked for no logits: a graph without them would serve no decode step */
            mtok_log(2, "cuda: the step at position %lld asked for no logits: its capture is not kept",
                     (long long)c->pos);
        } else {
            graph_drop(st);
            st->gexec = x;
            memcpy(st->gchk, st->chk, st->n_chk * sizeof *st->chk);
            st->n_gchk = st->n_chk;
            st->n_captured++;
            mtok_log(2, "cuda: decode step at position %lld captured as a CUDA graph (%u checks); later steps "
                     "replay it", (long long)c->pos, st->n_chk);
        }
    }
    if (!rc && (e = cudaMemcpyAsync(st->rec_h, st->rec_d, sizeof *st->rec_d, cudaMemcpyDeviceToHost, st->run)) ==
                   cudaSuccess)
        e = cudaMemsetAsync(st->rec_d, 0xff, sizeof *st->rec_d, st->run);
    if (!rc && e != cudaSuccess) rc = cu_fail(e, "reading the non-finite record");
    if (!rc) rc = cu_sync(st, "the end of the chunk");
    if (rc) return rc;
    st->in_step = 0;
    st->mode = CU_EAGER;
    st->last_logits = st->logits_asked;
    prof_collect(st);
    if ((rc = record_error(st, *st->rec_h, tab, n_tab)) || (rc = st->sticky_rc)) return rc;
    if (st->deferred_kv && c->append) /* each layer's row of this one-token step, in layer order */
        for (int64_t l = 0; l < st->L && !rc; l++) {
            const float *k = st->kvg_h + l * 2 * st->kd;
            rc = kvs_write(c->kv, l, c->kv_pos, c->n, k, k + st->kd, st->kd);
        }
    if (!rc && st->logits_out)
        memcpy(st->logits_out, st->logits_h, (size_t)(st->logits_rows * st->p.V) * sizeof(float));
    st->logits_out = NULL;
    return rc;
}
