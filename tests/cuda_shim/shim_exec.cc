/* shim_exec.cc — the shim's execution engine: runs a kernel's blocks on the CPU, each CUDA thread a
 * fiber with its own stack, with real block and warp barriers and the warp exchange behind shuffles
 * and votes.
 *
 * Why fibers: kernels synchronise (__syncthreads, shuffles) in the middle of their code, so each CUDA
 * thread needs a stack that can wait. One OS thread per CUDA thread did that too, but a barrier of 256
 * OS threads on a two-core machine costs hundreds of context switches through the kernel: the kernel
 * tests took minutes. Fibers switch in user space, run in a fixed order (the same interleaving on
 * every run), and let the engine see a barrier that can never complete (a deadlock is reported
 * instead of hanging).
 *
 * Scheduling: the fibers of a block run in linear thread order, each until it waits at a barrier or
 * returns; a barrier completes when every live thread of its scope (block or warp) has arrived, and
 * a returned thread no longer counts. A pass in which no fiber can run while some have not returned
 * is a deadlock.
 *
 * ThreadSanitizer (a -fsanitize=thread build): every fiber is a TSan fiber, switched without
 * implying any order; each barrier is a release by every arriving fiber and an acquire by every
 * leaving one, so TSan reports exactly the accesses that no barrier orders within a block. Blocks are
 * ordered one after another (their static __shared__ variables are the same memory). Everything the
 * scheduler and the fibers share is atomic, so the engine's own bookkeeping never shows as a race.
 * AddressSanitizer is told about the stack switches too. */
#include "ck_shim.h"
#include "shim_internal.h"

#include <sys/mman.h>
#if !defined(__x86_64__)
#include <ucontext.h>
#endif

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <vector>

#if defined(__SANITIZE_THREAD__)
#define CK_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define CK_TSAN 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__)
#define CK_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define CK_ASAN 1
#endif
#endif
#ifdef CK_TSAN
#include <sanitizer/tsan_interface.h>
#endif
#ifdef CK_ASAN
#include <sanitizer/common_interface_defs.h>
#endif

