/* CURVE key files, allowlists, socket options, the ZAP handler and handshake
 * monitoring for moeshard's ZeroMQ links. Returns errors; never logs. */
#include "curve.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <zmq.h>

#define CURVE_TOKENS_MAX 4          /* whitespace-separated fields looked at on one line */
#define ZAP_PARTS_MAX    8          /* RFC 27: 6 fixed frames + CURVE's one credential */
#define ZAP_FRAME_BYTES_MAX 256

static const char z85_chars[] = "0123456789abcdefghijklmnopqrstuvwxyz"
                                "ABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#";

/* ------------------------------------------------------------ keys */

bool ms_curve_z85_valid(const char *s)
{
    if (!s || strlen(s) != MS_CURVE_Z85_BYTES)
        return false;
    for (int g = 0; g < MS_CURVE_Z85_BYTES; g += 5) {
        uint64_t v = 0;
        for (int i = 0; i < 5; i++) {
            const char *p = strchr(z85_chars, s[g + i]);
            if (!p || !*p)
                return false;
            v = v * 85 + (uint64_t)(p - z85_chars);
        }
        if (v > UINT32_MAX) /* five characters encode at most 2^32 - 1 */
            return false;
    }
    return true;
}

int ms_curve_keypair_generate(ms_curve_keypair_t *ret_kp, ms_err_t *err)
{
    ms_curve_keypair_t kp;
    if (!zmq_has("curve") || zmq_curve_keypair(kp.pub, kp.sec) != 0) {
        ms_err_set(err, "this libzmq was built without CURVE support");
        return -ENOTSUP;
    }
    *ret_kp = kp;
    return 0;
}

/* Reads a whole regular file of at most max_bytes; with private_only, one
 * that group or others can read is refused. */
static int read_text(const char *path, size_t max_bytes, bool private_only, char **ret_buf, size_t *ret_len,
                     ms_err_t *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int rc = -errno;
        ms_err_set(err, "%s: %s", path, strerror(-rc));
        return rc;
    }
    struct stat st;
    int rc = fstat(fd, &st) ? -errno : 0;
    if (!rc && !S_ISREG(st.st_mode)) {
        ms_err_set(err, "%s: not a regular file", path);
        rc = -EINVAL;
    } else if (!rc && private_only && (st.st_mode & 0077)) {
        ms_err_set(err, "%s: secret file has mode %04o: group or others may use it; run 'chmod 600 %s'", path,
                   (unsigned)(st.st_mode & 07777), path);
        rc = -EACCES;
    } else if (!rc && (uint64_t)st.st_size > max_bytes) {
        ms_err_set(err, "%s: larger than %zu bytes", path, max_bytes);
        rc = -EFBIG;
    } else if (rc) {
        ms_err_set(err, "%s: %s", path, strerror(-rc));
    }
    char *buf = rc ? NULL : malloc((size_t)st.st_size + 1);
    if (!rc && !buf)
        rc = -ENOMEM;
    size_t len = 0;
    while (!rc && len < (size_t)st.st_size) {
        ssize_t n = read(fd, buf + len, (size_t)st.st_size - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            rc = n < 0 ? -errno : -EIO;
            ms_err_set(err, "%s: read failed: %s", path, n < 0 ? strerror(errno) : "the file shrank");
        } else {
            len += (size_t)n;
        }
    }
    close(fd);
    if (rc) {
        free(buf);
        return rc;
    }
    buf[len] = '\0';
    *ret_buf = buf;
    *ret_len = len;
    return 0;
}

int ms_curve_read_private(const char *path, size_t max_bytes, char **ret_buf, size_t *ret_len, ms_err_t *err)
{
    return read_text(path, max_bytes, true, ret_buf, ret_len, err);
}

/* Splits a line at whitespace into at most CURVE_TOKENS_MAX tokens (in place). */
static int tokenize(char *line, char **tok)
{
    int n = 0;
    char *save = NULL;
    for (char *t = strtok_r(line, " \t\r\v\f", &save); t && n < CURVE_TOKENS_MAX; t = strtok_r(NULL, " \t\r\v\f", &save))
        tok[n++] = t;
    return n;
}

/* A comment line starts with '#'. '#' is a Z85 character, but no key starts
 * with it: a group starting with '#' (or '$') encodes more than 32 bits. */
static bool is_comment(char *const *tok, int n)
{
    return n == 0 || tok[0][0] == '#';
}

/* Fields from `from` on must be absent or a trailing comment. */
static bool rest_is_comment(char *const *tok, int n, int from)
{
    return n <= from || tok[from][0] == '#';
}

typedef int (*line_fn)(void *ctx, char *line, const char *path, int lineno, ms_err_t *err);

