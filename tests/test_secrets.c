/* Secrets never leak.  A distinctive secret is given every way the CLI accepts
 * (--password-stdin, --set password=@FILE, --set password=literal, env:VAR, file:PATH), then
 * every command that could show it runs with and without --output json and -v -v, plus
 * failing operations whose messages would naturally quote it.  The value must never appear
 * on stdout or stderr, and in the workspace only inside secrets.db (0600); references are
 * stored as references, resolved at each use, and never copied into the secret store. */
#define _GNU_SOURCE
#include "testlib.h"

#include <dirent.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define SECRET "S3cr3t-Val-7f2a9"
#define SECRET2 "Other-S3cret-b81c4"
#define MASK "********"

static char **pool;
static size_t n_pool;

static void pool_free(void)
{
    for (size_t i = 0; i < n_pool; i++)
        free(pool[i]);
    free(pool);
}

static const char *fmt(const char *f, ...) __attribute__((format(printf, 1, 2)));
static const char *fmt(const char *f, ...)
{
    va_list ap;
    va_start(ap, f);
    char *s;
    if (vasprintf(&s, f, ap) < 0)
        abort();
    va_end(ap);
    if (!pool)
        atexit(pool_free);
    pool = realloc(pool, (n_pool + 1) * sizeof *pool);
    pool[n_pool++] = s;
    return s;
}

static const char *new_ws(void)
{
    char *d = tl_tmpdir("sec");
    const char *w = fmt("%s/ws", d);
    free(d);
    return w;
}

static const char *scratch(const char *tag)
{
    char *d = tl_tmpdir(tag);
    const char *s = fmt("%s", d);
    free(d);
    return s;
}

/* Neither output of a command may carry a secret. */
static void assert_silent(const tl_result *r, const char *secret, const char *what)
{
    int leaked = tl_contains(r->out, secret) || tl_contains(r->err, secret);
    if (leaked) {
        fprintf(stdout, "secret leaked by: %s\n", what);
        tl_dump("leak", r);
    }
    CU_ASSERT(!leaked);
}

/* Run ctarget and check its output for both secrets. */
static tl_result run(const char *ws, const char *in, const char *const env[],
                     const char *const args[])
{
    tl_result r = tl_ctarget_run(ws, in, env, args);
    char what[512] = "";
    for (size_t i = 0; args[i]; i++)
        snprintf(what + strlen(what), sizeof what - strlen(what), "%s ", args[i]);
    assert_silent(&r, SECRET, what);
    assert_silent(&r, SECRET2, what);
    return r;
}
#define RUN(ws, ...) run((ws), NULL, NULL, (const char *const[]){__VA_ARGS__, NULL})
#define RUN_ENV(ws, env, ...) run((ws), NULL, (env), (const char *const[]){__VA_ARGS__, NULL})

#define ASSERT_HAS(text, needle)                                                          \
    do {                                                                                  \
        if (!tl_contains((text), (needle)))                                               \
            fprintf(stdout, "expected '%s' in:\n%s\n", (needle), (text) ? (text) : "");   \
        CU_ASSERT(tl_contains((text), (needle)));                                         \
    } while (0)

/* Every file under dir holding needle, except those named `allowed` (NULL: none allowed).
 * Returns the number of forbidden hits, printing them. */
static int forbidden_hits(const char *dir, const char *needle, const char *allowed)
{
    DIR *d = opendir(dir);
    if (!d)
        return 0;
    int hits = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
            continue;
        char *p = tl_path(dir, de->d_name);
        struct stat st;
        if (lstat(p, &st) == 0) {
            if (S_ISDIR(st.st_mode)) {
                hits += forbidden_hits(p, needle, allowed);
            } else if (S_ISREG(st.st_mode)) {
                FILE *f = fopen(p, "rb");
                if (f) {
                    char *buf = malloc((size_t)st.st_size + 1);
                    size_t n = fread(buf, 1, (size_t)st.st_size, f);
                    fclose(f);
                    if (n >= strlen(needle) && memmem(buf, n, needle, strlen(needle)) &&
                        !(allowed && !strcmp(de->d_name, allowed))) {
                        fprintf(stdout, "'%s' found in %s\n", needle, p);
                        hits++;
                    }
                    free(buf);
                }
            }
        }
        free(p);
    }
    closedir(d);
    return hits;
}

