/* backend_cuda_attn.c — attention on the CUDA backend over the device's own copy of the KV cache.
 *
 * core/attn.c streams a layer's blocks from the host store (kvstore/) through attn_blocks, in block
 * order, as the policy chose them. The device attends its own copy (ck_kv: logical block b in page
 * b of the layer's pool), so attn_blocks only (1) uploads rows the copy lacks — after a KV file was
 * loaded or a truncate cut into a block — from the streamed block's host pointers, transposed from
 * the store's layout (token-major, or K in 16-key panels) to the page layout, and (2) adds the block to
 * the list of every KV group that attends it. attn_end sends the lists (each group's blocks, or -1:
 * every block up to kv_len, which is what the exact policy always needs, so its lists are never sent)
 * and launches split-KV flash-decoding (n <= CK_DECODE_MAX_N) or the prefill kernel over them.
 *
 * topk on the device (topk_dev, docs/GPU.md): for a decode-sized chunk whose rows the device holds
 * entirely, kv_holds says so, core/attn.c streams nothing and attn_end launches ck_topk_score and
 * ck_topk_select first: they write the layer's lists into the step block on the device, where the
 * decode kernel reads them; the host neither reads the queries nor sends a list, so the step can be
 * a CUDA graph. The summaries those kernels read are rebuilt on the device after every append
 * (backend_cuda.c cu_qkv) and every upload below.
 *
 * valid[l][b] counts the rows of block b of layer l, from row 0, that the device holds; prefix[l] the
 * positions from 0 on that are all held (a decode step can be a graph only when prefix covers
 * everything before it: nothing to upload). A rope_append that lands past valid (a hole after a
 * forget) leaves valid as it is: the rows in between come from the store, whose copy holds the
 * appended rows too (kvs_write rounds to bf16 as the kernel does). */
#include <string.h>

#include "backend_cuda.h"

#define VALID(st, l, b) ((st)->valid[(l) * (st)->plan.kv_blocks + (b)])

static void advance_prefix(mtok_backend_state *st, int64_t l) {
    for (int64_t b = st->prefix[l] / st->B; b < st->plan.kv_blocks; b++) {
        const int64_t end = b * st->B + VALID(st, l, b);
        if (end <= st->prefix[l]) break;
        st->prefix[l] = end;
        if (VALID(st, l, b) < st->B) break;
    }
}

void cu_kv_appended(mtok_backend_state *st, int64_t l, int64_t kv_pos, int64_t n) {
    const int64_t B = st->B;
    for (int64_t b = kv_pos / B; b <= (kv_pos + n - 1) / B && b < st->plan.kv_blocks; b++) {
        const int64_t s = (kv_pos > b * B ? kv_pos : b * B) - b * B;
        const int64_t e = (kv_pos + n < (b + 1) * B ? kv_pos + n : (b + 1) * B) - b * B;
        if (VALID(st, l, b) >= s && VALID(st, l, b) < e) VALID(st, l, b) = (int32_t)e;
    }
    advance_prefix(st, l);
}

void cu_kv_forget(mtok_backend_state *st, int64_t kv_pos) {
    if (!st) return;
    cu_capture_abort(st, "the KV cache changed", 0);
    const int64_t B = st->B, nb = st->plan.kv_blocks;
    if (kv_pos < 0) kv_pos = 0;
    for (int64_t l = 0; l < st->L; l++) {
        for (int64_t b = kv_pos / B; b < nb; b++) {
            const int64_t keep = kv_pos - b * B > 0 ? kv_pos - b * B : 0;
            if (VALID(st, l, b) > keep) VALID(st, l, b) = (int32_t)keep;
        }
        if (st->prefix[l] > kv_pos) st->prefix[l] = kv_pos;
    }
}

int cu_kv_holds(const mtok_backend_state *st, int64_t layer, int64_t kv_pos) {
    if (layer < 0 || layer >= st->L) return 0;
    /* exact: the kernels take every block up to kv_len, so a complete prefix needs nothing streamed */
    if (st->p.kv_exact) return st->prefix[layer] >= kv_pos;
    /* topk (core/attn.c asks once the layer's queries exist, after the append): the device chooses
     * the blocks of a decode-sized chunk itself when it holds every row up to the chunk's end, so
     * every block's summary was rebuilt from rows it holds (ck_topk_summarize after each append and
     * upload) */
    return st->topk_dev && st->in_step && st->ch.n <= CK_DECODE_MAX_N &&
           st->prefix[layer] >= kv_pos + (st->ch.append ? st->ch.n : 0);
}

