/* Secrets never leak: not in any output of any command (tables, JSON, verbose logs, errors,
 * even when a careless plugin quotes them), and in the workspace only inside its own 0600
 * secret store.  References (env:, file:) are resolved at use and never stored. */
#define _GNU_SOURCE
#include "testlib.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define SECRET "S3cr3t-Val-7f2a9"
#define SECRET2 "0ther-S3cr3t-41c"

/* Every regular file under dir holding needle, other than `allowed` (basename). */
static int leaks(const char *dir, const char *needle, const char *allowed)
{
    DIR *d = opendir(dir);
    if (!d)
        return 0;
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
            continue;
        char *p = tl_path(dir, de->d_name);
        struct stat st;
        if (lstat(p, &st) == 0 && S_ISDIR(st.st_mode)) {
            n += leaks(p, needle, allowed);
        } else if (S_ISREG(st.st_mode) && (!allowed || strcmp(de->d_name, allowed))) {
            char *c = tl_read_file(p);
            size_t len = (size_t)st.st_size;
            if (c && memmem(c, len, needle, strlen(needle))) {
                fprintf(stderr, "secret found in %s\n", p);
                n++;
            }
            free(c);
        }
        free(p);
    }
    closedir(d);
    return n;
}

static void no_secret_in(const tl_result *r, const char *what)
{
    if (tl_contains(r->out, SECRET) || tl_contains(r->err, SECRET))
        fprintf(stderr, "secret printed by %s\n", what);
    CU_ASSERT(!tl_contains(r->out, SECRET));
    CU_ASSERT(!tl_contains(r->err, SECRET));
    CU_ASSERT(!tl_contains(r->out, SECRET2));
    CU_ASSERT(!tl_contains(r->err, SECRET2));
}

static tl_result ct(const char *ws, const char *in, const char *const env[],
                    const char *const args[])
{
    tl_result r = tl_ctarget_run(ws, in, env, args);
    no_secret_in(&r, args[1] ? args[1] : args[0]);
    return r;
}

#define CT(ws, ...) ct((ws), NULL, NULL, (const char *const[]){__VA_ARGS__, NULL})

/* Every reading command, plain, JSON and verbose. */
static void read_everything(const char *ws, const char *name)
{
    const char *const cmds[][3] = {{"list", NULL, NULL}, {"show", name, NULL},
                                   {"status", name, NULL}, {"help", "testssh", NULL}};
    for (size_t i = 0; i < sizeof cmds / sizeof *cmds; i++) {
        const char *a1[] = {"compute", cmds[i][0], cmds[i][1], NULL};
        tl_result r = ct(ws, NULL, NULL, a1);
        tl_result_free(&r);
        const char *a2[] = {"-v", "-v", "compute", cmds[i][0], "--output", "json",
                            cmds[i][1], NULL};
        if (!cmds[i][1])
            a2[6] = NULL;
        r = ct(ws, NULL, NULL, a2);
        tl_result_free(&r);
    }
}

static void t_stored_secret_only_in_the_secret_store(void)
{
    char *ws = tl_tmpdir("ws");
    tl_result r = ct(ws, SECRET "\n", NULL,
                     (const char *const[]){"-v", "-v", "compute", "attach", "vm1", "--type",
                                           "testssh", "--set", "address=10.0.0.9", "--set",
                                           "username=ml", "--password-stdin", NULL});
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    read_everything(ws, "vm1");
    r = CT(ws, "compute", "show", "vm1", "--output", "json");
    json_t *j = tl_json(&r);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(json_object_get(j, "config"),
                                                             "password")), "********");
    json_decref(j);
    tl_result_free(&r);
    CU_ASSERT_EQUAL(leaks(ws, SECRET, "secrets.db"), 0);
    CU_ASSERT_EQUAL(leaks(ws, SECRET, NULL), 1); /* it is stored, in secrets.db */
    char *sec = tl_path(ws, "secrets.db");
    struct stat st;
    CU_ASSERT_EQUAL(stat(sec, &st), 0);
    CU_ASSERT_EQUAL(st.st_mode & 0777, 0600);
    free(sec);
    /* detach forgets the secret too */
    r = CT(ws, "compute", "detach", "vm1");
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    /* gone from the file itself, not just unlinked from its table (secure_delete) */
    CU_ASSERT_EQUAL(leaks(ws, SECRET, NULL), 0);
    free(ws);
}

static void t_secret_from_file_and_literal(void)
{
    char *ws = tl_tmpdir("ws");
    char *f = tl_path(ws, "pw.txt");
    tl_write_file(f, SECRET "\n");
    char *at = NULL;
    if (asprintf(&at, "password=@%s", f) < 0)
        abort();
    tl_result r = CT(ws, "compute", "attach", "vm1", "--type", "testssh", "--set",
                     "address=10.0.0.1", "--set", "username=ml", "--set", at);
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    /* literal on the command line: accepted with a warning that does not repeat it */
    r = CT(ws, "compute", "attach", "vm2", "--type", "testssh", "--set", "address=10.0.0.2",
           "--set", "username=ml", "--set", "password=" SECRET2);
    TL_ASSERT_EXIT(r, 0);
    CU_ASSERT(tl_contains(r.err, "warning"));
    tl_result_free(&r);
    read_everything(ws, "vm1");
    read_everything(ws, "vm2");
    unlink(f);
    CU_ASSERT_EQUAL(leaks(ws, SECRET, "secrets.db"), 0);
    CU_ASSERT_EQUAL(leaks(ws, SECRET2, "secrets.db"), 0);
    free(at);
    free(f);
    free(ws);
}

