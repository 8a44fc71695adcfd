/* Tests for common/curve: the key, allowlist and host-keys file parsers
 * (good and bad files, permissions), the loopback test, and an in-process
 * CURVE + ZAP round trip: an allowlisted key is admitted; a plaintext client,
 * a wrong server key and a key not on the allowlist are refused. */
#include <CUnit/CUnit.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <zmq.h>

#include "curve.h"

#define DIR_BYTES 1024
#define PATH_BYTES 2048
#define WAIT_MS 5000

/* Test vectors of the ZeroMQ documentation (zmq_curve, RFC 32). */
#define CLIENT_PUB "Yne@$w-vo<fVvi]a<NY6T1ed:M$fCG*[IaLV{hID"
#define CLIENT_SEC "D:)Q[IlAW!ahhC2ac:9*A}h:p?([4%wOTJ%JR%cs"
#define SERVER_PUB "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"
#define SERVER_SEC "JTKVSB%%)wK0E.X)V>+}o?pNmC{O&4W4b!Ni{Lh6"

static char tmp_dir[DIR_BYTES];

static int suite_init(void)
{
    const char *base = getenv("TMPDIR");
    snprintf(tmp_dir, sizeof(tmp_dir), "%s/ms-curve-XXXXXX", base && *base ? base : "/tmp");
    return mkdtemp(tmp_dir) ? 0 : -1;
}

static int suite_clean(void)
{
    char cmd[PATH_BYTES + 16];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmp_dir);
    return system(cmd) == 0 ? 0 : -1;
}

/* Writes text to tmp_dir/name with mode; the path goes to path. */
static void put(char *path, const char *name, const char *text, mode_t mode)
{
    snprintf(path, PATH_BYTES, "%s/%s", tmp_dir, name);
    unlink(path);
    FILE *f = fopen(path, "w");
    CU_ASSERT_FATAL(f != NULL);
    fputs(text, f);
    fclose(f);
    CU_ASSERT_FATAL(chmod(path, mode) == 0);
}

/* ------------------------------------------------------------ keys */

static void test_z85_valid(void)
{
    CU_ASSERT(ms_curve_z85_valid(CLIENT_PUB));
    CU_ASSERT(ms_curve_z85_valid(SERVER_SEC));
    CU_ASSERT(!ms_curve_z85_valid(NULL));
    CU_ASSERT(!ms_curve_z85_valid(""));
    CU_ASSERT(!ms_curve_z85_valid("HelloWorld")); /* valid Z85, but 8 bytes, not a key */
    CU_ASSERT(!ms_curve_z85_valid(CLIENT_PUB "x"));
    char bad[] = CLIENT_PUB;
    bad[7] = '"'; /* not in the alphabet */
    CU_ASSERT(!ms_curve_z85_valid(bad));
    bad[7] = ' ';
    CU_ASSERT(!ms_curve_z85_valid(bad));
    /* "#####" is 85^5 - 1, more than 32 bits: no key can hold that group */
    char over[] = "#####" "0000000000" "0000000000" "0000000000" "00000";
    CU_ASSERT(!ms_curve_z85_valid(over));
    over[0] = '0';
    CU_ASSERT(ms_curve_z85_valid(over));
}

