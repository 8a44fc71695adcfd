/* sd_notify wrappers: with NOTIFY_SOCKET naming a datagram socket this test
 * binds, each call's message arrives exactly as sd_notify(3) defines it;
 * without it nothing is sent; a bad NOTIFY_SOCKET is an error; the watchdog
 * interval and the ping pacing follow WATCHDOG_USEC. */
#include <CUnit/CUnit.h>
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "notify.h"

static char tmpdir[256];
static char sock_path[320];
static int sock_fd = -1;

static int suite_init(void)
{
    const char *base = getenv("TMPDIR");
    snprintf(tmpdir, sizeof(tmpdir), "%s/ms-notify-XXXXXX", base && *base ? base : "/tmp");
    if (!mkdtemp(tmpdir))
        return -1;
    snprintf(sock_path, sizeof(sock_path), "%s/notify.sock", tmpdir);
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    if (strlen(sock_path) >= sizeof(sa.sun_path))
        return -1;
    strcpy(sa.sun_path, sock_path);
    sock_fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (sock_fd < 0 || bind(sock_fd, (struct sockaddr *)&sa, sizeof(sa)) != 0)
        return -1;
    return 0;
}

static int suite_clean(void)
{
    if (sock_fd >= 0)
        close(sock_fd);
    unlink(sock_path);
    rmdir(tmpdir);
    unsetenv("NOTIFY_SOCKET");
    unsetenv("WATCHDOG_USEC");
    return 0;
}

/* One datagram within timeout_ms, NUL-terminated into buf; -1 when none came. */
static int recv_msg(char *buf, size_t cap, int timeout_ms)
{
    struct pollfd p = { .fd = sock_fd, .events = POLLIN };
    if (poll(&p, 1, timeout_ms) != 1)
        return -1;
    ssize_t n = recv(sock_fd, buf, cap - 1, 0);
    if (n < 0)
        return -1;
    buf[n] = '\0';
    return (int)n;
}

static void drain(void)
{
    char buf[1024];
    while (recv_msg(buf, sizeof(buf), 0) >= 0)
        ;
}

static void expect_msg(const char *want)
{
    char buf[1024];
    int n = recv_msg(buf, sizeof(buf), 1000);
    CU_ASSERT_FATAL(n >= 0);
    CU_ASSERT_STRING_EQUAL(buf, want);
}

static void test_messages_arrive(void)
{
    setenv("NOTIFY_SOCKET", sock_path, 1);
    drain();
    CU_ASSERT_EQUAL(ms_notify_ready("serving on tcp://127.0.0.1:5555"), 0);
    expect_msg("READY=1\nSTATUS=serving on tcp://127.0.0.1:5555");
    CU_ASSERT_EQUAL(ms_notify_ready(NULL), 0);
    expect_msg("READY=1");
    CU_ASSERT_EQUAL(ms_notify_status("loading %d of %d slices", 3, 16), 0);
    expect_msg("STATUS=loading 3 of 16 slices");
    CU_ASSERT_EQUAL(ms_notify_watchdog(), 0);
    expect_msg("WATCHDOG=1");
    CU_ASSERT_EQUAL(ms_notify_stopping(), 0);
    expect_msg("STOPPING=1");
}

/* A newline in the text (an endpoint or path from a config) must not add a
 * field of its own; long text is cut to the documented bound. */
static void test_status_one_line_and_bounded(void)
{
    setenv("NOTIFY_SOCKET", sock_path, 1);
    drain();
    CU_ASSERT_EQUAL(ms_notify_status("model %s", "/srv/a\nREADY=1\r"), 0);
    expect_msg("STATUS=model /srv/a READY=1 ");
    CU_ASSERT_EQUAL(ms_notify_ready("x\ny"), 0);
    expect_msg("READY=1\nSTATUS=x y");

    char longtext[2 * MS_NOTIFY_STATUS_BYTES_MAX], want[2 * MS_NOTIFY_STATUS_BYTES_MAX];
    memset(longtext, 'a', sizeof(longtext) - 1);
    longtext[sizeof(longtext) - 1] = '\0';
    CU_ASSERT_EQUAL(ms_notify_status("%s", longtext), 0);
    /* "STATUS=" then exactly MS_NOTIFY_STATUS_BYTES_MAX - 1 bytes of text */
    snprintf(want, sizeof(want), "STATUS=%.*s", MS_NOTIFY_STATUS_BYTES_MAX - 1, longtext);
    expect_msg(want);
    CU_ASSERT_EQUAL(strlen(want), 7 + MS_NOTIFY_STATUS_BYTES_MAX - 1);
}

static void test_unset_is_noop(void)
{
    drain();
    unsetenv("NOTIFY_SOCKET");
    setenv("WATCHDOG_USEC", "2000000", 1);
    CU_ASSERT_EQUAL(ms_notify_ready("x"), 0);
    CU_ASSERT_EQUAL(ms_notify_status("y %d", 1), 0);
    CU_ASSERT_EQUAL(ms_notify_watchdog(), 0);
    CU_ASSERT_EQUAL(ms_notify_stopping(), 0);
    CU_ASSERT_EQUAL(ms_notify_watchdog_usec(), 0);
    char buf[256];
    CU_ASSERT_EQUAL(recv_msg(buf, sizeof(buf), 200), -1);
    setenv("NOTIFY_SOCKET", "", 1); /* empty counts as unset */
    CU_ASSERT_EQUAL(ms_notify_watchdog(), 0);
    CU_ASSERT_EQUAL(recv_msg(buf, sizeof(buf), 100), -1);
    unsetenv("WATCHDOG_USEC");
}

