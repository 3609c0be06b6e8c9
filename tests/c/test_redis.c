/* A Redis-backed config from C, against the real test token server (loopback): two
 * processes (fork()ed before this process makes any tokenlease call) with
 * tl_manager_from_config on one {"store": {"type": "redis", ...}} make one token request
 * between them; a restarted program reuses the stored token; Redis down is a store error the
 * manager survives; bad Redis URLs are TL_CONFIGURATION without the password.
 *
 * Starts its own redis-server on 127.0.0.1. Without redis-server it prints "SKIP ..." (and
 * fails when CI=true: scripts/test-all installs it). */
#include "test_support.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

static pid_t g_redis_pid = -1;
static int g_redis_port = 0;

static int free_port(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return 0;
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    int port = 0;
    if (bind(fd, (struct sockaddr *)&addr, sizeof addr) == 0 &&
        getsockname(fd, (struct sockaddr *)&addr, &len) == 0) {
        port = ntohs(addr.sin_port);
    }
    close(fd);
    return port;
}

static int redis_ping(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return 0;
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((unsigned short)port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int ok = 0;
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) == 0 && write(fd, "PING\r\n", 6) == 6) {
        char answer[8] = {0};
        size_t got = 0;
        ssize_t r;
        while (got < 7 && (r = read(fd, answer + got, 7 - got)) > 0) got += (size_t)r;
        ok = got == 7 && memcmp(answer, "+PONG\r\n", 7) == 0;
    }
    close(fd);
    return ok;
}

static int redis_installed(void) {
    return system("redis-server --version >/dev/null 2>&1") == 0;
}

/* Starts redis-server on a free loopback port; 1 once it answers PING (10 s at most). */
static int start_redis(void) {
    g_redis_port = free_port();
    char port[16];
    snprintf(port, sizeof port, "%d", g_redis_port);
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) return 0;
    if (pid == 0) {
#ifdef __linux__
        /* Killed with this test (e.g. by a timeout), not left running. */
        prctl(PR_SET_PDEATHSIG, SIGTERM);
#endif
        int devnull = open("/dev/null", O_WRONLY);
        if (devnull >= 0) dup2(devnull, STDOUT_FILENO);
        execlp("redis-server", "redis-server", "--port", port, "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no", "--protected-mode", "yes", (char *)NULL);
        _exit(127);
    }
    g_redis_pid = pid;
    for (int i = 0; i < 500; i++) {
        if (redis_ping(g_redis_port)) return 1;
        if (waitpid(pid, NULL, WNOHANG) == pid) {
            g_redis_pid = -1;
            return 0;
        }
        sleep_ms(20);
    }
    return 0;
}

static void stop_redis(void) {
    if (g_redis_pid > 0) {
        kill(g_redis_pid, SIGTERM);
        waitpid(g_redis_pid, NULL, 0);
        g_redis_pid = -1;
    }
}

/* The test server's config (see server_config) with a Redis store at `url`. */
static void redis_config(char *out, size_t len, const char *key, const char *url) {
    char base[2048];
    server_config(base, sizeof base, key, "demo-secret", NULL);
    size_t n = strlen(base);
    if (n > 0 && base[n - 1] == '}') base[n - 1] = '\0';
    snprintf(out, len, "%s, \"store\": {\"type\": \"redis\", \"url\": \"%s\", \"prefix\": \"ctest:\"}}",
             base, url);
}

struct child {
    pid_t pid;
    FILE *results;
    char line[1024];
};

/* A child process: builds its manager, says "ready", waits for `go_fd` to close, gets a
 * token, writes "RESULT fetches store_loads store_errors token" and exits. */
