/* Shipping a snapshot to the VM, incrementally.
 *
 *  1. `begin ID`: the VM says whether it has the snapshot already, and which snapshots it has
 *     (newest first).  The newest of those this workspace still knows becomes the base.
 *  2. `missing`: of the snapshot's blobs that the base does not reference, which the VM lacks
 *     (it checks name and size in its blob cache).
 *  3. `receive ID`: one tar stream over one channel: the core's transport tar
 *     (host->snapshot_write_tar with want() = the missing blobs), in which the full
 *     manifest.jsonl is replaced by manifest.delta against the base: only the changed lines.
 *     The agent rebuilds the manifest, checks that it hashes to the snapshot id and that every
 *     blob is there, makes the blobs durable, and only then records the snapshot.
 * A resubmit after changing one file therefore ships that file and one manifest line.  If the
 * VM lost blobs the base referenced, or the delta does not rebuild the snapshot, the full
 * manifest is sent instead. */
#include "config.h"

#include "remotevm.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <pthread.h>

/* ---- a set of byte strings (open addressing; the strings are borrowed) ------------------- */

typedef struct sset {
    const char **p;
    size_t *len;
    size_t cap, n;
} sset;

static uint64_t hash_bytes(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ULL;
    }
    return h;
}

static int sset_grow(sset *s)
{
    size_t cap = s->cap ? s->cap * 2 : 1024;
    const char **p = calloc(cap, sizeof *p);
    size_t *len = calloc(cap, sizeof *len);
    if (!p || !len) {
        free(p);
        free(len);
        return -1;
    }
    for (size_t i = 0; i < s->cap; i++) {
        if (!s->p[i])
            continue;
        size_t j = hash_bytes(s->p[i], s->len[i]) & (cap - 1);
        while (p[j])
            j = (j + 1) & (cap - 1);
        p[j] = s->p[i];
        len[j] = s->len[i];
    }
    free(s->p);
    free(s->len);
    s->p = p;
    s->len = len;
    s->cap = cap;
    return 0;
}

static int sset_has(const sset *s, const char *k, size_t n)
{
    if (!s->cap)
        return 0;
    size_t j = hash_bytes(k, n) & (s->cap - 1);
    while (s->p[j]) {
        if (s->len[j] == n && !memcmp(s->p[j], k, n))
            return 1;
        j = (j + 1) & (s->cap - 1);
    }
    return 0;
}

static int sset_add(sset *s, const char *k, size_t n)
{
    if ((s->n + 1) * 2 > s->cap && sset_grow(s) != 0)
        return -1;
    size_t j = hash_bytes(k, n) & (s->cap - 1);
    while (s->p[j]) {
        if (s->len[j] == n && !memcmp(s->p[j], k, n))
            return 0;
        j = (j + 1) & (s->cap - 1);
    }
    s->p[j] = k;
    s->len[j] = n;
    s->n++;
    return 0;
}

static void sset_free(sset *s)
{
    free(s->p);
    free(s->len);
    memset(s, 0, sizeof *s);
}

/* ---- blob lists -------------------------------------------------------------------------- */

typedef struct blobs {
    char *shas;      /* n * 65 bytes: hex + NUL */
    uint64_t *sizes;
    size_t n, cap;
    sset set;
} blobs;

static int blob_cb(void *arg, const char *sha, uint64_t size)
{
    blobs *b = arg;
    if (b->n == b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 256;
        char *s = realloc(b->shas, cap * 65);
        if (!s)
            return 1;
        b->shas = s;
        uint64_t *z = realloc(b->sizes, cap * sizeof *z);
        if (!z)
            return 1;
        b->sizes = z;
        b->cap = cap;
    }
    snprintf(b->shas + b->n * 65, 65, "%s", sha);
    b->sizes[b->n++] = size;
    return 0;
}

static void blobs_index(blobs *b)
{
    for (size_t i = 0; i < b->n; i++)
        sset_add(&b->set, b->shas + i * 65, 64);
}