/* Calls fn for each line of buf; lines over MS_CURVE_LINE_BYTES_MAX are refused. */
static int for_each_line(char *buf, const char *path, line_fn fn, void *ctx, ms_err_t *err)
{
    int lineno = 0;
    for (char *line = buf, *next; line && *line; line = next) {
        next = strchr(line, '\n');
        if (next)
            *next++ = '\0';
        lineno++;
        if (strlen(line) > MS_CURVE_LINE_BYTES_MAX) {
            ms_err_set(err, "%s:%d: line longer than %d bytes", path, lineno, MS_CURVE_LINE_BYTES_MAX);
            return -EINVAL;
        }
        int rc = fn(ctx, line, path, lineno, err);
        if (rc)
            return rc;
    }
    return 0;
}

typedef struct {
    ms_curve_keypair_t kp;
    bool have_pub, have_sec;
} pair_parse_t;

static int pair_line(void *ctx, char *line, const char *path, int lineno, ms_err_t *err)
{
    pair_parse_t *pp = ctx;
    char *tok[CURVE_TOKENS_MAX];
    char *eq = strchr(line, '=');
    if (eq)
        *eq = '\0';
    int n = tokenize(line, tok);
    if (n && tok[0][0] == '#')
        return 0;
    if (n == 0 && !eq)
        return 0;
    bool is_pub = n == 1 && !strcmp(tok[0], "public"), is_sec = n == 1 && !strcmp(tok[0], "secret");
    int nv = eq ? tokenize(eq + 1, tok) : 0;
    if ((!is_pub && !is_sec) || nv < 1 || !rest_is_comment(tok, nv, 1)) {
        ms_err_set(err, "%s:%d: expected 'public = KEY' or 'secret = KEY'", path, lineno);
        return -EINVAL;
    }
    if (!ms_curve_z85_valid(tok[0])) {
        ms_err_set(err, "%s:%d: the %s key is not 40 Z85 characters", path, lineno, is_pub ? "public" : "secret");
        return -EINVAL;
    }
    if (is_pub ? pp->have_pub : pp->have_sec) {
        ms_err_set(err, "%s:%d: a second %s key", path, lineno, is_pub ? "public" : "secret");
        return -EINVAL;
    }
    memcpy(is_pub ? pp->kp.pub : pp->kp.sec, tok[0], MS_CURVE_Z85_BYTES + 1);
    *(is_pub ? &pp->have_pub : &pp->have_sec) = true;
    return 0;
}

static int pair_check(const pair_parse_t *pp, const char *path, ms_err_t *err)
{
    if (!pp->have_pub || !pp->have_sec) {
        ms_err_set(err, "%s: no '%s = KEY' line (a key pair file from 'moeshard keygen')", path,
                   pp->have_pub ? "secret" : "public");
        return -EINVAL;
    }
    char derived[MS_CURVE_Z85_BYTES + 1];
    if (zmq_curve_public(derived, pp->kp.sec) != 0 || strcmp(derived, pp->kp.pub) != 0) {
        ms_err_set(err, "%s: the public key does not belong to the secret key", path);
        return -EINVAL;
    }
    return 0;
}

int ms_curve_keypair_load(const char *path, ms_curve_keypair_t *ret_kp, ms_err_t *err)
{
    char *buf = NULL;
    size_t len = 0;
    int rc = read_text(path, MS_CURVE_FILE_BYTES_MAX, true, &buf, &len, err);
    if (rc)
        return rc;
    pair_parse_t pp = { 0 };
    rc = for_each_line(buf, path, pair_line, &pp, err);
    rc = rc ? rc : pair_check(&pp, path, err);
    if (!rc)
        *ret_kp = pp.kp;
    memset(buf, 0, len); /* the secret key does not linger in freed memory */
    memset(&pp, 0, sizeof(pp));
    free(buf);
    return rc;
}

typedef struct {
    char key[MS_CURVE_Z85_BYTES + 1];
    int n;
} pub_parse_t;

static int pub_line(void *ctx, char *line, const char *path, int lineno, ms_err_t *err)
{
    pub_parse_t *pp = ctx;
    char *tok[CURVE_TOKENS_MAX];
    int n = tokenize(line, tok);
    if (is_comment(tok, n))
        return 0;
    if (!ms_curve_z85_valid(tok[0]) || !rest_is_comment(tok, n, 1)) {
        ms_err_set(err, "%s:%d: expected one public key of 40 Z85 characters", path, lineno);
        return -EINVAL;
    }
    if (pp->n++) {
        ms_err_set(err, "%s:%d: a second key (a public key file holds one)", path, lineno);
        return -EINVAL;
    }
    memcpy(pp->key, tok[0], sizeof(pp->key));
    return 0;
}