static int mode_of(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (int)(st.st_mode & 07777) : -1;
}

/* The value is stored: in secrets.db (0600) and nowhere else in the workspace. */
static void assert_stored_only_in_secret_store(const char *ws, const char *secret)
{
    CU_ASSERT_EQUAL(forbidden_hits(ws, secret, "secrets.db"), 0);
    char *hit = tl_tree_grep(ws, secret, strlen(secret));
    CU_ASSERT_PTR_NOT_NULL(hit);
    if (hit) {
        const char *base = strrchr(hit, '/');
        CU_ASSERT_STRING_EQUAL(base ? base + 1 : hit, "secrets.db");
    }
    free(hit);
    CU_ASSERT_EQUAL(mode_of(fmt("%s/secrets.db", ws)), 0600);
    CU_ASSERT_EQUAL(mode_of(fmt("%s/workspace.db", ws)), 0600);
    CU_ASSERT_EQUAL(mode_of(ws), 0700);
}

/* The value is nowhere in the workspace at all. */
static void assert_absent(const char *ws, const char *secret)
{
    char *hit = tl_tree_grep(ws, secret, strlen(secret));
    if (hit)
        fprintf(stdout, "'%s' found in %s\n", secret, hit);
    CU_ASSERT_PTR_NULL(hit);
    free(hit);
}

static json_t *show_json(const char *ws, const char *name, const char *const env[])
{
    tl_result r = RUN_ENV(ws, env, "compute", "show", name, "--output", "json");
    TL_ASSERT_EXIT(r, 0);
    json_t *j = tl_json(&r);
    tl_result_free(&r);
    return j ? j : json_object();
}

static const char *cfg(json_t *shown, const char *key)
{
    const char *v = json_string_value(json_object_get(json_object_get(shown, "config"), key));
    return v ? v : "(unset)";
}

/* Everything a user may run against a target, each with and without JSON and -v -v: no
 * output may contain a secret (run() checks). */
static void exercise_everything(const char *ws, const char *name, const char *type,
                                const char *const env[])
{
    static const char *const modes[][3] = {
        {NULL}, {"--output", "json", NULL}, {"-v", "-v", NULL}, {"-v", "-v", "--output"}};
    for (size_t m = 0; m < 4; m++) {
        const char *extra[4] = {NULL};
        size_t ne = 0;
        for (size_t k = 0; k < 3 && modes[m][k]; k++)
            extra[ne++] = modes[m][k];
        if (m == 3)
            extra[ne++] = "json";
        const char *cmds[][4] = {{"compute", "list", NULL},
                                 {"compute", "show", name, NULL},
                                 {"compute", "status", name, NULL},
                                 {"compute", "nodes", name, NULL},
                                 {"compute", "update", name, NULL},
                                 {"compute", "help", type, NULL},
                                 {"compute", "--help", NULL},
                                 {"plugins", NULL}};
        for (size_t c = 0; c < sizeof cmds / sizeof *cmds; c++) {
            const char *argv[16];
            size_t n = 0;
            for (size_t k = 0; k < ne; k++)
                argv[n++] = extra[k];
            for (size_t k = 0; cmds[c][k]; k++)
                argv[n++] = cmds[c][k];
            argv[n] = NULL;
            tl_result r = run(ws, NULL, env, argv);
            tl_result_free(&r);
        }
        /* an update that reaches the plugin (or is refused by the type), and one that
         * fails validation */
        const char *sets[] = {!strcmp(type, "testcloud") ? "min_nodes=1" : "username=ml",
                              "no_such_key=1"};
        for (size_t u = 0; u < 2; u++) {
            const char *argv[16];
            size_t n = 0;
            for (size_t k = 0; k < ne; k++)
                argv[n++] = extra[k];
            argv[n++] = "compute";
            argv[n++] = "update";
            argv[n++] = name;
            argv[n++] = "--set";
            argv[n++] = sets[u];
            argv[n] = NULL;
            tl_result r = run(ws, NULL, env, argv);
            if (u == 1) /* testssh has no update at all: that is said first */
                CU_ASSERT_EQUAL(r.status, !strcmp(type, "testcloud") ? 3 : 6);
            tl_result_free(&r);
        }
    }
}