static void blobs_free(blobs *b)
{
    free(b->shas);
    free(b->sizes);
    sset_free(&b->set);
    memset(b, 0, sizeof *b);
}

/* ---- the tar stream filter --------------------------------------------------------------- */

typedef struct pqueue pqueue;

typedef struct tfilter {
    /* where the filtered stream goes (NULL: only capture the manifest) */
    pqueue *q;
    ctarget_status rc;
    ctarget_error *err;
    /* parse state */
    unsigned char hdr[512];
    size_t hlen;
    uint64_t left;       /* bytes of the current entry (data + padding) still to come */
    int capture;         /* the current entry is manifest.jsonl */
    int trailer;         /* the end-of-archive blocks began: pass the rest through */
    rv_buf pax;          /* a pax header held back until we know which entry it belongs to */
    int in_pax;
    uint64_t pax_size;   /* size= from the held pax header, or 0 */
    uint64_t cap_size;   /* size of the manifest being captured */
    rv_buf manifest;     /* captured manifest.jsonl */
    int replaced;
    /* the replacement */
    const rv_buf *base;  /* base manifest (entry lines), or NULL: forward the manifest as is */
    uint64_t sent;
    uint64_t manifest_bytes;
    int delta;
    char *obuf;          /* OUTBUF bytes waiting to be written */
    size_t olen;
} tfilter;

/* The core's writer hands over 10 KB blocks; SSH packets and their MACs cost per write, so
 * the stream goes out in 256 KB pieces.  Reading blobs and building the tar (a producer
 * thread) and encrypting and sending (the calling thread) run on two cores: a bounded queue
 * of pieces between them. */
#define OUTBUF (256 * 1024)
#define NPIECES 8

typedef struct pqueue {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    char *piece[NPIECES];
    size_t len[NPIECES];
    int head, count;       /* filled pieces: head .. head+count-1 */
    char *spare[NPIECES];  /* empty pieces */
    int nspare;
    int done, failed;      /* producer finished; consumer gave up */
} pqueue;

static int flush_out(tfilter *f)
{
    if (!f->q || !f->olen)
        return 0;
    pqueue *q = f->q;
    pthread_mutex_lock(&q->mu);
    while (!q->failed && (q->count == NPIECES || !q->nspare))
        pthread_cond_wait(&q->cv, &q->mu);
    if (q->failed) {
        pthread_mutex_unlock(&q->mu);
        f->rc = CTARGET_E_CANCELED;
        return 1;
    }
    int slot = (q->head + q->count) % NPIECES;
    q->piece[slot] = f->obuf;
    q->len[slot] = f->olen;
    q->count++;
    f->obuf = q->spare[--q->nspare];
    pthread_cond_broadcast(&q->cv);
    pthread_mutex_unlock(&q->mu);
    f->sent += f->olen;
    f->olen = 0;
    return 0;
}

static int forward(tfilter *f, const void *data, size_t len)
{
    if (!f->q || !len)
        return 0;
    const char *p = data;
    while (len) {
        if (f->olen == OUTBUF && flush_out(f))
            return 1;
        size_t k = OUTBUF - f->olen < len ? OUTBUF - f->olen : len;
        memcpy(f->obuf + f->olen, p, k);
        f->olen += k;
        p += k;
        len -= k;
    }
    return 0;
}

static uint64_t octal(const unsigned char *p, size_t n)
{
    if (p[0] & 0x80) { /* base-256 */
        uint64_t v = p[0] & 0x7f;
        for (size_t i = 1; i < n; i++)
            v = v << 8 | p[i];
        return v;
    }
    uint64_t v = 0;
    for (size_t i = 0; i < n && p[i]; i++)
        if (p[i] >= '0' && p[i] <= '7')
            v = v * 8 + (uint64_t)(p[i] - '0');
    return v;
}

static uint64_t pad512(uint64_t n)
{
    return (n + 511) & ~(uint64_t)511;
}

