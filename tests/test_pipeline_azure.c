/* The three-step pipeline: a script step on remotevm (the real sshd), a Databricks
 * step and an Azure Batch step (the emulated services, executing the steps as local
 * processes, with Azurite for Batch's resource files), data passed from each to the next.
 * Rerunning it unchanged reuses every step (both times are printed); canceling one leaves
 * nothing running on any of the three. */
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
#include "sshfix.h"

static sf_sshd S;
static int S_ok;
static azfix FX;
static int FX_ok;
static char *SECRET_FILE, *PAT_FILE, *KEY_FILE;
static const char *PAT = "dapi-ctarget-test-pat-7f3K9q";
static const char *CLUSTER = "0101-000000-ctarget1";
static const char *AZURITE_KEY =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

static char *fmt(const char *f, ...) __attribute__((format(printf, 1, 2)));
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


/* no Azure credential from this process's environment: only the targets' own settings */
static const char *const NOAZ[] = {"AZURE_CLIENT_SECRET=", "AZURE_CLIENT_ID=",
                                   "AZURE_TENANT_ID=", NULL};

static tl_result ct(const char *ws, const char *const args[])
{
    return tl_ctarget_run(ws, NULL, NOAZ, args);
}
#define CT(ws, ...) ct((ws), (const char *const[]){__VA_ARGS__, NULL})

/* A workspace with the three targets: vmbox (remotevm), dbx (databricks), bt (batch). */
static char *workspace(void)
{
    char *ws = tl_tmpdir("plazws");
    char *root = tl_tmpdir("plazroot");
    char *key = sf_file(&S, "id_ed25519");
    char *port = fmt("ssh_port=%d", S.port), *kf = fmt("private_key_file=%s", key);
    char *rr = fmt("remote_root=%s", root);
    tl_result r = CT(ws, "compute", "attach", "vmbox", "--type", "remotevm", "--set",
                     "address=127.0.0.1", "--set", port, "--set", "username=root", "--set", kf,
                     "--set", rr, "--accept-new-host-key");
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    free(rr);
    free(kf);
    free(port);
    free(key);
    free(root);
    char *arm = fmt("arm_endpoint=%s", FX.arm), *aad = fmt("aad_endpoint=%s", FX.aad);
    char *ten = fmt("tenant_id=%s", FX.tenant_id), *cid = fmt("client_id=%s", FX.client_id);
    char *sec = fmt("client_secret=file:%s", SECRET_FILE);
    char *rid = fmt("resource_id=/subscriptions/%s/resourceGroups/%s/providers/"
                    "Microsoft.Databricks/workspaces/dbx-ctarget", FX.subscription_id,
                    FX.resource_group);
    char *tok = fmt("access_token=file:%s", PAT_FILE);
    char *cl = fmt("existing_cluster_id=%s", CLUSTER);
    r = CT(ws, "compute", "attach", "dbx", "--type", "databricks", "--set", arm, "--set", aad,
           "--set", ten, "--set", cid, "--set", sec, "--set", rid, "--set", tok, "--set", cl,
           "--set", "poll_ms=50");
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    char *rg = fmt("resource_group=%s", FX.resource_group);
    char *sub = fmt("subscription_id=%s", FX.subscription_id);
    char *se = fmt("storage_endpoint=%s", FX.blob), *sk = fmt("storage_key=file:%s", KEY_FILE);
    r = CT(ws, "compute", "attach", "btpool", "--type", "batch", "--set", "account_name=ctbatch",
           "--set", rg, "--set", sub, "--set", arm, "--set", aad, "--set", ten, "--set", cid,
           "--set", sec, "--set", se, "--set", "storage_account=devstoreaccount1", "--set", sk,
           "--set", "pool_id=ctpool");
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    free(sk);
    free(se);
    free(sub);
    free(rg);
    free(cl);
    free(tok);
    free(rid);
    free(sec);
    free(cid);
    free(ten);
    free(aad);
    free(arm);
    return ws;
}

static const char PREP_PY[] =
    "import os, sys\n"
    "out = os.environ['CTARGET_OUTPUT_FEATURES']\n"
    "os.makedirs(out, exist_ok=True)\n"
    "open(os.path.join(out, 'rows.txt'), 'w').write('\\n'.join(map(str, range(1, int(sys.argv[1]) + 1))))\n"
    "print('prep on', os.uname().nodename)\n";
static const char TRAIN_PY[] =
    "import os, sys, time\n"
    "rows = open(os.path.join(os.environ['CTARGET_INPUT_FEATURES'], 'rows.txt')).read().split()\n"
    "if len(sys.argv) > 1:\n"
    "    time.sleep(float(sys.argv[1]))\n"
    "out = os.environ['CTARGET_OUTPUT_MODEL']\n"
    "os.makedirs(out, exist_ok=True)\n"
    "open(os.path.join(out, 'model.txt'), 'w').write('weight=%d\\n' % sum(map(int, rows)))\n"
    "print('trained on', len(rows), 'rows')\n";
