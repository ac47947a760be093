#ifndef CTARGET_TESTHOOK_H
#define CTARGET_TESTHOOK_H
/* Test hooks: where the test suite makes a race happen on purpose instead of hoping a timer
 * lines up.  Both are inert unless a test sets their variable (documented in ctarget(1)). */
#include <stdint.h>

/* CTARGET_TEST_HOOK="POINT=COMMAND": on reaching POINT, run COMMAND with /bin/sh -c ($1: the
 * point's subject) and wait for it.  Points:
 *   hash-read   a file is open and fstat'ed for hashing, nothing read yet ($1: its path) */
void testhook_run(const char *point, const char *subject);

/* The wall clock, in ns, that "changed too recently to trust" decisions compare against
 * (racily clean files and directories): CLOCK_REALTIME plus CTARGET_TEST_CLOCK_SHIFT_S
 * seconds (may be negative), so a test can make every stamp old or young by construction. */
int64_t testhook_wall_ns(void);

#endif
