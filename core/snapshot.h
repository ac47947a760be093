/* Snapshots: content-addressed, ignore-aware, incremental source trees.
 *
 * MANIFEST AND ID
 *  A snapshot is its manifest: one entry per file, directory and symlink under the source
 *  directory that the ignore rules keep (the root itself is not an entry), sorted by path in
 *  byte order (strcmp), each entry one JSON object on its own line exactly as in plugin.h:
 *      {"path": "src/a.py", "type": "file", "mode": 420, "size": 12, "sha256": "<hex>"}
 *      {"path": "src", "type": "dir", "mode": 493}
 *      {"path": "link", "type": "symlink", "target": "src/a.py"}
 *  Keys appear in that order, separated by ", " with ": " after each key; strings escape only
 *  '"', '\\' and control characters (\b \f \n \r \t, else \u00XX); every line ends in "\n".
 *  The snapshot id is the lowercase hex SHA-256 of the concatenated entry lines, i.e. of
 *  manifest.jsonl without its first (header) line.  The entry lines are a pure function of
 *  the kept paths, their types, permission bits (mode & 0777), sizes, contents and link
 *  targets, so the same tree gets the same id whatever its mtimes, inode numbers, owners or
 *  the order readdir returns names in.
 *
 *  The entry lines are stored in the blob store as the blob named by the id itself, so a
 *  workspace's blob root alone is enough to rebuild a snapshot (host services, export).
 *
 * STAT CACHE
 *  Per source directory (its realpath), the size, mtime_ns, ctime_ns, inode and device of
 *  every file hashed, with its sha256, are kept in one file, <ws>/statcache/<hash>, mapped
 *  and read in one go like git's index (snap_db.c has the layout; a file from an earlier
 *  boot is not used).  A file whose lstat matches is not read again (its blob must
 *  still exist).  As in git's index, an entry is "racily clean" when its mtime is not safely
 *  older than the snapshot's start: a later write within the same timestamp tick would leave
 *  its stat unchanged.  Such entries (mtime >= start - 1 s, which also covers
 *  coarse-timestamp file systems) are not cached, so they are hashed again next time.
 *
 *  That cached blobs still exist is not checked one by one.  The record also keeps a stamp
 *  (mtime, ctime, inode) of each of the blob store's 256 fan-out directories: removing a
 *  blob (gc, or by hand) changes its directory's stamp, so only the cached blobs of
 *  directories whose stamp changed are looked at (size included).  After a reboot, when a
 *  crash may have cut a young blob short (blobs are not fsync'ed), the cache is not used
 *  at all: every file is read again once.  Stamps younger than the racy margin, or that
 *  changed while the snapshot ran, are stored as "not trusted" and checked next time.
 *
 * CONCURRENCY
 *  Blobs are written under a shared lock that `snapshot gc` takes exclusively; the snapshot
 *  row and its source's "last snapshot" pointer are written in one short BEGIN IMMEDIATE
 *  transaction at the end, then the stat cache file is replaced (rename) when it changed. */
#ifndef CTARGET_CORE_SNAPSHOT_H
#define CTARGET_CORE_SNAPSHOT_H

#include <stdint.h>
#include <sys/stat.h>

#include <jansson.h>

#include <ctarget/ctarget.h>

#include "store.h"
#include "util.h"

#define SNAP_DEFAULT_MAX_BYTES (UINT64_C(300) * 1024 * 1024)
#define SNAP_DEFAULT_MAX_FILES UINT64_C(2000)

typedef enum snap_type { SNAP_FILE = 0, SNAP_DIR = 1, SNAP_LINK = 2 } snap_type;

typedef struct snap_entry {
    char *path;           /* relative, '/'-separated */
    snap_type type;
    unsigned mode;        /* mode & 0777 (files and dirs) */
    uint64_t size;        /* files */
    char sha[65];         /* files: hex sha256 ("" until hashed) */
    char *target;         /* symlinks */
    /* what the stat cache keys on (files) */
    int64_t mtime_ns, ctime_ns;
    uint64_t ino, dev;
    int hashed;           /* content was read by this snapshot */
    int cacheable;        /* not racily clean */
} snap_entry;

typedef struct snap_tree {
    snap_entry *v;
    size_t n, cap;
    uint64_t files;       /* regular files + symlinks: what the file limit counts */
    uint64_t bytes;       /* sum of regular file sizes */
} snap_tree;

