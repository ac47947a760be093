/* Snapshot services for plugins.  Until snapshots land they report "not supported". */
#include "config.h"

#include "host.h"
#include "util.h"

ctarget_status host_snapshot_materialize(ctarget_call *call, const char *snapshot_id,
                                         const char *dest, ctarget_error *err)
{
    (void)call, (void)snapshot_id, (void)dest;
    ct_err(err, CTARGET_E_UNSUPPORTED, "snapshots are not available in this build");
    return CTARGET_E_UNSUPPORTED;
}

ctarget_status host_snapshot_blobs(ctarget_call *call, const char *snapshot_id,
                                   int (*fn)(void *arg, const char *sha256, uint64_t size),
                                   void *arg, ctarget_error *err)
{
    (void)call, (void)snapshot_id, (void)fn, (void)arg;
    ct_err(err, CTARGET_E_UNSUPPORTED, "snapshots are not available in this build");
    return CTARGET_E_UNSUPPORTED;
}

ctarget_status host_snapshot_write_tar(ctarget_call *call, const char *snapshot_id,
                                       int (*want)(void *arg, const char *sha256),
                                       void *want_arg, unsigned flags, ctarget_write_fn out,
                                       void *out_arg, ctarget_error *err)
{
    (void)call, (void)snapshot_id, (void)want, (void)want_arg, (void)flags, (void)out,
        (void)out_arg;
    ct_err(err, CTARGET_E_UNSUPPORTED, "snapshots are not available in this build");
    return CTARGET_E_UNSUPPORTED;
}