static const char *key_file(void)
{
    const char *k = fmt("%s/id_test", scratch("key"));
    tl_write_file(k, "not a key\n");
    return k;
}

/* ---- each way to give a secret ---------------------------------------------------------- */

static void t_password_stdin_stored_masked_never_printed(void)
{
    const char *ws = new_ws();
    const char *const args[] = {"compute", "attach", "vm-stdin", "--type", "testssh", "--set",
                                "address=10.0.0.1", "--set", "username=ml", "--password-stdin",
                                "-v", "-v", NULL};
    tl_result r = run(ws, SECRET "\n", NULL, args);
    TL_ASSERT_EXIT(r, 0);
    ASSERT_HAS(r.out, MASK);
    CU_ASSERT(!tl_contains(r.err, "warning: secret")); /* stdin is the recommended way */
    tl_result_free(&r);
    json_t *s = show_json(ws, "vm-stdin", NULL);
    CU_ASSERT_STRING_EQUAL(cfg(s, "password"), MASK);
    json_decref(s);
    r = RUN(ws, "compute", "show", "vm-stdin");
    ASSERT_HAS(r.out, MASK);
    tl_result_free(&r);
    exercise_everything(ws, "vm-stdin", "testssh", NULL);
    assert_stored_only_in_secret_store(ws, SECRET);
}

static void t_set_at_file_stored_masked_never_printed(void)
{
    const char *ws = new_ws(), *cloud = scratch("cloud");
    const char *f = fmt("%s/pw.txt", scratch("pwfile"));
    tl_write_file(f, SECRET "\n");
    tl_result r = RUN(ws, "compute", "create", "cl-atfile", "--type", "testcloud", "--set",
                      fmt("cloud_dir=%s", cloud), "--set", "vm_size=D2", "--set",
                      "max_nodes=2", "--set", fmt("admin_password=@%s", f), "--wait",
                      "--output", "json");
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    json_t *s = show_json(ws, "cl-atfile", NULL);
    CU_ASSERT_STRING_EQUAL(cfg(s, "admin_password"), MASK);
    json_decref(s);
    exercise_everything(ws, "cl-atfile", "testcloud", NULL);
    assert_stored_only_in_secret_store(ws, SECRET);
    /* nothing of it in the simulated cloud either: the plugin got it only to check it */
    assert_absent(cloud, SECRET);
}

static void t_set_literal_warns_stores_masks_never_prints(void)
{
    const char *ws = new_ws();
    tl_result r = RUN(ws, "compute", "attach", "vm-literal", "--type", "testssh", "--set",
                      "address=10.0.0.2", "--set", "username=ml", "--set",
                      "password=" SECRET, "-v", "-v");
    TL_ASSERT_EXIT(r, 0);
    ASSERT_HAS(r.err, "warning: secret 'password'"); /* visible in ps and shell history */
    tl_result_free(&r);
    json_t *s = show_json(ws, "vm-literal", NULL);
    CU_ASSERT_STRING_EQUAL(cfg(s, "password"), MASK);
    json_decref(s);
    exercise_everything(ws, "vm-literal", "testssh", NULL);
    assert_stored_only_in_secret_store(ws, SECRET);
}

static void t_env_reference_shown_as_reference_and_never_stored(void)
{
    const char *ws = new_ws();
    const char *const env[] = {"CT_TEST_PW=" SECRET, NULL};
    tl_result r = RUN_ENV(ws, env, "compute", "attach", "vm-env", "--type", "testssh", "--set",
                          "address=10.0.0.3", "--set", "username=ml", "--set",
                          "password=env:CT_TEST_PW");
    TL_ASSERT_EXIT(r, 0);
    CU_ASSERT(!tl_contains(r.err, "warning: secret")); /* a reference is not a secret */
    tl_result_free(&r);
    json_t *s = show_json(ws, "vm-env", env);
    CU_ASSERT_STRING_EQUAL(cfg(s, "password"), "env:CT_TEST_PW");
    json_decref(s);
    exercise_everything(ws, "vm-env", "testssh", env);
    assert_absent(ws, SECRET);
}