static void test_keypair_load(void)
{
    char p[PATH_BYTES];
    ms_curve_keypair_t kp;
    ms_err_t err = { { 0 } };
    put(p, "good.key", "# a comment\n\n  public = " CLIENT_PUB "   # trailing\nsecret=" CLIENT_SEC "\n", 0600);
    CU_ASSERT_EQUAL_FATAL(ms_curve_keypair_load(p, &kp, &err), 0);
    CU_ASSERT_STRING_EQUAL(kp.pub, CLIENT_PUB);
    CU_ASSERT_STRING_EQUAL(kp.sec, CLIENT_SEC);
    put(p, "ro.key", "public = " CLIENT_PUB "\nsecret = " CLIENT_SEC, 0400); /* no final newline */
    CU_ASSERT_EQUAL(ms_curve_keypair_load(p, &kp, &err), 0);

    static const mode_t open_modes[] = { 0640, 0604, 0644, 0660, 0610 };
    for (size_t i = 0; i < sizeof(open_modes) / sizeof(open_modes[0]); i++) {
        put(p, "open.key", "public = " CLIENT_PUB "\nsecret = " CLIENT_SEC "\n", open_modes[i]);
        err.msg[0] = '\0';
        CU_ASSERT_EQUAL(ms_curve_keypair_load(p, &kp, &err), -EACCES);
        CU_ASSERT(strstr(err.msg, "chmod 600") != NULL);
    }
    static const char *const bad[] = {
        "public = " CLIENT_PUB "\n",                                          /* no secret */
        "secret = " CLIENT_SEC "\n",                                          /* no public */
        "public = " CLIENT_PUB "\nsecret = " SERVER_SEC "\n",                 /* not a pair */
        "public = " CLIENT_PUB "\npublic = " CLIENT_PUB "\nsecret = " CLIENT_SEC "\n",
        "public = " CLIENT_PUB "x\nsecret = " CLIENT_SEC "\n",                /* 41 characters */
        "public " CLIENT_PUB "\nsecret = " CLIENT_SEC "\n",                   /* no '=' */
        "private = " CLIENT_SEC "\npublic = " CLIENT_PUB "\n",                /* unknown name */
        "public = " CLIENT_PUB " extra\nsecret = " CLIENT_SEC "\n",
        "",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        put(p, "bad.key", bad[i], 0600);
        err.msg[0] = '\0';
        CU_ASSERT_EQUAL(ms_curve_keypair_load(p, &kp, &err), -EINVAL);
        CU_ASSERT(strstr(err.msg, "bad.key") != NULL);
    }
    snprintf(p, sizeof(p), "%s/absent.key", tmp_dir);
    CU_ASSERT_EQUAL(ms_curve_keypair_load(p, &kp, &err), -ENOENT);
    CU_ASSERT_EQUAL(ms_curve_keypair_load(tmp_dir, &kp, &err), -EINVAL); /* a folder */
}

static void test_pubkey_load(void)
{
    char p[PATH_BYTES], key[MS_CURVE_Z85_BYTES + 1];
    ms_err_t err = { { 0 } };
    put(p, "good.pub", "# the server\n" SERVER_PUB "\n", 0644);
    CU_ASSERT_EQUAL_FATAL(ms_curve_pubkey_load(p, key, &err), 0);
    CU_ASSERT_STRING_EQUAL(key, SERVER_PUB);
    static const char *const bad[] = { "", "# only a comment\n", SERVER_PUB "\n" CLIENT_PUB "\n",
                                       SERVER_PUB " name\n", "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf\n" };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        put(p, "bad.pub", bad[i], 0644);
        CU_ASSERT_EQUAL(ms_curve_pubkey_load(p, key, &err), -EINVAL);
    }
}

