/* Ignore rules against git itself: for each case the same tree and ignore files are listed
 * by `git ls-files --others --exclude-standard` and by a walk through core/ignore.h, and the
 * two lists must be identical. */
#define _GNU_SOURCE
#include "testlib.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <ctarget/ctarget.h>

#include "ignore.h"
#include "util.h"

/* The tree every case starts from: files, and symlinks as "name -> target". */
static const char *const tree[] = {
    "a.txt", "b.log", "c.py", "README.md", "name with space.txt", "#hash.txt", "!bang.txt",
    "trail ", "[x].txt", "x.txt", "build/out.o", "build/keep.txt", "build/sub/deep.o",
    "src/main.py", "src/util.py", "src/a.log", "src/build/gen.py", "src/lib/x.c",
    "src/lib/y.h", "docs/a.md", "docs/b/c.md", "docs/b/d/e.md", "logs/1.log",
    "logs/important.log", "foo/bar/baz.txt", "foo/x/bar/q.txt", "foo/x/y/bar/z.txt", "a/b",
    "a/x/b", "a/x/y/b", "abc/def", "data1.csv", "data2.csv", "dataX.csv", "UPPER.TXT",
    "node_modules/pkg/index.js", "sub/node_modules/m.js", ".hidden", ".config/x",
    "dir.with.dot/f", "\xc3\xa9.txt", "link.txt -> a.txt", "linkdir -> src",
    "deep/a/b/c/d/e.txt", "x/b",
};

typedef struct icase {
    const char *name;
    const char *root;        /* root ignore file */
    const char *nested[6];   /* pairs: directory, content */
} icase;

static const icase cases[] = {
    {"star_ext", "*.log\n", {0}},
    {"negation", "*.log\n!important.log\n", {0}},
    {"dir_only", "build/\n", {0}},
    {"anchored", "/build\n", {0}},
    {"unanchored_any_depth", "build\n", {0}},
    {"anchored_deep", "/src/build\n", {0}},
    {"middle_slash_anchors", "src/*.py\n", {0}},
    {"double_star_middle", "src/**/*.py\n", {0}},
    {"leading_double_star", "**/build\n", {0}},
    {"trailing_double_star", "docs/**\n", {0}},
    {"double_star_then_name", "docs/**/e.md\n", {0}},
    {"a_double_star_b", "a/**/b\n", {0}},
    {"foo_double_star_bar", "foo/**/bar\n", {0}},
    {"question_mark", "data?.csv\n", {0}},
    {"range", "data[0-9].csv\n", {0}},
    {"negated_class_bang", "data[!0-9].csv\n", {0}},
    {"negated_class_caret", "data[^0-9].csv\n", {0}},
    {"escaped_hash", "\\#hash.txt\n", {0}},
    {"comment_line", "#hash.txt\n", {0}},
    {"escaped_bang", "\\!bang.txt\n", {0}},
    {"bang_negates_nothing", "!bang.txt\n", {0}},
    {"escaped_spaces", "name\\ with\\ space.txt\n", {0}},
    {"escaped_trailing_space", "trail\\ \n", {0}},
    {"trailing_spaces_stripped", "*.txt   \n", {0}},
    {"no_reinclude_in_excluded_dir", "build/\n!build/keep.txt\n", {0}},
    {"reinclude_from_dir_star", "build/*\n!build/keep.txt\n", {0}},
    {"whitelist", "*\n!*/\n!*.py\n", {0}},
    {"root_star_except_src", "/*\n!/src\n", {0}},
    {"node_modules_dir", "node_modules/\n", {0}},
    {"node_modules_any", "**/node_modules\n", {0}},
    {"class_upper", "[[:upper:]]*\n", {0}},
    {"class_digit", "[[:digit:]]*\n", {0}},
    {"case_sensitive", "*.TXT\n", {0}},
    {"hidden", ".*\n", {0}},
    {"escaped_brackets", "\\[x\\].txt\n", {0}},
    {"bracket_set", "[x].txt\n", {0}},
    {"dotted_dir", "dir.with.dot/\n", {0}},
    {"every_dir", "*/\n", {0}},
    {"anchored_two_parts", "a/b\n", {0}},
    {"middle_slash_not_deep", "x/b\n", {0}},
    {"double_star_two_parts", "**/x/b\n", {0}},
    {"crlf", "*.py\r\n*.md\r\n", {0}},
    {"bom", "\xEF\xBB\xBF*.md\n", {0}},
    {"dir_then_reinclude_file", "src/lib/\n!src/lib/x.c\n", {0}},
    {"dir_star_slash", "docs/*/\n", {0}},
    {"dir_double_star_slash", "docs/**/\n", {0}},
    {"triple_star", "a/***/b\n", {0}},
    {"star_one_level", "foo/*/bar\n", {0}},
    {"reinclude_anchored", "*.o\n!/build/sub/*.o\n", {0}},
    {"symlink_not_dir", "linkdir/\n", {0}},
    {"symlink_by_name", "linkdir\nlink.txt\n", {0}},
    {"non_ascii", "\xc3\xa9.txt\n", {0}},
    {"range_letters", "[a-c].txt\n", {0}},
    {"class_close_bracket", "[]x].txt\n", {0}},
    {"trailing_backslash", "a.txt\\\n", {0}},
    {"blank_and_comments", "*.log\n\n# comment\n   \n!logs/important.log\n", {0}},
    {"star_slash_star", "*/*\n", {0}},
    {"deep_double_star", "deep/**/e.txt\n", {0}},
    {"negated_dir_then_file", "deep/\n!deep/a/b/c/d/e.txt\n", {0}},
    {"nested_reinclude", "*.py\n", {"src", "!main.py\n"}},
    {"nested_excludes_more", "!*.log\n", {"logs", "*.log\n"}},
    {"nested_anchor_is_relative", "", {"src", "/build\n"}},
    {"nested_negated_anchor", "", {"docs/b", "*.md\n!/c.md\n"}},
    {"nested_middle_slash", "", {"src", "lib/x.c\n"}},
    {"nested_ignores_itself", "", {"src", ".gitignore\n*.h\n"}},
    {"nested_deeper_wins", "*.txt\n", {"foo", "!*.txt\n", "foo/x", "*.txt\n"}},
    {"nested_in_ignored_dir", "build/\n", {"build", "!*.o\n"}},
};