static void t_file_reference_shown_as_reference_and_never_stored(void)
{
    const char *ws = new_ws();
    const char *f = fmt("%s/pw", scratch("ref"));
    tl_write_file(f, SECRET "\n");
    tl_result r = RUN(ws, "compute", "attach", "vm-file", "--type", "testssh", "--set",
                      "address=10.0.0.4", "--set", "username=ml", "--set",
                      fmt("password=file:%s", f));
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    json_t *s = show_json(ws, "vm-file", NULL);
    CU_ASSERT_STRING_EQUAL(cfg(s, "password"), fmt("file:%s", f));
    json_decref(s);
    exercise_everything(ws, "vm-file", "testssh", NULL);
    assert_absent(ws, SECRET);
    /* a reference to a file that is not there is refused at once, naming the setting */
    r = RUN(ws, "compute", "attach", "vm-file2", "--type", "testssh", "--set",
            "address=10.0.0.5", "--set", "username=ml", "--set",
            fmt("password=file:%s.missing", f));
    TL_ASSERT_EXIT(r, 3);
    ASSERT_HAS(r.err, "password");
    tl_result_free(&r);
    /* and an env: reference must name a variable */
    r = RUN(ws, "compute", "attach", "vm-file2", "--type", "testssh", "--set",
            "address=10.0.0.5", "--set", "username=ml", "--set", "password=env:1-bad");
    TL_ASSERT_EXIT(r, 3);
    tl_result_free(&r);
}

/* ---- references resolved at use --------------------------------------------------------- */

static const char *login_of(const char *ws, const char *name, const char *const env[])
{
    tl_result r = RUN_ENV(ws, env, "compute", "status", name, "--output", "json");
    TL_ASSERT_EXIT(r, 0);
    json_t *j = tl_json(&r);
    const char *v = json_string_value(json_object_get(
        json_object_get(json_object_get(j, "live"), "details"), "login"));
    const char *out = fmt("%s", v ? v : "(none)");
    json_decref(j);
    tl_result_free(&r);
    return out;
}

