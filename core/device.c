/* device.c — naming the compute device of a session (mtok_session_params.device, --device). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "mtok.h"

int mtok_device_parse(const char *name, int *index) {
    *index = -1;
    if (!name || !*name || !strcmp(name, "cpu")) return 0;
    int dev = 0;
    if (!strncmp(name, "cuda", 4) && (name[4] == 0 || name[4] == ':')) {
        if (name[4] == ':') {
            char *end;
            const long v = strtol(name + 5, &end, 10);
            if (end == name + 5 || *end || v < 0 || v > 1023)
                return mtok_err(MTOK_EUSAGE, "--device %s: the device index must be a number in [0, 1023] "
                                "(cuda:0 is the first GPU)", name);
            dev = (int)v;
        }
#ifdef MTOK_HAVE_CUDA
        *index = dev;
        return 0;
#else
        (void)dev;
        return mtok_err(MTOK_EUSAGE, "--device %s: this mtok was built without the CUDA backend (configure with "
                        "-DMTOK_CUDA=ON where the CUDA toolkit is installed; docs/GPU.md)", name);
#endif
    }
    return mtok_err(MTOK_EUSAGE, "--device %s: expected cpu, cuda or cuda:N", name);
}

#ifndef MTOK_HAVE_CUDA
/* A build without CUDA: no backend to offer (mtok_device_parse refuses cuda before this is asked). */
const mtok_backend_ops *mtok_backend_cuda(void) { return NULL; }

int mtok_cuda_describe(char *buf, size_t cap) {
    snprintf(buf, cap, "not built (configure with -DMTOK_CUDA=ON where the CUDA toolkit is installed)");
    return 0;
}
#endif
