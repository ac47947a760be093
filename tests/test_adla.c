/* The adla plugin end to end: the real ctarget command and plugin against the Azure
 * emulator's Data Lake Analytics service (tests/emulators/emu_svc_adla.py: the ARM account,
 * the U-SQL job plane whose jobs run as local processes of adla_usql.py, the default store as
 * WebHDFS).  Steps go through the core's step path (tests/steplib), as the pipeline driver
 * submits them.
 *
 * Targets authenticate as the emulator's service principal with client_secret=file:PATH
 * (outside the workspace), TLS verified with the fixture's CA (CTARGET_CA_BUNDLE). */
#define _GNU_SOURCE
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "azfix.h"
#include "runlib.h"
#include "steplib.h"
#include "testlib.h"

#define A(...) ((const char *const[]){__VA_ARGS__, NULL})
#define ACCOUNT "ctargetadla"

static azfix FX;
static int FX_ok;
static char *SECRET_FILE, *BAD_SECRET_FILE, *CA_ENV, *JOB_EP, *STORE_EP, *RID;
static char *WS; /* shared: target "lake" */

static char *fmt(const char *f, ...)
{
    va_list ap;
    va_start(ap, f);
    char *s = NULL;
    if (vasprintf(&s, f, ap) < 0)
        abort();
    va_end(ap);
    return s;
}

static tl_result ct(const char *ws, const char *const args[])
{
    const char *env[] = {CA_ENV, "AZURE_CLIENT_SECRET=", "AZURE_CLIENT_ID=", "AZURE_TENANT_ID=",
                         NULL};
    return tl_ctarget_run(ws, NULL, env, args);
}

/* compute attach NAME --type adla + the fixture's settings + extra */
static tl_result attach(const char *ws, const char *name, const char *secret_file,
                        const char *const extra[])
{
    const char *argv[64];
    char *own[10];
    size_t n = 0, k = 0;
    argv[n++] = "compute";
    argv[n++] = "attach";
    argv[n++] = name;
    argv[n++] = "--type";
    argv[n++] = "adla";
    const char *sets[] = {"arm_endpoint=%s", "aad_endpoint=%s", "tenant_id=%s", "client_id=%s",
                          "client_secret=file:%s", "job_endpoint=%s", "store_endpoint=%s"};
    const char *vals[] = {FX.arm, FX.aad, FX.tenant_id, FX.client_id,
                          secret_file ? secret_file : SECRET_FILE, JOB_EP, STORE_EP};
    for (size_t i = 0; i < 7; i++) {
        argv[n++] = "--set";
        argv[n++] = own[k++] = fmt(sets[i], vals[i]);
    }
    for (size_t i = 0; extra && extra[i] && n < 62; i++)
        argv[n++] = extra[i];
    argv[n] = NULL;
    tl_result r = ct(ws, argv);
    for (size_t i = 0; i < k; i++)
        free(own[i]);
    return r;
}

static tl_result attach_by_name(const char *ws, const char *name, const char *secret_file)
{
    char *sub = fmt("subscription_id=%s", FX.subscription_id);
    char *rg = fmt("resource_group=%s", FX.resource_group);
    tl_result r = attach(ws, name, secret_file,
                         A("--set", sub, "--set", rg, "--set", "account_name=" ACCOUNT));
    free(sub);
    free(rg);
    return r;
}

static const char *shared_ws(void)
{
    if (WS || !FX_ok)
        return WS;
    char *ws = tl_tmpdir("adlaws");
    tl_result r = attach_by_name(ws, "lake", NULL);
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    WS = ws;
    return WS;
}

static const char *IN_CSV = "name,score,team\nann,70,red\nbob,30,blue\ncid,90,red\ndan,55,blue\n";

/* a step's source directory: SCRIPT as step.usql, the input under inputs/data/in.csv */
static char *step_src(const char *tag, const char *script)
{
    char *d = tl_tmpdir(tag);
    char *p = tl_path(d, "step.usql");
    tl_write_file(p, script);
    free(p);
    char *in = tl_path(d, "inputs");
    mkdir(in, 0755);
    char *in2 = tl_path(in, "data");
    mkdir(in2, 0755);
    p = tl_path(in2, "in.csv");
    tl_write_file(p, IN_CSV);
    free(p);
    free(in2);
    free(in);
    return d;
}

