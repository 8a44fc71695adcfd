/* moeshard chat: an interactive conversation with a running coordinator.
 * Each line read is a user turn; the whole conversation is rendered with
 * the model's chat template and sent as one Generate; the reply streams
 * back and joins the conversation. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "chat.h"
#include "cli.h"
#include "client.h"
#include "client_wire.h"
#include "limits.h"
#include "sampler.h"

#define CMD "chat"
#define CHAT_N_PREDICT_DEFAULT 256
#define CHAT_TIMEOUT_MS_DEFAULT 30000
#define CHAT_TIMEOUT_MS_MAX COORD_CLIENT_TIMEOUT_MS_MAX
#define CHAT_CANCEL_WAIT_MS 2000  /* for the coordinator to confirm a cancel */

typedef struct {
    const char *server;
    const char *system;
    ms_chat_family_t family;
    bool family_set;           /* by --template, or learnt from the coordinator's status */
    int64_t n_predict;
    int64_t timeout_ms;
    ms_sampler_params_t sp;
    bool seed_set;
    coord_client_sec_t sec;    /* --key, --server-key, --plaintext */
} chat_opts_t;

/* The conversation so far: messages point into texts this struct owns. */
typedef struct {
    chat_opts_t o;
    ms_chat_msg_t *msgs;
    size_t n_msgs;
    coord_client_t *cl;
    int intr_pipe[2];          /* written by the SIGINT handler, watched by the client's waits */
    char *reply;               /* the reply being streamed */
    size_t reply_len, reply_cap;
} chat_t;

static int chat_intr_wr = -1; /* the write end of chat_t.intr_pipe */

/* A byte on the pipe wakes a wait at once, where a flag would be seen only
 * after the wait ends; errno is kept for the getline it interrupts. */
static void on_sigint(int sig)
{
    (void)sig;
    int saved = errno;
    if (chat_intr_wr >= 0) {
        ssize_t n = write(chat_intr_wr, "", 1);
        (void)n; /* a full pipe already holds a pending Ctrl-C */
    }
    errno = saved;
}

static void chat_help(void)
{
    ms_sampler_params_t d = ms_sampler_defaults();
    printf("usage: moeshard chat --server tcp://HOST:PORT [options]\n\n"
           "Talks with the model served by 'moeshard serve'. Each line on stdin is one user\n"
           "message (a '> ' prompt is shown when stdin is a terminal); the reply streams to\n"
           "stdout and is kept in the conversation. Ctrl-C stops the reply being written (the\n"
           "coordinator stops generating it); Ctrl-D ends the chat.\n\n"
           "  -S, --server EP          the coordinator's client endpoint (required)\n"
           "      --template F         chat template family: chatml, mistral, deepseek or qwen3\n"
           "                           (default: the served model's, as the coordinator reports it;\n"
           "                           chatml when it reports none)\n"
           "      --system TEXT        a system message that opens the conversation\n"
           "  -n, --n-predict N        tokens per reply at most (default %d)\n"
           "      --temp T             temperature; 0 = greedy (default %.2f)\n"
           "      --top-k K            (default %d)   --top-p P (default %.2f)   --min-p P (default %.2f)\n"
           "      --repeat-penalty R   (default %.2f)   --repeat-last-n N (default %d)\n"
           "  -s, --seed S             random seed of every reply (default: random)\n"
           "      --timeout-ms N       give up when the coordinator is silent this long (default %d)\n"
           "      --key FILE           this client's key pair ('moeshard keygen'; docs/security.md)\n"
           "      --server-key FILE    the coordinator's public key\n"
           "      --plaintext          no encryption: only for a coordinator on this machine (loopback)\n"
           "  -h, --help               this help\n",
           CHAT_N_PREDICT_DEFAULT, d.temp, d.top_k, d.top_p, d.min_p, d.repeat_penalty, d.repeat_last_n,
           CHAT_TIMEOUT_MS_DEFAULT);
}

