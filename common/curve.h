/* CURVE security for the ZeroMQ links (docs/security.md): key files, the
 * allowlist and host-keys files, socket setup, a ZAP handler admitting the
 * allowlisted keys, handshake monitoring, and the loopback test behind --plaintext. */
#ifndef MS_CURVE_H
#define MS_CURVE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "err.h"

#define MS_CURVE_KEY_BYTES       32          /* a Curve25519 key */
#define MS_CURVE_Z85_BYTES       40          /* the same key in Z85 text */
#define MS_CURVE_FILE_BYTES_MAX  (1u << 20)  /* any key, allowlist or host-keys file */
#define MS_CURVE_LINE_BYTES_MAX  1024        /* one line of those files */
#define MS_CURVE_ALLOW_MAX       4096        /* keys on one allowlist */
#define MS_CURVE_NAME_BYTES_MAX  64          /* an allowlist entry's name, NUL included */
#define MS_CURVE_ENDPOINT_BYTES_MAX 256      /* an endpoint in the host-keys file, NUL included */
#define MS_CURVE_HOSTKEYS_MAX    4096        /* lines of one host-keys file */
#define MS_CURVE_ZAP_ENDPOINT    "inproc://zeromq.zap.01" /* fixed by ZeroMQ (RFC 27) */
#define MS_CURVE_ZAP_DOMAIN      "moeshard"

/* A key pair in Z85, NUL-terminated. sec is secret: never logged. */
typedef struct {
    char pub[MS_CURVE_Z85_BYTES + 1];
    char sec[MS_CURVE_Z85_BYTES + 1];
} ms_curve_keypair_t;

/* ------------------------------------------------------------ keys */

/* True when s is exactly 40 Z85 characters (a 32-byte key). */
bool ms_curve_z85_valid(const char *s);

/* A fresh pair from libzmq's generator. -ENOTSUP when libzmq lacks CURVE. */
int ms_curve_keypair_generate(ms_curve_keypair_t *ret_kp, ms_err_t *err);

/* Reads a key pair file: lines "public = Z85" and "secret = Z85", '#'
 * comments, blank lines. The file must be a regular file without any group
 * or other permission (-EACCES naming the mode and the chmod to run); both
 * keys present, valid and belonging together (-EINVAL naming the line);
 * -ENOENT and other -errno naming the file. */
int ms_curve_keypair_load(const char *path, ms_curve_keypair_t *ret_kp, ms_err_t *err);

/* Reads a public key file: one line with a Z85 key, '#' comments allowed. */
int ms_curve_pubkey_load(const char *path, char ret_z85[MS_CURVE_Z85_BYTES + 1], ms_err_t *err);

/* Writes PREFIX.key (the pair, mode 0600) and PREFIX.pub (mode 0644).
 * -EEXIST naming the file when either exists and force is false; -errno. */
int ms_curve_keypair_write(const char *prefix, const ms_curve_keypair_t *kp, bool force, ms_err_t *err);

/* Reads a small secret text file (at most max_bytes) without any group or
 * other permission (group write would let others replace it), into a
 * NUL-terminated buffer the caller frees (and should wipe). -EACCES for a
 * file with such permissions, -EFBIG, -errno; err names the file. */
int ms_curve_read_private(const char *path, size_t max_bytes, char **ret_buf, size_t *ret_len, ms_err_t *err);

/* ------------------------------------------------------- allowlist */

typedef struct ms_curve_allow ms_curve_allow_t;

/* Reads an allowlist: one Z85 public key per line, optionally followed by
 * whitespace and a name; '#' comments. A bad key, a duplicate or more than
 * MS_CURVE_ALLOW_MAX keys is -EINVAL naming the line. An empty list is valid
 * (nobody is admitted). */
int ms_curve_allow_load(const char *path, ms_curve_allow_t **ret_allow, ms_err_t *err);
void ms_curve_allow_destroy(ms_curve_allow_t **self_p);
size_t ms_curve_allow_count(const ms_curve_allow_t *a);
/* A new list with the keys of a and of b (either may be NULL), each once.
 * -EINVAL past MS_CURVE_ALLOW_MAX keys, -ENOMEM; err says which. */
int ms_curve_allow_union(const ms_curve_allow_t *a, const ms_curve_allow_t *b, ms_curve_allow_t **ret_allow,
                         ms_err_t *err);
/* Whether the Z85 key (a ZAP User-Id) is listed; false for NULL or a malformed key. */
bool ms_curve_allow_has_z85(const ms_curve_allow_t *a, const char *key_z85);
/* The entry's name ("" when it has none) when key (32 bytes) is listed, else NULL. */
const char *ms_curve_allow_find(const ms_curve_allow_t *a, const uint8_t key[MS_CURVE_KEY_BYTES]);