void snap_tree_free(snap_tree *t);
snap_entry *snap_tree_add(snap_tree *t, const char *path, snap_type type);
/* The same, taking ownership of path (malloc'ed). */
snap_entry *snap_tree_add_owned(snap_tree *t, char *path, snap_type type);
void snap_tree_sort(snap_tree *t);
/* Entry with this path, or NULL (tree sorted). */
const snap_entry *snap_tree_find(const snap_tree *t, const char *path);
const char *snap_type_name(snap_type type);

/* ---- manifest (snap_manifest.c) ---------------------------------------------------------- */
/* The entry lines (see above) into sb; id = sha256 of them. */
void snap_manifest_lines(const snap_tree *t, struct strbuf *sb);
/* The header line of manifest.jsonl for id and n entries (owned). */
char *snap_manifest_header(const char *id, size_t n);
/* Parse entry lines into t (sorted, validated: safe relative paths, known types). */
ctarget_status snap_manifest_parse(const char *text, size_t len, snap_tree *t,
                                   ctarget_error *err);
/* The entry lines of snapshot id from the blob store (owned, NUL-terminated), verified
 * against the id. */
ctarget_status snap_manifest_read(const char *blob_root, const char *id, char **text,
                                  size_t *len, ctarget_error *err);
/* Distinct content blobs of a tree, sorted by sha256: entries into *out (owned array of
 * borrowed pointers); returns the count. */
size_t snap_tree_blobs(const snap_tree *t, const snap_entry ***out);
/* Read the manifest of snapshot id from the blob store. */
ctarget_status snap_manifest_load(const char *blob_root, const char *id, snap_tree *t,
                                  ctarget_error *err);

/* ---- walking the source tree (snap_walk.c) ----------------------------------------------- */
typedef struct snap_limits {
    uint64_t max_bytes, max_files;
} snap_limits;

/* Walk root honouring the ignore rules; fails with CTARGET_E_LIMIT before anything is read
 * when the limits are exceeded.  skip_dir (the workspace, or NULL) is left out wherever it
 * appears in the tree.  t comes back sorted.  cache_dir (the workspace, or NULL): where the
 * listing cache of root is read and written (snap_dirs.c). */
ctarget_status snap_walk(const char *root, const snap_limits *lim, const char *skip_dir,
                         const char *cache_dir, snap_tree *t, ctarget_error *err);

/* ---- the listing cache (snap_dirs.c) ----------------------------------------------------- */
typedef struct snap_dirs snap_dirs;
typedef struct snap_dir_names {
    const unsigned char *names;   /* n times: d_type byte, name, NUL; sorted */
    size_t len, n;
} snap_dir_names;
typedef struct snap_dirs_out {
    struct strbuf records;
    size_t n;                     /* records kept (not racily clean) */
    size_t listed;                /* directories read with readdir this time */
    size_t reused;                /* directories whose recorded listing was used */
    int64_t walk_start_ns;        /* wall clock before the first directory was looked at */
} snap_dirs_out;
/* The listing cache of source in ws_dir, or NULL when there is none usable. */
snap_dirs *snap_dirs_load(const char *ws_dir, const char *source);
void snap_dirs_free(snap_dirs *d);
/* 1 and the recorded names when rel ("" for the source) was recorded with exactly st's
 * mtime, ctime, inode and device. */
int snap_dirs_get(const snap_dirs *d, const char *rel, const struct stat *st,
                  snap_dir_names *out);
void snap_dirs_out_init(snap_dirs_out *o, int64_t walk_start_ns);
void snap_dirs_out_free(snap_dirs_out *o);
/* The listing of rel as found now (reused: it came from the cache). */
void snap_dirs_out_add(snap_dirs_out *o, const char *rel, const struct stat *st, int reused,
                       const snap_dir_names *names);
/* Write the listings gathered, unless every one came from the cache. */
void snap_dirs_write(const char *ws_dir, const char *source, const snap_dirs_out *o);
/* <ws_dir>/statcache/<hash of source><suffix>: the stat cache (suffix ""), the listing
 * cache (".dirs"). */
char *snap_cache_path(const char *ws_dir, const char *source, const char *suffix);
/* Replace path (a file of <ws_dir>/statcache) with data: a temporary renamed into place,
 * never fsync'ed (caches are per boot); failures only logged, as `what` not kept. */
void snap_cache_write(const char *ws_dir, const char *path, const void *data, size_t len,
                      const char *what);
/* This boot's id (40 bytes, NUL-padded; "" when unknown). */
void snap_boot_id(char out[40]);
/* Limits from opts (nonzero wins), else the environment, else the defaults. */
ctarget_status snap_limits_resolve(uint64_t opt_bytes, uint64_t opt_files, snap_limits *lim,
                                   ctarget_error *err);
