/* Configuration checked against what plugins declare (core/keys.c), white-box: name rules
 * as a table, key types, required keys and groups, verbs, identities. */
#define _GNU_SOURCE
#include "testlib.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <ctarget/ctarget.h>

#include "keys.h"
#include "loader.h"

static plugin *get(const char *type)
{
    plugin *pl = NULL;
    ctarget_error err;
    ctarget_error_init(&err);
    CU_ASSERT_EQUAL_FATAL(loader_find(type, &pl, &err), CTARGET_OK);
    return pl;
}

/* ---- name rules --------------------------------------------------------------------------- */

typedef struct name_row {
    const char *name;
    int cloud_ok;   /* default rule: 3-24, starts with a letter, '-' followed later by a letter */
    int ssh_ok;     /* testssh: the same with 2-16 characters (AKS) */
} name_row;

static const name_row names[] = {
    {"a", 0, 0},
    {"ab", 0, 1},
    {"abc", 1, 1},
    {"a1", 0, 1},
    {"a1b2c3", 1, 1},
    {"a-b", 1, 1},
    {"a-1", 0, 0},
    {"a-1b", 1, 1},
    {"ab-12-c", 1, 1},
    {"ab-12-3", 0, 0},
    {"1abc", 0, 0},
    {"-abc", 0, 0},
    {"abc-", 0, 0},
    {"a--b", 1, 1},
    {"ab_c", 0, 0},
    {"ab.c", 0, 0},
    {"ab c", 0, 0},
    {"ab\xc3\xa9", 0, 0},
    {"", 0, 0},
    {"Abc", 1, 1},
    {"gpu-cluster", 1, 1},
    {"abcdefghijklmnop", 1, 1},          /* 16 */
    {"abcdefghijklmnopq", 1, 0},         /* 17 */
    {"abcdefghijklmnopqrstuvwx", 1, 0},  /* 24 */
    {"abcdefghijklmnopqrstuvwxy", 0, 0}, /* 25 */
    {"cpu-cluster-2024-a", 1, 0},
    {"cpu-cluster-2024", 0, 0},
    {"x-1-y", 1, 1},                     /* the last '-' is followed by a letter */
    {"a-b-1", 0, 0},
    {"AB", 0, 1},
    {"a1-", 0, 0},
    {"ab\tc", 0, 0},
    {"ab\nc", 0, 0},
    {"ab/c", 0, 0},
    {"abc ", 0, 0},
    {"Z9", 0, 1},
    {"9Z", 0, 0},
    {"--", 0, 0},
    {"a----------------------b", 1, 0},  /* 24 */
};

static void t_name_rules_table(void)
{
    plugin *cloud = get("testcloud"), *ssh = get("testssh");
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        ctarget_error err;
        ctarget_error_init(&err);
        int c = keys_check_name(cloud, names[i].name, &err) == CTARGET_OK;
        if (!c)
            CU_ASSERT_EQUAL(err.code, CTARGET_E_CONFIG);
        ctarget_error_init(&err);
        int s = keys_check_name(ssh, names[i].name, &err) == CTARGET_OK;
        if (c != names[i].cloud_ok || s != names[i].ssh_ok)
            fprintf(stderr, "name '%s': default rule %d (want %d), 2-16 rule %d (want %d)\n",
                    names[i].name, c, names[i].cloud_ok, s, names[i].ssh_ok);
        CU_ASSERT_EQUAL(c, names[i].cloud_ok);
        CU_ASSERT_EQUAL(s, names[i].ssh_ok);
    }
}

static void t_name_rule_is_described(void)
{
    char *d = keys_describe_name_rule(get("testcloud"));
    CU_ASSERT_PTR_NOT_NULL(strstr(d, "3-24"));
    free(d);
    d = keys_describe_name_rule(get("testssh"));
    CU_ASSERT_PTR_NOT_NULL(strstr(d, "2-16"));
    free(d);
}

/* ---- settings ----------------------------------------------------------------------------- */

typedef struct applied {
    ctarget_status rc;
    ctarget_error err;
    json_t *config, *refs, *pending;
} applied;

static applied apply(const char *type, ctarget_verb verb, const char *origin,
                     const ctarget_setting *s, size_t n)
{
    applied a;
    ctarget_error_init(&a.err);
    a.config = json_object();
    a.refs = json_object();
    a.pending = json_object();
    a.rc = keys_apply(get(type), verb, origin, s, n, a.config, a.refs, a.pending, &a.err);
    return a;
}

static void applied_free(applied *a)
{
    json_decref(a->config);
    json_decref(a->refs);
    json_decref(a->pending);
}

