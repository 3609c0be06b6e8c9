/* Helpers shared by the C test programs: checks, a tiny HTTP/1.1 client for the test token
 * server over loopback (no curl dependency), core's request decisions for it (the header
 * that carries a token, the verdict on a response), and servers started as child processes. */
#ifndef TOKENLEASE_TEST_SUPPORT_H
#define TOKENLEASE_TEST_SUPPORT_H

#define _POSIX_C_SOURCE 200809L

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "tokenlease.h"

static int g_failures = 0;
static int g_checks = 0;

#define CHECK(cond)                                                                     \
    do {                                                                                \
        g_checks++;                                                                     \
        if (!(cond)) {                                                                  \
            g_failures++;                                                               \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);    \
        }                                                                               \
    } while (0)

#define CHECK_RC(expr, expected)                                                        \
    do {                                                                                \
        tl_result rc_ = (expr);                                                         \
        g_checks++;                                                                     \
        if (rc_ != (tl_result)(expected)) {                                             \
            g_failures++;                                                               \
            fprintf(stderr, "%s:%d: %s returned %s (%u), expected %s\n", __FILE__,      \
                    __LINE__, #expr, tl_result_name(rc_), (unsigned)rc_,                \
                    tl_result_name(expected));                                          \
        }                                                                               \
    } while (0)

/* Runs one test case and prints "ok NAME" / "FAIL NAME" (scripts/test-c counts these). */
#define RUN(test)                                                                       \
    do {                                                                                \
        int before_ = g_failures;                                                       \
        test();                                                                         \
        printf("%s %s\n", g_failures == before_ ? "ok" : "FAIL", #test);                \
        fflush(stdout);                                                                 \
    } while (0)

static inline int finish(void) {
    printf("# %d checks, %d failed\n", g_checks, g_failures);
    return g_failures == 0 ? 0 : 1;
}

static inline void sleep_ms(long ms) {
    struct timespec ts;
    ts.tv_sec = ms / 1000;
    ts.tv_nsec = (ms % 1000) * 1000000L;
    nanosleep(&ts, NULL);
}

static inline const char *server_url(void) {
    const char *url = getenv("TOKENLEASE_TEST_SERVER_URL");
    if (url == NULL) {
        fprintf(stderr, "TOKENLEASE_TEST_SERVER_URL is not set\n");
        exit(2);
    }
    return url;
}

static inline int server_port(void) {
    const char *colon = strrchr(server_url(), ':');
    return colon ? atoi(colon + 1) : 0;
}

/* One HTTP/1.1 request to 127.0.0.1:port; returns the status, copies the body. */
static inline int http_to(int port, const char *method, const char *path, const char *extra_headers,
                   const char *content_type, const char *body, char *out, size_t out_len) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((unsigned short)port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        close(fd);
        return -1;
    }
    char request[4096];
    int n = snprintf(request, sizeof request,
                     "%s %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nConnection: close\r\n%s"
                     "Content-Type: %s\r\nContent-Length: %zu\r\n\r\n%s",
                     method, path, port, extra_headers ? extra_headers : "",
                     content_type ? content_type : "application/json",
                     body ? strlen(body) : (size_t)0, body ? body : "");
    if (n <= 0 || (size_t)n >= sizeof request || write(fd, request, (size_t)n) != n) {
        close(fd);
        return -1;
    }
    static char response[65536];
    size_t got = 0;
    ssize_t r;
    while (got < sizeof response - 1 &&
           (r = read(fd, response + got, sizeof response - 1 - got)) > 0) {
        got += (size_t)r;
    }
    close(fd);
    response[got] = '\0';
    int status = -1;
    if (sscanf(response, "HTTP/1.1 %d", &status) != 1) return -1;
    if (out != NULL && out_len > 0) {
        const char *start = strstr(response, "\r\n\r\n");
        snprintf(out, out_len, "%s", start ? start + 4 : "");
    }
    return status;
}

/* A whole HTTP response: status, headers (as tl_header, for tl_manager_judge_response) and
 * body, parsed in place in `raw`. */