static void t_references_resolved_at_each_use(void)
{
    const char *ws = new_ws();
    /* the simulated host accepts "hunter2-ok"; that is configuration, not the secret */
    const char *const good[] = {"CT_PW=hunter2-ok", NULL};
    const char *const bad[] = {"CT_PW=" SECRET, NULL};
    const char *const unset[] = {"CT_PW=", NULL};
    /* at attach: the value the variable has now; a variable that is not set is named */
    tl_result r = RUN_ENV(ws, unset, "compute", "attach", "vm-ref", "--type", "testssh", "--set",
                          "address=10.0.1.1", "--set", "username=ml", "--set",
                          "password=env:CT_PW", "--set", "expected_password=hunter2-ok");
    TL_ASSERT_EXIT(r, 7);
    ASSERT_HAS(r.err, "CT_PW");
    ASSERT_HAS(r.err, "not set");
    tl_result_free(&r);
    r = RUN_ENV(ws, bad, "compute", "attach", "vm-ref", "--type", "testssh", "--set",
                          "address=10.0.1.1", "--set", "username=ml", "--set",
                          "password=env:CT_PW", "--set", "expected_password=hunter2-ok");
    TL_ASSERT_EXIT(r, 7);
    ASSERT_HAS(r.err, "login as ml failed");
    ASSERT_HAS(r.err, MASK); /* the plugin quoted the password; the core redacted it */
    tl_result_free(&r);
    r = RUN_ENV(ws, good, "compute", "attach", "vm-ref", "--type", "testssh", "--set",
                "address=10.0.1.1", "--set", "username=ml", "--set", "password=env:CT_PW",
                "--set", "expected_password=hunter2-ok");
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    /* later uses read the variable again */
    CU_ASSERT_STRING_EQUAL(login_of(ws, "vm-ref", good), "accepted");
    CU_ASSERT_STRING_EQUAL(login_of(ws, "vm-ref", bad), "rejected");
    CU_ASSERT_STRING_EQUAL(login_of(ws, "vm-ref", unset), "password unavailable");
    CU_ASSERT_STRING_EQUAL(login_of(ws, "vm-ref", good), "accepted");
    /* the same for file: references, following the file's current content */
    const char *f = fmt("%s/pw", scratch("reffile"));
    tl_write_file(f, "hunter2-ok\n");
    r = RUN(ws, "compute", "attach", "vm-ref2", "--type", "testssh", "--set",
            "address=10.0.1.2", "--set", "username=ml", "--set", fmt("password=file:%s", f),
            "--set", "expected_password=hunter2-ok");
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    CU_ASSERT_STRING_EQUAL(login_of(ws, "vm-ref2", NULL), "accepted");
    tl_write_file(f, SECRET "\n");
    CU_ASSERT_STRING_EQUAL(login_of(ws, "vm-ref2", NULL), "rejected");
    unlink(f);
    CU_ASSERT_STRING_EQUAL(login_of(ws, "vm-ref2", NULL), "password unavailable");
    /* a stored secret is what was given, whatever the environment says later */
    r = run(ws, "hunter2-ok\n", NULL,
            (const char *const[]){"compute", "attach", "vm-ref3", "--type", "testssh", "--set",
                                  "address=10.0.1.3", "--set", "username=ml",
                                  "--password-stdin", "--set", "expected_password=hunter2-ok",
                                  NULL});
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    CU_ASSERT_STRING_EQUAL(login_of(ws, "vm-ref3", bad), "accepted");
    assert_absent(ws, SECRET);
}

/* ---- failures whose messages would naturally quote the secret --------------------------- */

static void t_rejected_password_redacted_in_errors_and_logs(void)
{
    const char *ws = new_ws();
    for (int verbose = 0; verbose < 2; verbose++) {
        const char *args[] = {"compute", "attach", "vm-rej", "--type", "testssh", "--set",
                              "address=10.0.2.1", "--set", "username=ml", "--password-stdin",
                              "--set", "expected_password=something-else",
                              verbose ? "-v" : "--output", verbose ? "-v" : "json", NULL};
        tl_result r = run(ws, SECRET "\n", NULL, args);
        TL_ASSERT_EXIT(r, 7);
        ASSERT_HAS(r.err, "rejected");
        ASSERT_HAS(r.err, MASK);
        if (verbose) /* the plugin's own warning line went through the redactor too */
            ASSERT_HAS(r.err, "rejected password was " MASK);
        tl_result_free(&r);
    }
    tl_result r = RUN(ws, "compute", "list", "--output", "json");
    CU_ASSERT(!tl_contains(r.out, "vm-rej")); /* a failed attach records nothing */
    tl_result_free(&r);
    assert_absent(ws, SECRET);
}

static void t_short_admin_password_refused_without_quoting_it(void)
{
    const char *ws = new_ws(), *cloud = scratch("cloud");
    const char *shortpw = "Zq9#x7"; /* under testcloud's 8 characters */
    for (int verbose = 0; verbose < 2; verbose++) {
        const char *args[] = {"compute", "create", "cl-short", "--type", "testcloud",
                              "--set", fmt("cloud_dir=%s", cloud), "--set", "vm_size=D2",
                              "--set", "max_nodes=2", "--set",
                              fmt("admin_password=%s", shortpw),
                              verbose ? "-v" : "--output", verbose ? "-v" : "json", NULL};
        tl_result r = run(ws, NULL, NULL, args);
        TL_ASSERT_EXIT(r, 3);
        ASSERT_HAS(r.err, "admin_password");
        assert_silent(&r, shortpw, "create with a short admin_password");
        tl_result_free(&r);
    }
    /* created-then-refused: the record and its secret row are gone, value included */
    assert_absent(ws, shortpw);
    assert_absent(cloud, shortpw);
    tl_result r = RUN(ws, "compute", "show", "cl-short");
    TL_ASSERT_EXIT(r, 4);
    tl_result_free(&r);
}