static void tar_header(unsigned char h[512], const char *name, uint64_t size)
{
    memset(h, 0, 512);
    snprintf((char *)h, 100, "%s", name);
    memcpy(h + 100, "0000644", 8);
    memcpy(h + 108, "0000000", 8);
    memcpy(h + 116, "0000000", 8);
    snprintf((char *)h + 124, 12, "%011llo", (unsigned long long)size);
    memcpy(h + 136, "00000000000", 12);
    h[156] = '0';
    memcpy(h + 257, "ustar", 6);
    memcpy(h + 263, "00", 2);
    memset(h + 148, ' ', 8);
    unsigned sum = 0;
    for (int i = 0; i < 512; i++)
        sum += h[i];
    snprintf((char *)h + 148, 8, "%06o", sum);
    h[155] = ' ';
}

/* The raw JSON string literal of an entry line's path: from the opening quote to the closing
 * one.  Entry lines all start with {"path": "...". */
static size_t path_literal(const char *line, size_t len, const char **lit)
{
    static const char pre[] = "{\"path\": \"";
    if (len < sizeof pre || memcmp(line, pre, sizeof pre - 1))
        return 0;
    size_t i = sizeof pre - 1;
    while (i < len && line[i] != '"')
        i += line[i] == '\\' ? 2 : 1;
    if (i >= len)
        return 0;
    *lit = line + sizeof pre - 2;
    return i - (sizeof pre - 2) + 1;
}

/* Lines of text (each ending in '\n') */
typedef struct lines {
    const char **p;
    size_t *len;
    size_t n;
} lines;

static int split_lines(const char *text, size_t len, int skip_first, lines *out)
{
    size_t cap = 64;
    out->p = malloc(cap * sizeof *out->p);
    out->len = malloc(cap * sizeof *out->len);
    out->n = 0;
    if (!out->p || !out->len)
        return -1;
    size_t i = 0, first = 1;
    while (i < len) {
        const char *nl = memchr(text + i, '\n', len - i);
        size_t l = nl ? (size_t)(nl - (text + i)) + 1 : len - i;
        if (!(first && skip_first)) {
            if (out->n == cap) {
                cap *= 2;
                const char **p = realloc(out->p, cap * sizeof *p);
                if (!p)
                    return -1;
                out->p = p;
                size_t *q = realloc(out->len, cap * sizeof *q);
                if (!q)
                    return -1;
                out->len = q;
            }
            out->p[out->n] = text + i;
            out->len[out->n++] = l;
        }
        first = 0;
        i += l;
    }
    return 0;
}

static void lines_free(lines *l)
{
    free(l->p);
    free(l->len);
}

/* manifest.delta: the lines of `now` that `base` lacks, and the paths `base` has that `now`
 * lacks.  Returns -1 on memory failure. */
static int make_delta(const char *id, const char *base_id, const rv_buf *base,
                      const rv_buf *now_full, rv_buf *out)
{
    lines b = {0}, n = {0};
    sset bl = {0}, nl = {0};
    int rc = -1;
    if (split_lines(base->data ? base->data : "", base->len, 0, &b) != 0 ||
        split_lines(now_full->data, now_full->len, 1, &n) != 0)
        goto done;
    for (size_t i = 0; i < b.n; i++)
        if (sset_add(&bl, b.p[i], b.len[i]) != 0)
            goto done;
    for (size_t i = 0; i < n.n; i++) {
        const char *lit;
        size_t ll = path_literal(n.p[i], n.len[i], &lit);
        if (!ll || sset_add(&nl, lit, ll) != 0)
            goto done;
    }
    char head[256];
    snprintf(head, sizeof head, "{\"ctarget_delta\": 1, \"snapshot\": \"%s\", \"base\": \"%s\"}\n",
             id, base_id);
    rv_buf_adds(out, head);
    for (size_t i = 0; i < n.n; i++)
        if (!sset_has(&bl, n.p[i], n.len[i])) {
            rv_buf_adds(out, "+ ");
            rv_buf_add(out, n.p[i], n.len[i]);
        }
    for (size_t i = 0; i < b.n; i++) {
        const char *lit;
        size_t ll = path_literal(b.p[i], b.len[i], &lit);
        if (ll && !sset_has(&nl, lit, ll)) {
            rv_buf_adds(out, "- ");
            rv_buf_add(out, lit, ll);
            rv_buf_adds(out, "\n");
        }
    }
    rc = 0;
done:
    lines_free(&b);
    lines_free(&n);
    sset_free(&bl);
    sset_free(&nl);
    return rc;
}

