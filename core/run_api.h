/* Shared by the run API files (run_api.c: reading; run_ctl.c: waiting and steering). */
#ifndef CTARGET_CORE_RUN_API_H
#define CTARGET_CORE_RUN_API_H

#include <jansson.h>

#include <ctarget/ctarget.h>

/* Resolve id (or a unique prefix) and load the row; recover: start a monitor if needed. */
ctarget_status run_load(ctarget_ws *ws, const char *id, int recover, json_t **row,
                        ctarget_error *err);
/* The run as ctarget_run_show describes it. */
json_t *run_render(ctarget_ws *ws, json_t *row);
json_t *run_outputs_list(const char *ws_dir, const char *id);

#endif
