/* Fuzz target: the Azure client's parsing of what Azure sends back (plugins/azure/parse.c
 * through azure_parse.h): ARM error bodies, AAD/IMDS token errors, long-running-operation
 * status bodies and token responses.
 *
 * Input: one response body, any bytes (the parsers take a length, not a NUL-terminated
 * string: a copy of exactly `size` bytes in a buffer of its own catches a read past it).
 * Properties: every output string is NUL-terminated within its field and is one line (no
 * CR, LF or other control character: these strings go into one-line error messages); an LRO
 * state is one of the four; a parsed token is non-empty with a lifetime that is not
 * negative. */
#include "config.h"

#include "fuzz.h"

#include <stdlib.h>
#include <string.h>

#include "azure_parse.h"

static void one_line(const char *field, size_t cap, const char *what)
{
    size_t n = strnlen(field, cap);
    FZ_CHECK(n < cap, "%s is not NUL-terminated within its %zu bytes", what, cap);
    for (size_t i = 0; i < n; i++)
        FZ_CHECK((unsigned char)field[i] >= 0x20 && field[i] != 0x7f,
                 "%s holds control character 0x%02x at %zu", what, (unsigned char)field[i], i);
}

static void arm_error_ok(const az_arm_error *e)
{
    one_line(e->code, sizeof e->code, "ARM error code");
    one_line(e->message, sizeof e->message, "ARM error message");
    one_line(e->target, sizeof e->target, "ARM error target");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *body = malloc(size ? size : 1);
    if (!body)
        abort();
    memcpy(body, data, size);

    az_arm_error ae;
    memset(&ae, 0x55, sizeof ae); /* the parser must terminate what it fills */
    if (az_parse_arm_error(body, size, &ae) == 0) {
        arm_error_ok(&ae);
        fz_note("arm error %s: %s", ae.code, ae.message);
    }

    az_aad_error de;
    memset(&de, 0x55, sizeof de);
    if (az_parse_aad_error(body, size, &de) == 0) {
        one_line(de.error, sizeof de.error, "AAD error");
        one_line(de.description, sizeof de.description, "AAD error description");
        FZ_CHECK(de.aadsts >= 0, "negative AADSTS code %ld", de.aadsts);
        fz_note("aad error %s (%ld)", de.error, de.aadsts);
    }

    az_lro_status ls;
    memset(&ls, 0x55, sizeof ls);
    if (az_parse_lro_status(body, size, &ls) == 0) {
        FZ_CHECK(ls.state == AZ_LRO_IN_PROGRESS || ls.state == AZ_LRO_SUCCEEDED ||
                     ls.state == AZ_LRO_FAILED || ls.state == AZ_LRO_CANCELED,
                 "LRO state %d is none of the four", (int)ls.state);
        one_line(ls.status, sizeof ls.status, "LRO status");
        if (ls.has_error)
            arm_error_ok(&ls.error);
        FZ_CHECK(ls.percent >= -1, "percentComplete %d", ls.percent);
        fz_note("lro %s", ls.status);
    }

    char *token = NULL;
    long long life = -1;
    if (az_parse_token(body, size, 1700000000LL, &token, &life) == 0) {
        FZ_CHECK(token && token[0], "a token response parsed to an empty token");
        FZ_CHECK(life >= 0, "token lifetime %lld s", life);
        fz_note("token, %lld s", life);
    } else {
        FZ_CHECK(!token, "a refused token response still returned a token");
    }
    free(token);
    free(body);
    return 0;
}