static void test_keypair_write(void)
{
    char prefix[PATH_BYTES], kpath[PATH_BYTES + 8], ppath[PATH_BYTES + 8];
    snprintf(prefix, sizeof(prefix), "%s/node", tmp_dir);
    snprintf(kpath, sizeof(kpath), "%s.key", prefix);
    snprintf(ppath, sizeof(ppath), "%s.pub", prefix);
    ms_curve_keypair_t kp, back;
    ms_err_t err = { { 0 } };
    CU_ASSERT_EQUAL_FATAL(ms_curve_keypair_generate(&kp, &err), 0);
    char derived[MS_CURVE_Z85_BYTES + 1];
    CU_ASSERT_EQUAL(zmq_curve_public(derived, kp.sec), 0);
    CU_ASSERT_STRING_EQUAL(derived, kp.pub);
    mode_t old = umask(0); /* the files get their modes whatever the umask */
    int rc = ms_curve_keypair_write(prefix, &kp, false, &err);
    umask(old);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    struct stat st;
    CU_ASSERT(stat(kpath, &st) == 0 && (st.st_mode & 0777) == 0600);
    CU_ASSERT(stat(ppath, &st) == 0 && (st.st_mode & 0777) == 0644);
    CU_ASSERT_EQUAL(ms_curve_keypair_load(kpath, &back, &err), 0);
    CU_ASSERT_STRING_EQUAL(back.pub, kp.pub);
    CU_ASSERT_STRING_EQUAL(back.sec, kp.sec);
    CU_ASSERT_EQUAL(ms_curve_pubkey_load(ppath, derived, &err), 0);
    CU_ASSERT_STRING_EQUAL(derived, kp.pub);

    ms_curve_keypair_t kp2;
    CU_ASSERT_EQUAL_FATAL(ms_curve_keypair_generate(&kp2, &err), 0);
    CU_ASSERT_STRING_NOT_EQUAL(kp2.sec, kp.sec);
    CU_ASSERT_EQUAL(ms_curve_keypair_write(prefix, &kp2, false, &err), -EEXIST);
    CU_ASSERT(strstr(err.msg, "--force") != NULL);
    CU_ASSERT_EQUAL(ms_curve_keypair_load(kpath, &back, &err), 0);
    CU_ASSERT_STRING_EQUAL(back.sec, kp.sec); /* untouched */
    unlink(kpath); /* only the .pub left: still refused, nothing written */
    CU_ASSERT_EQUAL(ms_curve_keypair_write(prefix, &kp2, false, &err), -EEXIST);
    CU_ASSERT(access(kpath, F_OK) != 0);
    CU_ASSERT_EQUAL(ms_curve_keypair_write(prefix, &kp2, true, &err), 0);
    CU_ASSERT_EQUAL(ms_curve_keypair_load(kpath, &back, &err), 0);
    CU_ASSERT_STRING_EQUAL(back.sec, kp2.sec);
    CU_ASSERT_EQUAL(ms_curve_keypair_write("", &kp2, false, &err), -EINVAL);
    snprintf(prefix, sizeof(prefix), "%s/no/such/dir/node", tmp_dir);
    CU_ASSERT_EQUAL(ms_curve_keypair_write(prefix, &kp2, false, &err), -ENOENT);
}

static void test_read_private(void)
{
    char p[PATH_BYTES], *buf = NULL;
    size_t len = 0;
    ms_err_t err = { { 0 } };
    put(p, "token", "s3cret\n", 0600);
    CU_ASSERT_EQUAL_FATAL(ms_curve_read_private(p, 64, &buf, &len, &err), 0);
    CU_ASSERT_EQUAL(len, 7);
    CU_ASSERT_STRING_EQUAL(buf, "s3cret\n");
    free(buf);
    CU_ASSERT_EQUAL(ms_curve_read_private(p, 4, &buf, &len, &err), -EFBIG);
    put(p, "token", "s3cret\n", 0644);
    CU_ASSERT_EQUAL(ms_curve_read_private(p, 64, &buf, &len, &err), -EACCES);
}

/* ------------------------------------------------------- allowlist */

