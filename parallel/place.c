/* place.c — where a rank runs: hwloc topology, the binding of each local rank, `mtok info`'s view.
 *
 * Policy (mp_bind_plan). The ranks of one node are spread over its NUMA nodes first (rank l goes
 * to node l mod N), so each rank's weights and KV land in the memory next to its cores by first
 * touch; ranks that share a NUMA node get disjoint, equal, contiguous runs of its cores. With a GPU
 * the rank goes to the NUMA node nearest that GPU instead, and the ranks sharing that node are
 * worked out assuming every local rank drives GPU (local rank mod GPUs), the usual one-rank-per-GPU
 * layout, so every rank computes the same partition without talking to the others. A lone rank
 * without a GPU keeps the whole machine. One PU per core is bound: OpenMP sizes its team from the
 * mask, and SMT siblings add threads that compete for the memory bandwidth a decode step is bound by.
 *
 * GPUs are found without CUDA or NVML: a "cudaN" OS device when hwloc has its CUDA plugin (same
 * numbering as the CUDA runtime), else the Nth NVIDIA display-class PCI device in bus order after
 * mapping N through a numeric CUDA_VISIBLE_DEVICES — the CUDA order when CUDA_DEVICE_ORDER=PCI_BUS_ID,
 * which docs/PARALLEL.md recommends. The GPU's locality is its first non-I/O ancestor's cpuset. */
#include <errno.h>
#include <hwloc.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../base/mtok_base.h"
#include "comm_int.h"

#define MP_MAX_LOCAL 1024 /* local ranks considered when partitioning a node */

static int topo_open(hwloc_topology_t *t, int io) {
    if (hwloc_topology_init(t)) return mtok_err(MTOK_ERESOURCE, "hwloc_topology_init failed: %s", strerror(errno));
    /* PCI devices (GPUs, NICs) and their OS devices only when asked: discovery reads sysfs for every
     * PCI function, which costs milliseconds that a plain core count does not need */
    if (io) hwloc_topology_set_io_types_filter(*t, HWLOC_TYPE_FILTER_KEEP_IMPORTANT);
    /* Linux sysfs says all we need about PCI devices. The libpciaccess-based "pci" component keeps
     * allocations past hwloc_topology_destroy (LeakSanitizer reports them), and the OpenCL and
     * OpenGL plugins would start an OpenCL runtime or query an X server. */
    static const char *skip[] = {"pci", "opencl", "gl", "rsmi", "levelzero"};
    for (size_t i = 0; i < sizeof skip / sizeof *skip; i++)
        hwloc_topology_set_components(*t, HWLOC_TOPOLOGY_COMPONENTS_FLAG_BLACKLIST, skip[i]);
    if (hwloc_topology_load(*t)) {
        int e = errno;
        hwloc_topology_destroy(*t);
        return mtok_err(MTOK_ERESOURCE, "hwloc_topology_load failed: %s", strerror(e));
    }
    return 0;
}

static void append(char *buf, size_t cap, size_t *len, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static void append(char *buf, size_t cap, size_t *len, const char *fmt, ...) {
    if (!cap || *len >= cap - 1) return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf + *len, cap - *len, fmt, ap);
    va_end(ap);
    if (n > 0) *len = (size_t)n < cap - *len ? *len + (size_t)n : cap - 1;
}

static int is_gpu_pci(hwloc_obj_t o) {
    return o->attr->pcidev.vendor_id == 0x10de && (o->attr->pcidev.class_id >> 8) == 0x03; /* NVIDIA, display */
}

