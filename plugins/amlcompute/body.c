/* The JSON request bodies the Azure ML plugins send (api-version 2025-12-01 schemas:
 * ComputeResource with AmlCompute/ComputeInstance, ClusterUpdateParameters, CodeVersion,
 * EnvironmentVersion, CommandJob).  Only values from the target's settings and the run go in;
 * secrets (admin_user_password) are read through the host and wiped after the body is sent. */
#include "config.h"

#include "aml.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

void aml_duration(char *buf, size_t len, long long seconds)
{
    snprintf(buf, len, "PT%lldS", seconds < 0 ? 0 : seconds);
}

static const char *cfg(ctarget_target *t, const char *key)
{
    const char *v = aml_h->config_get0(t, key);
    return v && *v ? v : NULL;
}

static int truthy(const char *v)
{
    return v && (!strcasecmp(v, "true") || !strcasecmp(v, "yes") || !strcmp(v, "1") ||
                 !strcasecmp(v, "on"));
}

static long long num(ctarget_target *t, const char *key, long long dflt)
{
    const char *v = cfg(t, key);
    return v ? strtoll(v, NULL, 10) : dflt;
}

static json_t *subnet_id(ctarget_target *t, const char *subscription, const char *group)
{
    const char *rg = cfg(t, "vnet_resourcegroup_name"), *vnet = cfg(t, "vnet_name"),
               *sn = cfg(t, "subnet_name");
    if (!vnet || !sn)
        return NULL;
    char id[1024];
    snprintf(id, sizeof id,
             "/subscriptions/%s/resourceGroups/%s/providers/Microsoft.Network/virtualNetworks/"
             "%s/subnets/%s", subscription, rg ? rg : group, vnet, sn);
    return json_pack("{s:s}", "id", id);
}

static json_t *scale_settings(ctarget_target *t)
{
    char idle[64];
    aml_duration(idle, sizeof idle, num(t, "idle_seconds_before_scaledown", 120));
    return json_pack("{s:I, s:I, s:s}", "maxNodeCount", (json_int_t)num(t, "max_nodes", 1),
                     "minNodeCount", (json_int_t)num(t, "min_nodes", 0),
                     "nodeIdleTimeBeforeScaleDown", idle);
}

json_t *aml_identity_body(ctarget_target *t)
{
    const char *type = cfg(t, "identity_type");
    if (!type)
        return NULL;
    const char *wire = !strcasecmp(type, "systemassigned")   ? "SystemAssigned"
                       : !strcasecmp(type, "userassigned")   ? "UserAssigned"
                       : !strcasecmp(type, "none")           ? "None"
                                                             : "SystemAssigned,UserAssigned";
    json_t *id = json_pack("{s:s}", "type", wire);
    const char *ids = cfg(t, "identity_id");
    if (ids && strcasecmp(type, "systemassigned") && strcasecmp(type, "none")) {
        json_t *m = json_object();
        char *copy = strdup(ids), *save = NULL;
        for (char *p = copy ? strtok_r(copy, ",", &save) : NULL; p;
             p = strtok_r(NULL, ",", &save)) {
            while (*p == ' ')
                p++;
            size_t n = strlen(p);
            while (n && p[n - 1] == ' ')
                p[--n] = '\0';
            if (*p)
                json_object_set_new(m, p, json_object());
        }
        free(copy);
        json_object_set_new(id, "userAssignedIdentities", m);
    }
    return id;
}

ctarget_status aml_compute_body(aml_kind k, ctarget_target *t, const char *subscription,
                                const char *group, const char *location, json_t **body,
                                ctarget_error *err)
{
    json_t *inner = json_object();
    json_object_set_new(inner, "vmSize", json_string(cfg(t, "vm_size")));
    json_t *subnet = subnet_id(t, subscription, group);
    if (subnet)
        json_object_set_new(inner, "subnet", subnet);
    if (k == AML_CLUSTER) {
        const char *prio = cfg(t, "vm_priority");
        json_object_set_new(inner, "vmPriority",
                            json_string(prio && !strcasecmp(prio, "lowpriority") ? "LowPriority"
                                                                                 : "Dedicated"));
        json_object_set_new(inner, "osType", json_string("Linux"));
        json_object_set_new(inner, "scaleSettings", scale_settings(t));
        const char *rl = cfg(t, "remote_login_port_public_access");
        json_object_set_new(inner, "remoteLoginPortPublicAccess",
                            json_string(!rl                           ? "NotSpecified"
                                        : !strcasecmp(rl, "enabled")  ? "Enabled"
                                        : !strcasecmp(rl, "disabled") ? "Disabled"
                                                                      : "NotSpecified"));
        const char *user = cfg(t, "admin_username");
        if (user) {
            json_t *cred = json_pack("{s:s}", "adminUserName", user);
            const char *key = cfg(t, "admin_user_ssh_key");
            if (key)
                json_object_set_new(cred, "adminUserSshPublicKey", json_string(key));
            if (cfg(t, "admin_user_password")) {
                char *pw = NULL;
                ctarget_status rc = aml_h->secret_get1(t, "admin_user_password", &pw, err);
                if (rc) {
                    json_decref(cred);
                    json_decref(inner);
                    return rc;
                }
                json_object_set_new(cred, "adminUserPassword", json_string(pw));
                aml_h->secret_free(pw);
            }
            json_object_set_new(inner, "userAccountCredentials", cred);
        }
    } else {
        json_t *ssh = json_pack("{s:s}", "sshPublicAccess",
                                truthy(cfg(t, "ssh_public_access")) ? "Enabled" : "Disabled");
        const char *key = cfg(t, "admin_user_ssh_public_key");
        if (key)
            json_object_set_new(ssh, "adminPublicKey", json_string(key));
        json_object_set_new(inner, "sshSettings", ssh);
        json_object_set_new(inner, "applicationSharingPolicy", json_string("Personal"));
    }
    json_t *props = json_pack("{s:s, s:s, s:o}", "computeType", aml_compute_type(k),
                              "description", "created by ctarget", "properties", inner);
    json_t *b = json_pack("{s:s, s:o, s:{s:s}}", "location", location, "properties", props,
                          "tags", "created_by", "ctarget");
    json_t *id = aml_identity_body(t);
    if (id)
        json_object_set_new(b, "identity", id);
    *body = b;
    return CTARGET_OK;
}