#define HTTP_MAX_HEADERS 64
struct http_answer {
    int status;
    char raw[65536];
    tl_header headers[HTTP_MAX_HEADERS];
    size_t header_count;
    const char *body; /* NUL-terminated */
    size_t body_len;
};

/* One HTTP/1.1 request to 127.0.0.1:port with `extra_headers` (full lines, each ending in
 * CRLF) and a body of `body_len` bytes; fills `answer`. Returns the status, or -1 on a
 * connection or parse failure. */
static inline int http_exchange_to(int port, const char *method, const char *path,
                                   const char *extra_headers, const char *content_type,
                                   const char *body, size_t body_len, struct http_answer *answer) {
    memset(answer, 0, sizeof *answer);
    answer->status = -1;
    answer->body = "";
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((unsigned short)port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        close(fd);
        return -1;
    }
    char head[8192];
    int n = snprintf(head, sizeof head,
                     "%s %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nConnection: close\r\n%s"
                     "Content-Type: %s\r\nContent-Length: %zu\r\n\r\n",
                     method, path, port, extra_headers ? extra_headers : "",
                     content_type ? content_type : "application/json", body_len);
    if (n <= 0 || (size_t)n >= sizeof head || write(fd, head, (size_t)n) != n ||
        (body_len > 0 && write(fd, body, body_len) != (ssize_t)body_len)) {
        close(fd);
        return -1;
    }
    size_t got = 0;
    ssize_t r;
    while (got < sizeof answer->raw - 1 &&
           (r = read(fd, answer->raw + got, sizeof answer->raw - 1 - got)) > 0) {
        got += (size_t)r;
    }
    close(fd);
    answer->raw[got] = '\0';
    char *end = strstr(answer->raw, "\r\n\r\n");
    if (end == NULL || sscanf(answer->raw, "HTTP/1.1 %d", &answer->status) != 1) return -1;
    *end = '\0';
    answer->body = end + 4;
    answer->body_len = got - (size_t)(answer->body - answer->raw);
    char *line = strstr(answer->raw, "\r\n");
    while (line != NULL && answer->header_count < HTTP_MAX_HEADERS) {
        *line = '\0';
        line += 2;
        char *next = strstr(line, "\r\n");
        char *colon = strchr(line, ':');
        if (colon != NULL) {
            *colon = '\0';
            char *value = colon + 1;
            while (*value == ' ') value++;
            answer->headers[answer->header_count].name = line;
            answer->headers[answer->header_count].value = value;
            answer->header_count++;
        }
        line = next;
    }
    return answer->status;
}

/* http_exchange_to the test token server. */
static inline int http_exchange(const char *method, const char *path, const char *extra_headers,
                                const char *content_type, const char *body, size_t body_len,
                                struct http_answer *answer) {
    return http_exchange_to(server_port(), method, path, extra_headers, content_type, body,
                            body_len, answer);
}

/* Sends one HTTP request to the test token server; returns the status code and copies the
 * body into `body` (NUL-terminated, truncated to `body_len`). -1 on connection failure. */
static inline int http_request(const char *method, const char *path, const char *bearer,
                               const char *json, char *body, size_t body_len) {
    char auth[2048] = "";
    if (bearer != NULL) snprintf(auth, sizeof auth, "Authorization: Bearer %s\r\n", bearer);
    return http_to(server_port(), method, path, auth, "application/json", json, body, body_len);
}

/* A numeric field of the server's /stats JSON (e.g. "token_requests"); -1 on failure. */
static inline long server_stat(const char *field) {
    char body[8192];
    if (http_request("GET", "/stats", NULL, NULL, body, sizeof body) != 200) return -1;
    char pattern[128];
    snprintf(pattern, sizeof pattern, "\"%s\":", field);
    const char *at = strstr(body, pattern);
    return at ? strtol(at + strlen(pattern), NULL, 10) : -1;
}