#define S(k, v) {k, v}

static void expect_config_error(const char *type, ctarget_verb verb, const ctarget_setting *s,
                                size_t n, const char *needle)
{
    applied a = apply(type, verb, verb == CTARGET_VERB_ATTACH ? "attached" : "created", s, n);
    if (a.rc == CTARGET_OK) {
        ctarget_error_init(&a.err);
        a.rc = keys_check_required(get(type), verb, verb == CTARGET_VERB_ATTACH ? "attached"
                                   : "created", a.config, a.refs, a.pending, &a.err);
    }
    CU_ASSERT_EQUAL(a.rc, CTARGET_E_CONFIG);
    if (!strstr(a.err.message, needle))
        fprintf(stderr, "error '%s' lacks '%s'\n", a.err.message, needle);
    CU_ASSERT_PTR_NOT_NULL(strstr(a.err.message, needle));
    CU_ASSERT_PTR_NULL(strchr(a.err.message, '\n'));
    applied_free(&a);
}

static void t_unknown_key_suggests_the_closest(void)
{
    ctarget_setting s[] = {S("cloud_dir", "/tmp"), S("vm_sise", "D2")};
    expect_config_error("testcloud", CTARGET_VERB_CREATE, s, 2, "did you mean 'vm_size'");
    ctarget_setting s2[] = {S("adress", "h")};
    expect_config_error("testssh", CTARGET_VERB_ATTACH, s2, 1, "did you mean 'address'");
}

static void t_wrong_types_refused(void)
{
    const struct {
        const char *key, *value;
    } bad[] = {
        {"max_nodes", "four"},        /* int */
        {"max_nodes", "0"},           /* below min */
        {"max_nodes", "101"},         /* above max */
        {"max_nodes", "4.5"},
        {"ssh_public_access", "maybe"}, /* bool */
        {"low_priority_ratio", "lots"}, /* number */
        {"low_priority_ratio", "1.5"},  /* above max */
        {"vm_priority", "spot"},        /* enum */
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        ctarget_setting s[] = {S("cloud_dir", "/tmp"), S(bad[i].key, bad[i].value)};
        expect_config_error("testcloud", CTARGET_VERB_CREATE, s, 2, bad[i].key);
    }
    ctarget_setting p[] = {S("address", "h"), S("username", "u"),
                           S("private_key_file", "/nonexistent/id_ed25519")};
    expect_config_error("testssh", CTARGET_VERB_ATTACH, p, 3, "private_key_file");
}

static void t_good_values_normalised_and_accepted(void)
{
    ctarget_setting s[] = {S("cloud_dir", "/tmp"), S("vm_size", "D2"), S("max_nodes", "4"),
                           S("vm_priority", "LowPriority"), S("ssh_public_access", "yes"),
                           S("low_priority_ratio", "0.25"), S("tags", "a,b,c")};
    applied a = apply("testcloud", CTARGET_VERB_CREATE, "created", s, 7);
    CU_ASSERT_EQUAL(a.rc, CTARGET_OK);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(a.config, "max_nodes")), "4");
    CU_ASSERT_PTR_NOT_NULL(json_object_get(a.config, "vm_priority"));
    ctarget_error err;
    ctarget_error_init(&err);
    CU_ASSERT_EQUAL(keys_check_required(get("testcloud"), CTARGET_VERB_CREATE, "created",
                                        a.config, a.refs, a.pending, &err), CTARGET_OK);
    applied_free(&a);
}

static void t_missing_required_per_verb(void)
{
    ctarget_setting c[] = {S("cloud_dir", "/tmp"), S("vm_size", "D2")};
    expect_config_error("testcloud", CTARGET_VERB_CREATE, c, 2, "max_nodes");
    ctarget_setting a[] = {S("cloud_dir", "/tmp")};
    expect_config_error("testcloud", CTARGET_VERB_ATTACH, a, 1, "resource_id");
}

static void t_groups_need_one_and_exclusive_at_most_one(void)
{
    ctarget_setting none[] = {S("username", "u"), S("password", "pw-123456")};
    expect_config_error("testssh", CTARGET_VERB_ATTACH, none, 2, "address");
    ctarget_setting both[] = {S("address", "h"), S("username", "u"), S("password", "pw"),
                              S("private_key_file", "/etc/hostname")};
    expect_config_error("testssh", CTARGET_VERB_ATTACH, both, 4, "password");
    ctarget_setting neither[] = {S("address", "h"), S("username", "u")};
    expect_config_error("testssh", CTARGET_VERB_ATTACH, neither, 2, "password");
}

