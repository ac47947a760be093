/* Compute operations shared by amlcompute and computeinstance: create (one idempotent PUT;
 * status() and `--wait` follow the provisioning), attach (the compute exists in the
 * workspace: by name or resource id), status, delete (LRO), detach (forget), power actions.
 *
 * The compute's name in the workspace is the target's name, or the last segment of
 * resource_id.  ctarget never deletes a compute it did not create: the core refuses `delete`
 * of an attached target, create records created_by_ctarget in the facts and tags the
 * resource, and create refuses a name that already exists in the workspace. */
#include "config.h"

#include "aml.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

const char *aml_compute_type(aml_kind k)
{
    return k == AML_CLUSTER ? "AmlCompute" : "ComputeInstance";
}

const char *aml_plugin_name(aml_kind k)
{
    return k == AML_CLUSTER ? "amlcompute" : "computeinstance";
}

static const char *cfg(ctarget_target *t, const char *key)
{
    const char *v = aml_h->config_get0(t, key);
    return v && *v ? v : NULL;
}

const char *aml_compute_name(ctarget_target *t)
{
    const char *rid = cfg(t, "resource_id");
    if (rid) {
        const char *slash = strrchr(rid, '/');
        if (slash && slash[1])
            return slash + 1;
    }
    return aml_h->target_name(t);
}

char *aml_compute_id(az_ctx *az, ctarget_target *t)
{
    return az_ws_resource_id(az, "computes", aml_compute_name(t));
}

static void what_of(char *buf, size_t len, ctarget_target *t)
{
    snprintf(buf, len, "compute '%s'", aml_compute_name(t));
}

ctarget_status aml_compute_get(az_ctx *az, ctarget_target *t, json_t **out, ctarget_error *err)
{
    char what[200];
    what_of(what, sizeof what, t);
    char *id = aml_compute_id(az, t);
    az_arm_req rq = {.method = "GET", .path = id, .api_version = AZ_AML_API_VERSION,
                     .what = what};
    *out = NULL;
    ctarget_status rc = az_arm_do(az, &rq, AZ_OK_404, out, err);
    free(id);
    return rc;
}

ctarget_status aml_validate_common(aml_kind k, ctarget_target *t, ctarget_verb verb,
                                   ctarget_error *err)
{
    const char *rid = cfg(t, "resource_id");
    if (rid) {
        az_rid r;
        int bad = az_rid_parse(rid, &r);
        int ok = !bad && r.type &&
                 !strcasecmp(r.type, "Microsoft.MachineLearningServices/workspaces/computes");
        if (ok) {
            const char *sub = cfg(t, "subscription_id"), *rg = cfg(t, "resource_group"),
                       *ws = cfg(t, "workspace_name");
            if ((sub && strcasecmp(sub, r.subscription)) ||
                (rg && strcasecmp(rg, r.resource_group)) ||
                (ws && r.parent_name && strcasecmp(ws, r.parent_name))) {
                aml_h->error_set(err, CTARGET_E_CONFIG, 0, 0,
                                 "resource_id names a compute of workspace %s/%s/%s, but the "
                                 "target's settings name %s/%s/%s: give one of them",
                                 r.subscription, r.resource_group,
                                 r.parent_name ? r.parent_name : "?", sub ? sub : "-",
                                 rg ? rg : "-", ws ? ws : "-");
                az_rid_clear(&r);
                return CTARGET_E_CONFIG;
            }
        }
        if (!bad)
            az_rid_clear(&r);
        if (!ok) {
            aml_h->error_set(err, CTARGET_E_CONFIG, 0, 0,
                             "resource_id '%s' is not an Azure ML compute id: expected "
                             "/subscriptions/SUB/resourceGroups/RG/providers/"
                             "Microsoft.MachineLearningServices/workspaces/WS/computes/NAME",
                             rid);
            return CTARGET_E_CONFIG;
        }
    }
    if (verb != CTARGET_VERB_ATTACH) {
        const char *vnet = cfg(t, "vnet_name"), *sn = cfg(t, "subnet_name");
        if (!vnet != !sn) {
            aml_h->error_set(err, CTARGET_E_CONFIG, 0, 0,
                             "a virtual network needs both vnet_name and subnet_name (and "
                             "vnet_resourcegroup_name when it is not in the workspace's "
                             "resource group)");
            return CTARGET_E_CONFIG;
        }
        if (cfg(t, "vnet_resourcegroup_name") && !vnet) {
            aml_h->error_set(err, CTARGET_E_CONFIG, 0, 0,
                             "vnet_resourcegroup_name is set without vnet_name and subnet_name");
            return CTARGET_E_CONFIG;
        }
        const char *vs = cfg(t, "vm_size");
        if (vs && (strchr(vs, '/') || strchr(vs, ' '))) {
            aml_h->error_set(err, CTARGET_E_CONFIG, 0, 0,
                             "vm_size '%s' is not a VM size name (e.g. STANDARD_D2_V2)", vs);
            return CTARGET_E_CONFIG;
        }
    }
    (void)k;
    return CTARGET_OK;
}

