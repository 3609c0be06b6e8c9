/* Interop from C with real third-party OAuth2/OIDC servers whose issuer has a path, through
 * tl_manager_from_config with {"source": {"type": "oauth2", "issuer": ...}}:
 *
 * - the npm oidc-provider (tests/oidc/server.js) mounted under /realms/tl (issuer
 *   http://127.0.0.1:PORT/realms/tl, as Keycloak, Okta or Entra ID): discovery under the
 *   issuer's path, client credentials (basic, post), a password grant with a rotating refresh
 *   token, revocation, a bad secret is TL_INVALID_CREDENTIALS, an issuer without metadata
 *   is TL_CONFIGURATION naming both well-known URLs;
 * - user logins of the public app client `tokenlease-app` (issue 15), with the server's
 *   simulated browser (POST /__browser/authorize, /__browser/device, /__browser/revoke-grants):
 *   login required -> tl_manager_begin_login / tl_manager_complete_login -> refresh with
 *   rotation -> the user removes the app's access (TL_LOGIN_REQUIRED for every thread, one
 *   refused refresh) -> a new login with the device flow -> logout; a denied device login is
 *   TL_CANCELLED, tl_device_login_cancel from another thread ends a waiting one;
 *   tl_manager_seed never rolls back a newer token in an encrypted file store;
 * - key credentials (issue 17) at oidc-provider (started with --client-keys-out): private_key_jwt
 *   (RS256, ES256) with the server's client keys, client_secret_jwt, a wrong key is
 *   TL_INVALID_CREDENTIALS; DPoP: a bound token (type "DPoP") from a server that demands its
 *   nonces, tl_manager_dpop_proof (an ES256 dpop+jwt with htm, htu, ath, the remembered
 *   nonce), tl_manager_remember_dpop_nonce, and a DPoP user login whose token and proof call
 *   the userinfo API over raw HTTP (sent once more on a 401 with a new nonce);
 * - no.nav.security:mock-oauth2-server (tests/mock-oauth2/launch), issuer
 *   http://127.0.0.1:PORT/default;
 * - a Google service-account key file made with openssl, against the project's test token
 *   server ($TOKENLEASE_TEST_SERVER_BIN, started here with --jwt-bearer-keys).
 *
 * Starts each server itself on 127.0.0.1 (run from the repository root, as scripts/test-c
 * does) and stops it at the end. A server that is not installed (./scripts/setup-oidc,
 * ./scripts/setup-mock-oauth2) prints "SKIP ..." (and fails when CI=true). Needs no
 * TOKENLEASE_TEST_SERVER_URL. */
#include "test_support.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>

#define SECRET "tokenlease-secret"

/* spawned, spawn_server and stop_server are in test_support.h (test_scenarios.c uses them). */
static spawned g_oidc = {-1, -1, "", "", 0, -1, 0};
static spawned g_mock = {-1, -1, "", "", 0, -1, 0};

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
    return manager_from(config);
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

/* ---- user logins (issue 15) ---- */

#define APP_CLIENT "tokenlease-app"
#define REDIRECT_URI "http://127.0.0.1:49152/callback"
#define ENCRYPTION_KEY "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="

/* The user-login configuration every binding's login test uses; `store` is a JSON object. */
static tl_manager *user_login_manager(const char *client_id, const char *store) {
    char config[2048];
    snprintf(config, sizeof config,
             "{\"source\": {\"type\": \"oauth2\", \"issuer\": \"%s\", \"client_id\": \"%s\","
             " \"grant\": {\"type\": \"user_login\"}, \"scopes\": [\"openid\", \"offline_access\"],"
             " \"authorization_params\": {\"prompt\": \"consent\"}}, \"store\": %s}",
             g_oidc.url, client_id, store);
    return manager_from(config);
}

/* Copies the JSON string field "key" of `body` into `out` (no escapes expected: URLs, codes
 * and opaque tokens). 1 when found. */
static int json_string(const char *body, const char *key, char *out, size_t len) {
    char pattern[128];
    snprintf(pattern, sizeof pattern, "\"%s\":\"", key);
    const char *at = strstr(body, pattern);
    if (at == NULL) return 0;
    at += strlen(pattern);
    const char *end = strchr(at, '"');
    if (end == NULL || (size_t)(end - at) >= len) return 0;
    memcpy(out, at, (size_t)(end - at));
    out[end - at] = '\0';
    return memchr(at, '\\', (size_t)(end - at)) == NULL;
}

/* A number after "KEY": in the "errors" object of /__stats (0 when absent, -1 on failure). */
static long oidc_error_stat(const char *code) {
    char body[16384];
    if (http_to(g_oidc.port, "GET", "/__stats", NULL, NULL, NULL, body, sizeof body) != 200)
        return -1;
    const char *errors = strstr(body, "\"errors\":{");
    if (errors == NULL) return -1;
    const char *end = strchr(errors, '}');
    char pattern[128];
    snprintf(pattern, sizeof pattern, "\"%s\":", code);
    const char *at = strstr(errors, pattern);
    return at && at < end ? strtol(at + strlen(pattern), NULL, 10) : 0;
}

/* The user's browser: follows the authorization URL, logs alice in, and returns the redirect
 * back to the app (with code and state) in `redirect`. 1 on success. */
static int browser_authorize(const char *url, char *redirect, size_t len) {
    char json[3072], body[8192] = "";
    snprintf(json, sizeof json, "{\"url\": \"%s\"}", url);
    int status = http_to(g_oidc.port, "POST", "/__browser/authorize", NULL, "application/json",
                         json, body, sizeof body);
    if (status != 200) {
        fprintf(stderr, "/__browser/authorize: %d %s\n", status, body);
        return 0;
    }
    return json_string(body, "redirect", redirect, len);
}

