/* SSH connections for the remotevm target (libssh2).
 *
 * Host keys: the server's key is checked against ~/.ssh/known_hosts (read only) and the
 * workspace's known_hosts (host->known_hosts_path0, which --accept-new-host-key appends to).
 * A key that differs from a recorded one is refused whatever the user asked; an unknown key is
 * refused with its fingerprint unless the operation accepts new keys.  Authentication runs only
 * after the host key is trusted, so no secret is ever sent to an unverified server.
 *
 * Channels run in non-blocking mode: writing standard input and draining standard output and
 * standard error are interleaved, so neither side can block the other on a full window. */
#include "config.h"

#include "remotevm.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <libssh2.h>

struct rv_conn {
    int fd;
    LIBSSH2_SESSION *s;
    char where[512];   /* user@host:port */
    char hostport[300]; /* host:port */
    long io_timeout_ms;
    uint64_t bytes_out;
    int dead;
    rv_exec *serve;    /* the agent's `serve` channel, once opened */
    rv_buf serve_buf;  /* its output not yet consumed */
};

struct rv_exec {
    rv_conn *cn;
    ctarget_call *call;
    const ctarget_host *h;
    LIBSSH2_CHANNEL *ch;
    ctarget_write_fn out;
    void *out_arg;
    int out_stopped;
    char errtail[2048];
    size_t errlen;
    int eof_out, eof_err;
    int framed; /* each write goes out as "<hex length>\n<bytes>" */
};

static const ctarget_host *H;

/* ---- shell quoting (rv_buf itself is in proto.c) ---------------------------------------- */

char *rv_shell_quote(const char *s)
{
    rv_buf b = {0};
    if (!strncmp(s, "~/", 2)) {
        rv_buf_adds(&b, "\"$HOME\"/");
        s += 2;
    } else if (!strcmp(s, "~")) {
        rv_buf_adds(&b, "\"$HOME\"");
        return b.data;
    }
    rv_buf_add(&b, "'", 1);
    for (; *s; s++) {
        if (*s == '\'')
            rv_buf_adds(&b, "'\\''");
        else
            rv_buf_add(&b, s, 1);
    }
    rv_buf_add(&b, "'", 1);
    return b.data;
}

/* ---- connect -------------------------------------------------------------------------- */

static ctarget_status tcp_connect(const char *host, int port, long timeout_ms, int *fd_out,
                                  ctarget_error *err)
{
    char ports[16];
    snprintf(ports, sizeof ports, "%d", port);
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_family = AF_UNSPEC;
    int gai = getaddrinfo(host, ports, &hints, &res);
    if (gai) {
        H->error_set(err, CTARGET_E_UNREACHABLE, gai == EAI_AGAIN, 0,
                     "cannot resolve host '%s': %s (check the address setting)", host,
                     gai_strerror(gai));
        return CTARGET_E_UNREACHABLE;
    }
    int last_errno = 0, timed_out = 0;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK,
                        ai->ai_protocol);
        if (fd < 0) {
            last_errno = errno;
            continue;
        }
        int rc = connect(fd, ai->ai_addr, ai->ai_addrlen);
        if (rc != 0 && errno == EINPROGRESS) {
            struct pollfd p = {.fd = fd, .events = POLLOUT};
            int n;
            do
                n = poll(&p, 1, (int)timeout_ms);
            while (n < 0 && errno == EINTR);
            if (n == 0) {
                timed_out = 1;
                last_errno = ETIMEDOUT;
                close(fd);
                continue;
            }
            int soerr = 0;
            socklen_t sl = sizeof soerr;
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl);
            rc = soerr ? -1 : 0;
            errno = soerr;
        }
        if (rc != 0) {
            last_errno = errno;
            close(fd);
            continue;
        }
        int fl = fcntl(fd, F_GETFL);
        fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
        freeaddrinfo(res);
        *fd_out = fd;
        return CTARGET_OK;
    }
    freeaddrinfo(res);
    if (timed_out && last_errno == ETIMEDOUT)
        H->error_set(err, CTARGET_E_UNREACHABLE, 1, ETIMEDOUT,
                     "no answer from %s port %d within %ld s (is the address right? a "
                     "firewall?)", host, port, timeout_ms / 1000);
    else if (last_errno == ECONNREFUSED)
        H->error_set(err, CTARGET_E_UNREACHABLE, 1, last_errno,
                     "%s refused the connection on port %d (is sshd running there? is "
                     "ssh_port right?)", host, port);
    else
        H->error_set(err, CTARGET_E_UNREACHABLE, 1, last_errno, "cannot connect to %s port %d: %s",
                     host, port, strerror(last_errno));
    return CTARGET_E_UNREACHABLE;
}

static const char *ssh_msg(LIBSSH2_SESSION *s)
{
    char *m = NULL;
    libssh2_session_last_error(s, &m, NULL, 0);
    return m && *m ? m : "unknown error";
}

/* ---- host keys ------------------------------------------------------------------------- */