static const char SCORE_PY[] =
    "import os\n"
    "m = open(os.path.join(os.environ['CTARGET_INPUT_MODEL'], 'model.txt')).read().strip()\n"
    "out = os.environ['CTARGET_OUTPUT_REPORT']\n"
    "os.makedirs(out, exist_ok=True)\n"
    "open(os.path.join(out, 'report.txt'), 'w').write('scored with ' + m + '\\n')\n"
    "print('scored with', m)\n";

static const char *PIPE =
    "name: three-targets\n"
    "steps:\n"
    "  - name: prep\n    target: vmbox\n    source_directory: prep\n    script: prep.py\n"
    "    arguments: [6]\n    outputs: [features]\n"
    "  - name: train\n    type: databricks\n    target: dbx\n    source_directory: train\n"
    "    script: train.py\n    arguments: [%s]\n    inputs: {features: prep.features}\n"
    "    outputs: [model]\n    run_name: ctarget train\n"
    "  - name: score\n    type: batch\n    target: btpool\n    source_directory: score\n"
    "    script: score.py\n    inputs: {model: train.model}\n    outputs: [report]\n";




static char *sources(void)
{
    char *dir = tl_tmpdir("plazsrc");
    free(rl_write_in(dir, "prep/prep.py", PREP_PY));
    free(rl_write_in(dir, "train/train.py", TRAIN_PY));
    free(rl_write_in(dir, "score/score.py", SCORE_PY));
    return dir;
}

static void t_remotevm_databricks_batch_pipeline_passes_data_and_reuses(void)
{
    CU_ASSERT_FATAL(S_ok && FX_ok);
    char *ws = workspace(), *dir = sources();
    char *text = fmt(PIPE, "0"), *file = rl_write_in(dir, "pipeline.yaml", text);
    free(text);
    long long t0 = tl_now_ms();
    char *id = rl_pipeline_submit(ws, file, NOAZ);
    CU_ASSERT_PTR_NOT_NULL_FATAL(id);
    int code;
    json_t *p = rl_pipeline_wait(ws, id, &code, NOAZ);
    long long first = tl_now_ms() - t0;
    CU_ASSERT_EQUAL(code, 0);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(p, "status")), "Finished");
    CU_ASSERT_STRING_EQUAL(rl_step_get(p, "prep", "status"), "Completed");
    CU_ASSERT_STRING_EQUAL(rl_step_get(p, "train", "status"), "Completed");
    CU_ASSERT_STRING_EQUAL(rl_step_get(p, "score", "status"), "Completed");
    /* the data went remotevm -> Databricks -> Batch */
    char *rp = fmt("%s/runs/%s/outputs/model/model.txt", ws, rl_step_get(p, "train", "run"));
    char *m = tl_read_file(rp);
    CU_ASSERT_STRING_EQUAL(m ? m : "", "weight=21\n");
    free(m);
    free(rp);
    rp = fmt("%s/runs/%s/outputs/report/report.txt", ws, rl_step_get(p, "score", "run"));
    m = tl_read_file(rp);
    CU_ASSERT_STRING_EQUAL(m ? m : "", "scored with weight=21\n");
    free(m);
    free(rp);
    tl_result r = CT(ws, "run", "logs", rl_step_get(p, "train", "run"));
    CU_ASSERT(tl_contains(r.out, "trained on 6 rows"));
    tl_result_free(&r);
    r = CT(ws, "run", "logs", rl_step_get(p, "score", "run"));
    CU_ASSERT(tl_contains(r.out, "scored with weight=21"));
    tl_result_free(&r);
    json_decref(p);

    t0 = tl_now_ms();
    char *id2 = rl_pipeline_submit(ws, file, NOAZ);
    CU_ASSERT_PTR_NOT_NULL_FATAL(id2);
    p = rl_pipeline_wait(ws, id2, &code, NOAZ);
    long long second = tl_now_ms() - t0;
    CU_ASSERT_EQUAL(code, 0);
    CU_ASSERT_STRING_EQUAL(rl_step_get(p, "prep", "status"), "Reused");
    CU_ASSERT_STRING_EQUAL(rl_step_get(p, "train", "status"), "Reused");
    CU_ASSERT_STRING_EQUAL(rl_step_get(p, "score", "status"), "Reused");
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(p, "reused")), 3);
    r = CT(ws, "run", "list", "--parent", id2, "-o", "json");
    json_t *kids = tl_json(&r);
    CU_ASSERT_EQUAL(json_array_size(kids), 0);
    json_decref(kids);
    tl_result_free(&r);
    printf("\n    remotevm -> databricks -> batch: first run %lld ms, unchanged rerun %lld ms "
           "(all 3 steps reused)\n", first, second);
    json_decref(p);
    free(id2);
    free(id);
    free(file);
    free(dir);
    free(ws);
}