static const char *GOOD_USQL =
    "// keep the good scores, and count per team\n"
    "DECLARE @in string = @CTARGET_RUN_DIR + \"inputs/data/in.csv\";\n"
    "@rows = EXTRACT name string, score int, team string\n"
    "    FROM @in USING Extractors.Csv(skipFirstNRows: 1);\n"
    "@good = SELECT name, score FROM @rows WHERE score >= @min_score;\n"
    "@teams = SELECT team, COUNT(*) AS n, SUM(score) AS total FROM @rows GROUP BY team;\n"
    "OUTPUT @good TO @CTARGET_OUTPUT_RESULT + \"/out.csv\" USING Outputters.Csv(outputHeader: "
    "true);\n"
    "OUTPUT @teams TO @CTARGET_OUTPUTS_DIR + \"result/teams.tsv\" USING Outputters.Tsv();\n";

static const char *STEP_ENV[] = {"CTARGET_INPUT_DATA=inputs/data",
                                 "CTARGET_OUTPUT_RESULT=outputs/result", NULL};

static char *submit_step(const char *ws, const char *src, const char *json)
{
    char err[1024];
    char *id = sl_step_submit(ws, "lake", src, "step.usql", NULL, STEP_ENV, "adla", json, err,
                              sizeof err);
    if (!id)
        printf("step submit failed: %s\n", err);
    return id;
}

/* waits for the run's monitor to finish (bounded), returns its status (owned) */
static char *wait_done(const char *ws, const char *id)
{
    tl_result r = ct(ws, A("run", "wait", id, "--timeout", "90"));
    tl_result_free(&r);
    return rl_status(ws, id);
}

static char *run_field(const char *ws, const char *id, const char *key)
{
    json_t *j = rl_show(ws, id);
    const char *s = json_string_value(json_object_get(j, key));
    char *out = s ? strdup(s) : NULL;
    json_decref(j);
    return out;
}

static char *logs(const char *ws, const char *id)
{
    tl_result r = ct(ws, A("run", "logs", id));
    char *s = strdup(r.out ? r.out : "");
    tl_result_free(&r);
    return s;
}

/* the emulator's jobs ({id: {state, result, alive, ...}}), owned */
static json_t *emu_jobs(void)
{
    json_t *st = azfix_state(&FX);
    json_t *j = json_incref(json_object_get(json_object_get(st, "adla"), "jobs"));
    json_decref(st);
    return j;
}

/* ---- compute ------------------------------------------------------------------------------ */

static void t01_attach_status_detach(void)
{
    CU_ASSERT_FATAL(FX_ok);
    char *ws = tl_tmpdir("adla1");
    tl_result r = attach_by_name(ws, "lake1", NULL);
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    /* the account was looked up (ARM) and the job service proven reachable */
    CU_ASSERT(azfix_count(&FX, "GET", "Microsoft.DataLakeAnalytics/accounts/" ACCOUNT "$") >= 1);
    CU_ASSERT(azfix_count(&FX, "GET", "^/Jobs$") >= 1);

    r = ct(ws, A("compute", "status", "lake1", "-o", "json"));
    TL_ASSERT_EXIT(r, 0);
    CU_ASSERT(tl_contains(r.out, "Active"));
    CU_ASSERT(tl_contains(r.out, "ctargetadls"));
    tl_result_free(&r);

    /* the same account again, by its resource id: refused, naming the first target */
    char *rid = fmt("resource_id=%s", RID);
    r = attach(ws, "lake2", NULL, A("--set", rid));
    CU_ASSERT_NOT_EQUAL(r.status, 0);
    CU_ASSERT(tl_contains(r.err, "lake1"));
    tl_result_free(&r);
    /* and by name under another name */
    r = attach_by_name(ws, "lake3", NULL);
    CU_ASSERT_NOT_EQUAL(r.status, 0);
    CU_ASSERT(tl_contains(r.err, "lake1"));
    tl_result_free(&r);

    r = ct(ws, A("compute", "detach", "lake1"));
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    /* once detached, the resource id form attaches */
    r = attach(ws, "lake2", NULL, A("--set", rid));
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    free(rid);
    free(ws);
}

