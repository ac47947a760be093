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
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
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

/* ---- big files, standard input, damaged archives ------------------------------------------ */

#define BIG_SIZE (20u << 20)
#define BIG_CHUNK (1u << 20)

/* Deterministic bytes that differ everywhere (a misplaced or repeated chunk shows). */
static void big_fill(unsigned char *buf, size_t len, uint64_t *state)
{
    for (size_t i = 0; i < len; i += 8) {
        uint64_t x = *state;
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        *state = x;
        memcpy(buf + i, &x, len - i < 8 ? len - i : 8);
    }
}

/* Whether path holds exactly the BIG_SIZE bytes of seed. */
static int big_matches(const char *path, uint64_t seed)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    unsigned char *want = xmalloc(BIG_CHUNK), *got = xmalloc(BIG_CHUNK);
    size_t total = 0;
    int ok = 1;
    for (;;) {
        ssize_t n = read(fd, got, BIG_CHUNK);
        if (n <= 0)
            break;
        /* read() of a regular file returns whole chunks until the end */
        big_fill(want, (size_t)n, &seed);
        ok = ok && !memcmp(want, got, (size_t)n);
        total += (size_t)n;
    }
    close(fd);
    free(want);
    free(got);
    return ok && total == BIG_SIZE;
}

/* A plain tar: small.txt, then big.bin (BIG_SIZE bytes of seed), then after.txt. */
static void mk_big_tar(const char *path, uint64_t seed)
{
    struct archive *a = archive_write_new();
    archive_write_set_format_pax_restricted(a);
    CU_ASSERT_EQUAL_FATAL(archive_write_open_filename(a, path), ARCHIVE_OK);
    const char *names[] = {"small.txt", "big.bin", "after.txt"};
    unsigned char *buf = xmalloc(BIG_CHUNK);
    for (int i = 0; i < 3; i++) {
        struct archive_entry *x = archive_entry_new();
        archive_entry_set_pathname(x, names[i]);
        archive_entry_set_perm(x, 0644);
        archive_entry_set_filetype(x, AE_IFREG);
        archive_entry_set_size(x, i == 1 ? BIG_SIZE : 6);
        CU_ASSERT_EQUAL(archive_write_header(a, x), ARCHIVE_OK);
        if (i == 1)
            for (size_t done = 0; done < BIG_SIZE; done += BIG_CHUNK) {
                big_fill(buf, BIG_CHUNK, &seed);
                CU_ASSERT_EQUAL(archive_write_data(a, buf, BIG_CHUNK), (la_ssize_t)BIG_CHUNK);
            }
        else
            archive_write_data(a, "hello\n", 6);
        archive_entry_free(x);
    }
    free(buf);
    archive_write_close(a);
    archive_write_free(a);
}

/* A transport archive of one BIG_SIZE file, big.bin; flags as for arch_writer_open. */
static void mk_big_transport(const char *top, const char *path, uint64_t seed, unsigned flags)
{
    char *src = path_join(top, "big-src.bin");
    FILE *f = fopen(src, "wb");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    unsigned char *buf = xmalloc(BIG_CHUNK), d[32];
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    EVP_DigestInit_ex(md, EVP_sha256(), NULL);
    for (size_t done = 0; done < BIG_SIZE; done += BIG_CHUNK) {
        big_fill(buf, BIG_CHUNK, &seed);
        EVP_DigestUpdate(md, buf, BIG_CHUNK);
        CU_ASSERT_EQUAL(fwrite(buf, 1, BIG_CHUNK, f), BIG_CHUNK);
    }
    fclose(f);
    EVP_DigestFinal_ex(md, d, NULL);
    EVP_MD_CTX_free(md);
    char sha[65];
    for (int i = 0; i < 32; i++)
        snprintf(sha + 2 * i, 3, "%02x", d[i]);
    char *m = xasprintf("{\"ctarget_snapshot\": \"x\", \"format\": 1, \"entries\": 1}\n"
                        "{\"path\": \"big.bin\", \"type\": \"file\", \"mode\": 420, "
                        "\"size\": %u, \"sha256\": \"%s\"}\n", BIG_SIZE, sha);
    char *name = xasprintf("blobs/%s", sha);
    f = fopen(path, "wb");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    arch_writer *w;
    ctarget_error err;
    ctarget_error_init(&err);
    CU_ASSERT_EQUAL_FATAL(arch_writer_open(to_file, f, flags, &w, &err), CTARGET_OK);
    CU_ASSERT_EQUAL(arch_write_bytes(w, "manifest.jsonl", m, strlen(m), &err), CTARGET_OK);
    CU_ASSERT_EQUAL(arch_write_file(w, name, src, &err), CTARGET_OK);
    CU_ASSERT_EQUAL(arch_writer_close(w, &err), CTARGET_OK);
    fclose(f);
    unlink(src);
    free(name);
    free(m);
    free(buf);
    free(src);
}

