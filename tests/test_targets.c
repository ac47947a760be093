/* Every compute-target plugin this build enabled loads through the real ctarget command, with
 * its capabilities as TARGETS.md's matrix has them; a default build has all ten seed targets
 * (TARGETS.md) and slurm. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testlib.h"

static const char *const SEEDS[] = {"local", "remotevm", "amlcompute", "computeinstance",
                                    "aci", "aks", "hdinsight", "databricks", "adla", "batch"};

/* the enabled plugins (configure's list), space-separated */
static int enabled(const char *name)
{
    const char *list = getenv("CTARGET_TEST_ENABLED_PLUGINS");
    if (!list)
        return 0;
    size_t n = strlen(name);
    for (const char *p = list; (p = strstr(p, name)); p += n)
        if ((p == list || p[-1] == ' ') && (p[n] == ' ' || !p[n]))
            return 1;
    return 0;
}

static json_t *find(json_t *all, const char *name)
{
    size_t i;
    json_t *p;
    json_array_foreach(all, i, p) if (!strcmp(json_string_value(json_object_get(p, "name")),
                                              name)) return p;
    return NULL;
}

static void t_every_enabled_plugin_loads(void)
{
    const char *list = getenv("CTARGET_TEST_ENABLED_PLUGINS");
    CU_ASSERT_PTR_NOT_NULL_FATAL(list);
    char *path = NULL;
    size_t len = 0;
    FILE *m = open_memstream(&path, &len);
    char *copy = strdup(list);
    for (char *save = NULL, *t = strtok_r(copy, " ", &save); t; t = strtok_r(NULL, " ", &save))
        fprintf(m, "%s%s/plugins/%s/.libs", len || ftell(m) ? ":" : "", tl_builddir(), t);
    fclose(m);
    const char *env[] = {NULL, NULL};
    char *pp = NULL;
    if (asprintf(&pp, "CTARGET_PLUGIN_PATH=%s", path) < 0)
        abort();
    env[0] = pp;
    tl_result r = tl_ctarget_run(NULL, NULL, env, (const char *const[]){"plugins", "-o", "json",
                                                                         NULL});
    TL_ASSERT_EXIT(r, 0);
    json_t *all = tl_json(&r);
    size_t seeds = 0, n = 0;
    copy = strcpy(copy, list);
    for (char *save = NULL, *t = strtok_r(copy, " ", &save); t; t = strtok_r(NULL, " ", &save)) {
        json_t *p = find(all, t);
        const char *st = json_string_value(json_object_get(p, "status"));
        if (!st || strcmp(st, "loaded"))
            printf("\nplugin %s: %s (%s)\n", t, st ? st : "not listed",
                   json_string_value(json_object_get(p, "reason")));
        CU_ASSERT(st && !strcmp(st, "loaded"));
        n++;
    }
    for (size_t i = 0; i < sizeof SEEDS / sizeof *SEEDS; i++)
        seeds += enabled(SEEDS[i]);
    printf("\n    %zu plugins enabled and loaded, %zu of the 10 seed targets\n", n, seeds);
    /* a build that disables none has every seed target */
    if (!getenv("CTARGET_TEST_SOME_DISABLED"))
        CU_ASSERT_EQUAL(seeds, 10);
    json_decref(all);
    tl_result_free(&r);
    free(copy);
    free(pp);
    free(path);
}

/* The capability matrix (TARGETS.md) as the plugins declare it: the pipeline-only types are
 * never created (their refusals are each plugin's own tests). */
static void t_capabilities_follow_the_matrix(void)
{
    static const struct {
        const char *type;
    } rows[] = {{"databricks"}, {"adla"}, {"batch"}};
    for (size_t i = 0; i < sizeof rows / sizeof *rows; i++) {
        if (!enabled(rows[i].type))
            continue;
        char *pp = NULL;
        if (asprintf(&pp, "CTARGET_PLUGIN_PATH=%s/plugins/%s/.libs", tl_builddir(),
                     rows[i].type) < 0)
            abort();
        const char *env[] = {pp, NULL};
        tl_result r = tl_ctarget_run(NULL, NULL, env, (const char *const[]){"plugins", "-o",
                                                                             "json", NULL});
        json_t *all = tl_json(&r);
        json_t *p = find(all, rows[i].type);
        json_t *caps = json_object_get(p, "capabilities");
        char *text = json_dumps(caps, JSON_COMPACT);
        if (!text || !strstr(text, "\"pipeline-only\"") || strstr(text, "\"create\""))
            printf("\n%s capabilities: %s\n", rows[i].type, text ? text : "none");
        CU_ASSERT(text && strstr(text, "\"pipeline-only\"") && !strstr(text, "\"create\""));
        free(text);
        json_decref(all);
        tl_result_free(&r);
        free(pp);
    }
}

static void add(CU_pSuite s)
{
    TL_ADD(s, t_every_enabled_plugin_loads);
    TL_ADD(s, t_capabilities_follow_the_matrix);
}

int main(int argc, char **argv)
{
    return tl_main(argc, argv, "targets", add);
}