static void t02_attach_refusals(void)
{
    CU_ASSERT_FATAL(FX_ok);
    char *ws = tl_tmpdir("adla2");
    /* wrong secret: an auth error naming the client, never the secret */
    tl_result r = attach_by_name(ws, "badcred", BAD_SECRET_FILE);
    CU_ASSERT_EQUAL(r.status, 7);
    CU_ASSERT(!tl_contains(r.err, "not-the-secret"));
    CU_ASSERT(!tl_contains(r.err, FX.client_secret));
    tl_result_free(&r);
    /* an account that does not exist */
    char *sub = fmt("subscription_id=%s", FX.subscription_id);
    char *rg = fmt("resource_group=%s", FX.resource_group);
    r = attach(ws, "nolake", NULL,
               A("--set", sub, "--set", rg, "--set", "account_name=nosuchaccount"));
    CU_ASSERT_EQUAL(r.status, 4);
    CU_ASSERT(tl_contains(r.err, "nosuchaccount"));
    tl_result_free(&r);
    /* a resource id of another type */
    r = attach(ws, "wrongtype", NULL,
               A("--set", "resource_id=/subscriptions/x/resourceGroups/y/providers/"
                          "Microsoft.Storage/storageAccounts/z"));
    CU_ASSERT_EQUAL(r.status, 3);
    CU_ASSERT(tl_contains(r.err, "Data Lake Analytics"));
    tl_result_free(&r);
    /* neither resource_id nor account_name */
    r = attach(ws, "nothing", NULL, NULL);
    CU_ASSERT_NOT_EQUAL(r.status, 0);
    tl_result_free(&r);
    /* create is refused by the core, for the capability */
    r = ct(ws, A("compute", "create", "newlake", "--type", "adla", "--set",
                 "account_name=" ACCOUNT));
    CU_ASSERT_NOT_EQUAL(r.status, 0);
    CU_ASSERT(tl_contains(r.err, "cannot be created by ctarget"));
    tl_result_free(&r);
    r = ct(ws, A("compute", "list", "-o", "json"));
    CU_ASSERT(!tl_contains(r.out, "badcred") && !tl_contains(r.out, "nolake"));
    tl_result_free(&r);
    free(sub);
    free(rg);
    free(ws);
}

static void t03_plain_run_refused(void)
{
    const char *ws = shared_ws();
    CU_ASSERT_FATAL(ws != NULL);
    char *src = step_src("adla3", GOOD_USQL);
    tl_result r = ct(ws, A("run", "submit", "--target", "lake", "--source", src, "--script",
                           "step.usql"));
    CU_ASSERT_NOT_EQUAL(r.status, 0);
    CU_ASSERT(tl_contains(r.err, "pipeline"));
    tl_result_free(&r);
    free(src);
}

/* ---- steps -------------------------------------------------------------------------------- */

static void t04_step_filters_and_outputs(void)
{
    const char *ws = shared_ws();
    CU_ASSERT_FATAL(ws != NULL);
    char *src = step_src("adla4", GOOD_USQL);
    char *id = submit_step(ws, src, "{\"degree_of_parallelism\": 2, \"priority\": 100, "
                                    "\"script_parameters\": {\"min_score\": 50}}");
    CU_ASSERT_PTR_NOT_NULL_FATAL(id);
    char *st = wait_done(ws, id);
    CU_ASSERT_STRING_EQUAL(st ? st : "", "Completed");
    char *out = rl_run_file(ws, id, "outputs/result/out.csv");
    char *csv = tl_read_file(out);
    CU_ASSERT_STRING_EQUAL(csv ? csv : "", "name,score\nann,70\ncid,90\ndan,55\n");
    char *tp = rl_run_file(ws, id, "outputs/result/teams.tsv");
    char *tsv = tl_read_file(tp);
    CU_ASSERT_STRING_EQUAL(tsv ? tsv : "", "red\t2\t160\nblue\t2\t85\n");
    /* the log: the job's own state transitions and the interpreter's output */
    char *lg = logs(ws, id);
    CU_ASSERT(tl_contains(lg, ": Compiling"));
    CU_ASSERT(tl_contains(lg, ": Running"));
    CU_ASSERT(tl_contains(lg, ": Ended result:Succeeded"));
    CU_ASSERT(tl_contains(lg, "EXTRACT @rows: 4 rows"));
    CU_ASSERT(tl_contains(lg, "uploaded 1 file"));
    if (!tl_contains(lg, "EXTRACT @rows"))
        printf("log:\n%s\n", lg);
    /* the job as the service saw it: our settings, a body valid against job.json */
    json_t *jobs = emu_jobs();
    CU_ASSERT(json_object_size(jobs) >= 1);
    json_t *st2 = azfix_state(&FX);
    CU_ASSERT_EQUAL(json_array_size(json_object_get(json_object_get(st2, "adla"), "invalid")),
                    0);
    json_decref(st2);
    json_decref(jobs);
    CU_ASSERT(azfix_count(&FX, "PUT", "^/Jobs/[0-9a-f-]{36}$") >= 1);
    /* cleanup removed the run's folder from the store (bounded poll: cleanup follows) */
    char *dir = fmt("%s/adls/ctarget/runs/%s", FX.dir, id);
    struct stat sb;
    int gone = 0;
    for (int i = 0; i < 100 && !(gone = stat(dir, &sb) != 0); i++)
        rl_sleep_ms(100);
    CU_ASSERT(gone);
    free(dir);
    free(lg);
    free(tsv);
    free(tp);
    free(csv);
    free(out);
    free(st);
    free(id);
    free(src);
}

