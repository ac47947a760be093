/* What the workspace can tell about a pipeline before anything runs: every step's target
 * exists and takes the step (the capability, and for a typed step the target's type), its
 * source directory and script are there.  The first problem is the error, naming the step. */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include "pipeline.h"
#include "../run.h"
#include "../util.h"
#include "../ws.h"

ctarget_status pl_check(ctarget_ws *ws, const pl_config *c, const char *file,
                        ctarget_error *err)
{
    for (size_t i = 0; i < c->n; i++) {
        const pl_step *s = &c->steps[i];
        if (!s->run)
            continue; /* data_transfer: runs in the driver */
        json_t *conf = json_deep_copy(s->run);
        json_object_set_new(conf, "experiment", json_string(c->experiment));
        run_sub x = {.need_caps = CTARGET_CAP_PIPELINE_STEP, .step_type = s->type};
        ctarget_error e;
        ctarget_error_init(&e);
        ctarget_status rc = run_check_config(ws, conf, &x, &e);
        json_decref(conf);
        if (rc) {
            ct_err(err, rc, "pipeline %s: step '%s': %s", file ? file : c->name, s->name,
                   e.message);
            return rc;
        }
    }
    return CTARGET_OK;
}