static void make_tree(const char *root)
{
    for (size_t i = 0; i < CT_ARRAY_LEN(tree); i++) {
        const char *arrow = strstr(tree[i], " -> ");
        char *rel = arrow ? xstrndup(tree[i], (size_t)(arrow - tree[i])) : xstrdup(tree[i]);
        char *p = path_join(root, rel);
        char *slash = strrchr(p, '/');
        *slash = '\0';
        mkdir_p(p, 0755);
        *slash = '/';
        int rc = arrow ? symlink(arrow + 4, p) : tl_write_file(p, "x\n");
        CU_ASSERT_EQUAL_FATAL(rc, 0);
        free(p);
        free(rel);
    }
}

static void put(const char *root, const char *dir, const char *name, const char *content)
{
    char *d = *dir ? path_join(root, dir) : xstrdup(root);
    char *p = path_join(d, name);
    mkdir_p(d, 0755);
    CU_ASSERT_EQUAL_FATAL(tl_write_file(p, content), 0);
    free(p);
    free(d);
}

typedef struct list {
    char **v;
    size_t n;
} list;

static void list_add(list *l, const char *s)
{
    l->v = xrealloc(l->v, (l->n + 1) * sizeof *l->v);
    l->v[l->n++] = xstrdup(s);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void list_free(list *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->v[i]);
    free(l->v);
}

/* The walk protocol of ignore.h: enter a directory, ask for each entry, never descend into
 * an excluded directory; symlinks are files (never followed), as git lists them. */
static void walk(ignore *ig, const char *root, const char *rel, list *out)
{
    ctarget_error err;
    ctarget_error_init(&err);
    CU_ASSERT_EQUAL_FATAL(ignore_enter(ig, rel, &err), CTARGET_OK);
    char *dir = *rel ? path_join(root, rel) : xstrdup(root);
    DIR *d = opendir(dir);
    CU_ASSERT_PTR_NOT_NULL_FATAL(d);
    struct dirent *de;
    while ((de = readdir(d))) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
            continue;
        char *r = *rel ? xasprintf("%s/%s", rel, de->d_name) : xstrdup(de->d_name);
        char *full = path_join(dir, de->d_name);
        struct stat st;
        CU_ASSERT_EQUAL_FATAL(lstat(full, &st), 0);
        int is_dir = S_ISDIR(st.st_mode);
        if (!ignore_is_excluded(ig, r, is_dir)) {
            if (is_dir)
                walk(ig, root, r, out);
            else
                list_add(out, r);
        }
        free(full);
        free(r);
    }
    closedir(d);
    free(dir);
    ignore_leave(ig);
}

