/* Safe extraction and the transport writer (core/archive.h).  Hostile archives are built
 * here with libarchive itself; each must be refused with the entry named, leave the
 * destination empty and never touch the sibling directory `outside/`. */
#define _GNU_SOURCE
#include "testlib.h"

#include <archive.h>
#include <archive_entry.h>
#include <dirent.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <ctarget/ctarget.h>

#include "tarstream.h"
#include "blobstore.h"
#include "util.h"

typedef struct ent {
    const char *name;
    char type;              /* f file, d dir, l symlink, h hardlink, c char device, p fifo */
    const char *data;       /* file content, or link target */
    unsigned mode;
} ent;

static void mk_tar(const char *path, const ent *e, size_t n)
{
    struct archive *a = archive_write_new();
    archive_write_set_format_pax_restricted(a);
    CU_ASSERT_EQUAL_FATAL(archive_write_open_filename(a, path), ARCHIVE_OK);
    for (size_t i = 0; i < n; i++) {
        struct archive_entry *x = archive_entry_new();
        archive_entry_set_pathname(x, e[i].name);
        archive_entry_set_perm(x, e[i].mode ? e[i].mode : 0644);
        size_t len = 0;
        switch (e[i].type) {
        case 'f':
            archive_entry_set_filetype(x, AE_IFREG);
            len = strlen(e[i].data);
            archive_entry_set_size(x, (la_int64_t)len);
            break;
        case 'd':
            archive_entry_set_filetype(x, AE_IFDIR);
            break;
        case 'l':
            archive_entry_set_filetype(x, AE_IFLNK);
            archive_entry_set_symlink(x, e[i].data);
            break;
        case 'h':
            archive_entry_set_filetype(x, AE_IFREG);
            archive_entry_set_hardlink(x, e[i].data);
            break;
        case 'c':
            archive_entry_set_filetype(x, AE_IFCHR);
            archive_entry_set_rdev(x, makedev(1, 3));
            break;
        case 'p':
            archive_entry_set_filetype(x, AE_IFIFO);
            break;
        }
        /* WARN: a non-ASCII name in the C locale, written as its bytes */
        CU_ASSERT(archive_write_header(a, x) >= ARCHIVE_WARN);
        if (len)
            archive_write_data(a, e[i].data, len);
        archive_entry_free(x);
    }
    archive_write_close(a);
    archive_write_free(a);
}

static int dir_empty(const char *p)
{
    DIR *d = opendir(p);
    if (!d)
        return 1; /* not even created */
    struct dirent *de;
    int n = 0;
    while ((de = readdir(d)))
        if (strcmp(de->d_name, ".") && strcmp(de->d_name, ".."))
            n++;
    closedir(d);
    return n == 0;
}

typedef struct scene {
    char *top, *dest, *outside, *tar;
} scene;

static scene scene_new(void)
{
    scene s;
    s.top = tl_tmpdir("extract");
    s.dest = path_join(s.top, "dest");
    s.outside = path_join(s.top, "outside");
    s.tar = path_join(s.top, "in.tar");
    mkdir(s.outside, 0755);
    return s;
}

static void scene_free(scene *s)
{
    free(s->top);
    free(s->dest);
    free(s->outside);
    free(s->tar);
}

/* The archive must be refused naming `entry`, with dest and outside/ left empty. */
static void expect_refused(const ent *e, size_t n, const char *entry)
{
    scene s = scene_new();
    mk_tar(s.tar, e, n);
    ctarget_error err;
    ctarget_error_init(&err);
    ctarget_status rc = arch_extract_safe(s.tar, s.dest, NULL, &err);
    CU_ASSERT_NOT_EQUAL(rc, CTARGET_OK);
    if (!strstr(err.message, entry))
        fprintf(stderr, "refusal does not name '%s': %s\n", entry, err.message);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.message, entry));
    CU_ASSERT(dir_empty(s.dest));
    CU_ASSERT(dir_empty(s.outside));
    scene_free(&s);
}

static void t_absolute_path_refused(void)
{
    char *evil = xasprintf("/tmp/ctarget-evil-%d", (int)getpid());
    ent e[] = {{"ok.txt", 'f', "fine", 0}, {evil, 'f', "pwned", 0}};
    expect_refused(e, 2, evil);
    CU_ASSERT_NOT_EQUAL(access(evil, F_OK), 0);
    free(evil);
}

static void t_dotdot_refused(void)
{
    ent e1[] = {{"../outside/x", 'f', "pwned", 0}};
    expect_refused(e1, 1, "../outside/x");
    ent e2[] = {{"a/../../outside/x", 'f', "pwned", 0}};
    expect_refused(e2, 1, "a/../../outside/x");
}

