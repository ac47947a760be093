/* Pure parsers for Azure's answers (see azure_parse.h).  No host: fuzzable. */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "azure_parse.h"

/* Copies s into dst as one line: control characters become spaces, runs of spaces collapse,
 * leading/trailing spaces go; with first_line, stops at the first CR or LF. */
static void one_line(char *dst, size_t cap, const char *s, int first_line)
{
    size_t n = 0;
    int space = 1;
    if (!cap)
        return;
    for (; s && *s && n + 1 < cap; s++) {
        unsigned char c = (unsigned char)*s;
        if (first_line && (c == '\r' || c == '\n'))
            break;
        if (c < 0x20 || c == 0x7f)
            c = ' ';
        if (c == ' ') {
            if (space)
                continue;
            space = 1;
        } else {
            space = 0;
        }
        dst[n++] = (char)c;
    }
    while (n && dst[n - 1] == ' ')
        n--;
    dst[n] = '\0';
}

/* strlcat: appends what fits */
static void cat(char *dst, size_t cap, const char *s)
{
    size_t n = strlen(dst), l = strlen(s);
    if (n + 1 >= cap)
        return;
    if (l > cap - n - 1)
        l = cap - n - 1;
    memcpy(dst + n, s, l);
    dst[n + l] = '\0';
}

static json_t *parse_body(const char *body, size_t len)
{
    if (!body || !len)
        return NULL;
    json_t *j = json_loadb(body, len, JSON_REJECT_DUPLICATES | JSON_DISABLE_EOF_CHECK, NULL);
    if (j && !json_is_object(j)) {
        json_decref(j);
        return NULL;
    }
    return j;
}

static const char *str_member(const json_t *o, const char *k)
{
    return json_string_value(json_object_get(o, k));
}

static void fill_arm_error(const json_t *e, az_arm_error *out)
{
    one_line(out->code, sizeof out->code, str_member(e, "code"), 0);
    one_line(out->message, sizeof out->message, str_member(e, "message"), 0);
    one_line(out->target, sizeof out->target, str_member(e, "target"), 0);
    /* the first detail often holds the real cause ("QuotaExceeded" under "BadRequest") */
    const json_t *d = json_array_get(json_object_get(e, "details"), 0);
    if (!json_is_object(d))
        return;
    char dc[AZ_PARSE_CODE_MAX], dm[AZ_PARSE_MSG_MAX];
    one_line(dc, sizeof dc, str_member(d, "code"), 0);
    one_line(dm, sizeof dm, str_member(d, "message"), 0);
    if (!dc[0] && !dm[0])
        return;
    /* a generic outer code gives way to the detail's specific one */
    int generic = !out->code[0] || !strcmp(out->code, "BadRequest");
    char extra[AZ_PARSE_MSG_MAX];
    if (generic && dc[0]) {
        out->code[0] = '\0';
        cat(out->code, sizeof out->code, dc);
    }
    if (dm[0] && strstr(out->message, dm))
        return;
    if (generic && dc[0]) {
        extra[0] = '\0';
        cat(extra, sizeof extra, dm);
    } else {
        extra[0] = '\0';
        cat(extra, sizeof extra, dc);
        cat(extra, sizeof extra, dc[0] && dm[0] ? ": " : "");
        cat(extra, sizeof extra, dm);
    }
    if (!extra[0])
        return;
    size_t ml = strlen(out->message);
    if (ml)
        cat(out->message, sizeof out->message, " (");
    cat(out->message, sizeof out->message, extra);
    if (ml)
        cat(out->message, sizeof out->message, ")");
}

int az_parse_arm_error(const char *body, size_t len, az_arm_error *out)
{
    memset(out, 0, sizeof *out);
    json_t *j = parse_body(body, len);
    if (!j)
        return -1;
    const json_t *e = json_object_get(j, "error");
    if (!json_is_object(e))
        e = json_is_string(json_object_get(j, "code")) ? j : NULL;
    int rc = -1;
    if (e) {
        fill_arm_error(e, out);
        rc = out->code[0] || out->message[0] ? 0 : -1;
    }
    json_decref(j);
    return rc;
}

