/* The listing cache: what readdir returned for each directory of a source, so that a warm
 * re-snapshot reads no directory whose contents did not change (git's "untracked cache").
 *
 * A directory's mtime and ctime change whenever a name in it is added, removed or renamed,
 * so a directory whose (mtime, ctime, inode, device) are as recorded still holds the names
 * recorded, with the same types.  Only the raw listing is kept: ignore rules, odd files and
 * every file's own stat are applied afresh on each walk, so an edited ignore file or a
 * changed file is seen as before.  A stamp younger than the racy margin before the walk
 * began is not recorded (a name added later in the same timestamp tick would leave it
 * unchanged), as git's index does for racily clean files.
 *
 * One file per source directory, <ws>/statcache/<hash of the path>.dirs, mapped in one go:
 *   header   "ctdirs1\n", the boot id (40 bytes, NUL-padded), the source path's length
 *            (u64), the record count (u64), then the source path padded to 8
 *   records  rel length (u32), name count (u32), mtime_ns, ctime_ns, inode, device, names
 *            length (u64 each), then the directory's path relative to the source ("" for
 *            the source itself) padded to 8, then the names (a d_type byte, the name, a
 *            NUL; sorted in byte order) padded to 8.
 * Host byte order; written to a temporary file and renamed, never fsync'ed: a file from
 * another boot is not used at all, and one from this boot is exactly what a complete
 * write left.  The file is only read back by its owner, and every bound is checked. */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"
#include "snapshot.h"
#include "util.h"

#define SD_MAGIC "ctdirs1\n"
#define SD_HEAD (8 + 40 + 8 + 8)
#define SD_REC 48
#define SD_MAX_RECORDS 4000000

typedef struct sd_rec {
    const char *rel;            /* into the mapping, rel_len bytes (not NUL-terminated) */
    uint32_t rel_len, n;
    int64_t mtime_ns, ctime_ns;
    uint64_t ino, dev;
    const unsigned char *names; /* n times: type, name, NUL */
    size_t names_len;
} sd_rec;

struct snap_dirs {
    void *map;
    size_t len;
    sd_rec *v;
    size_t n;
};