namespace ck_shim {
namespace {

template <class T> using rel = std::atomic<T>; /* engine state shared by scheduler and fibers */
constexpr auto R = std::memory_order_relaxed;

/* A barrier of the fibers of one scope. sync[] are the addresses TSan's release/acquire use: one per
 * parity of the generation, so a fiber already arriving at the next barrier cannot hand its later
 * accesses to a fiber still leaving this one. */
struct barrier_t {
    rel<int> expected{0}, arrived{0};
    rel<uint64_t> gen{0};
    char sync[2];
};

struct warp_t {
    barrier_t bar;
    rel<unsigned> live{0};
    uint64_t slot[32] = {}; /* written and read by the lanes between barriers: plain memory */
};

enum fiber_state { F_RUN, F_WAIT, F_DONE };

constexpr size_t stack_bytes = 512 << 10; /* virtual: only the pages a kernel touches are committed */

/* The fiber switch. On x86-64 a few instructions (ck_shim_switch below): swapcontext also saves and
 * restores the signal mask, two system calls per switch, which was half the time of a decode step.
 * Elsewhere ucontext. */
#if defined(__x86_64__)
struct context {
    void *sp;
};
#else
struct context {
    ucontext_t uc;
};
#endif

struct fiber {
    context ctx;
    char *stack = nullptr; /* stack_bytes, below it one guard page */
    coords c;
    int lane = 0;
    warp_t *warp = nullptr;
    rel<int> state{F_RUN};
    rel<barrier_t *> wait_on{nullptr};
    rel<uint64_t> wait_gen{0};
    int red_phase = 0;
#ifdef CK_TSAN
    void *tsan = nullptr;
#endif
#ifdef CK_ASAN
    void *fake_stack = nullptr;
#endif
};

struct block_t {
    barrier_t bar;
    rel<int> red[2];
    std::vector<std::unique_ptr<warp_t>> warps;
    unsigned char *smem = nullptr;
    const op_fn *body = nullptr;
    char start_sync, end_sync; /* TSan: the scheduler's setup before the block, the block before what follows */
};

std::mutex engine_lock;
std::vector<std::unique_ptr<fiber>> pool; /* under engine_lock; grows to the largest block seen */

/* The running fiber and the scheduler's context, on the launching OS thread. */
thread_local rel<fiber *> cur{nullptr};
thread_local rel<block_t *> cur_block{nullptr};
thread_local context sched_ctx;
#ifdef CK_TSAN
thread_local rel<void *> sched_tsan{nullptr};
#endif
#ifdef CK_ASAN
thread_local const void *sched_stack_bottom = nullptr;
thread_local size_t sched_stack_size = 0;
#endif

/* MTOK_SHIM_STATS=1: print what the engine ran at exit (to size tests: the cost is per block thread) */
std::atomic<long long> st_grids{0}, st_blocks{0}, st_threads{0};
struct stats_printer {
    ~stats_printer() {
        const char *v = getenv("MTOK_SHIM_STATS");
        if (v && *v == '1')
            fprintf(stderr, "ck_shim: %lld grids, %lld blocks, %lld block threads run\n", st_grids.load(),
                    st_blocks.load(), st_threads.load());
    }
} stats_at_exit;

void tsan_release(void *a) {
#ifdef CK_TSAN
    __tsan_release(a);
#else
    (void)a;
#endif
}
void tsan_acquire(void *a) {
#ifdef CK_TSAN
    __tsan_acquire(a);
#else
    (void)a;
#endif
}

#if defined(__x86_64__)
/* Save the callee-saved registers, MXCSR and the x87 control word on the current stack, store the
 * stack pointer in *from, continue on stack `to` (saved the same way, or made by init_stack). */
extern "C" void ck_shim_switch(void **from, void *to);
asm(R"(
    .text
    .globl ck_shim_switch
    .type ck_shim_switch, @function
ck_shim_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size ck_shim_switch, .-ck_shim_switch
)");
/* What switch_context needs of the context switched to, read before TSan is told of the switch (the
 * scheduler wrote it: read after, it would count as the fiber's read). */
void *target(context *to) { return to->sp; }
void switch_context(context *from, void *to) { ck_shim_switch(&from->sp, to); }
#else
void *target(context *to) { return &to->uc; }
void switch_context(context *from, void *to) { swapcontext(&from->uc, (ucontext_t *)to); }
#endif

/* From the scheduler into fiber f, until it waits or returns. Not inlined: swapcontext "returns
 * twice", which would make the compiler distrust the scheduler loop's variables. */
__attribute__((noinline)) void resume(fiber *f) {
    cur.store(f, R);
    current.store(&f->c, R);
    void *to = target(&f->ctx);
#ifdef CK_TSAN
    __tsan_switch_to_fiber(f->tsan, __tsan_switch_to_fiber_no_sync);
#endif
#ifdef CK_ASAN
    void *fake = nullptr;
    __sanitizer_start_switch_fiber(&fake, f->stack, stack_bytes);
#endif
    switch_context(&sched_ctx, to);
#ifdef CK_ASAN
    __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
    current.store(nullptr, R);
    cur.store(nullptr, R);
}

/* From fiber f back to the scheduler; returns when the scheduler resumes f. last: f has returned. */
void to_scheduler(fiber *f, bool last) {
    void *to = target(&sched_ctx);
#ifdef CK_TSAN
    __tsan_switch_to_fiber(sched_tsan.load(R), __tsan_switch_to_fiber_no_sync);
#endif
#ifdef CK_ASAN
    __sanitizer_start_switch_fiber(last ? nullptr : &f->fake_stack, sched_stack_bottom, sched_stack_size);
#endif
    switch_context(&f->ctx, to);
#ifdef CK_ASAN
    __sanitizer_finish_switch_fiber(f->fake_stack, &sched_stack_bottom, &sched_stack_size);
#endif
    (void)last;
}

fiber &self(const char *what) {
    fiber *f = cur.load(R);
    if (!f) {
        char m[128];
        snprintf(m, sizeof m, "%s called outside a kernel", what);
        fail(m);
    }
    return *f;
}

void arrive_and_wait(barrier_t &b, fiber &f) {
    const uint64_t g = b.gen.load(R);
    tsan_release(&b.sync[g & 1]);
    if (b.arrived.fetch_add(1, R) + 1 == b.expected.load(R)) {
        b.arrived.store(0, R);
        b.gen.store(g + 1, R);
    } else {
        f.wait_on.store(&b, R);
        f.wait_gen.store(g, R);
        f.state.store(F_WAIT, R);
        to_scheduler(&f, false); /* back when b.gen has moved on */
        f.state.store(F_RUN, R);
    }
    tsan_acquire(&b.sync[g & 1]);
}

/* A returned thread leaves the barrier's count; if everyone else already waits, the phase ends. */
void drop(barrier_t &b) {
    int e = b.expected.fetch_sub(1, R) - 1;
    if (e > 0 && b.arrived.load(R) == e) {
        b.arrived.store(0, R);
        b.gen.fetch_add(1, R);
    }
}

void fiber_entry() {
    fiber *f = cur.load(R);
#ifdef CK_ASAN
    __sanitizer_finish_switch_fiber(nullptr, &sched_stack_bottom, &sched_stack_size);
#endif
    block_t *b = cur_block.load(R);
    tsan_acquire(&b->start_sync);
    (*b->body)();
    f->warp->live.fetch_and(~(1u << f->lane), R);
    drop(f->warp->bar);
    drop(b->bar);
    f->state.store(F_DONE, R);
    tsan_release(&b->end_sync); /* after the fiber's last touch of its block and of itself */
    to_scheduler(f, true);
    fail("a finished fiber was resumed");
}

/* f's next resume starts fiber_entry on f's stack. Not inlined: getcontext (the ucontext path)
 * "returns twice". */
__attribute__((noinline)) void start_at_entry(fiber &f) {
#if defined(__x86_64__)
    /* the frame ck_shim_switch pops: MXCSR and x87 control word, r15..r12, rbx, rbp (zero), then
     * fiber_entry as the return address, above it a zero "return address" of fiber_entry, so that
     * fiber_entry starts with the stack aligned as after a call (rsp + 8 a multiple of 16) */
    uint64_t *top = (uint64_t *)(((uintptr_t)(f.stack + stack_bytes)) & ~(uintptr_t)15);
    uint64_t *sp = top - 9;
    memset(sp, 0, 9 * sizeof *sp);
    uint32_t mxcsr;
    uint16_t fpucw;
    asm volatile("stmxcsr %0" : "=m"(mxcsr));
    asm volatile("fnstcw %0" : "=m"(fpucw));
    memcpy(sp, &mxcsr, 4);
    memcpy((char *)sp + 4, &fpucw, 2);
    top[-2] = (uint64_t)(uintptr_t)&fiber_entry;
    f.ctx.sp = sp;
#else
    getcontext(&f.ctx.uc);
    f.ctx.uc.uc_stack.ss_sp = f.stack;
    f.ctx.uc.uc_stack.ss_size = stack_bytes;
    f.ctx.uc.uc_link = nullptr;
    makecontext(&f.ctx.uc, fiber_entry, 0);
#endif
}

char *new_stack() {
    const size_t page = 4096;
    void *m = mmap(nullptr, stack_bytes + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
    if (m == MAP_FAILED)
        fail("mmap of a fiber stack failed");
    mprotect(m, page, PROT_NONE); /* a kernel overflowing its stack faults instead of corrupting another */
    return (char *)m + page;
}

[[noreturn]] void deadlock(const block_t &b, unsigned nt) {
    unsigned at_block = 0, at_warp = 0, done = 0;
    for (unsigned t = 0; t < nt; t++) {
        const fiber &f = *pool[t];
        if (f.state.load(R) == F_DONE)
            done++;
        else if (f.wait_on.load(R) == &b.bar)
            at_block++;
        else
            at_warp++;
    }
    const coords &c = pool[0]->c;
    char m[320];
    snprintf(m, sizeof m,
             "deadlock in block (%u,%u,%u): %u threads wait at __syncthreads, %u at a warp barrier/shuffle, %u "
             "returned — a barrier that not every live thread of its block or warp reaches",
             c.bid.x, c.bid.y, c.bid.z, at_block, at_warp, done);
    fail(m);
}

} // namespace

void fail(const char *what) {
    fprintf(stderr, "ck_shim: %s\n", what);
    fflush(stderr);
    abort();
}

void *dyn_smem() {
    self("dynamic shared memory");
    return cur_block.load(R)->smem;
}
int lane() { return self("a warp function").lane; }

void syncthreads() { arrive_and_wait(cur_block.load(R)->bar, self("__syncthreads")); }

int syncthreads_reduce(int pred, int op) {
    fiber &f = self("__syncthreads_count/and/or");
    block_t *b = cur_block.load(R);
    int p = f.red_phase;
    f.red_phase ^= 1;
    arrive_and_wait(b->bar, f);
    /* the other counter was last read before this call's first barrier: reset it for the next call */
    if (f.c.tid.x == 0 && f.c.tid.y == 0 && f.c.tid.z == 0)
        b->red[p ^ 1].store(0, R);
    b->red[p].fetch_add(pred != 0, R);
    arrive_and_wait(b->bar, f);
    int n = b->red[p].load(R);
    int total = (int)(f.c.bdim.x * f.c.bdim.y * f.c.bdim.z);
    return op == 0 ? n : op == 1 ? n == total : n != 0;
}

static void check_mask(warp_t *w, unsigned mask, const char *what) {
    unsigned live = w->live.load(R);
    if (live & ~mask) {
        char m[160];
        snprintf(m, sizeof m, "%s with mask 0x%08x while lanes 0x%08x are live: partial warps are not emulated",
                 what, mask, live);
        fail(m);
    }
}

void syncwarp(unsigned mask) {
    fiber &f = self("__syncwarp");
    check_mask(f.warp, mask, "__syncwarp");
    arrive_and_wait(f.warp->bar, f);
}

void warp_gather(unsigned mask, uint64_t mine, uint64_t all[32], unsigned *live) {
    fiber &f = self("a warp shuffle or vote");
    warp_t *w = f.warp;
    check_mask(w, mask, "a warp shuffle or vote");
    w->slot[f.lane] = mine;
    arrive_and_wait(w->bar, f);
    *live = w->live.load(R);
    for (int l = 0; l < 32; l++)
        all[l] = ((*live >> l) & 1u) ? w->slot[l] : 0;
    arrive_and_wait(w->bar, f); /* nobody overwrites a slot before every lane has read it */
}

void run_grid(dim3 grid, dim3 block, size_t smem, const op_fn &body) {
    std::lock_guard<std::mutex> hold(engine_lock);
    const unsigned nt = block.x * block.y * block.z;
    const uint64_t nb = (uint64_t)grid.x * grid.y * grid.z;
    st_grids++;
    st_blocks += (long long)nb;
    st_threads += (long long)(nb * nt);
    std::unique_ptr<unsigned char[]> smem_buf(new unsigned char[smem ? smem + 256 : 1]);
    unsigned char *smem_base = (unsigned char *)(((uintptr_t)smem_buf.get() + 255) & ~(uintptr_t)255);
    while (pool.size() < nt) {
        auto f = std::make_unique<fiber>();
        f->stack = new_stack();
#ifdef CK_TSAN
        f->tsan = __tsan_create_fiber(0);
#endif
        pool.push_back(std::move(f));
    }
#ifdef CK_TSAN
    sched_tsan.store(__tsan_get_current_fiber(), R);
#endif

    for (uint64_t bi = 0; bi < nb; bi++) {
        block_t b;
        b.bar.expected.store((int)nt, R);
        b.red[0].store(0, R);
        b.red[1].store(0, R);
        for (unsigned w = 0; w * 32 < nt; w++) {
            auto wp = std::make_unique<warp_t>();
            unsigned n = std::min(32u, nt - w * 32);
            wp->bar.expected.store((int)n, R);
            wp->live.store(n == 32 ? 0xffffffffu : (1u << n) - 1, R);
            b.warps.push_back(std::move(wp));
        }
        b.body = &body;
        if (smem) {
            memset(smem_base, 0xFF, smem); /* NaN: reading shared memory nobody wrote shows */
            b.smem = smem_base;
        }
        const uint3 bid{(unsigned)(bi % grid.x), (unsigned)(bi / grid.x % grid.y),
                        (unsigned)(bi / ((uint64_t)grid.x * grid.y))};
        for (unsigned t = 0; t < nt; t++) {
            fiber &f = *pool[t];
            f.c = coords{uint3{t % block.x, t / block.x % block.y, t / (block.x * block.y)}, bid, block, grid};
            f.lane = (int)(t % 32);
            f.warp = b.warps[t / 32].get();
            f.state.store(F_RUN, R);
            f.wait_on.store(nullptr, R);
            f.red_phase = 0;
            start_at_entry(f);
        }
        cur_block.store(&b, R);
        tsan_release(&b.start_sync);
        for (;;) {
            bool ran = false, all_done = true;
            for (unsigned t = 0; t < nt; t++) {
                fiber &f = *pool[t];
                int st = f.state.load(R);
                if (st == F_DONE)
                    continue;
                all_done = false;
                if (st == F_WAIT && f.wait_on.load(R)->gen.load(R) == f.wait_gen.load(R))
                    continue;
                resume(&f);
                ran = true;
            }
            if (all_done)
                break;
            if (!ran)
                deadlock(b, nt);
        }
        tsan_acquire(&b.end_sync);
        cur_block.store(nullptr, R);
    }
}

int launch(const void *func, dim3 grid, dim3 block, size_t smem, cudaStream_t s, std::function<void()> body) {
    const uint64_t nt = (uint64_t)block.x * block.y * block.z;
    if (nt == 0 || nt > 1024 || block.z > 64 || grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 ||
        grid.z > 65535)
        return (int)set_error(cudaErrorInvalidConfiguration);
    if (smem > func_max_dyn_smem(func))
        return (int)set_error(cudaErrorInvalidValue); /* what a launch past the 48 KiB default reports */
    return (int)set_error(submit(s, OP_KERNEL, [grid, block, smem, body = std::move(body)]() {
        run_grid(grid, block, smem, body);
    }));
}

} // namespace ck_shim