static void t_verb_restricted_keys(void)
{
    ctarget_setting co[] = {S("cloud_dir", "/tmp"), S("resource_id", "/r/1"),
                            S("vm_size", "D2")};
    expect_config_error("testcloud", CTARGET_VERB_ATTACH, co, 3, "vm_size");
    ctarget_setting ao[] = {S("cloud_dir", "/tmp"), S("vm_size", "D2"), S("max_nodes", "2"),
                            S("resource_id", "/r/1")};
    expect_config_error("testcloud", CTARGET_VERB_CREATE, ao, 4, "resource_id");
    ctarget_setting im[] = {S("ssh_public_access", "true")};
    applied a = apply("testcloud", CTARGET_VERB_UPDATE, "created", im, 1);
    CU_ASSERT_EQUAL(a.rc, CTARGET_E_CONFIG);
    CU_ASSERT_PTR_NOT_NULL(strstr(a.err.message, "ssh_public_access"));
    applied_free(&a);
}

static void t_secrets_go_to_pending_or_refs_never_config(void)
{
    ctarget_setting s[] = {S("address", "h"), S("username", "u"),
                           S("password", "S3cr3t-Val-7f2a9")};
    applied a = apply("testssh", CTARGET_VERB_ATTACH, "attached", s, 3);
    CU_ASSERT_EQUAL(a.rc, CTARGET_OK);
    CU_ASSERT_PTR_NULL(json_object_get(a.config, "password"));
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(a.pending, "password")),
                           "S3cr3t-Val-7f2a9");
    applied_free(&a);
    ctarget_setting r[] = {S("address", "h"), S("username", "u"), S("password", "env:PW")};
    a = apply("testssh", CTARGET_VERB_ATTACH, "attached", r, 3);
    CU_ASSERT_EQUAL(a.rc, CTARGET_OK);
    CU_ASSERT_PTR_NULL(json_object_get(a.config, "password"));
    CU_ASSERT_PTR_NULL(json_object_get(a.pending, "password"));
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(a.refs, "password")), "env:PW");
    applied_free(&a);
}

static void t_empty_value_unsets(void)
{
    ctarget_setting s[] = {S("cloud_dir", "/tmp"), S("tags", "a,b")};
    applied a = apply("testcloud", CTARGET_VERB_CREATE, "created", s, 2);
    CU_ASSERT_PTR_NOT_NULL(json_object_get(a.config, "tags"));
    ctarget_setting u[] = {S("tags", "")};
    ctarget_error err;
    ctarget_error_init(&err);
    CU_ASSERT_EQUAL(keys_apply(get("testcloud"), CTARGET_VERB_UPDATE, "created", u, 1, a.config,
                               a.refs, a.pending, &err), CTARGET_OK);
    CU_ASSERT_PTR_NULL(json_object_get(a.config, "tags"));
    applied_free(&a);
}

static void t_identity_tuples_with_defaults_case_insensitive(void)
{
    json_t *cfg = json_pack("{s:s, s:s}", "address", "GPU-Box.Corp", "username", "u");
    json_t *ids = keys_identities(get("testssh"), cfg);
    CU_ASSERT_EQUAL(json_array_size(ids), 1);
    const char *id = json_string_value(json_array_get(ids, 0));
    CU_ASSERT_STRING_EQUAL(id ? id : "", "address=gpu-box.corp;ssh_port=22");
    json_decref(ids);
    json_object_set_new(cfg, "ssh_port", json_string("2222"));
    ids = keys_identities(get("testssh"), cfg);
    id = json_string_value(json_array_get(ids, 0));
    CU_ASSERT_STRING_EQUAL(id ? id : "", "address=gpu-box.corp;ssh_port=2222");
    json_decref(ids);
    json_decref(cfg);
    /* a tuple missing a key without default does not identify anything */
    cfg = json_pack("{s:s}", "cloud_dir", "/tmp");
    ids = keys_identities(get("testcloud"), cfg);
    CU_ASSERT_EQUAL(json_array_size(ids), 0);
    json_decref(ids);
    json_decref(cfg);
}

static void t_name_error_states_the_rule(void)
{
    ctarget_error err;
    ctarget_error_init(&err);
    CU_ASSERT_EQUAL(keys_check_name(get("testcloud"), "1abc", &err), CTARGET_E_CONFIG);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.message, "'1abc'"));
    CU_ASSERT_PTR_NOT_NULL(strstr(err.message, "start"));
    CU_ASSERT_PTR_NOT_NULL(strstr(err.message, "3-24"));
    ctarget_error_init(&err);
    CU_ASSERT_EQUAL(keys_check_name(get("testssh"), "abcdefghijklmnopq", &err),
                    CTARGET_E_CONFIG);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.message, "2-16"));
}