/* <workspace>/plugins/<type>/<target>/compute-id: the compute each target of this type in the
 * workspace stands for, so attach can refuse a compute already attached (or created) under
 * another name, whether that target was given a resource_id or only its name. */
static void id_file_write(ctarget_target *t, const char *id)
{
    const char *d = aml_h->target_state_dir0(t);
    if (!d)
        return;
    char path[4096], tmp[4200];
    snprintf(path, sizeof path, "%s/compute-id", d);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "we");
    if (!f)
        return;
    int bad = fprintf(f, "%s\n", id) < 0;
    bad |= fclose(f) != 0;
    if (bad || rename(tmp, path) != 0)
        unlink(tmp);
}

/* the name of another target of this type in the workspace that stands for compute id */
static int id_taken(ctarget_target *t, const char *id, char *other, size_t len)
{
    const char *d = aml_h->target_state_dir0(t);
    const char *me = aml_h->target_name(t);
    if (!d)
        return 0;
    char parent[4096];
    snprintf(parent, sizeof parent, "%s", d);
    char *slash = strrchr(parent, '/');
    if (!slash)
        return 0;
    *slash = '\0';
    DIR *dir = opendir(parent);
    if (!dir)
        return 0;
    int hit = 0;
    struct dirent *e;
    while (!hit && (e = readdir(dir)) != NULL) {
        if (e->d_name[0] == '.' || !strcasecmp(e->d_name, me))
            continue;
        char line[2048];
        size_t pl = strlen(parent) + strlen(e->d_name) + 16;
        char *path = malloc(pl);
        if (!path)
            break;
        snprintf(path, pl, "%s/%s/compute-id", parent, e->d_name);
        FILE *f = fopen(path, "re");
        free(path);
        if (!f)
            continue;
        if (fgets(line, sizeof line, f)) {
            line[strcspn(line, "\n")] = '\0';
            if (!strcasecmp(line, id)) {
                hit = 1;
                snprintf(other, len, "%s", e->d_name);
            }
        }
        fclose(f);
    }
    closedir(dir);
    return hit;
}

static void record(az_ctx *az, ctarget_target *t, ctarget_obj *facts, json_t *res, int created)
{
    char *id = aml_compute_id(az, t);
    aml_h->obj_set_str(facts, "compute_id", id);
    id_file_write(t, id);
    free(id);
    aml_h->obj_set_str(facts, "compute_name", aml_compute_name(t));
    aml_h->obj_set_bool(facts, "created_by_ctarget", created);
    const char *loc = json_string_value(json_object_get(res, "location"));
    if (loc)
        aml_h->obj_set_str(facts, "location", loc);
    json_t *p = json_object_get(json_object_get(res, "properties"), "properties");
    const char *vs = json_string_value(json_object_get(p, "vmSize"));
    if (vs)
        aml_h->obj_set_str(facts, "vm_size", vs);
    const char *prio = json_string_value(json_object_get(p, "vmPriority"));
    if (prio)
        aml_h->obj_set_str(facts, "vm_priority", prio);
    aml_h->obj_set_str(facts, "credential", az_credential_desc0(az));
}

