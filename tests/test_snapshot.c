/* Snapshots: the real ctarget command on real trees, plus white-box checks of the engine. */
#define _GNU_SOURCE
#include "testlib.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "blobstore.h"
#include "snapshot.h"
#include "util.h"

/* ---- helpers ------------------------------------------------------------------------------ */

static char *mkpath(const char *dir, const char *rel)
{
    char *p = tl_path(dir, rel);
    /* create parents */
    for (char *s = strchr(p + strlen(dir) + 1, '/'); s; s = strchr(s + 1, '/')) {
        *s = '\0';
        mkdir(p, 0755);
        *s = '/';
    }
    return p;
}

static void put(const char *dir, const char *rel, const char *content, mode_t mode)
{
    char *p = mkpath(dir, rel);
    CU_ASSERT_EQUAL_FATAL(tl_write_file(p, content), 0);
    chmod(p, mode);
    free(p);
}

/* n bytes of a repeated byte */
static void put_size(const char *dir, const char *rel, size_t n, char fill)
{
    char *buf = malloc(n + 1);
    memset(buf, fill, n);
    buf[n] = '\0';
    put(dir, rel, buf, 0644);
    free(buf);
}

static struct timespec old_time;

static int set_old(const char *p, const struct stat *st, int flag, struct FTW *f)
{
    (void)st, (void)flag, (void)f;
    struct timespec ts[2] = {old_time, old_time};
    utimensat(AT_FDCWD, p, ts, AT_SYMLINK_NOFOLLOW);
    return 0;
}

/* Give every entry under dir the same old mtime (seconds since the epoch): the stat cache
 * keeps only entries safely older than the snapshot. */
static void age_tree(const char *dir, time_t when)
{
    old_time.tv_sec = when;
    old_time.tv_nsec = 0;
    nftw(dir, set_old, 16, FTW_PHYS);
}

/* ctarget --workspace ws snapshot ARGS... --output json */
#define SNAP(ws, ...) \
    tl_ctarget_run((ws), NULL, NULL, (const char *const[]){"snapshot", __VA_ARGS__, NULL})
#define SNAP_ENV(ws, env, ...) \
    tl_ctarget_run((ws), NULL, (env), (const char *const[]){"snapshot", __VA_ARGS__, NULL})

/* Create a snapshot and return its JSON (exit status must be 0). */
static json_t *create_ok(const char *ws, const char *dir)
{
    tl_result r = SNAP(ws, "create", dir, "--output", "json");
    TL_ASSERT_EXIT(r, 0);
    json_t *j = r.status == 0 ? tl_json(&r) : NULL;
    tl_result_free(&r);
    return j;
}

static const char *jstr(json_t *j, const char *key)
{
    const char *s = json_string_value(json_object_get(j, key));
    return s ? s : "";
}

static long long jint(json_t *j, const char *key)
{
    return (long long)json_integer_value(json_object_get(j, key));
}

/* The entry for path in `snapshot show` JSON, or NULL. */
static json_t *show_entry(json_t *show, const char *path)
{
    size_t i;
    json_t *f;
    json_array_foreach(json_object_get(show, "files"), i, f)
        if (!strcmp(jstr(f, "path"), path))
            return f;
    return NULL;
}

static json_t *show(const char *ws, const char *id)
{
    tl_result r = SNAP(ws, "show", id, "--output", "json");
    TL_ASSERT_EXIT(r, 0);
    json_t *j = r.status == 0 ? tl_json(&r) : NULL;
    tl_result_free(&r);
    return j;
}

static int count_blobs_cb(void *arg, const char *sha, uint64_t size, const char *path)
{
    (void)size, (void)path;
    if (sha)
        ++*(int *)arg;
    return 0;
}

static int count_blobs(const char *ws)
{
    char *root = blob_root_for_ws(ws);
    int n = 0;
    blob_foreach(root, count_blobs_cb, &n, NULL);
    free(root);
    return n;
}

/* The workspace's stat cache file (listing 0) or listing cache file (listing 1) of the one
 * source snapshotted there, or NULL. */
static char *cache_path(const char *ws, int listing)
{
    char *dir = tl_path(ws, "statcache"), *file = NULL;
    DIR *d = opendir(dir);
    struct dirent *de;
    while (d && (de = readdir(d)))
        if (de->d_name[0] != '.' && !strstr(de->d_name, ".dirs") == !listing) {
            free(file);
            file = tl_path(dir, de->d_name);
        }
    if (d)
        closedir(d);
    free(dir);
    return file;
}

/* ---- identity ----------------------------------------------------------------------------- */

/* The manifest is exactly plugin.h's format and the id is the sha256 of its entry lines. */
static void t_manifest_format_and_id(void)
{
    char *ws = tl_tmpdir("ws"), *src = tl_tmpdir("src");
    put(src, "a.txt", "hi\n", 0644);
    char *d = tl_path(src, "d");
    mkdir(d, 0755);
    chmod(d, 0755);
    char *l = tl_path(src, "l");
    CU_ASSERT_EQUAL(symlink("a.txt", l), 0);
    json_t *j = create_ok(ws, src);
    char hi[65];
    blob_sha256_hex("hi\n", 3, hi);
    char *expect;
    CU_ASSERT(asprintf(&expect,
                       "{\"path\": \"a.txt\", \"type\": \"file\", \"mode\": 420, \"size\": 3, "
                       "\"sha256\": \"%s\"}\n"
                       "{\"path\": \"d\", \"type\": \"dir\", \"mode\": 493}\n"
                       "{\"path\": \"l\", \"type\": \"symlink\", \"target\": \"a.txt\"}\n",
                       hi) > 0);
    char id[65];
    blob_sha256_hex(expect, strlen(expect), id);
    CU_ASSERT_STRING_EQUAL(jstr(j, "id"), id);
    /* the manifest blob is stored under the id */
    char *root = blob_root_for_ws(ws), *mp = blob_path(root, id);
    char *stored = tl_read_file(mp);
    CU_ASSERT_PTR_NOT_NULL(stored);
    if (stored)
        CU_ASSERT_STRING_EQUAL(stored, expect);
    CU_ASSERT_EQUAL(jint(j, "files"), 2);
    CU_ASSERT_EQUAL(jint(j, "bytes"), 3);
    CU_ASSERT(json_is_null(json_object_get(j, "parent")));
    free(stored), free(mp), free(root), free(expect), free(l), free(d);
    json_decref(j);
    free(ws), free(src);
}

/* Same tree -> same id: other mtimes, other creation order, another directory, repeated. */
static void t_same_tree_same_id(void)
{
    char *ws = tl_tmpdir("ws"), *a = tl_tmpdir("a"), *b = tl_tmpdir("b");
    static const char *const names[] = {"z.py", "m/x.txt", "m/n/y.txt", "a.py", "b/c/d.txt"};
    for (size_t i = 0; i < 5; i++)
        put(a, names[i], names[i], 0644);
    for (size_t i = 5; i-- > 0;)
        put(b, names[i], names[i], 0644);
    age_tree(a, 1000000000);
    age_tree(b, 1500000000);
    json_t *ja = create_ok(ws, a), *ja2 = create_ok(ws, a), *jb = create_ok(ws, b);
    CU_ASSERT_EQUAL(strlen(jstr(ja, "id")), 64);
    CU_ASSERT_STRING_EQUAL(jstr(ja, "id"), jstr(ja2, "id"));
    CU_ASSERT_STRING_EQUAL(jstr(ja, "id"), jstr(jb, "id"));
    CU_ASSERT_EQUAL(jint(ja, "files"), 5);
    CU_ASSERT_EQUAL(jint(ja, "dirs"), 4);
    json_decref(ja), json_decref(ja2), json_decref(jb);
    free(ws), free(a), free(b);
}

/* A content change gives a new id whose parent is the previous snapshot, and new_bytes is
 * exactly the changed file's new size. */
