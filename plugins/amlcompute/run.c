/* Run operations of the Azure ML targets (amlcompute and computeinstance).
 *
 * prepare: the snapshot becomes the code version ctarget-<16 hex of the snapshot id>/1.  If
 *   the workspace has it already, nothing is uploaded.  Else startPendingUpload gives a SAS
 *   for a folder in the workspace's blob container; the folder gets manifest.jsonl and
 *   ctarget_boot.py, and the container's ctarget-blobs/<sha256> gets every content blob it
 *   does not have yet (one listing of that prefix, kept locally as well), so a resubmit after
 *   a one-file change uploads one blob and the manifest.  Then the code version PUT, and an
 *   environment version (image, conda/pip file) named after the environment's hash.
 * submit: a CommandJob named after the run id (PUT is idempotent: a monitor that died after
 *   the PUT and submits again finds its own job instead of making a second one).
 * poll: the job's status, mapped to ours, with the service's word as native state.
 * read_logs: range reads of ExperimentRun/dcid.<job>/user_logs/std_log.txt (the append blob
 *   Azure ML streams the script's output into) in the workspace artifact store; metrics from
 *   outputs/.ctarget_metrics.jsonl of the same folder.
 * cancel: POST .../jobs/<job>/cancel.  fetch_outputs: the job's outputs/ and logs/ folders.
 * reattach: everything is found again from run->handle (job name, code and environment ids).
 * A low-priority node's preemption fails the job with JobPreempted: poll() says so
 * (restartable), and the core's retry policy submits the run again as its next attempt (job
 * <run id>-a<N>, a fresh process from the same code version); the earlier attempts' log
 * bytes stay in front of the new one's. */
#include "config.h"

#include "aml.h"

#include <ctype.h>
#include <stdarg.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ctarget_boot_py.h"

#define H aml_h

int aml_buf_add(aml_buf *b, const void *data, size_t len)
{
    if (b->len + len + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + len + 1)
            cap *= 2;
        char *d = realloc(b->data, cap);
        if (!d)
            return -1;
        b->data = d;
        b->cap = cap;
    }
    if (len)
        memcpy(b->data + b->len, data, len);
    b->len += len;
    b->data[b->len] = '\0';
    return 0;
}

void aml_buf_free(aml_buf *b)
{
    free(b->data);
    memset(b, 0, sizeof *b);
}

int aml_buf_write(void *arg, const void *data, size_t len)
{
    return aml_buf_add(arg, data, len);
}

static char *xfmt(const char *fmt, ...) CTARGET_PRINTF(1, 2);
static char *xfmt(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *s = NULL;
    if (vasprintf(&s, fmt, ap) < 0)
        s = NULL;
    va_end(ap);
    return s;
}

/* ---- names --------------------------------------------------------------------------------- */

static void code_name(const char *snapshot_id, char *buf, size_t len)
{
    char hex[17];
    size_t n = 0;
    for (const char *p = snapshot_id; *p && n < 16; p++)
        if (isxdigit((unsigned char)*p))
            hex[n++] = (char)tolower((unsigned char)*p);
    hex[n] = '\0';
    snprintf(buf, len, "ctarget-%s", hex);
}

/* Job names: letters, digits, '-' and '_'; ours are the run id in lower case (+ -a<N>). */
static void job_name(const char *run_id, int attempt, char *buf, size_t len)
{
    size_t n = 0;
    for (const char *p = run_id; *p && n + 1 < len; p++)
        buf[n++] = isalnum((unsigned char)*p) || *p == '-' || *p == '_'
                       ? (char)tolower((unsigned char)*p) : '-';
    buf[n] = '\0';
    if (attempt > 1 && n + 8 < len)
        snprintf(buf + n, len - n, "-a%d", attempt);
}

static const char *hget(const ctarget_run_info *run, const char *key)
{
    return run->handle ? H->obj_get0_str(run->handle, key) : NULL;
}

static long long hint(const ctarget_run_info *run, const char *key, long long dflt)
{
    long long v;
    return run->handle && H->obj_get_int(run->handle, key, &v) ? v : dflt;
}

static void hset(const ctarget_run_info *run, const char *key, const char *v)
{
    if (run->handle)
        H->obj_set_str(run->handle, key, v);
}

static void hseti(const ctarget_run_info *run, const char *key, long long v)
{
    if (run->handle)
        H->obj_set_int(run->handle, key, v);
}

/* ---- the upload: a streaming reader of the core's transport tar --------------------------- */

typedef struct seen {
    char (*sha)[65];
    size_t n, cap;
} seen;

static int seen_cmp(const void *a, const void *b)
{
    return strcmp(a, b);
}

static int seen_add(seen *s, const char *sha)
{
    if (strlen(sha) != 64)
        return 0;
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 256;
        void *p = realloc(s->sha, cap * sizeof *s->sha);
        if (!p)
            return -1;
        s->sha = p;
        s->cap = cap;
    }
    memcpy(s->sha[s->n++], sha, 65);
    return 0;
}

static void seen_sort(seen *s)
{
    if (s->n)
        qsort(s->sha, s->n, sizeof *s->sha, seen_cmp);
}

static int seen_has(const seen *s, const char *sha)
{
    return s->n && bsearch(sha, s->sha, s->n, sizeof *s->sha, seen_cmp) != NULL;
}