static void t_unknown_key_without_close_match_lists_valid_keys(void)
{
    ctarget_setting s[] = {S("completely_unrelated", "1")};
    expect_config_error("testaci", CTARGET_VERB_CREATE, s, 1, "valid settings: cpu_cores, "
                        "memory_gb, region");
}

static void t_failed_apply_leaves_config_untouched(void)
{
    ctarget_setting s[] = {S("cloud_dir", "/tmp"), S("vm_size", "D2"), S("max_nodes", "4")};
    applied a = apply("testcloud", CTARGET_VERB_CREATE, "created", s, 3);
    CU_ASSERT_EQUAL_FATAL(a.rc, CTARGET_OK);
    json_t *before = json_deep_copy(a.config);
    /* the first setting is fine, the second is not: neither is applied */
    ctarget_setting u[] = {S("min_nodes", "2"), S("max_nodes", "many"),
                           S("admin_password", "Pw-12345678")};
    ctarget_error err;
    ctarget_error_init(&err);
    CU_ASSERT_EQUAL(keys_apply(get("testcloud"), CTARGET_VERB_UPDATE, "created", u, 3, a.config,
                               a.refs, a.pending, &err), CTARGET_E_CONFIG);
    CU_ASSERT(json_equal(before, a.config));
    CU_ASSERT_EQUAL(json_object_size(a.refs), 0);
    CU_ASSERT_EQUAL(json_object_size(a.pending), 0);
    json_decref(before);
    applied_free(&a);
}

static void t_values_stored_in_canonical_form(void)
{
    char *dir = tl_tmpdir("keys");
    char *key = tl_path(dir, "id_test");
    tl_write_file(key, "k\n");
    char *cwd = getcwd(NULL, 0);
    CU_ASSERT_EQUAL_FATAL(chdir(dir), 0);
    ctarget_setting s[] = {S("cloud_dir", "/tmp"), S("vm_priority", "DEDICATED"),
                           S("ssh_public_access", "On"), S("fail_provisioning", "0"),
                           S("tags", " a , b ,, c "), S("max_nodes", "+7"),
                           S("low_priority_ratio", "0.5")};
    applied a = apply("testcloud", CTARGET_VERB_CREATE, "created", s, 7);
    CU_ASSERT_EQUAL(a.rc, CTARGET_OK);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(a.config, "vm_priority")),
                           "dedicated");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(a.config, "ssh_public_access")),
                           "true");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(a.config, "fail_provisioning")),
                           "false");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(a.config, "tags")), "a,b,c");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(a.config, "max_nodes")), "7");
    applied_free(&a);
    /* a relative path is stored absolute: later commands run from other directories */
    ctarget_setting p[] = {S("address", "h"), S("username", "u"),
                           S("private_key_file", "id_test")};
    a = apply("testssh", CTARGET_VERB_ATTACH, "attached", p, 3);
    CU_ASSERT_EQUAL(a.rc, CTARGET_OK);
    const char *stored = json_string_value(json_object_get(a.config, "private_key_file"));
    CU_ASSERT(stored && stored[0] == '/' && strstr(stored, "/id_test"));
    applied_free(&a);
    /* so is a file: reference */
    ctarget_setting f[] = {S("address", "h"), S("username", "u"), S("password", "file:id_test")};
    a = apply("testssh", CTARGET_VERB_ATTACH, "attached", f, 3);
    CU_ASSERT_EQUAL(a.rc, CTARGET_OK);
    const char *ref = json_string_value(json_object_get(a.refs, "password"));
    CU_ASSERT(ref && !strncmp(ref, "file:/", 6) && strstr(ref, "/id_test"));
    applied_free(&a);
    CU_ASSERT_EQUAL(chdir(cwd), 0);
    free(cwd);
    free(key);
    free(dir);
}

static void t_bad_secret_references_refused(void)
{
    ctarget_setting e[] = {S("address", "h"), S("username", "u"), S("password", "env:9LIVES")};
    expect_config_error("testssh", CTARGET_VERB_ATTACH, e, 3, "environment variable");
    ctarget_setting e2[] = {S("address", "h"), S("username", "u"), S("password", "env:")};
    expect_config_error("testssh", CTARGET_VERB_ATTACH, e2, 3, "password");
    ctarget_setting f[] = {S("address", "h"), S("username", "u"), S("password", "file:")};
    expect_config_error("testssh", CTARGET_VERB_ATTACH, f, 3, "needs a path");
    ctarget_setting f2[] = {S("address", "h"), S("username", "u"),
                            S("password", "file:/nonexistent/pw")};
    expect_config_error("testssh", CTARGET_VERB_ATTACH, f2, 3, "/nonexistent/pw");
}