static void t_refused_configurations_leave_no_secret_behind(void)
{
    const char *ws = new_ws();
    const char *key = key_file();
    /* existing target holding the address, so the next attach collides */
    tl_result r = RUN(ws, "compute", "attach", "holder", "--type", "testssh", "--set",
                      "address=10.0.3.1", "--set", "username=ml", "--set",
                      fmt("private_key_file=%s", key));
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    const char *const cases[][14] = {
        {"compute", "attach", "dup-host", "--type", "testssh", "--set", "address=10.0.3.1",
         "--set", "username=ml", "--password-stdin", NULL},                 /* exit 5 */
        {"compute", "attach", "holder", "--type", "testssh", "--set", "address=10.0.3.2",
         "--set", "username=ml", "--password-stdin", NULL},                 /* exit 5 */
        {"compute", "attach", "bad-key", "--type", "testssh", "--set", "address=10.0.3.3",
         "--set", "usernam=ml", "--password-stdin", NULL},                  /* exit 3 */
        {"compute", "attach", "both", "--type", "testssh", "--set", "address=10.0.3.4",
         "--set", "username=ml", "--set", fmt("private_key_file=%s", key), "--password-stdin",
         NULL},                                                             /* exit 3 */
        {"compute", "attach", "gone", "--type", "testssh", "--set", "address=x.invalid",
         "--set", "username=ml", "--password-stdin", NULL},                 /* exit 8 */
    };
    const int want[] = {5, 5, 3, 3, 8};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        r = run(ws, SECRET "\n", NULL, cases[i]);
        TL_ASSERT_EXIT(r, want[i]);
        tl_result_free(&r);
    }
    assert_absent(ws, SECRET);
    /* the holder's own record is untouched */
    json_t *s = show_json(ws, "holder", NULL);
    CU_ASSERT_STRING_EQUAL(cfg(s, "address"), "10.0.3.1");
    CU_ASSERT_STRING_EQUAL(cfg(s, "password"), "(unset)");
    json_decref(s);
}

/* ---- lifetime of stored secrets --------------------------------------------------------- */

static void t_update_replaces_and_reference_drops_stored_value(void)
{
    const char *ws = new_ws(), *cloud = scratch("cloud");
    tl_result r = run(ws, SECRET, NULL,
                      (const char *const[]){"compute", "create", "cl-upd", "--type",
                                            "testcloud", "--set", fmt("cloud_dir=%s", cloud),
                                            "--set", "vm_size=D2", "--set", "max_nodes=2",
                                            "--set", "admin_password=@-", NULL});
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    assert_stored_only_in_secret_store(ws, SECRET);
    /* a new value replaces the old one, which is wiped from the file */
    r = run(ws, SECRET2, NULL,
            (const char *const[]){"compute", "update", "cl-upd", "--set", "admin_password=@-",
                                  "-v", "-v", NULL});
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    assert_stored_only_in_secret_store(ws, SECRET2);
    assert_absent(ws, SECRET);
    /* switching to a reference drops the stored value */
    r = RUN(ws, "compute", "update", "cl-upd", "--set", "admin_password=env:CL_PW");
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    assert_absent(ws, SECRET2);
    json_t *s = show_json(ws, "cl-upd", NULL);
    CU_ASSERT_STRING_EQUAL(cfg(s, "admin_password"), "env:CL_PW");
    json_decref(s);
    /* unsetting it removes it altogether */
    r = run(ws, SECRET, NULL,
            (const char *const[]){"compute", "update", "cl-upd", "--set", "admin_password=@-",
                                  NULL});
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    assert_stored_only_in_secret_store(ws, SECRET);
    r = RUN(ws, "compute", "update", "cl-upd", "--set", "admin_password=");
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    assert_absent(ws, SECRET);
    s = show_json(ws, "cl-upd", NULL);
    CU_ASSERT_STRING_EQUAL(cfg(s, "admin_password"), "(unset)");
    json_decref(s);
}