/* The user, at another device, enters `user_code` and approves or denies. 1 on success. */
static int browser_device(const char *user_code, int approve) {
    char json[256], body[4096];
    snprintf(json, sizeof json, "{\"user_code\": \"%s\", \"approve\": %s}", user_code,
             approve ? "true" : "false");
    int status = http_to(g_oidc.port, "POST", "/__browser/device", NULL, "application/json", json,
                         body, sizeof body);
    if (status != 200 || strstr(body, "\"done\":true") == NULL) {
        fprintf(stderr, "/__browser/device: %d %s\n", status, body);
        return 0;
    }
    return 1;
}

/* The user removes the app's access: every grant alice gave ends. Returns how many. */
static long browser_revoke_grants(void) {
    char body[1024];
    if (http_to(g_oidc.port, "POST", "/__browser/revoke-grants", NULL, "application/json", "{}",
                body, sizeof body) != 200)
        return -1;
    const char *at = strstr(body, "\"revoked\":");
    return at ? strtol(at + strlen("\"revoked\":"), NULL, 10) : -1;
}

/* The path of the issuer (e.g. "/realms/tl"). */
static const char *issuer_path(void) {
    const char *path = strchr(strstr(g_oidc.url, "://") + 3, '/');
    return path ? path : "";
}

/* A login the application did without tokenlease (as a platform SDK would): the device flow
 * over plain HTTP, approved by the user at once. Fills `login` (a tl_fetch_output from
 * tl_fetch_output_new) and copies the access token into `access`. 1 on success. */
static int external_login(tl_fetch_output *login, char *access, size_t access_len) {
    char path[300], body[8192], device_code[256], user_code[64], refresh[512];
    snprintf(path, sizeof path, "%s/device/auth", issuer_path());
    if (http_to(g_oidc.port, "POST", path, NULL, "application/x-www-form-urlencoded",
                "client_id=" APP_CLIENT "&scope=openid%20offline_access", body,
                sizeof body) != 200 ||
        !json_string(body, "device_code", device_code, sizeof device_code) ||
        !json_string(body, "user_code", user_code, sizeof user_code)) {
        fprintf(stderr, "device authorization: %s\n", body);
        return 0;
    }
    if (!browser_device(user_code, 1)) return 0;
    char form[512];
    snprintf(form, sizeof form,
             "grant_type=urn%%3Aietf%%3Aparams%%3Aoauth%%3Agrant-type%%3Adevice_code"
             "&device_code=%s&client_id=" APP_CLIENT,
             device_code);
    snprintf(path, sizeof path, "%s/token", issuer_path());
    if (http_to(g_oidc.port, "POST", path, NULL, "application/x-www-form-urlencoded", form, body,
                sizeof body) != 200 ||
        !json_string(body, "access_token", access, access_len) ||
        !json_string(body, "refresh_token", refresh, sizeof refresh)) {
        fprintf(stderr, "device token: %s\n", body);
        return 0;
    }
    const char *expires = strstr(body, "\"expires_in\":");
    uint64_t expires_in_s = expires ? (uint64_t)strtoull(expires + 13, NULL, 10) : 0;
    return tl_fetch_output_set_token(login, access, strlen(access), expires_in_s * 1000) == TL_OK &&
           tl_fetch_output_set_refresh_token(login, refresh, strlen(refresh)) == TL_OK &&
           tl_fetch_output_set_token_type(login, "Bearer") == TL_OK;
}

static uint64_t now_unix_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void last_error(const tl_manager *mgr, char *detail, size_t len) {
    size_t written = 0;
    if (tl_manager_last_error(mgr, detail, len, &written) != TL_OK) detail[0] = '\0';
}

struct token_call {
    tl_manager *mgr;
    pthread_barrier_t *barrier;
    tl_result rc;
};

static void *call_token(void *arg) {
    struct token_call *call = arg;
    char token[2048];
    size_t written = 0;
    pthread_barrier_wait(call->barrier);
    call->rc = tl_manager_token(call->mgr, token, sizeof token, &written, NULL);
    return NULL;
}

#define LOGIN_THREADS 16