ctarget_status aml_create(aml_kind k, ctarget_call *c, ctarget_target *t, ctarget_obj *facts,
                          ctarget_error *err)
{
    az_ctx *az;
    ctarget_status rc = aml_az(c, t, &az, err);
    if (rc)
        return rc;
    json_t *existing = NULL, *body = NULL;
    char *loc = NULL, *id = NULL;
    const char *name = aml_compute_name(t);
    aml_h->progress(c, "checking the workspace", 0, 0);
    if ((rc = aml_compute_get(az, t, &existing, err)))
        goto out;
    if (existing) {
        aml_h->error_set(err, CTARGET_E_EXISTS, 0, 0,
                         "a compute named '%s' already exists in workspace '%s': attach it "
                         "with `ctarget compute attach %s --type %s`, or choose another name",
                         name, az_workspace0(az), name, aml_plugin_name(k));
        rc = CTARGET_E_EXISTS;
        goto out;
    }
    const char *l = cfg(t, "location");
    if (l)
        loc = strdup(l);
    else if ((rc = aml_ws_location(az, &loc, err)))
        goto out;
    if ((rc = aml_compute_body(k, t, az_subscription0(az), az_resource_group0(az), loc,
                               &body, err)))
        goto out;
    id = aml_compute_id(az, t);
    char what[200];
    what_of(what, sizeof what, t);
    az_arm_req rq = {.method = "PUT", .path = id, .api_version = AZ_AML_API_VERSION,
                     .body = body, .what = what};
    az_arm_resp rs = {0};
    aml_h->progress(c, "creating", 0, 0);
    /* PUT is idempotent: a retried request never makes a second compute */
    rc = az_arm_call(az, &rq, 0, &rs, err);
    if (!rc) {
        if ((rc = az_ws_save(az, facts, err)) == CTARGET_OK)
            record(az, t, facts, rs.body ? rs.body : body, 1);
    }
    az_arm_resp_clear(&rs);
out:
    /* the body may hold the admin password: wipe it before freeing */
    if (body) {
        json_t *cred = json_object_get(
            json_object_get(json_object_get(body, "properties"), "properties"),
            "userAccountCredentials");
        if (json_object_get(cred, "adminUserPassword"))
            json_object_set_new(cred, "adminUserPassword", json_string(""));
    }
    json_decref(body);
    json_decref(existing);
    free(loc);
    free(id);
    az_ctx_free(az);
    return rc;
}

ctarget_status aml_attach(aml_kind k, ctarget_call *c, ctarget_target *t, ctarget_obj *facts,
                          ctarget_error *err)
{
    az_ctx *az;
    ctarget_status rc = aml_az(c, t, &az, err);
    if (rc)
        return rc;
    json_t *res = NULL;
    const char *name = aml_compute_name(t);
    char other[256];
    char *cid = aml_compute_id(az, t);
    int taken = id_taken(t, cid, other, sizeof other);
    free(cid);
    if (taken) {
        aml_h->error_set(err, CTARGET_E_EXISTS, 0, 0,
                         "compute '%s' of workspace '%s' is already a target here, named '%s': "
                         "use that one, or detach it first", name, az_workspace0(az), other);
        az_ctx_free(az);
        return CTARGET_E_EXISTS;
    }
    aml_h->progress(c, "looking up the compute", 0, 0);
    if ((rc = aml_compute_get(az, t, &res, err)))
        goto out;
    if (!res) {
        aml_h->error_set(err, CTARGET_E_NOT_FOUND, 0, 0,
                         "no compute named '%s' in workspace '%s' (resource group '%s'): check "
                         "the name, or create it with `ctarget compute create`", name,
                         az_workspace0(az), az_resource_group0(az));
        rc = CTARGET_E_NOT_FOUND;
        goto out;
    }
    const char *type =
        json_string_value(json_object_get(json_object_get(res, "properties"), "computeType"));
    if (!type || strcmp(type, aml_compute_type(k))) {
        aml_h->error_set(err, CTARGET_E_CONFIG, 0, 0,
                         "compute '%s' in workspace '%s' is a %s, not a%s %s: attach it with "
                         "the matching --type", name, az_workspace0(az), type ? type : "?",
                         k == AML_CLUSTER ? "n" : "", aml_compute_type(k));
        rc = CTARGET_E_CONFIG;
        goto out;
    }
    if ((rc = az_ws_save(az, facts, err)) == CTARGET_OK)
        record(az, t, facts, res, 0);
out:
    json_decref(res);
    az_ctx_free(az);
    return rc;
}

