#include "config.h"

#include "ws.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "host.h"
#include "log.h"
#include "util.h"

const char *ctarget_version(void)
{
    return PACKAGE_VERSION;
}

void ctarget_free(void *p)
{
    free(p);
}

void ctarget_error_init(ctarget_error *err)
{
    if (!err)
        return;
    memset(err, 0, sizeof *err);
    err->struct_size = sizeof *err;
}

const char *ctarget_strerror(ctarget_status s)
{
    static const char *const names[] = {
        "success", "operation failed", "usage error", "invalid configuration", "not found",
        "already exists", "not supported", "authentication failed", "unreachable",
        "host key or certificate not trusted", "timed out", "canceled", "I/O error",
        "out of memory", "remote error", "invalid state", "plugin error", "limit exceeded",
        "internal error",
    };
    return (unsigned)s < CT_ARRAY_LEN(names) ? names[s] : "unknown status";
}

char *json_out(json_t *j)
{
    char *s = json_dumps(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    return s ? s : xstrdup("null");
}

ctarget_status plugin_failure(const char *plugin_name, const char *op, ctarget_status rc,
                              const ctarget_error *perr, ctarget_error *err)
{
    if (rc == CTARGET_OK)
        return CTARGET_OK;
    if ((unsigned)rc > CTARGET_E_INTERNAL) {
        ct_err(err, CTARGET_E_PLUGIN, "plugin %s: %s returned unknown status %d", plugin_name,
               op, (int)rc);
        return CTARGET_E_PLUGIN;
    }
    if (perr->message[0])
        ct_err(err, rc, "%s", perr->message);
    else
        ct_err(err, rc, "%s: %s failed: %s", plugin_name, op, ctarget_strerror(rc));
    if (err) {
        err->transient = perr->transient;
        err->sys_errno = perr->sys_errno;
    }
    return rc;
}

static char *default_dir(void)
{
    const char *w = getenv("CTARGET_WORKSPACE");
    if (w && *w)
        return xstrdup(w);
    const char *x = getenv("XDG_DATA_HOME");
    if (x && *x == '/')
        return path_join(x, "ctarget");
    return path_join(home_dir(), ".local/share/ctarget");
}

ctarget_status ctarget_ws_open(const char *dir, ctarget_ws **out, ctarget_error *err)
{
    *out = NULL;
    char *d = dir && *dir ? xstrdup(dir) : default_dir();
    store *st;
    ctarget_status rc = store_open(d, &st, err);
    if (rc) {
        free(d);
        return rc;
    }
    ctarget_ws *ws = xcalloc(1, sizeof *ws);
    ws->dir = d;
    ws->st = st;
    host_set_workspace_dir(d);
    *out = ws;
    return CTARGET_OK;
}

void ctarget_ws_close(ctarget_ws *ws)
{
    if (!ws)
        return;
    store_close(ws->st);
    free(ws->dir);
    free(ws);
}

const char *ctarget_ws_dir(const ctarget_ws *ws)
{
    return ws->dir;
}

int ctarget_ws_schema_version(const ctarget_ws *ws)
{
    return ws->st->schema_version;
}