static void t_detach_and_delete_remove_stored_secrets(void)
{
    const char *ws = new_ws(), *cloud = scratch("cloud");
    tl_result r = run(ws, SECRET "\n", NULL,
                      (const char *const[]){"compute", "attach", "vm-det", "--type", "testssh",
                                            "--set", "address=10.0.4.1", "--set", "username=ml",
                                            "--password-stdin", NULL});
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    r = run(ws, SECRET2, NULL,
            (const char *const[]){"compute", "create", "cl-del", "--type", "testcloud", "--set",
                                  fmt("cloud_dir=%s", cloud), "--set", "vm_size=D2", "--set",
                                  "max_nodes=2", "--set", "admin_password=@-", NULL});
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    assert_stored_only_in_secret_store(ws, SECRET);
    assert_stored_only_in_secret_store(ws, SECRET2);
    r = RUN(ws, "compute", "detach", "vm-det");
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    assert_absent(ws, SECRET);
    assert_stored_only_in_secret_store(ws, SECRET2);
    r = RUN(ws, "compute", "delete", "cl-del", "--yes");
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    assert_absent(ws, SECRET2);
    /* a new target under an old name does not inherit a secret */
    r = RUN(ws, "compute", "attach", "vm-det", "--type", "testssh", "--set",
            "address=10.0.4.1", "--set", "username=ml", "--set",
            fmt("private_key_file=%s", key_file()));
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    json_t *s = show_json(ws, "vm-det", NULL);
    CU_ASSERT_STRING_EQUAL(cfg(s, "password"), "(unset)");
    json_decref(s);
}

static void t_secret_files_private_even_with_umask_000(void)
{
    const char *ws = new_ws();
    mode_t old = umask(0);
    tl_result r = run(ws, SECRET "\n", NULL,
                      (const char *const[]){"compute", "attach", "vm-umask", "--type",
                                            "testssh", "--set", "address=10.0.5.1", "--set",
                                            "username=ml", "--password-stdin", NULL});
    umask(old);
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    assert_stored_only_in_secret_store(ws, SECRET);
    DIR *d = opendir(ws);
    CU_ASSERT_PTR_NOT_NULL_FATAL(d);
    struct dirent *de;
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.')
            continue;
        const char *p = fmt("%s/%s", ws, de->d_name);
        struct stat st;
        if (lstat(p, &st) == 0 && S_ISREG(st.st_mode)) {
            if ((st.st_mode & 077) != 0)
                fprintf(stdout, "%s has mode %o\n", p, (unsigned)(st.st_mode & 0777));
            CU_ASSERT_EQUAL(st.st_mode & 077, 0);
        }
    }
    closedir(d);
}


