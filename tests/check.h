/* check.h — the one assertion macro of the C tests: report file:line and the message, count the
 * failure, keep going (so one run shows every broken case). main() returns check_failures != 0. */
#ifndef MTOK_TESTS_CHECK_H
#define MTOK_TESTS_CHECK_H

#include <stdio.h>

static int check_failures;
#define CHECK(cond, ...)                                              \
    do {                                                              \
        if (!(cond)) {                                                \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);      \
            fprintf(stderr, __VA_ARGS__);                             \
            fputc('\n', stderr);                                      \
            check_failures++;                                         \
        }                                                             \
    } while (0)

#endif