/* The object whose locality places CUDA device `gpu`, or NULL (note says why). */
static hwloc_obj_t find_gpu(hwloc_topology_t t, int gpu, char *note, size_t cap) {
    for (hwloc_obj_t o = NULL; (o = hwloc_get_next_osdev(t, o));)
        if (o->name && !strncmp(o->name, "cuda", 4) && atoi(o->name + 4) == gpu) return o;
    int pci_index = gpu;
    const char *vis = getenv("CUDA_VISIBLE_DEVICES");
    if (vis && *vis) {
        const char *p = vis;
        for (int k = 0;; k++) {
            char *end;
            long v = strtol(p, &end, 10);
            if (end == p || (*end && *end != ',')) {
                snprintf(note, cap, "GPU %d not placed: CUDA_VISIBLE_DEVICES=%s is not a list of indices", gpu, vis);
                return NULL;
            }
            if (k == gpu) {
                pci_index = (int)v;
                break;
            }
            if (!*end) {
                snprintf(note, cap, "GPU %d not placed: CUDA_VISIBLE_DEVICES=%s lists fewer", gpu, vis);
                return NULL;
            }
            p = end + 1;
        }
    }
    int k = 0;
    for (hwloc_obj_t o = NULL; (o = hwloc_get_next_pcidev(t, o));)
        if (is_gpu_pci(o) && k++ == pci_index) return o;
    snprintf(note, cap, "GPU %d not placed: hwloc sees %d NVIDIA GPU%s", gpu, k, k == 1 ? "" : "s");
    return NULL;
}

static int count_gpus(hwloc_topology_t t) {
    int n = 0;
    for (hwloc_obj_t o = NULL; (o = hwloc_get_next_pcidev(t, o));) n += is_gpu_pci(o);
    return n;
}

/* Logical index of the NUMA node sharing the most PUs with set (0 when there is one node). */
static int nearest_numa(hwloc_topology_t t, hwloc_const_cpuset_t set) {
    int best = 0, best_n = -1;
    hwloc_bitmap_t x = hwloc_bitmap_alloc();
    for (hwloc_obj_t n = NULL; (n = hwloc_get_next_obj_by_type(t, HWLOC_OBJ_NUMANODE, n));) {
        hwloc_bitmap_and(x, n->cpuset, set);
        int w = hwloc_bitmap_weight(x);
        if (w > best_n) best = (int)n->logical_index, best_n = w;
    }
    hwloc_bitmap_free(x);
    return best;
}

static int gpu_numa(hwloc_topology_t t, int gpu, char *note, size_t cap) {
    hwloc_obj_t o = find_gpu(t, gpu, note, cap);
    if (!o) return -1;
    hwloc_obj_t a = hwloc_get_non_io_ancestor_obj(t, o);
    return a && a->cpuset ? nearest_numa(t, a->cpuset) : 0;
}

/* Fills set with one PU of each of the cores [first, first+n) inside `within`. */
static void take_cores(hwloc_topology_t t, hwloc_const_cpuset_t within, int first, int n, hwloc_bitmap_t set) {
    hwloc_bitmap_zero(set);
    hwloc_bitmap_t pu = hwloc_bitmap_alloc();
    for (int i = first; i < first + n; i++) {
        hwloc_obj_t core = hwloc_get_obj_inside_cpuset_by_type(t, within, HWLOC_OBJ_CORE, (unsigned)i);
        if (!core) break;
        hwloc_bitmap_copy(pu, core->cpuset);
        hwloc_bitmap_singlify(pu);
        hwloc_bitmap_or(set, set, pu);
    }
    hwloc_bitmap_free(pu);
}