json_t *aml_cluster_patch_body(ctarget_target *t)
{
    return json_pack("{s:{s:{s:o}}}", "properties", "properties", "scaleSettings",
                     scale_settings(t));
}

json_t *aml_code_version_body(const char *code_uri, const char *snapshot_id)
{
    return json_pack("{s:{s:s, s:s, s:b, s:{s:s}}}", "properties", "codeUri", code_uri,
                     "description", "ctarget snapshot", "isAnonymous", 0, "tags",
                     "ctarget_snapshot", snapshot_id);
}

/* The image every run starts from: Azure ML's own base image for command jobs. */
#define AML_BASE_IMAGE "mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu22.04:latest"

json_t *aml_environment_body(const ctarget_run_info *run, const char *conda_yaml)
{
    json_t *p = json_pack("{s:s, s:s}", "image",
                          run->docker_image ? run->docker_image : AML_BASE_IMAGE, "description",
                          "ctarget environment");
    if (conda_yaml)
        json_object_set_new(p, "condaFile", json_string(conda_yaml));
    return json_pack("{s:o}", "properties", p);
}

char *aml_sh_quote(const char *s)
{
    size_t n = 2;
    for (const char *p = s; *p; p++)
        n += *p == '\'' ? 4 : 1;
    char *q = malloc(n + 1), *o = q;
    if (!q)
        return NULL;
    *o++ = '\'';
    for (const char *p = s; *p; p++) {
        if (*p == '\'') {
            memcpy(o, "'\\''", 4);
            o += 4;
        } else {
            *o++ = *p;
        }
    }
    *o++ = '\'';
    *o = '\0';
    return q;
}

static int add_word(aml_buf *b, const char *w)
{
    char *q = aml_sh_quote(w);
    int rc = !q || aml_buf_add(b, " ", 1) || aml_buf_add(b, q, strlen(q));
    free(q);
    return rc ? -1 : 0;
}

char *aml_job_command(const ctarget_run_info *run)
{
    aml_buf b = {0};
    int bad = 0;
    const char *head = "python3 ctarget_boot.py ${{inputs.ctarget_blobs}} --run-id";
    bad |= aml_buf_add(&b, head, strlen(head));
    bad |= add_word(&b, run->id);
    bad |= aml_buf_add(&b, " --", 3);
    bad |= add_word(&b, run->python && *run->python ? run->python : "python3");
    bad |= add_word(&b, run->script);
    for (size_t i = 0; i < run->n_args; i++)
        bad |= add_word(&b, run->args[i]);
    bad |= aml_buf_add(&b, "", 1);
    if (bad) {
        aml_buf_free(&b);
        return NULL;
    }
    return b.data;
}

json_t *aml_command_job_body(const ctarget_run_info *run, const char *compute_id,
                             const char *code_id, const char *env_id, const char *blob_input_uri)
{
    char *cmd = aml_job_command(run);
    if (!cmd)
        return NULL;
    json_t *envv = json_object();
    for (size_t i = 0; i < run->n_env; i++) {
        const char *eq = strchr(run->env[i], '=');
        if (!eq || eq == run->env[i])
            continue;
        char name[256];
        snprintf(name, sizeof name, "%.*s", (int)(eq - run->env[i]), run->env[i]);
        json_object_set_new(envv, name, json_string(eq + 1));
    }
    json_t *p = json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:o, s:{s:I}, s:{s:s, s:s}}",
                          "jobType", "Command", "command", cmd, "codeId", code_id,
                          "computeId", compute_id, "environmentId", env_id, "displayName",
                          run->id, "experimentName",
                          run->experiment && *run->experiment ? run->experiment : "Default",
                          "environmentVariables", envv, "resources", "instanceCount",
                          (json_int_t)(run->node_count ? run->node_count : 1),
                          "properties", "ctarget_run_id", run->id,
                          "ctarget_snapshot", run->snapshot_id);
    free(cmd);
    json_object_set_new(p, "inputs",
                        json_pack("{s:{s:s, s:s, s:s}}", "ctarget_blobs", "jobInputType",
                                  "uri_folder", "uri", blob_input_uri, "mode", "ReadOnlyMount"));
    if (run->timeout_seconds > 0) {
        char d[64];
        aml_duration(d, sizeof d, run->timeout_seconds);
        json_object_set_new(p, "limits",
                            json_pack("{s:s, s:s}", "jobLimitsType", "Command", "timeout", d));
    }
    if (run->node_count > 1)
        json_object_set_new(p, "distribution",
                            json_pack("{s:s, s:i}", "distributionType", "Mpi",
                                      "processCountPerInstance", 1));
    return json_pack("{s:o}", "properties", p);
}