typedef struct upload {
    ctarget_call *c;
    az_blob *blob;
    const char *folder;    /* code folder prefix, "LocalUpload/x/" */
    const seen *have;      /* blobs the store has */
    seen sent;             /* blobs uploaded now */
    uint64_t bytes, total, blobs;
    /* tar reader */
    unsigned char hdr[512];
    size_t hdr_fill;
    uint64_t left, pad;    /* bytes of the entry's data and of its padding still to come */
    int in_data;
    char name[280];
    char pax_path[256];
    long long pax_size;
    char type;
    aml_buf data;
    int zeros;
    ctarget_status rc;
    ctarget_error *err;
    aml_buf manifest;
    FILE *record;          /* the local record of uploaded blobs */
    const char *spool_dir; /* large blobs go through a file here, not memory */
    int spool_fd;          /* >= 0 while the current entry is spooled */
    char spool[4096];
    uint64_t entry_size;
} upload;

/* blobs above this go through a temporary file (uploaded in blocks by the blob client) */
#define AML_SPOOL_MIN (8u << 20)

static int want_missing(void *arg, const char *sha)
{
    upload *u = arg;
    return !seen_has(u->have, sha);
}

static uint64_t octal(const unsigned char *p, size_t n)
{
    uint64_t v = 0;
    for (size_t i = 0; i < n && p[i]; i++)
        if (p[i] >= '0' && p[i] <= '7')
            v = v * 8 + (uint64_t)(p[i] - '0');
    return v;
}

static void parse_pax(upload *u)
{
    const char *p = u->data.data, *end = p + u->data.len;
    while (p < end) {
        char *sp;
        long n = strtol(p, &sp, 10);
        if (n <= 0 || sp >= end || *sp != ' ' || p + n > end)
            return;
        const char *kv = sp + 1, *eq = memchr(kv, '=', (size_t)(p + n - kv));
        if (eq) {
            size_t kl = (size_t)(eq - kv), vl = (size_t)(p + n - 1 - (eq + 1));
            if (kl == 4 && !memcmp(kv, "path", 4) && vl < sizeof u->pax_path) {
                memcpy(u->pax_path, eq + 1, vl);
                u->pax_path[vl] = '\0';
            } else if (kl == 4 && !memcmp(kv, "size", 4)) {
                u->pax_size = strtoll(eq + 1, NULL, 10);
            }
        }
        p += n;
    }
}

static int entry_done(upload *u)
{
    if (u->type == 'x') {
        parse_pax(u);
        return 0;
    }
    if (u->type == 'g')
        return 0;
    const char *name = u->name;
    if (!strcmp(name, "manifest.jsonl")) {
        aml_buf_free(&u->manifest);
        u->manifest = u->data;
        memset(&u->data, 0, sizeof u->data);
        return 0;
    }
    if (!strncmp(name, "blobs/", 6) && strlen(name + 6) == 64) {
        char *bn = xfmt("ctarget-blobs/%s", name + 6);
        if (!bn)
            u->rc = CTARGET_E_NOMEM;
        else if (u->spool_fd >= 0) {
            int bad = close(u->spool_fd) != 0;
            u->spool_fd = -1;
            u->rc = bad ? CTARGET_E_IO
                        : az_blob_put_file(u->blob, bn, u->spool, "application/octet-stream",
                                           u->err);
            if (bad)
                H->error_set(u->err, CTARGET_E_IO, 0, errno, "cannot write %s", u->spool);
            unlink(u->spool);
        } else {
            u->rc = az_blob_put(u->blob, bn, u->data.data ? u->data.data : "", u->data.len,
                                "application/octet-stream", u->err);
        }
        free(bn);
        if (u->rc)
            return -1;
        seen_add(&u->sent, name + 6);
        if (u->record) {
            fprintf(u->record, "%s\n", name + 6);
            fflush(u->record);
        }
        u->bytes += u->entry_size;
        u->blobs++;
        H->progress(u->c, "uploading the snapshot", u->bytes, u->total);
    }
    return 0;
}

static int fd_write_all(int fd, const void *data, size_t len)
{
    const char *p = data;
    while (len) {
        ssize_t w = write(fd, p, len);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += w, len -= (size_t)w;
    }
    return 0;
}