static void t_symlink_escape_then_write_through_refused(void)
{
    ent e1[] = {{"esc", 'l', "../outside", 0}, {"esc/x", 'f', "pwned", 0}};
    expect_refused(e1, 2, "esc");
    ent e2[] = {{"etc", 'l', "/etc", 0}};
    expect_refused(e2, 1, "etc");
    ent e3[] = {{"a/b/up", 'l', "../../..", 0}};
    expect_refused(e3, 1, "a/b/up");
}

static void t_write_through_inner_symlink_refused(void)
{
    ent e[] = {{"sub", 'd', NULL, 0755}, {"in", 'l', "sub", 0}, {"in/x", 'f', "via link", 0}};
    expect_refused(e, 3, "in/x");
}

static void t_hardlink_escape_refused(void)
{
    ent e1[] = {{"h", 'h', "/etc/passwd", 0}};
    expect_refused(e1, 1, "h");
    ent e2[] = {{"h2", 'h', "../outside/x", 0}};
    expect_refused(e2, 1, "h2");
}

static void t_device_and_fifo_refused(void)
{
    ent e1[] = {{"null", 'c', NULL, 0666}};
    expect_refused(e1, 1, "null");
    ent e2[] = {{"pipe", 'p', NULL, 0644}};
    expect_refused(e2, 1, "pipe");
}

static void t_plain_tar_round_trip(void)
{
    scene s = scene_new();
    ent e[] = {
        {"dir", 'd', NULL, 0755},
        {"dir/run.sh", 'f', "#!/bin/sh\necho hi\n", 0755},
        {"dir/data.txt", 'f', "data", 0640},
        {"empty", 'f', "", 0644},
        {"name with space \xc3\xa9.txt", 'f', "unicode", 0644},
        {"link", 'l', "dir/data.txt", 0},
        {"dir/up", 'l', "../empty", 0},
        {"hard", 'h', "dir/data.txt", 0},
        {"suid", 'f', "x", 04755},
    };
    mk_tar(s.tar, e, CT_ARRAY_LEN(e));
    ctarget_error err;
    ctarget_error_init(&err);
    CU_ASSERT_EQUAL_FATAL(arch_extract_safe(s.tar, s.dest, NULL, &err), CTARGET_OK);
    char *p = path_join(s.dest, "dir/run.sh");
    struct stat st;
    CU_ASSERT_EQUAL(stat(p, &st), 0);
    CU_ASSERT_EQUAL(st.st_mode & 07777, 0755);
    char *c = tl_read_file(p);
    CU_ASSERT_STRING_EQUAL(c ? c : "", "#!/bin/sh\necho hi\n");
    free(c);
    free(p);
    p = path_join(s.dest, "link");
    char buf[64] = "";
    CU_ASSERT(readlink(p, buf, sizeof buf - 1) > 0);
    CU_ASSERT_STRING_EQUAL(buf, "dir/data.txt");
    free(p);
    p = path_join(s.dest, "hard");
    c = tl_read_file(p);
    CU_ASSERT_STRING_EQUAL(c ? c : "", "data");
    free(c);
    free(p);
    p = path_join(s.dest, "suid");
    CU_ASSERT_EQUAL(stat(p, &st), 0);
    CU_ASSERT_EQUAL(st.st_mode & 07777, 0755); /* setuid never survives */
    free(p);
    p = path_join(s.dest, "name with space \xc3\xa9.txt");
    CU_ASSERT_EQUAL(access(p, F_OK), 0);
    free(p);
    CU_ASSERT(dir_empty(s.outside));
    scene_free(&s);
}

static void t_garbage_is_not_an_archive(void)
{
    scene s = scene_new();
    tl_write_file(s.tar, "this is not a tar file at all, just text\n");
    ctarget_error err;
    ctarget_error_init(&err);
    CU_ASSERT_NOT_EQUAL(arch_extract_safe(s.tar, s.dest, NULL, &err), CTARGET_OK);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.message, "in.tar"));
    CU_ASSERT(dir_empty(s.dest));
    scene_free(&s);
}

/* ---- transport archives ------------------------------------------------------------------- */

static int to_file(void *arg, const void *data, size_t len)
{
    return fwrite(data, 1, len, arg) != len;
}

static void sha_hex(const char *data, char out[65])
{
    unsigned char d[32];
    EVP_Digest(data, strlen(data), d, NULL, EVP_sha256(), NULL);
    for (int i = 0; i < 32; i++)
        snprintf(out + 2 * i, 3, "%02x", d[i]);
}