static void test_allow(void)
{
    char p[PATH_BYTES];
    ms_err_t err = { { 0 } };
    ms_curve_allow_t *a = NULL;
    put(p, "good.allow", "# coordinators\n" CLIENT_PUB "  coord-1  # the first\n\n\t" SERVER_PUB "\n", 0644);
    CU_ASSERT_EQUAL_FATAL(ms_curve_allow_load(p, &a, &err), 0);
    CU_ASSERT_EQUAL(ms_curve_allow_count(a), 2);
    uint8_t key[MS_CURVE_KEY_BYTES];
    CU_ASSERT_FATAL(zmq_z85_decode(key, CLIENT_PUB) != NULL);
    CU_ASSERT_STRING_EQUAL(ms_curve_allow_find(a, key), "coord-1");
    CU_ASSERT_FATAL(zmq_z85_decode(key, SERVER_PUB) != NULL);
    CU_ASSERT_STRING_EQUAL(ms_curve_allow_find(a, key), "");
    key[0] ^= 1;
    CU_ASSERT_PTR_NULL(ms_curve_allow_find(a, key));
    ms_curve_allow_destroy(&a);
    CU_ASSERT_PTR_NULL(a);
    ms_curve_allow_destroy(&a);

    put(p, "empty.allow", "# nobody yet\n", 0644);
    CU_ASSERT_EQUAL_FATAL(ms_curve_allow_load(p, &a, &err), 0);
    CU_ASSERT_EQUAL(ms_curve_allow_count(a), 0);
    ms_curve_allow_destroy(&a);

    static const char *const bad[] = {
        CLIENT_PUB "\n" CLIENT_PUB " again\n",                     /* duplicate */
        CLIENT_PUB " two names\n",
        "not-a-key\n",
        CLIENT_PUB " a-name-that-is-far-too-long-to-be-a-reasonable-name-for-one-host-entry\n",
        CLIENT_PUB " bell\a\n",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        put(p, "bad.allow", bad[i], 0644);
        err.msg[0] = '\0';
        CU_ASSERT_EQUAL(ms_curve_allow_load(p, &a, &err), -EINVAL);
        CU_ASSERT(strstr(err.msg, "bad.allow:") != NULL);
        CU_ASSERT_PTR_NULL(a);
    }
}

/* Clients plus joining hosts: each key once; lookup by the Z85 text ZAP gives. */
static void test_allow_union(void)
{
    char p[PATH_BYTES];
    ms_err_t err = { { 0 } };
    ms_curve_allow_t *a = NULL, *b = NULL, *u = NULL;
    put(p, "a.allow", CLIENT_PUB " client\n", 0644);
    CU_ASSERT_EQUAL_FATAL(ms_curve_allow_load(p, &a, &err), 0);
    put(p, "b.allow", SERVER_PUB " host\n" CLIENT_PUB "\n", 0644);
    CU_ASSERT_EQUAL_FATAL(ms_curve_allow_load(p, &b, &err), 0);
    CU_ASSERT_EQUAL_FATAL(ms_curve_allow_union(a, b, &u, &err), 0);
    CU_ASSERT_EQUAL(ms_curve_allow_count(u), 2); /* CLIENT_PUB listed in both: once */
    CU_ASSERT(ms_curve_allow_has_z85(u, CLIENT_PUB) && ms_curve_allow_has_z85(u, SERVER_PUB));
    CU_ASSERT(ms_curve_allow_has_z85(a, CLIENT_PUB) && !ms_curve_allow_has_z85(a, SERVER_PUB));
    CU_ASSERT(!ms_curve_allow_has_z85(u, NULL) && !ms_curve_allow_has_z85(u, "short"));
    CU_ASSERT(!ms_curve_allow_has_z85(NULL, CLIENT_PUB));
    ms_curve_allow_destroy(&u);
    CU_ASSERT_EQUAL_FATAL(ms_curve_allow_union(NULL, b, &u, &err), 0);
    CU_ASSERT_EQUAL(ms_curve_allow_count(u), 2);
    ms_curve_allow_destroy(&u);
    ms_curve_allow_destroy(&a);
    ms_curve_allow_destroy(&b);
}

static void test_allow_too_many(void)
{
    char p[PATH_BYTES];
    snprintf(p, sizeof(p), "%s/many.allow", tmp_dir);
    FILE *f = fopen(p, "w");
    CU_ASSERT_FATAL(f != NULL);
    for (int i = 0; i <= MS_CURVE_ALLOW_MAX; i++) {
        uint8_t key[MS_CURVE_KEY_BYTES] = { 0 };
        char z[MS_CURVE_Z85_BYTES + 1];
        memcpy(key, &i, sizeof(i));
        zmq_z85_encode(z, key, sizeof(key));
        fprintf(f, "%s\n", z);
    }
    fclose(f);
    ms_curve_allow_t *a = NULL;
    ms_err_t err = { { 0 } };
    CU_ASSERT_EQUAL(ms_curve_allow_load(p, &a, &err), -EINVAL);
    CU_ASSERT(strstr(err.msg, "more than") != NULL);
}