static void child_main(const char *config, int go_fd, int result_fd) {
    tl_manager *mgr = NULL;
    tl_result rc = tl_manager_from_config(config, &mgr);
    if (rc != TL_OK) {
        char detail[512] = "";
        size_t written = 0;
        tl_manager_last_error(NULL, detail, sizeof detail, &written);
        dprintf(result_fd, "%s: %s\n", tl_result_name(rc), detail);
        exit(3);
    }
    dprintf(result_fd, "ready\n");
    char c;
    while (read(go_fd, &c, 1) < 0 && errno == EINTR) {
    }
    close(go_fd);
    char token[512] = "-";
    size_t written = 0;
    rc = tl_manager_token(mgr, token, sizeof token, &written, NULL);
    tl_status status;
    memset(&status, 0, sizeof status);
    tl_manager_status(mgr, &status);
    dprintf(result_fd, "%s %llu %llu %llu %s\n", tl_result_name(rc),
            (unsigned long long)status.counters.fetches,
            (unsigned long long)status.counters.store_loads,
            (unsigned long long)status.counters.store_errors, rc == TL_OK ? token : "-");
    close(result_fd);
    tl_manager_free(mgr);
    /* The store's Redis connection task ends on the background runtime just after the
     * manager is freed; exiting at once would leave its buffers in flight, which valgrind
     * reports as "possibly lost". */
    sleep_ms(1000);
    exit(rc == TL_OK ? 0 : 4);
}

/* Must run first: the children are fork()ed before this process calls into tokenlease
 * (forking a process whose runtime threads already run would copy only one thread). */
static void test_two_processes_on_a_redis_config_make_one_token_request(void) {
    char url[128];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d/", g_redis_port);
    char config[4096];
    redis_config(config, sizeof config, "c-redis-shared", url);
    /* A slow token endpoint: both processes ask while the first request is in flight. */
    CHECK(server_control("{\"latency_ms\": 500}") == 200);
    long before = server_stat("token_requests");

    int go[2];
    CHECK(pipe(go) == 0);
    struct child children[2];
    memset(children, 0, sizeof children);
    for (int i = 0; i < 2; i++) {
        int results[2];
        CHECK(pipe(results) == 0);
        fflush(NULL);
        pid_t pid = fork();
        if (pid == 0) {
            close(go[1]);
            close(results[0]);
            if (i == 1) fclose(children[0].results);
            child_main(config, go[0], results[1]);
        }
        CHECK(pid > 0);
        close(results[1]);
        children[i].pid = pid;
        children[i].results = fdopen(results[0], "r");
    }
    close(go[0]);
    for (int i = 0; i < 2; i++) {
        CHECK(fgets(children[i].line, sizeof children[i].line, children[i].results) != NULL);
        CHECK(strcmp(children[i].line, "ready\n") == 0);
        if (strcmp(children[i].line, "ready\n") != 0) {
            fprintf(stderr, "child %d: tl_manager_from_config: %s", i, children[i].line);
        }
    }
    close(go[1]); /* both children go */

    char tokens[2][512];
    unsigned long long fetches = 0, loads = 0, errors = 0;
    for (int i = 0; i < 2; i++) {
        memset(children[i].line, 0, sizeof children[i].line);
        CHECK(fgets(children[i].line, sizeof children[i].line, children[i].results) != NULL);
        fclose(children[i].results);
        char rc_name[64];
        unsigned long long f = 0, l = 0, e = 0;
        tokens[i][0] = '\0';
        int fields = sscanf(children[i].line, "%63s %llu %llu %llu %511s", rc_name, &f, &l, &e, tokens[i]);
        CHECK(fields == 5);
        if (fields != 5) fprintf(stderr, "child %d said: %s\n", i, children[i].line);
        CHECK(fields >= 1 && strcmp(rc_name, "TL_OK") == 0);
        fetches += f;
        loads += l;
        errors += e;
        int status = 0;
        CHECK(waitpid(children[i].pid, &status, 0) == children[i].pid);
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    }
    CHECK(server_control("{\"latency_ms\": 0}") == 200);
    CHECK(strcmp(tokens[0], tokens[1]) == 0);
    CHECK(server_resource(tokens[0]) == 200);
    CHECK(server_stat("token_requests") == before + 1);
    /* One process fetched; the other adopted its record from Redis. */
    CHECK(fetches == 1);
    CHECK(loads == 1);
    CHECK(errors == 0);
    if (server_stat("token_requests") != before + 1 || fetches != 1 || loads != 1) {
        fprintf(stderr, "children: %s / %s", children[0].line, children[1].line);
    }

    /* A restarted program (this one) reuses the stored token: no request. */
    tl_manager *mgr = NULL;
    CHECK_RC(tl_manager_from_config(config, &mgr), TL_OK);
    if (!mgr) return;
    char token[512];
    size_t written = 0;
    CHECK_RC(tl_manager_token(mgr, token, sizeof token, &written, NULL), TL_OK);
    CHECK(strcmp(token, tokens[0]) == 0);
    tl_status status;
    CHECK_RC(tl_manager_status(mgr, &status), TL_OK);
    CHECK(status.counters.fetches == 0 && status.counters.store_loads == 1);
    CHECK(server_stat("token_requests") == before + 1);
    tl_manager_free(mgr);
}