/* an input above the 4 MiB of one request: CREATE, then APPENDs at offsets; the job reads
 * all of it */
static void t04b_large_input_appended(void)
{
    const char *ws = shared_ws();
    CU_ASSERT_FATAL(ws != NULL);
    char *src = step_src("adla4b", "DECLARE @in string = @CTARGET_RUN_DIR + \"inputs/big/big.csv\";\n"
                                   "@rows = EXTRACT name string, v int FROM @in USING "
                                   "Extractors.Csv();\n"
                                   "@s = SELECT COUNT(*) AS n, SUM(v) AS total FROM @rows;\n"
                                   "OUTPUT @s TO @CTARGET_OUTPUTS_DIR + \"sum/s.csv\" USING "
                                   "Outputters.Csv();\n"
                                   "OUTPUT @rows TO @CTARGET_OUTPUTS_DIR + \"sum/all.csv\" USING "
                                   "Outputters.Csv();\n");
    char *in = fmt("%s/inputs/big", src);
    mkdir(in, 0755);
    char *p = fmt("%s/big.csv", in);
    FILE *f = fopen(p, "w");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    for (int i = 0; i < 600000; i++)
        fprintf(f, "r%06d,%d\n", i, i % 10);
    fclose(f);
    azfix_reset(&FX);
    char *id = submit_step(ws, src, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(id);
    char *st = wait_done(ws, id);
    CU_ASSERT_STRING_EQUAL(st ? st : "", "Completed");
    char *out = rl_run_file(ws, id, "outputs/sum/s.csv");
    char *csv = tl_read_file(out);
    CU_ASSERT_STRING_EQUAL(csv ? csv : "", "600000,2700000\n");
    CU_ASSERT_EQUAL(azfix_count(&FX, "POST", "big\\.csv$"), 1);  /* 6 MB: CREATE + 1 APPEND */
    CU_ASSERT_EQUAL(azfix_count(&FX, "PUT", "big\\.csv$"), 1);
    /* the 6 MB output comes back whole, in two ranged reads */
    char *allp = rl_run_file(ws, id, "outputs/sum/all.csv");
    char *all = tl_read_file(allp), *orig = tl_read_file(p);
    CU_ASSERT(all && orig && strlen(all) == strlen(orig) && !strcmp(all, orig));
    CU_ASSERT_EQUAL(azfix_count(&FX, "GET", "all\\.csv$"), 2);
    free(orig);
    free(all);
    free(allp);
    free(csv);
    free(out);
    free(st);
    free(id);
    free(p);
    free(in);
    free(src);
}

static void t05_syntax_error_fails_with_line(void)
{
    const char *ws = shared_ws();
    CU_ASSERT_FATAL(ws != NULL);
    char *src = step_src("adla5", "DECLARE @in string = @CTARGET_RUN_DIR + \"inputs/data/in.csv\";\n"
                                  "@rows = EXTRACT name string, score int, team string\n"
                                  "    FROM @in USING Extractors.Csv();\n"
                                  "@good = SELEC name FROM @rows;\n");
    char *id = submit_step(ws, src, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(id);
    char *st = wait_done(ws, id);
    CU_ASSERT_STRING_EQUAL(st ? st : "", "Failed");
    char *reason = run_field(ws, id, "reason");
    CU_ASSERT(tl_contains(reason, "E_CSC_USER_SYNTAXERROR"));
    CU_ASSERT(tl_contains(reason, "line 4 of step.usql"));
    CU_ASSERT(tl_contains(reason, "SELEC"));
    if (!tl_contains(reason, "line 4"))
        printf("reason: %s\n", reason ? reason : "(none)");
    char *lg = logs(ws, id);
    CU_ASSERT(tl_contains(lg, "E_CSC_USER_SYNTAXERROR at line 4"));
    CU_ASSERT(tl_contains(lg, "Ended result:Failed"));
    free(lg);
    free(reason);
    free(st);
    free(id);
    free(src);
    /* a runtime error (the input is not in the store): the service's error, its line */
    src = step_src("adla5b", "DECLARE @in string = @CTARGET_RUN_DIR + \"inputs/data/gone.csv\";\n"
                             "@rows = EXTRACT name string FROM @in USING Extractors.Text();\n"
                             "OUTPUT @rows TO @CTARGET_OUTPUTS_DIR + \"x.csv\" USING "
                             "Outputters.Csv();\n");
    id = submit_step(ws, src, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(id);
    st = wait_done(ws, id);
    CU_ASSERT_STRING_EQUAL(st ? st : "", "Failed");
    reason = run_field(ws, id, "reason");
    CU_ASSERT(tl_contains(reason, "E_STORE_USER_FILENOTFOUND"));
    CU_ASSERT(tl_contains(reason, "gone.csv"));
    CU_ASSERT(tl_contains(reason, "line 2 of step.usql"));
    free(reason);
    free(st);
    free(id);
    free(src);
}

static void t06_step_keys_checked(void)
{
    const char *ws = shared_ws();
    CU_ASSERT_FATAL(ws != NULL);
    char *src = step_src("adla6", GOOD_USQL);
    char *id = submit_step(ws, src, "{\"parallelism\": 2}");
    CU_ASSERT_PTR_NOT_NULL_FATAL(id);
    char *st = wait_done(ws, id);
    CU_ASSERT_STRING_EQUAL(st ? st : "", "Failed");
    char *reason = run_field(ws, id, "reason");
    CU_ASSERT(tl_contains(reason, "unknown adla step key 'parallelism'"));
    if (!tl_contains(reason, "parallelism"))
        printf("reason: %s\n", reason ? reason : "(none)");
    free(reason);
    free(st);
    free(id);
    id = submit_step(ws, src, "{\"script_parameters\": {\"min_score\": [1]}}");
    CU_ASSERT_PTR_NOT_NULL_FATAL(id);
    st = wait_done(ws, id);
    CU_ASSERT_STRING_EQUAL(st ? st : "", "Failed");
    reason = run_field(ws, id, "reason");
    CU_ASSERT(tl_contains(reason, "min_score"));
    free(reason);
    free(st);
    free(id);
    /* more AUs than the account allows (its maxDegreeOfParallelism, 30) */
    id = submit_step(ws, src, "{\"degree_of_parallelism\": 31, \"script_parameters\": "
                              "{\"min_score\": 1}}");
    CU_ASSERT_PTR_NOT_NULL_FATAL(id);
    st = wait_done(ws, id);
    CU_ASSERT_STRING_EQUAL(st ? st : "", "Failed");
    reason = run_field(ws, id, "reason");
    CU_ASSERT(tl_contains(reason, "degree_of_parallelism 31 is more than account"));
    CU_ASSERT(tl_contains(reason, "(30)"));
    free(reason);
    free(st);
    free(id);
    free(src);
}

static void t07_cancel_leaves_nothing_running(void)
{
    const char *ws = shared_ws();
    CU_ASSERT_FATAL(ws != NULL);
    CU_ASSERT_EQUAL(azfix_fault(&FX, "{\"target\":\"adla\",\"action\":\"slow_job\","
                                     "\"seconds\":60,\"count\":1}"), 0);
    char *src = step_src("adla7", GOOD_USQL);
    char *id = submit_step(ws, src, "{\"script_parameters\": {\"min_score\": 1}}");
    CU_ASSERT_PTR_NOT_NULL_FATAL(id);
    CU_ASSERT(rl_wait_for(ws, id, "Running", 30000));
    /* the job's vertex process is alive in the emulator */
    char *jid = NULL;
    for (int i = 0; i < 100 && !jid; i++) {
        json_t *jobs = emu_jobs();
        const char *k;
        json_t *v;
        json_object_foreach(jobs, k, v) {
            const char *name = json_string_value(json_object_get(v, "name"));
            if (name && strstr(name, id) && json_is_true(json_object_get(v, "alive")))
                jid = strdup(k);
        }
        json_decref(jobs);
        if (!jid)
            rl_sleep_ms(100);
    }
    CU_ASSERT_PTR_NOT_NULL_FATAL(jid);
    tl_result r = ct(ws, A("run", "cancel", id));
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    char *st = wait_done(ws, id);
    CU_ASSERT_STRING_EQUAL(st ? st : "", "Canceled");
    json_t *jobs = emu_jobs();
    json_t *j = json_object_get(jobs, jid);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(j, "result")), "Cancelled");
    CU_ASSERT(json_is_false(json_object_get(j, "alive")));
    /* and no job of the emulator is left alive */
    const char *k;
    json_t *v;
    json_object_foreach(jobs, k, v) CU_ASSERT(!json_is_true(json_object_get(v, "alive")));
    json_decref(jobs);
    CU_ASSERT(azfix_count(&FX, "POST", "^/Jobs/[0-9a-f-]{36}/CancelJob$") >= 1);
    free(st);
    free(jid);
    free(id);
    free(src);
}

static void t08_throttling_and_500_retried(void)
{
    const char *ws = shared_ws();
    CU_ASSERT_FATAL(ws != NULL);
    azfix_reset(&FX);
    CU_ASSERT_EQUAL(azfix_fault(&FX, "{\"target\":\"adla\",\"method\":\"PUT\",\"path\":\"^/Jobs/\","
                                     "\"status\":429,\"retry_after\":1,\"count\":2}"), 0);
    CU_ASSERT_EQUAL(azfix_fault(&FX, "{\"target\":\"adls\",\"method\":\"PUT\",\"path\":\"in.csv\","
                                     "\"status\":500,\"count\":1}"), 0);
    CU_ASSERT_EQUAL(azfix_fault(&FX, "{\"target\":\"adla\",\"method\":\"GET\",\"path\":\"^/Jobs/\","
                                     "\"status\":500,\"count\":1}"), 0);
    char *src = step_src("adla8", GOOD_USQL);
    char *id = submit_step(ws, src, "{\"script_parameters\": {\"min_score\": 60}}");
    CU_ASSERT_PTR_NOT_NULL_FATAL(id);
    char *st = wait_done(ws, id);
    CU_ASSERT_STRING_EQUAL(st ? st : "", "Completed");
    char *out = rl_run_file(ws, id, "outputs/result/out.csv");
    char *csv = tl_read_file(out);
    CU_ASSERT_STRING_EQUAL(csv ? csv : "", "name,score\nann,70\ncid,90\n");
    /* the faults were hit, and the requests repeated */
    json_t *reqs = azfix_requests(&FX);
    int n429 = 0, n500 = 0, puts = 0;
    size_t i;
    json_t *q;
    json_array_foreach(reqs, i, q) {
        long s = (long)json_integer_value(json_object_get(q, "status"));
        const char *srv = json_string_value(json_object_get(q, "server"));
        const char *m = json_string_value(json_object_get(q, "method"));
        if (srv && !strcmp(srv, "adla") && s == 429)
            n429++;
        if (s == 500 && srv && (!strcmp(srv, "adla") || !strcmp(srv, "adls")))
            n500++;
        if (srv && !strcmp(srv, "adla") && m && !strcmp(m, "PUT") && s == 200)
            puts++;
    }
    CU_ASSERT_EQUAL(n429, 2);
    CU_ASSERT_EQUAL(n500, 2);
    CU_ASSERT_EQUAL(puts, 1);
    json_decref(reqs);
    free(csv);
    free(out);
    free(st);
    free(id);
    free(src);
}

static void t09_service_side_failure(void)
{
    const char *ws = shared_ws();
    CU_ASSERT_FATAL(ws != NULL);
    CU_ASSERT_EQUAL(azfix_fault(&FX, "{\"target\":\"adla\",\"action\":\"fail_job\",\"errorId\":"
                                     "\"E_RUNTIME_SYSTEM_VERTEX_FAILED\",\"message\":\"Vertex "
                                     "SV1_Extract[0] failed: node lost\",\"count\":1}"), 0);
    CU_ASSERT_EQUAL(azfix_fault(&FX, "{\"target\":\"adla\",\"action\":\"slow_job\","
                                     "\"seconds\":30,\"count\":1}"), 0);
    char *src = step_src("adla9", GOOD_USQL);
    char *id = submit_step(ws, src, "{\"script_parameters\": {\"min_score\": 1}}");
    CU_ASSERT_PTR_NOT_NULL_FATAL(id);
    char *st = wait_done(ws, id);
    CU_ASSERT_STRING_EQUAL(st ? st : "", "Failed");
    char *reason = run_field(ws, id, "reason");
    CU_ASSERT(tl_contains(reason, "E_RUNTIME_SYSTEM_VERTEX_FAILED"));
    CU_ASSERT(tl_contains(reason, "node lost"));
    /* the killed vertex left nothing behind */
    json_t *jobs = emu_jobs();
    const char *k;
    json_t *v;
    json_object_foreach(jobs, k, v) CU_ASSERT(!json_is_true(json_object_get(v, "alive")));
    json_decref(jobs);
    free(reason);
    free(st);
    free(id);
    free(src);
}

/* tokens that expire while a job runs: the monitor's next call is refused (401), takes a new
 * token and carries on */
static void t09b_token_expires_mid_run(void)
{
    const char *ws = shared_ws();
    CU_ASSERT_FATAL(ws != NULL);
    CU_ASSERT_EQUAL(azfix_fault(&FX, "{\"target\":\"adla\",\"action\":\"slow_job\","
                                     "\"seconds\":2,\"count\":1}"), 0);
    char *src = step_src("adla9b", GOOD_USQL);
    char *id = submit_step(ws, src, "{\"script_parameters\": {\"min_score\": 80}}");
    CU_ASSERT_PTR_NOT_NULL_FATAL(id);
    CU_ASSERT(rl_wait_for(ws, id, "Running", 30000));
    azfix_reset(&FX);
    json_t *x = azfix_admin(&FX, "POST", "/_emulator/tokens/expire", NULL, NULL);
    CU_ASSERT(json_integer_value(json_object_get(x, "expired")) >= 1);
    json_decref(x);
    char *st = wait_done(ws, id);
    CU_ASSERT_STRING_EQUAL(st ? st : "", "Completed");
    char *out = rl_run_file(ws, id, "outputs/result/out.csv");
    char *csv = tl_read_file(out);
    CU_ASSERT_STRING_EQUAL(csv ? csv : "", "name,score\ncid,90\n");
    /* the refusal happened and was answered by a new token */
    CU_ASSERT(azfix_count(&FX, "GET", "^/Jobs/") >= 2);
    json_t *reqs = azfix_requests(&FX);
    int n401 = 0;
    size_t i;
    json_t *q;
    json_array_foreach(reqs, i, q) if (json_integer_value(json_object_get(q, "status")) == 401) n401++;
    CU_ASSERT(n401 >= 1);
    CU_ASSERT(azfix_count(&FX, "POST", "/oauth2/v2.0/token$") >= 1);
    json_decref(reqs);
    free(csv);
    free(out);
    free(st);
    free(id);
    free(src);
}

/* the run monitor killed while the job runs: its replacement finds the job again from the
 * handle (no second job), and the run completes with its outputs */
static void t09c_monitor_killed(void)
{
    const char *ws = shared_ws();
    CU_ASSERT_FATAL(ws != NULL);
    CU_ASSERT_EQUAL(azfix_fault(&FX, "{\"target\":\"adla\",\"action\":\"slow_job\","
                                     "\"seconds\":3,\"count\":1}"), 0);
    char *src = step_src("adla9c", GOOD_USQL);
    char *id = submit_step(ws, src, "{\"script_parameters\": {\"min_score\": 56}}");
    CU_ASSERT_PTR_NOT_NULL_FATAL(id);
    CU_ASSERT(rl_wait_for(ws, id, "Running", 30000));
    json_t *j = rl_show(ws, id);
    long pid = (long)json_integer_value(json_object_get(json_object_get(j, "monitor"), "pid"));
    json_decref(j);
    CU_ASSERT(pid > 1);
    if (pid > 1) {
        CU_ASSERT_EQUAL(kill((pid_t)pid, SIGKILL), 0);
        for (int i = 0; i < 200 && kill((pid_t)pid, 0) == 0; i++)
            rl_sleep_ms(10);
    }
    char *st = wait_done(ws, id);
    CU_ASSERT_STRING_EQUAL(st ? st : "", "Completed");
    j = rl_show(ws, id);
    CU_ASSERT(json_integer_value(json_object_get(json_object_get(j, "monitor"), "starts")) >= 2);
    json_decref(j);
    char *out = rl_run_file(ws, id, "outputs/result/out.csv");
    char *csv = tl_read_file(out);
    CU_ASSERT_STRING_EQUAL(csv ? csv : "", "name,score\nann,70\ncid,90\n");
    int n = 0;
    json_t *jobs = emu_jobs();
    const char *k;
    json_t *v;
    json_object_foreach(jobs, k, v) {
        const char *name = json_string_value(json_object_get(v, "name"));
        n += name && strstr(name, id) != NULL;
    }
    json_decref(jobs);
    CU_ASSERT_EQUAL(n, 1);
    free(csv);
    free(out);
    free(st);
    free(id);
    free(src);
}

static void t10_no_secret_in_workspace(void)
{
    const char *ws = shared_ws();
    CU_ASSERT_FATAL(ws != NULL);
    const char *needles[] = {FX.client_secret, "Bearer ", "emu."};
    for (size_t i = 0; i < 3; i++) {
        char *hit = tl_tree_grep(ws, needles[i], strlen(needles[i]));
        CU_ASSERT_PTR_NULL(hit);
        if (hit)
            printf("'%s' found in %s\n", needles[i], hit);
        free(hit);
    }
}

static void t11_held_to_the_official_spec(void)
{
    CU_ASSERT_FATAL(FX_ok);
    azfix_reset(&FX); /* no fault of another test left */
    char *py = fmt("%s/tests/emulators/adla_selftest.py", tl_srcdir());
    tl_result r = tl_exec(A("python3", py), NULL, (const char *const *)FX.env);
    TL_ASSERT_EXIT(r, 0);
    CU_ASSERT(tl_contains(r.out, "ok - Adla_Job_Create replayed"));
    CU_ASSERT(tl_contains(r.out, "ok - Job_Get's answer is a valid JobInformation"));
    CU_ASSERT(tl_contains(r.out, "0 failed"));
    if (r.status)
        printf("%s\n", r.out);
    tl_result_free(&r);
    free(py);
}

static void add(CU_pSuite s)
{
    char *pp = fmt("%s/plugins/adla/.libs%s%s", tl_builddir(),
                   getenv("CTARGET_PLUGIN_PATH") ? ":" : "",
                   getenv("CTARGET_PLUGIN_PATH") ? getenv("CTARGET_PLUGIN_PATH") : "");
    setenv("CTARGET_PLUGIN_PATH", pp, 1);
    free(pp);
    azfix_opts o = {.no_azurite = 1, .job_phase_ms = 50};
    FX_ok = azfix_start(&FX, &o) == 0;
    if (FX_ok) {
        CA_ENV = fmt("CTARGET_CA_BUNDLE=%s", FX.ca_bundle);
        /* steplib submits in this process: its monitors inherit this environment */
        setenv("CTARGET_CA_BUNDLE", FX.ca_bundle, 1);
        unsetenv("AZURE_CLIENT_SECRET");
        unsetenv("AZURE_CLIENT_ID");
        unsetenv("AZURE_TENANT_ID");
        JOB_EP = fmt("https://127.0.0.1:%d", azfix_service_port(&FX, "adla"));
        STORE_EP = fmt("https://127.0.0.1:%d", azfix_service_port(&FX, "adls"));
        RID = fmt("/subscriptions/%s/resourceGroups/%s/providers/Microsoft.DataLakeAnalytics/"
                  "accounts/" ACCOUNT, FX.subscription_id, FX.resource_group);
        char *dir = tl_tmpdir("adlasecret");
        SECRET_FILE = tl_path(dir, "sp-secret");
        BAD_SECRET_FILE = tl_path(dir, "sp-wrong");
        tl_write_file(SECRET_FILE, FX.client_secret);
        tl_write_file(BAD_SECRET_FILE, "not-the-secret");
        chmod(SECRET_FILE, 0600);
        free(dir);
    } else {
        fprintf(stderr, "test_adla: the Azure emulator fixture did not start\n");
    }
    TL_ADD(s, t01_attach_status_detach);
    TL_ADD(s, t02_attach_refusals);
    TL_ADD(s, t03_plain_run_refused);
    TL_ADD(s, t04_step_filters_and_outputs);
    TL_ADD(s, t04b_large_input_appended);
    TL_ADD(s, t05_syntax_error_fails_with_line);
    TL_ADD(s, t06_step_keys_checked);
    TL_ADD(s, t07_cancel_leaves_nothing_running);
    TL_ADD(s, t08_throttling_and_500_retried);
    TL_ADD(s, t09_service_side_failure);
    TL_ADD(s, t09b_token_expires_mid_run);
    TL_ADD(s, t09c_monitor_killed);
    TL_ADD(s, t10_no_secret_in_workspace);
    TL_ADD(s, t11_held_to_the_official_spec);
}

int main(int argc, char **argv)
{
    return tl_main(argc, argv, "test_adla", add);
}