static int tar_write(void *arg, const void *data, size_t len)
{
    upload *u = arg;
    const unsigned char *p = data;
    while (len) {
        if (u->in_data) {
            if (u->left) {
                size_t n = len < u->left ? len : (size_t)u->left;
                if (u->spool_fd >= 0) {
                    if (fd_write_all(u->spool_fd, p, n)) {
                        u->rc = CTARGET_E_IO;
                        H->error_set(u->err, CTARGET_E_IO, 0, errno, "cannot write %s",
                                     u->spool);
                        return -1;
                    }
                } else if (aml_buf_add(&u->data, p, n)) {
                    u->rc = CTARGET_E_NOMEM;
                    H->error_set(u->err, CTARGET_E_NOMEM, 0, 0, "out of memory");
                    return -1;
                }
                p += n, len -= n, u->left -= n;
                if (!u->left && entry_done(u))
                    return -1;
                continue;
            }
            size_t n = len < u->pad ? len : (size_t)u->pad;
            p += n, len -= n, u->pad -= n;
            if (!u->pad)
                u->in_data = 0;
            continue;
        }
        size_t n = 512 - u->hdr_fill;
        if (n > len)
            n = len;
        memcpy(u->hdr + u->hdr_fill, p, n);
        u->hdr_fill += n, p += n, len -= n;
        if (u->hdr_fill < 512)
            continue;
        u->hdr_fill = 0;
        int zero = 1;
        for (int i = 0; i < 512 && zero; i++)
            zero = !u->hdr[i];
        if (zero) {
            u->zeros++;
            continue;
        }
        char type = (char)u->hdr[156];
        uint64_t size = octal(u->hdr + 124, 12);
        int had_pax = u->type == 'x';
        if (type != 'x' && type != 'g') {
            char nm[104];
            char prefix[156];
            snprintf(prefix, sizeof prefix, "%.155s", (const char *)u->hdr + 345);
            snprintf(nm, sizeof nm, "%.100s", (const char *)u->hdr);
            if (had_pax && u->pax_path[0])
                snprintf(u->name, sizeof u->name, "%s", u->pax_path);
            else if (prefix[0])
                snprintf(u->name, sizeof u->name, "%s/%s", prefix, nm);
            else
                snprintf(u->name, sizeof u->name, "%s", nm);
            if (had_pax && u->pax_size >= 0)
                size = (uint64_t)u->pax_size;
            u->pax_path[0] = '\0';
            u->pax_size = -1;
        } else {
            u->pax_path[0] = '\0';
            u->pax_size = -1;
        }
        u->type = type ? type : '0';
        aml_buf_free(&u->data);
        u->entry_size = size;
        if (size >= AML_SPOOL_MIN && u->spool_dir && !strncmp(u->name, "blobs/", 6)) {
            snprintf(u->spool, sizeof u->spool, "%s/.upload-XXXXXX", u->spool_dir);
            u->spool_fd = mkstemp(u->spool);
            if (u->spool_fd < 0) {
                u->rc = CTARGET_E_IO;
                H->error_set(u->err, CTARGET_E_IO, 0, errno, "cannot create a file in %s",
                             u->spool_dir);
                return -1;
            }
        }
        u->left = size;
        u->pad = (512 - size % 512) % 512;
        u->in_data = 1;
        if (!size) {
            if (entry_done(u))
                return -1;
            if (!u->pad)
                u->in_data = 0;
        }
    }
    return 0;
}

static int list_cb(void *arg, const char *name, uint64_t size)
{
    (void)size;
    const char *base = strrchr(name, '/');
    return seen_add(arg, base ? base + 1 : name) ? 1 : 0;
}

typedef struct sizes {
    const seen *have;
    uint64_t missing_bytes, missing, all;
} sizes;

static int size_cb(void *arg, const char *sha, uint64_t size)
{
    sizes *s = arg;
    s->all++;
    if (!seen_has(s->have, sha)) {
        s->missing++;
        s->missing_bytes += size;
    }
    return 0;
}

/* The local record of blobs this target uploaded (one sha256 per line). */
static char *record_path(ctarget_target *t)
{
    const char *d = H->target_state_dir0(t);
    return d ? xfmt("%s/uploaded-blobs", d) : NULL;
}

static void record_load(ctarget_target *t, seen *s)
{
    char *p = record_path(t);
    FILE *f = p ? fopen(p, "re") : NULL;
    free(p);
    if (!f)
        return;
    char line[128];
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = '\0';
        seen_add(s, line);
    }
    fclose(f);
}