static void test_bad_socket_is_error(void)
{
    char gone[400];
    snprintf(gone, sizeof(gone), "%s/nobody.sock", tmpdir);
    setenv("NOTIFY_SOCKET", gone, 1);
    CU_ASSERT(ms_notify_ready("x") < 0);
    CU_ASSERT(ms_notify_watchdog() < 0);
    setenv("NOTIFY_SOCKET", "relative/path", 1); /* must be absolute or @abstract */
    CU_ASSERT_EQUAL(ms_notify_status("x"), -EINVAL);
    unsetenv("NOTIFY_SOCKET");
}

static void test_watchdog_usec(void)
{
    setenv("NOTIFY_SOCKET", sock_path, 1);
    setenv("WATCHDOG_USEC", "3000000", 1);
    CU_ASSERT_EQUAL(ms_notify_watchdog_usec(), 3000000u);
    char pid[32];
    snprintf(pid, sizeof(pid), "%ld", (long)getpid());
    setenv("WATCHDOG_PID", pid, 1);
    CU_ASSERT_EQUAL(ms_notify_watchdog_usec(), 3000000u);
    snprintf(pid, sizeof(pid), "%ld", (long)getpid() + 1); /* another process's watchdog */
    setenv("WATCHDOG_PID", pid, 1);
    CU_ASSERT_EQUAL(ms_notify_watchdog_usec(), 0);
    unsetenv("WATCHDOG_PID");
    const char *bad[] = { "abc", "0", "-5", "" };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        setenv("WATCHDOG_USEC", bad[i], 1);
        CU_ASSERT_EQUAL(ms_notify_watchdog_usec(), 0);
    }
    unsetenv("WATCHDOG_USEC");
    CU_ASSERT_EQUAL(ms_notify_watchdog_usec(), 0);
}

static void sleep_ms(int ms)
{
    struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
    nanosleep(&ts, NULL);
}

/* WATCHDOG_USEC 200 ms: a ping is due every 100 ms, the poll timeout never
 * exceeds what is left of the period, and a skipped ping does not make the
 * pacer due again at once (the loop must not spin). */
static void test_pacer(void)
{
    setenv("NOTIFY_SOCKET", sock_path, 1);
    setenv("WATCHDOG_USEC", "200000", 1);
    ms_notify_pacer_t p;
    ms_notify_pacer_init(&p);
    CU_ASSERT_EQUAL(p.period_us, 100000u);
    int t = ms_notify_pacer_timeout_ms(&p, -1);
    CU_ASSERT(t >= 90 && t <= 100);
    CU_ASSERT_EQUAL(ms_notify_pacer_timeout_ms(&p, 20), 20);
    CU_ASSERT_FALSE(ms_notify_pacer_due(&p));
    sleep_ms(110);
    CU_ASSERT_EQUAL(ms_notify_pacer_timeout_ms(&p, -1), 0);
    CU_ASSERT_TRUE(ms_notify_pacer_due(&p));
    CU_ASSERT_FALSE(ms_notify_pacer_due(&p));
    t = ms_notify_pacer_timeout_ms(&p, 5000);
    CU_ASSERT(t >= 90 && t <= 100);

    unsetenv("WATCHDOG_USEC"); /* no watchdog: the loop's own wait, never due */
    ms_notify_pacer_init(&p);
    CU_ASSERT_EQUAL(p.period_us, 0u);
    CU_ASSERT_EQUAL(ms_notify_pacer_timeout_ms(&p, -1), -1);
    CU_ASSERT_EQUAL(ms_notify_pacer_timeout_ms(&p, 250), 250);
    sleep_ms(5);
    CU_ASSERT_FALSE(ms_notify_pacer_due(&p));

    setenv("WATCHDOG_USEC", "200000", 1); /* not under systemd: no watchdog either */
    unsetenv("NOTIFY_SOCKET");
    ms_notify_pacer_init(&p);
    CU_ASSERT_EQUAL(ms_notify_pacer_timeout_ms(&p, -1), -1);
    unsetenv("WATCHDOG_USEC");
}

static int ms_test_register(void)
{
    CU_pSuite s = CU_add_suite("notify", suite_init, suite_clean);
    if (!s)
        return CU_get_error();
    if (!CU_add_test(s, "messages arrive on NOTIFY_SOCKET", test_messages_arrive) ||
        !CU_add_test(s, "STATUS is one bounded line", test_status_one_line_and_bounded) ||
        !CU_add_test(s, "NOTIFY_SOCKET unset: no-op", test_unset_is_noop) ||
        !CU_add_test(s, "bad NOTIFY_SOCKET: error", test_bad_socket_is_error) ||
        !CU_add_test(s, "watchdog interval from WATCHDOG_USEC", test_watchdog_usec) ||
        !CU_add_test(s, "pings paced at half the interval", test_pacer))
        return CU_get_error();
    return 0;
}

#include "cu_main.h"