static void test_user_login_browser_refresh_access_removed_device_relogin_logout(void) {
    tl_manager *mgr = user_login_manager(APP_CLIENT, "{\"type\": \"memory\"}");
    CHECK(mgr != NULL);
    if (!mgr) return;
    char token[2048], detail[1024], redirect[3072];
    size_t written = 0;
    uint64_t generation = 0;

    /* Nobody logged in yet. */
    CHECK_RC(tl_manager_token(mgr, token, sizeof token, &written, NULL), TL_LOGIN_REQUIRED);

    /* The browser login: the URL goes to the user's browser, the redirect comes back. */
    tl_login_request *req = NULL;
    CHECK_RC(tl_manager_begin_login(mgr, REDIRECT_URI, &req), TL_OK);
    if (!req) goto done;
    const char *url = tl_login_request_url(req);
    char authorize_prefix[320];
    snprintf(authorize_prefix, sizeof authorize_prefix, "%s/auth?", g_oidc.url);
    CHECK(url != NULL && strncmp(url, authorize_prefix, strlen(authorize_prefix)) == 0);
    CHECK(url != NULL && strstr(url, "code_challenge_method=S256") != NULL);
    CHECK(strcmp(tl_login_request_redirect_uri(req), REDIRECT_URI) == 0);
    CHECK(browser_authorize(url, redirect, sizeof redirect));
    CHECK(strncmp(redirect, REDIRECT_URI "?", strlen(REDIRECT_URI) + 1) == 0);
    tl_token *first = NULL;
    CHECK_RC(tl_manager_complete_login(mgr, req, redirect, &first), TL_OK);
    if (!first) {
        last_error(mgr, detail, sizeof detail);
        fprintf(stderr, "complete_login: %s\n", detail);
        tl_login_request_free(req);
        goto done;
    }
    const char *first_value = NULL;
    CHECK_RC(tl_token_value(first, &first_value, NULL), TL_OK);
    CHECK(oidc_is_active(first_value) == 1);
    /* The OpenID Connect ID token of the login (scope openid), opaque: a JWT's three parts. */
    const char *id_token = NULL;
    size_t id_len = 0;
    CHECK_RC(tl_token_id_token(first, &id_token, &id_len), TL_OK);
    CHECK(id_token != NULL && id_len == strlen(id_token));
    CHECK(id_token != NULL && strchr(id_token, '.') != strrchr(id_token, '.'));
    CHECK_RC(tl_manager_token(mgr, token, sizeof token, &written, &generation), TL_OK);
    CHECK(strcmp(token, first_value) == 0 && generation == tl_token_generation(first));
    /* A redirect is good once: the server refuses the code the second time (and, as its
     * replay detection, revokes what the code issued). */
    tl_token *replayed = (tl_token *)1;
    CHECK_RC(tl_manager_complete_login(mgr, req, redirect, &replayed), TL_INVALID_GRANT);
    CHECK(replayed == NULL);
    CHECK(oidc_is_active(first_value) == 0);
    tl_login_request_free(req);
    tl_token_free(first);

    /* So the user logs in again, and that login is served from now on. */
    req = NULL;
    CHECK_RC(tl_manager_begin_login(mgr, REDIRECT_URI, &req), TL_OK);
    if (!req) goto done;
    CHECK(browser_authorize(tl_login_request_url(req), redirect, sizeof redirect));
    first = NULL;
    CHECK_RC(tl_manager_complete_login(mgr, req, redirect, &first), TL_OK);
    tl_login_request_free(req);
    if (!first) goto done;
    CHECK_RC(tl_token_value(first, &first_value, NULL), TL_OK);
    CHECK(oidc_is_active(first_value) == 1);
    CHECK_RC(tl_manager_token(mgr, token, sizeof token, &written, &generation), TL_OK);
    CHECK(strcmp(token, first_value) == 0 && generation == tl_token_generation(first));

    /* Refreshed with rotation: one refresh-token grant, a new value. */
    long refreshes = oidc_stat("refresh_token");
    bool invalidated = false;
    CHECK_RC(tl_manager_invalidate(mgr, generation, &invalidated), TL_OK);
    CHECK(invalidated);
    CHECK_RC(tl_manager_token(mgr, token, sizeof token, &written, &generation), TL_OK);
    CHECK(strcmp(token, first_value) != 0);
    CHECK(oidc_stat("refresh_token") == refreshes + 1);
    CHECK(oidc_is_active(token) == 1);
    tl_token_free(first);

    /* The user removes the app's access: every thread gets TL_LOGIN_REQUIRED, from one refused
     * refresh, and nothing hangs. */
    long refused = oidc_error_stat("invalid_grant");
    CHECK(browser_revoke_grants() >= 1);
    CHECK_RC(tl_manager_invalidate(mgr, generation, &invalidated), TL_OK);
    CHECK(invalidated);
    pthread_t threads[LOGIN_THREADS];
    struct token_call calls[LOGIN_THREADS];
    pthread_barrier_t barrier;
    pthread_barrier_init(&barrier, NULL, LOGIN_THREADS);
    for (int i = 0; i < LOGIN_THREADS; i++) {
        calls[i].mgr = mgr;
        calls[i].barrier = &barrier;
        calls[i].rc = TL_OK;
        pthread_create(&threads[i], NULL, call_token, &calls[i]);
    }
    for (int i = 0; i < LOGIN_THREADS; i++) {
        pthread_join(threads[i], NULL);
        CHECK_RC(calls[i].rc, TL_LOGIN_REQUIRED);
    }
    pthread_barrier_destroy(&barrier);
    CHECK(oidc_error_stat("invalid_grant") == refused + 1);
    CHECK_RC(tl_manager_token(mgr, token, sizeof token, &written, NULL), TL_LOGIN_REQUIRED);
    CHECK(oidc_error_stat("invalid_grant") == refused + 1); /* asked again: no new request */

    /* A new login with the device flow. */
    tl_device_login *dev = NULL;
    CHECK_RC(tl_manager_start_device_login(mgr, &dev), TL_OK);
    if (!dev) goto done;
    const char *user_code = tl_device_login_user_code(dev);
    char device_prefix[320];
    snprintf(device_prefix, sizeof device_prefix, "%s/device", g_oidc.url);
    CHECK(user_code != NULL && strlen(user_code) > 0);
    CHECK(strncmp(tl_device_login_verification_uri(dev), device_prefix, strlen(device_prefix)) ==
          0);
    const char *complete = tl_device_login_verification_uri_complete(dev);
    CHECK(complete != NULL && strstr(complete, user_code) != NULL);
    CHECK(tl_device_login_interval_ms(dev) == 1000); /* the server's interval */
    CHECK(tl_device_login_expires_in_ms(dev) == 600000);
    long device_grants = oidc_stat("urn:ietf:params:oauth:grant-type:device_code");
    CHECK(browser_device(user_code, 1));
    tl_token *relogin = NULL;
    CHECK_RC(tl_manager_complete_device_login(mgr, dev, &relogin), TL_OK);
    tl_device_login_free(dev);
    if (!relogin) goto done;
    CHECK(oidc_stat("urn:ietf:params:oauth:grant-type:device_code") == device_grants + 1);
    CHECK_RC(tl_manager_token(mgr, token, sizeof token, &written, &generation), TL_OK);
    CHECK(generation == tl_token_generation(relogin));
    CHECK(oidc_is_active(token) == 1);

    /* Logout: both tokens revoked at the server; login required again. */
    long revocations = oidc_stat("revocation_requests");
    CHECK_RC(tl_manager_revoke(mgr), TL_OK);
    CHECK(oidc_stat("revocation_requests") == revocations + 2);
    CHECK(oidc_is_active(token) == 0);
    CHECK_RC(tl_manager_token(mgr, token, sizeof token, &written, NULL), TL_LOGIN_REQUIRED);
    tl_token_free(relogin);
done:
    CHECK_RC(tl_manager_free(mgr), TL_OK);
}

