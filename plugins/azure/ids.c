/* Resource ids and URL escaping: pure string work, no host. */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include "azure_int.h"

static int hexval(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
           : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

char *az_url_escape(const char *s, int keep_slash)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t n = strlen(s);
    char *o = malloc(3 * n + 1), *p = o;
    if (!o)
        return NULL;
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
            c == '-' || c == '_' || c == '.' || c == '~' || (keep_slash && c == '/')) {
            *p++ = (char)c;
        } else {
            *p++ = '%';
            *p++ = hex[c >> 4];
            *p++ = hex[c & 15];
        }
    }
    *p = '\0';
    return o;
}

void az_rid_clear(az_rid *r)
{
    free(r->buf);
    memset(r, 0, sizeof *r);
}

/* /subscriptions/S/resourceGroups/G/providers/NS/t1/n1[/t2/n2...] */
int az_rid_parse(const char *id, az_rid *out)
{
    memset(out, 0, sizeof *out);
    if (!id || id[0] != '/')
        return -1;
    size_t len = strlen(id);
    /* room for the segments plus the joined type ("NS/t1/t2") */
    char *buf = malloc(2 * len + 2);
    if (!buf)
        return -1;
    memcpy(buf, id + 1, len);   /* includes the NUL */
    char *seg[64];
    size_t n = 0;
    for (char *s = buf;;) {
        if (n == 64) {
            free(buf);
            return -1;
        }
        seg[n++] = s;
        char *slash = strchr(s, '/');
        if (!slash)
            break;
        *slash = '\0';
        s = slash + 1;
    }
    for (size_t i = 0; i < n; i++)
        if (!*seg[i]) {
            free(buf);
            return -1;
        }
    /* subscriptions S resourceGroups G providers NS t n [t n]... */
    if (n < 8 || (n - 6) % 2 || strcasecmp(seg[0], "subscriptions") ||
        strcasecmp(seg[2], "resourceGroups") || strcasecmp(seg[4], "providers")) {
        free(buf);
        return -1;
    }
    char *type = buf + len + 1;
    size_t tl = 0;
    memcpy(type, seg[5], strlen(seg[5]));
    tl = strlen(seg[5]);
    for (size_t i = 6; i < n; i += 2) {
        type[tl++] = '/';
        memcpy(type + tl, seg[i], strlen(seg[i]));
        tl += strlen(seg[i]);
    }
    type[tl] = '\0';
    out->buf = buf;
    out->subscription = seg[1];
    out->resource_group = seg[3];
    out->provider = seg[5];
    out->type = type;
    out->name = seg[n - 1];
    out->parent_name = n >= 10 ? seg[n - 3] : NULL;
    return 0;
}

char *az_url_unescape(const char *s)
{
    char *o = malloc(strlen(s) + 1), *p = o;
    if (!o)
        return NULL;
    for (; *s; s++) {
        int hi, lo;
        if (*s == '%' && (hi = hexval(s[1])) >= 0 && (lo = hexval(s[2])) >= 0) {
            *p++ = (char)(hi * 16 + lo);
            s += 2;
        } else {
            *p++ = *s;
        }
    }
    *p = '\0';
    return o;
}