static void t_control_characters_refused_in_strings(void)
{
    ctarget_setting s[] = {S("cloud_dir", "/tmp"), S("vm_size", "D2\nmax_nodes=9")};
    expect_config_error("testcloud", CTARGET_VERB_CREATE, s, 2, "control character");
}

static void t_update_follows_how_the_target_was_added(void)
{
    /* created: create-only keys may change, attach-only ones may not */
    ctarget_setting c[] = {S("max_nodes", "8")};
    applied a = apply("testcloud", CTARGET_VERB_UPDATE, "created", c, 1);
    CU_ASSERT_EQUAL(a.rc, CTARGET_OK);
    applied_free(&a);
    ctarget_setting r[] = {S("resource_id", "/x")};
    a = apply("testcloud", CTARGET_VERB_UPDATE, "created", r, 1);
    CU_ASSERT_EQUAL(a.rc, CTARGET_E_CONFIG);
    applied_free(&a);
    /* attached: the other way round */
    a = apply("testcloud", CTARGET_VERB_UPDATE, "attached", c, 1);
    CU_ASSERT_EQUAL(a.rc, CTARGET_E_CONFIG);
    CU_ASSERT_PTR_NOT_NULL(strstr(a.err.message, "max_nodes"));
    applied_free(&a);
    a = apply("testcloud", CTARGET_VERB_UPDATE, "attached", r, 1);
    CU_ASSERT_EQUAL(a.rc, CTARGET_OK);
    applied_free(&a);
    /* unsetting a key the target needs is caught by the required check */
    ctarget_setting s[] = {S("cloud_dir", "/tmp"), S("vm_size", "D2"), S("max_nodes", "4")};
    a = apply("testcloud", CTARGET_VERB_CREATE, "created", s, 3);
    ctarget_setting u[] = {S("max_nodes", "")};
    ctarget_error err;
    ctarget_error_init(&err);
    CU_ASSERT_EQUAL(keys_apply(get("testcloud"), CTARGET_VERB_UPDATE, "created", u, 1, a.config,
                               a.refs, a.pending, &err), CTARGET_OK);
    ctarget_error_init(&err);
    CU_ASSERT_EQUAL(keys_check_required(get("testcloud"), CTARGET_VERB_UPDATE, "created",
                                        a.config, a.refs, a.pending, &err), CTARGET_E_CONFIG);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.message, "max_nodes"));
    applied_free(&a);
}

static void t_defaults_satisfy_required_but_not_groups(void)
{
    /* testaci's region is required and has no default; cpu_cores has one */
    ctarget_setting none[] = {S("cpu_cores", "2")};
    expect_config_error("testaci", CTARGET_VERB_CREATE, none, 1, "region");
    /* resource_id alone satisfies the address|resource_id group and has its own identity */
    ctarget_setting s[] = {S("resource_id", "/Subs/1/VM"), S("username", "u"),
                           S("password", "env:PW")};
    applied a = apply("testssh", CTARGET_VERB_ATTACH, "attached", s, 3);
    CU_ASSERT_EQUAL(a.rc, CTARGET_OK);
    ctarget_error err;
    ctarget_error_init(&err);
    CU_ASSERT_EQUAL(keys_check_required(get("testssh"), CTARGET_VERB_ATTACH, "attached",
                                        a.config, a.refs, a.pending, &err), CTARGET_OK);
    json_t *ids = keys_identities(get("testssh"), a.config);
    CU_ASSERT_EQUAL(json_array_size(ids), 1);
    const char *id = json_string_value(json_array_get(ids, 0));
    CU_ASSERT_STRING_EQUAL(id ? id : "", "resource_id=/subs/1/vm");
    json_decref(ids);
    /* both given: two identities, either one collides */
    json_object_set_new(a.config, "address", json_string("Host"));
    ids = keys_identities(get("testssh"), a.config);
    CU_ASSERT_EQUAL(json_array_size(ids), 2);
    json_decref(ids);
    applied_free(&a);
}


/* ---- one row per value: every declared type, accepted (with its stored form) or refused --- */

typedef struct value_row {
    const char *key, *value;
    const char *stored; /* NULL: refused with CTARGET_E_CONFIG naming the key */
} value_row;