static void test_a_denied_device_login_is_cancelled(void) {
    tl_manager *mgr = user_login_manager(APP_CLIENT, "{\"type\": \"memory\"}");
    CHECK(mgr != NULL);
    if (!mgr) return;
    tl_device_login *dev = NULL;
    CHECK_RC(tl_manager_start_device_login(mgr, &dev), TL_OK);
    if (dev) {
        CHECK(browser_device(tl_device_login_user_code(dev), 0));
        tl_token *tok = (tl_token *)1;
        CHECK_RC(tl_manager_complete_device_login(mgr, dev, &tok), TL_CANCELLED);
        CHECK(tok == NULL);
        char detail[1024];
        last_error(mgr, detail, sizeof detail);
        CHECK(strstr(detail, "denied") != NULL);
        tl_device_login_free(dev);
    }
    char token[2048];
    size_t written = 0;
    CHECK_RC(tl_manager_token(mgr, token, sizeof token, &written, NULL), TL_LOGIN_REQUIRED);
    CHECK_RC(tl_manager_free(mgr), TL_OK);
}

struct device_wait {
    tl_manager *mgr;
    tl_device_login *dev;
    tl_result rc;
};

static void *wait_for_device_login(void *arg) {
    struct device_wait *wait = arg;
    wait->rc = tl_manager_complete_device_login(wait->mgr, wait->dev, NULL);
    return NULL;
}

static void test_a_waiting_device_login_is_cancelled_from_another_thread(void) {
    tl_manager *mgr = user_login_manager(APP_CLIENT, "{\"type\": \"memory\"}");
    CHECK(mgr != NULL);
    if (!mgr) return;
    tl_device_login *dev = NULL;
    CHECK_RC(tl_manager_start_device_login(mgr, &dev), TL_OK);
    if (dev) {
        long pending = oidc_error_stat("authorization_pending");
        struct device_wait wait = {mgr, dev, TL_OK};
        pthread_t thread;
        pthread_create(&thread, NULL, wait_for_device_login, &wait);
        /* It is polling: the server said "pending" at least once. */
        for (int i = 0; i < 200 && oidc_error_stat("authorization_pending") <= pending; i++)
            sleep_ms(50);
        CHECK(oidc_error_stat("authorization_pending") > pending);
        time_t cancelled_at = time(NULL);
        CHECK_RC(tl_device_login_cancel(dev), TL_OK);
        pthread_join(thread, NULL);
        CHECK(time(NULL) - cancelled_at <= 2); /* at once, not at the next poll or expiry */
        CHECK_RC(wait.rc, TL_CANCELLED);
        /* Cancelled stays cancelled. */
        CHECK_RC(tl_manager_complete_device_login(mgr, dev, NULL), TL_CANCELLED);
        tl_device_login_free(dev);
    }
    CHECK_RC(tl_manager_free(mgr), TL_OK);
}

/* Removes the files of a file store directory, then the directory. */
static void remove_dir(const char *dir) {
    DIR *d = opendir(dir);
    if (d != NULL) {
        struct dirent *entry;
        while ((entry = readdir(d)) != NULL) {
            if (strcmp(entry->d_name, ".") == 0 || strcmp(entry->d_name, "..") == 0) continue;
            char path[600];
            snprintf(path, sizeof path, "%s/%s", dir, entry->d_name);
            remove(path);
        }
        closedir(d);
    }
    rmdir(dir);
}

static void test_seed_never_rolls_back_a_newer_stored_login(void) {
    char dir[] = "/tmp/tokenlease-c-seed-XXXXXX";
    if (mkdtemp(dir) == NULL) {
        CHECK(!"mkdtemp");
        return;
    }
    char store[512];
    snprintf(store, sizeof store,
             "{\"type\": \"file\", \"dir\": \"%s\", \"encryption_key\": \"" ENCRYPTION_KEY "\"}",
             dir);
    char kept_value[2048], rotated[2048], token[2048];
    size_t written = 0;
    uint64_t generation = 0;
    tl_fetch_output *kept = NULL, *newer = NULL;
    CHECK_RC(tl_fetch_output_new(&kept), TL_OK);
    CHECK_RC(tl_fetch_output_new(&newer), TL_OK);
    tl_manager *mgr = NULL;

    /* First run: the app seeds the manager with a login result it got elsewhere (and keeps
     * that result itself). */
    uint64_t seeded_at = now_unix_ms();
    CHECK(external_login(kept, kept_value, sizeof kept_value));
    mgr = user_login_manager(APP_CLIENT, store);
    CHECK(mgr != NULL);
    if (!mgr) goto done;
    tl_token *served = NULL;
    CHECK_RC(tl_manager_seed(mgr, kept, seeded_at, &served), TL_OK);
    const char *value = NULL;
    CHECK(served != NULL && tl_token_value(served, &value, NULL) == TL_OK &&
          strcmp(value, kept_value) == 0);
    CHECK_RC(tl_manager_invalidate(mgr, tl_token_generation(served), NULL), TL_OK);
    tl_token_free(served);
    long refreshes = oidc_stat("refresh_token");
    CHECK_RC(tl_manager_token(mgr, rotated, sizeof rotated, &written, NULL), TL_OK);
    CHECK(oidc_stat("refresh_token") == refreshes + 1);
    CHECK_RC(tl_manager_free(mgr), TL_OK);

    /* Next run: seeding the kept (older) result again serves the rotated token from the store:
     * no request at all, and the kept refresh token (dead since the rotation) is never sent. */
    long requests = oidc_stat("token_requests");
    long refused = oidc_error_stat("invalid_grant");
    mgr = user_login_manager(APP_CLIENT, store);
    CHECK(mgr != NULL);
    if (!mgr) goto done;
    served = NULL;
    CHECK_RC(tl_manager_seed(mgr, kept, seeded_at, &served), TL_OK);
    CHECK(served != NULL && tl_token_value(served, &value, NULL) == TL_OK &&
          strcmp(value, rotated) == 0);
    CHECK(oidc_stat("token_requests") == requests);
    CHECK_RC(tl_manager_invalidate(mgr, tl_token_generation(served), NULL), TL_OK);
    tl_token_free(served);
    CHECK_RC(tl_manager_token(mgr, token, sizeof token, &written, &generation), TL_OK);
    CHECK(oidc_stat("refresh_token") == refreshes + 2); /* with the rotated refresh token */
    CHECK(oidc_error_stat("invalid_grant") == refused);
    /* Without an issue time, any stored token wins as well. */
    CHECK_RC(tl_manager_seed(mgr, kept, 0, NULL), TL_OK);
    CHECK_RC(tl_manager_token(mgr, rotated, sizeof rotated, &written, NULL), TL_OK);
    CHECK(strcmp(rotated, token) == 0);

    /* A new login replaces the stored one (tl_manager_login), as does a seed issued later. */
    char newer_value[2048];
    CHECK(external_login(newer, newer_value, sizeof newer_value));
    CHECK_RC(tl_manager_login(mgr, newer, &served), TL_OK);
    CHECK(served != NULL && tl_token_value(served, &value, NULL) == TL_OK &&
          strcmp(value, newer_value) == 0);
    tl_token_free(served);
    CHECK_RC(tl_manager_token(mgr, token, sizeof token, &written, NULL), TL_OK);
    CHECK(strcmp(token, newer_value) == 0);
    CHECK_RC(tl_manager_revoke(mgr), TL_OK);
    CHECK(oidc_is_active(newer_value) == 0);
    CHECK_RC(tl_manager_free(mgr), TL_OK);
done:
    tl_fetch_output_free(kept);
    tl_fetch_output_free(newer);
    remove_dir(dir);
}