/* Computes the binding of this rank into set and describes it. Returns the number of cores. */
static int plan(hwloc_topology_t t, const mp_comm *world, int threads, int gpu, hwloc_bitmap_t set, char *desc,
                size_t cap) {
    const int lr = mp_local_rank(world), ls = mp_local_size(world);
    int n_numa = hwloc_get_nbobjs_by_type(t, HWLOC_OBJ_NUMANODE);
    if (n_numa < 1) n_numa = 1;
    char note[160] = "";
    size_t len = 0;
    int my = -1; /* NUMA node of this rank; -1: the whole machine */
    int n_gpus = count_gpus(t), share_idx = 0, sharers = 1;
    if (gpu >= 0) my = gpu_numa(t, gpu, note, sizeof note);
    if (my >= 0 && ls > 1) {
        /* who else lands on this node, under the one-GPU-per-local-rank assumption */
        for (int l = 0; l < ls && l < MP_MAX_LOCAL; l++) {
            if (l == lr) continue;
            char dummy[8];
            int other = n_gpus > 0 ? gpu_numa(t, l % n_gpus, dummy, sizeof dummy) : -1;
            if (other == my) {
                sharers++;
                share_idx += l < lr;
            }
        }
    } else if (my < 0 && ls > 1) {
        my = lr % n_numa;
        sharers = (ls - my + n_numa - 1) / n_numa;
        share_idx = lr / n_numa;
    }
    hwloc_obj_t node = my >= 0 ? hwloc_get_obj_by_type(t, HWLOC_OBJ_NUMANODE, (unsigned)my) : NULL;
    hwloc_const_cpuset_t within = node && node->cpuset ? node->cpuset : hwloc_topology_get_topology_cpuset(t);
    int cores = hwloc_get_nbobjs_inside_cpuset_by_type(t, within, HWLOC_OBJ_CORE);
    if (cores < 1) cores = 1;
    int first, n;
    if (sharers <= cores) {
        n = cores / sharers;
        first = share_idx * n;
    } else { /* more ranks than cores: they have to share */
        n = 1;
        first = share_idx % cores;
    }
    if (threads > 0 && threads < n) n = threads;
    take_cores(t, within, first, n, set);
    char pus[128];
    hwloc_bitmap_list_snprintf(pus, sizeof pus, set);
    append(desc, cap, &len, "local rank %d of %d: %d core%s (PUs %s)", lr, ls, n, n == 1 ? "" : "s", pus);
    if (node) append(desc, cap, &len, " on NUMA node %d", my);
    else append(desc, cap, &len, " of the whole machine");
    if (sharers > 1) append(desc, cap, &len, ", shared by %d local ranks", sharers);
    if (sharers > cores) append(desc, cap, &len, " (more ranks than cores)");
    if (threads > n) append(desc, cap, &len, "; %d threads asked, %d cores given", threads, n);
    if (gpu >= 0 && !note[0]) append(desc, cap, &len, "; GPU %d is nearest NUMA node %d", gpu, my);
    if (note[0]) append(desc, cap, &len, "; %s", note);
    return n;
}

int mp_bind_plan(const mp_comm *world, int threads, int gpu, char *desc, size_t cap) {
    hwloc_topology_t t;
    if (cap) desc[0] = 0;
    int rc = topo_open(&t, gpu >= 0);
    if (rc) {
        snprintf(desc, cap, "no binding: %s", mtok_errmsg());
        return rc;
    }
    hwloc_bitmap_t set = hwloc_bitmap_alloc();
    plan(t, world, threads, gpu, set, desc, cap);
    hwloc_bitmap_free(set);
    hwloc_topology_destroy(t);
    return 0;
}

int mp_bind(const mp_comm *world, int threads, int gpu, char *desc, size_t cap) {
    hwloc_topology_t t;
    if (cap) desc[0] = 0;
    if (topo_open(&t, gpu >= 0)) {
        snprintf(desc, cap, "not bound: %s", mtok_errmsg());
        return 0; /* placement is an optimisation, never a reason to fail */
    }
    hwloc_bitmap_t set = hwloc_bitmap_alloc();
    char line[400];
    plan(t, world, threads, gpu, set, line, sizeof line);
    if (hwloc_set_cpubind(t, set, HWLOC_CPUBIND_PROCESS) == 0) snprintf(desc, cap, "bound to %s", line);
    else snprintf(desc, cap, "not bound (%s; containers may forbid it), planned %s", strerror(errno), line);
    hwloc_bitmap_free(set);
    hwloc_topology_destroy(t);
    return 0;
}

int mp_bound_cores(void) {
    hwloc_topology_t t;
    if (topo_open(&t, 0)) return 1;
    hwloc_bitmap_t set = hwloc_bitmap_alloc();
    int n;
    if (hwloc_get_cpubind(t, set, HWLOC_CPUBIND_PROCESS) == 0) {
        n = 0;
        for (hwloc_obj_t c = NULL; (c = hwloc_get_next_obj_by_type(t, HWLOC_OBJ_CORE, c));)
            n += hwloc_bitmap_intersects(c->cpuset, set);
    } else {
        n = hwloc_get_nbobjs_by_type(t, HWLOC_OBJ_CORE);
    }
    hwloc_bitmap_free(set);
    hwloc_topology_destroy(t);
    return n > 0 ? n : 1;
}