static list ours(const char *root)
{
    list l = {0};
    ignore *ig;
    ctarget_error err;
    ctarget_error_init(&err);
    CU_ASSERT_EQUAL_FATAL(ignore_open(root, &ig, &err), CTARGET_OK);
    walk(ig, root, "", &l);
    ignore_free(ig);
    qsort(l.v, l.n, sizeof *l.v, cmp_str);
    return l;
}

static const char *git_env[] = {"GIT_CONFIG_NOSYSTEM=1", "GIT_CONFIG_GLOBAL=/dev/null",
                                "LC_ALL=C", NULL};

static list gits(const char *root)
{
    list l = {0};
    const char *init[] = {"git", "-C", root, "init", "-q", NULL};
    tl_result r = tl_exec(init, NULL, git_env);
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    const char *ls[] = {"git", "-C", root, "-c", "core.excludesFile=/dev/null", "ls-files",
                        "--others", "--exclude-standard", "-z", NULL};
    r = tl_exec(ls, NULL, git_env);
    TL_ASSERT_EXIT(r, 0);
    /* -z output: NUL-separated; tl_exec keeps the bytes, find the length from stdout */
    for (const char *p = r.out; *p; p += strlen(p) + 1)
        list_add(&l, p);
    tl_result_free(&r);
    qsort(l.v, l.n, sizeof *l.v, cmp_str);
    return l;
}

static int same(const list *a, const list *b)
{
    if (a->n != b->n)
        return 0;
    for (size_t i = 0; i < a->n; i++)
        if (strcmp(a->v[i], b->v[i]))
            return 0;
    return 1;
}

static void show_diff(const char *name, const list *g, const list *o)
{
    fprintf(stderr, "case %s: git and ctarget disagree\n", name);
    for (size_t i = 0; i < g->n; i++) {
        int found = 0;
        for (size_t j = 0; j < o->n && !found; j++)
            found = !strcmp(g->v[i], o->v[j]);
        if (!found)
            fprintf(stderr, "  only git lists:     '%s'\n", g->v[i]);
    }
    for (size_t j = 0; j < o->n; j++) {
        int found = 0;
        for (size_t i = 0; i < g->n && !found; i++)
            found = !strcmp(g->v[i], o->v[j]);
        if (!found)
            fprintf(stderr, "  only ctarget lists: '%s'\n", o->v[j]);
    }
}

static void t_matches_git_ls_files_for_every_case(void)
{
    size_t disagreements = 0;
    for (size_t c = 0; c < CT_ARRAY_LEN(cases); c++) {
        char *root = tl_tmpdir("ignore");
        make_tree(root);
        if (*cases[c].root)
            put(root, "", ".gitignore", cases[c].root);
        for (size_t k = 0; k + 1 < CT_ARRAY_LEN(cases[c].nested) && cases[c].nested[k]; k += 2)
            put(root, cases[c].nested[k], ".gitignore", cases[c].nested[k + 1]);
        list g = gits(root), o = ours(root);
        /* git must have excluded something or listed everything: the case is meaningful
         * only when the tree is non-trivial */
        CU_ASSERT(g.n > 0 || o.n > 0 || *cases[c].root);
        if (!same(&g, &o)) {
            show_diff(cases[c].name, &g, &o);
            disagreements++;
        }
        list_free(&g);
        list_free(&o);
        free(root);
    }
    CU_ASSERT_EQUAL(disagreements, 0);
    fprintf(stderr, "compared %zu ignore cases with git\n", CT_ARRAY_LEN(cases));
}

/* The comparison must be able to fail: a tree where ignore rules do exclude files. */
static void t_cases_exclude_something(void)
{
    char *root = tl_tmpdir("ignore");
    make_tree(root);
    list all = ours(root);
    put(root, "", ".gitignore", "*.log\nbuild/\n");
    list some = ours(root);
    CU_ASSERT(some.n + 5 <= all.n + 1); /* 4 logs + 3 build files gone, .gitignore added */
    for (size_t i = 0; i < some.n; i++) {
        CU_ASSERT(!str_endswith(some.v[i], ".log"));
        CU_ASSERT(!str_startswith(some.v[i], "build/"));
    }
    list_free(&all);
    list_free(&some);
    free(root);
}