/* Rows [r0, r1) of a streamed block to the device copy of layer l, block b. */
static int upload(mtok_backend_state *st, int64_t l, const kvs_block *blk, int64_t r0, int64_t r1) {
    const int64_t B = st->B, G = st->p.G, D = st->p.D, b = blk->pos0 / B, nr = r1 - r0;
    if (blk->mem != MTOK_MEM_HOST)
        return mtok_err(MTOK_EINTERNAL, "cuda: KV block %lld of layer %lld is not in host memory", (long long)b,
                        (long long)l);
    if (st->mode == CU_CAPTURE) cu_capture_abort(st, "a KV block upload", 0);
    const size_t kvb = (size_t)(G * 2 * nr * D) * 2, need = kvb + (size_t)nr * 4 + 64;
    if (st->up_off + need > st->up_cap) { /* the staged rows in flight must land before the area is reused */
        int rc = cu_sync(st, "uploading KV blocks");
        if (rc) return rc;
        st->up_off = 0;
    }
    uint16_t *kh = (uint16_t *)((uint8_t *)st->up_h + st->up_off);
    int32_t *ph = (int32_t *)((uint8_t *)kh + kvb);
    st->up_off += (need + 63) / 64 * 64;
    /* per group: K rows [nr][D], then V rows [nr][D] (the page layout of ck.h) */
    for (int64_t g = 0; g < G; g++) {
        uint16_t *k = kh + g * 2 * nr * D, *v = k + nr * D;
        for (int64_t r = r0; r < r1; r++) {
            uint16_t *kr = k + (r - r0) * D, *vr = v + (r - r0) * D;
            if (blk->k_panels) { /* K in 16-key panels per group, V per group [B][D] (kvstore.h) */
                const uint16_t *kg = blk->k + g * B * D;
                for (int64_t d = 0; d < D; d++) kr[d] = kg[MK_KPANEL_AT(r, d, D)];
                memcpy(vr, blk->v + g * B * D + r * D, (size_t)D * 2);
            } else { /* token-major [B][G*D] */
                memcpy(kr, blk->k + r * G * D + g * D, (size_t)D * 2);
                memcpy(vr, blk->v + r * G * D + g * D, (size_t)D * 2);
            }
        }
    }
    for (int64_t r = r0; r < r1; r++) ph[r - r0] = (int32_t)(blk->pos0 + r); /* one rank: KV position = position */
    uint16_t *page = st->kv[l].pages + b * G * 2 * B * D;
    cudaError_t e = cudaSuccess;
    for (int64_t g = 0; g < G && e == cudaSuccess; g++) {
        const uint16_t *k = kh + g * 2 * nr * D;
        uint16_t *dk = page + (g * 2 * B + r0) * D;
        e = cudaMemcpyAsync(dk, k, (size_t)(nr * D) * 2, cudaMemcpyHostToDevice, st->run);
        if (e == cudaSuccess)
            e = cudaMemcpyAsync(dk + B * D, k + nr * D, (size_t)(nr * D) * 2, cudaMemcpyHostToDevice, st->run);
    }
    if (e == cudaSuccess)
        e = cudaMemcpyAsync(st->slot_pos + b * B + r0, ph, (size_t)nr * 4, cudaMemcpyHostToDevice, st->run);
    if (e != cudaSuccess) return cu_fail(e, "uploading a KV block");
    /* the block's summary from every row it now holds (the rows before r0 were held already) */
    if (st->topk_dev && (e = (cudaError_t)ck_topk_summarize(st->run, st->kv[l], cu_sums(st, l), NULL, 0, b, r1)))
        return cu_fail(e, "ck_topk_summarize after a KV block upload");
    VALID(st, l, b) = (int32_t)r1;
    advance_prefix(st, l);
    return 0;
}

static int32_t *list_counts(mtok_backend_state *st, int64_t l) {
    return (int32_t *)(st->step_h + st->plan.off_count) + l * st->p.G;
}
static int32_t *list_ids(mtok_backend_state *st, int64_t l, int64_t g) {
    return (int32_t *)(st->step_h + st->plan.off_lists) + (l * st->p.G + g) * st->plan.list_cap;
}

int cu_attn_begin(mtok_backend_state *st, const mtok_attn_job *j, mtok_partials *p) {
    (void)p; /* the kernels write every row of p: nothing to clear */
    if (j->block_tokens != st->B || j->q_pos != st->ch.kv_pos || j->n != st->ch.n || j->layer < 0 ||
        j->layer >= st->L)
        return mtok_err(MTOK_EINTERNAL, "cuda: attention of %lld rows at %lld (layer %lld, blocks of %lld) in a chunk "
                        "of %lld rows at %lld (blocks of %lld)", (long long)j->n, (long long)j->q_pos,
                        (long long)j->layer, (long long)j->block_tokens, (long long)st->ch.n,
                        (long long)st->ch.kv_pos, (long long)st->B);
    cu_prof_begin(st);
    st->job = j;
    st->streamed = 0;
    if (st->plan.list_cap) {
        if (st->list_used[j->layer]) { /* a second attention of the layer (the topk audit): the first's */
            int rc = cu_sync(st, "sending block lists"); /* lists must have left the pinned area */
            if (rc) return rc;
        }
        st->list_used[j->layer] = 1;
        st->cnt_h = list_counts(st, j->layer);
        for (int64_t g = 0; g < st->p.G; g++) st->cnt_h[g] = 0;
    }
    return 0;
}

