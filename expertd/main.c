/* expertd: the expert host daemon. Loads its (layer, expert) slices, then
 * serves ExpertBatch requests until SIGTERM (docs/expertd.md). */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include "config.h"
#include "curve.h"
#include "join.h"
#include "log.h"
#include "notify.h"
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

/* Keys first: a bad key file fails the start before a long load. */
static int load_security(const expertd_config_t *cfg, ms_curve_keypair_t *kp, ms_curve_allow_t **ret_allow,
                         ms_err_t *err)
{
    if (!cfg->key[0]) {
        ms_log_warn("plaintext: links to %s are neither encrypted nor authenticated (loopback only)", cfg->listen);
        return 0;
    }
    int rc = ms_curve_keypair_load(cfg->key, kp, err);
    rc = rc ? rc : ms_curve_allow_load(cfg->allow, ret_allow, err);
    if (!rc)
        ms_log_info("CURVE: this host's public key %s; %zu coordinator keys admitted (%s)", kp->pub,
                    ms_curve_allow_count(*ret_allow), cfg->allow);
    return rc;
}

/* Bytes of memory the kernel says are available now (MemAvailable); 0 when unknown. */
static uint64_t mem_available(void)
{
    FILE *f = fopen("/proc/meminfo", "r");
    if (!f)
        return 0;
    char line[256];
    unsigned long long kib = 0;
    while (fgets(line, sizeof(line), f))
        if (sscanf(line, "MemAvailable: %llu kB", &kib) == 1)
            break;
    fclose(f);
    return (uint64_t)kib * 1024;
}

/* --join: the thread that asks the coordinator to add this host. */
static int start_join(const expertd_config_t *cfg, const expertd_store_t *store, const ms_curve_keypair_t *kp,
                      expertd_join_t **ret_join, ms_err_t *err)
{
    char coord_key[MS_CURVE_Z85_BYTES + 1] = "";
    if (kp && ms_curve_pubkey_load(cfg->coordinator_key, coord_key, err))
        return -EINVAL;
    const ms_hparams_t *hp = expertd_store_hparams(store);
    expertd_join_params_t jp = { .coordinator = cfg->join, .advertise = cfg->advertise[0] ? cfg->advertise : cfg->listen,
                                 .key = kp, .coordinator_key = kp ? coord_key : NULL, .n_layer = hp->n_layer,
                                 .hidden = hp->n_embd, .n_expert = hp->n_expert,
                                 .interval_ms = EXPERTD_JOIN_INTERVAL_MS };
    return expertd_join_start(&jp, ret_join, err);
}

static int run(const expertd_config_t *cfg, int sig_fd)
{
    ms_err_t err = { { 0 } };
    expertd_store_t *store = NULL;
    ms_curve_keypair_t kp;
    ms_curve_allow_t *allow = NULL;
    int rc = load_security(cfg, &kp, &allow, &err);
    expertd_security_t sec = { .key = cfg->key[0] ? &kp : NULL, .allow = allow };
    if (rc) {
        ms_log_error("%s", err.msg);
        return 1;
    }
    ms_log_info("opening %s", cfg->model);
    ms_notify_status("opening %s", cfg->model); /* systemctl status shows where a slow start is */
    rc = expertd_store_open(cfg->model, cfg->experts[0] ? cfg->experts : NULL, &store, &err);
    if (!rc) {
        ms_notify_status("loading expert slices from %s", cfg->model);
        rc = expertd_store_load(store, &err);
    }
    expertd_join_t *join = NULL;
    if (!rc) {
        uint64_t cap = cfg->capacity ? cfg->capacity : mem_available() + expertd_store_bytes(store);
        expertd_store_set_capacity(store, cap);
        ms_log_info("offering %.1f GiB for expert slices%s", (double)cap / 1073741824.0,
                    cfg->capacity ? "" : " (the memory available now; --capacity to say otherwise)");
    }
    if (!rc && cfg->join[0])
        rc = start_join(cfg, store, cfg->key[0] ? &kp : NULL, &join, &err);
    if (!rc)
        rc = expertd_serve(store, cfg->listen, cfg->threads, &sec, sig_fd, &err);
    expertd_join_stop(&join);
    if (rc) {
        ms_log_error("%s", err.msg[0] ? err.msg : strerror(-rc));
        ms_notify_status("failed: %s", err.msg[0] ? err.msg : strerror(-rc));
    }
    expertd_store_destroy(&store);
    ms_curve_allow_destroy(&allow);
    memset(&kp, 0, sizeof(kp)); /* the secret key does not outlive its use */
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