static int knownhost_keytype(int hostkey_type)
{
    switch (hostkey_type) {
    case LIBSSH2_HOSTKEY_TYPE_RSA: return LIBSSH2_KNOWNHOST_KEY_SSHRSA;
    case LIBSSH2_HOSTKEY_TYPE_DSS: return LIBSSH2_KNOWNHOST_KEY_SSHDSS;
#ifdef LIBSSH2_HOSTKEY_TYPE_ECDSA_256
    case LIBSSH2_HOSTKEY_TYPE_ECDSA_256: return LIBSSH2_KNOWNHOST_KEY_ECDSA_256;
    case LIBSSH2_HOSTKEY_TYPE_ECDSA_384: return LIBSSH2_KNOWNHOST_KEY_ECDSA_384;
    case LIBSSH2_HOSTKEY_TYPE_ECDSA_521: return LIBSSH2_KNOWNHOST_KEY_ECDSA_521;
#endif
#ifdef LIBSSH2_HOSTKEY_TYPE_ED25519
    case LIBSSH2_HOSTKEY_TYPE_ED25519: return LIBSSH2_KNOWNHOST_KEY_ED25519;
#endif
    default: return LIBSSH2_KNOWNHOST_KEY_UNKNOWN;
    }
}

static const char *hostkey_name(int type)
{
    switch (type) {
    case LIBSSH2_HOSTKEY_TYPE_RSA: return "RSA";
    case LIBSSH2_HOSTKEY_TYPE_DSS: return "DSA";
    case LIBSSH2_HOSTKEY_TYPE_ECDSA_256:
    case LIBSSH2_HOSTKEY_TYPE_ECDSA_384:
    case LIBSSH2_HOSTKEY_TYPE_ECDSA_521: return "ECDSA";
    case LIBSSH2_HOSTKEY_TYPE_ED25519: return "ED25519";
    default: return "unknown";
    }
}

static void b64(const unsigned char *in, size_t n, char *out)
{
    static const char T[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        unsigned v = in[i] << 16 | (i + 1 < n ? in[i + 1] << 8 : 0) | (i + 2 < n ? in[i + 2] : 0);
        out[o++] = T[v >> 18 & 63];
        out[o++] = T[v >> 12 & 63];
        if (i + 1 < n)
            out[o++] = T[v >> 6 & 63];
        if (i + 2 < n)
            out[o++] = T[v & 63];
    }
    out[o] = '\0'; /* no padding, like OpenSSH's SHA256: fingerprints */
}

/* 0: no entry, 1: match, -1: a different key is recorded (line filled) */
static int check_file(LIBSSH2_SESSION *s, const char *file, const char *host, int port,
                      const char *key, size_t keylen, int typemask)
{
    LIBSSH2_KNOWNHOSTS *kh = libssh2_knownhost_init(s);
    if (!kh)
        return 0;
    int r = 0;
    if (access(file, R_OK) == 0 &&
        libssh2_knownhost_readfile(kh, file, LIBSSH2_KNOWNHOST_FILE_OPENSSH) >= 0) {
        struct libssh2_knownhost *found = NULL;
        int c = libssh2_knownhost_checkp(kh, host, port, key, keylen,
                                         LIBSSH2_KNOWNHOST_TYPE_PLAIN |
                                             LIBSSH2_KNOWNHOST_KEYENC_RAW | typemask,
                                         &found);
        r = c == LIBSSH2_KNOWNHOST_CHECK_MATCH ? 1 : c == LIBSSH2_KNOWNHOST_CHECK_MISMATCH ? -1 : 0;
    }
    libssh2_knownhost_free(kh);
    return r;
}

