/* Test support: the real OpenSSH server of tests/servers/sshd.sh, driven from C.
 *
 * Every server started here is stopped when the program exits (by the PID the fixture
 * recorded, through `sshd.sh stop`), before testlib removes its directory: call sf_start
 * only after tl_main has started (from add_tests or a test). */
#ifndef CTARGET_TESTS_SSHFIX_H
#define CTARGET_TESTS_SSHFIX_H

typedef struct sf_sshd {
    char *dir;          /* the fixture's directory: keys, config, port, known_hosts, log */
    int port;
    char *fingerprint;  /* SHA256:... of its ed25519 host key (read at each start) */
    int running;
} sf_sshd;

/* sshd.sh start DIR [PORT] (port 0: a free one).  0 on success, with s filled. */
int sf_start(sf_sshd *s, const char *dir, int port);
/* sshd.sh stop|restart|rekey DIR.  0 on success. */
int sf_stop(sf_sshd *s);
int sf_restart(sf_sshd *s);
int sf_rekey(sf_sshd *s);
/* DIR/name (owned). */
char *sf_file(const sf_sshd *s, const char *name);
/* The contents of DIR/name without trailing newlines (owned), or NULL when absent. */
char *sf_read(const sf_sshd *s, const char *name);
/* A port on 127.0.0.1 that refuses connections while *fd stays open (bound, never listened
 * on: no other process can take it meanwhile, unlike a free port that was closed). */
int sf_refusing_port(int *fd);
/* Lines in DIR/name that contain needle (0 when the file is absent). */
int sf_count(const sf_sshd *s, const char *name, const char *needle);

#endif
