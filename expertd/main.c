/* expertd: the expert host daemon. Loads its (layer, expert) slices, then
 * serves ExpertBatch requests until SIGTERM (docs/expertd.md). */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include "config.h"
#include "log.h"
#include "server.h"
#include "store.h"

/* Signals are read from a signalfd in the serving loop, so none is handled
 * asynchronously; blocked before any thread starts so every thread inherits it. */
static int block_signals(void)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    if (sigprocmask(SIG_BLOCK, &set, NULL) != 0)
        return -errno;
    int fd = signalfd(-1, &set, SFD_CLOEXEC);
    return fd < 0 ? -errno : fd;
}

static int run(const expertd_config_t *cfg, int sig_fd)
{
    ms_err_t err = { { 0 } };
    expertd_store_t *store = NULL;
    ms_log_info("opening %s", cfg->model);
    int rc = expertd_store_open(cfg->model, cfg->experts[0] ? cfg->experts : NULL, &store, &err);
    if (!rc)
        rc = expertd_store_load(store, &err);
    if (!rc)
        rc = expertd_serve(store, cfg->listen, cfg->threads, sig_fd, &err);
    if (rc)
        ms_log_error("%s", err.msg[0] ? err.msg : strerror(-rc));
    expertd_store_destroy(&store);
    return rc ? 1 : 0;
}

int main(int argc, char **argv)
{
    expertd_config_t cfg;
    ms_err_t err = { { 0 } };
    expertd_config_defaults(&cfg);
    int rc = expertd_config_parse_args(&cfg, argc, argv, &err);
    if (rc == 1)
        return 0;
    if (rc == 3) {
        fprintf(stderr, "expertd: %s\n", err.msg);
        return 2;
    }
    if (rc)
        return 2;
    ms_log_set_level(cfg.log_level);
    int sig_fd = block_signals();
    if (sig_fd < 0) {
        ms_log_error("cannot set up signal handling: %s", strerror(-sig_fd));
        return 1;
    }
    rc = run(&cfg, sig_fd);
    close(sig_fd);
    return rc;
}