/* ---- key credentials (issue 17) ---- */

#define CLIENT_JWT_SECRET "tokenlease-client-secret-jwt-0123456789-abcdefghij"

/* Where oidc-provider writes its signed-assertion clients' private keys (--client-keys-out). */
static char g_keys_dir[] = "/tmp/tokenlease-c-keys-XXXXXX";
static int g_have_keys_dir = 0;

/* The whole file into `out` (NUL-terminated). 1 on success. */
static int read_file(const char *path, char *out, size_t len) {
    FILE *file = fopen(path, "rb");
    if (file == NULL) return 0;
    size_t got = fread(out, 1, len - 1, file);
    int ok = !ferror(file) && feof(file);
    fclose(file);
    out[got] = '\0';
    return ok;
}

/* Writes `content` to `path`, readable by its owner only (as key files must be). */
static int write_private(const char *path, const char *content) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0) return 0;
    size_t len = strlen(content);
    int ok = fchmod(fd, 0600) == 0 && write(fd, content, len) == (ssize_t)len;
    close(fd);
    return ok;
}

/* `in` as the inside of a JSON string (PEM text: newlines, no control characters else). */
static int json_escape(const char *in, char *out, size_t len) {
    size_t at = 0;
    for (; *in; in++) {
        const char *piece = NULL;
        char one[2] = {*in, '\0'};
        if (*in == '\n') piece = "\\n";
        else if (*in == '"') piece = "\\\"";
        else if (*in == '\\') piece = "\\\\";
        else piece = one;
        size_t n = strlen(piece);
        if (at + n >= len) return 0;
        memcpy(out + at, piece, n);
        at += n;
    }
    out[at] = '\0';
    return 1;
}

/* Decodes one base64url part of a JWT into `out` (NUL-terminated). 1 on success. */
static int base64url_decode(const char *in, size_t in_len, char *out, size_t len) {
    static const char alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    unsigned long bits = 0;
    int count = 0;
    size_t at = 0;
    for (size_t i = 0; i < in_len; i++) {
        const char *found = strchr(alphabet, in[i]);
        if (found == NULL || in[i] == '\0') return 0;
        bits = (bits << 6) | (unsigned long)(found - alphabet);
        count += 6;
        if (count >= 8) {
            count -= 8;
            if (at + 1 >= len) return 0;
            out[at++] = (char)((bits >> count) & 0xff);
        }
    }
    out[at] = '\0';
    return 1;
}

/* The decoded header and claims of a compact JWT. 1 on success. */
static int jwt_parts(const char *jwt, char *header, size_t header_len, char *claims,
                     size_t claims_len) {
    const char *dot = strchr(jwt, '.');
    const char *second = dot ? strchr(dot + 1, '.') : NULL;
    if (dot == NULL || second == NULL || strchr(second + 1, '.') != NULL) return 0;
    return base64url_decode(jwt, (size_t)(dot - jwt), header, header_len) &&
           base64url_decode(dot + 1, (size_t)(second - dot - 1), claims, claims_len);
}

static void pkjwt_config(char *out, size_t len, const char *client_id, const char *alg,
                         const char *key_client) {
    snprintf(out, len,
             "{\"source\": {\"type\": \"oauth2\", \"issuer\": \"%s\", \"client_id\": \"%s\","
             " \"scopes\": [\"api:read\"], \"client_auth\": {\"private_key_jwt\": {"
             "\"key\": {\"file\": \"%s/%s.pem\"}, \"alg\": \"%s\", \"kid\": \"%s\"}}}}",
             g_oidc.url, client_id, g_keys_dir, key_client, alg,
             strcmp(alg, "RS256") == 0 ? "pkjwt-rs" : "pkjwt-es");
}