int az_parse_aad_error(const char *body, size_t len, az_aad_error *out)
{
    memset(out, 0, sizeof *out);
    json_t *j = parse_body(body, len);
    if (!j)
        return -1;
    const char *e = str_member(j, "error");
    int rc = -1;
    if (e) {
        one_line(out->error, sizeof out->error, e, 0);
        one_line(out->description, sizeof out->description, str_member(j, "error_description"),
                 1);
        const json_t *codes = json_object_get(j, "error_codes");
        json_int_t c = json_integer_value(json_array_get(codes, 0));
        if (c > 0 && c < 100000000)
            out->aadsts = (long)c;
        else if (!strncmp(out->description, "AADSTS", 6)) {
            /* AADSTS codes are digits only ("AADSTS7000215: ..."); strtol would also take a
             * sign, blanks and more digits than a long holds (found by fuzz_azure) */
            long v = 0;
            const char *d = out->description + 6;
            for (int i = 0; i < 9 && isdigit((unsigned char)d[i]); i++)
                v = v * 10 + (d[i] - '0');
            out->aadsts = v;
        }
        rc = 0;
    }
    json_decref(j);
    return rc;
}

static int state_of(const char *s, az_lro_state *st)
{
    if (!strcasecmp(s, "Succeeded"))
        *st = AZ_LRO_SUCCEEDED;
    else if (!strcasecmp(s, "Failed"))
        *st = AZ_LRO_FAILED;
    else if (!strcasecmp(s, "Canceled") || !strcasecmp(s, "Cancelled"))
        *st = AZ_LRO_CANCELED;
    else
        *st = AZ_LRO_IN_PROGRESS;
    return 0;
}

int az_parse_lro_status(const char *body, size_t len, az_lro_status *out)
{
    memset(out, 0, sizeof *out);
    out->percent = -1;
    json_t *j = parse_body(body, len);
    if (!j)
        return -1;
    const char *s = str_member(j, "status");
    if (!s)
        s = str_member(json_object_get(j, "properties"), "provisioningState");
    int rc = -1;
    if (s && *s) {
        one_line(out->status, sizeof out->status, s, 0);
        state_of(s, &out->state);
        const json_t *e = json_object_get(j, "error");
        if (!json_is_object(e))
            e = json_object_get(json_object_get(j, "properties"), "error");
        if (json_is_object(e)) {
            const json_t *inner = json_object_get(e, "error");  /* {"error":{"error":{..}}} */
            fill_arm_error(json_is_object(inner) ? inner : e, &out->error);
            out->has_error = out->error.code[0] || out->error.message[0];
        }
        const json_t *pc = json_object_get(j, "percentComplete");
        if (json_is_number(pc)) {
            double p = json_number_value(pc);
            out->percent = p < 0 ? 0 : p > 100 ? 100 : (int)p;
        }
        rc = 0;
    }
    json_decref(j);
    return rc;
}

/* an integer given as a JSON number or a decimal string */
static int int_member(const json_t *o, const char *k, long long *v)
{
    const json_t *x = json_object_get(o, k);
    if (json_is_integer(x)) {
        *v = json_integer_value(x);
        return 0;
    }
    if (json_is_real(x)) {
        /* a double beyond long long's range is undefined behaviour to convert (found by
         * fuzz_azure): such a lifetime is no lifetime */
        double d = json_real_value(x);
        if (!(d > -9.2e18 && d < 9.2e18))
            return -1;
        *v = (long long)d;
        return 0;
    }
    const char *s = json_string_value(x);
    if (!s || !*s)
        return -1;
    char *end;
    errno = 0;
    long long r = strtoll(s, &end, 10);
    if (errno || *end)
        return -1;
    *v = r;
    return 0;
}

int az_parse_token(const char *body, size_t len, long long now_s, char **token,
                   long long *expires_in_s)
{
    *token = NULL;
    *expires_in_s = 0;
    json_t *j = parse_body(body, len);
    if (!j)
        return -1;
    const char *t = str_member(j, "access_token");
    const char *type = str_member(j, "token_type");
    long long in = -1, on = -1;
    int rc = -1;
    if (t && *t && strlen(t) < 65536 && (!type || !strcasecmp(type, "Bearer"))) {
        for (const char *p = t; *p; p++)
            if ((unsigned char)*p <= 0x20 || (unsigned char)*p >= 0x7f)
                goto out;   /* would break the Authorization header */
        if (int_member(j, "expires_on", &on) == 0 && on > now_s)
            in = on - now_s;
        else if (int_member(j, "expires_in", &in) != 0)
            in = -1;
        if (in > 0) {
            *token = strdup(t);
            *expires_in_s = in;
            rc = *token ? 0 : -1;
        }
    }
out:
    /* the body held the token: wipe jansson's copy */
    if (t) {
        json_t *a = json_object_get(j, "access_token");
        char *w = (char *)json_string_value(a);
        if (w)
            memset(w, 'x', strlen(w));
    }
    json_decref(j);
    return rc;
}