static void t_dot_git_always_excluded(void)
{
    char *root = tl_tmpdir("ignore");
    put(root, ".git", "config", "x");
    put(root, "sub/.git", "HEAD", "x");
    put(root, "", "keep.txt", "x");
    put(root, "", ".gitignore", "!.git\n");
    list l = ours(root);
    CU_ASSERT_EQUAL(l.n, 2); /* keep.txt and .gitignore */
    for (size_t i = 0; i < l.n; i++)
        CU_ASSERT_PTR_NULL(strstr(l.v[i], ".git/"));
    list_free(&l);
    free(root);
}

static void t_amlignore_wins_over_gitignore(void)
{
    char *root = tl_tmpdir("ignore");
    put(root, "", "a.py", "x");
    put(root, "", "a.md", "x");
    put(root, "sub", "b.py", "x");
    put(root, "sub", "b.md", "x");
    put(root, "sub", "b.txt", "x");
    put(root, "", ".amlignore", "*.py\n");
    put(root, "", ".gitignore", "*.md\n");
    put(root, "sub", ".amlignore", "*.txt\n");
    put(root, "sub", ".gitignore", "*.md\n");
    ignore *ig;
    ctarget_error err;
    ctarget_error_init(&err);
    CU_ASSERT_EQUAL_FATAL(ignore_open(root, &ig, &err), CTARGET_OK);
    CU_ASSERT_STRING_EQUAL(ignore_file_name(ig), ".amlignore");
    ignore_free(ig);
    list l = ours(root);
    const char *want[] = {".amlignore", ".gitignore", "a.md", "sub/.amlignore",
                          "sub/.gitignore", "sub/b.md"};
    CU_ASSERT_EQUAL_FATAL(l.n, CT_ARRAY_LEN(want));
    for (size_t i = 0; i < l.n; i++)
        CU_ASSERT_STRING_EQUAL(l.v[i], want[i]);
    list_free(&l);
    free(root);
}

static void t_gitignore_used_without_amlignore(void)
{
    char *root = tl_tmpdir("ignore");
    put(root, "", ".gitignore", "*.md\n");
    ignore *ig;
    ctarget_error err;
    ctarget_error_init(&err);
    CU_ASSERT_EQUAL_FATAL(ignore_open(root, &ig, &err), CTARGET_OK);
    CU_ASSERT_STRING_EQUAL(ignore_file_name(ig), ".gitignore");
    CU_ASSERT_EQUAL(ignore_enter(ig, "", &err), CTARGET_OK);
    CU_ASSERT(ignore_is_excluded(ig, "x.md", 0));
    CU_ASSERT(!ignore_is_excluded(ig, "x.py", 0));
    ignore_leave(ig);
    ignore_free(ig);
    free(root);
}

static void t_unreadable_ignore_file_is_an_error(void)
{
    if (geteuid() == 0) {
        /* root reads anything: use a directory in the file's place instead */
        char *root = tl_tmpdir("ignore");
        char *p = path_join(root, ".gitignore");
        mkdir(p, 0755);
        ignore *ig;
        ctarget_error err;
        ctarget_error_init(&err);
        CU_ASSERT_EQUAL_FATAL(ignore_open(root, &ig, &err), CTARGET_OK);
        CU_ASSERT_EQUAL(ignore_enter(ig, "", &err), CTARGET_E_IO);
        CU_ASSERT_PTR_NOT_NULL(strstr(err.message, ".gitignore"));
        ignore_leave(ig);
        ignore_free(ig);
        free(p);
        free(root);
        return;
    }
    char *root = tl_tmpdir("ignore");
    put(root, "", ".gitignore", "*.md\n");
    char *p = path_join(root, ".gitignore");
    chmod(p, 0);
    ignore *ig;
    ctarget_error err;
    ctarget_error_init(&err);
    CU_ASSERT_EQUAL_FATAL(ignore_open(root, &ig, &err), CTARGET_OK);
    CU_ASSERT_EQUAL(ignore_enter(ig, "", &err), CTARGET_E_IO);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.message, ".gitignore"));
    ignore_leave(ig);
    ignore_free(ig);
    chmod(p, 0644);
    free(p);
    free(root);
}

static void add(CU_pSuite s)
{
    TL_ADD(s, t_matches_git_ls_files_for_every_case);
    TL_ADD(s, t_cases_exclude_something);
    TL_ADD(s, t_dot_git_always_excluded);
    TL_ADD(s, t_amlignore_wins_over_gitignore);
    TL_ADD(s, t_gitignore_used_without_amlignore);
    TL_ADD(s, t_unreadable_ignore_file_is_an_error);
}

int main(int argc, char **argv)
{
    return tl_main(argc, argv, "ignore", add);
}