enum { OPT_TEMPLATE = 1000, OPT_SYSTEM, OPT_TEMP, OPT_TOPK, OPT_TOPP, OPT_MINP, OPT_REPPEN, OPT_REPN, OPT_TIMEOUT,
       OPT_KEY, OPT_SERVER_KEY, OPT_PLAINTEXT };

static bool parse_family(const char *s, ms_chat_family_t *ret)
{
    if (ms_chat_family_parse(s, ret) == 0)
        return true;
    coord_usage_error(CMD, "--template expects chatml, mistral, deepseek or qwen3, not '%s'", s);
    return false;
}

/* One option; false after printing a usage error. */
static bool parse_opt(chat_opts_t *o, int c, const char *arg)
{
    int64_t v;
    bool ok = true;
    switch (c) {
    case 'S': o->server = arg; break;
    case OPT_TEMPLATE: ok = o->family_set = parse_family(arg, &o->family); break;
    case OPT_SYSTEM: o->system = arg; break;
    case 'n': ok = coord_parse_i64(CMD, "--n-predict", arg, 1, MS_CONTEXT_MAX, &o->n_predict); break;
    case OPT_TEMP: ok = coord_parse_f32(CMD, "--temp", arg, 0, 100, &o->sp.temp); break;
    case OPT_TOPK: ok = coord_parse_i64(CMD, "--top-k", arg, 0, MS_VOCAB_MAX, &v); o->sp.top_k = (int32_t)v; break;
    case OPT_TOPP: ok = coord_parse_f32(CMD, "--top-p", arg, 1e-6f, 1, &o->sp.top_p); break;
    case OPT_MINP: ok = coord_parse_f32(CMD, "--min-p", arg, 0, 0.999999f, &o->sp.min_p); break;
    case OPT_REPPEN: ok = coord_parse_f32(CMD, "--repeat-penalty", arg, 1e-3f, 100, &o->sp.repeat_penalty); break;
    case OPT_REPN: ok = coord_parse_i64(CMD, "--repeat-last-n", arg, 0, MS_CONTEXT_MAX, &v); o->sp.repeat_last_n = (int32_t)v; break;
    case 's': ok = coord_parse_i64(CMD, "--seed", arg, 0, INT64_MAX, &v); o->sp.seed = (uint64_t)v; o->seed_set = true; break;
    case OPT_TIMEOUT: ok = coord_parse_i64(CMD, "--timeout-ms", arg, 1, CHAT_TIMEOUT_MS_MAX, &o->timeout_ms); break;
    case OPT_KEY: o->sec.key_file = arg; break;
    case OPT_SERVER_KEY: o->sec.server_key_file = arg; break;
    case OPT_PLAINTEXT: o->sec.plaintext = true; break;
    default: ok = false; break;
    }
    return ok;
}

/* Returns -1 to continue, or an exit status. */
static int parse_opts(int argc, char **argv, chat_opts_t *o)
{
    static const struct option longopts[] = {
        { "server", required_argument, 0, 'S' },     { "template", required_argument, 0, OPT_TEMPLATE },
        { "system", required_argument, 0, OPT_SYSTEM }, { "n-predict", required_argument, 0, 'n' },
        { "temp", required_argument, 0, OPT_TEMP },  { "top-k", required_argument, 0, OPT_TOPK },
        { "top-p", required_argument, 0, OPT_TOPP }, { "min-p", required_argument, 0, OPT_MINP },
        { "repeat-penalty", required_argument, 0, OPT_REPPEN },
        { "repeat-last-n", required_argument, 0, OPT_REPN },
        { "seed", required_argument, 0, 's' },       { "timeout-ms", required_argument, 0, OPT_TIMEOUT },
        { "key", required_argument, 0, OPT_KEY },    { "server-key", required_argument, 0, OPT_SERVER_KEY },
        { "plaintext", no_argument, 0, OPT_PLAINTEXT },
        { "help", no_argument, 0, 'h' },             { 0, 0, 0, 0 },
    };
    opterr = 0;
    optind = 1;
    for (int c; (c = getopt_long(argc, argv, ":S:n:s:h", longopts, NULL)) != -1;) {
        if (c == 'h') {
            chat_help();
            return COORD_EXIT_OK;
        }
        if (c == ':' || c == '?') {
            coord_usage_error(CMD, c == ':' ? "option '%s' needs a value" : "unknown option '%s'", argv[optind - 1]);
            return COORD_EXIT_USAGE;
        }
        if (!parse_opt(o, c, optarg))
            return COORD_EXIT_USAGE;
    }
    if (optind < argc) {
        coord_usage_error(CMD, "unexpected argument '%s' (messages are read from stdin)", argv[optind]);
        return COORD_EXIT_USAGE;
    }
    if (!o->server) {
        coord_usage_error(CMD, "--server is required");
        return COORD_EXIT_USAGE;
    }
    return -1;
}