static void t_change_new_id_parent_new_bytes(void)
{
    char *ws = tl_tmpdir("ws"), *src = tl_tmpdir("src");
    put_size(src, "big.bin", 100000, 'a');
    put_size(src, "other.bin", 50000, 'b');
    put(src, "dup1.txt", "same content", 0644);
    put(src, "dup2.txt", "same content", 0644);
    json_t *j1 = create_ok(ws, src);
    /* identical files are stored once */
    CU_ASSERT_EQUAL(jint(j1, "new_bytes"), 100000 + 50000 + 12);
    put_size(src, "big.bin", 123457, 'c');
    json_t *j2 = create_ok(ws, src);
    CU_ASSERT_STRING_NOT_EQUAL(jstr(j1, "id"), jstr(j2, "id"));
    CU_ASSERT_STRING_EQUAL(jstr(j2, "parent"), jstr(j1, "id"));
    CU_ASSERT_EQUAL(jint(j2, "new_bytes"), 123457);
    /* list shows both, with the parent link */
    tl_result r = SNAP(ws, "list", "--output", "json");
    TL_ASSERT_EXIT(r, 0);
    json_t *l = tl_json(&r);
    CU_ASSERT_EQUAL(json_array_size(l), 2);
    CU_ASSERT_STRING_EQUAL(jstr(json_array_get(l, 1), "parent"), jstr(j1, "id"));
    json_decref(l);
    tl_result_free(&r);
    json_decref(j1), json_decref(j2);
    free(ws), free(src);
}

/* ---- stat cache --------------------------------------------------------------------------- */

static void t_stat_cache_reads_nothing_unchanged(void)
{
    char *ws = tl_tmpdir("ws"), *src = tl_tmpdir("src");
    char name[32];
    for (int i = 0; i < 20; i++) {
        snprintf(name, sizeof name, "d%d/f%d.txt", i % 3, i);
        put(src, name, name, 0644);
    }
    age_tree(src, 1600000000);
    json_t *j1 = create_ok(ws, src), *j2 = create_ok(ws, src);
    CU_ASSERT_EQUAL(jint(j1, "hashed_files"), 20);
    CU_ASSERT_EQUAL(jint(j2, "hashed_files"), 0);
    CU_ASSERT_EQUAL(jint(j2, "new_bytes"), 0);
    CU_ASSERT_STRING_EQUAL(jstr(j1, "id"), jstr(j2, "id"));
    /* same size, same (old) mtime, other content: ctime and inode give it away */
    char *p = tl_path(src, "d0/f0.txt");
    unlink(p);
    put(src, "d0/f0.txt", "d0/f0.TXT", 0644);
    struct timespec old[2] = {{1600000000, 0}, {1600000000, 0}};
    CU_ASSERT_EQUAL(utimensat(AT_FDCWD, p, old, 0), 0); /* only this file: utimes sets ctime */
    json_t *j3 = create_ok(ws, src);
    CU_ASSERT_EQUAL(jint(j3, "hashed_files"), 1);
    CU_ASSERT_STRING_NOT_EQUAL(jstr(j3, "id"), jstr(j2, "id"));
    /* a file whose mtime is not safely before the snapshot is racily clean: hashed again by
     * the next snapshot too (a future mtime makes that independent of timing) */
    put(src, "fresh.txt", "fresh", 0644);
    char *fresh = tl_path(src, "fresh.txt");
    struct timespec future[2] = {{time(NULL) + 3600, 0}, {time(NULL) + 3600, 0}};
    CU_ASSERT_EQUAL(utimensat(AT_FDCWD, fresh, future, 0), 0);
    free(fresh);
    json_t *j4 = create_ok(ws, src), *j5 = create_ok(ws, src);
    CU_ASSERT_EQUAL(jint(j4, "hashed_files"), 1);
    CU_ASSERT_EQUAL(jint(j5, "hashed_files"), 1);
    CU_ASSERT_STRING_EQUAL(jstr(j4, "id"), jstr(j5, "id"));
    /* a blob removed from the store (gc, by hand) is read and stored again */
    json_t *s = show(ws, jstr(j5, "id"));
    char *root = blob_root_for_ws(ws);
    char *bp = blob_path(root, jstr(show_entry(s, "d1/f1.txt"), "sha256"));
    CU_ASSERT_EQUAL(unlink(bp), 0);
    json_t *j6 = create_ok(ws, src);
    CU_ASSERT_EQUAL(access(bp, F_OK), 0);
    CU_ASSERT_EQUAL(jint(j6, "new_bytes"), (long long)strlen("d1/f1.txt"));
    free(bp), free(root), free(p);
    json_decref(s), json_decref(j1), json_decref(j2), json_decref(j3), json_decref(j4);
    json_decref(j5), json_decref(j6);
    free(ws), free(src);
}

/* The stat cache does not look at every cached blob: only at those in blob store directories
 * whose stamp changed since it was written.  Whether a stamp is older than the racy margin
 * (1 s) is set by construction, not by sleeping: CTARGET_TEST_CLOCK_SHIFT_S moves the clock
 * that decision reads an hour back (every stamp is young) or two seconds on (every stamp
 * is old). */
#define CLOCK_YOUNG "CTARGET_TEST_CLOCK_SHIFT_S=-3600"
#define CLOCK_OLD "CTARGET_TEST_CLOCK_SHIFT_S=2"
static long long blobs_checked(const char *ws, const char *src, const char *clock, json_t **out)
{
    const char *const env[] = {clock, NULL};
    tl_result r = SNAP_ENV(ws, env, "create", src, "--output", "json", "-v", "-v");
    TL_ASSERT_EXIT(r, 0);
    const char *m = strstr(r.err ? r.err : "", "stat cache ");
    const char *p = m ? strstr(m, " ms (") : NULL;
    long long n = p ? strtoll(p + 5, NULL, 10) : -1;
    *out = r.status == 0 ? tl_json(&r) : NULL;
    tl_result_free(&r);
    return n;
}

static void t_stat_cache_checks_blobs_only_where_the_store_changed(void)
{
    char *ws = tl_tmpdir("ws"), *src = tl_tmpdir("src");
    char name[32];
    for (int i = 0; i < 40; i++) {
        snprintf(name, sizeof name, "d%d/f%d.txt", i % 4, i);
        put(src, name, name, 0644);
    }
    age_tree(src, 1600000000);
    json_t *j1, *j2, *j3, *j4, *j5;
    /* cold: nothing cached; the blob directories just written are too young to trust */
    CU_ASSERT_EQUAL(blobs_checked(ws, src, CLOCK_YOUNG, &j1), 0);
    CU_ASSERT_EQUAL(jint(j1, "hashed_files"), 40);
    CU_ASSERT_EQUAL(blobs_checked(ws, src, CLOCK_YOUNG, &j2), 40);
    /* every cached blob looked at once more, then their directories are trusted */
    CU_ASSERT_EQUAL(blobs_checked(ws, src, CLOCK_OLD, &j3), 40);
    CU_ASSERT_EQUAL(blobs_checked(ws, src, CLOCK_OLD, &j4), 0);
    CU_ASSERT_EQUAL(jint(j4, "hashed_files"), 0);
    CU_ASSERT_STRING_EQUAL(jstr(j1, "id"), jstr(j4, "id"));
    /* a blob removed by hand changes its directory: that directory's blobs are looked at,
     * the missing one is noticed and its file read and stored again */
    json_t *s = show(ws, jstr(j4, "id"));
    char *root = blob_root_for_ws(ws);
    char *bp = blob_path(root, jstr(show_entry(s, "d2/f6.txt"), "sha256"));
    CU_ASSERT_EQUAL(unlink(bp), 0);
    long long checked = blobs_checked(ws, src, CLOCK_OLD, &j5);
    CU_ASSERT(checked >= 1 && checked < 40);
    CU_ASSERT_EQUAL(jint(j5, "hashed_files"), 1);
    CU_ASSERT_EQUAL(jint(j5, "new_bytes"), (long long)strlen("d2/f6.txt"));
    CU_ASSERT_EQUAL(access(bp, F_OK), 0);
    CU_ASSERT_STRING_EQUAL(jstr(j1, "id"), jstr(j5, "id"));
    free(bp), free(root);
    json_decref(s), json_decref(j1), json_decref(j2), json_decref(j3), json_decref(j4);
    json_decref(j5);
    free(ws), free(src);
}