static void test_hostkeys(void)
{
    char p[PATH_BYTES];
    ms_err_t err = { { 0 } };
    ms_curve_hostkeys_t *hk = NULL;
    put(p, "good.hosts", "# ENDPOINT KEY\ntcp://10.0.0.5:5555  " SERVER_PUB "\ntcp://10.0.0.6:5555\t" CLIENT_PUB
                         "  # spare\n", 0644);
    CU_ASSERT_EQUAL_FATAL(ms_curve_hostkeys_load(p, &hk, &err), 0);
    CU_ASSERT_STRING_EQUAL(ms_curve_hostkeys_find(hk, "tcp://10.0.0.5:5555"), SERVER_PUB);
    CU_ASSERT_STRING_EQUAL(ms_curve_hostkeys_find(hk, "tcp://10.0.0.6:5555"), CLIENT_PUB);
    CU_ASSERT_PTR_NULL(ms_curve_hostkeys_find(hk, "tcp://10.0.0.7:5555"));
    ms_curve_hostkeys_destroy(&hk);
    static const char *const bad[] = {
        "tcp://10.0.0.5:5555\n",
        "tcp://10.0.0.5:5555 " SERVER_PUB "\ntcp://10.0.0.5:5555 " CLIENT_PUB "\n",
        "tcp://10.0.0.5:5555 " SERVER_PUB " extra\n",
        SERVER_PUB " tcp://10.0.0.5:5555\n",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        put(p, "bad.hosts", bad[i], 0644);
        CU_ASSERT_EQUAL(ms_curve_hostkeys_load(p, &hk, &err), -EINVAL);
        CU_ASSERT_PTR_NULL(hk);
    }
}

static void test_loopback(void)
{
    static const char *const yes[] = { "tcp://127.0.0.1:5555", "tcp://127.1.2.3:0", "tcp://localhost:80",
                                       "tcp://[::1]:5555", "ipc:///run/moeshard.sock", "inproc://x",
                                       "tcp://127.0.0.1:0;127.0.0.1:5555" };
    static const char *const no[] = { "tcp://0.0.0.0:5555", "tcp://*:5555", "tcp://10.0.0.5:5555",
                                      "tcp://128.0.0.1:5555", "tcp://eth0:5555", "tcp://lo:5555",
                                      "tcp://localhost.example.com:1", "tcp://[::]:5555", "tcp://127.0.0.1",
                                      "pgm://127.0.0.1;239.192.1.1:5555", "tcp://10.0.0.1:0;127.0.0.1:5555",
                                      "tcp://127.0.0.1.evil.com:5", "", "127.0.0.1:5555" };
    for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++)
        CU_ASSERT(ms_curve_endpoint_is_loopback(yes[i]));
    for (size_t i = 0; i < sizeof(no) / sizeof(no[0]); i++)
        CU_ASSERT(!ms_curve_endpoint_is_loopback(no[i]));
    CU_ASSERT(!ms_curve_endpoint_is_loopback(NULL));
    ms_err_t err = { { 0 } };
    const char *eps[] = { "tcp://127.0.0.1:1", "tcp://10.0.0.5:2" };
    CU_ASSERT_EQUAL(ms_curve_plaintext_check(eps, 1, &err), 0);
    CU_ASSERT_EQUAL(ms_curve_plaintext_check(eps, 2, &err), -EPERM);
    CU_ASSERT(strstr(err.msg, "tcp://10.0.0.5:2") != NULL);
}

/* ------------------------------------------------------------- ZAP */

typedef struct {
    int admitted, refused;
    char address[64], key[MS_CURVE_Z85_BYTES + 1], name[MS_CURVE_NAME_BYTES_MAX];
} zap_seen_t;