typedef struct shipper {
    const ctarget_host *h;
    ctarget_call *c;
    const char *id;
    const char *base_id;
    rv_buf base;   /* base entry lines */
    rv_buf answer; /* the agent's list of missing blobs, which `missing` points into */
    sset missing;
    rv_ship_stats *st;
} shipper;

static int emit_manifest(tfilter *f, shipper *sp)
{
    f->replaced = 1;
    rv_buf delta = {0};
    const char *name = "manifest.jsonl";
    const rv_buf *body = &f->manifest;
    if (f->base && make_delta(sp->id, sp->base_id, f->base, &f->manifest, &delta) == 0 &&
        delta.len < f->manifest.len) {
        name = "manifest.delta";
        body = &delta;
        f->delta = 1;
    }
    unsigned char h[512];
    tar_header(h, name, body->len);
    static const char zero[512];
    int r = forward(f, h, 512) || forward(f, body->data, body->len) ||
            forward(f, zero, pad512(body->len) - body->len);
    f->manifest_bytes = body->len;
    rv_buf_free(&delta);
    return r;
}

typedef struct tctx {
    tfilter *f;
    shipper *sp;
} tctx;

/* The core's tar, entry by entry: manifest.jsonl captured (and replaced), the rest forwarded. */
static int filter_write(void *arg, const void *data, size_t len)
{
    tctx *x = arg;
    tfilter *f = x->f;
    const unsigned char *p = data;
    while (len) {
        if (f->trailer)
            return forward(f, p, len);
        if (f->left) {
            size_t k = len < f->left ? len : (size_t)f->left;
            if (f->in_pax) {
                rv_buf_add(&f->pax, p, k);
            } else if (f->capture) {
                rv_buf_add(&f->manifest, p, k);
            } else if (forward(f, p, k)) {
                return 1;
            }
            p += k;
            len -= k;
            f->left -= k;
            if (!f->left && f->in_pax) {
                /* size= record of the held pax header, for the entry that follows */
                f->in_pax = 0;
                const char *s = f->pax.data + 512;
                size_t n = f->pax.len - 512;
                f->pax_size = 0;
                for (size_t i = 0; i + 5 < n; i++)
                    if (!memcmp(s + i, " size=", 6)) {
                        f->pax_size = strtoull(s + i + 6, NULL, 10);
                        break;
                    }
            }
            if (!f->left && f->capture) {
                f->capture = 0;
                /* the captured padding is not part of the manifest */
                f->manifest.len = (size_t)f->cap_size;
                if (x->sp && emit_manifest(f, x->sp))
                    return 1;
            }
            continue;
        }
        size_t k = 512 - f->hlen < len ? 512 - f->hlen : len;
        memcpy(f->hdr + f->hlen, p, k);
        f->hlen += k;
        p += k;
        len -= k;
        if (f->hlen < 512)
            continue;
        f->hlen = 0;
        int zero = 1;
        for (int i = 0; i < 512 && zero; i++)
            zero = !f->hdr[i];
        if (zero) {
            f->trailer = 1;
            if (forward(f, f->pax.data, f->pax.len) || forward(f, f->hdr, 512))
                return 1;
            continue;
        }
        uint64_t size = octal(f->hdr + 124, 12);
        char type = (char)f->hdr[156];
        if (type == 'x') {
            f->pax.len = 0;
            rv_buf_add(&f->pax, f->hdr, 512);
            f->in_pax = 1;
            f->left = pad512(size);
            if (!f->left)
                f->in_pax = 0;
            continue;
        }
        if (f->pax_size)
            size = f->pax_size;
        char name[101];
        memcpy(name, f->hdr, 100);
        name[100] = '\0';
        f->left = pad512(size);
        if (!strcmp(name, "manifest.jsonl") && !f->replaced) {
            f->capture = 1;
            f->cap_size = size; /* for trimming the padding */
            f->pax_size = 0;
            f->pax.len = 0;
            if (!f->left) {
                f->capture = 0;
                f->manifest.len = 0;
                if (x->sp && emit_manifest(f, x->sp))
                    return 1;
            }
            continue;
        }
        f->pax_size = 0;
        if (forward(f, f->pax.data, f->pax.len) || forward(f, f->hdr, 512))
            return 1;
        f->pax.len = 0;
    }
    return 0;
}