/* tl_manager_from_config; on failure NULL, with the result and detail on stderr. */
static inline tl_manager *manager_from(const char *config) {
    tl_manager *mgr = NULL;
    tl_result rc = tl_manager_from_config(config, &mgr);
    if (rc != TL_OK) {
        char detail[512];
        size_t written = 0;
        tl_manager_last_error(NULL, detail, sizeof detail, &written);
        fprintf(stderr, "tl_manager_from_config: %s: %s\n", tl_result_name(rc), detail);
    }
    return mgr;
}

/* POST /control with a JSON body; returns the HTTP status. */
static inline int server_control(const char *json) {
    return http_request("POST", "/control", NULL, json, NULL, 0);
}

/* GET /api/resource with a bearer token; returns the HTTP status (200 or 401). */
static inline int server_resource(const char *token) {
    return http_request("GET", "/api/resource", token, NULL, NULL, 0);
}

/* A config for the test server, with a unique key so every manager starts cold. */
static inline void server_config(char *out, size_t len, const char *key, const char *secret,
                          const char *policy) {
    snprintf(out, len,
             "{\"key\": \"%s\", \"source\": {\"type\": \"oauth2_client_credentials\","
             " \"token_url\": \"%s/oauth/token\", \"client_id\": \"demo-client\","
             " \"client_secret\": \"%s\", \"revocation_url\": \"%s/oauth/revoke\"},"
             " \"policy\": %s}",
             key, server_url(), secret, server_url(), policy ? policy : "{}");
}

/* `in` with every `from` replaced by `to`, into `out`; 0 when it does not fit. */
static inline int replace_all(const char *in, const char *from, const char *to, char *out,
                              size_t len) {
    size_t used = 0, from_len = strlen(from), to_len = strlen(to);
    while (*in) {
        const char *piece = strncmp(in, from, from_len) == 0 ? to : in;
        size_t piece_len = piece == to ? to_len : 1;
        if (used + piece_len + 1 > len) return 0;
        memcpy(out + used, piece, piece_len);
        used += piece_len;
        in += piece == to ? from_len : 1;
    }
    out[used] = '\0';
    return 1;
}

/* The header line core says carries `tok` ("name: value\r\n"), or "" for body-only
 * configurations. */
static inline void header_line(tl_manager *mgr, const tl_token *tok, char *line, size_t len) {
    char name[128], value[4096];
    size_t name_written = 0, value_written = 0;
    bool has_header = false;
    line[0] = '\0';
    CHECK_RC(tl_manager_request_header(mgr, tok, name, sizeof name, &name_written, value,
                                       sizeof value, &value_written, &has_header),
             TL_OK);
    if (has_header) snprintf(line, len, "%s: %s\r\n", name, value);
    memset(value, 0, sizeof value);
}

/* Core's verdict on an answer to a request made with `tok`. */
static inline bool rejects(tl_manager *mgr, const tl_token *tok,
                           const struct http_answer *answer) {
    bool rejected = true;
    size_t body_len = tl_manager_needs_response_body(mgr, (uint16_t)answer->status)
                          ? answer->body_len
                          : 0;
    CHECK_RC(tl_manager_judge_response(mgr, tl_token_generation(tok), (uint16_t)answer->status,
                                       answer->headers, answer->header_count,
                                       (const uint8_t *)answer->body, body_len, &rejected),
             TL_OK);
    return rejected;
}

/* A server process started by spawn_server. */
typedef struct {
    pid_t pid;
    int stdin_fd;
    char url[256];   /* what the server printed: the issuer (oidc), the base URL (others) */
    char origin[128]; /* http://127.0.0.1:PORT */
    int port;
    int stdout_fd;   /* read to its end by `drain` (oidc-provider prints notices later) */
    pthread_t drain;
} spawned;

/* Reads and discards a server's stdout until it exits: a server writing to a closed pipe
 * would die of EPIPE (oidc-provider prints notices on stdout during logins). */
static inline void *drain_stdout(void *arg) {
    int fd = *(int *)arg;
    char buf[4096];
    while (read(fd, buf, sizeof buf) > 0) {
    }
    return NULL;
}

