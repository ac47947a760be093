#ifndef CTARGET_CORE_WS_H
#define CTARGET_CORE_WS_H

#include <jansson.h>

#include <ctarget/ctarget.h>

#include "store.h"

struct ctarget_ws {
    char *dir;
    store *st;
};

/* Print a JSON value into an owned string for the public API. */
char *json_out(json_t *j);
/* Convert a plugin's failure into the caller's error: keep the plugin's message when it gave
 * one, pass it through the redactor again, and catch statuses outside the enum. */
ctarget_status plugin_failure(const char *plugin_name, const char *op, ctarget_status rc,
                              const ctarget_error *perr, ctarget_error *err);

#endif
