#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

json_t *cli_parse_json(const char *text)
{
    json_error_t e;
    json_t *j = json_loads(text ? text : "null", JSON_DECODE_ANY, &e);
    return j ? j : json_null();
}

void out_json_text(const char *text)
{
    fputs(text, stdout);
    fputc('\n', stdout);
}

char *json_scalar_text(json_t *v)
{
    char buf[64];
    switch (json_typeof(v)) {
    case JSON_STRING:
        return strdup(json_string_value(v));
    case JSON_INTEGER:
        snprintf(buf, sizeof buf, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        return strdup(buf);
    case JSON_REAL:
        snprintf(buf, sizeof buf, "%g", json_real_value(v));
        return strdup(buf);
    case JSON_TRUE:
        return strdup("yes");
    case JSON_FALSE:
        return strdup("no");
    case JSON_NULL:
        return strdup("-");
    case JSON_ARRAY: {
        size_t i, total = 1;
        json_t *x;
        char **parts = calloc(json_array_size(v) + 1, sizeof *parts);
        json_array_foreach(v, i, x) {
            parts[i] = json_is_object(x) ? strdup("{...}") : json_scalar_text(x);
            total += strlen(parts[i]) + 2;
        }
        char *s = calloc(1, total);
        json_array_foreach(v, i, x) {
            if (i)
                strcat(s, ", ");
            strcat(s, parts[i]);
            free(parts[i]);
        }
        free(parts);
        return s;
    }
    default:
        return strdup("{...}");
    }
}

static json_t *dotted(json_t *obj, const char *path)
{
    char *p = strdup(path), *save = NULL;
    json_t *cur = obj;
    for (char *t = strtok_r(p, ".", &save); t && cur; t = strtok_r(NULL, ".", &save))
        cur = json_object_get(cur, t);
    free(p);
    return cur;
}

void out_table(json_t *rows, const out_col *cols, size_t ncols)
{
    size_t nrows = json_array_size(rows);
    size_t *w = calloc(ncols, sizeof *w);
    char ***cells = calloc(nrows + 1, sizeof *cells);
    for (size_t c = 0; c < ncols; c++)
        w[c] = strlen(cols[c].header);
    for (size_t r = 0; r < nrows; r++) {
        cells[r] = calloc(ncols, sizeof **cells);
        for (size_t c = 0; c < ncols; c++) {
            json_t *v = dotted(json_array_get(rows, r), cols[c].key);
            cells[r][c] = v ? json_scalar_text(v) : strdup("-");
            size_t l = strlen(cells[r][c]);
            if (l > w[c])
                w[c] = l;
        }
    }
    for (size_t c = 0; c < ncols; c++)
        printf("%-*s%s", c + 1 < ncols ? (int)w[c] : 0, cols[c].header,
               c + 1 < ncols ? "  " : "\n");
    for (size_t r = 0; r < nrows; r++) {
        for (size_t c = 0; c < ncols; c++) {
            printf("%-*s%s", c + 1 < ncols ? (int)w[c] : 0, cells[r][c],
                   c + 1 < ncols ? "  " : "\n");
            free(cells[r][c]);
        }
        free(cells[r]);
    }
    free(cells);
    free(w);
}

void out_object(json_t *obj, int indent)
{
    const char *k;
    json_t *v;
    size_t width = 0;
    json_object_foreach(obj, k, v) if (strlen(k) > width) width = strlen(k);
    json_object_foreach(obj, k, v) {
        if (json_is_object(v)) {
            printf("%*s%s:%s\n", indent, "", k, json_object_size(v) ? "" : " -");
            out_object(v, indent + 2);
        } else if (json_is_array(v) && json_array_size(v) && json_is_object(json_array_get(v, 0))) {
            printf("%*s%s:\n", indent, "", k);
            size_t i;
            json_t *x;
            json_array_foreach(v, i, x) {
                printf("%*s- #%zu\n", indent + 2, "", i + 1);
                out_object(x, indent + 4);
            }
        } else {
            char *s = json_scalar_text(v);
            printf("%*s%s:%*s %s\n", indent, "", k, (int)(width - strlen(k)), "", s);
            free(s);
        }
    }
}