static const value_row values[] = {
    /* int, 1..100 */
    {"max_nodes", "1", "1"},
    {"max_nodes", "100", "100"},
    {"max_nodes", "007", "7"},
    {"max_nodes", "+5", "5"},
    {"max_nodes", "0", NULL},
    {"max_nodes", "-1", NULL},
    {"max_nodes", "101", NULL},
    {"max_nodes", " 4", NULL},
    {"max_nodes", "4 ", NULL},
    {"max_nodes", "0x10", NULL},
    {"max_nodes", "1e2", NULL},
    {"max_nodes", "4.0", NULL},
    {"max_nodes", "9223372036854775808", NULL},
    {"max_nodes", "four", NULL},
    /* int with 0 allowed */
    {"min_nodes", "0", "0"},
    {"min_nodes", "-0", "0"},
    /* bool */
    {"ssh_public_access", "true", "true"},
    {"ssh_public_access", "TRUE", "true"},
    {"ssh_public_access", "Yes", "true"},
    {"ssh_public_access", "1", "true"},
    {"ssh_public_access", "on", "true"},
    {"ssh_public_access", "false", "false"},
    {"ssh_public_access", "No", "false"},
    {"ssh_public_access", "0", "false"},
    {"ssh_public_access", "OFF", "false"},
    {"ssh_public_access", "2", NULL},
    {"ssh_public_access", "truee", NULL},
    {"ssh_public_access", "y", NULL},
    {"ssh_public_access", " true", NULL},
    /* number, 0..1 */
    {"low_priority_ratio", "0", "0"},
    {"low_priority_ratio", "1", "1"},
    {"low_priority_ratio", "0.25", "0.25"},
    {"low_priority_ratio", "1.0001", NULL},
    {"low_priority_ratio", "-0.1", NULL},
    {"low_priority_ratio", "nan", NULL},
    {"low_priority_ratio", "inf", NULL},
    {"low_priority_ratio", "1e400", NULL},
    {"low_priority_ratio", "0,5", NULL},
    {"low_priority_ratio", "half", NULL},
    /* enum: case-insensitive, stored as declared */
    {"vm_priority", "dedicated", "dedicated"},
    {"vm_priority", "Dedicated", "dedicated"},
    {"vm_priority", "LOWPRIORITY", "lowpriority"},
    {"vm_priority", "low", NULL},
    {"vm_priority", "dedicated ", NULL},
    {"vm_priority", "dedicated|lowpriority", NULL},
    /* list */
    {"tags", "a", "a"},
    {"tags", "a,b", "a,b"},
    {"tags", " a , b ", "a,b"},
    {"tags", ",a,,b,", "a,b"},
    /* string: any printable text, control characters refused */
    {"vm_size", "Standard_NC6s_v3", "Standard_NC6s_v3"},
    {"vm_size", "D2 v3", "D2 v3"},
    {"vm_size", "D2\tv3", NULL},
    {"vm_size", "D2\x1b[31m", NULL},
};

static void t_value_types_table(void)
{
    for (size_t i = 0; i < sizeof values / sizeof *values; i++) {
        ctarget_setting s[] = {S("cloud_dir", "/tmp"), S(values[i].key, values[i].value)};
        applied a = apply("testcloud", CTARGET_VERB_CREATE, "created", s, 2);
        const char *got = json_string_value(json_object_get(a.config, values[i].key));
        int ok = values[i].stored ? a.rc == CTARGET_OK && got &&
                                        !strcmp(got, values[i].stored)
                                  : a.rc == CTARGET_E_CONFIG &&
                                        strstr(a.err.message, values[i].key) != NULL &&
                                        !strchr(a.err.message, '\n');
        if (!ok)
            fprintf(stdout, "%s='%s': rc %d, stored '%s', error '%s' (want %s)\n",
                    values[i].key, values[i].value, (int)a.rc, got ? got : "(none)",
                    a.err.message, values[i].stored ? values[i].stored : "refused");
        CU_ASSERT(ok);
        /* a refused value never reaches the configuration */
        if (!values[i].stored)
            CU_ASSERT_EQUAL(json_object_size(a.config), 0);
        applied_free(&a);
    }
}

static void t_path_must_exist_and_be_readable(void)
{
    char *dir = tl_tmpdir("path");
    char *key = tl_path(dir, "id_key");
    tl_write_file(key, "k\n");
    ctarget_setting ok[] = {S("address", "h"), S("username", "u"), S("private_key_file", key)};
    applied a = apply("testssh", CTARGET_VERB_ATTACH, "attached", ok, 3);
    CU_ASSERT_EQUAL(a.rc, CTARGET_OK);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(a.config, "private_key_file")),
                           key);
    applied_free(&a);
    char *missing = tl_path(dir, "id_missing");
    ctarget_setting bad[] = {S("address", "h"), S("username", "u"),
                             S("private_key_file", missing)};
    a = apply("testssh", CTARGET_VERB_ATTACH, "attached", bad, 3);
    CU_ASSERT_EQUAL(a.rc, CTARGET_E_CONFIG);
    CU_ASSERT_PTR_NOT_NULL(strstr(a.err.message, missing)); /* names the file */
    CU_ASSERT_PTR_NOT_NULL(strstr(a.err.message, "private_key_file"));
    CU_ASSERT_EQUAL(a.err.sys_errno, ENOENT);
    applied_free(&a);
    free(missing);
    free(key);
    free(dir);
}