/* ------------------------------------------------------- the conversation */

static void chat_release(chat_t *c)
{
    for (size_t i = 0; i < c->n_msgs; i++)
        free((char *)c->msgs[i].content);
    free(c->msgs);
    free(c->reply);
    coord_client_destroy(&c->cl);
    chat_intr_wr = -1;
    for (int i = 0; i < 2; i++)
        if (c->intr_pipe[i] >= 0)
            close(c->intr_pipe[i]);
}

/* Appends a message holding a copy of text[0..len). */
static int chat_push(chat_t *c, const char *role, const char *text, size_t len)
{
    if (c->n_msgs >= MS_CHAT_MESSAGES_MAX)
        return -E2BIG;
    ms_chat_msg_t *m = realloc(c->msgs, (c->n_msgs + 1) * sizeof(*m));
    if (!m)
        return -ENOMEM;
    c->msgs = m;
    char *copy = strndup(text, len);
    if (!copy)
        return -ENOMEM;
    c->msgs[c->n_msgs++] = (ms_chat_msg_t){ role, copy };
    return 0;
}

static void chat_pop(chat_t *c)
{
    free((char *)c->msgs[--c->n_msgs].content);
}

static int reply_append(chat_t *c, const char *s, size_t n)
{
    if (n > MS_CW_PROMPT_BYTES_MAX - c->reply_len)
        return -E2BIG;
    if (c->reply_len + n + 1 > c->reply_cap) {
        size_t cap = c->reply_cap ? c->reply_cap : 4096;
        while (cap < c->reply_len + n + 1)
            cap *= 2;
        char *r = realloc(c->reply, cap);
        if (!r)
            return -ENOMEM;
        c->reply = r;
        c->reply_cap = cap;
    }
    memcpy(c->reply + c->reply_len, s, n);
    c->reply_len += n;
    c->reply[c->reply_len] = '\0';
    return 0;
}

/* ------------------------------------------------------------ the wire */

static int chat_connect(chat_t *c)
{
    if (pipe2(c->intr_pipe, O_CLOEXEC | O_NONBLOCK)) {
        int rc = -errno;
        fprintf(stderr, "moeshard chat: cannot watch for Ctrl-C: %s\n", strerror(-rc));
        return rc;
    }
    chat_intr_wr = c->intr_pipe[1];
    ms_err_t err = { { 0 } };
    int rc = coord_client_new(c->o.server, &c->o.sec, c->o.timeout_ms, c->intr_pipe[0], &c->cl, &err);
    if (rc)
        fprintf(stderr, "moeshard chat: %s%s\n", rc == -EPERM ? "" : "cannot connect: ", err.msg);
    return rc;
}

static int send_generate(chat_t *c, const char *prompt, uint64_t *ret_id)
{
    const ms_sampler_params_t *sp = &c->o.sp;
    ms_cw_generate_t g = { .prompt = prompt, .prompt_len = strlen(prompt), .n_predict = (int32_t)c->o.n_predict,
                           .temp = sp->temp, .top_p = sp->top_p, .min_p = sp->min_p,
                           .repeat_penalty = sp->repeat_penalty, .top_k = sp->top_k,
                           .repeat_last_n = sp->repeat_last_n, .seed = sp->seed };
    ms_err_t err = { { 0 } };
    int rc = coord_client_send_generate(c->cl, &g, ret_id, &err);
    if (rc && rc != -EINTR)
        fprintf(stderr, "moeshard chat: cannot send the request (%zu prompt bytes): %s\n", g.prompt_len,
                err.msg[0] ? err.msg : strerror(-rc));
    return rc;
}