/* A transport tar: manifest lines given, then blobs for `blobs` (contents). */
static void mk_transport(const char *path, const char *manifest, const char *const *blobs,
                         size_t nblobs, const char *const *names_override, unsigned flags)
{
    FILE *f = fopen(path, "wb");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    arch_writer *w;
    ctarget_error err;
    ctarget_error_init(&err);
    CU_ASSERT_EQUAL_FATAL(arch_writer_open(to_file, f, flags, &w, &err), CTARGET_OK);
    CU_ASSERT_EQUAL(arch_write_bytes(w, "manifest.jsonl", manifest, strlen(manifest), &err),
                    CTARGET_OK);
    for (size_t i = 0; i < nblobs; i++) {
        char sha[65], *name;
        sha_hex(blobs[i], sha);
        name = xasprintf("blobs/%s", names_override && names_override[i] ? names_override[i]
                                                                          : sha);
        CU_ASSERT_EQUAL(arch_write_bytes(w, name, blobs[i], strlen(blobs[i]), &err),
                        CTARGET_OK);
        free(name);
    }
    CU_ASSERT_EQUAL(arch_writer_close(w, &err), CTARGET_OK);
    fclose(f);
}

static char *manifest_for(const char *a_content, const char *b_content)
{
    char sa[65], sb[65];
    sha_hex(a_content, sa);
    sha_hex(b_content, sb);
    return xasprintf("{\"ctarget_snapshot\": \"x\", \"format\": 1, \"entries\": 4}\n"
                     "{\"path\": \"a.txt\", \"type\": \"file\", \"mode\": 420, \"size\": %zu, "
                     "\"sha256\": \"%s\"}\n"
                     "{\"path\": \"l\", \"type\": \"symlink\", \"target\": \"src/b.py\"}\n"
                     "{\"path\": \"src\", \"type\": \"dir\", \"mode\": 493}\n"
                     "{\"path\": \"src/b.py\", \"type\": \"file\", \"mode\": 493, \"size\": %zu, "
                     "\"sha256\": \"%s\"}\n",
                     strlen(a_content), sa, strlen(b_content), sb);
}

static void check_transport_tree(const char *dest)
{
    char *p = path_join(dest, "src/b.py");
    char *c = tl_read_file(p);
    CU_ASSERT_STRING_EQUAL(c ? c : "", "print('b')\n");
    struct stat st;
    CU_ASSERT_EQUAL(stat(p, &st), 0);
    CU_ASSERT_EQUAL(st.st_mode & 0777, 0755);
    free(c);
    free(p);
    p = path_join(dest, "a.txt");
    c = tl_read_file(p);
    CU_ASSERT_STRING_EQUAL(c ? c : "", "alpha\n");
    free(c);
    free(p);
    p = path_join(dest, "manifest.jsonl");
    CU_ASSERT_NOT_EQUAL(access(p, F_OK), 0); /* the tree, not the archive layout */
    free(p);
}

static void t_transport_round_trip_plain_and_zstd(void)
{
    for (unsigned flags = 0; flags <= CTARGET_TAR_ZSTD; flags += CTARGET_TAR_ZSTD) {
        scene s = scene_new();
        char *m = manifest_for("alpha\n", "print('b')\n");
        const char *blobs[] = {"alpha\n", "print('b')\n"};
        mk_transport(s.tar, m, blobs, 2, NULL, flags);
        ctarget_error err;
        ctarget_error_init(&err);
        CU_ASSERT_EQUAL(arch_extract_safe(s.tar, s.dest, NULL, &err), CTARGET_OK);
        if (err.message[0])
            fprintf(stderr, "transport (flags %u): %s\n", flags, err.message);
        check_transport_tree(s.dest);
        free(m);
        scene_free(&s);
    }
}

static void t_transport_is_deterministic(void)
{
    scene s = scene_new();
    char *m = manifest_for("alpha\n", "print('b')\n");
    const char *blobs[] = {"alpha\n", "print('b')\n"};
    char *t2 = path_join(s.top, "again.tar");
    mk_transport(s.tar, m, blobs, 2, NULL, 0);
    mk_transport(t2, m, blobs, 2, NULL, 0);
    char *c1 = tl_read_file(s.tar), *c2 = tl_read_file(t2);
    struct stat a, b;
    stat(s.tar, &a);
    stat(t2, &b);
    CU_ASSERT_EQUAL(a.st_size, b.st_size);
    CU_ASSERT(c1 && c2 && !memcmp(c1, c2, (size_t)a.st_size));
    free(c1);
    free(c2);
    free(t2);
    free(m);
    scene_free(&s);
}

static void t_transport_blob_with_wrong_content_refused(void)
{
    scene s = scene_new();
    char *m = manifest_for("alpha\n", "print('b')\n");
    char sb[65];
    sha_hex("print('b')\n", sb);
    const char *blobs[] = {"alpha\n", "tampered\n"};
    const char *names[] = {NULL, sb};
    mk_transport(s.tar, m, blobs, 2, names, 0);
    ctarget_error err;
    ctarget_error_init(&err);
    CU_ASSERT_NOT_EQUAL(arch_extract_safe(s.tar, s.dest, NULL, &err), CTARGET_OK);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.message, sb));
    CU_ASSERT(dir_empty(s.dest));
    free(m);
    scene_free(&s);
}