/* With every file vouched for by the stat cache, the manifest recorded with the cache is
 * reused; anything else the manifest says (directories, their modes, symlinks, files
 * added or removed) must still give another id, and going back the first one. */
static void t_unchanged_tree_reuses_manifest_only_when_identical(void)
{
    char *ws = tl_tmpdir("ws"), *src = tl_tmpdir("src");
    put(src, "a/one.txt", "one", 0644);
    put(src, "b/two.txt", "two", 0644);
    char *a = tl_path(src, "a"), *link = tl_path(src, "a/link"), *empty = tl_path(src, "c");
    CU_ASSERT_EQUAL(symlink("one.txt", link), 0);
    age_tree(src, 1600000000);
    json_t *j0 = create_ok(ws, src), *j1 = create_ok(ws, src);
    const char *id = jstr(j0, "id");
    CU_ASSERT_STRING_EQUAL(jstr(j1, "id"), id);
    CU_ASSERT_EQUAL(jint(j1, "hashed_files"), 0);
    CU_ASSERT_EQUAL(jint(j1, "manifest_bytes"), jint(j0, "manifest_bytes"));
    /* each change alone, then undone */
    json_t *j;
    CU_ASSERT_EQUAL(chmod(a, 0700), 0);
    j = create_ok(ws, src);
    CU_ASSERT_STRING_NOT_EQUAL(jstr(j, "id"), id);
    json_decref(j);
    CU_ASSERT_EQUAL(chmod(a, 0755), 0);
    j = create_ok(ws, src);
    CU_ASSERT_STRING_EQUAL(jstr(j, "id"), id);
    json_decref(j);
    CU_ASSERT_EQUAL(unlink(link), 0);
    CU_ASSERT_EQUAL(symlink("../b/two.txt", link), 0);
    j = create_ok(ws, src);
    CU_ASSERT_STRING_NOT_EQUAL(jstr(j, "id"), id);
    json_decref(j);
    CU_ASSERT_EQUAL(unlink(link), 0);
    CU_ASSERT_EQUAL(symlink("one.txt", link), 0);
    j = create_ok(ws, src);
    CU_ASSERT_STRING_EQUAL(jstr(j, "id"), id);
    json_decref(j);
    CU_ASSERT_EQUAL(mkdir(empty, 0755), 0);
    j = create_ok(ws, src);
    CU_ASSERT_STRING_NOT_EQUAL(jstr(j, "id"), id);
    json_decref(j);
    CU_ASSERT_EQUAL(rmdir(empty), 0);
    j = create_ok(ws, src);
    CU_ASSERT_STRING_EQUAL(jstr(j, "id"), id);
    json_decref(j);
    /* a file gone: fewer files than cached entries */
    char *two = tl_path(src, "b/two.txt");
    CU_ASSERT_EQUAL(rename(two, empty), 0);
    j = create_ok(ws, src);
    CU_ASSERT_STRING_NOT_EQUAL(jstr(j, "id"), id);
    json_decref(j);
    CU_ASSERT_EQUAL(rename(empty, two), 0);
    j = create_ok(ws, src);
    CU_ASSERT_STRING_EQUAL(jstr(j, "id"), id);
    json_decref(j);
    free(two), free(a), free(link), free(empty);
    json_decref(j0), json_decref(j1);
    free(ws), free(src);
}

/* The stat cache is a file in the workspace: one cut short or overwritten is not used (every
 * file is read again), never trusted in part, and the snapshot is the same. */