/* Work left in the emulators: a Databricks run whose process lives or whose life cycle has
 * not ended, Batch tasks running or jobs left over (the plugin deletes its job). */
static int live_in_emulators(void)
{
    json_t *st = azfix_state(&FX);
    int live = 0;
    const char *k;
    json_t *r;
    json_object_foreach(json_object_get(json_object_get(st, "databricks"), "runs"), k, r) {
        const char *lc = json_string_value(json_object_get(r, "life_cycle_state"));
        if (json_is_true(json_object_get(r, "alive")) || !lc || strcmp(lc, "TERMINATED")) {
            printf("\nDatabricks run %s is still %s\n", k, lc ? lc : "?");
            live = 1;
        }
    }
    json_t *b = json_object_get(st, "batch");
    CU_ASSERT_PTR_NOT_NULL(b);
    if (json_integer_value(json_object_get(b, "running")) != 0 ||
        json_object_size(json_object_get(b, "jobs")) != 0) {
        char *t = json_dumps(b, JSON_COMPACT);
        printf("\nBatch still has work: %s\n", t);
        free(t);
        live = 1;
    }
    json_decref(st);
    return live;
}

static void t_canceling_the_three_target_pipeline_leaves_nothing_running(void)
{
    CU_ASSERT_FATAL(S_ok && FX_ok);
    char *ws = workspace(), *dir = sources();
    char *text = fmt(PIPE, "60"), *file = rl_write_in(dir, "pipeline.yaml", text);
    free(text);
    char *id = rl_pipeline_submit(ws, file, NOAZ);
    CU_ASSERT_PTR_NOT_NULL_FATAL(id);
    /* until the Databricks step runs */
    long long until = tl_now_ms() + 60000;
    int running = 0;
    while (!running && tl_now_ms() < until) {
        tl_result r = CT(ws, "pipeline", "show", id, "-o", "json");
        json_t *p = tl_json(&r);
        running = !strcmp(rl_step_get(p, "train", "status"), "Running");
        json_decref(p);
        tl_result_free(&r);
        if (!running)
            rl_sleep_ms(100);
    }
    CU_ASSERT_FATAL(running);
    tl_result r = CT(ws, "pipeline", "cancel", id);
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    int code;
    json_t *p = rl_pipeline_wait(ws, id, &code, NOAZ);
    CU_ASSERT_EQUAL(code, 130);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(p, "status")), "Canceled");
    CU_ASSERT_STRING_EQUAL(rl_step_get(p, "prep", "status"), "Completed");
    CU_ASSERT_STRING_EQUAL(rl_step_get(p, "train", "status"), "Canceled");
    CU_ASSERT_STRING_EQUAL(rl_step_get(p, "score", "status"), "Canceled");
    CU_ASSERT(!live_in_emulators());
    json_decref(p);
    free(id);
    free(file);
    free(dir);
    free(ws);
}

static void add(CU_pSuite s)
{
    TL_ADD(s, t_remotevm_databricks_batch_pipeline_passes_data_and_reuses);
    TL_ADD(s, t_canceling_the_three_target_pipeline_leaves_nothing_running);
}

static void setup(CU_pSuite s)
{
    char *home = tl_tmpdir("plazhome");
    setenv("HOME", home, 1);
    free(home);
    const char *pp = getenv("CTARGET_PLUGIN_PATH");
    char *path = fmt("%s/plugins/remotevm/.libs:%s/plugins/databricks/.libs:%s/plugins/batch/"
                     ".libs%s%s", tl_builddir(), tl_builddir(), tl_builddir(),
                     pp && *pp ? ":" : "", pp ? pp : "");
    setenv("CTARGET_PLUGIN_PATH", path, 1);
    free(path);
    char *dir = tl_tmpdir("plazsshd");
    S_ok = sf_start(&S, dir, 0) == 0;
    free(dir);
    azfix_opts o = {.lro_ms = 200, .job_phase_ms = 50};
    FX_ok = azfix_start(&FX, &o) == 0;
    if (FX_ok) {
        setenv("CTARGET_CA_BUNDLE", FX.ca_bundle, 1);
        unsetenv("AZURE_CLIENT_SECRET");
        char *sd = tl_tmpdir("plazsecret");
        SECRET_FILE = tl_path(sd, "sp-secret");
        PAT_FILE = tl_path(sd, "pat");
        KEY_FILE = tl_path(sd, "storage-key");
        tl_write_file(SECRET_FILE, FX.client_secret);
        tl_write_file(PAT_FILE, PAT);
        tl_write_file(KEY_FILE, AZURITE_KEY);
        chmod(SECRET_FILE, 0600);
        chmod(PAT_FILE, 0600);
        chmod(KEY_FILE, 0600);
        free(sd);
        azfix_config(&FX, "{\"batch_pool_alloc_ms\":200}");
    }
    add(s);
}

int main(int argc, char **argv)
{
    return tl_main(argc, argv, "pipeline_azure", setup);
}