/* ------------------------------------------------------- host keys */

typedef struct ms_curve_hostkeys ms_curve_hostkeys_t;

/* Reads "ENDPOINT  Z85PUBKEY" lines ('#' comments): each expert host's
 * server key. -EINVAL naming the line for a bad key, a missing field or an
 * endpoint listed twice. */
int ms_curve_hostkeys_load(const char *path, ms_curve_hostkeys_t **ret_hk, ms_err_t *err);
void ms_curve_hostkeys_destroy(ms_curve_hostkeys_t **self_p);
/* The server key of endpoint (exact text match), or NULL. */
const char *ms_curve_hostkeys_find(const ms_curve_hostkeys_t *hk, const char *endpoint);

/* ---------------------------------------------------- socket setup */

/* Makes sock a CURVE server with kp (ZAP domain MS_CURVE_ZAP_DOMAIN). Call
 * before bind, with a ZAP handler running on the socket's context. -errno. */
int ms_curve_server_setup(void *sock, const ms_curve_keypair_t *kp);
/* Makes sock a CURVE client of the server whose public key is server_z85. Call before connect. -errno. */
int ms_curve_client_setup(void *sock, const ms_curve_keypair_t *kp, const char *server_z85);

/* ------------------------------------------------------------- ZAP */

typedef struct ms_curve_zap ms_curve_zap_t;

/* Called on the handler's thread for every decision, before the peer is
 * answered: the peer's IP address, its public key in Z85 ("" when it
 * offered none), and its allowlist name. */
typedef void (*ms_curve_zap_log_fn)(void *ctx, bool admitted, const char *address, const char *key_z85,
                                    const char *name);

/* Serves MS_CURVE_ZAP_ENDPOINT on zctx from its own thread: a CURVE peer
 * whose key is on allow is admitted, anything else refused. Messages of an
 * admitted peer carry its Z85 public key as "User-Id" (zmq_msg_gets), so a
 * server knows which key sent what. Start it before
 * binding the CURVE server socket; allow is borrowed and must outlive it.
 * -EADDRINUSE when a handler already serves zctx, -errno; err says which. */
int ms_curve_zap_start(void *zctx, const ms_curve_allow_t *allow, ms_curve_zap_log_fn log_fn, void *log_ctx,
                       ms_curve_zap_t **ret_zap, ms_err_t *err);
/* Stops the thread and closes its socket; call before zmq_ctx_term. Accepts NULL. */
void ms_curve_zap_stop(ms_curve_zap_t **self_p);
/* Peers admitted and refused so far; any thread. */
uint64_t ms_curve_zap_admitted(const ms_curve_zap_t *z);
uint64_t ms_curve_zap_refused(const ms_curve_zap_t *z);

/* ------------------------------------------------------- monitoring */

typedef struct ms_curve_monitor ms_curve_monitor_t;

/* Watches the handshakes of a connecting socket sock (on zctx), so a peer's
 * refusal becomes an error instead of a silent timeout. -errno. */
int ms_curve_monitor_new(void *zctx, void *sock, ms_curve_monitor_t **ret_mon, ms_err_t *err);
/* The socket to poll for ZMQ_POLLIN. */
void *ms_curve_monitor_socket(ms_curve_monitor_t *mon);
/* Reads the events waiting: 1 when a handshake succeeded (and none failed),
 * 0 when nothing decided, -ECONNREFUSED with err saying why a handshake
 * with peer failed (key refused, wrong server key, security mismatch). */
int ms_curve_monitor_read(ms_curve_monitor_t *mon, const char *peer, ms_err_t *err);
/* Waits up to timeout_ms for a decision: 1, 0 (timed out, or no connection
 * made within connect_ms: the peer is down, not refusing), -ECONNREFUSED. */
int ms_curve_monitor_wait(ms_curve_monitor_t *mon, const char *peer, int64_t timeout_ms, int64_t connect_ms,
                          ms_err_t *err);
/* True once an established connection has dropped (seen by a read):
 * ZeroMQ reconnects, but the peer lost what was in flight. */
bool ms_curve_monitor_lost(const ms_curve_monitor_t *mon);
/* Stops monitoring sock and closes the monitor. Accepts NULL. */
void ms_curve_monitor_destroy(ms_curve_monitor_t **self_p);

/* ------------------------------------------------------- plaintext */

/* True for endpoints that cannot leave the machine: ipc://, inproc://, and
 * tcp:// to 127.0.0.0/8, [::1] or localhost. Anything else, including
 * a wildcard host (*) and 0.0.0.0, is false. */
bool ms_curve_endpoint_is_loopback(const char *endpoint);
/* 0 when every endpoint is loopback; -EPERM naming the first that is not. */
int ms_curve_plaintext_check(const char *const *endpoints, int n, ms_err_t *err);

#endif