int ms_curve_pubkey_load(const char *path, char ret_z85[MS_CURVE_Z85_BYTES + 1], ms_err_t *err)
{
    char *buf = NULL;
    size_t len = 0;
    int rc = read_text(path, MS_CURVE_FILE_BYTES_MAX, false, &buf, &len, err);
    if (rc)
        return rc;
    pub_parse_t pp = { .n = 0 };
    rc = for_each_line(buf, path, pub_line, &pp, err);
    free(buf);
    if (!rc && pp.n == 0) {
        ms_err_set(err, "%s: no public key in the file", path);
        rc = -EINVAL;
    }
    if (!rc)
        memcpy(ret_z85, pp.key, MS_CURVE_Z85_BYTES + 1);
    return rc;
}

/* Writes text to path, created with mode (O_EXCL: a file appearing
 * meanwhile is not overwritten). */
static int write_new(const char *path, const char *text, mode_t mode, ms_err_t *err)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
    if (fd < 0) {
        int rc = -errno;
        ms_err_set(err, "%s: %s", path, strerror(-rc));
        return rc;
    }
    size_t len = strlen(text), off = 0;
    int rc = fchmod(fd, mode) ? -errno : 0; /* the umask does not widen or narrow what we meant */
    while (!rc && off < len) {
        ssize_t n = write(fd, text + off, len - off);
        if (n < 0 && errno == EINTR)
            continue;
        rc = n < 0 ? -errno : 0;
        off += n > 0 ? (size_t)n : 0;
    }
    if (!rc && fsync(fd))
        rc = -errno;
    if (close(fd) && !rc)
        rc = -errno;
    if (rc) {
        ms_err_set(err, "%s: write failed: %s", path, strerror(-rc));
        unlink(path);
    }
    return rc;
}

/* PREFIX.key and PREFIX.pub; both checked before either is written. */
static int keyfile_paths(const char *prefix, bool force, char **key_path, char **pub_path, ms_err_t *err)
{
    if (!prefix || !*prefix || asprintf(key_path, "%s.key", prefix) < 0) {
        ms_err_set(err, "keygen: an output prefix is required");
        return -EINVAL;
    }
    if (asprintf(pub_path, "%s.pub", prefix) < 0) {
        free(*key_path);
        return -ENOMEM;
    }
    const char *paths[2] = { *key_path, *pub_path };
    for (int i = 0; i < 2; i++) {
        struct stat st;
        if (lstat(paths[i], &st) == 0 && !force) {
            ms_err_set(err, "%s exists: not overwritten (pass --force to replace it)", paths[i]);
            return -EEXIST;
        }
        if (force && unlink(paths[i]) && errno != ENOENT) {
            int rc = -errno;
            ms_err_set(err, "%s: cannot replace it: %s", paths[i], strerror(-rc));
            return rc;
        }
    }
    return 0;
}

int ms_curve_keypair_write(const char *prefix, const ms_curve_keypair_t *kp, bool force, ms_err_t *err)
{
    if (!kp || !ms_curve_z85_valid(kp->pub) || !ms_curve_z85_valid(kp->sec)) {
        ms_err_set(err, "keygen: not a valid key pair");
        return -EINVAL;
    }
    char *key_path = NULL, *pub_path = NULL;
    int rc = keyfile_paths(prefix, force, &key_path, &pub_path, err);
    char pair[512], pub[256];
    snprintf(pair, sizeof(pair),
             "# moeshard CURVE key pair. Secret: keep it mode 0600 and never copy it off this machine.\n"
             "public = %s\nsecret = %s\n", kp->pub, kp->sec);
    snprintf(pub, sizeof(pub), "# moeshard CURVE public key: add it to the allowlist (or host keys) of the peers.\n"
                               "%s\n", kp->pub);
    rc = rc ? rc : write_new(key_path, pair, 0600, err);
    if (!rc && (rc = write_new(pub_path, pub, 0644, err)))
        unlink(key_path);
    memset(pair, 0, sizeof(pair));
    free(key_path);
    free(pub_path);
    return rc;
}

/* ------------------------------------------------------- allowlist */

typedef struct {
    uint8_t key[MS_CURVE_KEY_BYTES];
    char name[MS_CURVE_NAME_BYTES_MAX];
} allow_entry_t;

struct ms_curve_allow {
    allow_entry_t *e;
    size_t n;
};

static bool name_valid(const char *s)
{
    if (strlen(s) >= MS_CURVE_NAME_BYTES_MAX)
        return false;
    for (; *s; s++)
        if (!isprint((unsigned char)*s))
            return false;
    return true;
}

