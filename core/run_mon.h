/* Internals shared by the run monitor's files (run_monitor.c: setup and records;
 * run_drive.c: the lifecycle loop; run_ingest.c: logs and metrics). */
#ifndef CTARGET_CORE_RUN_MON_H
#define CTARGET_CORE_RUN_MON_H

#include <jansson.h>

#include <ctarget/ctarget.h>

#include "registry.h"
#include "run.h"

typedef struct mon {
    ctarget_ws *ws;
    const char *id;
    char *dir, *work_dir, *log_path;
    int lock_fd, log_fd;
    json_t *row;               /* the run record, refreshed each loop */
    ctarget_run_state state;   /* status as last read or written */
    reg_target *rt;
    ctarget_run_info ri;
    json_t *info_row;          /* the row ri's strings point into (m->row is replaced) */
    const char **args;
    size_t n_args;
    char **envs;
    size_t n_envs;
    json_t *handle;            /* run->handle, persisted when it changes */
    char *handle_text;
    char *step_json;           /* ri.step_json (owned) */
    long poll_ms;
    int polled;                /* poll() has been called: later ones may wait for a change */
    int64_t cancel_sent_ms;    /* when cancel() was last called (0: not by this monitor) */
    int bad_metric_lines;
    int final;                 /* the run has ended: drain everything */
} mon;

void mon_note(mon *m, const char *fmt, ...) CTARGET_PRINTF(2, 3);
void mon_save_handle(mon *m);
int mon_refresh(mon *m);
int mon_move(mon *m, ctarget_run_state to, const rs_change *ch);
void mon_set_phase(mon *m, const char *phase);

/* run_drive.c */
void mon_drive(mon *m);

/* run_ingest.c: read new log bytes / metrics lines from the plugin; 0 or -1 */
int mon_read_logs(mon *m);
int mon_read_metrics(mon *m);

#endif
