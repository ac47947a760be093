/* Fuzz target: the core HTTP service's handling of what a server sends back (core/http.c
 * through core/http_int.h): header lines as libcurl hands them over (status lines of
 * redirects and 100 Continue start a new block), header lookup, and the retry delay from
 * Retry-After (delta-seconds or an HTTP date) and x-ms-retry-after-ms.
 *
 * Input: the response head, lines ending in "\n" (a status line first, or several blocks);
 * without NUL bytes, which libcurl refuses in a head.
 * Properties: stored lines are non-empty and carry no line end; a lookup returns a pointer
 * into a stored line of that name, blanks skipped; the retry delay is -1 (nothing said) or
 * 0..3,600,000 ms: the client never sleeps more than an hour on a server's word. */
#include "config.h"

#include "fuzz.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "http_int.h"

static const char *const names[] = {"Retry-After", "x-ms-retry-after-ms", "Location",
                                    "Content-Type", "x-ms-request-id", "ETag", ""};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int curl = -1;
    if (curl < 0)
        curl = http_curl_available();
    FZ_CHECK(curl, "libcurl cannot be loaded: the date form of Retry-After needs it");
    /* libcurl refuses a response with a NUL byte in its head (CURLE_WEIRD_SERVER_REPLY,
     * "Nul byte in header"): no such line ever reaches the callback */
    if (memchr(data, 0, size))
        return 0;
    http_hdrs h = {0};
    /* libcurl delivers one header line per callback, its line end included */
    size_t off = 0;
    while (off < size) {
        const uint8_t *nl = memchr(data + off, '\n', size - off);
        size_t len = nl ? (size_t)(nl - (data + off)) + 1 : size - off;
        /* the exact bytes, in a buffer of their own: a read past them is caught */
        char *line = malloc(len ? len : 1);
        if (!line)
            abort();
        memcpy(line, data + off, len);
        http_hdrs_line(&h, line, len);
        free(line);
        off += len;
    }
    for (size_t i = 0; i < h.n; i++) {
        size_t l = strlen(h.v[i]);
        FZ_CHECK(l > 0, "empty header line stored");
        FZ_CHECK(h.v[i][l - 1] != '\n' && h.v[i][l - 1] != '\r', "line end stored: %s",
                 h.v[i]);
        FZ_CHECK(strncmp(h.v[i], "HTTP/", 5), "status line stored as a header");
    }
    for (size_t k = 0; k < sizeof names / sizeof *names; k++) {
        const char *v = http_find_header(h.v, h.n, names[k]);
        if (!v)
            continue;
        size_t nl = strlen(names[k]);
        int found = 0;
        for (size_t i = 0; i < h.n && !found; i++)
            found = v > h.v[i] && v <= h.v[i] + strlen(h.v[i]) &&
                    !strncasecmp(h.v[i], names[k], nl) && h.v[i][nl] == ':';
        FZ_CHECK(found, "%s: the value is not in a stored line of that name", names[k]);
        FZ_CHECK(*v != ' ' && *v != '\t', "%s: leading blank kept", names[k]);
    }
    long ms = http_retry_after_ms(h.v, h.n);
    FZ_CHECK(ms >= -1 && ms <= 3600000, "retry delay of %ld ms (Retry-After: %s, "
             "x-ms-retry-after-ms: %s)", ms,
             http_find_header(h.v, h.n, "Retry-After") ?
                 http_find_header(h.v, h.n, "Retry-After") : "-",
             http_find_header(h.v, h.n, "x-ms-retry-after-ms") ?
                 http_find_header(h.v, h.n, "x-ms-retry-after-ms") : "-");
    fz_note("%zu header lines, retry delay %ld ms", h.n, ms);
    http_hdrs_clear(&h);
    return 0;
}
