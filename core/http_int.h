/* The HTTP client's response handling that reads what a server sent, apart from the transfer
 * itself so that it can be driven without a network (fuzz/fuzz_http.c). */
#ifndef CTARGET_CORE_HTTP_INT_H
#define CTARGET_CORE_HTTP_INT_H

#include <stddef.h>

/* The header lines of the final response, "Name: value", line ends stripped. */
typedef struct http_hdrs {
    char **v;
    size_t n;
} http_hdrs;

/* One line as libcurl delivers it (status lines too: each starts a new block, so the
 * headers of a redirect or of 100 Continue are forgotten). */
void http_hdrs_line(http_hdrs *h, const char *data, size_t len);
void http_hdrs_clear(http_hdrs *h);
/* The value of header `name` (case-insensitive), leading blanks skipped; NULL when absent. */
const char *http_find_header(char **v, size_t n, const char *name);
/* Retry-After as delta-seconds or an HTTP date; Azure's x-ms-retry-after-ms wins when
 * present.  Returns milliseconds (at most an hour), or -1 when the response says nothing.
 * Needs libcurl (http_curl_available()) for the date form. */
long http_retry_after_ms(char **v, size_t n);
/* libcurl is loaded (on first call); 0 when it cannot be. */
int http_curl_available(void);

#endif