static void test_private_key_jwt_and_client_secret_jwt(void) {
    const char *clients[2][2] = {{"tokenlease-pkjwt", "RS256"}, {"tokenlease-pkjwt-es", "ES256"}};
    char config[2048], first[512], second[512], detail[1024];
    size_t written = 0;
    uint64_t generation = 0;
    long grants = oidc_stat("client_credentials");
    for (int i = 0; i < 2; i++) {
        pkjwt_config(config, sizeof config, clients[i][0], clients[i][1], clients[i][0]);
        tl_manager *mgr = manager_from(config);
        CHECK(mgr != NULL);
        if (!mgr) return;
        CHECK_RC(tl_manager_token(mgr, first, sizeof first, &written, &generation), TL_OK);
        CHECK(oidc_is_active(first) == 1);
        /* A new signed assertion per token request (the server refuses a replayed jti). */
        bool invalidated = false;
        CHECK_RC(tl_manager_invalidate(mgr, generation, &invalidated), TL_OK);
        CHECK(invalidated);
        CHECK_RC(tl_manager_token(mgr, second, sizeof second, &written, NULL), TL_OK);
        CHECK(strcmp(first, second) != 0);
        CHECK_RC(tl_manager_free(mgr), TL_OK);
    }
    CHECK(oidc_stat("client_credentials") == grants + 4);

    /* client_secret_jwt: an HS256 assertion signed with the client secret. */
    snprintf(config, sizeof config,
             "{\"source\": {\"type\": \"oauth2\", \"issuer\": \"%s\", \"client_id\":"
             " \"tokenlease-secretjwt\", \"client_secret\": \"" CLIENT_JWT_SECRET "\","
             " \"client_auth\": \"client_secret_jwt\", \"scopes\": [\"api:read\"]}}",
             g_oidc.url);
    tl_manager *mgr = manager_from(config);
    CHECK(mgr != NULL);
    if (!mgr) return;
    CHECK_RC(tl_manager_token(mgr, first, sizeof first, &written, NULL), TL_OK);
    CHECK(oidc_is_active(first) == 1);
    CHECK_RC(tl_manager_free(mgr), TL_OK);

    /* The wrong key (the ES client's for the RS client): client authentication fails, and the
     * error says so without the key. */
    pkjwt_config(config, sizeof config, "tokenlease-pkjwt", "ES256", "tokenlease-pkjwt-es");
    mgr = manager_from(config);
    CHECK(mgr != NULL);
    if (!mgr) return;
    CHECK_RC(tl_manager_token(mgr, first, sizeof first, &written, NULL), TL_INVALID_CREDENTIALS);
    last_error(mgr, detail, sizeof detail);
    CHECK(strstr(detail, "PRIVATE KEY") == NULL);
    CHECK_RC(tl_manager_free(mgr), TL_OK);
}

static void test_dpop_bound_token_and_proofs(void) {
    char config[1024];
    snprintf(config, sizeof config,
             "{\"source\": {\"type\": \"oauth2\", \"issuer\": \"%s\", \"client_id\":"
             " \"tokenlease-dpop\", \"client_secret\": \"" SECRET "\", \"scopes\": [\"api:read\"],"
             " \"dpop\": true}}",
             g_oidc.url);
    long challenges = oidc_error_stat("use_dpop_nonce");
    tl_manager *mgr = manager_from(config);
    CHECK(mgr != NULL);
    if (!mgr) return;
    tl_token *tok = NULL;
    CHECK_RC(tl_manager_token_handle(mgr, &tok), TL_OK);
    if (!tok) goto done;
    const char *type = NULL, *value = NULL;
    CHECK_RC(tl_token_type(tok, &type, NULL), TL_OK);
    CHECK(strcmp(type, "DPoP") == 0); /* a bound token is never Bearer */
    CHECK_RC(tl_token_value(tok, &value, NULL), TL_OK);
    CHECK(oidc_is_active(value) == 1);
    CHECK(oidc_error_stat("use_dpop_nonce") == challenges + 1); /* the server's nonce, once */

    char name[64], header[4096];
    size_t nw = 0, vw = 0;
    bool has = false;
    CHECK_RC(tl_manager_request_header(mgr, tok, name, sizeof name, &nw, header, sizeof header,
                                       &vw, &has),
             TL_OK);
    CHECK(has && strcmp(name, "authorization") == 0 && strncmp(header, "DPoP ", 5) == 0);

    /* The proof: a size query, then the proof itself, an ES256 dpop+jwt for GET <url>. */
    const char *url = "https://api.example/v1/items?page=2";
    char proof[4096], head[1024], claims[2048];
    size_t written = 0;
    bool has_proof = false;
    CHECK_RC(tl_manager_dpop_proof(mgr, tok, "GET", url, NULL, 0, &written, &has_proof),
             TL_BUFFER_TOO_SMALL);
    CHECK(has_proof && written > 100);
    size_t needed = written;
    CHECK_RC(tl_manager_dpop_proof(mgr, tok, "get", url, proof, needed, &written, &has_proof),
             TL_OK);
    CHECK(has_proof && written == needed - 1 && strlen(proof) == written);
    CHECK(jwt_parts(proof, head, sizeof head, claims, sizeof claims));
    CHECK(strstr(head, "\"typ\":\"dpop+jwt\"") != NULL);
    CHECK(strstr(head, "\"alg\":\"ES256\"") != NULL && strstr(head, "\"jwk\":{") != NULL);
    CHECK(strstr(claims, "\"htm\":\"GET\"") != NULL);
    CHECK(strstr(claims, "\"htu\":\"https://api.example/v1/items\"") != NULL);
    CHECK(strstr(claims, "\"ath\":\"") != NULL && strstr(claims, "\"nonce\"") == NULL);
    char again[4096];
    CHECK_RC(tl_manager_dpop_proof(mgr, tok, "GET", url, again, sizeof again, &written,
                                   &has_proof),
             TL_OK);
    CHECK(strcmp(again, proof) != 0); /* a new jti every time */
    CHECK_RC(tl_manager_dpop_proof(mgr, tok, "GET", "/relative", again, sizeof again, &written,
                                   &has_proof),
             TL_USAGE);
    CHECK(!has_proof && again[0] == '\0');

    /* A nonce a response brings goes into the next proofs to that origin. */
    tl_header plain[] = {{"Content-Type", "text/plain"}};
    tl_header nonce[] = {{"Content-Type", "text/plain"}, {"DPoP-Nonce", "nonce-1"}};
    bool is_new = true;
    CHECK_RC(tl_manager_remember_dpop_nonce(mgr, url, plain, 1, &is_new), TL_OK);
    CHECK(!is_new);
    CHECK_RC(tl_manager_remember_dpop_nonce(mgr, url, nonce, 2, &is_new), TL_OK);
    CHECK(is_new);
    CHECK_RC(tl_manager_remember_dpop_nonce(mgr, url, nonce, 2, &is_new), TL_OK);
    CHECK(!is_new);
    CHECK_RC(tl_manager_remember_dpop_nonce(mgr, "not a url", nonce, 2, &is_new), TL_USAGE);
    CHECK_RC(tl_manager_dpop_proof(mgr, tok, "GET", url, proof, sizeof proof, &written,
                                   &has_proof),
             TL_OK);
    CHECK(jwt_parts(proof, head, sizeof head, claims, sizeof claims));
    CHECK(strstr(claims, "\"nonce\":\"nonce-1\"") != NULL);
    tl_token_free(tok);
    tok = NULL;

    /* A Bearer token has no proof, and a manager without DPoP keeps no nonce. */
    tl_manager *bearer = manager_for(g_oidc.url, "tokenlease-basic", SECRET, "basic",
                                     CLIENT_CREDENTIALS, "[\"api:read\"]");
    CHECK(bearer != NULL);
    if (bearer) {
        CHECK_RC(tl_manager_token_handle(bearer, &tok), TL_OK);
        strcpy(proof, "x");
        written = 7;
        CHECK_RC(tl_manager_dpop_proof(bearer, tok, "GET", url, proof, sizeof proof, &written,
                                       &has_proof),
                 TL_OK);
        CHECK(!has_proof && written == 0 && proof[0] == '\0');
        CHECK_RC(tl_manager_remember_dpop_nonce(bearer, url, nonce, 2, &is_new), TL_OK);
        CHECK(!is_new);
        tl_token_free(tok);
        tok = NULL;
        CHECK_RC(tl_manager_free(bearer), TL_OK);
    }
done:
    tl_token_free(tok);
    CHECK_RC(tl_manager_free(mgr), TL_OK);
}