static ctarget_status add_known(LIBSSH2_SESSION *s, const char *file, const char *host, int port,
                                const char *key, size_t keylen, int typemask,
                                ctarget_error *err)
{
    LIBSSH2_KNOWNHOSTS *kh = libssh2_knownhost_init(s);
    char name[300], line[8192];
    if (port == 22)
        snprintf(name, sizeof name, "%s", host);
    else
        snprintf(name, sizeof name, "[%s]:%d", host, port);
    struct libssh2_knownhost *entry = NULL;
    size_t outlen = 0;
    int ok = kh && libssh2_knownhost_addc(kh, name, NULL, key, keylen, NULL, 0,
                                          LIBSSH2_KNOWNHOST_TYPE_PLAIN |
                                              LIBSSH2_KNOWNHOST_KEYENC_RAW | typemask,
                                          &entry) == 0 &&
             libssh2_knownhost_writeline(kh, entry, line, sizeof line, &outlen,
                                         LIBSSH2_KNOWNHOST_FILE_OPENSSH) == 0;
    if (kh)
        libssh2_knownhost_free(kh);
    if (!ok) {
        H->error_set(err, CTARGET_E_INTERNAL, 0, 0, "cannot format a known_hosts line for %s",
                     name);
        return CTARGET_E_INTERNAL;
    }
    int fd = open(file, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (fd < 0 || write(fd, line, outlen) != (ssize_t)outlen || fsync(fd) != 0) {
        int e = errno;
        if (fd >= 0)
            close(fd);
        H->error_set(err, CTARGET_E_IO, 0, e, "cannot write %s: %s", file, strerror(e));
        return CTARGET_E_IO;
    }
    close(fd);
    return CTARGET_OK;
}

static ctarget_status check_host_key(rv_conn *cn, ctarget_call *c, const char *host, int port,
                                     ctarget_error *err)
{
    size_t keylen = 0;
    int type = 0;
    const char *key = libssh2_session_hostkey(cn->s, &keylen, &type);
    if (!key) {
        H->error_set(err, CTARGET_E_HOSTKEY, 0, 0, "%s sent no host key", cn->hostport);
        return CTARGET_E_HOSTKEY;
    }
    char fp[80] = "SHA256:";
    const char *hash = libssh2_hostkey_hash(cn->s, LIBSSH2_HOSTKEY_HASH_SHA256);
    if (hash)
        b64((const unsigned char *)hash, 32, fp + 7);
    int typemask = knownhost_keytype(type);
    char user_file[4096] = "";
    const char *home = getenv("HOME");
    if (home && *home)
        snprintf(user_file, sizeof user_file, "%s/.ssh/known_hosts", home);
    const char *ws_file = H->known_hosts_path0 ? H->known_hosts_path0() : NULL;
    int u = *user_file ? check_file(cn->s, user_file, host, port, key, keylen, typemask) : 0;
    int w = ws_file ? check_file(cn->s, ws_file, host, port, key, keylen, typemask) : 0;
    if (u < 0 || w < 0) {
        H->error_set(err, CTARGET_E_HOSTKEY, 0, 0,
                     "the host key of %s has CHANGED: it now sends %s key %s, which differs "
                     "from the one recorded in %s. Someone may be intercepting the "
                     "connection, or the machine was reinstalled; not connecting. If the "
                     "change is expected, remove the old line from that file (ssh-keygen -R "
                     "'[%s]:%d' -f FILE) and attach again with --accept-new-host-key",
                     cn->hostport, hostkey_name(type), fp, u < 0 ? user_file : ws_file, host,
                     port);
        return CTARGET_E_HOSTKEY;
    }
    if (u > 0 || w > 0)
        return CTARGET_OK;
    if (!H->accept_new_host_key || !H->accept_new_host_key(c)) {
        H->error_set(err, CTARGET_E_HOSTKEY, 0, 0,
                     "the host key of %s is not known: %s key %s. Check that fingerprint "
                     "with the machine's administrator (ssh-keygen -lf "
                     "/etc/ssh/ssh_host_*_key.pub on it), then attach again with "
                     "--accept-new-host-key to trust it", cn->hostport, hostkey_name(type), fp);
        return CTARGET_E_HOSTKEY;
    }
    if (!ws_file) {
        H->error_set(err, CTARGET_E_INTERNAL, 0, 0, "the workspace has no known_hosts file");
        return CTARGET_E_INTERNAL;
    }
    ctarget_status rc = add_known(cn->s, ws_file, host, port, key, keylen, typemask, err);
    if (rc == CTARGET_OK)
        H->log(c, CTARGET_LOG_WARN, "trusting %s's %s host key %s (added to %s)", cn->hostport,
               hostkey_name(type), fp, ws_file);
    return rc;
}

/* ---- authentication --------------------------------------------------------------------- */

static int b64val(int ch)
{
    if (ch >= 'A' && ch <= 'Z')
        return ch - 'A';
    if (ch >= 'a' && ch <= 'z')
        return ch - 'a' + 26;
    if (ch >= '0' && ch <= '9')
        return ch - '0' + 52;
    if (ch == '+')
        return 62;
    if (ch == '/')
        return 63;
    return -1;
}

/* What kind of key a private key file holds, read without libssh2 (for messages):
 * *rsa: an RSA key; *encrypted: protected by a passphrase. */
static void key_info(const char *path, int *rsa, int *encrypted)
{
    *rsa = *encrypted = 0;
    FILE *f = fopen(path, "re");
    if (!f)
        return;
    char line[256];
    unsigned char dec[512];
    size_t nd = 0;
    int openssh = 0, bits = 0;
    unsigned acc = 0;
    while (fgets(line, sizeof line, f)) {
        if (strstr(line, "BEGIN RSA PRIVATE KEY"))
            *rsa = 1;
        if (strstr(line, "ENCRYPTED"))
            *encrypted = 1;
        if (strstr(line, "BEGIN OPENSSH PRIVATE KEY")) {
            openssh = 1;
            continue;
        }
        if (!openssh || strstr(line, "END "))
            continue;
        for (char *p = line; *p && nd < sizeof dec; p++) {
            int v = b64val((unsigned char)*p);
            if (v < 0)
                continue;
            acc = (acc << 6 | (unsigned)v) & 0xffffffu;
            bits += 6;
            if (bits >= 8) {
                bits -= 8;
                dec[nd++] = (unsigned char)(acc >> bits);
            }
        }
    }
    fclose(f);
    /* "openssh-key-v1\0" string ciphername string kdfname string kdfoptions uint32 n
     * string publickey (which starts with string keytype) */
    size_t p = 15;
    if (!openssh || nd < p + 4 || memcmp(dec, "openssh-key-v1", 14))
        return;
    uint32_t l = (uint32_t)dec[p] << 24 | dec[p + 1] << 16 | dec[p + 2] << 8 | dec[p + 3];
    if (p + 4 + l <= nd && !(l == 4 && !memcmp(dec + p + 4, "none", 4)))
        *encrypted = 1;
    for (size_t i = 0; i + 7 <= nd; i++)
        if (!memcmp(dec + i, "ssh-rsa", 7)) {
            *rsa = 1;
            break;
        }
}

static char *kbd_password; /* for the keyboard-interactive callback (serialised by auth) */

static void kbd_cb(const char *name, int name_len, const char *instr, int instr_len,
                   int num_prompts, const LIBSSH2_USERAUTH_KBDINT_PROMPT *prompts,
                   LIBSSH2_USERAUTH_KBDINT_RESPONSE *responses, void **abstract)
{
    (void)name, (void)name_len, (void)instr, (void)instr_len, (void)prompts, (void)abstract;
    for (int i = 0; i < num_prompts; i++) {
        responses[i].text = kbd_password ? strdup(kbd_password) : strdup("");
        responses[i].length = responses[i].text ? (unsigned)strlen(responses[i].text) : 0;
    }
}

static ctarget_status auth_agent(rv_conn *cn, const char *user, ctarget_error *err)
{
    const char *sock = getenv("SSH_AUTH_SOCK");
    if (!sock || !*sock) {
        H->error_set(err, CTARGET_E_AUTH, 0, 0,
                     "ssh_agent is set but SSH_AUTH_SOCK is not: start ssh-agent and ssh-add "
                     "your key, or set private_key_file instead");
        return CTARGET_E_AUTH;
    }
    LIBSSH2_AGENT *ag = libssh2_agent_init(cn->s);
    if (!ag || libssh2_agent_connect(ag) != 0) {
        if (ag)
            libssh2_agent_free(ag);
        H->error_set(err, CTARGET_E_AUTH, 0, 0, "cannot reach the ssh-agent at %s", sock);
        return CTARGET_E_AUTH;
    }
    ctarget_status rc = CTARGET_E_AUTH;
    int tried = 0;
    if (libssh2_agent_list_identities(ag) == 0) {
        struct libssh2_agent_publickey *id = NULL, *prev = NULL;
        while (libssh2_agent_get_identity(ag, &id, prev) == 0) {
            tried++;
            if (libssh2_agent_userauth(ag, user, id) == 0) {
                rc = CTARGET_OK;
                break;
            }
            prev = id;
        }
    }
    libssh2_agent_disconnect(ag);
    libssh2_agent_free(ag);
    if (rc != CTARGET_OK && tried)
        H->error_set(err, CTARGET_E_AUTH, 0, 0,
                     "%s refused all %d keys of the ssh-agent for user %s", cn->hostport,
                     tried, user);
    else if (rc != CTARGET_OK)
        H->error_set(err, CTARGET_E_AUTH, 0, 0,
                     "the ssh-agent holds no keys: ssh-add one (logging in to %s as %s)",
                     cn->hostport, user);
    return rc;
}

static ctarget_status authenticate(rv_conn *cn, ctarget_call *c, const ctarget_target *t,
                                   const char *user, ctarget_error *err)
{
    const char *keyfile = H->config_get0(t, "private_key_file");
    const char *agent = H->config_get0(t, "ssh_agent");
    char *methods = libssh2_userauth_list(cn->s, user, (unsigned)strlen(user));
    if (!methods && libssh2_userauth_authenticated(cn->s))
        return CTARGET_OK;
    if (agent && (!strcmp(agent, "true") || !strcmp(agent, "1") || !strcmp(agent, "yes") ||
                  !strcmp(agent, "on")))
        return auth_agent(cn, user, err);
    if (keyfile && *keyfile) {
        if (access(keyfile, R_OK) != 0) {
            int e = errno;
            H->error_set(err, CTARGET_E_AUTH, 0, e,
                         "cannot read private_key_file %s: %s", keyfile, strerror(e));
            return CTARGET_E_AUTH;
        }
        int rsa, encrypted;
        key_info(keyfile, &rsa, &encrypted);
        char *pass = NULL;
        ctarget_error se;
        memset(&se, 0, sizeof se);
        se.struct_size = sizeof se;
        const char *pp = H->config_get0(t, "private_key_passphrase");
        (void)pp;
        if (H->secret_get1(t, "private_key_passphrase", &pass, &se) != CTARGET_OK)
            pass = NULL;
        int r = libssh2_userauth_publickey_fromfile_ex(cn->s, user, (unsigned)strlen(user),
                                                       NULL, keyfile, pass ? pass : NULL);
        int had_pass = pass && *pass;
        if (pass)
            H->secret_free(pass);
        if (r == 0)
            return CTARGET_OK;
        if (r == LIBSSH2_ERROR_FILE) {
            if (encrypted && !had_pass)
                H->error_set(err, CTARGET_E_AUTH, 0, 0,
                             "private key %s is protected by a passphrase: give it with "
                             "--set private_key_passphrase=env:VAR (or file:PATH)", keyfile);
            else if (encrypted)
                H->error_set(err, CTARGET_E_AUTH, 0, 0,
                             "wrong passphrase for private key %s (private_key_passphrase)",
                             keyfile);
            else
                H->error_set(err, CTARGET_E_AUTH, 0, 0,
                             "cannot use private key %s: not an OpenSSH or PEM private key "
                             "libssh2 %s can read (%s)", keyfile, LIBSSH2_VERSION,
                             ssh_msg(cn->s));
            return CTARGET_E_AUTH;
        }
        if (rsa)
            H->error_set(err, CTARGET_E_AUTH, 0, 0,
                         "%s refused RSA key %s for user %s. If the key is in its "
                         "authorized_keys: libssh2 %s signs RSA keys with SHA-1 (ssh-rsa), "
                         "which OpenSSH 8.8 and later refuse by default; use an ed25519 or "
                         "ecdsa key, or allow ssh-rsa on the server (PubkeyAcceptedAlgorithms "
                         "+ssh-rsa)", cn->hostport, keyfile, user, LIBSSH2_VERSION);
        else
            H->error_set(err, CTARGET_E_AUTH, 0, 0,
                         "%s refused private key %s for user %s (is its public key in "
                         "~%s/.ssh/authorized_keys there?)", cn->hostport, keyfile, user, user);
        return CTARGET_E_AUTH;
    }
    char *pw = NULL;
    ctarget_status rc = H->secret_get1(t, "password", &pw, err);
    if (rc != CTARGET_OK)
        return rc;
    if (!pw) {
        H->error_set(err, CTARGET_E_CONFIG, 0, 0,
                     "no credentials: set password (--password-stdin), private_key_file or "
                     "ssh_agent=true");
        return CTARGET_E_CONFIG;
    }
    int r = -1;
    if (!methods || strstr(methods, "password"))
        r = libssh2_userauth_password_ex(cn->s, user, (unsigned)strlen(user), pw,
                                         (unsigned)strlen(pw), NULL);
    if (r != 0 && methods && strstr(methods, "keyboard-interactive")) {
        kbd_password = pw;
        r = libssh2_userauth_keyboard_interactive_ex(cn->s, user, (unsigned)strlen(user), kbd_cb);
        kbd_password = NULL;
    }
    H->secret_free(pw);
    (void)c;
    if (r == 0)
        return CTARGET_OK;
    if (methods && !strstr(methods, "password") && !strstr(methods, "keyboard-interactive"))
        H->error_set(err, CTARGET_E_AUTH, 0, 0,
                     "%s does not accept passwords (it offers: %s): use private_key_file",
                     cn->hostport, methods);
    else
        H->error_set(err, CTARGET_E_AUTH, 0, 0, "%s rejected the password for user %s",
                     cn->hostport, user);
    return CTARGET_E_AUTH;
}

/* ---- the connection ---------------------------------------------------------------------- */

static void conn_free(rv_conn *cn)
{
    if (!cn)
        return;
    if (cn->serve)
        rv_exec_abort(cn->serve);
    rv_buf_free(&cn->serve_buf);
    if (cn->s) {
        if (!cn->dead) {
            libssh2_session_set_blocking(cn->s, 1);
            libssh2_session_set_timeout(cn->s, 2000);
            libssh2_session_disconnect(cn->s, "bye");
        }
        libssh2_session_free(cn->s);
    }
    if (cn->fd >= 0)
        close(cn->fd);
    free(cn);
}

static void conn_release(void *p)
{
    conn_free(p);
}

/* libssh2_session_method_pref with only the names this libssh2 knows: 1.10 removes unknown
 * ones with an overlapping memcpy (undefined behaviour, caught by ASan). */
static void set_pref(LIBSSH2_SESSION *s, int method, const char *wanted)
{
    const char **algs = NULL;
    int n = libssh2_session_supported_algs(s, method, &algs);
    if (n <= 0)
        return;
    char list[512] = "";
    size_t used = 0;
    const char *w = wanted;
    while (*w) {
        const char *e = strchr(w, ',');
        size_t l = e ? (size_t)(e - w) : strlen(w);
        for (int i = 0; i < n; i++)
            if (strlen(algs[i]) == l && !memcmp(algs[i], w, l) && used + l + 2 < sizeof list) {
                if (used)
                    list[used++] = ',';
                memcpy(list + used, w, l);
                used += l;
                list[used] = '\0';
                break;
            }
        w += l + (e ? 1 : 0);
    }
    libssh2_free(s, (void *)algs);
    if (used)
        libssh2_session_method_pref(s, method, list);
}

static ctarget_status conn_open(ctarget_call *c, const ctarget_target *t, rv_conn **out,
                                ctarget_error *err)
{
    const char *host = H->config_get0(t, "address");
    const char *user = H->config_get0(t, "username");
    const char *ports = H->config_get0(t, "ssh_port");
    const char *tos = H->config_get0(t, "connect_timeout_seconds");
    if (!host || !*host) {
        H->error_set(err, CTARGET_E_CONFIG, 0, 0,
                     "address is not set: resolving resource_id to an address needs Azure "
                     "credentials, which this plugin does not have; add --set address=HOST");
        return CTARGET_E_CONFIG;
    }
    if (!user || !*user) {
        H->error_set(err, CTARGET_E_CONFIG, 0, 0, "username is not set");
        return CTARGET_E_CONFIG;
    }
    int port = ports ? atoi(ports) : 22;
    long timeout_ms = (tos ? atol(tos) : 10) * 1000;
    if (timeout_ms <= 0)
        timeout_ms = 10000;
    int64_t t0 = H->monotonic_ns();
    rv_conn *cn = calloc(1, sizeof *cn);
    if (!cn) {
        H->error_set(err, CTARGET_E_NOMEM, 0, 0, "out of memory");
        return CTARGET_E_NOMEM;
    }
    cn->fd = -1;
    cn->io_timeout_ms = 120000;
    snprintf(cn->hostport, sizeof cn->hostport, "%s:%d", host, port);
    snprintf(cn->where, sizeof cn->where, "%s@%s:%d", user, host, port);
    ctarget_status rc = tcp_connect(host, port, timeout_ms, &cn->fd, err);
    if (rc != CTARGET_OK) {
        conn_free(cn);
        return rc;
    }
    cn->s = libssh2_session_init();
    if (!cn->s) {
        conn_free(cn);
        H->error_set(err, CTARGET_E_NOMEM, 0, 0, "cannot start an SSH session");
        return CTARGET_E_NOMEM;
    }
    libssh2_session_set_blocking(cn->s, 1);
    libssh2_session_set_timeout(cn->s, timeout_ms);
    /* our order of preference, among what this libssh2 supports: AEAD ciphers when it has
     * them (1.11), else CTR (AES-NI); never CBC; host key types as OpenSSH orders them */
    static const char ciphers[] = "chacha20-poly1305@openssh.com,aes128-gcm@openssh.com,"
                                  "aes256-gcm@openssh.com,aes128-ctr,aes256-ctr,aes192-ctr";
    static const char macs[] = "hmac-sha2-256-etm@openssh.com,hmac-sha2-512-etm@openssh.com,"
                               "hmac-sha2-256,hmac-sha2-512,hmac-sha1";
    static const char hostkeys[] = "ssh-ed25519,ecdsa-sha2-nistp256,ecdsa-sha2-nistp384,"
                                   "ecdsa-sha2-nistp521,rsa-sha2-512,rsa-sha2-256,ssh-rsa";
    set_pref(cn->s, LIBSSH2_METHOD_CRYPT_CS, ciphers);
    set_pref(cn->s, LIBSSH2_METHOD_CRYPT_SC, ciphers);
    set_pref(cn->s, LIBSSH2_METHOD_MAC_CS, macs);
    set_pref(cn->s, LIBSSH2_METHOD_MAC_SC, macs);
    set_pref(cn->s, LIBSSH2_METHOD_HOSTKEY, hostkeys);
    if (libssh2_session_handshake(cn->s, cn->fd) != 0) {
        H->error_set(err, CTARGET_E_UNREACHABLE, 1, 0,
                     "SSH handshake with %s failed: %s (is it an SSH server?)", cn->hostport,
                     ssh_msg(cn->s));
        cn->dead = 1;
        conn_free(cn);
        return CTARGET_E_UNREACHABLE;
    }
    rc = check_host_key(cn, c, host, port, err);
    if (rc == CTARGET_OK)
        rc = authenticate(cn, c, t, user, err);
    if (rc != CTARGET_OK) {
        conn_free(cn);
        return rc;
    }
    libssh2_keepalive_config(cn->s, 0, 30);
    libssh2_session_set_blocking(cn->s, 0);
    H->log(c, CTARGET_LOG_DEBUG, "connected to %s in %lld ms (%s, %s)", cn->where,
           (long long)((H->monotonic_ns() - t0) / 1000000),
           libssh2_session_methods(cn->s, LIBSSH2_METHOD_CRYPT_CS),
           libssh2_session_methods(cn->s, LIBSSH2_METHOD_MAC_CS));
    *out = cn;
    return CTARGET_OK;
}

ctarget_status rv_conn_get(const ctarget_host *h, ctarget_call *c, ctarget_target *t,
                           rv_conn **out, ctarget_error *err)
{
    static int inited;
    H = h;
    if (!inited) {
        if (libssh2_init(0) != 0) {
            h->error_set(err, CTARGET_E_INTERNAL, 0, 0, "libssh2_init failed");
            return CTARGET_E_INTERNAL;
        }
        inited = 1;
    }
    rv_conn *cn = h->target_data_get0(t);
    if (cn && !cn->dead) {
        *out = cn;
        return CTARGET_OK;
    }
    int reconnect = cn != NULL;
    if (cn)
        h->target_data_set(t, NULL, NULL); /* releases the dead one */
    /* a dropped connection (sshd restarted, network blip) gets a few quick tries; auth and
     * host-key failures are final at once */
    static const long backoff_ms[] = {0, 200, 500, 1000, 2000, 4000};
    ctarget_status rc = CTARGET_E_UNREACHABLE;
    size_t tries = reconnect ? sizeof backoff_ms / sizeof backoff_ms[0] : 1;
    for (size_t i = 0; i < tries; i++) {
        if (backoff_ms[i] && h->sleep_ms(c, backoff_ms[i]) != CTARGET_OK) {
            h->error_set(err, CTARGET_E_CANCELED, 0, 0, "canceled");
            return CTARGET_E_CANCELED;
        }
        rv_conn *n = NULL;
        rc = conn_open(c, t, &n, err);
        if (rc == CTARGET_OK) {
            if (reconnect)
                h->log(c, CTARGET_LOG_WARN, "the connection to %s dropped; reconnected%s",
                       n->where, i ? " after retrying" : "");
            h->target_data_set(t, n, conn_release);
            *out = n;
            return CTARGET_OK;
        }
        if (!err->transient)
            break;
    }
    return rc;
}

void rv_conn_drop(const ctarget_host *h, ctarget_target *t)
{
    rv_conn *cn = h->target_data_get0(t);
    if (cn)
        cn->dead = 1; /* the next rv_conn_get reconnects (with backoff) */
}

const char *rv_conn_where(const rv_conn *cn)
{
    return cn->where;
}

rv_exec **rv_conn_serve(rv_conn *cn)
{
    return &cn->serve;
}

rv_buf *rv_conn_serve_buf(rv_conn *cn)
{
    return &cn->serve_buf;
}

uint64_t rv_conn_bytes_out(const rv_conn *cn)
{
    return cn->bytes_out;
}

/* ---- channels --------------------------------------------------------------------------- */

static ctarget_status lost(rv_conn *cn, const char *doing, ctarget_error *err)
{
    char msg[512];
    snprintf(msg, sizeof msg, "%s", ssh_msg(cn->s));
    cn->dead = 1;
    H->error_set(err, CTARGET_E_UNREACHABLE, 1, 0, "lost the connection to %s while %s: %s",
                 cn->hostport, doing, msg);
    return CTARGET_E_UNREACHABLE;
}

/* Wait until the socket is ready in the direction libssh2 wants; bounded by io_timeout. */
static ctarget_status wait_socket(rv_conn *cn, ctarget_call *c, const char *doing,
                                  int64_t *idle_since, ctarget_error *err)
{
    int dir = libssh2_session_block_directions(cn->s);
    struct pollfd p = {.fd = cn->fd, .events = 0};
    if (dir & LIBSSH2_SESSION_BLOCK_INBOUND)
        p.events |= POLLIN;
    if (dir & LIBSSH2_SESSION_BLOCK_OUTBOUND)
        p.events |= POLLOUT;
    if (!p.events)
        p.events = POLLIN;
    int n = poll(&p, 1, 1000);
    if (n > 0) {
        *idle_since = H->monotonic_ns();
        if (p.revents & (POLLERR | POLLNVAL))
            return lost(cn, doing, err);
        return CTARGET_OK;
    }
    if (n < 0 && errno != EINTR)
        return lost(cn, doing, err);
    if (c && H->cancelled(c)) {
        H->error_set(err, CTARGET_E_CANCELED, 0, 0, "canceled while %s", doing);
        return CTARGET_E_CANCELED;
    }
    if ((H->monotonic_ns() - *idle_since) / 1000000 > cn->io_timeout_ms) {
        cn->dead = 1;
        H->error_set(err, CTARGET_E_TIMEOUT, 1, 0, "%s sent nothing for %ld s while %s",
                     cn->hostport, cn->io_timeout_ms / 1000, doing);
        return CTARGET_E_TIMEOUT;
    }
    return CTARGET_OK;
}

ctarget_status rv_exec_open(rv_conn *cn, ctarget_call *c, const char *cmd, ctarget_write_fn out,
                            void *out_arg, rv_exec **exp, ctarget_error *err)
{
    rv_exec *ex = calloc(1, sizeof *ex);
    if (!ex) {
        H->error_set(err, CTARGET_E_NOMEM, 0, 0, "out of memory");
        return CTARGET_E_NOMEM;
    }
    ex->cn = cn;
    ex->call = c;
    ex->out = out;
    ex->out_arg = out_arg;
    int64_t idle = H->monotonic_ns();
    ctarget_status rc;
    for (;;) {
        ex->ch = libssh2_channel_open_session(cn->s);
        if (ex->ch)
            break;
        if (libssh2_session_last_errno(cn->s) != LIBSSH2_ERROR_EAGAIN) {
            rc = lost(cn, "opening a channel", err);
            free(ex);
            return rc;
        }
        if ((rc = wait_socket(cn, c, "opening a channel", &idle, err)) != CTARGET_OK) {
            free(ex);
            return rc;
        }
    }
    for (;;) {
        int r = libssh2_channel_exec(ex->ch, cmd);
        if (r == 0)
            break;
        if (r != LIBSSH2_ERROR_EAGAIN) {
            rc = lost(cn, "starting a command", err);
            rv_exec_abort(ex);
            return rc;
        }
        if ((rc = wait_socket(cn, c, "starting a command", &idle, err)) != CTARGET_OK) {
            rv_exec_abort(ex);
            return rc;
        }
    }
    *exp = ex;
    return CTARGET_OK;
}

/* Read what is available on stdout and stderr.  *progress: something was read. */
static ctarget_status drain(rv_exec *ex, int *progress, ctarget_error *err)
{
    char buf[65536];
    *progress = 0;
    for (int round = 0; round < 64; round++) {
        int any = 0;
        if (!ex->eof_out) {
            ssize_t n = libssh2_channel_read(ex->ch, buf, sizeof buf);
            if (n > 0) {
                any = 1;
                if (ex->out && !ex->out_stopped && ex->out(ex->out_arg, buf, (size_t)n) != 0)
                    ex->out_stopped = 1;
            } else if (n == 0) {
                if (libssh2_channel_eof(ex->ch))
                    ex->eof_out = 1;
            } else if (n != LIBSSH2_ERROR_EAGAIN) {
                return lost(ex->cn, "reading a command's output", err);
            }
        }
        if (!ex->eof_err) {
            ssize_t n = libssh2_channel_read_stderr(ex->ch, buf, sizeof buf);
            if (n > 0) {
                any = 1;
                size_t k = (size_t)n;
                if (k >= sizeof ex->errtail) {
                    memcpy(ex->errtail, buf + k - (sizeof ex->errtail - 1), sizeof ex->errtail - 1);
                    ex->errlen = sizeof ex->errtail - 1;
                } else {
                    if (ex->errlen + k >= sizeof ex->errtail) {
                        size_t drop = ex->errlen + k - (sizeof ex->errtail - 1);
                        memmove(ex->errtail, ex->errtail + drop, ex->errlen - drop);
                        ex->errlen -= drop;
                    }
                    memcpy(ex->errtail + ex->errlen, buf, k);
                    ex->errlen += k;
                }
            } else if (n == 0) {
                if (libssh2_channel_eof(ex->ch))
                    ex->eof_err = 1;
            } else if (n != LIBSSH2_ERROR_EAGAIN) {
                return lost(ex->cn, "reading a command's errors", err);
            }
        }
        if (!any)
            break;
        *progress = 1;
    }
    return CTARGET_OK;
}

static ctarget_status exec_write(rv_exec *ex, const void *data, size_t len,
                                 ctarget_error *err);

ctarget_status rv_exec_write(rv_exec *ex, const void *data, size_t len, ctarget_error *err)
{
    if (ex->framed && len) {
        char head[32];
        int n = snprintf(head, sizeof head, "%zx\n", len);
        ctarget_status rc = exec_write(ex, head, (size_t)n, err);
        if (rc != CTARGET_OK)
            return rc;
    }
    return exec_write(ex, data, len, err);
}

void rv_exec_set_framed(rv_exec *ex, int on)
{
    ex->framed = on;
}

static ctarget_status exec_write(rv_exec *ex, const void *data, size_t len, ctarget_error *err)
{
    const char *p = data;
    int64_t idle = H->monotonic_ns();
    while (len) {
        ssize_t n = libssh2_channel_write(ex->ch, p, len);
        if (n > 0) {
            p += n;
            len -= (size_t)n;
            ex->cn->bytes_out += (uint64_t)n;
            idle = H->monotonic_ns();
            continue;
        }
        if (n != LIBSSH2_ERROR_EAGAIN && n != 0) {
            if (libssh2_channel_eof(ex->ch)) {
                H->error_set(err, CTARGET_E_REMOTE, 0, 0,
                             "the remote command on %s stopped reading its input",
                             ex->cn->hostport);
                return CTARGET_E_REMOTE;
            }
            return lost(ex->cn, "sending data", err);
        }
        int progress;
        ctarget_status rc = drain(ex, &progress, err);
        if (rc != CTARGET_OK)
            return rc;
        if (!progress && (rc = wait_socket(ex->cn, ex->call, "sending data", &idle, err)) !=
                             CTARGET_OK)
            return rc;
    }
    return CTARGET_OK;
}

ctarget_status rv_exec_pump(rv_exec *ex, int *eof, ctarget_error *err)
{
    int progress;
    int64_t idle = H->monotonic_ns();
    *eof = 0;
    ctarget_status rc = drain(ex, &progress, err);
    if (rc != CTARGET_OK || progress)
        return rc;
    if (ex->eof_out || libssh2_channel_eof(ex->ch)) {
        *eof = 1;
        return CTARGET_OK;
    }
    for (;;) {
        rc = wait_socket(ex->cn, ex->call, "waiting for the agent", &idle, err);
        if (rc != CTARGET_OK)
            return rc;
        rc = drain(ex, &progress, err);
        if (rc != CTARGET_OK || progress)
            return rc;
        if (ex->eof_out || libssh2_channel_eof(ex->ch)) {
            *eof = 1;
            return CTARGET_OK;
        }
    }
}

void rv_exec_set_call(rv_exec *ex, ctarget_call *c)
{
    ex->call = c;
}

void rv_exec_abort(rv_exec *ex)
{
    if (!ex)
        return;
    if (ex->ch) {
        /* non-blocking: a best effort; freeing sends the close when it can */
        libssh2_channel_close(ex->ch);
        libssh2_channel_free(ex->ch);
    }
    free(ex);
}

ctarget_status rv_exec_finish(rv_exec *ex, int *exit_status, char *tail, size_t tail_len,
                              ctarget_error *err)
{
    int64_t idle = H->monotonic_ns();
    ctarget_status rc;
    int r;
    while ((r = libssh2_channel_send_eof(ex->ch)) == LIBSSH2_ERROR_EAGAIN) {
        int progress;
        if ((rc = drain(ex, &progress, err)) != CTARGET_OK ||
            (!progress && (rc = wait_socket(ex->cn, ex->call, "finishing a command", &idle,
                                            err)) != CTARGET_OK)) {
            rv_exec_abort(ex);
            return rc;
        }
    }
    while (!(ex->eof_out && ex->eof_err)) {
        int progress;
        if ((rc = drain(ex, &progress, err)) != CTARGET_OK) {
            rv_exec_abort(ex);
            return rc;
        }
        if (ex->eof_out && ex->eof_err)
            break;
        if (!progress && libssh2_channel_eof(ex->ch)) {
            ex->eof_out = ex->eof_err = 1; /* nothing buffered and the remote closed */
            if ((rc = drain(ex, &progress, err)) != CTARGET_OK) {
                rv_exec_abort(ex);
                return rc;
            }
            break;
        }
        if (!progress &&
            (rc = wait_socket(ex->cn, ex->call, "reading a command's output", &idle, err)) !=
                CTARGET_OK) {
            rv_exec_abort(ex);
            return rc;
        }
    }
    while ((r = libssh2_channel_close(ex->ch)) == LIBSSH2_ERROR_EAGAIN)
        if ((rc = wait_socket(ex->cn, ex->call, "closing a channel", &idle, err)) != CTARGET_OK) {
            rv_exec_abort(ex);
            return rc;
        }
    while ((r = libssh2_channel_wait_closed(ex->ch)) == LIBSSH2_ERROR_EAGAIN)
        if ((rc = wait_socket(ex->cn, ex->call, "closing a channel", &idle, err)) != CTARGET_OK) {
            rv_exec_abort(ex);
            return rc;
        }
    int status = libssh2_channel_get_exit_status(ex->ch);
    char *sig = NULL;
    size_t siglen = 0;
    libssh2_channel_get_exit_signal(ex->ch, &sig, &siglen, NULL, NULL, NULL, NULL);
    if (sig && siglen) {
        status = -1;
        libssh2_free(ex->cn->s, sig);
    }
    if (exit_status)
        *exit_status = status;
    if (tail && tail_len) {
        /* the last non-empty line of standard error */
        size_t n = ex->errlen;
        while (n && (ex->errtail[n - 1] == '\n' || ex->errtail[n - 1] == '\r'))
            n--;
        size_t s = n;
        while (s && ex->errtail[s - 1] != '\n')
            s--;
        size_t k = n - s < tail_len - 1 ? n - s : tail_len - 1;
        memcpy(tail, ex->errtail + s, k);
        tail[k] = '\0';
    }
    libssh2_channel_free(ex->ch);
    free(ex);
    return CTARGET_OK;
}
