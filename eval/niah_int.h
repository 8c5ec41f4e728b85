/* niah_int.h — inside eval/ only: what the niah grid (eval/niah.c) and its report
 * (eval/niah_report.c) share. */
#ifndef MTOK_EVAL_NIAH_INT_H
#define MTOK_EVAL_NIAH_INT_H

/* "dir/name", malloc'ed (NULL: out of memory). */
char *mev_niah_path(const char *dir, const char *name);

#endif
