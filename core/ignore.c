/* Ignore rules with git's exact semantics (gitignore(5), git's dir.c and wildmatch.c).
 *
 * Patterns of every ignore file on the way from the root to the current directory sit on one
 * stack, in that order; the last pattern that matches decides, which gives both of git's
 * precedence rules at once (later lines win within a file, deeper files win over shallower).
 *
 * Where we knowingly differ from git: nothing in the pattern language.  Sources git reads
 * and we do not: .git/info/exclude and core.excludesFile (per-user settings must not change
 * what a run ships).  An ignore file that is a symlink is not followed, as git >= 2.32. */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ignore.h"
#include "util.h"

enum { WM_MATCH = 0, WM_NOMATCH = 1, WM_ABORT_ALL = -1, WM_ABORT_TO_STARSTAR = -2 };
#define WM_PATHNAME 1u

typedef struct pattern {
    char *pat;          /* without '!', trailing '/', leading '/' */
    unsigned base;      /* index into ig->bases: the directory of the ignore file */
    unsigned negate : 1, dironly : 1, nodir : 1, literal : 1, endswith : 1;
} pattern;

typedef struct frame {
    size_t n_patterns;  /* patterns on the stack before this directory's file */
    size_t n_bases;
} frame;

struct ignore {
    char *root;
    const char *fname;
    pattern *pats;
    size_t n_pats, cap_pats;
    char **bases;       /* "" for the root, else "dir/sub" */
    size_t n_bases, cap_bases;
    frame *frames;
    size_t n_frames, cap_frames;
};

/* ---- wildmatch: git's algorithm, case-sensitive ------------------------------------------ */

static int is_glob_special(unsigned char c)
{
    return c == '*' || c == '?' || c == '[' || c == '\\';
}

static int class_match(const unsigned char *s, int len, unsigned char c)
{
    static const struct {
        const char *name;
        int (*fn)(int);
    } classes[] = {{"alnum", isalnum}, {"alpha", isalpha}, {"blank", isblank},
                   {"cntrl", iscntrl}, {"digit", isdigit}, {"graph", isgraph},
                   {"lower", islower}, {"print", isprint}, {"punct", ispunct},
                   {"space", isspace}, {"upper", isupper}, {"xdigit", isxdigit}};
    for (size_t i = 0; i < CT_ARRAY_LEN(classes); i++)
        if ((int)strlen(classes[i].name) == len && !memcmp(s, classes[i].name, len))
            return c < 128 && classes[i].fn(c) ? 1 : 0;
    return -1; /* malformed class: git aborts the whole match */
}

/* A bracket expression at *pp (just past '['); t is the text character.  Returns 1/0 for
 * matched/not, or WM_ABORT_ALL; *pp is left on the closing ']'. */
static int bracket(const unsigned char **pp, unsigned char t)
{
    const unsigned char *p = *pp;
    unsigned char p_ch = *p, prev_ch = 0;
    if (p_ch == '^')
        p_ch = '!';
    int negated = p_ch == '!', matched = 0;
    if (negated)
        p_ch = *++p;
    do {
        if (!p_ch)
            return WM_ABORT_ALL;
        if (p_ch == '\\') {
            if (!(p_ch = *++p))
                return WM_ABORT_ALL;
            if (t == p_ch)
                matched = 1;
        } else if (p_ch == '-' && prev_ch && p[1] && p[1] != ']') {
            p_ch = *++p;
            if (p_ch == '\\' && !(p_ch = *++p))
                return WM_ABORT_ALL;
            if (t <= p_ch && t >= prev_ch)
                matched = 1;
            p_ch = 0;
        } else if (p_ch == '[' && p[1] == ':') {
            const unsigned char *s = p += 2;
            while ((p_ch = *p) && p_ch != ']')
                p++;
            if (!p_ch)
                return WM_ABORT_ALL;
            int len = (int)(p - s - 1);
            if (len < 0 || p[-1] != ':') {
                /* no ":]": an ordinary '[' in the set */
                p = s - 2;
                p_ch = '[';
                if (t == p_ch)
                    matched = 1;
                continue;
            }
            int r = class_match(s, len, t);
            if (r < 0)
                return WM_ABORT_ALL;
            if (r)
                matched = 1;
            p_ch = 0;
        } else if (t == p_ch) {
            matched = 1;
        }
    } while (prev_ch = p_ch, (p_ch = *++p) != ']');
    *pp = p;
    return matched != negated;
}