/* Upload what the store lacks and the code folder; *code_uri gets the folder's URL. */
static ctarget_status upload_code(az_ctx *az, ctarget_call *c, ctarget_target *t,
                                  const ctarget_run_info *run, const char *cname,
                                  char **code_uri, ctarget_error *err)
{
    char *ver = az_ws_resource_id(az, "codes", cname);
    char *path = xfmt("%s/versions/1/startPendingUpload", ver);
    free(ver);
    json_t *body = json_pack("{s:s}", "pendingUploadType", "TemporaryBlobReference");
    char what[200];
    snprintf(what, sizeof what, "code '%s'", cname);
    az_arm_req rq = {.method = "POST", .path = path, .api_version = AZ_AML_API_VERSION,
                     .body = body, .what = what};
    az_arm_resp rs = {0};
    ctarget_status rc = az_arm_call(az, &rq, AZ_RETRY_SAFE, &rs, err);
    json_decref(body);
    free(path);
    if (rc) {
        az_arm_resp_clear(&rs);
        return rc;
    }
    json_t *ref = json_object_get(rs.body, "blobReferenceForConsumption");
    const char *blob_uri = json_string_value(json_object_get(ref, "blobUri"));
    const char *sas = json_string_value(
        json_object_get(json_object_get(ref, "credential"), "sasUri"));
    char *container = NULL, *folder = NULL;
    if (!blob_uri || !sas || aml_split_sas(sas, &container, &folder)) {
        az_arm_resp_clear(&rs);
        H->error_set(err, CTARGET_E_REMOTE, 0, 0,
                     "workspace '%s' answered startPendingUpload for code '%s' without a "
                     "usable blob reference", az_workspace0(az), cname);
        return CTARGET_E_REMOTE;
    }
    *code_uri = strdup(blob_uri);
    az_arm_resp_clear(&rs);
    az_blob *b = NULL;
    rc = az_blob_open_sas(az, container, &b, err);
    /* the SAS is a secret: wiped as soon as the client has its copy */
    memset(container, 0, strlen(container));
    free(container);
    if (rc) {
        free(folder);
        return rc;
    }
    seen have = {0};
    ctarget_error le;
    memset(&le, 0, sizeof le);
    le.struct_size = sizeof le;
    H->progress(c, "checking the blob store", 0, 0);
    if (az_blob_list(b, "ctarget-blobs/", list_cb, &have, &le) != CTARGET_OK) {
        /* a SAS without list rights: what this target uploaded before is known locally */
        H->log(c, CTARGET_LOG_DEBUG, "listing ctarget-blobs/ failed (%s): using the local "
               "record", le.message);
        record_load(t, &have);
    }
    seen_sort(&have);
    sizes sz = {.have = &have};
    rc = H->snapshot_blobs(c, run->snapshot_id, size_cb, &sz, err);
    upload u = {.c = c, .blob = b, .folder = folder, .have = &have, .total = sz.missing_bytes,
                .err = err, .pax_size = -1, .spool_dir = run->work_dir, .spool_fd = -1};
    char *rp = record_path(t);
    u.record = rp ? fopen(rp, "ae") : NULL;
    free(rp);
    if (!rc)
        rc = H->snapshot_write_tar(c, run->snapshot_id, want_missing, &u, 0, tar_write, &u, err);
    if (!rc && u.rc)
        rc = u.rc;
    if (!rc && !u.manifest.data) {
        H->error_set(err, CTARGET_E_INTERNAL, 0, 0, "the snapshot stream had no manifest.jsonl");
        rc = CTARGET_E_INTERNAL;
    }
    uint64_t man = u.manifest.len;
    if (!rc) {
        char *mn = xfmt("%smanifest.jsonl", folder);
        rc = az_blob_put(b, mn, u.manifest.data, u.manifest.len, "application/jsonl", err);
        free(mn);
    }
    if (!rc) {
        char *bn = xfmt("%sctarget_boot.py", folder);
        rc = az_blob_put(b, bn, aml_boot_src, sizeof aml_boot_src - 1, "text/x-python", err);
        free(bn);
    }
    if (u.record)
        fclose(u.record);
    if (u.spool_fd >= 0) {
        close(u.spool_fd);
        unlink(u.spool);
    }
    uint64_t req = 0, sent = 0;
    az_blob_stats(b, &req, &sent);
    hseti(run, "uploaded_blobs", (long long)u.blobs);
    hseti(run, "uploaded_blob_bytes", (long long)u.bytes);
    hseti(run, "uploaded_manifest_bytes", (long long)man);
    hseti(run, "upload_requests", (long long)req);
    hseti(run, "upload_bytes", (long long)sent);
    hseti(run, "snapshot_blobs", (long long)sz.all);
    if (!rc)
        H->log(c, CTARGET_LOG_INFO, "uploaded %llu of %llu blobs (%llu bytes) and the manifest",
               (unsigned long long)u.blobs, (unsigned long long)sz.all,
               (unsigned long long)u.bytes);
    aml_buf_free(&u.data);
    aml_buf_free(&u.manifest);
    free(u.sent.sha);
    free(have.sha);
    az_blob_close(b);
    free(folder);
    return rc;
}

static char *read_file(const char *path, size_t max)
{
    FILE *f = fopen(path, "re");
    if (!f)
        return NULL;
    aml_buf b = {0};
    char tmp[8192];
    size_t n;
    while ((n = fread(tmp, 1, sizeof tmp, f)) > 0 && b.len < max)
        aml_buf_add(&b, tmp, n);
    fclose(f);
    if (!b.data)
        aml_buf_add(&b, "", 0);
    return b.data;
}

/* The environment version for the run: Azure ML's base image (or the run's image), with the
 * conda file (conda envs) or a conda file wrapping the pip requirements (pip envs). */
