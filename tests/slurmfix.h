/* Test support: a real single-node Slurm (tests/servers/slurm.sh) in a private network
 * namespace, driven from C.
 *
 * sx_netns() moves the whole test program into a new network namespace (unshare(2),
 * CLONE_NEWNET: root only) before anything starts, so the daemons, sshd, the ctarget command
 * and its run monitors all live in it and nothing listens outside.  The cluster is stopped
 * by its daemons' PIDs when the program exits (or by sx_stop), before testlib removes its
 * directory.  Call sx_start only after tl_main has started. */
#ifndef CTARGET_TESTS_SLURMFIX_H
#define CTARGET_TESTS_SLURMFIX_H

#include <stddef.h>

typedef struct sx_slurm {
    char *dir;      /* state, logs, slurm.conf */
    char *conf;     /* DIR/slurm.conf; also exported as SLURM_CONF */
    int running;
} sx_slurm;

/* 0 when the program now runs in a private network namespace; else why in `why`. */
int sx_netns(char *why, size_t len);
/* slurm.sh start DIR, then SLURM_CONF=DIR/slurm.conf in this process's environment. */
int sx_start(sx_slurm *s, const char *dir);
int sx_stop(sx_slurm *s);
/* slurm.sh forget DIR: slurmctld restarted with its state cleared (every job forgotten). */
int sx_forget(sx_slurm *s);

#endif