static int allow_line(void *ctx, char *line, const char *path, int lineno, ms_err_t *err)
{
    ms_curve_allow_t *a = ctx;
    char *tok[CURVE_TOKENS_MAX];
    int n = tokenize(line, tok);
    if (is_comment(tok, n))
        return 0;
    bool named = n > 1 && tok[1][0] != '#';
    if (!ms_curve_z85_valid(tok[0]) || !rest_is_comment(tok, n, named ? 2 : 1) || (named && !name_valid(tok[1]))) {
        ms_err_set(err, "%s:%d: expected 'KEY [NAME]': a 40-character Z85 public key and a name of at most %d "
                        "printable bytes", path, lineno, MS_CURVE_NAME_BYTES_MAX - 1);
        return -EINVAL;
    }
    if (a->n == MS_CURVE_ALLOW_MAX) {
        ms_err_set(err, "%s:%d: more than %d keys", path, lineno, MS_CURVE_ALLOW_MAX);
        return -EINVAL;
    }
    allow_entry_t *e = &a->e[a->n];
    zmq_z85_decode(e->key, tok[0]);
    if (ms_curve_allow_find(a, e->key)) {
        ms_err_set(err, "%s:%d: key %s is listed twice", path, lineno, tok[0]);
        return -EINVAL;
    }
    snprintf(e->name, sizeof(e->name), "%s", named ? tok[1] : "");
    a->n++;
    return 0;
}

int ms_curve_allow_load(const char *path, ms_curve_allow_t **ret_allow, ms_err_t *err)
{
    char *buf = NULL;
    size_t len = 0;
    int rc = read_text(path, MS_CURVE_FILE_BYTES_MAX, false, &buf, &len, err);
    if (rc)
        return rc;
    ms_curve_allow_t *a = calloc(1, sizeof(*a));
    if (a)
        a->e = calloc(MS_CURVE_ALLOW_MAX, sizeof(*a->e));
    rc = a && a->e ? for_each_line(buf, path, allow_line, a, err) : -ENOMEM;
    free(buf);
    if (rc == -ENOMEM)
        ms_err_set(err, "out of memory");
    if (rc) {
        ms_curve_allow_destroy(&a);
        return rc;
    }
    *ret_allow = a;
    return 0;
}

void ms_curve_allow_destroy(ms_curve_allow_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    free((*self_p)->e);
    free(*self_p);
    *self_p = NULL;
}

int ms_curve_allow_union(const ms_curve_allow_t *a, const ms_curve_allow_t *b, ms_curve_allow_t **ret_allow,
                         ms_err_t *err)
{
    ms_curve_allow_t *u = calloc(1, sizeof(*u));
    if (u)
        u->e = calloc(MS_CURVE_ALLOW_MAX, sizeof(*u->e));
    if (!u || !u->e) {
        ms_curve_allow_destroy(&u);
        ms_err_set(err, "out of memory");
        return -ENOMEM;
    }
    const ms_curve_allow_t *src[2] = { a, b };
    for (int k = 0; k < 2; k++) {
        for (size_t i = 0; src[k] && i < src[k]->n; i++) {
            if (ms_curve_allow_find(u, src[k]->e[i].key))
                continue; /* listed in both: once */
            if (u->n == MS_CURVE_ALLOW_MAX) {
                ms_curve_allow_destroy(&u);
                ms_err_set(err, "the allowlists hold more than %d keys together", MS_CURVE_ALLOW_MAX);
                return -EINVAL;
            }
            u->e[u->n++] = src[k]->e[i];
        }
    }
    *ret_allow = u;
    return 0;
}

bool ms_curve_allow_has_z85(const ms_curve_allow_t *a, const char *key_z85)
{
    uint8_t key[MS_CURVE_KEY_BYTES];
    return key_z85 && ms_curve_z85_valid(key_z85) && zmq_z85_decode(key, key_z85) &&
           ms_curve_allow_find(a, key) != NULL;
}

size_t ms_curve_allow_count(const ms_curve_allow_t *a)
{
    return a ? a->n : 0;
}

const char *ms_curve_allow_find(const ms_curve_allow_t *a, const uint8_t key[MS_CURVE_KEY_BYTES])
{
    for (size_t i = 0; a && i < a->n; i++)
        if (!memcmp(a->e[i].key, key, MS_CURVE_KEY_BYTES))
            return a->e[i].name;
    return NULL;
}

/* ------------------------------------------------------- host keys */

typedef struct {
    char endpoint[MS_CURVE_ENDPOINT_BYTES_MAX];
    char key[MS_CURVE_Z85_BYTES + 1];
} hostkey_entry_t;

struct ms_curve_hostkeys {
    hostkey_entry_t *e;
    size_t n;
};