static int want_missing(void *arg, const char *sha)
{
    shipper *sp = arg;
    return sset_has(&sp->missing, sha, strlen(sha));
}

static int no_blobs(void *arg, const char *sha)
{
    (void)arg, (void)sha;
    return 0;
}

/* A snapshot's manifest entry lines, through the core's tar writer with no blobs. */
static ctarget_status read_manifest(shipper *sp, const char *id, rv_buf *out, ctarget_error *err)
{
    tfilter f = {0};
    f.err = err;
    tctx x = {&f, NULL};
    ctarget_status rc = sp->h->snapshot_write_tar(sp->c, id, no_blobs, NULL, 0, filter_write,
                                                  &x, err);
    rv_buf_free(&f.pax);
    if (!f.replaced && !f.manifest.len) {
        rv_buf_free(&f.manifest);
        if (rc == CTARGET_OK)
            sp->h->error_set(err, CTARGET_E_INTERNAL, 0, 0, "snapshot %s has no manifest", id);
        return rc == CTARGET_OK ? CTARGET_E_INTERNAL : rc;
    }
    /* drop the header line: entry lines only */
    char *nl = memchr(f.manifest.data, '\n', f.manifest.len);
    size_t skip = nl ? (size_t)(nl - f.manifest.data) + 1 : f.manifest.len;
    rv_buf_add(out, f.manifest.data + skip, f.manifest.len - skip);
    rv_buf_free(&f.manifest);
    return CTARGET_OK;
}

typedef struct recv_arg {
    shipper *sp;
    int use_base;
} recv_arg;

typedef struct producer {
    shipper *sp;
    tfilter f;
    tctx x;
    ctarget_status rc;
    ctarget_error err;
} producer;

static void *produce_thread(void *arg)
{
    producer *pr = arg;
    pqueue *q = pr->f.q;
    /* no ctarget_call here: a call belongs to one thread (the sender's); writing the tar
     * needs none */
    pr->rc = pr->sp->h->snapshot_write_tar(NULL, pr->sp->id, want_missing, pr->sp, 0,
                                           filter_write, &pr->x, &pr->err);
    if (pr->rc == CTARGET_OK && pr->f.rc == CTARGET_OK)
        flush_out(&pr->f);
    if (pr->f.rc != CTARGET_OK && pr->rc == CTARGET_OK)
        pr->rc = pr->f.rc;
    pthread_mutex_lock(&q->mu);
    q->done = 1;
    pthread_cond_broadcast(&q->cv);
    pthread_mutex_unlock(&q->mu);
    return NULL;
}