static ctarget_status put_environment(az_ctx *az, const ctarget_run_info *run, char **env_id,
                                      ctarget_error *err)
{
    char *conda = NULL;
    if (run->env_kind != CTARGET_ENV_USER && run->env_file) {
        char *text = read_file(run->env_file, 1 << 20);
        if (!text) {
            H->error_set(err, CTARGET_E_IO, 0, errno, "cannot read the environment file %s",
                         run->env_file);
            return CTARGET_E_IO;
        }
        if (run->env_kind == CTARGET_ENV_CONDA) {
            conda = text;
        } else {
            aml_buf b = {0};
            const char *head = "name: ctarget\ndependencies:\n  - python=3.10\n  - pip\n"
                               "  - pip:\n";
            aml_buf_add(&b, head, strlen(head));
            char *save = NULL;
            for (char *l = strtok_r(text, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
                l[strcspn(l, "\r#")] = '\0';
                while (*l == ' ' || *l == '\t')
                    l++;
                if (!*l)
                    continue;
                json_t *q = json_string(l);
                char *qs = json_dumps(q, JSON_ENCODE_ANY);
                json_decref(q);
                aml_buf_add(&b, "    - ", 6);
                aml_buf_add(&b, qs ? qs : "\"\"", qs ? strlen(qs) : 2);
                aml_buf_add(&b, "\n", 1);
                free(qs);
            }
            free(text);
            conda = b.data;
        }
    }
    char full[96];
    if (run->env_hash && *run->env_hash) {
        char hx[64];
        code_name(run->env_hash, hx, sizeof hx); /* "ctarget-<16 hex>" */
        snprintf(full, sizeof full, "ctarget-env-%s", hx + 8);
    } else {
        snprintf(full, sizeof full, "ctarget-base");
    }
    if (run->docker_image) {
        /* the image is part of what the environment is */
        unsigned long h = 5381;
        for (const char *p = run->docker_image; *p; p++)
            h = h * 33 + (unsigned char)*p;
        size_t l = strlen(full);
        snprintf(full + l, sizeof full - l, "-img%08lx", h & 0xffffffffUL);
    }
    char *base = az_ws_resource_id(az, "environments", full);
    char *id = xfmt("%s/versions/1", base);
    free(base);
    json_t *body = aml_environment_body(run, conda);
    free(conda);
    char what[200];
    snprintf(what, sizeof what, "environment '%s'", full);
    az_arm_req rq = {.method = "PUT", .path = id, .api_version = AZ_AML_API_VERSION,
                     .body = body, .what = what};
    az_arm_resp rs = {0};
    ctarget_status rc = az_arm_call(az, &rq, 0, &rs, err);
    az_arm_resp_clear(&rs);
    json_decref(body);
    if (rc) {
        free(id);
        return rc;
    }
    *env_id = id;
    return CTARGET_OK;
}

static ctarget_status aml_prepare(void *p, ctarget_call *c, ctarget_target *t,
                                  const ctarget_run_info *run, ctarget_error *err)
{
    (void)p;
    az_ctx *az;
    ctarget_status rc = aml_az(c, t, &az, err);
    if (rc)
        return rc;
    char cname[64];
    code_name(run->snapshot_id, cname, sizeof cname);
    char *cbase = az_ws_resource_id(az, "codes", cname);
    char *code_id = xfmt("%s/versions/1", cbase);
    free(cbase);
    char *code_uri = NULL, *env_id = NULL;
    char what[200];
    snprintf(what, sizeof what, "code '%s'", cname);
    json_t *have = NULL;
    az_arm_req gq = {.method = "GET", .path = code_id, .api_version = AZ_AML_API_VERSION,
                     .what = what};
    H->progress(c, "preparing the code", 0, 0);
    if ((rc = az_arm_do(az, &gq, AZ_OK_404, &have, err)))
        goto out;
    if (have) {
        /* the workspace has this snapshot already: nothing to upload */
        hseti(run, "uploaded_blobs", 0);
        hseti(run, "uploaded_blob_bytes", 0);
        hseti(run, "upload_bytes", 0);
    } else {
        if ((rc = upload_code(az, c, t, run, cname, &code_uri, err)))
            goto out;
        json_t *body = aml_code_version_body(code_uri, run->snapshot_id);
        az_arm_req pq = {.method = "PUT", .path = code_id, .api_version = AZ_AML_API_VERSION,
                         .body = body, .what = what};
        rc = az_arm_do(az, &pq, 0, NULL, err);
        json_decref(body);
        if (rc)
            goto out;
    }
    if ((rc = put_environment(az, run, &env_id, err)))
        goto out;
    hset(run, "code_id", code_id);
    hset(run, "environment_id", env_id);
    char *compute = aml_compute_id(az, t);
    hset(run, "compute_id", compute);
    free(compute);
    hset(run, "workspace", az_workspace0(az));
out:
    json_decref(have);
    free(code_uri);
    free(code_id);
    free(env_id);
    az_ctx_free(az);
    return rc;
}

/* ---- submit / poll ------------------------------------------------------------------------ */

static char *job_id(az_ctx *az, const char *name)
{
    return az_ws_resource_id(az, "jobs", name);
}

static int attempt_of(const ctarget_run_info *run)
{
    return run->attempt > 0 ? run->attempt : 1;
}

static ctarget_status put_job(az_ctx *az, const ctarget_run_info *run, int attempt,
                              ctarget_error *err)
{
    const char *code_id = hget(run, "code_id"), *env_id = hget(run, "environment_id"),
               *compute = hget(run, "compute_id");
    if (!code_id || !env_id || !compute) {
        H->error_set(err, CTARGET_E_STATE, 0, 0, "run %s was not prepared (no code version "
                     "recorded in its handle)", run->id);
        return CTARGET_E_STATE;
    }
    char name[160];
    job_name(run->id, attempt, name, sizeof name);
    char *id = job_id(az, name);
    json_t *body = aml_command_job_body(run, compute, code_id, env_id,
                                        "azureml://datastores/workspaceblobstore/paths/"
                                        "ctarget-blobs/");
    char what[200];
    snprintf(what, sizeof what, "job '%s'", name);
    az_arm_req rq = {.method = "PUT", .path = id, .api_version = AZ_AML_API_VERSION,
                     .body = body, .what = what};
    az_arm_resp rs = {0};
    ctarget_status rc = body ? az_arm_call(az, &rq, 0, &rs, err) : CTARGET_E_NOMEM;
    if (rc && rc != CTARGET_E_NOMEM && rs.status >= 400 && rs.status < 500 &&
        rs.status != 401 && rs.status != 403) {
        /* a job of this name exists already (a monitor died after its PUT): ours? */
        json_t *cur = NULL;
        ctarget_error e2;
        memset(&e2, 0, sizeof e2);
        e2.struct_size = sizeof e2;
        az_arm_req gq = {.method = "GET", .path = id, .api_version = AZ_AML_API_VERSION,
                         .what = what};
        if (az_arm_do(az, &gq, AZ_OK_404, &cur, &e2) == CTARGET_OK && cur) {
            const char *mine = json_string_value(json_object_get(
                json_object_get(json_object_get(cur, "properties"), "properties"),
                "ctarget_run_id"));
            if (mine && !strcmp(mine, run->id))
                rc = CTARGET_OK;
        }
        json_decref(cur);
    }
    az_arm_resp_clear(&rs);
    json_decref(body);
    free(id);
    if (!rc) {
        long long prev = hint(run, "attempt", 0);
        if (prev && attempt > prev) {
            /* a new attempt writes a new log: it follows the earlier attempts' bytes */
            hseti(run, "log_base", hint(run, "log_base", 0) + hint(run, "log_len", 0));
            hseti(run, "log_len", 0);
            hseti(run, "restarts", hint(run, "restarts", 0) + 1);
        }
        hset(run, "job_name", name);
        hseti(run, "attempt", attempt);
    }
    return rc;
}

static ctarget_status aml_submit(void *p, ctarget_call *c, ctarget_target *t,
                                 const ctarget_run_info *run, ctarget_error *err)
{
    (void)p;
    az_ctx *az;
    ctarget_status rc = aml_az(c, t, &az, err);
    if (rc)
        return rc;
    H->progress(c, "submitting the job", 0, 0);
    rc = put_job(az, run, attempt_of(run), err);
    az_ctx_free(az);
    return rc;
}

static void set_state(ctarget_run_poll *o, ctarget_run_state s, const char *native)
{
    o->state = s;
    snprintf(o->native_state, sizeof o->native_state, "%s", native ? native : "");
}

/* The error of a failed job in words, and the exit code when it names one.  The job
 * resource has no error field: Azure ML puts the reason into the job's properties as
 * azureml.runErrorCode / azureml.runErrorMessage. */
static void job_error(json_t *props, ctarget_run_poll *o, int *preempted)
{
    json_t *pp = json_object_get(props, "properties");
    const char *code = json_string_value(json_object_get(pp, "azureml.runErrorCode"));
    const char *msg = json_string_value(json_object_get(pp, "azureml.runErrorMessage"));
    json_t *e = json_object_get(props, "error");
    if (!msg && e) {
        code = json_string_value(json_object_get(e, "code"));
        msg = json_string_value(json_object_get(e, "message"));
    }
    *preempted = (code && strcasestr(code, "preempt")) != 0;
    if (!msg)
        return;
    snprintf(o->reason, sizeof o->reason, "%s%s%s", code ? code : "", code ? ": " : "", msg);
    /* "... exited with code N." (the last one: the command quoted before it is the user's) */
    const char *x = NULL;
    for (const char *p = msg; (p = strstr(p, "exited with code ")) != NULL; p++)
        x = p;
    if (x) {
        o->has_exit_code = 1;
        o->exit_code = atoi(x + strlen("exited with code "));
    }
    const char *k = NULL;
    for (const char *p = msg; (p = strstr(p, "killed by signal ")) != NULL; p++)
        k = p;
    if (k && !x)
        o->term_signal = atoi(k + strlen("killed by signal "));
}

static ctarget_status aml_poll(void *p, ctarget_call *c, ctarget_target *t,
                               const ctarget_run_info *run, long wait_ms, ctarget_run_poll *o,
                               ctarget_error *err)
{
    (void)p, (void)wait_ms;
    const char *name = hget(run, "job_name");
    if (!name) {
        H->error_set(err, CTARGET_E_STATE, 0, 0, "run %s has no job recorded", run->id);
        return CTARGET_E_STATE;
    }
    az_ctx *az;
    ctarget_status rc = aml_az(c, t, &az, err);
    if (rc)
        return rc;
    char *id = job_id(az, name);
    char what[200];
    snprintf(what, sizeof what, "job '%s'", name);
    az_arm_req rq = {.method = "GET", .path = id, .api_version = AZ_AML_API_VERSION,
                     .what = what};
    json_t *job = NULL;
    rc = az_arm_do(az, &rq, AZ_OK_404, &job, err);
    free(id);
    if (rc) {
        az_ctx_free(az);
        return rc;
    }
    if (!job) {
        set_state(o, CTARGET_RUN_NOT_RESPONDING, "NotFound");
        snprintf(o->reason, sizeof o->reason, "job '%s' is gone from workspace '%s'", name,
                 az_workspace0(az));
        az_ctx_free(az);
        return CTARGET_OK;
    }
    json_t *props = json_object_get(job, "properties");
    const char *s = json_string_value(json_object_get(props, "status"));
    if (!s)
        s = "Unknown";
    static const struct { const char *n; ctarget_run_state v; } map[] = {
        {"NotStarted", CTARGET_RUN_PREPARING},  {"Starting", CTARGET_RUN_PREPARING},
        {"Provisioning", CTARGET_RUN_PREPARING}, {"Preparing", CTARGET_RUN_PREPARING},
        {"Queued", CTARGET_RUN_QUEUED},          {"Running", CTARGET_RUN_RUNNING},
        {"Finalizing", CTARGET_RUN_RUNNING},     {"CancelRequested", CTARGET_RUN_RUNNING},
        {"Completed", CTARGET_RUN_COMPLETED},    {"Failed", CTARGET_RUN_FAILED},
        {"Canceled", CTARGET_RUN_CANCELED},      {"NotResponding", CTARGET_RUN_NOT_RESPONDING},
        {"Paused", CTARGET_RUN_RUNNING},         {"Unknown", CTARGET_RUN_RUNNING},
    };
    ctarget_run_state st = CTARGET_RUN_RUNNING;
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
        if (!strcasecmp(s, map[i].n))
            st = map[i].v;
    set_state(o, st, s);
    if (st == CTARGET_RUN_FAILED || st == CTARGET_RUN_CANCELED) {
        int preempted = 0;
        job_error(props, o, &preempted);
        /* a low-priority node taken back: the core's retry policy may start the run
         * again as its next attempt (submit() with run->attempt + 1) */
        if (st == CTARGET_RUN_FAILED && preempted)
            o->restartable = 1;
    }
    json_decref(job);
    az_ctx_free(az);
    return rc;
}

/* ---- logs, metrics, outputs --------------------------------------------------------------- */

/* the artifact store of the workspace (container azureml), opened per call */
static ctarget_status artifacts(az_ctx *az, ctarget_target *t, az_blob **b, ctarget_error *err)
{
    return aml_datastore_open(az, t, "workspaceartifactstore", b, err);
}

typedef struct counted {
    ctarget_write_fn out;
    void *arg;
    uint64_t n;
} counted;

static int counted_write(void *arg, const void *data, size_t len)
{
    counted *w = arg;
    w->n += len;
    return w->out(w->arg, data, len);
}

static ctarget_status aml_read_logs(void *p, ctarget_call *c, ctarget_target *t,
                                    const ctarget_run_info *run, ctarget_stream stream,
                                    uint64_t offset, ctarget_write_fn out, void *out_arg,
                                    ctarget_error *err)
{
    (void)p;
    const char *name = hget(run, "job_name");
    if (!name)
        return CTARGET_OK;
    uint64_t base = stream == CTARGET_STREAM_LOG ? (uint64_t)hint(run, "log_base", 0) : 0;
    if (offset < base)
        return CTARGET_OK; /* earlier attempts' bytes are all in already */
    az_ctx *az;
    ctarget_status rc = aml_az(c, t, &az, err);
    if (rc)
        return rc;
    az_blob *b = NULL;
    if ((rc = artifacts(az, t, &b, err))) {
        az_ctx_free(az);
        return rc;
    }
    char *blob = xfmt(stream == CTARGET_STREAM_LOG ? "ExperimentRun/dcid.%s/user_logs/std_log.txt"
                                                   : "ExperimentRun/dcid.%s/outputs/"
                                                     ".ctarget_metrics.jsonl", name);
    counted w = {out, out_arg, 0};
    uint64_t size = 0;
    rc = az_blob_get(b, blob, offset - base, -1, counted_write, &w, &size, err);
    if (rc == CTARGET_E_NOT_FOUND)
        rc = CTARGET_OK; /* not written yet */
    else if (rc == CTARGET_E_AUTH)
        aml_datastore_forget(); /* a rotated key: the next call fetches it again */
    else if (!rc && stream == CTARGET_STREAM_LOG)
        hseti(run, "log_len", (long long)(offset - base + w.n));
    free(blob);
    az_blob_close(b);
    az_ctx_free(az);
    return rc;
}

static ctarget_status aml_cancel(void *p, ctarget_call *c, ctarget_target *t,
                                 const ctarget_run_info *run, ctarget_error *err)
{
    (void)p;
    const char *name = hget(run, "job_name");
    if (!name)
        return CTARGET_OK;
    az_ctx *az;
    ctarget_status rc = aml_az(c, t, &az, err);
    if (rc)
        return rc;
    char *id = job_id(az, name);
    char *path = xfmt("%s/cancel", id);
    char what[200];
    snprintf(what, sizeof what, "job '%s'", name);
    az_arm_req rq = {.method = "POST", .path = path, .api_version = AZ_AML_API_VERSION,
                     .what = what};
    az_arm_resp rs = {0};
    rc = az_arm_call(az, &rq, AZ_RETRY_SAFE | AZ_OK_404, &rs, err);
    az_arm_resp_clear(&rs);
    free(path);
    free(id);
    az_ctx_free(az);
    return rc;
}

/* a relative blob path safe to create below a directory */
static int safe_rel(const char *r)
{
    if (!*r || *r == '/')
        return 0;
    for (const char *p = r; *p;) {
        const char *e = strchr(p, '/');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        if (!n || (n == 1 && p[0] == '.') || (n == 2 && p[0] == '.' && p[1] == '.'))
            return 0;
        p += n + (e ? 1 : 0);
        if (e && !*p)
            return 0;
    }
    return 1;
}

static int mkdirs_for(const char *path)
{
    char *d = strdup(path);
    if (!d)
        return -1;
    for (char *s = d + 1; *s; s++) {
        if (*s != '/')
            continue;
        *s = '\0';
        if (mkdir(d, 0755) != 0 && errno != EEXIST) {
            free(d);
            return -1;
        }
        struct stat st;
        if (lstat(d, &st) != 0 || !S_ISDIR(st.st_mode)) {
            free(d);
            return -1;
        }
        *s = '/';
    }
    free(d);
    return 0;
}

typedef struct fetch {
    az_blob *b;
    const char *prefix;
    const char *dest;   /* dest_dir/outputs or dest_dir/logs */
    size_t n;
    ctarget_status rc;
    ctarget_error *err;
} fetch;

static int fd_write(void *arg, const void *data, size_t len)
{
    return fd_write_all(*(int *)arg, data, len);
}

static int fetch_cb(void *arg, const char *name, uint64_t size)
{
    (void)size;
    fetch *f = arg;
    const char *rel = name + strlen(f->prefix);
    if (!safe_rel(rel) || !strcmp(rel, ".ctarget_metrics.jsonl"))
        return 0;
    char *path = xfmt("%s/%s", f->dest, rel);
    char *tmp = xfmt("%s.ctarget-tmp", path);
    if (!path || !tmp || mkdirs_for(path)) {
        H->error_set(f->err, CTARGET_E_IO, 0, errno, "cannot create the directory of %s",
                     path ? path : rel);
        f->rc = CTARGET_E_IO;
        free(path);
        free(tmp);
        return 1;
    }
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (fd < 0) {
        H->error_set(f->err, CTARGET_E_IO, 0, errno, "cannot write %s", tmp);
        f->rc = CTARGET_E_IO;
    } else {
        f->rc = az_blob_get(f->b, name, 0, -1, fd_write, &fd, NULL, f->err);
        if (close(fd) != 0 && !f->rc) {
            H->error_set(f->err, CTARGET_E_IO, 0, errno, "cannot write %s", tmp);
            f->rc = CTARGET_E_IO;
        }
        if (!f->rc && rename(tmp, path) != 0) {
            H->error_set(f->err, CTARGET_E_IO, 0, errno, "cannot rename %s", tmp);
            f->rc = CTARGET_E_IO;
        }
        if (f->rc)
            unlink(tmp);
        else
            f->n++;
    }
    free(path);
    free(tmp);
    return f->rc ? 1 : 0;
}

static ctarget_status aml_fetch_outputs(void *p, ctarget_call *c, ctarget_target *t,
                                        const ctarget_run_info *run, const char *dest_dir,
                                        ctarget_error *err)
{
    (void)p;
    const char *name = hget(run, "job_name");
    if (!name)
        return CTARGET_OK;
    az_ctx *az;
    ctarget_status rc = aml_az(c, t, &az, err);
    if (rc)
        return rc;
    az_blob *b = NULL;
    if ((rc = artifacts(az, t, &b, err))) {
        az_ctx_free(az);
        return rc;
    }
    static const char *const what[] = {"outputs", "logs"};
    for (int i = 0; i < 2 && !rc; i++) {
        char *prefix = xfmt("ExperimentRun/dcid.%s/%s/", name, what[i]);
        char *dest = xfmt("%s/%s", dest_dir, what[i]);
        mkdir(dest, 0755);
        fetch f = {.b = b, .prefix = prefix, .dest = dest, .err = err};
        H->progress(c, "downloading outputs", 0, 0);
        rc = az_blob_list(b, prefix, fetch_cb, &f, err);
        if (!rc)
            rc = f.rc;
        free(prefix);
        free(dest);
    }
    az_blob_close(b);
    az_ctx_free(az);
    return rc;
}

static ctarget_status aml_reattach(void *p, ctarget_call *c, ctarget_target *t,
                                   const ctarget_run_info *run, ctarget_error *err)
{
    (void)p;
    const char *name = hget(run, "job_name");
    if (!name) {
        H->error_set(err, CTARGET_E_STATE, 0, 0, "run %s has no Azure ML job recorded in its "
                     "handle", run->id);
        return CTARGET_E_STATE;
    }
    az_ctx *az;
    ctarget_status rc = aml_az(c, t, &az, err);
    if (rc)
        return rc;
    char *id = job_id(az, name);
    char what[200];
    snprintf(what, sizeof what, "job '%s'", name);
    az_arm_req rq = {.method = "GET", .path = id, .api_version = AZ_AML_API_VERSION,
                     .what = what};
    json_t *job = NULL;
    rc = az_arm_do(az, &rq, AZ_OK_404, &job, err);
    if (!rc && !job) {
        H->error_set(err, CTARGET_E_NOT_FOUND, 0, 0, "job '%s' is no longer in workspace '%s'",
                     name, az_workspace0(az));
        rc = CTARGET_E_NOT_FOUND;
    }
    json_decref(job);
    free(id);
    az_ctx_free(az);
    return rc;
}

static ctarget_status aml_cleanup(void *p, ctarget_call *c, ctarget_target *t,
                                  const ctarget_run_info *run, ctarget_error *err)
{
    /* the code version and blobs stay: the next run of the same files uploads nothing */
    (void)p, (void)c, (void)t, (void)run, (void)err;
    return CTARGET_OK;
}

const ctarget_run_ops aml_run_ops = {
    .struct_size = sizeof(ctarget_run_ops),
    .prepare = aml_prepare,
    .submit = aml_submit,
    .poll = aml_poll,
    .read_logs = aml_read_logs,
    .cancel = aml_cancel,
    .fetch_outputs = aml_fetch_outputs,
    .reattach = aml_reattach,
    .cleanup = aml_cleanup,
};