static int hostkeys_line(void *ctx, char *line, const char *path, int lineno, ms_err_t *err)
{
    ms_curve_hostkeys_t *hk = ctx;
    char *tok[CURVE_TOKENS_MAX];
    int n = tokenize(line, tok);
    if (n == 0 || tok[0][0] == '#')
        return 0;
    if (n < 2 || !ms_curve_z85_valid(tok[1]) || !rest_is_comment(tok, n, 2) ||
        strlen(tok[0]) >= MS_CURVE_ENDPOINT_BYTES_MAX) {
        ms_err_set(err, "%s:%d: expected 'ENDPOINT KEY': an endpoint as given to --hosts and its 40-character "
                        "Z85 server key", path, lineno);
        return -EINVAL;
    }
    if (ms_curve_hostkeys_find(hk, tok[0])) {
        ms_err_set(err, "%s:%d: %s is listed twice", path, lineno, tok[0]);
        return -EINVAL;
    }
    if (hk->n == MS_CURVE_HOSTKEYS_MAX) {
        ms_err_set(err, "%s:%d: more than %d hosts", path, lineno, MS_CURVE_HOSTKEYS_MAX);
        return -EINVAL;
    }
    snprintf(hk->e[hk->n].endpoint, sizeof(hk->e[hk->n].endpoint), "%s", tok[0]);
    memcpy(hk->e[hk->n].key, tok[1], MS_CURVE_Z85_BYTES + 1);
    hk->n++;
    return 0;
}

int ms_curve_hostkeys_load(const char *path, ms_curve_hostkeys_t **ret_hk, ms_err_t *err)
{
    char *buf = NULL;
    size_t len = 0;
    int rc = read_text(path, MS_CURVE_FILE_BYTES_MAX, false, &buf, &len, err);
    if (rc)
        return rc;
    ms_curve_hostkeys_t *hk = calloc(1, sizeof(*hk));
    if (hk)
        hk->e = calloc(MS_CURVE_HOSTKEYS_MAX, sizeof(*hk->e));
    rc = hk && hk->e ? for_each_line(buf, path, hostkeys_line, hk, err) : -ENOMEM;
    free(buf);
    if (rc == -ENOMEM)
        ms_err_set(err, "out of memory");
    if (rc) {
        ms_curve_hostkeys_destroy(&hk);
        return rc;
    }
    *ret_hk = hk;
    return 0;
}

void ms_curve_hostkeys_destroy(ms_curve_hostkeys_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    free((*self_p)->e);
    free(*self_p);
    *self_p = NULL;
}

const char *ms_curve_hostkeys_find(const ms_curve_hostkeys_t *hk, const char *endpoint)
{
    for (size_t i = 0; hk && endpoint && i < hk->n; i++)
        if (!strcmp(hk->e[i].endpoint, endpoint))
            return hk->e[i].key;
    return NULL;
}

/* ---------------------------------------------------- socket setup */

static int setopt_str(void *sock, int opt, const char *s)
{
    return zmq_setsockopt(sock, opt, s, strlen(s) + 1) ? -zmq_errno() : 0; /* Z85 with its NUL */
}

int ms_curve_server_setup(void *sock, const ms_curve_keypair_t *kp)
{
    int one = 1;
    if (!sock || !kp)
        return -EINVAL;
    if (zmq_setsockopt(sock, ZMQ_CURVE_SERVER, &one, sizeof(one)))
        return -zmq_errno();
    int rc = setopt_str(sock, ZMQ_CURVE_SECRETKEY, kp->sec);
    return rc ? rc : zmq_setsockopt(sock, ZMQ_ZAP_DOMAIN, MS_CURVE_ZAP_DOMAIN, strlen(MS_CURVE_ZAP_DOMAIN))
                         ? -zmq_errno() : 0;
}

int ms_curve_client_setup(void *sock, const ms_curve_keypair_t *kp, const char *server_z85)
{
    if (!sock || !kp || !ms_curve_z85_valid(server_z85))
        return -EINVAL;
    int rc = setopt_str(sock, ZMQ_CURVE_SERVERKEY, server_z85);
    rc = rc ? rc : setopt_str(sock, ZMQ_CURVE_PUBLICKEY, kp->pub);
    return rc ? rc : setopt_str(sock, ZMQ_CURVE_SECRETKEY, kp->sec);
}

/* ------------------------------------------------------------- ZAP */

struct ms_curve_zap {
    void *rep;
    int stop_fd;
    pthread_t thread;
    bool running;
    const ms_curve_allow_t *allow;
    ms_curve_zap_log_fn log_fn;
    void *log_ctx;
    atomic_uint_fast64_t admitted, refused;
};

typedef struct {
    zmq_msg_t part[ZAP_PARTS_MAX];
    int n;
} zap_req_t;

static int zap_recv(void *sock, zap_req_t *r)
{
    r->n = 0;
    for (int more = 1; more;) {
        zmq_msg_t spare, *m = r->n < ZAP_PARTS_MAX ? &r->part[r->n] : &spare; /* parts past the bound are dropped */
        zmq_msg_init(m);
        if (zmq_msg_recv(m, sock, 0) < 0) {
            zmq_msg_close(m);
            return -zmq_errno();
        }
        more = zmq_msg_more(m);
        if (m == &spare)
            zmq_msg_close(m);
        else
            r->n++;
    }
    return 0;
}

