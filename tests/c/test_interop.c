/* Interop from C with real third-party OAuth2/OIDC servers whose issuer has a path, through
 * tl_manager_from_config with {"source": {"type": "oauth2", "issuer": ...}}:
 *
 * - the npm oidc-provider (tests/oidc/server.js) mounted under /realms/tl (issuer
 *   http://127.0.0.1:PORT/realms/tl, as Keycloak, Okta or Entra ID): discovery under the
 *   issuer's path, client credentials (basic, post), a password grant with a rotating refresh
 *   token, revocation, a bad secret is TL_INVALID_CREDENTIALS, an issuer without metadata
 *   is TL_CONFIGURATION naming both well-known URLs;
 * - no.nav.security:mock-oauth2-server (tests/mock-oauth2/launch), issuer
 *   http://127.0.0.1:PORT/default.
 *
 * Starts each server itself on 127.0.0.1 (run from the repository root, as scripts/test-c
 * does) and stops it at the end. A server that is not installed (./scripts/setup-oidc,
 * ./scripts/setup-mock-oauth2) prints "SKIP ..." (and fails when CI=true). Needs no
 * TOKENLEASE_TEST_SERVER_URL. */
#include "test_support.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>

#define SECRET "tokenlease-secret"

typedef struct {
    pid_t pid;
    int stdin_fd;
    char url[256];   /* what the server printed: the issuer (oidc) or the base URL (mock) */
    char origin[128]; /* http://127.0.0.1:PORT */
    int port;
} spawned;

static spawned g_oidc = {-1, -1, "", "", 0};
static spawned g_mock = {-1, -1, "", "", 0};

static int ci(void) {
    const char *value = getenv("CI");
    return value != NULL && (strcmp(value, "true") == 0 || strcmp(value, "1") == 0);
}

static void missing(const char *what, const char *why) {
    printf("SKIP %s: %s\n", what, why);
    if (ci()) {
        printf("FAIL %s: the interop server is missing under CI\n", what);
        g_failures++;
    }
    fflush(stdout);
}

/* Starts argv[0] with a stdin pipe (it exits when the pipe closes) and waits at most 60 s
 * for a stdout line "PREFIX=URL". 1 on success. */