static void t_secret_in_config_file_stored_masked_never_printed(void)
{
    const char *ws = new_ws(), *cloud = scratch("cloud");
    const char *f = fmt("%s/cluster.json", scratch("cfg"));
    tl_write_file(f, fmt("{\"cloud_dir\": \"%s\", \"vm_size\": \"D2\", \"max_nodes\": 2,\n"
                         " \"admin_password\": \"%s\"}\n", cloud, SECRET));
    tl_result r = RUN(ws, "compute", "create", "cl-cfg", "--type", "testcloud", "--config", f,
                      "--wait", "-v", "-v");
    TL_ASSERT_EXIT(r, 0);
    CU_ASSERT(!tl_contains(r.err, "warning: secret")); /* not on the command line */
    tl_result_free(&r);
    json_t *s = show_json(ws, "cl-cfg", NULL);
    CU_ASSERT_STRING_EQUAL(cfg(s, "admin_password"), MASK);
    json_decref(s);
    exercise_everything(ws, "cl-cfg", "testcloud", NULL);
    assert_stored_only_in_secret_store(ws, SECRET);
    /* a config file whose other settings are wrong: refused, the secret neither echoed
     * nor kept */
    const char *ws2 = new_ws();
    const char *bad = fmt("%s/bad.json", scratch("cfgbad"));
    tl_write_file(bad, fmt("{\"cloud_dir\": \"%s\", \"vm_size\": \"D2\", \"max_nodes\": \"x\",\n"
                           " \"admin_password\": \"%s\"}\n", cloud, SECRET));
    r = RUN(ws2, "compute", "create", "cl-cfg", "--type", "testcloud", "--config", bad,
            "-v", "-v");
    TL_ASSERT_EXIT(r, 3);
    tl_result_free(&r);
    assert_absent(ws2, SECRET);
    /* JSON syntax errors at the secret (unquoted, unterminated, a control character in it)
     * say where, never what: the parser's "near '<token>'" would quote the value */
    const char *broken[] = {
        "{\"admin_password\": \"" SECRET "\" \"x\": 1}\n",
        "{\"admin_password\": " SECRET "}\n",
        "{\"admin_password\": \"" SECRET "\n",
        "{\"admin_password\": \"" SECRET "\x01\"}\n",
        "{\"admin_password\": \"" SECRET "\\q\"}\n",
    };
    for (size_t i = 0; i < sizeof broken / sizeof *broken; i++) {
        tl_write_file(bad, broken[i]);
        r = RUN(ws2, "compute", "create", "cl-cfg", "--type", "testcloud", "--config", bad);
        TL_ASSERT_EXIT(r, 3);
        ASSERT_HAS(r.err, "line 1");
        tl_result_free(&r);
    }
    assert_absent(ws2, SECRET);
}

/* An empty secret file must not wipe the stored secret (it is an error, not an unset). */
static void t_empty_secret_file_refused_stored_value_kept(void)
{
    const char *ws = new_ws();
    tl_result r = run(ws, SECRET "\n", NULL,
                      (const char *const[]){"compute", "attach", "vm-keep", "--type", "testssh",
                                            "--set", "address=10.0.6.1", "--set", "username=ml",
                                            "--password-stdin", NULL});
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    const char *f = fmt("%s/empty", scratch("empty"));
    tl_write_file(f, "");
    r = RUN(ws, "compute", "attach", "vm-empty", "--type", "testssh", "--set",
            "address=10.0.6.2", "--set", "username=ml", "--set", fmt("password=@%s", f));
    TL_ASSERT_EXIT(r, 3);
    ASSERT_HAS(r.err, "empty");
    tl_result_free(&r);
    r = run(ws, "", NULL,
            (const char *const[]){"compute", "attach", "vm-empty", "--type", "testssh", "--set",
                                  "address=10.0.6.2", "--set", "username=ml",
                                  "--password-stdin", NULL});
    TL_ASSERT_EXIT(r, 3);
    tl_result_free(&r);
    assert_stored_only_in_secret_store(ws, SECRET);
}

static void add(CU_pSuite s)
{
    TL_ADD(s, t_password_stdin_stored_masked_never_printed);
    TL_ADD(s, t_set_at_file_stored_masked_never_printed);
    TL_ADD(s, t_set_literal_warns_stores_masks_never_prints);
    TL_ADD(s, t_env_reference_shown_as_reference_and_never_stored);
    TL_ADD(s, t_file_reference_shown_as_reference_and_never_stored);
    TL_ADD(s, t_references_resolved_at_each_use);
    TL_ADD(s, t_rejected_password_redacted_in_errors_and_logs);
    TL_ADD(s, t_short_admin_password_refused_without_quoting_it);
    TL_ADD(s, t_refused_configurations_leave_no_secret_behind);
    TL_ADD(s, t_update_replaces_and_reference_drops_stored_value);
    TL_ADD(s, t_detach_and_delete_remove_stored_secrets);
    TL_ADD(s, t_secret_files_private_even_with_umask_000);
    TL_ADD(s, t_secret_in_config_file_stored_masked_never_printed);
    TL_ADD(s, t_empty_secret_file_refused_stored_value_kept);
}

int main(int argc, char **argv)
{
    return tl_main(argc, argv, "secrets", add);
}