static void zap_req_close(zap_req_t *r)
{
    for (int i = 0; i < r->n; i++)
        zmq_msg_close(&r->part[i]);
    r->n = 0;
}

/* Copies part i as a NUL-terminated string of at most cap - 1 bytes ("" when absent or longer). */
static void zap_part_str(zap_req_t *r, int i, char *out, size_t cap)
{
    size_t n = i < r->n ? zmq_msg_size(&r->part[i]) : 0;
    if (n >= cap)
        n = 0;
    if (n)
        memcpy(out, zmq_msg_data(&r->part[i]), n);
    out[n] = '\0';
}

static void zap_reply(void *sock, zap_req_t *r, const char *status, const char *text, const char *user)
{
    const void *id = r->n > 1 ? zmq_msg_data(&r->part[1]) : "";
    size_t id_len = r->n > 1 ? zmq_msg_size(&r->part[1]) : 0;
    zmq_send(sock, "1.0", 3, ZMQ_SNDMORE);
    zmq_send(sock, id, id_len, ZMQ_SNDMORE);
    zmq_send(sock, status, strlen(status), ZMQ_SNDMORE);
    zmq_send(sock, text, strlen(text), ZMQ_SNDMORE);
    zmq_send(sock, user, strlen(user), ZMQ_SNDMORE);
    zmq_send(sock, "", 0, 0);
}

/* One request (RFC 27: version, request id, domain, address, identity,
 * mechanism, credentials): admitted only for CURVE with a listed key. */
static void zap_handle(ms_curve_zap_t *z, zap_req_t *r)
{
    char version[8], address[ZAP_FRAME_BYTES_MAX], mech[16], key_z85[MS_CURVE_Z85_BYTES + 1] = "";
    zap_part_str(r, 0, version, sizeof(version));
    zap_part_str(r, 3, address, sizeof(address));
    zap_part_str(r, 5, mech, sizeof(mech));
    const char *name = NULL;
    bool curve = r->n == 7 && !strcmp(mech, "CURVE") && zmq_msg_size(&r->part[6]) == MS_CURVE_KEY_BYTES;
    if (curve) {
        zmq_z85_encode(key_z85, zmq_msg_data(&r->part[6]), MS_CURVE_KEY_BYTES);
        name = ms_curve_allow_find(z->allow, zmq_msg_data(&r->part[6]));
    }
    if (strcmp(version, "1.0") != 0) {
        zap_reply(z->rep, r, "500", "unsupported ZAP version", "");
        return;
    }
    /* counted and logged before the reply: once the peer learns the verdict,
     * the log already holds it */
    atomic_fetch_add(name ? &z->admitted : &z->refused, 1);
    if (z->log_fn)
        z->log_fn(z->log_ctx, name != NULL, address, key_z85, name ? name : "");
    if (name)
        zap_reply(z->rep, r, "200", "OK", key_z85); /* the User-Id of the peer's messages */
    else
        zap_reply(z->rep, r, "400", curve ? "key not on the allowlist" : "CURVE required", "");
}

static void *zap_main(void *arg)
{
    ms_curve_zap_t *z = arg;
    zmq_pollitem_t it[2] = { { .socket = z->rep, .events = ZMQ_POLLIN }, { .fd = z->stop_fd, .events = ZMQ_POLLIN } };
    for (;;) {
        it[0].revents = it[1].revents = 0;
        if (zmq_poll(it, 2, -1) < 0) {
            if (zmq_errno() == EINTR)
                continue;
            break;
        }
        if (it[1].revents & ZMQ_POLLIN)
            break;
        if (!(it[0].revents & ZMQ_POLLIN))
            continue;
        zap_req_t r;
        if (zap_recv(z->rep, &r) == 0)
            zap_handle(z, &r);
        zap_req_close(&r);
    }
    zmq_close(z->rep); /* closed on the thread that used it last */
    z->rep = NULL;
    return NULL;
}

int ms_curve_zap_start(void *zctx, const ms_curve_allow_t *allow, ms_curve_zap_log_fn log_fn, void *log_ctx,
                       ms_curve_zap_t **ret_zap, ms_err_t *err)
{
    ms_curve_zap_t *z = calloc(1, sizeof(*z));
    if (!z || !zctx || !allow) {
        free(z);
        ms_err_set(err, z ? "ZAP handler: a context and an allowlist are required" : "out of memory");
        return z ? -EINVAL : -ENOMEM;
    }
    *z = (ms_curve_zap_t){ .allow = allow, .log_fn = log_fn, .log_ctx = log_ctx, .stop_fd = -1 };
    atomic_init(&z->admitted, 0);
    atomic_init(&z->refused, 0);
    int rc = 0;
    z->rep = zmq_socket(zctx, ZMQ_REP);
    z->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (!z->rep || z->stop_fd < 0)
        rc = z->rep ? -errno : -zmq_errno();
    else if (zmq_bind(z->rep, MS_CURVE_ZAP_ENDPOINT))
        rc = -zmq_errno();
    else if ((rc = -pthread_create(&z->thread, NULL, zap_main, z)) == 0)
        z->running = true;
    if (rc) {
        ms_err_set(err, "cannot start the ZAP handler: %s", zmq_strerror(-rc));
        ms_curve_zap_stop(&z);
        return rc;
    }
    *ret_zap = z;
    return 0;
}