/* The closest key is suggested for many kinds of slips; far-off names list every key. */
static void t_unknown_key_suggestion_table(void)
{
    const struct {
        const char *type, *typo, *suggest;
    } rows[] = {
        {"testcloud", "vm_sise", "vm_size"},
        {"testcloud", "VM_SIZE", "vm_size"},
        {"testcloud", "vmsize", "vm_size"},
        {"testcloud", "max_node", "max_nodes"},
        {"testcloud", "maxnodes", "max_nodes"},
        {"testcloud", "min-nodes", "min_nodes"},
        {"testcloud", "admin_pasword", "admin_password"},
        {"testcloud", "ssh_public_acess", "ssh_public_access"},
        {"testssh", "adress", "address"},
        {"testssh", "user_name", "username"},
        {"testssh", "ssh-port", "ssh_port"},
        {"testssh", "pasword", "password"},
        {"testssh", "private_key", "private_key_file"},
        {"testaci", "regoin", "region"},
        {"testaci", "cpu_core", "cpu_cores"},
    };
    for (size_t i = 0; i < sizeof rows / sizeof *rows; i++) {
        ctarget_setting s[] = {S(rows[i].typo, "1")};
        applied a = apply(rows[i].type, CTARGET_VERB_CREATE, "created", s, 1);
        char want[128];
        snprintf(want, sizeof want, "did you mean '%s'", rows[i].suggest);
        int ok = a.rc == CTARGET_E_CONFIG && strstr(a.err.message, want) &&
                 strstr(a.err.message, rows[i].typo);
        if (!ok)
            fprintf(stdout, "%s %s: '%s' (want \"%s\")\n", rows[i].type, rows[i].typo,
                    a.err.message, want);
        CU_ASSERT(ok);
        applied_free(&a);
    }
}

/* What each verb may set: create-only keys refused by attach (and by update of an attached
 * target), attach-only keys refused by create, immutable keys refused by every update,
 * even to the same value or to unset them. */
static void t_verb_matrix(void)
{
    const struct {
        const char *key, *value;
        ctarget_verb verb;
        const char *origin;
        int ok;
    } rows[] = {
        {"vm_size", "D2", CTARGET_VERB_CREATE, "created", 1},
        {"vm_size", "D2", CTARGET_VERB_ATTACH, "attached", 0},
        {"vm_size", "D2", CTARGET_VERB_UPDATE, "created", 1},
        {"vm_size", "D2", CTARGET_VERB_UPDATE, "attached", 0},
        {"resource_id", "/r", CTARGET_VERB_CREATE, "created", 0},
        {"resource_id", "/r", CTARGET_VERB_ATTACH, "attached", 1},
        {"resource_id", "/r", CTARGET_VERB_UPDATE, "attached", 1},
        {"resource_id", "/r", CTARGET_VERB_UPDATE, "created", 0},
        {"ssh_public_access", "true", CTARGET_VERB_CREATE, "created", 1},
        {"ssh_public_access", "true", CTARGET_VERB_ATTACH, "attached", 1},
        {"ssh_public_access", "false", CTARGET_VERB_UPDATE, "created", 0},
        {"ssh_public_access", "", CTARGET_VERB_UPDATE, "created", 0},
        {"ssh_public_access", "true", CTARGET_VERB_UPDATE, "attached", 0},
        {"min_nodes", "1", CTARGET_VERB_UPDATE, "attached", 1},
        {"min_nodes", "1", CTARGET_VERB_UPDATE, "created", 1},
    };
    for (size_t i = 0; i < sizeof rows / sizeof *rows; i++) {
        ctarget_setting s[] = {S(rows[i].key, rows[i].value)};
        applied a = apply("testcloud", rows[i].verb, rows[i].origin, s, 1);
        int ok = rows[i].ok ? a.rc == CTARGET_OK
                            : a.rc == CTARGET_E_CONFIG && strstr(a.err.message, rows[i].key);
        if (!ok)
            fprintf(stdout, "row %zu %s=%s verb %d origin %s: rc %d '%s'\n", i, rows[i].key,
                    rows[i].value, (int)rows[i].verb, rows[i].origin, (int)a.rc,
                    a.err.message);
        CU_ASSERT(ok);
        applied_free(&a);
    }
}