static void t_damaged_stat_cache_is_not_used(void)
{
    char *ws = tl_tmpdir("ws"), *src = tl_tmpdir("src");
    char name[32];
    for (int i = 0; i < 10; i++) {
        snprintf(name, sizeof name, "d%d/f%d.txt", i % 2, i);
        put(src, name, name, 0644);
    }
    age_tree(src, 1600000000);
    json_t *j1 = create_ok(ws, src), *j2 = create_ok(ws, src);
    CU_ASSERT_EQUAL(jint(j2, "hashed_files"), 0);
    char *file = cache_path(ws, 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(file);
    struct stat st;
    CU_ASSERT_EQUAL(stat(file, &st), 0);
    CU_ASSERT_EQUAL(st.st_mode & 0777, 0600);
    /* cut short, then every byte after the header's first 8 turned to garbage */
    for (int round = 0; round < 2; round++) {
        if (round == 0) {
            CU_ASSERT_EQUAL(truncate(file, st.st_size / 2), 0);
        } else {
            int fd = open(file, O_RDWR);
            CU_ASSERT_FATAL(fd >= 0);
            char junk[4096];
            memset(junk, 0x5a, sizeof junk);
            for (off_t off = 8; off < st.st_size; off += (off_t)sizeof junk)
                CU_ASSERT(pwrite(fd, junk, sizeof junk, off) > 0);
            close(fd);
        }
        json_t *j = create_ok(ws, src);
        CU_ASSERT_EQUAL(jint(j, "hashed_files"), 10);
        CU_ASSERT_STRING_EQUAL(jstr(j, "id"), jstr(j1, "id"));
        json_decref(j);
        CU_ASSERT_EQUAL(stat(file, &st), 0); /* written again whole */
    }
    free(file);
    json_decref(j1), json_decref(j2);
    free(ws), free(src);
}

/* A tree of files only (no directory, no symlink: nothing in its shape) is recognised as
 * unchanged too. */
static void t_flat_tree_reuses_manifest(void)
{
    char *ws = tl_tmpdir("ws"), *src = tl_tmpdir("src");
    put(src, "a.py", "a", 0644);
    put(src, "b.py", "b", 0644);
    age_tree(src, 1600000000);
    json_t *j1 = create_ok(ws, src), *j2 = create_ok(ws, src), *j3 = create_ok(ws, src);
    CU_ASSERT_EQUAL(jint(j1, "hashed_files"), 2);
    CU_ASSERT_EQUAL(jint(j3, "hashed_files"), 0);
    CU_ASSERT_STRING_EQUAL(jstr(j1, "id"), jstr(j2, "id"));
    CU_ASSERT_STRING_EQUAL(jstr(j1, "id"), jstr(j3, "id"));
    CU_ASSERT_EQUAL(jint(j3, "manifest_bytes"), jint(j1, "manifest_bytes"));
    json_decref(j1), json_decref(j2), json_decref(j3);
    free(ws), free(src);
}

/* The walk adds entries in byte order of their paths without sorting: names that sort
 * before '/' ("a b", "a-b", "a.d", "a.txt") go between directory a's own entry and its
 * contents, nested directories included. */
static void t_walk_order_is_path_order(void)
{
    char *ws = tl_tmpdir("ws"), *src = tl_tmpdir("src");
    const char *files[] = {"a/x", "a/y/z", "a b", "a-b/c", "a.d/e", "a.d/e.f/g", "a.txt",
                           "a0", "a/y.z", "a/y-z/w", "b", "A", "~", "a.d.x/q"};
    for (size_t i = 0; i < CT_ARRAY_LEN(files); i++)
        put(src, files[i], files[i], 0644);
    tl_result r = SNAP(ws, "create", src, "--output", "json", "-v", "-v");
    TL_ASSERT_EXIT(r, 0);
    CU_ASSERT(!tl_contains(r.err, "sorting"));
    json_t *j = tl_json(&r);
    json_t *s = show(ws, jstr(j, "id"));
    json_t *all = json_object_get(s, "files");
    size_t i;
    json_t *f;
    const char *prev = NULL;
    json_array_foreach(all, i, f) {
        const char *p = jstr(f, "path");
        if (prev)
            CU_ASSERT(strcmp(prev, p) < 0);
        prev = p;
    }
    CU_ASSERT_EQUAL(json_array_size(all), CT_ARRAY_LEN(files) + 7); /* + 7 directories */
    json_decref(s), json_decref(j);
    tl_result_free(&r);
    free(ws), free(src);
}

/* ---- limits ------------------------------------------------------------------------------- */

static void t_limit_files(void)
{
    char *ws = tl_tmpdir("ws"), *src = tl_tmpdir("src");
    char name[64];
    for (int i = 0; i < 30; i++) {
        snprintf(name, sizeof name, "node_modules/pkg%d.js", i);
        put(src, name, "x", 0644);
    }
    put(src, "train.py", "print(1)\n", 0644);
    tl_result r = SNAP(ws, "create", src, "--max-files", "10");
    TL_ASSERT_EXIT(r, 17);
    CU_ASSERT(tl_contains(r.err, "31 files (limit 10)"));
    CU_ASSERT(tl_contains(r.err, "node_modules/ (30 B in 30 files)"));
    CU_ASSERT(tl_contains(r.err, ".gitignore"));
    CU_ASSERT(tl_contains(r.err, "CTARGET_SNAPSHOT_MAX_FILES"));
    CU_ASSERT_EQUAL(count_blobs(ws), 0); /* failed before anything was stored */
    tl_result_free(&r);
    /* the environment sets the limit; an explicit option wins over it */
    const char *const env10[] = {"CTARGET_SNAPSHOT_MAX_FILES=10", NULL};
    r = SNAP_ENV(ws, env10, "create", src);
    TL_ASSERT_EXIT(r, 17);
    tl_result_free(&r);
    r = SNAP_ENV(ws, env10, "create", src, "--max-files", "31");
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    const char *const envbad[] = {"CTARGET_SNAPSHOT_MAX_FILES=lots", NULL};
    r = SNAP_ENV(ws, envbad, "create", src);
    TL_ASSERT_EXIT(r, 3);
    CU_ASSERT(tl_contains(r.err, "CTARGET_SNAPSHOT_MAX_FILES='lots'"));
    tl_result_free(&r);
    r = SNAP(ws, "create", src, "--max-files", "-1");
    TL_ASSERT_EXIT(r, 2);
    tl_result_free(&r);
    free(ws), free(src);
}

static void t_limit_bytes(void)
{
    char *ws = tl_tmpdir("ws"), *src = tl_tmpdir("src");
    put_size(src, "data/big.bin", 300 * 1024, 'x');
    put_size(src, "data/mid.bin", 50 * 1024, 'y');
    put(src, "train.py", "print(1)\n", 0644);
    tl_result r = SNAP(ws, "create", src, "--max-bytes", "100K");
    TL_ASSERT_EXIT(r, 17);
    CU_ASSERT(tl_contains(r.err, "(limit 100.0 KB)"));
    CU_ASSERT(tl_contains(r.err, "data/big.bin (300.0 KB)"));
    CU_ASSERT(tl_contains(r.err, "data/ (350.0 KB in 2 files)"));
    CU_ASSERT(tl_contains(r.err, "CTARGET_SNAPSHOT_MAX_BYTES"));
    CU_ASSERT(tl_contains(r.err, "`data/`"));
    CU_ASSERT_EQUAL(count_blobs(ws), 0);
    tl_result_free(&r);
    const char *const env[] = {"CTARGET_SNAPSHOT_MAX_BYTES=100K", NULL};
    r = SNAP_ENV(ws, env, "create", src);
    TL_ASSERT_EXIT(r, 17);
    tl_result_free(&r);
    const char *const env_ok[] = {"CTARGET_SNAPSHOT_MAX_BYTES=1M", NULL};
    r = SNAP_ENV(ws, env_ok, "create", src);
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    const char *const env_bad[] = {"CTARGET_SNAPSHOT_MAX_BYTES=12X", NULL};
    r = SNAP_ENV(ws, env_bad, "create", src);
    TL_ASSERT_EXIT(r, 3);
    CU_ASSERT(tl_contains(r.err, "CTARGET_SNAPSHOT_MAX_BYTES"));
    tl_result_free(&r);
    free(ws), free(src);
}

/* ---- odd files ---------------------------------------------------------------------------- */

static void t_symlinks_and_fifo(void)
{
    char *ws = tl_tmpdir("ws"), *src = tl_tmpdir("src"), *outside = tl_tmpdir("outside");
    put(src, "sub/x.txt", "x", 0644);
    put(outside, "secret.txt", "outside content", 0644);
    char *l_in = tl_path(src, "to_x"), *l_dir = tl_path(src, "to_sub"),
         *l_out = tl_path(src, "to_outside"), *l_up = tl_path(src, "sub/up"),
         *fifo = tl_path(src, "pipe");
    char *outdir_target = tl_path(outside, "secret.txt");
    CU_ASSERT_EQUAL(symlink("sub/x.txt", l_in), 0);
    CU_ASSERT_EQUAL(symlink("sub", l_dir), 0);
    CU_ASSERT_EQUAL(symlink(outdir_target, l_out), 0);
    CU_ASSERT_EQUAL(symlink("../../elsewhere", l_up), 0);
    CU_ASSERT_EQUAL(mkfifo(fifo, 0644), 0);
    tl_result r = SNAP(ws, "create", src, "--output", "json");
    TL_ASSERT_EXIT(r, 0);
    CU_ASSERT(tl_contains(r.err, "symlink to_outside points outside"));
    CU_ASSERT(tl_contains(r.err, "symlink sub/up points outside"));
    CU_ASSERT(!tl_contains(r.err, "to_x"));
    CU_ASSERT(tl_contains(r.err, "skipping pipe: a FIFO"));
    json_t *j = tl_json(&r);
    json_t *s = show(ws, jstr(j, "id"));
    CU_ASSERT_STRING_EQUAL(jstr(show_entry(s, "to_x"), "type"), "symlink");
    CU_ASSERT_STRING_EQUAL(jstr(show_entry(s, "to_x"), "target"), "sub/x.txt");
    CU_ASSERT_STRING_EQUAL(jstr(show_entry(s, "to_outside"), "target"), outdir_target);
    CU_ASSERT_STRING_EQUAL(jstr(show_entry(s, "to_sub"), "type"), "symlink");
    CU_ASSERT_PTR_NULL(show_entry(s, "to_sub/x.txt")); /* never followed */
    CU_ASSERT_PTR_NULL(show_entry(s, "pipe"));
    /* the outside file's content never reached the blob store */
    char *hit = tl_tree_grep(ws, "outside content", 15);
    CU_ASSERT_PTR_NULL(hit);
    free(hit);
    CU_ASSERT_EQUAL(jint(j, "files"), 5);
    json_decref(s), json_decref(j);
    tl_result_free(&r);
    free(l_in), free(l_dir), free(l_out), free(l_up), free(fifo), free(outdir_target);
    free(ws), free(src), free(outside);
}

/* Root reads everything: drop the capabilities that bypass permissions for the command. */
static tl_result run_unprivileged(const char *ws, const char *dir)
{
    const char *argv[] = {"setpriv", "--bounding-set", "-dac_override,-dac_read_search",
                          tl_ctarget(), "--workspace", ws, "snapshot", "create", dir, NULL};
    return tl_exec(geteuid() == 0 ? argv : argv + 3, NULL, NULL);
}

static void t_unreadable_fails_naming_it(void)
{
    char *ws = tl_tmpdir("ws"), *src = tl_tmpdir("src");
    put(src, "ok.txt", "fine", 0644);
    put(src, "locked/secret.txt", "no", 0000);
    tl_result r = run_unprivileged(ws, src);
    TL_ASSERT_EXIT(r, 12);
    CU_ASSERT(tl_contains(r.err, "locked/secret.txt"));
    tl_result_free(&r);
    char *f = tl_path(src, "locked/secret.txt"), *d = tl_path(src, "locked");
    chmod(f, 0644);
    chmod(d, 0000);
    r = run_unprivileged(ws, src);
    TL_ASSERT_EXIT(r, 12);
    CU_ASSERT(tl_contains(r.err, "cannot read directory"));
    CU_ASSERT(tl_contains(r.err, "/locked"));
    tl_result_free(&r);
    chmod(d, 0755);
    free(f), free(d);
    free(ws), free(src);
}

/* A file written to during the whole snapshot is never stored torn: the snapshot fails and
 * names it.  The core's hash-read hook appends to the file after every open and fstat, before
 * anything is read, so each attempt is guaranteed to see it change (no racing writer).
 * 2 MB: more than one hashing chunk, so the torn copies went to temporary blob files. */
static void t_changing_file_never_stored_torn(void)
{
    char *ws = tl_tmpdir("ws"), *src = tl_tmpdir("src");
    const off_t size = 2 << 20;
    put_size(src, "log.bin", (size_t)size, 'l');
    char *p = tl_path(src, "log.bin");
    const char *const env[] = {"CTARGET_TEST_HOOK=hash-read=printf x >> \"$1\"", NULL};
    tl_result r = SNAP_ENV(ws, env, "create", src);
    TL_ASSERT_EXIT(r, 1);
    CU_ASSERT(tl_contains(r.err, "log.bin kept changing"));
    CU_ASSERT(tl_contains(r.err, "(4 attempts)"));
    CU_ASSERT_EQUAL(count_blobs(ws), 0);
    struct stat st;
    CU_ASSERT_EQUAL(stat(p, &st), 0);
    CU_ASSERT_EQUAL(st.st_size, size + 4); /* the hook ran once per attempt */
    tl_result_free(&r);
    free(p);
    free(ws), free(src);
}

/* A file that changes during its first read only is read again and stored as it is after
 * the change, never as the mix the first read saw. */
static void t_file_changed_once_is_read_again(void)
{
    char *ws = tl_tmpdir("ws"), *src = tl_tmpdir("src"), *aside = tl_tmpdir("aside");
    const size_t size = 2 << 20;
    put_size(src, "data.bin", size, 'd');
    char *mark = tl_path(aside, "changed");
    char *hook = xasprintf("CTARGET_TEST_HOOK=hash-read=[ -e '%s' ] || "
                     "{ : > '%s'; printf tail >> \"$1\"; }", mark, mark);
    const char *const env[] = {hook, NULL};
    tl_result r = SNAP_ENV(ws, env, "create", src, "--output", "json", "-v");
    TL_ASSERT_EXIT(r, 0);
    CU_ASSERT(tl_contains(r.err, "data.bin changed while it was read; reading it again"));
    CU_ASSERT_EQUAL(access(mark, F_OK), 0);
    json_t *j = r.status == 0 ? tl_json(&r) : NULL;
    CU_ASSERT_PTR_NOT_NULL_FATAL(j);
    json_t *s = show(ws, jstr(j, "id"));
    CU_ASSERT_EQUAL(jint(show_entry(s, "data.bin"), "size"), (long long)size + 4);
    char *root = blob_root_for_ws(ws);
    char *bp = blob_path(root, jstr(show_entry(s, "data.bin"), "sha256"));
    size_t got_len = 0, want_len = 0;
    char *got = file_read_all(bp, &got_len), *dp = tl_path(src, "data.bin");
    char *want = file_read_all(dp, &want_len);
    CU_ASSERT_PTR_NOT_NULL_FATAL(got);
    CU_ASSERT_PTR_NOT_NULL_FATAL(want);
    CU_ASSERT_EQUAL(got_len, size + 4);
    CU_ASSERT(got_len == want_len && memcmp(got, want, got_len) == 0);
    CU_ASSERT_EQUAL(count_blobs(ws), 2); /* data.bin and the manifest: no torn copy */
    free(got), free(want), free(dp), free(bp), free(root);
    json_decref(s), json_decref(j);
    tl_result_free(&r);
    free(mark), free(hook);
    free(ws), free(src), free(aside);
}

/* ---- git ---------------------------------------------------------------------------------- */

static char *git(const char *dir, const char *const *args)
{
    const char *argv[16] = {"git", "-C", dir, "-c", "user.name=t", "-c", "user.email=t@e"};
    size_t n = 7;
    for (size_t i = 0; args[i]; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    tl_result r = tl_exec(argv, NULL, NULL);
    TL_ASSERT_EXIT(r, 0);
    free(r.err);
    r.out[strcspn(r.out, "\n")] = '\0';
    return r.out;
}

#define GIT(dir, ...) free(git((dir), (const char *const[]){__VA_ARGS__, NULL}))

static void t_git_info(void)
{
    char *ws = tl_tmpdir("ws"), *src = tl_tmpdir("repo");
    put(src, "train.py", "print(1)\n", 0644);
    GIT(src, "init", "-q", "-b", "main");
    GIT(src, "remote", "add", "origin", "https://alice:s3cr3t-t0ken@git.example.com/ml/x.git");
    GIT(src, "add", "train.py");
    GIT(src, "commit", "-q", "-m", "first");
    char *head = git(src, (const char *const[]){"rev-parse", "HEAD", NULL});
    tl_result r = SNAP(ws, "create", src, "--output", "json");
    TL_ASSERT_EXIT(r, 0);
    CU_ASSERT(!tl_contains(r.out, "s3cr3t") && !tl_contains(r.err, "s3cr3t"));
    json_t *j = tl_json(&r);
    json_t *g = json_object_get(j, "git");
    CU_ASSERT_STRING_EQUAL(jstr(g, "repository"), "https://git.example.com/ml/x.git");
    CU_ASSERT_STRING_EQUAL(jstr(g, "branch"), "main");
    CU_ASSERT_STRING_EQUAL(jstr(g, "commit"), head);
    CU_ASSERT(json_is_false(json_object_get(g, "dirty")));
    /* .git itself is never in the snapshot */
    json_t *s = show(ws, jstr(j, "id"));
    CU_ASSERT_PTR_NULL(show_entry(s, ".git"));
    CU_ASSERT_PTR_NOT_NULL(show_entry(s, "train.py"));
    /* the record keeps it too */
    CU_ASSERT_STRING_EQUAL(jstr(json_object_get(s, "git"), "commit"), head);
    json_decref(s), json_decref(j);
    tl_result_free(&r);
    put(src, "train.py", "print(2)\n", 0644);
    json_t *j2 = create_ok(ws, src);
    CU_ASSERT(json_is_true(json_object_get(json_object_get(j2, "git"), "dirty")));
    json_decref(j2);
    /* a source directory below the checkout's root is in the checkout too */
    put(src, "sub/deeper/x.py", "x", 0644);
    char *sub = tl_path(src, "sub/deeper");
    json_t *js = create_ok(ws, sub);
    CU_ASSERT_STRING_EQUAL(jstr(json_object_get(js, "git"), "commit"), head);
    json_decref(js);
    free(sub);
    /* no git on PATH: no git info and no error */
    const char *const nogit[] = {"PATH=/nonexistent-ctarget-test", NULL};
    r = SNAP_ENV(ws, nogit, "create", src, "--output", "json");
    TL_ASSERT_EXIT(r, 0);
    json_t *j3 = tl_json(&r);
    CU_ASSERT(json_is_null(json_object_get(j3, "git")));
    json_decref(j3);
    tl_result_free(&r);
    free(head);
    free(ws), free(src);
}

static void t_no_checkout_no_git(void)
{
    char *ws = tl_tmpdir("ws"), *src = tl_tmpdir("plain");
    put(src, "a.py", "a", 0644);
    json_t *j = create_ok(ws, src);
    CU_ASSERT(json_is_null(json_object_get(j, "git")));
    json_decref(j);
    free(ws), free(src);
}

static void t_strip_credentials(void)
{
    static const char *const cases[][2] = {
        {"https://user:token@host/x", "https://host/x"},
        {"https://ghp_abc@github.com/o/r.git", "https://github.com/o/r.git"},
        {"ssh://git@host:22/r.git", "ssh://host:22/r.git"},
        {"https://host/path@v1", "https://host/path@v1"},
        {"git@github.com:o/r.git", "git@github.com:o/r.git"},
        {"https://host/x", "https://host/x"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *s = snap_git_strip_credentials(cases[i][0]);
        CU_ASSERT_STRING_EQUAL(s, cases[i][1]);
        free(s);
    }
}

/* Odd names survive the manifest: written with the fixed escaping, read back the same. */
static void t_manifest_escaping_round_trip(void)
{
    static const char *const names[] = {"a\"q", "b\\s", "c\nl", "d\001c", "\xc3\xa9t\xc3\xa9"};
    snap_tree t = {0}, back;
    for (size_t i = 0; i < 5; i++) {
        snap_entry *e = snap_tree_add(&t, names[i], SNAP_FILE);
        e->mode = 0644;
        memset(e->sha, 'a', 64);
    }
    snap_tree_sort(&t);
    strbuf sb;
    sb_init(&sb);
    snap_manifest_lines(&t, &sb);
    CU_ASSERT(tl_contains(sb.data, "\"path\": \"a\\\"q\""));
    CU_ASSERT(tl_contains(sb.data, "\"path\": \"d\\u0001c\""));
    CU_ASSERT_EQUAL_FATAL(snap_manifest_parse(sb.data, sb.len, &back, NULL), CTARGET_OK);
    CU_ASSERT_EQUAL(back.n, 5);
    for (size_t i = 0; i < 5 && i < back.n; i++)
        CU_ASSERT_STRING_EQUAL(back.v[i].path, t.v[i].path);
    /* unsafe paths are refused when a manifest is read */
    static const char *const bad[] = {"{\"path\": \"../x\", \"type\": \"dir\", \"mode\": 493}\n",
                                      "{\"path\": \"/x\", \"type\": \"dir\", \"mode\": 493}\n",
                                      "{\"path\": \"l/x\", \"type\": \"dir\", \"mode\": 493}\n"};
    for (size_t i = 0; i < 3; i++) {
        snap_tree b;
        CU_ASSERT_NOT_EQUAL(snap_manifest_parse(bad[i], strlen(bad[i]), &b, NULL), CTARGET_OK);
    }
    sb_free(&sb);
    snap_tree_free(&t);
    snap_tree_free(&back);
}

static void t_parse_size(void)
{
    uint64_t v = 0;
    CU_ASSERT(snap_parse_size("300M", &v) == 0 && v == 300u << 20);
    CU_ASSERT(snap_parse_size("2GiB", &v) == 0 && v == UINT64_C(2) << 30);
    CU_ASSERT(snap_parse_size("4096", &v) == 0 && v == 4096);
    CU_ASSERT(snap_parse_size("12X", &v) != 0);
    CU_ASSERT(snap_parse_size("M", &v) != 0);
    CU_ASSERT(snap_parse_size("-5", &v) != 0);
    CU_ASSERT(snap_parse_size("5 M", &v) != 0);
    CU_ASSERT(snap_parse_size("99999999999999999999", &v) != 0);
}

/* ---- transport ---------------------------------------------------------------------------- */

static void make_rich_tree(const char *src)
{
    put(src, "train.py", "import sys\n", 0755);
    put(src, "data/a.csv", "1,2,3\n", 0600);
    put_size(src, "data/big.bin", 3 << 20, 'q'); /* several read chunks */
    put(src, "empty.txt", "", 0644);
    char *e = tl_path(src, "emptydir"), *l = tl_path(src, "latest");
    mkdir(e, 0700);
    chmod(e, 0700);
    CU_ASSERT_EQUAL(symlink("data/a.csv", l), 0);
    free(e), free(l);
}

static void t_export_extract_round_trip(void)
{
    char *ws = tl_tmpdir("ws"), *src = tl_tmpdir("src"), *tmp = tl_tmpdir("out");
    make_rich_tree(src);
    json_t *j = create_ok(ws, src);
    const char *id = jstr(j, "id");
    const char *const flavours[][2] = {{"plain.tar", NULL}, {"z.tar.zst", "--zstd"}};
    for (size_t k = 0; k < 2; k++) {
        char *arch = tl_path(tmp, flavours[k][0]);
        char *dest = tl_path(tmp, k ? "tree-z" : "tree");
        tl_result r = flavours[k][1] ? SNAP(ws, "export", id, "-o", arch, flavours[k][1])
                                     : SNAP(ws, "export", id, "-o", arch);
        TL_ASSERT_EXIT(r, 0);
        tl_result_free(&r);
        /* extracted into a fresh workspace: everything comes from the archive */
        char *ws2 = tl_tmpdir("ws2");
        r = SNAP(ws2, "extract", arch, "-C", dest);
        TL_ASSERT_EXIT(r, 0);
        tl_result_free(&r);
        /* the same tree: the same id, computed from what was extracted */
        json_t *j2 = create_ok(ws2, dest);
        CU_ASSERT_STRING_EQUAL(jstr(j2, "id"), id);
        json_decref(j2);
        char *f = tl_path(dest, "data/a.csv");
        char *c = tl_read_file(f);
        CU_ASSERT_STRING_EQUAL(c ? c : "", "1,2,3\n");
        free(c), free(f), free(arch), free(dest), free(ws2);
    }
    json_decref(j);
    free(ws), free(src), free(tmp);
}

/* tar -tf: the entry names of an archive, one per line */
static char *tar_list(const char *arch)
{
    const char *argv[] = {"tar", "-tf", arch, NULL};
    tl_result r = tl_exec(argv, NULL, NULL);
    TL_ASSERT_EXIT(r, 0);
    free(r.err);
    return r.out;
}

static void t_export_since_only_new_blobs(void)
{
    char *ws = tl_tmpdir("ws"), *src = tl_tmpdir("src"), *tmp = tl_tmpdir("out");
    make_rich_tree(src);
    json_t *j1 = create_ok(ws, src);
    put(src, "train.py", "import os\n", 0755);
    put(src, "new.txt", "new file\n", 0644);
    json_t *j2 = create_ok(ws, src);
    char *arch = tl_path(tmp, "delta.tar");
    tl_result r = SNAP(ws, "export", jstr(j2, "id"), "-o", arch, "--since", jstr(j1, "id"),
                       "--output", "json");
    TL_ASSERT_EXIT(r, 0);
    json_t *x = tl_json(&r);
    CU_ASSERT_EQUAL(jint(x, "blobs"), 2);
    CU_ASSERT_EQUAL(jint(x, "blob_bytes"), 10 + 9);
    tl_result_free(&r);
    char *names = tar_list(arch);
    json_t *s = show(ws, jstr(j2, "id"));
    const char *s1 = jstr(show_entry(s, "new.txt"), "sha256");
    const char *s2 = jstr(show_entry(s, "train.py"), "sha256");
    char want[200]; /* manifest first, then the blobs in sha256 order */
    snprintf(want, sizeof want, "manifest.jsonl\nblobs/%s\nblobs/%s\n",
             strcmp(s1, s2) < 0 ? s1 : s2, strcmp(s1, s2) < 0 ? s2 : s1);
    CU_ASSERT_STRING_EQUAL(names, want);
    /* the receiver that has the first snapshot's blobs rebuilds the second from the delta */
    char *dest = tl_path(tmp, "tree");
    r = SNAP(ws, "extract", arch, "-C", dest);
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    json_t *j3 = create_ok(ws, dest);
    CU_ASSERT_STRING_EQUAL(jstr(j3, "id"), jstr(j2, "id"));
    json_decref(j3), json_decref(s), json_decref(x), json_decref(j1), json_decref(j2);
    free(names), free(arch), free(dest);
    free(ws), free(src), free(tmp);
}

static void t_materialize_copies(void)
{
    char *ws = tl_tmpdir("ws"), *src = tl_tmpdir("src"), *tmp = tl_tmpdir("mat");
    make_rich_tree(src);
    json_t *j = create_ok(ws, src);
    char *root = blob_root_for_ws(ws), *dest = tl_path(tmp, "run");
    ctarget_error err;
    ctarget_error_init(&err);
    CU_ASSERT_EQUAL(snap_materialize(root, jstr(j, "id"), dest, &err), CTARGET_OK);
    json_t *j2 = create_ok(ws, dest);
    CU_ASSERT_STRING_EQUAL(jstr(j2, "id"), jstr(j, "id"));
    /* the run may overwrite its files: the blob store is not affected */
    char *f = tl_path(dest, "data/a.csv");
    CU_ASSERT_EQUAL(tl_write_file(f, "changed"), 0);
    json_t *s = show(ws, jstr(j, "id"));
    char *bp = blob_path(root, jstr(show_entry(s, "data/a.csv"), "sha256"));
    char *c = tl_read_file(bp);
    CU_ASSERT_STRING_EQUAL(c ? c : "", "1,2,3\n");
    /* a non-empty destination is refused */
    CU_ASSERT_EQUAL(snap_materialize(root, jstr(j, "id"), dest, &err), CTARGET_E_EXISTS);
    free(c), free(bp), free(f), free(root), free(dest);
    json_decref(s), json_decref(j2), json_decref(j);
    free(ws), free(src), free(tmp);
}

/* ---- diff, gc, show ------------------------------------------------------------------------ */

static void t_diff(void)
{
    char *ws = tl_tmpdir("ws"), *src = tl_tmpdir("src");
    put(src, "keep.txt", "k", 0644);
    put(src, "mod.txt", "v1", 0644);
    put(src, "gone.txt", "g", 0644);
    put(src, "mode.sh", "m", 0644);
    json_t *a = create_ok(ws, src);
    put(src, "mod.txt", "v2", 0644);
    char *g = tl_path(src, "gone.txt"), *m = tl_path(src, "mode.sh");
    unlink(g);
    chmod(m, 0755);
    put(src, "added/new.txt", "n", 0644);
    json_t *b = create_ok(ws, src);
    tl_result r = SNAP(ws, "diff", jstr(a, "id"), jstr(b, "id"), "--output", "json");
    TL_ASSERT_EXIT(r, 0);
    json_t *d = tl_json(&r);
    char *added = json_dumps(json_object_get(d, "added"), JSON_COMPACT);
    char *mod = json_dumps(json_object_get(d, "modified"), JSON_COMPACT);
    char *del = json_dumps(json_object_get(d, "deleted"), JSON_COMPACT);
    CU_ASSERT_STRING_EQUAL(added, "[\"added\",\"added/new.txt\"]");
    CU_ASSERT_STRING_EQUAL(mod, "[\"mod.txt\",\"mode.sh\"]");
    CU_ASSERT_STRING_EQUAL(del, "[\"gone.txt\"]");
    tl_result_free(&r);
    /* table form, with id prefixes */
    char pa[9], pb[9];
    snprintf(pa, sizeof pa, "%.8s", jstr(a, "id"));
    snprintf(pb, sizeof pb, "%.8s", jstr(b, "id"));
    r = SNAP(ws, "diff", pa, pb);
    TL_ASSERT_EXIT(r, 0);
    CU_ASSERT(tl_contains(r.out, "A added/new.txt\n"));
    CU_ASSERT(tl_contains(r.out, "M mod.txt\n"));
    CU_ASSERT(tl_contains(r.out, "D gone.txt\n"));
    tl_result_free(&r);
    free(added), free(mod), free(del), free(g), free(m);
    json_decref(d), json_decref(a), json_decref(b);
    free(ws), free(src);
}

static void t_gc(void)
{
    char *ws = tl_tmpdir("ws"), *src = tl_tmpdir("src");
    put(src, "a.txt", "referenced", 0644);
    json_t *j = create_ok(ws, src);
    char *root = blob_root_for_ws(ws);
    static const char orphan[] = "nobody references this";
    char sha[65];
    blob_sha256_hex(orphan, sizeof orphan - 1, sha);
    int added = 0;
    CU_ASSERT_EQUAL(blob_put_mem(root, sha, orphan, sizeof orphan - 1, &added, NULL), CTARGET_OK);
    CU_ASSERT_EQUAL(added, 1);
    int before = count_blobs(ws);
    tl_result r = SNAP(ws, "gc", "--output", "json");
    TL_ASSERT_EXIT(r, 0);
    json_t *g = tl_json(&r);
    CU_ASSERT_EQUAL(jint(g, "removed_blobs"), 1);
    CU_ASSERT_EQUAL(jint(g, "freed_bytes"), (long long)(sizeof orphan - 1));
    CU_ASSERT_EQUAL(jint(g, "kept_blobs"), 2); /* a.txt and the manifest */
    CU_ASSERT_EQUAL(count_blobs(ws), before - 1);
    CU_ASSERT(!blob_exists(root, sha, NULL));
    json_decref(g);
    tl_result_free(&r);
    /* what is referenced survives: the snapshot still shows and materializes */
    json_t *s = show(ws, jstr(j, "id"));
    CU_ASSERT(blob_exists(root, jstr(show_entry(s, "a.txt"), "sha256"), NULL));
    r = SNAP(ws, "gc");
    TL_ASSERT_EXIT(r, 0);
    CU_ASSERT(tl_contains(r.out, "removed 0 blobs"));
    tl_result_free(&r);
    json_decref(s), json_decref(j);
    free(root);
    free(ws), free(src);
}

static void t_show_prefix_and_errors(void)
{
    char *ws = tl_tmpdir("ws"), *src = tl_tmpdir("src");
    put(src, "a.txt", "a", 0644);
    json_t *j = create_ok(ws, src);
    char prefix[8];
    snprintf(prefix, sizeof prefix, "%.6s", jstr(j, "id"));
    json_t *s = show(ws, prefix);
    CU_ASSERT_STRING_EQUAL(jstr(s, "id"), jstr(j, "id"));
    json_t *f = show_entry(s, "a.txt");
    CU_ASSERT_EQUAL(jint(f, "size"), 1);
    CU_ASSERT_STRING_EQUAL(jstr(f, "type"), "file");
    CU_ASSERT_EQUAL(strlen(jstr(f, "sha256")), 64);
    tl_result r = SNAP(ws, "show", "ffffffffffff");
    TL_ASSERT_EXIT(r, 4);
    tl_result_free(&r);
    r = SNAP(ws, "show", "../etc");
    TL_ASSERT_EXIT(r, 4);
    tl_result_free(&r);
    r = SNAP(ws, "create", "/nonexistent/ctarget-test-dir");
    TL_ASSERT_EXIT(r, 4);
    tl_result_free(&r);
    r = SNAP(ws, "create");
    TL_ASSERT_EXIT(r, 2);
    tl_result_free(&r);
    r = SNAP(ws, "export", jstr(j, "id"));
    TL_ASSERT_EXIT(r, 2);
    CU_ASSERT(tl_contains(r.err, "-o FILE"));
    tl_result_free(&r);
    static const char *const subs[] = {"create", "list", "show", "diff", "export", "extract",
                                       "gc"};
    for (size_t i = 0; i < sizeof subs / sizeof subs[0]; i++) {
        r = SNAP(ws, subs[i], "--help");
        TL_ASSERT_EXIT(r, 0);
        CU_ASSERT(tl_contains(r.out, "usage: ctarget snapshot SUBCOMMAND"));
        tl_result_free(&r);
    }
    r = TL_CT(ws, "--help");
    CU_ASSERT(tl_contains(r.out, "snapshot"));
    tl_result_free(&r);
    json_decref(s), json_decref(j);
    free(ws), free(src);
}

/* ---- ignore rules through the command ----------------------------------------------------- */

static void t_amlignore_wins_over_gitignore(void)
{
    char *ws = tl_tmpdir("ws"), *src = tl_tmpdir("src");
    put(src, ".gitignore", "*.log\n", 0644);
    put(src, ".amlignore", "*.tmp\noutputs/\n", 0644);
    put(src, "run.log", "l", 0644);
    put(src, "scratch.tmp", "t", 0644);
    put(src, "outputs/model.bin", "m", 0644);
    put(src, "train.py", "p", 0644);
    put(src, ".git/HEAD", "ref: refs/heads/main\n", 0644);
    json_t *j = create_ok(ws, src);
    json_t *s = show(ws, jstr(j, "id"));
    CU_ASSERT_PTR_NOT_NULL(show_entry(s, "run.log"));   /* .gitignore is not read */
    CU_ASSERT_PTR_NULL(show_entry(s, "scratch.tmp"));
    CU_ASSERT_PTR_NULL(show_entry(s, "outputs"));
    CU_ASSERT_PTR_NULL(show_entry(s, "outputs/model.bin"));
    CU_ASSERT_PTR_NULL(show_entry(s, ".git"));
    CU_ASSERT_PTR_NOT_NULL(show_entry(s, "train.py"));
    /* without .amlignore, .gitignore applies */
    char *a = tl_path(src, ".amlignore");
    unlink(a);
    json_t *j2 = create_ok(ws, src);
    json_t *s2 = show(ws, jstr(j2, "id"));
    CU_ASSERT_PTR_NULL(show_entry(s2, "run.log"));
    CU_ASSERT_PTR_NOT_NULL(show_entry(s2, "scratch.tmp"));
    free(a);
    json_decref(s2), json_decref(j2), json_decref(s), json_decref(j);
    free(ws), free(src);
}

/* A workspace inside the source directory is never snapshotted into itself. */
static void t_workspace_inside_source_left_out(void)
{
    char *src = tl_tmpdir("src");
    put(src, "train.py", "p", 0644);
    char *ws = tl_path(src, ".ctarget-ws");
    json_t *j1 = create_ok(ws, src), *j2 = create_ok(ws, src);
    CU_ASSERT_EQUAL(jint(j1, "files"), 1);
    CU_ASSERT_STRING_EQUAL(jstr(j1, "id"), jstr(j2, "id"));
    json_decref(j1), json_decref(j2);
    free(ws), free(src);
}

/* Rewrite a file in place (same inode, so its directory's stamp does not change). */
static void rewrite_in_place(const char *dir, const char *rel, const char *content)
{
    char *p = tl_path(dir, rel);
    FILE *f = fopen(p, "r+");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    CU_ASSERT_EQUAL(ftruncate(fileno(f), 0), 0);
    fputs(content, f);
    fclose(f);
    free(p);
}

/* create with debug logging: how many directories were read, and how many came from the listing cache */
static void walk_counts(const char *ws, const char *src, json_t **out, long *read, long *cached)
{
    const char *const env[] = {"CTARGET_LOG=debug", CLOCK_OLD, NULL};
    tl_result r = SNAP_ENV(ws, env, "create", src, "--output", "json");
    TL_ASSERT_EXIT(r, 0);
    *out = r.status == 0 ? tl_json(&r) : NULL;
    const char *m = strstr(r.err, "snapshot walk: ");
    *read = *cached = -1;
    CU_ASSERT_PTR_NOT_NULL(m);
    if (m && sscanf(m, "snapshot walk: %ld directories read, %ld from the listing cache", read,
                    cached) != 2)
        *read = *cached = -1;
    tl_result_free(&r);
}

/* The listing cache: a directory whose stamp is as recorded is not read again, yet ignore
 * rules, added and removed names and a damaged cache file all give the right tree.  Needs
 * directories older than the racy margin (1 s): walk_counts shifts the clock that decision
 * reads two seconds on (CLOCK_OLD) instead of sleeping. */
static void t_listing_cache(void)
{
    char *ws = tl_tmpdir("ws"), *src = tl_tmpdir("src");
    put(src, ".amlignore", "*.log\n", 0644);
    put(src, "top.txt", "t", 0644);
    put(src, "a/x.txt", "x", 0644);
    put(src, "a/y.log", "y", 0644);
    put(src, "b/c/z.txt", "z", 0644);
    age_tree(src, 1600000000);
    json_t *j1, *j2, *j3, *j4, *j5;
    long rd, ca;
    walk_counts(ws, src, &j1, &rd, &ca);
    CU_ASSERT_EQUAL(rd, 4); /* ., a, b, b/c */
    CU_ASSERT_EQUAL(ca, 0);
    walk_counts(ws, src, &j2, &rd, &ca);
    CU_ASSERT_EQUAL(rd, 0);
    CU_ASSERT_EQUAL(ca, 4);
    CU_ASSERT_STRING_EQUAL(jstr(j1, "id"), jstr(j2, "id"));
    CU_ASSERT_EQUAL(jint(j2, "files"), 4); /* .amlignore, top.txt, a/x.txt, b/c/z.txt */

    /* the ignore file edited in place: no directory changed, the rules did */
    rewrite_in_place(src, ".amlignore", "*.txt\n");
    walk_counts(ws, src, &j3, &rd, &ca);
    CU_ASSERT_EQUAL(rd, 0);
    CU_ASSERT_EQUAL(ca, 4);
    json_t *s3 = show(ws, jstr(j3, "id"));
    CU_ASSERT_PTR_NOT_NULL(show_entry(s3, "a/y.log"));
    CU_ASSERT_PTR_NULL(show_entry(s3, "a/x.txt"));
    CU_ASSERT_PTR_NULL(show_entry(s3, "b/c/z.txt"));
    CU_ASSERT_PTR_NULL(show_entry(s3, "top.txt"));

    /* a name added and one removed: their directories are read again */
    put(src, "b/c/new.dat", "n", 0644);
    char *y = tl_path(src, "a/y.log");
    CU_ASSERT_EQUAL(unlink(y), 0);
    walk_counts(ws, src, &j4, &rd, &ca);
    CU_ASSERT_EQUAL(rd, 2);
    CU_ASSERT_EQUAL(ca, 2);
    json_t *s4 = show(ws, jstr(j4, "id"));
    CU_ASSERT_PTR_NOT_NULL(show_entry(s4, "b/c/new.dat"));
    CU_ASSERT_PTR_NULL(show_entry(s4, "a/y.log"));

    /* a damaged or cut cache file is not used: everything is read, the same tree results */
    char *dirs = cache_path(ws, 1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(dirs);
    struct stat st;
    CU_ASSERT_EQUAL(stat(dirs, &st), 0);
    CU_ASSERT_EQUAL(truncate(dirs, st.st_size / 2), 0);
    walk_counts(ws, src, &j5, &rd, &ca);
    CU_ASSERT_EQUAL(ca, 0);
    CU_ASSERT_EQUAL(rd, 4);
    CU_ASSERT_STRING_EQUAL(jstr(j5, "id"), jstr(j4, "id"));
    json_decref(j5);
    int fd = open(dirs, O_WRONLY);
    CU_ASSERT_FATAL(fd >= 0);
    char junk[4096];
    memset(junk, 0x5a, sizeof junk);
    CU_ASSERT_EQUAL(pwrite(fd, junk, sizeof junk, 64), (ssize_t)sizeof junk);
    close(fd);
    walk_counts(ws, src, &j5, &rd, &ca);
    CU_ASSERT_EQUAL(ca, 0);
    CU_ASSERT_STRING_EQUAL(jstr(j5, "id"), jstr(j4, "id"));

    free(dirs), free(y);
    json_decref(s3), json_decref(s4);
    json_decref(j1), json_decref(j2), json_decref(j3), json_decref(j4), json_decref(j5);
    free(ws), free(src);
}

static void add(CU_pSuite s)
{
    TL_ADD(s, t_manifest_format_and_id);
    TL_ADD(s, t_same_tree_same_id);
    TL_ADD(s, t_change_new_id_parent_new_bytes);
    TL_ADD(s, t_stat_cache_reads_nothing_unchanged);
    TL_ADD(s, t_listing_cache);
    TL_ADD(s, t_stat_cache_checks_blobs_only_where_the_store_changed);
    TL_ADD(s, t_unchanged_tree_reuses_manifest_only_when_identical);
    TL_ADD(s, t_walk_order_is_path_order);
    TL_ADD(s, t_damaged_stat_cache_is_not_used);
    TL_ADD(s, t_flat_tree_reuses_manifest);
    TL_ADD(s, t_limit_files);
    TL_ADD(s, t_limit_bytes);
    TL_ADD(s, t_symlinks_and_fifo);
    TL_ADD(s, t_unreadable_fails_naming_it);
    TL_ADD(s, t_changing_file_never_stored_torn);
    TL_ADD(s, t_file_changed_once_is_read_again);
    TL_ADD(s, t_git_info);
    TL_ADD(s, t_no_checkout_no_git);
    TL_ADD(s, t_strip_credentials);
    TL_ADD(s, t_parse_size);
    TL_ADD(s, t_manifest_escaping_round_trip);
    TL_ADD(s, t_export_extract_round_trip);
    TL_ADD(s, t_export_since_only_new_blobs);
    TL_ADD(s, t_materialize_copies);
    TL_ADD(s, t_diff);
    TL_ADD(s, t_gc);
    TL_ADD(s, t_show_prefix_and_errors);
    TL_ADD(s, t_amlignore_wins_over_gitignore);
    TL_ADD(s, t_workspace_inside_source_left_out);
}

int main(int argc, char **argv) { return tl_main(argc, argv, "snapshot", add); }