static void t_quoted_by_a_careless_plugin_still_redacted(void)
{
    char *ws = tl_tmpdir("ws");
    /* testssh quotes the rejected password in its error and logs it: the core redacts */
    tl_result r = ct(ws, SECRET "\n", NULL,
                     (const char *const[]){"-v", "-v", "compute", "attach", "vm1", "--type",
                                           "testssh", "--set", "address=10.0.0.3", "--set",
                                           "username=ml", "--set", "expected_password=right-one",
                                           "--password-stdin", NULL});
    TL_ASSERT_EXIT(r, 7);
    CU_ASSERT(tl_contains(r.err, "rejected"));
    CU_ASSERT(tl_contains(r.err, "********"));
    tl_result_free(&r);
    /* nothing stored for a failed attach */
    CU_ASSERT_EQUAL(leaks(ws, SECRET, NULL), 0);
    r = CT(ws, "compute", "list", "--output", "json");
    CU_ASSERT(!tl_contains(r.out, "vm1"));
    tl_result_free(&r);
    free(ws);
}

static void t_references_resolved_at_use_never_stored(void)
{
    char *ws = tl_tmpdir("ws");
    /* the simulated server accepts only "env-pw-8d1": attach succeeds only if the
     * reference was resolved (expected_password is the server's side, not a secret) */
    const char *env_ok[] = {"VM_PW=env-pw-8d1", NULL};
    tl_result r = ct(ws, NULL, env_ok,
                     (const char *const[]){"compute", "attach", "vm1", "--type", "testssh",
                                           "--set", "address=10.0.0.4", "--set", "username=ml",
                                           "--set", "expected_password=env-pw-8d1", "--set",
                                           "password=env:VM_PW", NULL});
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    char *sec = tl_path(ws, "secrets.db");
    char *c = tl_read_file(sec);
    struct stat st;
    stat(sec, &st);
    CU_ASSERT(!c || !memmem(c, (size_t)st.st_size, "env-pw-8d1", 10));
    free(c);
    free(sec);
    /* the variable now holds something else: the same target fails to log in */
    const char *env_bad[] = {"VM_PW=" SECRET, NULL};
    r = ct(ws, NULL, env_bad, (const char *const[]){"compute", "update", "vm1", "--set",
                                                    "username=ml2", NULL});
    tl_result_free(&r);
    r = CT(ws, "compute", "show", "vm1", "--output", "json");
    json_t *j = tl_json(&r);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(json_object_get(j, "config"),
                                                             "password")), "env:VM_PW");
    json_decref(j);
    tl_result_free(&r);
    free(ws);

    /* resolved again at each use: the value changes with the variable */
    ws = tl_tmpdir("ws");
    char *pwfile = tl_path(ws, "pw");
    tl_write_file(pwfile, SECRET2);
    char *ref = NULL;
    if (asprintf(&ref, "password=file:%s", pwfile) < 0)
        abort();
    r = CT(ws, "compute", "attach", "vm2", "--type", "testssh", "--set", "address=10.0.0.5",
           "--set", "username=ml", "--set", ref);
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    CU_ASSERT_EQUAL(leaks(ws, SECRET2, "pw"), 0); /* not copied into the workspace */
    const char *env_missing[] = {"VM_PW=", NULL};
    r = ct(ws, NULL, env_missing,
           (const char *const[]){"compute", "attach", "vm3", "--type", "testssh", "--set",
                                 "address=10.0.0.6", "--set", "username=ml", "--set",
                                 "password=env:VM_PW", NULL});
    CU_ASSERT_NOT_EQUAL(r.status, 0);
    CU_ASSERT(tl_contains(r.err, "VM_PW"));
    tl_result_free(&r);
    free(ref);
    free(pwfile);
    free(ws);
}

static void t_workspace_permissions(void)
{
    char *top = tl_tmpdir("top");
    char *ws = tl_path(top, "new-ws");
    tl_result r = ct(ws, SECRET "\n", NULL,
                     (const char *const[]){"compute", "attach", "vm1", "--type", "testssh",
                                           "--set", "address=10.0.0.7", "--set", "username=ml",
                                           "--password-stdin", NULL});
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    struct stat st;
    CU_ASSERT_EQUAL(stat(ws, &st), 0);
    CU_ASSERT_EQUAL(st.st_mode & 0777, 0700);
    const char *files[] = {"workspace.db", "secrets.db"};
    for (size_t i = 0; i < 2; i++) {
        char *p = tl_path(ws, files[i]);
        CU_ASSERT_EQUAL(stat(p, &st), 0);
        CU_ASSERT_EQUAL(st.st_mode & 0777, 0600);
        free(p);
    }
    free(ws);
    free(top);
}

static void add(CU_pSuite s)
{
    TL_ADD(s, t_stored_secret_only_in_the_secret_store);
    TL_ADD(s, t_secret_from_file_and_literal);
    TL_ADD(s, t_quoted_by_a_careless_plugin_still_redacted);
    TL_ADD(s, t_references_resolved_at_use_never_stored);
    TL_ADD(s, t_workspace_permissions);
}

int main(int argc, char **argv)
{
    return tl_main(argc, argv, "secrets", add);
}