static void on_zap(void *ctx, bool admitted, const char *address, const char *key, const char *name)
{
    zap_seen_t *s = ctx;
    *(admitted ? &s->admitted : &s->refused) += 1;
    snprintf(s->address, sizeof(s->address), "%s", address);
    snprintf(s->key, sizeof(s->key), "%s", key);
    snprintf(s->name, sizeof(s->name), "%s", name);
}

typedef struct {
    void *ctx, *router, *cctx;
    ms_curve_zap_t *zap;
    ms_curve_allow_t *allow;
    char endpoint[128];
    zap_seen_t seen;
} zap_server_t;

static void zap_server_start(zap_server_t *s)
{
    char p[PATH_BYTES];
    ms_err_t err = { { 0 } };
    memset(s, 0, sizeof(*s));
    put(p, "zap.allow", CLIENT_PUB " the-client\n", 0644);
    CU_ASSERT_EQUAL_FATAL(ms_curve_allow_load(p, &s->allow, &err), 0);
    s->ctx = zmq_ctx_new();
    s->cctx = zmq_ctx_new();
    CU_ASSERT_EQUAL_FATAL(ms_curve_zap_start(s->ctx, s->allow, on_zap, &s->seen, &s->zap, &err), 0);
    ms_curve_zap_t *second = NULL;
    CU_ASSERT(ms_curve_zap_start(s->ctx, s->allow, NULL, NULL, &second, &err) < 0); /* one per context */
    s->router = zmq_socket(s->ctx, ZMQ_ROUTER);
    ms_curve_keypair_t kp = { SERVER_PUB, SERVER_SEC };
    CU_ASSERT_EQUAL_FATAL(ms_curve_server_setup(s->router, &kp), 0);
    CU_ASSERT_EQUAL_FATAL(zmq_bind(s->router, "tcp://127.0.0.1:*"), 0);
    size_t len = sizeof(s->endpoint);
    CU_ASSERT_EQUAL_FATAL(zmq_getsockopt(s->router, ZMQ_LAST_ENDPOINT, s->endpoint, &len), 0);
}

static void zap_server_stop(zap_server_t *s)
{
    zmq_close(s->router);
    ms_curve_zap_stop(&s->zap);
    CU_ASSERT_PTR_NULL(s->zap);
    zmq_ctx_term(s->ctx);
    zmq_ctx_term(s->cctx);
    ms_curve_allow_destroy(&s->allow);
}

/* Connects a DEALER (CURVE with kp and server_pub, or plaintext when kp is
 * NULL), sends "hi", and returns the monitor's verdict. */
static int try_client(zap_server_t *s, const ms_curve_keypair_t *kp, const char *server_pub, ms_err_t *err)
{
    void *d = zmq_socket(s->cctx, ZMQ_DEALER);
    int linger = 0;
    zmq_setsockopt(d, ZMQ_LINGER, &linger, sizeof(linger));
    if (kp)
        CU_ASSERT_EQUAL(ms_curve_client_setup(d, kp, server_pub), 0);
    ms_curve_monitor_t *mon = NULL;
    CU_ASSERT_EQUAL_FATAL(ms_curve_monitor_new(s->cctx, d, &mon, err), 0);
    CU_ASSERT_EQUAL_FATAL(zmq_connect(d, s->endpoint), 0);
    zmq_send(d, "hi", 2, ZMQ_DONTWAIT);
    int rc = ms_curve_monitor_wait(mon, s->endpoint, WAIT_MS, WAIT_MS, err);
    ms_curve_monitor_destroy(&mon);
    zmq_close(d);
    return rc;
}