static void test_redis_down_is_survived(void) {
    char url[128];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d/", free_port()); /* nothing listens */
    char config[4096];
    redis_config(config, sizeof config, "c-redis-down", url);
    tl_manager *mgr = NULL;
    CHECK_RC(tl_manager_from_config(config, &mgr), TL_OK);
    if (!mgr) return;
    long before = server_stat("token_requests");
    char token[512];
    size_t written = 0;
    time_t started = time(NULL);
    CHECK_RC(tl_manager_token(mgr, token, sizeof token, &written, NULL), TL_OK);
    CHECK(time(NULL) - started < 15);
    CHECK(server_resource(token) == 200);
    CHECK(server_stat("token_requests") == before + 1);
    tl_status status;
    CHECK_RC(tl_manager_status(mgr, &status), TL_OK);
    CHECK(status.counters.store_errors >= 1);
    tl_manager_free(mgr);
}

static void test_bad_redis_urls_are_configuration_errors(void) {
    const char *cases[][2] = {
        {"nope://:hunter2@127.0.0.1:1/0", "invalid URL"},
        {"rediss://:hunter2@127.0.0.1:1/0#insecure", "#insecure"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char config[4096];
        redis_config(config, sizeof config, "c-redis-bad", cases[i][0]);
        tl_manager *mgr = (tl_manager *)1;
        CHECK_RC(tl_manager_from_config(config, &mgr), TL_CONFIGURATION);
        CHECK(mgr == NULL);
        char detail[1024];
        size_t written = 0;
        CHECK_RC(tl_manager_last_error(NULL, detail, sizeof detail, &written), TL_OK);
        CHECK(strstr(detail, cases[i][1]) != NULL);
        CHECK(strstr(detail, "hunter2") == NULL);
    }
    /* rediss:// itself is accepted (the store connects lazily). */
    char config[4096];
    redis_config(config, sizeof config, "c-rediss", "rediss://127.0.0.1:1/0");
    tl_manager *mgr = NULL;
    CHECK_RC(tl_manager_from_config(config, &mgr), TL_OK);
    tl_manager_free(mgr);
}

int main(void) {
    printf("# Redis store from C against %s\n", server_url());
    fflush(stdout);
    if (!redis_installed()) {
        printf("SKIP test_two_processes_on_a_redis_config_make_one_token_request: redis-server is "
               "not installed (apt-get install -y redis-server)\n");
        if (getenv("CI") != NULL && strcmp(getenv("CI"), "true") == 0) {
            printf("FAIL redis-server is missing under CI\n");
            g_failures++;
        }
        fflush(stdout);
    } else if (!start_redis()) {
        printf("FAIL redis-server did not start\n");
        g_failures++;
    } else {
        RUN(test_two_processes_on_a_redis_config_make_one_token_request);
    }
    stop_redis();
    RUN(test_redis_down_is_survived);
    RUN(test_bad_redis_urls_are_configuration_errors);
    return finish();
}