static const char *osdev_kind(hwloc_obj_t o) {
    switch (o->attr->osdev.type) {
    case HWLOC_OBJ_OSDEV_GPU: return "gpu";
    case HWLOC_OBJ_OSDEV_COPROC: return "coproc";
    case HWLOC_OBJ_OSDEV_NETWORK: return "net";
    case HWLOC_OBJ_OSDEV_OPENFABRICS: return "rdma";
    default: return NULL;
    }
}

int mp_topology_describe(char *buf, size_t cap) {
    hwloc_topology_t t;
    if (cap) buf[0] = 0;
    int rc = topo_open(&t, 1);
    if (rc) return rc;
    size_t len = 0;
    int packages = hwloc_get_nbobjs_by_type(t, HWLOC_OBJ_PACKAGE);
    int numa = hwloc_get_nbobjs_by_type(t, HWLOC_OBJ_NUMANODE);
    int cores = hwloc_get_nbobjs_by_type(t, HWLOC_OBJ_CORE), pus = hwloc_get_nbobjs_by_type(t, HWLOC_OBJ_PU);
    append(buf, cap, &len, "topology: %d package%s, %d NUMA node%s, %d cores, %d PUs (hwloc %s)\n", packages,
           packages == 1 ? "" : "s", numa, numa == 1 ? "" : "s", cores, pus, HWLOC_VERSION);
    char set[128];
    for (hwloc_obj_t n = NULL; (n = hwloc_get_next_obj_by_type(t, HWLOC_OBJ_NUMANODE, n));) {
        hwloc_obj_t pkg = hwloc_get_ancestor_obj_by_type(t, HWLOC_OBJ_PACKAGE, n);
        hwloc_bitmap_list_snprintf(set, sizeof set, n->cpuset);
        append(buf, cap, &len, "  NUMA node %u: %.1f GiB, %d cores, PUs %s", n->logical_index,
               (double)n->attr->numanode.local_memory / (1024.0 * 1024 * 1024),
               hwloc_get_nbobjs_inside_cpuset_by_type(t, n->cpuset, HWLOC_OBJ_CORE), set);
        if (pkg) append(buf, cap, &len, " (package %u)", pkg->logical_index);
        append(buf, cap, &len, "\n");
    }
    int k = 0;
    for (hwloc_obj_t o = NULL; (o = hwloc_get_next_pcidev(t, o));) {
        if (!is_gpu_pci(o)) continue;
        hwloc_obj_t a = hwloc_get_non_io_ancestor_obj(t, o);
        append(buf, cap, &len, "  GPU (PCI order %d): NVIDIA %04x:%04x at %04x:%02x:%02x.%x, near NUMA node %d\n", k++,
               o->attr->pcidev.vendor_id, o->attr->pcidev.device_id, o->attr->pcidev.domain, o->attr->pcidev.bus,
               o->attr->pcidev.dev, o->attr->pcidev.func, a && a->cpuset ? nearest_numa(t, a->cpuset) : 0);
    }
    if (!k) append(buf, cap, &len, "  GPUs: none seen by hwloc\n");
    int shown = 0;
    for (hwloc_obj_t o = NULL; (o = hwloc_get_next_osdev(t, o));) {
        const char *kind = osdev_kind(o);
        if (!kind || !o->name) continue;
        hwloc_obj_t a = hwloc_get_non_io_ancestor_obj(t, o);
        append(buf, cap, &len, "%s %s:%s(NUMA %d)", shown++ ? "," : "  devices:", kind, o->name,
               a && a->cpuset ? nearest_numa(t, a->cpuset) : 0);
    }
    if (shown) append(buf, cap, &len, "\n");
    hwloc_topology_destroy(t);
    return 0;
}