void ms_curve_zap_stop(ms_curve_zap_t **self_p)
{
    ms_curve_zap_t *z = self_p ? *self_p : NULL;
    if (!z)
        return;
    if (z->running) {
        uint64_t one = 1;
        ssize_t n = write(z->stop_fd, &one, sizeof(one));
        (void)n; /* a fresh eventfd always takes one write */
        pthread_join(z->thread, NULL);
    }
    if (z->rep)
        zmq_close(z->rep);
    if (z->stop_fd >= 0)
        close(z->stop_fd);
    free(z);
    *self_p = NULL;
}

uint64_t ms_curve_zap_admitted(const ms_curve_zap_t *z)
{
    return z ? atomic_load(&((ms_curve_zap_t *)z)->admitted) : 0;
}

uint64_t ms_curve_zap_refused(const ms_curve_zap_t *z)
{
    return z ? atomic_load(&((ms_curve_zap_t *)z)->refused) : 0;
}

/* ------------------------------------------------------- monitoring */

struct ms_curve_monitor {
    void *sock, *pair;
    bool in_handshake; /* connected, handshake not finished */
    bool connected;    /* a connection was made at least once */
    bool lost;         /* an established connection dropped */
};

int ms_curve_monitor_new(void *zctx, void *sock, ms_curve_monitor_t **ret_mon, ms_err_t *err)
{
    ms_curve_monitor_t *m = calloc(1, sizeof(*m));
    if (!m) {
        ms_err_set(err, "out of memory");
        return -ENOMEM;
    }
    char addr[64];
    snprintf(addr, sizeof(addr), "inproc://ms-curve-monitor-%p", (void *)m);
    int events = ZMQ_EVENT_CONNECTED | ZMQ_EVENT_DISCONNECTED | ZMQ_EVENT_HANDSHAKE_SUCCEEDED |
                 ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL | ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL |
                 ZMQ_EVENT_HANDSHAKE_FAILED_AUTH;
    int rc = 0;
    if (zmq_socket_monitor(sock, addr, events))
        rc = -zmq_errno();
    else
        m->sock = sock;
    m->pair = rc ? NULL : zmq_socket(zctx, ZMQ_PAIR);
    if (!rc && (!m->pair || zmq_connect(m->pair, addr)))
        rc = -zmq_errno();
    if (rc) {
        ms_err_set(err, "cannot watch the connection's handshake: %s", zmq_strerror(-rc));
        ms_curve_monitor_destroy(&m);
        return rc;
    }
    *ret_mon = m;
    return 0;
}

bool ms_curve_monitor_lost(const ms_curve_monitor_t *mon)
{
    return mon->lost;
}

void *ms_curve_monitor_socket(ms_curve_monitor_t *mon)
{
    return mon ? mon->pair : NULL;
}

/* Reads one event without blocking: 0 and *ev, *value; -EAGAIN when none. */
static int monitor_event(ms_curve_monitor_t *mon, uint16_t *ev, uint32_t *value)
{
    uint8_t head[6];
    int n = zmq_recv(mon->pair, head, sizeof(head), ZMQ_DONTWAIT);
    if (n < 0)
        return -zmq_errno();
    int more = 0;
    size_t more_len = sizeof(more);
    while (zmq_getsockopt(mon->pair, ZMQ_RCVMORE, &more, &more_len) == 0 && more) {
        char skip[8];
        if (zmq_recv(mon->pair, skip, sizeof(skip), 0) < 0) /* the endpoint frame */
            break;
    }
    if (n != (int)sizeof(head))
        return -EPROTO;
    memcpy(ev, head, sizeof(*ev));
    memcpy(value, head + 2, sizeof(*value));
    return 0;
}