int cu_attn_blocks(mtok_backend_state *st, const mtok_attn_job *j, mtok_partials *p, const kvs_block *blk, int n_blk) {
    (void)p;
    const int64_t l = j->layer, G = st->p.G;
    st->streamed |= n_blk > 0;
    for (int i = 0; i < n_blk; i++) {
        const int64_t b = blk[i].pos0 / st->B;
        if (blk[i].n <= 0) continue;
        if (b < 0 || b >= st->plan.kv_blocks)
            return mtok_err(MTOK_EINTERNAL, "cuda: KV block %lld outside the %lld of the pool", (long long)b,
                            (long long)st->plan.kv_blocks);
        if (VALID(st, l, b) < blk[i].n) {
            int rc = upload(st, l, &blk[i], VALID(st, l, b), blk[i].n);
            if (rc) return rc;
        }
        if (!st->plan.list_cap) continue; /* exact: the kernels take every block up to kv_len */
        for (int64_t g = 0; g < G; g++)
            if (!j->sel || j->sel[g * j->sel_stride + b]) {
                if (st->cnt_h[g] >= st->plan.list_cap)
                    return mtok_err(MTOK_EINTERNAL, "cuda: more than %lld blocks streamed to one attention",
                                    (long long)st->plan.list_cap);
                list_ids(st, l, g)[st->cnt_h[g]++] = (int32_t)b;
            }
    }
    return 0;
}

int cu_attn_end(mtok_backend_state *st, const mtok_attn_job *j, mtok_partials *p) {
    const int64_t l = j->layer, G = st->p.G, H = st->p.H, D = st->p.D, n = j->n;
    const size_t o_cnt = st->plan.off_count + (size_t)(l * G) * 4;
    ck_blocks bl = {.ids = (const int32_t *)(st->step_d + st->plan.off_lists) + l * G * st->plan.list_cap,
                    .count = (const int32_t *)(st->step_d + o_cnt), .cap = st->plan.list_cap};
    /* nothing streamed and no selection under topk_dev: core/attn.c found kv_holds true and leaves the
     * choice to the device (the topk audit's exact attention streams its blocks, so it is not this) */
    const int dev_choice = st->topk_dev && !j->sel && !st->streamed && n <= CK_DECODE_MAX_N;
    if (st->plan.list_cap && !dev_choice) {
        /* a group streamed every block up to kv_len: "all" (-1), the kernels then need no list */
        const int64_t all = (j->q_pos + n + st->B - 1) / st->B;
        for (int64_t g = 0; g < G; g++) {
            if (st->cnt_h[g] == all) st->cnt_h[g] = -1;
        }
        cudaError_t e = cudaMemcpyAsync(st->step_d + o_cnt, st->cnt_h, (size_t)G * 4, cudaMemcpyHostToDevice, st->run);
        for (int64_t g = 0; g < G && e == cudaSuccess; g++)
            if (st->cnt_h[g] > 0)
                e = cudaMemcpyAsync((int32_t *)bl.ids + g * bl.cap, list_ids(st, l, g), (size_t)st->cnt_h[g] * 4,
                                    cudaMemcpyHostToDevice, st->run);
        if (e != cudaSuccess) return cu_fail(e, "sending block lists");
    }
    const ck_part out = {p->o, p->m, p->d};
    const float *q = st->q_att;
    for (int k = 0; k < st->n_issue; k++) {
        ck_stream s = (ck_stream)st->issue[k];
        int e = 0;
        if (dev_choice) { /* bounds of the candidates, then the lists the decode kernel reads below */
            e = ck_topk_score(s, q, st->stp_d, cu_sums(st, l), st->topk, st->B, st->plan.kv_blocks, H, G, D,
                              st->score_d);
            if (!e)
                e = ck_topk_select(s, st->stp_d, st->score_d, st->topk, st->B, st->plan.kv_blocks, G,
                                   (int32_t *)bl.ids, (int32_t *)bl.count, bl.cap);
            if (e) { /* on the capture stream: the capture is abandoned, the run stream's launches stand */
                if ((e = cu_issue_fail(st, k, e, "the topk block choice"))) return e;
                continue;
            }
        }
        if (n <= CK_DECODE_MAX_N) {
            e = ck_attn_decode(s, q, st->stp_d, st->kv[l], bl, n, H, st->plan.n_split, st->work);
            if (!e) e = ck_attn_combine(s, out, st->work, st->plan.n_split, n * H, D);
        } else {
            e = ck_attn_prefill(s, q, st->stp_d, st->kv[l], bl, n, H, out);
        }
        if (e && (e = cu_issue_fail(st, k, e, n <= CK_DECODE_MAX_N ? "ck_attn_decode" : "ck_attn_prefill"))) return e;
    }
    cu_prof_end(st, ST_ATTN);
    return 0;
}

void cu_merge(mtok_backend_state *st, mtok_partials *into, const mtok_partials *from, int64_t rows) {
    for (int k = 0; k < st->n_issue; k++) {
        int e = ck_merge((ck_stream)st->issue[k], (ck_part){into->o, into->m, into->d},
                         (ck_part){from->o, from->m, from->d}, rows, into->D);
        if (e && (e = cu_issue_fail(st, k, e, "ck_merge")) && !st->sticky_rc) st->sticky_rc = e;
    }
}