static ctarget_status produce_tar(void *arg, rv_exec *ex, ctarget_error *err)
{
    recv_arg *ra = arg;
    shipper *sp = ra->sp;
    pqueue q;
    memset(&q, 0, sizeof q);
    pthread_mutex_init(&q.mu, NULL);
    pthread_cond_init(&q.cv, NULL);
    producer *pr = calloc(1, sizeof *pr);
    char *bufs = malloc((size_t)(NPIECES + 1) * OUTBUF);
    if (!pr || !bufs) {
        free(pr);
        free(bufs);
        sp->h->error_set(err, CTARGET_E_NOMEM, 0, 0, "out of memory");
        return CTARGET_E_NOMEM;
    }
    for (int i = 0; i < NPIECES; i++)
        q.spare[q.nspare++] = bufs + (size_t)i * OUTBUF;
    pr->sp = sp;
    pr->err.struct_size = sizeof pr->err;
    pr->f.q = &q;
    pr->f.err = &pr->err;
    pr->f.rc = CTARGET_OK;
    pr->f.base = ra->use_base ? &sp->base : NULL;
    pr->f.obuf = bufs + (size_t)NPIECES * OUTBUF;
    pr->x.f = &pr->f;
    pr->x.sp = sp;
    ctarget_status rc = CTARGET_OK;
    pthread_t th;
    if (pthread_create(&th, NULL, produce_thread, pr) != 0) {
        sp->h->error_set(err, CTARGET_E_INTERNAL, 0, 0, "cannot start a thread");
        rc = CTARGET_E_INTERNAL;
    } else {
        for (;;) {
            pthread_mutex_lock(&q.mu);
            while (!q.count && !q.done)
                pthread_cond_wait(&q.cv, &q.mu);
            if (!q.count) {
                pthread_mutex_unlock(&q.mu);
                break;
            }
            char *piece = q.piece[q.head];
            size_t len = q.len[q.head];
            pthread_mutex_unlock(&q.mu);
            rc = rv_exec_write(ex, piece, len, err);
            pthread_mutex_lock(&q.mu);
            q.head = (q.head + 1) % NPIECES;
            q.count--;
            q.spare[q.nspare++] = piece;
            if (rc != CTARGET_OK)
                q.failed = 1;
            pthread_cond_broadcast(&q.cv);
            pthread_mutex_unlock(&q.mu);
            if (rc != CTARGET_OK)
                break;
        }
        pthread_join(th, NULL);
        if (rc == CTARGET_OK && pr->rc != CTARGET_OK) {
            rc = pr->rc;
            sp->h->error_set(err, pr->err.code ? pr->err.code : rc, pr->err.transient,
                             pr->err.sys_errno, "%s", pr->err.message);
        }
    }
    sp->st->stream_bytes = pr->f.sent;
    sp->st->manifest_bytes = pr->f.manifest_bytes;
    sp->st->delta = pr->f.delta;
    rv_buf_free(&pr->f.pax);
    rv_buf_free(&pr->f.manifest);
    free(bufs);
    free(pr);
    pthread_mutex_destroy(&q.mu);
    pthread_cond_destroy(&q.cv);
    return rc;
}

/* Ask which of the listed blobs the VM lacks. */
static ctarget_status ask_missing(shipper *sp, ctarget_target *t, const blobs *all,
                                  const blobs *known, int empty, rv_ship_stats *st,
                                  ctarget_error *err)
{
    rv_buf q = {0}, out = {0};
    char line[100];
    if (empty) {
        /* the VM's cache is empty: everything is missing, no need to ask (a round trip,
         * and 10,000 names checked there) */
        sset_free(&sp->missing);
        st->blobs = st->blob_bytes = 0;
        for (size_t i = 0; i < all->n; i++) {
            if (sset_add(&sp->missing, all->shas + i * 65, 64) != 0)
                break;
            st->blobs++;
            st->blob_bytes += all->sizes[i];
        }
        return CTARGET_OK;
    }
    for (size_t i = 0; i < all->n; i++) {
        const char *sha = all->shas + i * 65;
        if (known && sset_has(&known->set, sha, 64))
            continue;
        snprintf(line, sizeof line, "%s %llu\n", sha, (unsigned long long)all->sizes[i]);
        rv_buf_adds(&q, line);
    }
    ctarget_status rc = CTARGET_OK;
    sset_free(&sp->missing);
    st->blobs = st->blob_bytes = 0;
    if (q.len)
        rc = rv_agent(sp->h, sp->c, t, "missing", NULL, q.data, q.len, &out, NULL, err);
    rv_buf_free(&q);
    if (rc != CTARGET_OK) {
        rv_buf_free(&out);
        return rc;
    }
    for (size_t i = 0; i + 64 <= out.len; i += 65) {
        if (sset_add(&sp->missing, out.data + i, 64) != 0)
            break;
    }
    for (size_t i = 0; i < all->n; i++)
        if (sset_has(&sp->missing, all->shas + i * 65, 64)) {
            st->blobs++;
            st->blob_bytes += all->sizes[i];
        }
    rv_buf_free(&sp->answer);
    sp->answer = out;
    return CTARGET_OK;
}