/* True when the router gets "hi" within wait_ms, sent by the key user_id. */
static bool router_got_hi(zap_server_t *s, long wait_ms, const char *user_id)
{
    zmq_pollitem_t it = { .socket = s->router, .events = ZMQ_POLLIN };
    if (zmq_poll(&it, 1, wait_ms) != 1)
        return false;
    char id[256];
    zmq_recv(s->router, id, sizeof(id), 0);
    zmq_msg_t m;
    zmq_msg_init(&m);
    int n = zmq_msg_recv(&m, s->router, 0);
    const char *who = n >= 0 ? zmq_msg_gets(&m, "User-Id") : NULL;
    bool ok = n == 2 && !memcmp(zmq_msg_data(&m), "hi", 2) && who && !strcmp(who, user_id);
    zmq_msg_close(&m);
    return ok;
}

static void test_zap_round_trip(void)
{
    zap_server_t s;
    zap_server_start(&s);
    ms_err_t err = { { 0 } };
    ms_curve_keypair_t client = { CLIENT_PUB, CLIENT_SEC }, stranger, other_server;
    CU_ASSERT_EQUAL_FATAL(ms_curve_keypair_generate(&stranger, &err), 0);
    CU_ASSERT_EQUAL_FATAL(ms_curve_keypair_generate(&other_server, &err), 0);

    CU_ASSERT_EQUAL(try_client(&s, &client, SERVER_PUB, &err), 1);
    CU_ASSERT(router_got_hi(&s, WAIT_MS, CLIENT_PUB));
    CU_ASSERT_EQUAL(s.seen.admitted, 1);
    CU_ASSERT_STRING_EQUAL(s.seen.name, "the-client");
    CU_ASSERT_STRING_EQUAL(s.seen.key, CLIENT_PUB);

    err.msg[0] = '\0';
    CU_ASSERT_EQUAL(try_client(&s, &stranger, SERVER_PUB, &err), -ECONNREFUSED);
    CU_ASSERT(strstr(err.msg, "allowlist") != NULL);
    CU_ASSERT(s.seen.refused >= 1);
    CU_ASSERT_STRING_EQUAL(s.seen.address, "127.0.0.1");
    CU_ASSERT_STRING_EQUAL(s.seen.key, stranger.pub);

    int refused = s.seen.refused;
    err.msg[0] = '\0';
    CU_ASSERT_EQUAL(try_client(&s, NULL, NULL, &err), -ECONNREFUSED);
    CU_ASSERT(strstr(err.msg, "plaintext") != NULL);
    err.msg[0] = '\0';
    CU_ASSERT_EQUAL(try_client(&s, &client, other_server.pub, &err), -ECONNREFUSED);
    CU_ASSERT(strstr(err.msg, "server key") != NULL);
    CU_ASSERT_EQUAL(s.seen.refused, refused); /* neither got as far as ZAP */

    zmq_pollitem_t it = { .socket = s.router, .events = ZMQ_POLLIN };
    CU_ASSERT_EQUAL(zmq_poll(&it, 1, 200), 0); /* nothing of the refused ones came through */
    CU_ASSERT_EQUAL(ms_curve_zap_admitted(s.zap), 1);
    CU_ASSERT(ms_curve_zap_refused(s.zap) >= 1);
    zap_server_stop(&s);
}

static int ms_test_register(void)
{
    CU_pSuite s = CU_add_suite("curve", suite_init, suite_clean);
    if (!s)
        return -1;
    if (!CU_add_test(s, "z85 validity", test_z85_valid) || !CU_add_test(s, "key pair file", test_keypair_load) ||
        !CU_add_test(s, "public key file", test_pubkey_load) || !CU_add_test(s, "keygen files", test_keypair_write) ||
        !CU_add_test(s, "private files", test_read_private) || !CU_add_test(s, "allowlist", test_allow) ||
        !CU_add_test(s, "allowlists together", test_allow_union) ||
        !CU_add_test(s, "allowlist bound", test_allow_too_many) || !CU_add_test(s, "host keys", test_hostkeys) ||
        !CU_add_test(s, "loopback endpoints", test_loopback) ||
        !CU_add_test(s, "ZAP round trip", test_zap_round_trip))
        return -1;
    return 0;
}

#include "cu_main.h"