/* Why a handshake failed, for an operator; curve: this side uses CURVE. */
static int handshake_failed(uint16_t ev, uint32_t value, bool curve, const char *peer, ms_err_t *err)
{
    if (ev == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH)
        ms_err_set(err, "%s refused this key (ZAP status %u): its public key is not on the server's allowlist",
                   peer, value);
    else if (value == ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH)
        ms_err_set(err, "%s: security mismatch: one side uses CURVE keys and the other --plaintext", peer);
    else if (value == ZMQ_PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC)
        ms_err_set(err, "%s: the handshake does not decrypt: the server key given for it is wrong", peer);
    else if (ev == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL)
        ms_err_set(err, "%s: handshake failed (protocol error 0x%x)", peer, value);
    else if (curve)
        ms_err_set(err, "%s closed the connection during the handshake: the server key given for it is "
                        "probably wrong, or it runs with --plaintext", peer);
    else
        ms_err_set(err, "%s closed the connection during the handshake: it requires CURVE keys and this side "
                        "runs with --plaintext (docs/security.md)", peer);
    return -ECONNREFUSED;
}

int ms_curve_monitor_read(ms_curve_monitor_t *mon, const char *peer, ms_err_t *err)
{
    int result = 0;
    uint16_t ev = 0;
    uint32_t value = 0;
    while (monitor_event(mon, &ev, &value) == 0) {
        if (ev == ZMQ_EVENT_CONNECTED) {
            mon->in_handshake = mon->connected = true;
        } else if (ev == ZMQ_EVENT_HANDSHAKE_SUCCEEDED) {
            mon->in_handshake = false;
            result = 1;
        } else if (ev != ZMQ_EVENT_DISCONNECTED || mon->in_handshake) {
            int mech = ZMQ_NULL;
            size_t len = sizeof(mech);
            zmq_getsockopt(mon->sock, ZMQ_MECHANISM, &mech, &len);
            mon->in_handshake = false;
            return handshake_failed(ev, value, mech == ZMQ_CURVE, peer, err);
        } else { /* a working connection broke: ZeroMQ reconnects; what was in flight is lost */
            mon->lost = true;
        }
    }
    return result;
}

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int ms_curve_monitor_wait(ms_curve_monitor_t *mon, const char *peer, int64_t timeout_ms, int64_t connect_ms,
                          ms_err_t *err)
{
    int64_t t0 = mono_ms(), deadline = t0 + timeout_ms, connect_deadline = t0 + connect_ms;
    for (;;) {
        int rc = ms_curve_monitor_read(mon, peer, err);
        int64_t left = (mon->connected ? deadline : connect_deadline < deadline ? connect_deadline : deadline) -
                       mono_ms();
        if (rc || left <= 0)
            return rc;
        zmq_pollitem_t it = { .socket = mon->pair, .events = ZMQ_POLLIN };
        if (zmq_poll(&it, 1, (long)left) < 0 && zmq_errno() != EINTR)
            return -zmq_errno();
    }
}

void ms_curve_monitor_destroy(ms_curve_monitor_t **self_p)
{
    ms_curve_monitor_t *m = self_p ? *self_p : NULL;
    if (!m)
        return;
    if (m->sock)
        zmq_socket_monitor(m->sock, NULL, 0);
    if (m->pair)
        zmq_close(m->pair);
    free(m);
    *self_p = NULL;
}

/* ------------------------------------------------------- plaintext */

static bool host_is_loopback(const char *host, size_t len)
{
    char h[64];
    if (len == 0 || len >= sizeof(h))
        return false;
    memcpy(h, host, len);
    h[len] = '\0';
    if (!strcmp(h, "localhost") || !strcmp(h, "[::1]"))
        return true;
    struct in_addr a;
    return inet_pton(AF_INET, h, &a) == 1 && (ntohl(a.s_addr) >> 24) == 127;
}

/* "HOST:PORT" with HOST loopback. */
static bool hostport_is_loopback(const char *s, size_t len)
{
    const char *colon = NULL;
    for (const char *p = s; p < s + len; p++)
        if (*p == ':')
            colon = p;
    return colon && host_is_loopback(s, (size_t)(colon - s));
}

bool ms_curve_endpoint_is_loopback(const char *ep)
{
    if (!ep)
        return false;
    if (!strncmp(ep, "ipc://", 6) || !strncmp(ep, "inproc://", 9))
        return true;
    if (strncmp(ep, "tcp://", 6))
        return false;
    const char *s = ep + 6, *semi = strchr(s, ';'); /* tcp://SOURCE;DEST: both must stay local */
    if (semi)
        return hostport_is_loopback(s, (size_t)(semi - s)) && hostport_is_loopback(semi + 1, strlen(semi + 1));
    return hostport_is_loopback(s, strlen(s));
}

int ms_curve_plaintext_check(const char *const *endpoints, int n, ms_err_t *err)
{
    for (int i = 0; i < n; i++) {
        if (!ms_curve_endpoint_is_loopback(endpoints[i])) {
            ms_err_set(err, "--plaintext is refused for %s: it is not loopback (127.0.0.0/8, [::1], localhost, "
                            "ipc://); make keys with 'moeshard keygen' (docs/security.md)",
                       endpoints[i] ? endpoints[i] : "(none)");
            return -EPERM;
        }
    }
    return 0;
}