ctarget_status rv_ship_snapshot(const ctarget_host *h, ctarget_call *c, ctarget_target *t,
                                const char *id, const char *run_id, rv_ship_stats *st,
                                ctarget_error *err)
{
    memset(st, 0, sizeof *st);
    shipper sp = {.h = h, .c = c, .id = id, .st = st};
    rv_buf out = {0};
    const char *args[] = {id, NULL};
    ctarget_status rc = rv_agent(h, c, t, "begin", args, NULL, 0, &out, NULL, err);
    json_t *j = NULL;
    blobs now = {0}, base = {0};
    if (rc == CTARGET_OK) {
        j = json_loadb(out.data ? out.data : "", out.len, 0, NULL);
        if (!json_is_object(j)) {
            h->error_set(err, CTARGET_E_REMOTE, 0, 0, "the agent answered garbage to 'begin'");
            rc = CTARGET_E_REMOTE;
        }
    }
    if (rc != CTARGET_OK || json_is_true(json_object_get(j, "have")))
        goto done;
    h->progress(c, "listing blobs", 0, 0);
    rc = h->snapshot_blobs(c, id, blob_cb, &now, err);
    if (rc != CTARGET_OK)
        goto done;
    blobs_index(&now);
    /* the base: the newest snapshot the VM has that this workspace still knows */
    json_t *recent = json_object_get(j, "recent");
    size_t i;
    json_t *r;
    json_array_foreach(recent, i, r) {
        const char *bid = json_string_value(r);
        if (!bid || strlen(bid) != 64)
            continue;
        ctarget_error e2;
        memset(&e2, 0, sizeof e2);
        e2.struct_size = sizeof e2;
        blobs b = {0};
        if (h->snapshot_blobs(c, bid, blob_cb, &b, &e2) != CTARGET_OK) {
            blobs_free(&b);
            continue;
        }
        rv_buf text = {0};
        if (read_manifest(&sp, bid, &text, &e2) != CTARGET_OK) {
            blobs_free(&b);
            rv_buf_free(&text);
            continue;
        }
        base = b;
        blobs_index(&base);
        sp.base = text;
        sp.base_id = bid;
        break;
    }
    for (int attempt = 0; attempt < 2; attempt++) {
        int use_base = sp.base_id && attempt == 0;
        rc = ask_missing(&sp, t, &now, use_base ? &base : NULL,
                         attempt == 0 && json_is_true(json_object_get(j, "empty")), st, err);
        if (rc != CTARGET_OK)
            break;
        h->progress(c, "shipping", 0, st->blob_bytes);
        recv_arg ra = {&sp, use_base};
        int status = 0;
        rv_buf rout = {0};
        const char *rargs[] = {id, run_id, NULL};
        rc = rv_agent_stream(h, c, t, "receive", rargs, produce_tar, &ra, &rout, &status, err);
        rv_buf_free(&rout);
        /* 4: blobs the base referenced are gone; 3 with a delta: it did not rebuild the
         * snapshot.  Both are answered by sending everything that is missing. */
        if (rc != CTARGET_OK && use_base && (status == 4 || status == 3)) {
            h->log(c, CTARGET_LOG_INFO, "the incremental upload was refused (%s); sending the "
                                        "full manifest", err->message);
            continue;
        }
        break;
    }
done:
    json_decref(j);
    rv_buf_free(&out);
    rv_buf_free(&sp.base);
    rv_buf_free(&sp.answer);
    sset_free(&sp.missing);
    blobs_free(&now);
    blobs_free(&base);
    return rc;
}