/* A DPoP-bound user login, then oidc-provider's userinfo API (GET <issuer>/me) over raw
 * HTTP: Authorization: DPoP <token> plus a proof from tl_manager_dpop_proof, sent once more
 * when a 401 brings a new nonce (the server requires its nonces everywhere). */
static void test_dpop_user_login_calls_userinfo_with_a_proof(void) {
    static struct http_answer answer;
    char config[1024], redirect[3072], me[512], path[512], proof[4096], name[64],
        value[4096], headers[9000];
    snprintf(config, sizeof config,
             "{\"source\": {\"type\": \"oauth2\", \"issuer\": \"%s\", \"client_id\": \"" APP_CLIENT
             "\", \"grant\": {\"type\": \"user_login\"}, \"scopes\": [\"openid\","
             " \"offline_access\"], \"authorization_params\": {\"prompt\": \"consent\"},"
             " \"dpop\": true}}",
             g_oidc.url);
    tl_manager *mgr = manager_from(config);
    CHECK(mgr != NULL);
    if (!mgr) return;
    tl_login_request *req = NULL;
    tl_token *tok = NULL;
    CHECK_RC(tl_manager_begin_login(mgr, REDIRECT_URI, &req), TL_OK);
    if (!req) goto done;
    CHECK(browser_authorize(tl_login_request_url(req), redirect, sizeof redirect));
    CHECK_RC(tl_manager_complete_login(mgr, req, redirect, &tok), TL_OK);
    tl_login_request_free(req);
    if (!tok) goto done;
    const char *type = NULL;
    CHECK_RC(tl_token_type(tok, &type, NULL), TL_OK);
    CHECK(strcmp(type, "DPoP") == 0);

    snprintf(me, sizeof me, "%s/me", g_oidc.url);
    snprintf(path, sizeof path, "%s/me", issuer_path());
    size_t nw = 0, vw = 0, written = 0;
    bool has = false, has_proof = false, resend = false;
    CHECK_RC(tl_manager_request_header(mgr, tok, name, sizeof name, &nw, value, sizeof value, &vw,
                                       &has),
             TL_OK);
    int status = -1, sends = 0;
    for (; sends < 2; sends++) {
        CHECK_RC(tl_manager_dpop_proof(mgr, tok, "GET", me, proof, sizeof proof, &written,
                                       &has_proof),
                 TL_OK);
        CHECK(has_proof);
        snprintf(headers, sizeof headers, "%s: %s\r\nDPoP: %s\r\n", name, value, proof);
        status = http_exchange_to(g_oidc.port, "GET", path, headers, NULL, NULL, 0, &answer);
        /* Core decides whether the server's new nonce is worth one more send. */
        CHECK_RC(tl_manager_dpop_resend(mgr, tok, me, (uint16_t)status, answer.headers,
                                        answer.header_count, &resend),
                 TL_OK);
        if (!resend) break;
    }
    CHECK(status == 200);
    CHECK(strstr(answer.body, "\"sub\":\"alice\"") != NULL);
    if (status != 200) fprintf(stderr, "GET /me: %d %s\n", status, answer.body);
    /* Without a proof the bound token is refused. */
    snprintf(headers, sizeof headers, "%s: %s\r\n", name, value);
    status = http_exchange_to(g_oidc.port, "GET", path, headers, NULL, NULL, 0, &answer);
    CHECK(status == 400 || status == 401);
    memset(value, 0, sizeof value);
    memset(proof, 0, sizeof proof);
done:
    tl_token_free(tok);
    CHECK_RC(tl_manager_free(mgr), TL_OK);
}

/* A Google service-account key file made with openssl, against the test token server started
 * with --jwt-bearer-keys (its JWT-bearer grant verifies the RS256 signature). */