static int spawn_server(char *const argv[], const char *prefix, spawned *out) {
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
    close(out_pipe[0]); /* the servers print nothing more on stdout */
    if (!found) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        close(out->stdin_fd);
        out->pid = -1;
        return 0;
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

static void stop_server(spawned *server) {
    if (server->pid <= 0) return;
    close(server->stdin_fd);
    kill(server->pid, SIGTERM);
    for (int i = 0; i < 100; i++) {
        if (waitpid(server->pid, NULL, WNOHANG) == server->pid) {
            server->pid = -1;
            return;
        }
        sleep_ms(50);
    }
    kill(server->pid, SIGKILL);
    waitpid(server->pid, NULL, 0);
    server->pid = -1;
}

/* A number after "KEY": in the oidc server's /__stats JSON (0 when absent, -1 on failure). */
static long oidc_stat(const char *key) {
    char body[16384];
    if (http_to(g_oidc.port, "GET", "/__stats", NULL, NULL, NULL, body, sizeof body) != 200)
        return -1;
    char pattern[256];
    snprintf(pattern, sizeof pattern, "\"%s\":", key);
    const char *at = strstr(body, pattern);
    return at ? strtol(at + strlen(pattern), NULL, 10) : 0;
}

/* RFC 7662 introspection at the oidc server (as the basic client): 1 active, 0 not, -1 error. */
static int oidc_is_active(const char *token) {
    char path[300], form[4096], body[4096];
    const char *issuer_path = strchr(strstr(g_oidc.url, "://") + 3, '/');
    snprintf(path, sizeof path, "%s/token/introspection", issuer_path ? issuer_path : "");
    snprintf(form, sizeof form, "token=%s", token); /* opaque tokens are URL-safe */
    /* base64("tokenlease-basic:tokenlease-secret") */
    const char *auth = "Authorization: Basic dG9rZW5sZWFzZS1iYXNpYzp0b2tlbmxlYXNlLXNlY3JldA==\r\n";
    if (http_to(g_oidc.port, "POST", path, auth, "application/x-www-form-urlencoded", form, body,
                sizeof body) != 200)
        return -1;
    if (strstr(body, "\"active\":true")) return 1;
    if (strstr(body, "\"active\":false")) return 0;
    return -1;
}

static tl_manager *manager_for(const char *issuer, const char *client_id, const char *secret,
                               const char *auth, const char *grant, const char *scopes) {
    char config[2048];
    if (secret != NULL) {
        snprintf(config, sizeof config,
                 "{\"source\": {\"type\": \"oauth2\", \"issuer\": \"%s\", \"client_id\": \"%s\","
                 " \"client_secret\": \"%s\", \"client_auth\": \"%s\", \"grant\": %s,"
                 " \"scopes\": %s}}",
                 issuer, client_id, secret, auth, grant, scopes);
    } else {
        snprintf(config, sizeof config,
                 "{\"source\": {\"type\": \"oauth2\", \"issuer\": \"%s\", \"client_id\": \"%s\","
                 " \"grant\": %s, \"scopes\": %s}}",
                 issuer, client_id, grant, scopes);
    }
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

#define CLIENT_CREDENTIALS "{\"type\": \"client_credentials\"}"
#define PASSWORD_GRANT \
    "{\"type\": \"password\", \"username\": \"alice\", \"password\": \"wonderland\"}"

static void test_path_issuer_client_credentials_basic_and_post(void) {
    const char *clients[2][2] = {{"tokenlease-basic", "basic"}, {"tokenlease-post", "post"}};
    for (int i = 0; i < 2; i++) {
        tl_manager *mgr = manager_for(g_oidc.url, clients[i][0], SECRET, clients[i][1],
                                      CLIENT_CREDENTIALS, "[\"api:read\"]");
        CHECK(mgr != NULL);
        if (!mgr) return;
        char token[512];
        size_t written = 0;
        uint64_t generation = 0;
        CHECK_RC(tl_manager_token(mgr, token, sizeof token, &written, &generation), TL_OK);
        CHECK(generation == 1);
        CHECK(oidc_is_active(token) == 1);
        CHECK_RC(tl_manager_free(mgr), TL_OK);
    }
    /* The discovery document under the issuer's path, once (cached per issuer). */
    CHECK(oidc_stat("GET /realms/tl/.well-known/openid-configuration") == 1);
    CHECK(oidc_stat("GET /realms/.well-known/openid-configuration") == 0);
    CHECK(oidc_stat("client_credentials") == 2);
}

static void test_bad_secret_is_invalid_credentials(void) {
    const char *clients[2][2] = {{"tokenlease-basic", "basic"}, {"tokenlease-post", "post"}};
    for (int i = 0; i < 2; i++) {
        tl_manager *mgr = manager_for(g_oidc.url, clients[i][0], "wrong-secret", clients[i][1],
                                      CLIENT_CREDENTIALS, "[\"api:read\"]");
        CHECK(mgr != NULL);
        if (!mgr) return;
        char token[512];
        size_t written = 0;
        CHECK_RC(tl_manager_token(mgr, token, sizeof token, &written, NULL),
                 TL_INVALID_CREDENTIALS);
        char detail[512];
        CHECK_RC(tl_manager_last_error(mgr, detail, sizeof detail, &written), TL_OK);
        CHECK(strstr(detail, "answered 401") != NULL);
        CHECK(strstr(detail, "wrong-secret") == NULL);
        tl_status status;
        CHECK_RC(tl_manager_status(mgr, &status), TL_OK);
        CHECK(status.last_error == TL_INVALID_CREDENTIALS);
        CHECK_RC(tl_manager_free(mgr), TL_OK);
    }
}

static void test_password_grant_rotation_and_revoke(void) {
    long refreshes_before = oidc_stat("refresh_token");
    tl_manager *mgr = manager_for(g_oidc.url, "tokenlease-basic", SECRET, "basic", PASSWORD_GRANT,
                                  "[\"openid\", \"offline_access\"]");
    CHECK(mgr != NULL);
    if (!mgr) return;
    char first[512], second[512];
    size_t written = 0;
    uint64_t generation = 0;
    CHECK_RC(tl_manager_token(mgr, first, sizeof first, &written, &generation), TL_OK);
    bool invalidated = false;
    CHECK_RC(tl_manager_invalidate(mgr, generation, &invalidated), TL_OK);
    CHECK(invalidated);
    CHECK_RC(tl_manager_token(mgr, second, sizeof second, &written, &generation), TL_OK);
    CHECK(generation == 2);
    CHECK(strcmp(first, second) != 0);
    CHECK(oidc_stat("refresh_token") == refreshes_before + 1);
    CHECK(oidc_is_active(second) == 1);
    long revocations = oidc_stat("revocation_requests");
    CHECK_RC(tl_manager_revoke(mgr), TL_OK);
    CHECK(oidc_stat("revocation_requests") == revocations + 2);
    CHECK(oidc_is_active(second) == 0);
    CHECK_RC(tl_manager_free(mgr), TL_OK);
}

static void test_an_issuer_without_metadata_is_a_configuration_error_naming_both_urls(void) {
    /* (An issuer its document does not name is tested from Rust and Python: spelling it
     * differently needs a host name, and glibc's resolver state leaks under valgrind.) */
    char issuer[256], oidc_url[320], rfc8414_url[320];
    snprintf(issuer, sizeof issuer, "%s/realms/nope", g_oidc.origin);
    snprintf(oidc_url, sizeof oidc_url, "%s/.well-known/openid-configuration answered 404", issuer);
    snprintf(rfc8414_url, sizeof rfc8414_url,
             "%s/.well-known/oauth-authorization-server/realms/nope answered 404", g_oidc.origin);
    tl_manager *mgr = manager_for(issuer, "tokenlease-basic", SECRET, "basic", CLIENT_CREDENTIALS,
                                  "[\"api:read\"]");
    CHECK(mgr != NULL);
    if (!mgr) return;
    char token[512];
    size_t written = 0;
    CHECK_RC(tl_manager_token(mgr, token, sizeof token, &written, NULL), TL_CONFIGURATION);
    char detail[1024];
    CHECK_RC(tl_manager_last_error(mgr, detail, sizeof detail, &written), TL_OK);
    CHECK(strstr(detail, oidc_url) != NULL);
    CHECK(strstr(detail, rfc8414_url) != NULL);
    CHECK_RC(tl_manager_free(mgr), TL_OK);
}

static void test_mock_oauth2_server_path_issuer(void) {
    char issuer[300];
    snprintf(issuer, sizeof issuer, "%s/default", g_mock.url);
    tl_manager *mgr = manager_for(issuer, "c-client", SECRET, "basic", CLIENT_CREDENTIALS,
                                  "[\"api.read\"]");
    CHECK(mgr != NULL);
    if (!mgr) return;
    char token[4096];
    size_t written = 0;
    uint64_t generation = 0;
    CHECK_RC(tl_manager_token(mgr, token, sizeof token, &written, &generation), TL_OK);
    CHECK(generation == 1 && written > 100); /* a signed JWT */
    /* It revokes refresh tokens only: the access token is skipped, revoke succeeds. */
    CHECK_RC(tl_manager_revoke(mgr), TL_OK);
    CHECK_RC(tl_manager_free(mgr), TL_OK);

    /* No client authentication: 401 invalid_client. */
    mgr = manager_for(issuer, "public-client", NULL, "basic", CLIENT_CREDENTIALS, "[]");
    CHECK(mgr != NULL);
    if (!mgr) return;
    CHECK_RC(tl_manager_token(mgr, token, sizeof token, &written, NULL), TL_INVALID_CREDENTIALS);
    CHECK_RC(tl_manager_free(mgr), TL_OK);
}

static int have_node_provider(void) {
    return system("node --version >/dev/null 2>&1") == 0 &&
           access("tests/oidc/node_modules/oidc-provider/package.json", R_OK) == 0;
}

int main(void) {
    signal(SIGPIPE, SIG_IGN);
    printf("# interop with oidc-provider (under /realms/tl) and mock-oauth2-server from C\n");
    fflush(stdout);

    if (!have_node_provider()) {
        missing("oidc-provider interop",
                "Node.js or tests/oidc/node_modules is missing (./scripts/setup-oidc)");
    } else {
        char *argv[] = {"node", "tests/oidc/server.js", "--lifetime", "300", "--exit-with-stdin",
                        "--mount", "/realms/tl", NULL};
        if (!spawn_server(argv, "OIDC_PROVIDER_URL", &g_oidc)) {
            printf("FAIL oidc-provider did not start\n");
            g_failures++;
        } else {
            printf("# oidc-provider issuer %s\n", g_oidc.url);
            RUN(test_path_issuer_client_credentials_basic_and_post);
            RUN(test_bad_secret_is_invalid_credentials);
            RUN(test_password_grant_rotation_and_revoke);
            RUN(test_an_issuer_without_metadata_is_a_configuration_error_naming_both_urls);
            stop_server(&g_oidc);
        }
    }

    if (system("bash tests/mock-oauth2/launch --check >/dev/null 2>&1") != 0) {
        missing("mock-oauth2-server interop",
                "mock-oauth2-server is not installed (./scripts/setup-mock-oauth2)");
    } else {
        char *argv[] = {"bash", "tests/mock-oauth2/launch", "--lifetime", "300",
                        "--exit-with-stdin", NULL};
        if (!spawn_server(argv, "MOCK_OAUTH2_SERVER_URL", &g_mock)) {
            printf("FAIL mock-oauth2-server did not start\n");
            g_failures++;
        } else {
            printf("# mock-oauth2-server at %s\n", g_mock.url);
            RUN(test_mock_oauth2_server_path_issuer);
            stop_server(&g_mock);
        }
    }
    return finish();
}