static ctarget_prov_state prov_of(const char *s)
{
    static const struct { const char *n; ctarget_prov_state v; } m[] = {
        {"Creating", CTARGET_PROV_CREATING}, {"Succeeded", CTARGET_PROV_SUCCEEDED},
        {"Failed", CTARGET_PROV_FAILED},     {"Updating", CTARGET_PROV_UPDATING},
        {"Deleting", CTARGET_PROV_DELETING}, {"Canceled", CTARGET_PROV_CANCELED},
    };
    for (size_t i = 0; s && i < sizeof m / sizeof m[0]; i++)
        if (!strcasecmp(s, m[i].n))
            return m[i].v;
    return CTARGET_PROV_UNKNOWN;
}

static void add_errors(char *buf, size_t len, json_t *errs)
{
    size_t i;
    json_t *e;
    json_array_foreach(errs, i, e) {
        json_t *in = json_object_get(e, "error");
        if (!in)
            in = e;
        const char *code = json_string_value(json_object_get(in, "code"));
        const char *msg = json_string_value(json_object_get(in, "message"));
        size_t used = strlen(buf);
        if (used + 2 >= len)
            return;
        snprintf(buf + used, len - used, "%s%s%s%s", used ? "\n" : "", code ? code : "Error",
                 msg ? ": " : "", msg ? msg : "");
    }
}

static void put_num(ctarget_obj *o, const char *key, json_t *v)
{
    if (json_is_integer(v))
        aml_h->obj_set_int(o, key, json_integer_value(v));
}