/* Reports a wait that failed (not by Ctrl-C); returns rc. */
static int wait_failed(const chat_t *c, int rc, const ms_err_t *err)
{
    if (rc == -ETIMEDOUT)
        fprintf(stderr, "\nmoeshard chat: no word from %s for %" PRId64 " ms; is 'moeshard serve' running there?\n",
                c->o.server, c->o.timeout_ms);
    else if (rc == -EPROTO)
        fprintf(stderr, "moeshard chat: bad reply from %s: %s\n", c->o.server, err->msg);
    else
        fprintf(stderr, "moeshard chat: %s\n", err->msg);
    return rc;
}

/* After Ctrl-C: asks the coordinator to stop and waits briefly for its word. */
static void cancel_reply(chat_t *c, uint64_t id)
{
    ms_err_t err = { { 0 } };
    if (coord_client_cancel(c->cl, id, CHAT_CANCEL_WAIT_MS, &err) == -EPROTO)
        wait_failed(c, -EPROTO, &err);
}

/* Without --template: the family the coordinator reports for its model,
 * chatml (with a note) when it reports none or one this client lacks.
 * 0, or -errno of a failed query (reported). */
static int learn_family(chat_t *c)
{
    ms_cw_msg_t msg;
    ms_err_t err = { { 0 } };
    int rc = coord_client_status(c->cl, &msg, &err);
    if (rc == -EINTR) {
        fprintf(stderr, "\n[cancelled]\n");
        return rc;
    }
    if (rc && rc != -EREMOTEIO)
        return wait_failed(c, rc, &err);
    const char *name = rc ? "" : msg.status.chat_family;
    c->o.family = MS_CHAT_CHATML;
    if (rc)
        fprintf(stderr, "moeshard chat: the coordinator did not say which chat template its model uses (%s); "
                        "using chatml (choose with --template)\n", err.msg);
    else if (!name[0])
        fprintf(stderr, "moeshard chat: the served model has no chat template moeshard recognises; "
                        "using chatml (choose with --template)\n");
    else if (ms_chat_family_parse(name, &c->o.family))
        fprintf(stderr, "moeshard chat: the served model's chat template family '%s' is unknown to this client; "
                        "using chatml (choose with --template)\n", name);
    c->o.family_set = true;
    if (!rc)
        ms_cw_msg_clear(&msg);
    return 0;
}

/* One event: text is printed and kept. Returns 1 when the reply is
 * complete, 0 to keep reading, or -errno (message printed). */
static int on_message(chat_t *c, const ms_cw_msg_t *msg)
{
    if (msg->kind != MS_CW_ERROR && msg->kind != MS_CW_EVENT) {
        fprintf(stderr, "moeshard chat: bad reply from %s: a message of kind %d to Generate\n", c->o.server,
                (int)msg->kind);
        return -EPROTO;
    }
    if (msg->kind == MS_CW_ERROR) {
        /* a refusal ends this turn only, whatever its code */
        fprintf(stderr, "moeshard chat: the coordinator refused the request: %s\n", msg->error.message);
        return -EIO;
    }
    const ms_cw_event_t *ev = &msg->ev;
    switch (ev->kind) {
    case MS_CW_EV_TEXT:
        fwrite(ev->text, 1, ev->len, stdout);
        fflush(stdout);
        return reply_append(c, ev->text, ev->len);
    case MS_CW_EV_DONE: return 1;
    case MS_CW_EV_ERROR:
        fprintf(stderr, "moeshard chat: generation failed: %s\n", ev->message);
        return -EIO;
    default: return 0; /* accepted */
    }
}

/* Streams the reply of request id into c->reply. 0, -EINTR (cancelled),
 * -ETIMEDOUT or another -errno, each already reported. */