static void test_service_account_key_file(void) {
    const char *binary = getenv("TOKENLEASE_TEST_SERVER_BIN");
    if (binary == NULL || access(binary, X_OK) != 0) {
        missing("test_service_account_key_file",
                "TOKENLEASE_TEST_SERVER_BIN is not set (scripts/test-c sets it)");
        return;
    }
    char dir[] = "/tmp/tokenlease-c-sa-XXXXXX";
    if (mkdtemp(dir) == NULL) {
        CHECK(!"mkdtemp");
        return;
    }
    static char pem[8192], escaped[16384], json[20000];
    char command[512], keys[300], key_file[300], config[1024], token[2048], body[4096];
    spawned server = {-1, -1, "", "", 0, -1, 0};
    tl_manager *mgr = NULL;
    snprintf(command, sizeof command,
             "openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out %s/key.pem "
             ">/dev/null 2>&1 && openssl pkey -in %s/key.pem -pubout -out %s/key.pub.pem "
             ">/dev/null 2>&1",
             dir, dir, dir);
    CHECK(system(command) == 0);
    const char *email = "c-batch@project.iam.gserviceaccount.com";
    snprintf(keys, sizeof keys, "%s/key.pub.pem", dir);
    CHECK(read_file(keys, pem, sizeof pem) && json_escape(pem, escaped, sizeof escaped));
    snprintf(json, sizeof json, "[{\"issuer\": \"%s\", \"public_key_pem\": \"%s\"}]", email,
             escaped);
    snprintf(keys, sizeof keys, "%s/keys.json", dir);
    CHECK(write_private(keys, json));
    char *argv[] = {(char *)binary, "--max-lifetime-s", "120", "--jwt-bearer-keys", keys, NULL};
    if (!spawn_server(argv, "TOKENLEASE_TEST_SERVER_URL", &server)) {
        CHECK(!"the test token server did not start");
        goto done;
    }
    snprintf(key_file, sizeof key_file, "%s/key.pem", dir);
    CHECK(read_file(key_file, pem, sizeof pem) && json_escape(pem, escaped, sizeof escaped));
    snprintf(json, sizeof json,
             "{\"type\": \"service_account\", \"project_id\": \"project\", \"private_key_id\":"
             " \"key-1\", \"private_key\": \"%s\", \"client_email\": \"%s\", \"client_id\":"
             " \"1234567890\", \"token_uri\": \"%s/oauth/token\"}",
             escaped, email, server.url);
    snprintf(key_file, sizeof key_file, "%s/service-account.json", dir);
    CHECK(write_private(key_file, json));
    memset(pem, 0, sizeof pem);
    memset(escaped, 0, sizeof escaped);
    memset(json, 0, sizeof json);
    snprintf(config, sizeof config,
             "{\"source\": {\"type\": \"service_account\", \"key_file\": {\"file\": \"%s\"},"
             " \"scopes\": [\"batch\"]}}",
             key_file);
    mgr = manager_from(config);
    CHECK(mgr != NULL);
    if (!mgr) goto done;
    size_t written = 0;
    uint64_t generation = 0;
    CHECK_RC(tl_manager_token(mgr, token, sizeof token, &written, &generation), TL_OK);
    CHECK(http_to(server.port, "GET", "/stats", NULL, NULL, NULL, body, sizeof body) == 200);
    CHECK(strstr(body, "\"jwt_bearer_grants\":1") != NULL);
    CHECK_RC(tl_manager_invalidate(mgr, generation, NULL), TL_OK);
    CHECK_RC(tl_manager_token(mgr, token, sizeof token, &written, NULL), TL_OK);
    CHECK(http_to(server.port, "GET", "/stats", NULL, NULL, NULL, body, sizeof body) == 200);
    CHECK(strstr(body, "\"jwt_bearer_grants\":2") != NULL); /* a new assertion per request */
    CHECK_RC(tl_manager_free(mgr), TL_OK);
    mgr = NULL;
    /* A key file others may read is refused before anything is sent. */
    CHECK(chmod(key_file, 0644) == 0);
    tl_manager *refused = NULL;
    CHECK_RC(tl_manager_from_config(config, &refused), TL_CONFIGURATION);
    CHECK(refused == NULL);
done:
    if (mgr) CHECK_RC(tl_manager_free(mgr), TL_OK);
    stop_server(&server);
    remove_dir(dir);
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
        g_have_keys_dir = mkdtemp(g_keys_dir) != NULL;
        char *argv[] = {"node", "tests/oidc/server.js", "--lifetime", "300", "--exit-with-stdin",
                        "--mount", "/realms/tl", "--client-keys-out", g_keys_dir, NULL};
        /* A server that stalls at start-up (seen rarely on a loaded machine) is started once
         * more. */
        int started = spawn_server(argv, "OIDC_PROVIDER_URL", &g_oidc);
        if (!started) {
            printf("# oidc-provider did not start within 60 s; starting it again\n");
            started = spawn_server(argv, "OIDC_PROVIDER_URL", &g_oidc);
        }
        if (!started) {
            printf("FAIL oidc-provider did not start\n");
            g_failures++;
        } else {
            printf("# oidc-provider issuer %s\n", g_oidc.url);
            RUN(test_path_issuer_client_credentials_basic_and_post);
            RUN(test_bad_secret_is_invalid_credentials);
            RUN(test_password_grant_rotation_and_revoke);
            RUN(test_an_issuer_without_metadata_is_a_configuration_error_naming_both_urls);
            RUN(test_user_login_browser_refresh_access_removed_device_relogin_logout);
            RUN(test_a_denied_device_login_is_cancelled);
            RUN(test_a_waiting_device_login_is_cancelled_from_another_thread);
            RUN(test_seed_never_rolls_back_a_newer_stored_login);
            RUN(test_private_key_jwt_and_client_secret_jwt);
            RUN(test_dpop_bound_token_and_proofs);
            RUN(test_dpop_user_login_calls_userinfo_with_a_proof);
            stop_server(&g_oidc);
        }
        if (g_have_keys_dir) remove_dir(g_keys_dir);
    }
    RUN(test_service_account_key_file);

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