ctarget_status aml_status(aml_kind k, ctarget_call *c, ctarget_target *t,
                          ctarget_compute_state *st, ctarget_obj *details, ctarget_error *err)
{
    az_ctx *az;
    ctarget_status rc = aml_az(c, t, &az, err);
    if (rc)
        return rc;
    json_t *res = NULL;
    if ((rc = aml_compute_get(az, t, &res, err))) {
        az_ctx_free(az);
        return rc;
    }
    if (!res) {
        st->provisioning_state = CTARGET_PROV_UNKNOWN;
        snprintf(st->state, sizeof st->state, "NotFound");
        snprintf(st->errors, sizeof st->errors,
                 "compute '%s' no longer exists in workspace '%s'", aml_compute_name(t),
                 az_workspace0(az));
        az_ctx_free(az);
        return CTARGET_OK;
    }
    json_t *outer = json_object_get(res, "properties");
    json_t *p = json_object_get(outer, "properties");
    st->provisioning_state =
        prov_of(json_string_value(json_object_get(outer, "provisioningState")));
    st->errors[0] = '\0';
    add_errors(st->errors, sizeof st->errors, json_object_get(outer, "provisioningErrors"));
    add_errors(st->errors, sizeof st->errors, json_object_get(p, "errors"));
    const char *state = k == AML_CLUSTER ? json_string_value(json_object_get(p, "allocationState"))
                                         : json_string_value(json_object_get(p, "state"));
    snprintf(st->state, sizeof st->state, "%s", state ? state : "");
    const char *vs = json_string_value(json_object_get(p, "vmSize"));
    if (vs)
        aml_h->obj_set_str(details, "vm_size", vs);
    if (k == AML_CLUSTER) {
        const char *prio = json_string_value(json_object_get(p, "vmPriority"));
        if (prio)
            aml_h->obj_set_str(details, "vm_priority", prio);
        json_t *ss = json_object_get(p, "scaleSettings");
        put_num(details, "min_nodes", json_object_get(ss, "minNodeCount"));
        put_num(details, "max_nodes", json_object_get(ss, "maxNodeCount"));
        const char *idle = json_string_value(json_object_get(ss, "nodeIdleTimeBeforeScaleDown"));
        if (idle)
            aml_h->obj_set_str(details, "idle_before_scaledown", idle);
        put_num(details, "current_nodes", json_object_get(p, "currentNodeCount"));
        put_num(details, "target_nodes", json_object_get(p, "targetNodeCount"));
        json_t *nc = json_object_get(p, "nodeStateCounts");
        const char *key;
        json_t *v;
        if (json_is_object(nc)) {
            ctarget_obj *o = aml_h->obj_child0(details, "node_state_counts");
            json_object_foreach(nc, key, v) put_num(o, key, v);
        }
    } else {
        json_t *ssh = json_object_get(p, "sshSettings");
        const char *acc = json_string_value(json_object_get(ssh, "sshPublicAccess"));
        if (acc)
            aml_h->obj_set_str(details, "ssh_public_access", acc);
    }
    json_t *ident = json_object_get(res, "identity");
    const char *itype = json_string_value(json_object_get(ident, "type"));
    if (itype)
        aml_h->obj_set_str(details, "identity_type", itype);
    json_decref(res);
    az_ctx_free(az);
    return CTARGET_OK;
}

ctarget_status aml_delete(aml_kind k, ctarget_call *c, ctarget_target *t, ctarget_error *err)
{
    (void)k;
    az_ctx *az;
    ctarget_status rc = aml_az(c, t, &az, err);
    if (rc)
        return rc;
    char what[200];
    what_of(what, sizeof what, t);
    char *id = aml_compute_id(az, t);
    az_arm_req rq = {.method = "DELETE", .path = id, .api_version = AZ_AML_API_VERSION,
                     .query = "underlyingResourceAction=Delete", .what = what};
    aml_h->progress(c, "deleting", 0, 0);
    /* already gone is what delete wants */
    rc = az_arm_do(az, &rq, AZ_WAIT | AZ_OK_404, NULL, err);
    free(id);
    az_ctx_free(az);
    return rc;
}

ctarget_status aml_detach(ctarget_call *c, ctarget_target *t, ctarget_error *err)
{
    /* forget only: the compute stays in the workspace for everyone else (Azure ML's own
     * "Detach" would remove it from the workspace, which is not ours to do) */
    (void)c, (void)t, (void)err;
    return CTARGET_OK;
}

ctarget_status aml_power(ctarget_call *c, ctarget_target *t, const char *action,
                         ctarget_error *err)
{
    az_ctx *az;
    ctarget_status rc = aml_az(c, t, &az, err);
    if (rc)
        return rc;
    char what[200];
    what_of(what, sizeof what, t);
    char *id = aml_compute_id(az, t);
    size_t n = strlen(id) + strlen(action) + 2;
    char *path = malloc(n);
    snprintf(path, n, "%s/%s", id, action);
    az_arm_req rq = {.method = "POST", .path = path, .api_version = AZ_AML_API_VERSION,
                     .what = what};
    aml_h->progress(c, action, 0, 0);
    rc = az_arm_do(az, &rq, AZ_WAIT | AZ_RETRY_SAFE, NULL, err);
    free(path);
    free(id);
    az_ctx_free(az);
    return rc;
}