static void t_transport_hostile_manifest_refused(void)
{
    const char *bad[] = {
        "{\"path\": \"../x\", \"type\": \"dir\", \"mode\": 493}\n",
        "{\"path\": \"/abs\", \"type\": \"dir\", \"mode\": 493}\n",
        "{\"path\": \"esc\", \"type\": \"symlink\", \"target\": \"../../etc\"}\n",
        "{\"path\": \"dev\", \"type\": \"chardev\", \"mode\": 438}\n",
    };
    const char *named[] = {"../x", "/abs", "esc", "dev"};
    for (size_t i = 0; i < CT_ARRAY_LEN(bad); i++) {
        scene s = scene_new();
        char *m = xasprintf("{\"ctarget_snapshot\": \"x\", \"format\": 1, \"entries\": 1}\n%s",
                            bad[i]);
        mk_transport(s.tar, m, NULL, 0, NULL, 0);
        ctarget_error err;
        ctarget_error_init(&err);
        CU_ASSERT_NOT_EQUAL(arch_extract_safe(s.tar, s.dest, NULL, &err), CTARGET_OK);
        CU_ASSERT_PTR_NOT_NULL(strstr(err.message, named[i]));
        CU_ASSERT(dir_empty(s.dest));
        CU_ASSERT(dir_empty(s.outside));
        free(m);
        scene_free(&s);
    }
}

static void t_transport_missing_blob_from_blob_store(void)
{
    scene s = scene_new();
    char *m = manifest_for("alpha\n", "print('b')\n");
    const char *blobs[] = {"alpha\n"}; /* src/b.py's blob is not in the archive */
    mk_transport(s.tar, m, blobs, 1, NULL, 0);
    ctarget_error err;
    ctarget_error_init(&err);
    /* neither in the archive nor in a blob store: refused, naming the file */
    CU_ASSERT_EQUAL(arch_extract_safe(s.tar, s.dest, NULL, &err), CTARGET_E_NOT_FOUND);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.message, "src/b.py"));
    CU_ASSERT(dir_empty(s.dest));
    /* with the blob in the local store it is taken from there */
    char *root = path_join(s.top, "blobs");
    char sb[65];
    sha_hex("print('b')\n", sb);
    char *bp = blob_path(root, sb);
    char *bdir = xstrndup(bp, (size_t)(strrchr(bp, '/') - bp));
    mkdir_p(bdir, 0700);
    tl_write_file(bp, "print('b')\n");
    ctarget_error_init(&err);
    CU_ASSERT_EQUAL(arch_extract_safe(s.tar, s.dest, root, &err), CTARGET_OK);
    check_transport_tree(s.dest);
    free(bdir);
    free(bp);
    free(root);
    free(m);
    scene_free(&s);
}

static void t_tar_tool_reads_transport_archives(void)
{
    scene s = scene_new();
    char *m = manifest_for("alpha\n", "print('b')\n");
    const char *blobs[] = {"alpha\n", "print('b')\n"};
    mk_transport(s.tar, m, blobs, 2, NULL, 0);
    const char *argv[] = {"tar", "-tf", s.tar, NULL};
    tl_result r = tl_exec(argv, NULL, NULL);
    TL_ASSERT_EXIT(r, 0);
    CU_ASSERT(tl_contains(r.out, "manifest.jsonl\nblobs/"));
    tl_result_free(&r);
    free(m);
    scene_free(&s);
}

static void add(CU_pSuite s)
{
    TL_ADD(s, t_absolute_path_refused);
    TL_ADD(s, t_dotdot_refused);
    TL_ADD(s, t_symlink_escape_then_write_through_refused);
    TL_ADD(s, t_write_through_inner_symlink_refused);
    TL_ADD(s, t_hardlink_escape_refused);
    TL_ADD(s, t_device_and_fifo_refused);
    TL_ADD(s, t_plain_tar_round_trip);
    TL_ADD(s, t_garbage_is_not_an_archive);
    TL_ADD(s, t_transport_round_trip_plain_and_zstd);
    TL_ADD(s, t_transport_is_deterministic);
    TL_ADD(s, t_transport_blob_with_wrong_content_refused);
    TL_ADD(s, t_transport_hostile_manifest_refused);
    TL_ADD(s, t_transport_missing_blob_from_blob_store);
    TL_ADD(s, t_tar_tool_reads_transport_archives);
}

int main(int argc, char **argv)
{
    return tl_main(argc, argv, "extract", add);
}