static int dowild(const unsigned char *p, const unsigned char *text, unsigned flags)
{
    const unsigned char *start = p;
    for (unsigned char p_ch; (p_ch = *p) != '\0'; text++, p++) {
        unsigned char t_ch = *text;
        if (t_ch == '\0' && p_ch != '*')
            return WM_ABORT_ALL;
        switch (p_ch) {
        case '\\':
            p_ch = *++p; /* the next character is literal */
            if (t_ch != p_ch)
                return WM_NOMATCH;
            continue;
        default:
            if (t_ch != p_ch)
                return WM_NOMATCH;
            continue;
        case '?':
            if ((flags & WM_PATHNAME) && t_ch == '/')
                return WM_NOMATCH;
            continue;
        case '[': {
            p++;
            int r = bracket(&p, t_ch);
            if (r == WM_ABORT_ALL)
                return r;
            if (!r || ((flags & WM_PATHNAME) && t_ch == '/'))
                return WM_NOMATCH;
            continue;
        }
        case '*': {
            int match_slash;
            if (*++p == '*') {
                const unsigned char *prev_p = p - 2;
                while (*++p == '*')
                    ;
                if ((prev_p < start || *prev_p == '/') &&
                    (*p == '\0' || *p == '/' || (p[0] == '\\' && p[1] == '/'))) {
                    /* "**" as a whole component: also matches no directory at all */
                    if (p[0] == '/' && dowild(p + 1, text, flags) == WM_MATCH)
                        return WM_MATCH;
                    match_slash = 1;
                } else {
                    match_slash = (flags & WM_PATHNAME) ? 0 : 1;
                }
            } else {
                match_slash = (flags & WM_PATHNAME) ? 0 : 1;
            }
            if (*p == '\0') {
                if (!match_slash && strchr((const char *)text, '/'))
                    return WM_NOMATCH;
                return WM_MATCH;
            }
            if (!match_slash && *p == '/') {
                const char *slash = strchr((const char *)text, '/');
                if (!slash)
                    return WM_NOMATCH;
                text = (const unsigned char *)slash;
                break; /* the loop consumes the slash */
            }
            for (;;) {
                if (t_ch == '\0')
                    break;
                if (!is_glob_special(*p)) {
                    /* skip ahead to the literal that must follow the star */
                    p_ch = *p;
                    while ((t_ch = *text) != '\0' && (match_slash || t_ch != '/') &&
                           t_ch != p_ch)
                        text++;
                    if (t_ch != p_ch)
                        return WM_NOMATCH;
                }
                int m = dowild(p, text, flags);
                if (m != WM_NOMATCH) {
                    if (!match_slash || m != WM_ABORT_TO_STARSTAR)
                        return m;
                } else if (!match_slash && t_ch == '/') {
                    return WM_ABORT_TO_STARSTAR;
                }
                t_ch = *++text;
            }
            return WM_ABORT_ALL;
        }
        }
    }
    return *text ? WM_NOMATCH : WM_MATCH;
}

static int wildmatch(const char *pat, const char *text, unsigned flags)
{
    return dowild((const unsigned char *)pat, (const unsigned char *)text, flags) == WM_MATCH;
}

/* ---- parsing ------------------------------------------------------------------------------ */

/* Trailing spaces go unless escaped with a backslash (git's trim_trailing_spaces). */
static void trim_trailing_spaces(char *s)
{
    char *last_space = NULL;
    for (char *p = s; *p; p++) {
        if (*p == ' ') {
            if (!last_space)
                last_space = p;
            continue;
        }
        last_space = NULL;
        if (*p == '\\' && p[1])
            p++;
    }
    if (last_space)
        *last_space = '\0';
}

static void add_pattern(ignore *ig, char *line, unsigned base)
{
    pattern pt = {0};
    pt.base = base;
    if (*line == '!') {
        pt.negate = 1;
        line++;
    }
    size_t len = strlen(line);
    if (len && line[len - 1] == '/') {
        pt.dironly = 1;
        line[--len] = '\0';
    }
    if (!len)
        return;
    pt.nodir = strchr(line, '/') == NULL;
    if (*line == '/')
        line++;
    pt.pat = xstrdup(line);
    size_t special = strcspn(pt.pat, "*?[\\");
    pt.literal = pt.pat[special] == '\0';
    pt.endswith = pt.pat[0] == '*' && strcspn(pt.pat + 1, "*?[\\") == strlen(pt.pat + 1);
    if (ig->n_pats == ig->cap_pats)
        ig->pats = xrealloc(ig->pats, (ig->cap_pats = ig->cap_pats * 2 + 16) * sizeof *ig->pats);
    ig->pats[ig->n_pats++] = pt;
}

static void parse_buffer(ignore *ig, char *buf, unsigned base)
{
    if (!strncmp(buf, "\xEF\xBB\xBF", 3))
        buf += 3; /* a UTF-8 byte order mark, as git skips it */
    for (char *line = buf; line && *line;) {
        char *nl = strchr(line, '\n');
        if (nl) {
            *nl = '\0';
            if (nl > line && nl[-1] == '\r')
                nl[-1] = '\0';
        }
        if (*line && *line != '#') {
            trim_trailing_spaces(line);
            add_pattern(ig, line, base);
        }
        line = nl ? nl + 1 : NULL;
    }
}

