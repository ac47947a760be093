/* Pipelines: a DAG of steps, each a run on a compute target, joined by their data.
 *
 *   config.c   the pipeline file (JSON or YAML): keys, types, names, the graph (unknown
 *              inputs, cycles), each step's run configuration; nothing touches a workspace
 *   check.c    everything the workspace can tell before anything runs: targets exist, have
 *              the step's capability and type, sources and scripts are there
 *   driver.c   the driver: the pipeline (parent) run's monitor process; stages each step's
 *              inputs into its snapshot, reuses unchanged steps, starts steps as their inputs
 *              are ready (max_parallel at once), ends the pipeline Finished/Failed/Canceled
 *   api.c      submit, show, list, wait, cancel
 *
 * A pipeline is a run of kind 'pipeline' (target "pipeline"); each step that runs is a
 * child run (parent = the pipeline) of kind 'step', recorded in pipeline_steps first. */
#ifndef CTARGET_CORE_PIPELINE_H
#define CTARGET_CORE_PIPELINE_H

#include <stddef.h>

#include <jansson.h>

#include <ctarget/ctarget.h>

typedef struct pl_step {
    const char *name;        /* all borrowed from the config's doc */
    const char *type;        /* "script", "data_transfer", or a target type */
    json_t *run;             /* the step's run configuration (checked, paths absolute);
                              * NULL for data_transfer */
    json_t *keys;            /* the type's own keys (an object; {} for script steps) */
    json_t *inputs;          /* {local name: "step.output"} */
    json_t *outputs;         /* ["name", ...] */
    const char *source;      /* data_transfer: "step.output", or an absolute path */
    int source_is_output;    /* data_transfer: source names a step's output */
    int allow_reuse;
    size_t *deps;            /* indices of the steps whose outputs it uses (owned) */
    size_t n_deps;
} pl_step;

typedef struct pl_config {
    json_t *doc;             /* the normalized document (owned), stored with the pipeline */
    const char *name;
    const char *experiment;
    long long max_parallel;
    int continue_on_failure;
    pl_step *steps;
    size_t n;
} pl_config;

#define PL_MAX_STEPS 256

/* Read and check a pipeline file; JSON when it starts with '{', YAML otherwise. */
ctarget_status pl_config_load(const char *file, pl_config *c, ctarget_error *err);
/* Rebuild from a stored normalized document (already checked; borrowed: a new reference is
 * taken). */
ctarget_status pl_config_from_doc(json_t *doc, pl_config *c, ctarget_error *err);
void pl_config_free(pl_config *c);
/* A YAML text as JSON (the core schema: null, booleans, numbers, strings; anchors are
 * expanded, at most a bounded number of nodes).  what names the file in messages. */
json_t *pl_yaml_load(const char *text, size_t len, const char *what, ctarget_error *err);
/* Index of the step named name, or -1. */
long pl_step_index(const pl_config *c, const char *name);
/* Split "step.output"; 0 when well formed (step and out owned). */
int pl_split_ref(const char *ref, char **step, char **out);

/* Every step's target, capability and source checked against the workspace. */
ctarget_status pl_check(ctarget_ws *ws, const pl_config *c, const char *file,
                        ctarget_error *err);

/* Be the driver of pipeline `id` until it ends; the caller holds its monitor lock. */
void pl_drive(ctarget_ws *ws, const char *id);

#endif
