/* Pure parsers for what Azure sends back: ARM and AAD error bodies, LRO status bodies,
 * token responses.  No host, no I/O, no allocation beyond the outputs: a fuzz target can call
 * them on arbitrary bytes (body need not be NUL-terminated; len bytes are read). */
#ifndef CTARGET_AZURE_PARSE_H
#define CTARGET_AZURE_PARSE_H

#include <stddef.h>

#define AZ_PARSE_CODE_MAX 128
#define AZ_PARSE_MSG_MAX 640

/* ARM error body {"error": {"code", "message", "target", "details": [...]}} (also the bare
 * {"code", "message"} form some services send).  code/message are one line each (control
 * characters become spaces, trimmed); message gains the first detail's "code: message" when
 * it adds anything.  Returns 0 when an error object was found. */
typedef struct az_arm_error {
    char code[AZ_PARSE_CODE_MAX];
    char message[AZ_PARSE_MSG_MAX];
    char target[AZ_PARSE_CODE_MAX];
} az_arm_error;
int az_parse_arm_error(const char *body, size_t len, az_arm_error *out);

/* AAD (Entra ID) token error {"error": "invalid_client", "error_description": "AADSTS7000215:
 * Invalid client secret provided...\r\nTrace ID: ...", "error_codes": [7000215]} and IMDS's
 * {"error", "error_description"}.  description is its first line only (no trace ids).
 * aadsts is the first error code (0 if none).  Returns 0 when "error" was found. */
typedef struct az_aad_error {
    char error[AZ_PARSE_CODE_MAX];
    char description[AZ_PARSE_MSG_MAX];
    long aadsts;
} az_aad_error;
int az_parse_aad_error(const char *body, size_t len, az_aad_error *out);

/* Azure-AsyncOperation status body {"status": "InProgress|Succeeded|Failed|Canceled",
 * "error": {...}}.  Also accepts a resource body whose properties.provisioningState says
 * the same.  Returns 0 when a status was found. */
typedef enum az_lro_state {
    AZ_LRO_IN_PROGRESS = 0,
    AZ_LRO_SUCCEEDED = 1,
    AZ_LRO_FAILED = 2,
    AZ_LRO_CANCELED = 3
} az_lro_state;
typedef struct az_lro_status {
    az_lro_state state;
    char status[AZ_PARSE_CODE_MAX];   /* the service's word */
    az_arm_error error;               /* when FAILED/CANCELED and given */
    int has_error;
    int percent;                      /* percentComplete, or -1 */
} az_lro_status;
int az_parse_lro_status(const char *body, size_t len, az_lro_status *out);

/* Token response: AAD's {"access_token", "expires_in": 3599} or IMDS's strings
 * {"expires_in": "3599", "expires_on": "1506484173"}.  *token is malloc'ed (caller wipes and
 * frees); *expires_in_s the lifetime in seconds relative to now_s (expires_on wins, converted
 * with now_s).  Returns 0 on success; -1 when the body is not a usable token response. */
int az_parse_token(const char *body, size_t len, long long now_s, char **token,
                   long long *expires_in_s);

#endif