/* ---- the stack ---------------------------------------------------------------------------- */

ctarget_status ignore_open(const char *root, ignore **out, ctarget_error *err)
{
    (void)err;
    ignore *ig = xcalloc(1, sizeof *ig);
    ig->root = xstrdup(root);
    char *aml = path_join(root, ".amlignore");
    struct stat st;
    ig->fname = lstat(aml, &st) == 0 && S_ISREG(st.st_mode) ? ".amlignore" : ".gitignore";
    free(aml);
    *out = ig;
    return CTARGET_OK;
}

void ignore_free(ignore *ig)
{
    if (!ig)
        return;
    for (size_t i = 0; i < ig->n_pats; i++)
        free(ig->pats[i].pat);
    for (size_t i = 0; i < ig->n_bases; i++)
        free(ig->bases[i]);
    free(ig->pats);
    free(ig->bases);
    free(ig->frames);
    free(ig->root);
    free(ig);
}

const char *ignore_file_name(const ignore *ig)
{
    return ig->fname;
}

ctarget_status ignore_enter(ignore *ig, const char *reldir, ctarget_error *err)
{
    if (ig->n_frames == ig->cap_frames)
        ig->frames = xrealloc(ig->frames, (ig->cap_frames = ig->cap_frames * 2 + 8) *
                                              sizeof *ig->frames);
    ig->frames[ig->n_frames++] = (frame){ig->n_pats, ig->n_bases};

    char *dir = *reldir ? path_join(ig->root, reldir) : xstrdup(ig->root);
    char *path = path_join(dir, ig->fname);
    free(dir);
    /* O_NOFOLLOW: an ignore file that is a symlink is not read (git >= 2.32) */
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        if (e == ENOENT || e == ELOOP || e == ENOTDIR) {
            free(path);
            return CTARGET_OK;
        }
        ct_err_errno(err, CTARGET_E_IO, e, "cannot read ignore file %s", path);
        free(path);
        return CTARGET_E_IO;
    }
    strbuf sb;
    sb_init(&sb);
    char chunk[8192];
    ssize_t n;
    while ((n = read(fd, chunk, sizeof chunk)) > 0)
        sb_add(&sb, chunk, (size_t)n);
    int e = errno;
    close(fd);
    if (n < 0) {
        ct_err_errno(err, CTARGET_E_IO, e, "cannot read ignore file %s", path);
        sb_free(&sb);
        free(path);
        return CTARGET_E_IO;
    }
    free(path);
    if (ig->n_bases == ig->cap_bases)
        ig->bases = xrealloc(ig->bases, (ig->cap_bases = ig->cap_bases * 2 + 8) *
                                            sizeof *ig->bases);
    ig->bases[ig->n_bases] = xstrdup(reldir);
    parse_buffer(ig, sb.data ? sb.data : (char *)"", (unsigned)ig->n_bases);
    ig->n_bases++;
    sb_free(&sb);
    return CTARGET_OK;
}

void ignore_leave(ignore *ig)
{
    if (!ig->n_frames)
        return;
    frame f = ig->frames[--ig->n_frames];
    for (size_t i = f.n_patterns; i < ig->n_pats; i++)
        free(ig->pats[i].pat);
    ig->n_pats = f.n_patterns;
    for (size_t i = f.n_bases; i < ig->n_bases; i++)
        free(ig->bases[i]);
    ig->n_bases = f.n_bases;
}

static int match_basename(const pattern *pt, const char *basename)
{
    if (pt->literal)
        return !strcmp(pt->pat, basename);
    if (pt->endswith) {
        size_t pl = strlen(pt->pat) - 1, bl = strlen(basename);
        return pl <= bl && !memcmp(pt->pat + 1, basename + bl - pl, pl);
    }
    return wildmatch(pt->pat, basename, 0);
}

static int match_pathname(const pattern *pt, const char *base, const char *path)
{
    size_t bl = strlen(base);
    if (bl) {
        if (strncmp(path, base, bl) || path[bl] != '/')
            return 0;
        path += bl + 1;
    }
    return wildmatch(pt->pat, path, WM_PATHNAME);
}

int ignore_is_excluded(const ignore *ig, const char *relpath, int is_dir)
{
    const char *basename = strrchr(relpath, '/');
    basename = basename ? basename + 1 : relpath;
    if (!strcmp(basename, ".git"))
        return 1;
    for (size_t i = ig->n_pats; i-- > 0;) {
        const pattern *pt = &ig->pats[i];
        if (pt->dironly && !is_dir)
            continue;
        int m = pt->nodir ? match_basename(pt, basename)
                          : match_pathname(pt, ig->bases[pt->base], relpath);
        if (m)
            return !pt->negate;
    }
    return 0;
}
