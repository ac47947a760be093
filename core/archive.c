/* STUB: replaced by the libarchive implementation (see archive.h). */
#include "config.h"

#include "archive.h"
#include "util.h"

static ctarget_status nyi(ctarget_error *err)
{
    ct_err(err, CTARGET_E_UNSUPPORTED, "archives are not implemented yet");
    return CTARGET_E_UNSUPPORTED;
}

ctarget_status arch_writer_open(ctarget_write_fn out, void *out_arg, unsigned flags,
                                arch_writer **w, ctarget_error *err)
{
    (void)out, (void)out_arg, (void)flags;
    *w = NULL;
    return nyi(err);
}

ctarget_status arch_write_bytes(arch_writer *w, const char *name, const void *data, size_t len,
                                ctarget_error *err)
{
    (void)w, (void)name, (void)data, (void)len;
    return nyi(err);
}

ctarget_status arch_write_file(arch_writer *w, const char *name, const char *path,
                               ctarget_error *err)
{
    (void)w, (void)name, (void)path;
    return nyi(err);
}

ctarget_status arch_writer_close(arch_writer *w, ctarget_error *err)
{
    (void)w;
    return nyi(err);
}

ctarget_status arch_extract_safe(const char *archive_path, const char *dest,
                                 const char *blob_root, ctarget_error *err)
{
    (void)archive_path, (void)dest, (void)blob_root;
    return nyi(err);
}