static int stream_reply(chat_t *c, uint64_t id)
{
    c->reply_len = 0;
    for (;;) {
        ms_cw_msg_t msg;
        ms_err_t err = { { 0 } };
        int rc = coord_client_recv(c->cl, id, &msg, &err);
        if (rc == -EINTR) {
            cancel_reply(c, id);
            fprintf(stderr, "\n[reply cancelled]\n");
            return rc;
        }
        if (rc)
            return wait_failed(c, rc, &err);
        rc = on_message(c, &msg);
        ms_cw_msg_clear(&msg);
        if (rc)
            return rc > 0 ? 0 : rc;
    }
}

/* One user turn: render, send, stream, keep. A refused or cancelled turn
 * leaves the conversation as it was. Returns 0 or -errno; -ETIMEDOUT and
 * -EPROTO end the chat, the others only the turn. */
static int chat_turn(chat_t *c, const char *line, size_t len)
{
    int rc = c->o.family_set ? 0 : learn_family(c);
    if (rc)
        return rc;
    rc = chat_push(c, "user", line, len);
    if (rc) {
        fprintf(stderr, "moeshard chat: the conversation is full (%d messages); start a new chat\n",
                MS_CHAT_MESSAGES_MAX);
        return rc;
    }
    char *prompt = NULL;
    ms_err_t err = { { 0 } };
    rc = ms_chat_render(c->o.family, c->msgs, c->n_msgs, NULL, &prompt, &err);
    uint64_t id = 0;
    if (rc)
        fprintf(stderr, "moeshard chat: %s\n", err.msg);
    else
        rc = send_generate(c, prompt, &id);
    free(prompt);
    if (!rc)
        rc = stream_reply(c, id);
    fputc('\n', stdout);
    fflush(stdout);
    if (!rc)
        rc = chat_push(c, "assistant", c->reply ? c->reply : "", c->reply_len);
    if (rc)
        chat_pop(c);
    return rc;
}

static int chat_loop(chat_t *c)
{
    bool tty = isatty(STDIN_FILENO);
    char *line = NULL;
    size_t cap = 0;
    int rc = 0;
    for (;;) {
        if (tty) {
            fputs("> ", stdout);
            fflush(stdout);
        }
        errno = 0;
        ssize_t n = getline(&line, &cap, stdin);
        if (n < 0) {
            rc = errno == EINTR ? -EINTR : 0; /* Ctrl-C at the prompt, or Ctrl-D */
            break;
        }
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
            line[--n] = '\0';
        if (n == 0)
            continue;
        rc = chat_turn(c, line, (size_t)n);
        if (rc == -ETIMEDOUT || rc == -EPROTO)
            break;
        rc = 0;
    }
    if (tty && rc == 0)
        fputc('\n', stdout);
    free(line);
    return rc;
}

int coord_cmd_chat(int argc, char **argv)
{
    chat_t c = { .o = { .family = MS_CHAT_CHATML, .n_predict = CHAT_N_PREDICT_DEFAULT,
                        .timeout_ms = CHAT_TIMEOUT_MS_DEFAULT, .sp = ms_sampler_defaults() },
                 .intr_pipe = { -1, -1 } };
    int status = parse_opts(argc, argv, &c.o);
    if (status >= 0)
        return status;
    if (!c.o.seed_set && getrandom(&c.o.sp.seed, sizeof(c.o.sp.seed), 0) != sizeof(c.o.sp.seed))
        c.o.sp.seed = (uint64_t)time(NULL);
    c.o.sp.seed &= INT64_MAX;
    /* no SA_RESTART: Ctrl-C must interrupt a read at the prompt */
    struct sigaction sa = { .sa_handler = on_sigint };
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    int rc = chat_connect(&c);
    if (!rc && c.o.system)
        rc = chat_push(&c, "system", c.o.system, strlen(c.o.system));
    if (!rc)
        rc = chat_loop(&c);
    chat_release(&c);
    if (rc == -EINTR)
        return 130;
    if (rc == -EPERM)
        return COORD_EXIT_USAGE; /* no usable keys, or --plaintext beyond loopback */
    return rc ? COORD_EXIT_FAIL : COORD_EXIT_OK;
}