typedef struct ct_out {
    int status;             /* exit code, 128+signal, -1 when it could not run */
    long maxrss_kb;         /* peak resident set of the command */
    char *err;              /* its stderr */
} ct_out;

/* ctarget --workspace WS snapshot extract ARCHIVE -C DEST, with stdin from stdin_path (or
 * /dev/null); its peak RSS from wait4 (tl_exec cannot give it, nor binary stdin). */
static ct_out ct_extract(const char *top, const char *archive, const char *dest,
                         const char *stdin_path)
{
    ct_out o = {-1, 0, NULL};
    char *ws = path_join(top, "ws"), *errf = path_join(top, "stderr.txt");
    const char *argv[] = {tl_ctarget(), "--workspace", ws, "snapshot", "extract", archive,
                          "-C", dest, NULL};
    pid_t pid = fork();
    if (pid == 0) {
        int in = open(stdin_path ? stdin_path : "/dev/null", O_RDONLY);
        int out = open("/dev/null", O_WRONLY);
        int er = open(errf, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (in < 0 || out < 0 || er < 0 || dup2(in, 0) < 0 || dup2(out, 1) < 0 ||
            dup2(er, 2) < 0)
            _exit(126);
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    int st;
    struct rusage ru;
    if (pid > 0 && wait4(pid, &st, 0, &ru) == pid) {
        o.status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        o.maxrss_kb = ru.ru_maxrss;
    }
    o.err = tl_read_file(errf);
    if (!o.err)
        o.err = xstrdup("");
    free(ws);
    free(errf);
    return o;
}

/* One line, "ctarget: error: ..." */
static int one_error_line(const char *err)
{
    size_t len = strlen(err);
    return len > 16 && !strncmp(err, "ctarget: error: ", 16) && err[len - 1] == '\n' &&
           strchr(err, '\n') == err + len - 1;
}

/* A 20 MB file goes through extraction (plain tar and transport, from a file and from
 * standard input) intact, without the extractor ever holding it in memory: its peak RSS
 * grows by less than the file's size over that of extracting a tiny archive (held whole it
 * would grow by at least that).  Measured here: +0 MB for a plain tar, +4-5 MB for zstd
 * (its window); up to +13 MB under AddressSanitizer, whose quarantine keeps freed memory. */
static void t_big_file_streamed(void)
{
    scene s = scene_new();
    ent tiny[] = {{"t.txt", 'f', "tiny", 0}};
    char *small_tar = path_join(s.top, "tiny.tar"), *d0 = path_join(s.top, "d0");
    mk_tar(small_tar, tiny, 1);
    ct_out base = ct_extract(s.top, small_tar, d0, NULL);
    CU_ASSERT_EQUAL(base.status, 0);
    uint64_t seed = 0x9e3779b97f4a7c15u;
    mk_big_tar(s.tar, seed);
    char *tzst = path_join(s.top, "big.tar.zst");
    mk_big_transport(s.top, tzst, seed, CTARGET_TAR_ZSTD);
    struct {
        const char *archive, *in;
    } runs[] = {{s.tar, NULL}, {"-", s.tar}, {tzst, NULL}, {"-", tzst}};
    for (size_t i = 0; i < CT_ARRAY_LEN(runs); i++) {
        char *dest = xasprintf("%s/out%zu", s.top, i), *big = path_join(dest, "big.bin");
        ct_out o = ct_extract(s.top, runs[i].archive, dest, runs[i].in);
        if (o.status != 0)
            fprintf(stderr, "extract %s (%s): %s", runs[i].archive, runs[i].in ? runs[i].in
                    : "file", o.err);
        CU_ASSERT_EQUAL(o.status, 0);
        CU_ASSERT(big_matches(big, seed));
        long grew = o.maxrss_kb - base.maxrss_kb;
        if (grew >= (long)(BIG_SIZE / 1024))
            fprintf(stderr, "extract %s: peak RSS %ld KB, %ld KB above a tiny archive's\n",
                    runs[i].archive, o.maxrss_kb, grew);
        CU_ASSERT(grew < (long)(BIG_SIZE / 1024));
        if (i < 2) {
            char *after = path_join(dest, "after.txt"), *c = tl_read_file(after);
            CU_ASSERT_STRING_EQUAL(c ? c : "", "hello\n");
            free(c);
            free(after);
        }
        free(o.err);
        free(big);
        free(dest);
    }
    CU_ASSERT(dir_empty(s.outside));
    free(base.err);
    free(tzst);
    free(d0);
    free(small_tar);
    scene_free(&s);
}

/* A plain tar and a transport archive read from standard input ("-"). */
static void t_extract_from_stdin(void)
{
    scene s = scene_new();
    ent e[] = {{"dir", 'd', NULL, 0755}, {"dir/a.txt", 'f', "alpha", 0640},
               {"link", 'l', "dir/a.txt", 0}};
    mk_tar(s.tar, e, CT_ARRAY_LEN(e));
    ct_out o = ct_extract(s.top, "-", s.dest, s.tar);
    CU_ASSERT_EQUAL(o.status, 0);
    char *p = path_join(s.dest, "dir/a.txt"), *c = tl_read_file(p);
    CU_ASSERT_STRING_EQUAL(c ? c : "", "alpha");
    struct stat st;
    CU_ASSERT_EQUAL(stat(p, &st), 0);
    CU_ASSERT_EQUAL(st.st_mode & 0777, 0640);
    free(c), free(p), free(o.err);
    char *m = manifest_for("alpha\n", "print('b')\n");
    const char *blobs[] = {"alpha\n", "print('b')\n"};
    char *tp = path_join(s.top, "t.tar"), *d2 = path_join(s.top, "d2");
    mk_transport(tp, m, blobs, 2, NULL, 0);
    o = ct_extract(s.top, "-", d2, tp);
    CU_ASSERT_EQUAL(o.status, 0);
    check_transport_tree(d2);
    free(o.err);
    /* a hostile entry arriving on standard input is refused when it comes; what came
     * before it may be there, nothing is outside */
    ent bad[] = {{"ok.txt", 'f', "fine", 0}, {"../outside/x", 'f', "pwned", 0}};
    char *d3 = path_join(s.top, "d3");
    mk_tar(s.tar, bad, 2);
    o = ct_extract(s.top, "-", d3, s.tar);
    CU_ASSERT_NOT_EQUAL(o.status, 0);
    CU_ASSERT(one_error_line(o.err));
    CU_ASSERT(tl_contains(o.err, "../outside/x"));
    CU_ASSERT(dir_empty(s.outside));
    free(o.err);
    /* nothing at all on standard input */
    char *d4 = path_join(s.top, "d4");
    o = ct_extract(s.top, "-", d4, NULL);
    CU_ASSERT_NOT_EQUAL(o.status, 0);
    CU_ASSERT(one_error_line(o.err));
    CU_ASSERT(dir_empty(d4));
    free(o.err);
    free(d4), free(d3), free(d2), free(tp), free(m);
    scene_free(&s);
}

/* The first `keep` bytes of from into to. */
static void truncate_copy(const char *from, const char *to, off_t keep)
{
    int in = open(from, O_RDONLY), out = open(to, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    CU_ASSERT_FATAL(in >= 0 && out >= 0);
    char buf[65536];
    while (keep > 0) {
        ssize_t n = read(in, buf, keep < (off_t)sizeof buf ? (size_t)keep : sizeof buf);
        if (n <= 0)
            break;
        CU_ASSERT_EQUAL(write(out, buf, (size_t)n), n);
        keep -= n;
    }
    close(in);
    close(out);
}

static off_t size_of(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 ? st.st_size : -1;
}

/* Truncated and corrupt archives: one clear line, a non-zero exit, and nothing written
 * beyond what tarstream.h promises (a file: dest untouched; a transport archive: no file
 * before every blob is verified, no staging left; standard input: entries before the
 * damage, never a file cut short). */
static void t_truncated_and_corrupt_archives(void)
{
    scene s = scene_new();
    uint64_t seed = 42;
    mk_big_tar(s.tar, seed);
    char *tzst = path_join(s.top, "big.tar.zst"), *ttar = path_join(s.top, "big-t.tar");
    mk_big_transport(s.top, tzst, seed, CTARGET_TAR_ZSTD);
    mk_big_transport(s.top, ttar, seed, 0);
    char *cut = path_join(s.top, "cut.tar");
    struct {
        const char *from;
        off_t keep;           /* bytes kept */
        int via_stdin;
    } cases[] = {
        {s.tar, 1 << 20, 0},                  /* in big.bin's data */
        {s.tar, 1024 + 100, 0},               /* in big.bin's header */
        {s.tar, 1 << 20, 1},
        {ttar, 3 << 20, 0},                   /* in the blob */
        {ttar, 3 << 20, 1},
        {tzst, 0, 0},                         /* half of the compressed stream */
        {tzst, 0, 1},
    };
    for (size_t i = 0; i < CT_ARRAY_LEN(cases); i++) {
        off_t keep = cases[i].keep ? cases[i].keep : size_of(cases[i].from) / 2;
        truncate_copy(cases[i].from, cut, keep);
        char *dest = xasprintf("%s/cut%zu", s.top, i);
        ct_out o = cases[i].via_stdin ? ct_extract(s.top, "-", dest, cut)
                                      : ct_extract(s.top, cut, dest, NULL);
        if (o.status == 0 || !one_error_line(o.err))
            fprintf(stderr, "truncated case %zu: exit %d, stderr: %s", i, o.status, o.err);
        CU_ASSERT_NOT_EQUAL(o.status, 0);
        CU_ASSERT(one_error_line(o.err));
        char *big = path_join(dest, "big.bin");
        CU_ASSERT_NOT_EQUAL(access(big, F_OK), 0);   /* never cut short */
        if (cases[i].from == s.tar && cases[i].via_stdin) {
            /* streamed: the entry before the damage is there */
            char *small = path_join(dest, "small.txt"), *c = tl_read_file(small);
            CU_ASSERT_STRING_EQUAL(c ? c : "", "hello\n");
            free(c);
            free(small);
            char *after = path_join(dest, "after.txt");
            CU_ASSERT_NOT_EQUAL(access(after, F_OK), 0);
            free(after);
        } else {
            CU_ASSERT(dir_empty(dest));   /* no staging directory left either */
        }
        CU_ASSERT(dir_empty(s.outside));
        free(big);
        free(o.err);
        free(dest);
    }
    /* corrupt: a flipped byte in big.bin's header (its checksum no longer matches), and in
     * a transport archive's blob (its sha256 no longer matches) */
    struct {
        const char *from;
        off_t at;
        const char *says;
    } flips[] = {{s.tar, 1024 + 10, "in.tar"}, {ttar, 4 << 20, "sha256"}};
    for (size_t i = 0; i < CT_ARRAY_LEN(flips); i++) {
        truncate_copy(flips[i].from, cut, size_of(flips[i].from));
        int fd = open(cut, O_RDWR);
        unsigned char b = 0;
        CU_ASSERT_EQUAL(pread(fd, &b, 1, flips[i].at), 1);
        b ^= 0x5a;
        CU_ASSERT_EQUAL(pwrite(fd, &b, 1, flips[i].at), 1);
        close(fd);
        char *dest = xasprintf("%s/flip%zu", s.top, i);
        ct_out o = ct_extract(s.top, cut, dest, NULL);
        if (o.status == 0 || !one_error_line(o.err))
            fprintf(stderr, "corrupt case %zu: exit %d, stderr: %s", i, o.status, o.err);
        CU_ASSERT_NOT_EQUAL(o.status, 0);
        CU_ASSERT(one_error_line(o.err));
        CU_ASSERT(dir_empty(dest));
        CU_ASSERT(dir_empty(s.outside));
        free(o.err);
        free(dest);
    }
    free(cut), free(ttar), free(tzst);
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
    TL_ADD(s, t_big_file_streamed);
    TL_ADD(s, t_extract_from_stdin);
    TL_ADD(s, t_truncated_and_corrupt_archives);
}

int main(int argc, char **argv)
{
    return tl_main(argc, argv, "extract", add);
}