/* Starts argv[0] with a stdin pipe (servers started with --exit-with-stdin exit when it
 * closes) and waits at most 60 s for a stdout line "PREFIX=URL". 1 on success; stop it with
 * stop_server. */
static inline int spawn_server(char *const argv[], const char *prefix, spawned *out) {
    int in_pipe[2], out_pipe[2];
    if (pipe(in_pipe) != 0) return 0;
    if (pipe(out_pipe) != 0) {
        close(in_pipe[0]);
        close(in_pipe[1]);
        return 0;
    }
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) return 0;
    if (pid == 0) {
        dup2(in_pipe[0], STDIN_FILENO);
        dup2(out_pipe[1], STDOUT_FILENO);
        int devnull = open("/dev/null", O_WRONLY);
        if (devnull >= 0) dup2(devnull, STDERR_FILENO);
        close(in_pipe[0]);
        close(in_pipe[1]);
        close(out_pipe[0]);
        close(out_pipe[1]);
        execvp(argv[0], argv);
        _exit(127);
    }
    close(in_pipe[0]);
    close(out_pipe[1]);
    out->pid = pid;
    out->stdin_fd = in_pipe[1];
    fcntl(out->stdin_fd, F_SETFD, FD_CLOEXEC);

    char line[512];
    size_t got = 0;
    size_t prefix_len = strlen(prefix);
    int found = 0;
    time_t deadline = time(NULL) + 60;
    while (!found && time(NULL) < deadline) {
        struct pollfd pfd = {out_pipe[0], POLLIN, 0};
        if (poll(&pfd, 1, 500) <= 0) continue;
        char c;
        ssize_t r = read(out_pipe[0], &c, 1);
        if (r <= 0) break;
        if (c != '\n') {
            if (got < sizeof line - 1) line[got++] = c;
            continue;
        }
        line[got] = '\0';
        got = 0;
        if (strncmp(line, prefix, prefix_len) == 0 && line[prefix_len] == '=') {
            snprintf(out->url, sizeof out->url, "%s", line + prefix_len + 1);
            found = 1;
        }
    }
    if (!found) {
        close(out_pipe[0]);
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        close(out->stdin_fd);
        out->pid = -1;
        return 0;
    }
    out->stdout_fd = out_pipe[0];
    if (pthread_create(&out->drain, NULL, drain_stdout, &out->stdout_fd) != 0) {
        close(out->stdout_fd);
        out->stdout_fd = -1;
    }
    /* http://127.0.0.1:PORT[/path] */
    const char *host = strstr(out->url, "://");
    const char *colon = host ? strchr(host + 3, ':') : NULL;
    out->port = colon ? atoi(colon + 1) : 0;
    const char *path = colon ? strchr(colon, '/') : NULL;
    size_t origin_len = path ? (size_t)(path - out->url) : strlen(out->url);
    snprintf(out->origin, sizeof out->origin, "%.*s", (int)origin_len, out->url);
    return out->port > 0;
}

/* Stops a server from spawn_server (SIGTERM, then SIGKILL after 5 s); a no-op when it is not
 * running. */
static inline void stop_server(spawned *server) {
    if (server->pid <= 0) return;
    close(server->stdin_fd);
    kill(server->pid, SIGTERM);
    int exited = 0;
    for (int i = 0; i < 100 && !exited; i++) {
        if (waitpid(server->pid, NULL, WNOHANG) == server->pid) {
            exited = 1;
        } else {
            sleep_ms(50);
        }
    }
    if (!exited) {
        kill(server->pid, SIGKILL);
        waitpid(server->pid, NULL, 0);
    }
    server->pid = -1;
    if (server->stdout_fd >= 0) {
        pthread_join(server->drain, NULL); /* the pipe's writer is gone: EOF */
        close(server->stdout_fd);
        server->stdout_fd = -1;
    }
}

#endif /* TOKENLEASE_TEST_SUPPORT_H */