/* "300M", "1G", "4096": bytes with an optional K/M/G (binary) suffix; -1 when malformed. */
int snap_parse_size(const char *s, uint64_t *out);

/* ---- hashing into the blob store (snap_hash.c) ------------------------------------------- */
typedef struct snap_hash_stats {
    uint64_t hashed_files, hashed_bytes, new_blobs, new_bytes;
} snap_hash_stats;

/* Hash every file entry with an empty sha (reading root/path), storing contents as blobs;
 * all cores, big files streamed. */
ctarget_status snap_hash_files(const char *root, const char *blob_root, snap_tree *t,
                               snap_hash_stats *stats, ctarget_error *err);

/* ---- the store (snap_db.c) --------------------------------------------------------------- */
/* Files (and blob store directories) modified this close to a snapshot are not trusted to be
 * unchanged when their stat is (racily clean). */
#define SNAP_RACY_MARGIN_NS 1000000000LL
#define SNAP_FANOUT 256

typedef struct snap_stamp {
    int64_t mtime_ns, ctime_ns;
    uint64_t ino;
} snap_stamp;

#define SNAP_CACHE_HEADER (160 + SNAP_FANOUT * 24 + 8)

/* What applying the cache saw, for recording it afterwards. */
typedef struct snap_cache_state {
    char boot[40];                      /* this boot's id ("" when unknown) */
    snap_stamp seen[SNAP_FANOUT];       /* the blob store's fan-out directories then */
    size_t stored;                      /* entries stored (SIZE_MAX: no usable record) */
    unsigned char stored_header[SNAP_CACHE_HEADER];
    size_t verified;                    /* cached blobs whose existence was checked */
    int all_trusted;                    /* every fan-out stamp as recorded: none checked */
    strbuf shape, stored_shape;         /* the tree's directories and symlinks, now and then */
    /* Set when every file matched the cache, no other file was cached and the directories
     * and symlinks are those recorded with it: the manifest is then the one of snapshot
     * same_id (same_manifest_bytes long), and need not be built again. */
    char same_id[65];
    uint64_t same_manifest_bytes;
} snap_cache_state;

/* Fill sha of entries whose stat matches the cache (and whose blob exists); cs is
 * initialised here and released with snap_cache_state_free. */
void snap_cache_state_free(snap_cache_state *cs);
ctarget_status snap_db_apply_cache(store *st, const char *source, const char *blob_root,
                                   snap_tree *t, snap_cache_state *cs, ctarget_error *err);
typedef struct snap_record {
    const char *id, *source_dir;
    int64_t created_at;
    uint64_t files, bytes, new_bytes;
    const char *git_json;      /* or NULL */
    uint64_t manifest_bytes;
    int wrote_blobs;           /* this snapshot stored blobs (its files' or its manifest) */
} snap_record;
/* Record the snapshot (kept as first recorded when the id exists), the source's latest
 * snapshot and its stat cache (cs from snap_db_apply_cache; now_ns: wall clock), in one
 * transaction.  *parent: owned, NULL for none. */
ctarget_status snap_db_record(store *st, const snap_record *r, const snap_tree *t,
                              const snap_cache_state *cs, const char *blob_root, int64_t now_ns,
                              char **parent, ctarget_error *err);
/* One snapshot row as JSON (NULL when absent); resolve a unique id prefix into *id. */
ctarget_status snap_db_resolve(store *st, const char *prefix, char **id, ctarget_error *err);
json_t *snap_db_row(store *st, const char *id);
/* All rows, oldest first. */
json_t *snap_db_list(store *st, ctarget_error *err);

/* ---- git (snap_git.c) -------------------------------------------------------------------- */
/* {"repository", "branch", "commit", "dirty"} or NULL when dir is not in a git checkout or
 * git is not installed. */
json_t *snap_git_info(const char *dir);
/* https://user:token@host/x -> https://host/x (owned copy). */
char *snap_git_strip_credentials(const char *url);

/* ---- materializing and shipping (snapshot_host.c) ---------------------------------------- */
ctarget_status snap_materialize(const char *blob_root, const char *id, const char *dest,
                                ctarget_error *err);
ctarget_status snap_write_tar(const char *blob_root, const char *id,
                              int (*want)(void *arg, const char *sha256), void *want_arg,
                              unsigned flags, ctarget_write_fn out, void *out_arg,
                              ctarget_error *err);

#endif