/* Identity strings: one per complete tuple, defaults filled in, compared case-insensitively,
 * the integer port in canonical form. */
static void t_identity_table(void)
{
    const struct {
        const char *address, *port, *resource_id;
        const char *want0, *want1;
    } rows[] = {
        {"10.0.0.1", NULL, NULL, "address=10.0.0.1;ssh_port=22", NULL},
        {"10.0.0.1", "22", NULL, "address=10.0.0.1;ssh_port=22", NULL},
        {"10.0.0.1", "022", NULL, "address=10.0.0.1;ssh_port=22", NULL},
        {"10.0.0.1", "2222", NULL, "address=10.0.0.1;ssh_port=2222", NULL},
        {"Host.EXAMPLE.com", NULL, NULL, "address=host.example.com;ssh_port=22", NULL},
        {NULL, NULL, "/Subs/ABC/vm1", "resource_id=/subs/abc/vm1", NULL},
        {"h", NULL, "/r", "address=h;ssh_port=22", "resource_id=/r"},
    };
    for (size_t i = 0; i < sizeof rows / sizeof *rows; i++) {
        ctarget_setting s[4];
        size_t n = 0;
        s[n++] = (ctarget_setting)S("username", "u");
        if (rows[i].address)
            s[n++] = (ctarget_setting)S("address", rows[i].address);
        if (rows[i].port)
            s[n++] = (ctarget_setting)S("ssh_port", rows[i].port);
        if (rows[i].resource_id)
            s[n++] = (ctarget_setting)S("resource_id", rows[i].resource_id);
        applied a = apply("testssh", CTARGET_VERB_ATTACH, "attached", s, n);
        CU_ASSERT_EQUAL(a.rc, CTARGET_OK);
        json_t *ids = keys_identities(get("testssh"), a.config);
        size_t want_n = rows[i].want1 ? 2 : 1;
        const char *id0 = json_string_value(json_array_get(ids, 0));
        const char *id1 = json_string_value(json_array_get(ids, 1));
        int ok = json_array_size(ids) == want_n && id0 && !strcmp(id0, rows[i].want0) &&
                 (!rows[i].want1 || (id1 && !strcmp(id1, rows[i].want1)));
        if (!ok)
            fprintf(stdout, "identity row %zu: got %s / %s\n", i, id0 ? id0 : "-",
                    id1 ? id1 : "-");
        CU_ASSERT(ok);
        json_decref(ids);
        applied_free(&a);
    }
    /* secrets never take part in an identity, whatever the plugin declares */
    json_t *cfg = json_pack("{s:s}", "region", "eastus");
    json_t *ids = keys_identities(get("testaci"), cfg);
    CU_ASSERT_EQUAL(json_array_size(ids), 0); /* testaci declares none */
    json_decref(ids);
    json_decref(cfg);
}

static void add(CU_pSuite s)
{
    TL_ADD(s, t_name_rules_table);
    TL_ADD(s, t_name_rule_is_described);
    TL_ADD(s, t_unknown_key_suggests_the_closest);
    TL_ADD(s, t_wrong_types_refused);
    TL_ADD(s, t_good_values_normalised_and_accepted);
    TL_ADD(s, t_missing_required_per_verb);
    TL_ADD(s, t_groups_need_one_and_exclusive_at_most_one);
    TL_ADD(s, t_verb_restricted_keys);
    TL_ADD(s, t_secrets_go_to_pending_or_refs_never_config);
    TL_ADD(s, t_empty_value_unsets);
    TL_ADD(s, t_identity_tuples_with_defaults_case_insensitive);
    TL_ADD(s, t_name_error_states_the_rule);
    TL_ADD(s, t_unknown_key_without_close_match_lists_valid_keys);
    TL_ADD(s, t_failed_apply_leaves_config_untouched);
    TL_ADD(s, t_values_stored_in_canonical_form);
    TL_ADD(s, t_bad_secret_references_refused);
    TL_ADD(s, t_control_characters_refused_in_strings);
    TL_ADD(s, t_update_follows_how_the_target_was_added);
    TL_ADD(s, t_defaults_satisfy_required_but_not_groups);
    TL_ADD(s, t_value_types_table);
    TL_ADD(s, t_path_must_exist_and_be_readable);
    TL_ADD(s, t_unknown_key_suggestion_table);
    TL_ADD(s, t_verb_matrix);
    TL_ADD(s, t_identity_table);
}

int main(int argc, char **argv)
{
    return tl_main(argc, argv, "keys", add);
}
