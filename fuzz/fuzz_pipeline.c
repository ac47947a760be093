/* Fuzz target: pipeline files (`ctarget pipeline submit FILE`, core/pipeline/config.c:
 * JSON or YAML through libyaml, the keys, the names, the graph).
 *
 * Properties: a refusal always says why and gives nothing back; an accepted pipeline has
 * 1..PL_MAX_STEPS steps with unique names, every dependency is another step whose outputs
 * include what the input names, the graph has no cycle (a topological order exists), every
 * run step has a target, an absolute source_directory and a script, and max_parallel is in
 * range.  Anchors cannot expand past the node limit (a YAML bomb is refused, not run). */
#include "config.h"

#include "fuzz.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <jansson.h>

#include "pipeline/pipeline.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char file[4300], dir[4200];
    snprintf(dir, sizeof dir, "%s/pl", fz_scratch());
    snprintf(file, sizeof file, "%s/pl/pipeline.yaml", fz_scratch());
    fz_wipe(fz_scratch());
    FZ_CHECK(mkdir(dir, 0700) == 0, "cannot create %s", dir);
    fz_write_file(file, data, size);
    ctarget_error err;
    ctarget_error_init(&err);
    pl_config c;
    if (pl_config_load(file, &c, &err) != CTARGET_OK) {
        FZ_CHECK(err.message[0], "refused without a message");
        FZ_CHECK(!c.doc && !c.steps, "refused, yet a pipeline came back");
        fz_note("refused: %s", err.message);
        return 0;
    }
    FZ_CHECK(c.n >= 1 && c.n <= PL_MAX_STEPS, "%zu steps accepted", c.n);
    FZ_CHECK(c.max_parallel >= 1 && c.max_parallel <= 64, "max_parallel %lld", c.max_parallel);
    FZ_CHECK(c.experiment && *c.experiment, "no experiment");
    for (size_t i = 0; i < c.n; i++) {
        const pl_step *s = &c.steps[i];
        FZ_CHECK(s->name && s->type, "step %zu without name or type", i);
        for (size_t j = 0; j < i; j++)
            FZ_CHECK(strcmp(s->name, c.steps[j].name), "two steps named '%s'", s->name);
        if (s->run) {
            const char *sd = json_string_value(json_object_get(s->run, "source_directory"));
            FZ_CHECK(sd && sd[0] == '/', "step '%s': source_directory not absolute", s->name);
            FZ_CHECK(json_string_value(json_object_get(s->run, "target")) &&
                         json_string_value(json_object_get(s->run, "script")),
                     "step '%s' without target or script", s->name);
        } else {
            FZ_CHECK(s->source && json_array_size(s->outputs) == 1,
                     "data transfer step '%s' without source or one output", s->name);
        }
        for (size_t d = 0; d < s->n_deps; d++)
            FZ_CHECK(s->deps[d] < c.n && s->deps[d] != i, "step '%s': bad dependency", s->name);
        const char *k;
        json_t *v;
        json_object_foreach(s->inputs, k, v) {
            char *st = NULL, *out = NULL;
            FZ_CHECK(pl_split_ref(json_string_value(v), &st, &out) == 0,
                     "step '%s': input '%s' malformed", s->name, k);
            long j = pl_step_index(&c, st);
            FZ_CHECK(j >= 0 && (size_t)j != i, "step '%s': input from '%s'", s->name, st);
            int found = 0;
            size_t x;
            json_t *o;
            json_array_foreach(c.steps[j].outputs, x, o) found |=
                !strcmp(json_string_value(o), out);
            FZ_CHECK(found, "step '%s': input names output '%s' that '%s' lacks", s->name, out,
                     st);
            free(st);
            free(out);
        }
    }
    /* acyclic: Kahn's algorithm consumes every step */
    size_t *indeg = calloc(c.n, sizeof *indeg), done = 0;
    int *gone = calloc(c.n, sizeof *gone);
    FZ_CHECK(indeg && gone, "out of memory");
    for (size_t i = 0; i < c.n; i++)
        indeg[i] = c.steps[i].n_deps;
    for (int progress = 1; progress;) {
        progress = 0;
        for (size_t i = 0; i < c.n; i++) {
            if (gone[i] || indeg[i])
                continue;
            gone[i] = 1;
            done++;
            progress = 1;
            for (size_t j = 0; j < c.n; j++)
                for (size_t d = 0; d < c.steps[j].n_deps; d++)
                    if (c.steps[j].deps[d] == i)
                        indeg[j]--;
        }
    }
    FZ_CHECK(done == c.n, "a cycle was accepted (%zu of %zu steps ordered)", done, c.n);
    free(indeg);
    free(gone);
    fz_note("accepted: %zu steps", c.n);
    pl_config_free(&c);
    return 0;
}
