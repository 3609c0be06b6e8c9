/* Helpers shared by the C test programs: checks, and a tiny HTTP/1.1 client for the test
 * token server over loopback (no curl dependency). */
#ifndef TOKENLEASE_TEST_SUPPORT_H
#define TOKENLEASE_TEST_SUPPORT_H

#define _POSIX_C_SOURCE 200809L

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
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

#endif /* TOKENLEASE_TEST_SUPPORT_H */