static uint64_t rd64(const unsigned char *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

static size_t pad8(size_t n)
{
    return (n + 7) & ~(size_t)7;
}

static int64_t ts_ns(struct timespec ts)
{
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int cmp_rec(const void *a, const void *b)
{
    const sd_rec *x = a, *y = b;
    size_t n = x->rel_len < y->rel_len ? x->rel_len : y->rel_len;
    int c = memcmp(x->rel, y->rel, n);
    return c ? c : (x->rel_len > y->rel_len) - (x->rel_len < y->rel_len);
}

/* The names block: n entries of a type byte and a non-empty name without '/', each ending
 * in a NUL, filling exactly len bytes. */
static int names_ok(const unsigned char *p, size_t len, uint32_t n)
{
    size_t off = 0;
    for (uint32_t k = 0; k < n; k++) {
        if (len - off < 3)
            return 0;
        const unsigned char *name = p + off + 1;
        const unsigned char *nul = memchr(name, '\0', len - off - 1);
        if (!nul || nul == name || memchr(name, '/', (size_t)(nul - name)))
            return 0;
        off = (size_t)(nul - p) + 1;
    }
    return off == len;
}

snap_dirs *snap_dirs_load(const char *ws_dir, const char *source)
{
    char boot[40];
    snap_boot_id(boot);
    if (!boot[0])
        return NULL;
    char *path = snap_cache_path(ws_dir, source, ".dirs");
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    free(path);
    if (fd < 0)
        return NULL;
    struct stat st;
    size_t srclen = strlen(source);
    snap_dirs *d = NULL;
    void *map = MAP_FAILED;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_uid != geteuid() ||
        st.st_size < (off_t)(SD_HEAD + pad8(srclen)))
        goto out;
    size_t len = (size_t)st.st_size;
    map = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
    if (map == MAP_FAILED)
        goto out;
    const unsigned char *p = map;
    uint64_t count = rd64(p + 56);
    if (memcmp(p, SD_MAGIC, 8) || memcmp(p + 8, boot, 40) || rd64(p + 48) != srclen ||
        memcmp(p + SD_HEAD, source, srclen) || count > SD_MAX_RECORDS)
        goto out;
    d = xcalloc(1, sizeof *d);
    d->v = xcalloc(count ? count : 1, sizeof *d->v);
    size_t off = SD_HEAD + pad8(srclen);
    for (uint64_t k = 0; k < count; k++) {
        if (len - off < SD_REC)
            goto bad;
        const unsigned char *r = p + off;
        sd_rec *e = &d->v[d->n];
        memcpy(&e->rel_len, r, 4);
        memcpy(&e->n, r + 4, 4);
        e->mtime_ns = (int64_t)rd64(r + 8);
        e->ctime_ns = (int64_t)rd64(r + 16);
        e->ino = rd64(r + 24);
        e->dev = rd64(r + 32);
        e->names_len = (size_t)rd64(r + 40);
        off += SD_REC;
        if (e->rel_len > len - off || pad8(e->rel_len) > len - off)
            goto bad;
        e->rel = (const char *)p + off;
        if (memchr(e->rel, '\0', e->rel_len))
            goto bad;
        off += pad8(e->rel_len);
        if (e->names_len > len - off || pad8(e->names_len) > len - off)
            goto bad;
        e->names = p + off;
        if (!names_ok(e->names, e->names_len, e->n))
            goto bad;
        off += pad8(e->names_len);
        d->n++;
    }
    if (off != len)
        goto bad;
    qsort(d->v, d->n, sizeof *d->v, cmp_rec);
    d->map = map;
    d->len = len;
    map = MAP_FAILED;
    goto out;
bad:
    free(d->v);
    free(d);
    d = NULL;
out:
    if (map != MAP_FAILED)
        munmap(map, (size_t)st.st_size);
    close(fd);
    return d;
}

void snap_dirs_free(snap_dirs *d)
{
    if (!d)
        return;
    munmap(d->map, d->len);
    free(d->v);
    free(d);
}

int snap_dirs_get(const snap_dirs *d, const char *rel, const struct stat *st,
                  snap_dir_names *out)
{
    if (!d || !d->n)
        return 0;
    sd_rec key = {.rel = rel, .rel_len = (uint32_t)strlen(rel)};
    const sd_rec *e = bsearch(&key, d->v, d->n, sizeof *d->v, cmp_rec);
    if (!e || e->mtime_ns != ts_ns(st->st_mtim) || e->ctime_ns != ts_ns(st->st_ctim) ||
        e->ino != (uint64_t)st->st_ino || e->dev != (uint64_t)st->st_dev)
        return 0;
    out->names = e->names;
    out->len = e->names_len;
    out->n = e->n;
    return 1;
}

void snap_dirs_out_init(snap_dirs_out *o, int64_t walk_start_ns)
{
    memset(o, 0, sizeof *o);
    sb_init(&o->records);
    o->walk_start_ns = walk_start_ns;
}

void snap_dirs_out_free(snap_dirs_out *o)
{
    sb_free(&o->records);
}

void snap_dirs_out_add(snap_dirs_out *o, const char *rel, const struct stat *st, int reused,
                       const snap_dir_names *names)
{
    int64_t m = ts_ns(st->st_mtim), c = ts_ns(st->st_ctim);
    if (reused)
        o->reused++;
    else
        o->listed++;
    /* racily clean: a name added in this same tick would leave the stamp as it is */
    if (m >= o->walk_start_ns - SNAP_RACY_MARGIN_NS || c >= o->walk_start_ns - SNAP_RACY_MARGIN_NS)
        return;
    static const char zeros[8];
    size_t rl = strlen(rel);
    unsigned char r[SD_REC];
    uint32_t rl32 = (uint32_t)rl, n32 = (uint32_t)names->n;
    uint64_t f[5] = {(uint64_t)m, (uint64_t)c, (uint64_t)st->st_ino, (uint64_t)st->st_dev,
                     (uint64_t)names->len};
    memcpy(r, &rl32, 4);
    memcpy(r + 4, &n32, 4);
    memcpy(r + 8, f, sizeof f);
    sb_add(&o->records, r, sizeof r);
    sb_add(&o->records, rel, rl);
    sb_add(&o->records, zeros, pad8(rl) - rl);
    sb_add(&o->records, names->names, names->len);
    sb_add(&o->records, zeros, pad8(names->len) - names->len);
    o->n++;
}

void snap_dirs_write(const char *ws_dir, const char *source, const snap_dirs_out *o)
{
    /* every directory came from the cache: the file on disk says the same already */
    if (!o->listed)
        return;
    char boot[40];
    snap_boot_id(boot);
    if (!boot[0] || !o->n) {
        /* nothing worth keeping (every directory changed within the racy margin) */
        char *path = snap_cache_path(ws_dir, source, ".dirs");
        unlink(path);
        free(path);
        return;
    }
    static const char zeros[8];
    size_t srclen = strlen(source);
    strbuf b;
    sb_init(&b);
    unsigned char head[SD_HEAD];
    uint64_t sl = srclen, n = o->n;
    memcpy(head, SD_MAGIC, 8);
    memcpy(head + 8, boot, 40);
    memcpy(head + 48, &sl, 8);
    memcpy(head + 56, &n, 8);
    sb_add(&b, head, sizeof head);
    sb_add(&b, source, srclen);
    sb_add(&b, zeros, pad8(srclen) - srclen);
    sb_add(&b, o->records.data ? o->records.data : "", o->records.len);
    char *path = snap_cache_path(ws_dir, source, ".dirs");
    snap_cache_write(ws_dir, path, b.data, b.len, "listing cache");
    free(path);
    sb_free(&b);
}
