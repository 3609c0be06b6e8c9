/* End-to-end tests of the C ABI against the real test token server (loopback):
 * fetch and cache, concurrent callers on a cold cache and during a refresh, background
 * refresh, retry after rejection, revoke, events, status, errors with their kinds, and
 * session APIs (the vSphere and Zuora SOAP profiles: the header, the body and the verdict
 * from core). */
#include "test_support.h"

#include <pthread.h>
#include <stdatomic.h>

#define THREADS 16

static tl_manager *new_manager(const char *key, const char *secret, const char *policy) {
    char config[2048];
    server_config(config, sizeof config, key, secret, policy);
    return manager_from(config);
}

static void test_fetch_and_cache(void) {
    tl_manager *mgr = new_manager("c-fetch-cache", "demo-secret", NULL);
    CHECK(mgr != NULL);
    if (!mgr) return;
    long before = server_stat("token_requests");
    char token[512];
    size_t written = 0;
    uint64_t generation = 0;
    CHECK_RC(tl_manager_token(mgr, token, sizeof token, &written, &generation), TL_OK);
    CHECK(written > 0 && written == strlen(token));
    CHECK(generation == 1);
    CHECK(server_stat("token_requests") == before + 1);
    CHECK(server_resource(token) == 200);

    /* Second call: served from the cache, no token request. */
    char again[512];
    uint64_t generation2 = 0;
    CHECK_RC(tl_manager_token(mgr, again, sizeof again, &written, &generation2), TL_OK);
    CHECK(strcmp(token, again) == 0);
    CHECK(generation2 == 1);
    CHECK(server_stat("token_requests") == before + 1);

    /* The handle form. */
    tl_token *tok = NULL;
    CHECK_RC(tl_manager_token_handle(mgr, &tok), TL_OK);
    const char *value = NULL;
    size_t value_len = 0;
    CHECK_RC(tl_token_value(tok, &value, &value_len), TL_OK);
    CHECK(value_len == strlen(token) && memcmp(value, token, value_len) == 0);
    const char *type = NULL;
    CHECK_RC(tl_token_type(tok, &type, NULL), TL_OK);
    CHECK(type != NULL && strcmp(type, "Bearer") == 0);
    CHECK(tl_token_generation(tok) == 1);
    uint64_t now_ms = (uint64_t)time(NULL) * 1000;
    uint64_t expires = tl_token_expires_at_unix_ms(tok);
    CHECK(expires > now_ms + 3000 * 1000 && expires < now_ms + 3700 * 1000);
    CHECK(server_stat("token_requests") == before + 1);

    tl_status status;
    CHECK_RC(tl_manager_status(mgr, &status), TL_OK);
    CHECK(status.state == TL_STATE_FRESH);
    CHECK(status.generation == 1);
    CHECK(status.counters.fetches == 1);
    CHECK(status.last_error == TL_OK);
    CHECK(status.expires_at_unix_ms == expires);

    char key[64];
    CHECK_RC(tl_manager_key(mgr, key, sizeof key, &written), TL_OK);
    CHECK(strcmp(key, "c-fetch-cache") == 0);

    /* A tl_token outlives its manager. */
    tl_manager_free(mgr);
    CHECK_RC(tl_token_value(tok, &value, &value_len), TL_OK);
    CHECK(memcmp(value, token, value_len) == 0);
    tl_token_free(tok);
}

struct thread_arg {
    tl_manager *mgr;
    pthread_barrier_t *barrier;
    tl_result rc;
    uint64_t generation;
    char token[512];
};

static void *get_token_thread(void *p) {
    struct thread_arg *arg = p;
    size_t written = 0;
    pthread_barrier_wait(arg->barrier);
    arg->rc = tl_manager_token(arg->mgr, arg->token, sizeof arg->token, &written, &arg->generation);
    return NULL;
}

static void run_threads(tl_manager *mgr, struct thread_arg *args) {
    pthread_t threads[THREADS];
    pthread_barrier_t barrier;
    pthread_barrier_init(&barrier, NULL, THREADS);
    for (int i = 0; i < THREADS; i++) {
        args[i].mgr = mgr;
        args[i].barrier = &barrier;
        args[i].rc = TL_INTERNAL;
        pthread_create(&threads[i], NULL, get_token_thread, &args[i]);
    }
    for (int i = 0; i < THREADS; i++) pthread_join(threads[i], NULL);
    pthread_barrier_destroy(&barrier);
}

static void test_concurrent_cold_cache(void) {
    tl_manager *mgr = new_manager("c-concurrent", "demo-secret", NULL);
    CHECK(mgr != NULL);
    if (!mgr) return;
    /* Slow token endpoint, so every thread arrives while the first request is in flight. */
    CHECK(server_control("{\"latency_ms\": 300}") == 200);
    long before = server_stat("token_requests");
    struct thread_arg args[THREADS];
    run_threads(mgr, args);
    for (int i = 0; i < THREADS; i++) {
        CHECK_RC(args[i].rc, TL_OK);
        CHECK(args[i].generation == 1);
        CHECK(strcmp(args[i].token, args[0].token) == 0);
    }
    CHECK(server_stat("token_requests") == before + 1);

    /* During a refresh: invalidate, then all threads wait for the one new token. */
    bool invalidated = false;
    CHECK_RC(tl_manager_invalidate(mgr, 1, &invalidated), TL_OK);
    CHECK(invalidated);
    run_threads(mgr, args);
    for (int i = 0; i < THREADS; i++) {
        CHECK_RC(args[i].rc, TL_OK);
        CHECK(args[i].generation == 2);
    }
    CHECK(server_stat("token_requests") == before + 2);
    CHECK(server_control("{\"latency_ms\": 0}") == 200);
    tl_manager_free(mgr);
}

static void test_retry_after_rejection(void) {
    tl_manager *mgr = new_manager("c-retry", "demo-secret", NULL);
    CHECK(mgr != NULL);
    if (!mgr) return;
    char token[512];
    size_t written = 0;
    uint64_t generation = 0;
    CHECK_RC(tl_manager_token(mgr, token, sizeof token, &written, &generation), TL_OK);
    CHECK(server_resource(token) == 200);

    /* The server revokes every token early: the request is rejected. */
    CHECK(server_control("{\"revoke_all\": true}") == 200);
    CHECK(server_resource(token) == 401);

    /* Retry-on-expiry: invalidate exactly that generation, wait, get, retry once. */
    long before = server_stat("token_requests");
    uint64_t new_generation = 0;
    CHECK_RC(tl_manager_token_after_rejection(mgr, generation, token, sizeof token, &written,
                                              &new_generation),
             TL_OK);
    CHECK(new_generation == generation + 1);
    CHECK(server_resource(token) == 200);
    CHECK(server_stat("token_requests") == before + 1);

    /* A late rejection of the old generation never discards the new token. */
    bool invalidated = true;
    CHECK_RC(tl_manager_invalidate(mgr, generation, &invalidated), TL_OK);
    CHECK(!invalidated);
    uint64_t same = 0;
    CHECK_RC(tl_manager_token_after_rejection(mgr, generation, token, sizeof token, &written,
                                              &same),
             TL_OK);
    CHECK(same == new_generation);
    CHECK(server_stat("token_requests") == before + 1);
    tl_manager_free(mgr);
}

struct event_log {
    atomic_int started;
    atomic_int started_initial;
    atomic_int succeeded;
    atomic_int failed;
    atomic_int invalidated;
    atomic_int revoked;
    atomic_int scheduled;
    atomic_int bad_key;
    atomic_uint last_error;
};

static void on_event(void *userdata, const tl_event *event) {
    struct event_log *log = userdata;
    if (event->key == NULL || strcmp(event->key, "c-events") != 0) atomic_fetch_add(&log->bad_key, 1);
    switch (event->kind) {
    case TL_EVENT_REFRESH_STARTED:
        atomic_fetch_add(&log->started, 1);
        if (event->reason == TL_REASON_INITIAL) atomic_fetch_add(&log->started_initial, 1);
        if (event->reason == TL_REASON_SCHEDULED) atomic_fetch_add(&log->scheduled, 1);
        break;
    case TL_EVENT_REFRESH_SUCCEEDED: atomic_fetch_add(&log->succeeded, 1); break;
    case TL_EVENT_REFRESH_FAILED:
        atomic_fetch_add(&log->failed, 1);
        atomic_store(&log->last_error, (unsigned)event->error);
        break;
    case TL_EVENT_INVALIDATED: atomic_fetch_add(&log->invalidated, 1); break;
    case TL_EVENT_REVOKED: atomic_fetch_add(&log->revoked, 1); break;
    default: break;
    }
}

static void test_events_and_revoke(void) {
    tl_manager *mgr = new_manager("c-events", "demo-secret", NULL);
    CHECK(mgr != NULL);
    if (!mgr) return;
    static struct event_log log;
    memset(&log, 0, sizeof log);
    CHECK_RC(tl_manager_set_event_callback(mgr, on_event, &log), TL_OK);
    char token[512];
    size_t written = 0;
    uint64_t generation = 0;
    CHECK_RC(tl_manager_token(mgr, token, sizeof token, &written, &generation), TL_OK);
    CHECK_RC(tl_manager_flush_events(mgr, 10000), TL_OK);
    CHECK(atomic_load(&log.started_initial) == 1);
    CHECK(atomic_load(&log.succeeded) == 1);
    bool invalidated = false;
    CHECK_RC(tl_manager_invalidate(mgr, generation, &invalidated), TL_OK);
    CHECK_RC(tl_manager_flush_events(mgr, 10000), TL_OK);
    CHECK(invalidated && atomic_load(&log.invalidated) == 1);

    CHECK_RC(tl_manager_token(mgr, token, sizeof token, &written, &generation), TL_OK);
    long revocations = server_stat("revocations");
    CHECK_RC(tl_manager_revoke(mgr), TL_OK);
    CHECK_RC(tl_manager_flush_events(mgr, 10000), TL_OK);
    CHECK(atomic_load(&log.revoked) == 1);
    CHECK(server_stat("revocations") == revocations + 1);
    CHECK(server_resource(token) == 401);
    tl_status status;
    CHECK_RC(tl_manager_status(mgr, &status), TL_OK);
    CHECK(status.state == TL_STATE_EMPTY && status.generation == 0);
    uint64_t after_revoke = 0;
    CHECK_RC(tl_manager_token(mgr, token, sizeof token, &written, &after_revoke), TL_OK);
    CHECK(after_revoke == generation + 1);
    CHECK(server_resource(token) == 200);

    /* Removing the callback: no more events. */
    CHECK_RC(tl_manager_set_event_callback(mgr, NULL, NULL), TL_OK);
    CHECK_RC(tl_manager_flush_events(mgr, 10000), TL_OK);
    int succeeded = atomic_load(&log.succeeded);
    CHECK_RC(tl_manager_invalidate(mgr, after_revoke, NULL), TL_OK);
    CHECK_RC(tl_manager_token(mgr, token, sizeof token, &written, NULL), TL_OK);
    CHECK_RC(tl_manager_flush_events(mgr, 10000), TL_OK);
    CHECK(atomic_load(&log.succeeded) == succeeded);
    CHECK(atomic_load(&log.bad_key) == 0);
    tl_manager_free(mgr);
}

static void test_background_refresh(void) {
    /* Tokens of 4 s: the advisory window is half the lifetime, so the timer refreshes at ~2 s
     * without any caller. */
    CHECK(server_control("{\"default_ttl_s\": 4}") == 200);
    tl_manager *mgr = new_manager("c-events", "demo-secret", NULL);
    CHECK(mgr != NULL);
    if (!mgr) return;
    static struct event_log log;
    memset(&log, 0, sizeof log);
    CHECK_RC(tl_manager_set_event_callback(mgr, on_event, &log), TL_OK);
    char token[512];
    size_t written = 0;
    uint64_t generation = 0;
    CHECK_RC(tl_manager_token(mgr, token, sizeof token, &written, &generation), TL_OK);
    CHECK(generation == 1);
    tl_status status;
    memset(&status, 0, sizeof status);
    for (int i = 0; i < 100; i++) {
        sleep_ms(100);
        tl_manager_status(mgr, &status);
        if (status.generation >= 2) break;
    }
    CHECK(status.generation >= 2);
    CHECK_RC(tl_manager_flush_events(mgr, 10000), TL_OK);
    CHECK(atomic_load(&log.scheduled) >= 1);
    /* The caller gets the refreshed token from the cache. */
    uint64_t now_generation = 0;
    CHECK_RC(tl_manager_token(mgr, token, sizeof token, &written, &now_generation), TL_OK);
    CHECK(now_generation >= 2);
    CHECK(server_resource(token) == 200);
    CHECK(server_control("{\"default_ttl_s\": 3600}") == 200);
    tl_manager_free(mgr);
}

static void test_errors_keep_their_kind(void) {
    /* Wrong client secret: TL_INVALID_CREDENTIALS with a detail, no secret in it. */
    tl_manager *mgr = new_manager("c-bad-secret", "wrong-secret-value", NULL);
    CHECK(mgr != NULL);
    if (!mgr) return;
    char token[512];
    size_t written = 0;
    CHECK_RC(tl_manager_token(mgr, token, sizeof token, &written, NULL), TL_INVALID_CREDENTIALS);
    char detail[1024];
    CHECK_RC(tl_manager_last_error(mgr, detail, sizeof detail, &written), TL_OK);
    CHECK(strstr(detail, "invalid_credentials") != NULL);
    CHECK(strstr(detail, "wrong-secret-value") == NULL);
    tl_status status;
    CHECK_RC(tl_manager_status(mgr, &status), TL_OK);
    CHECK(status.last_error == TL_INVALID_CREDENTIALS);
    CHECK(status.counters.failures == 1);
    tl_manager_free(mgr);

    /* An outage on a cold cache: a transient error, kind preserved. */
    mgr = new_manager("c-outage", "demo-secret", "{\"backoff_base_ms\": 50}");
    CHECK(mgr != NULL);
    if (!mgr) return;
    CHECK(server_control("{\"outage\": {\"mode\": \"status503\"}}") == 200);
    CHECK_RC(tl_manager_token(mgr, token, sizeof token, &written, NULL), TL_TRANSIENT);
    CHECK(server_control("{\"clear_outage\": true}") == 200);
    tl_result rc = TL_TRANSIENT;
    for (int i = 0; i < 50 && rc != TL_OK; i++) {
        sleep_ms(100);
        rc = tl_manager_token(mgr, token, sizeof token, &written, NULL);
    }
    CHECK_RC(rc, TL_OK);

    /* Closed: TL_CLOSED, idempotent close. */
    CHECK_RC(tl_manager_close(mgr), TL_OK);
    CHECK_RC(tl_manager_close(mgr), TL_OK);
    CHECK_RC(tl_manager_token(mgr, token, sizeof token, &written, NULL), TL_CLOSED);
    tl_manager_free(mgr);

    /* Config errors name the field, from the thread-local constructor detail. */
    tl_manager *none = (tl_manager *)1;
    CHECK_RC(tl_manager_from_config("{\"source\": {\"type\": \"oauth2_client_credentials\"}}", &none),
             TL_CONFIGURATION);
    CHECK(none == NULL);
    CHECK_RC(tl_manager_last_error(NULL, detail, sizeof detail, &written), TL_OK);
    CHECK(strstr(detail, "missing field `client_id`") != NULL);
    /* TOML works too. */
    char toml[1024];
    snprintf(toml, sizeof toml,
             "key = \"c-toml\"\n[source]\ntype = \"oauth2_client_credentials\"\n"
             "token_url = \"%s/oauth/token\"\nclient_id = \"demo-client\"\n"
             "client_secret = \"demo-secret\"\n",
             server_url());
    CHECK_RC(tl_manager_from_config(toml, &mgr), TL_OK);
    CHECK_RC(tl_manager_token(mgr, token, sizeof token, &written, NULL), TL_OK);
    tl_manager_free(mgr);
}

/* ---- session login secrets never reach errors, events or keys ---- */

struct message_log {
    pthread_mutex_t lock;
    char text[4096];
};

static void collect_messages(void *userdata, const tl_event *event) {
    struct message_log *log = userdata;
    pthread_mutex_lock(&log->lock);
    size_t used = strlen(log->text);
    snprintf(log->text + used, sizeof log->text - used, "%s|%s|", event->key ? event->key : "",
             event->message ? event->message : "");
    pthread_mutex_unlock(&log->lock);
}

static void test_session_login_secrets_stay_secret(void) {
    const char *password = "c-session-password-5e1d";
    const char *url_password = "c-url-password-0b7f";
    const char *host = strstr(server_url(), "://") + 3;
    char config[2048];
    snprintf(config, sizeof config,
             "{\"source\": {\"type\": \"session_login\","
             " \"credentials\": {\"username\": \"svc\", \"password\": \"%s\"},"
             " \"session\": {\"login\": {\"url\": \"http://svc:%s@%s/fault/status/500/login/"
             "{{password}}?p={{password}}\", \"json\": {\"password\": \"{{password}}\"}},"
             " \"token\": {\"json_pointer\": \"/session/id\"}, \"lifetime_s\": 900,"
             " \"send\": {\"header\": \"vmware-api-session-id\"}}}}",
             password, url_password, host);
    tl_manager *mgr = NULL;
    CHECK_RC(tl_manager_from_config(config, &mgr), TL_OK);
    if (!mgr) return;
    static struct message_log log;
    memset(&log, 0, sizeof log);
    pthread_mutex_init(&log.lock, NULL);
    CHECK_RC(tl_manager_set_event_callback(mgr, collect_messages, &log), TL_OK);
    char token[256];
    size_t written = 0;
    CHECK(tl_manager_token(mgr, token, sizeof token, &written, NULL) != TL_OK);
    CHECK_RC(tl_manager_flush_events(mgr, 10000), TL_OK);
    char detail[1024];
    CHECK_RC(tl_manager_last_error(mgr, detail, sizeof detail, &written), TL_OK);
    char key[512];
    CHECK_RC(tl_manager_key(mgr, key, sizeof key, &written), TL_OK);
    CHECK(strstr(detail, "{{password}}") != NULL);
    const char *texts[] = {detail, key, log.text};
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
        if (strstr(texts[i], password) || strstr(texts[i], url_password)) {
            fprintf(stderr, "secret leaked: %s\n", texts[i]);
        }
        CHECK(strstr(texts[i], password) == NULL);
        CHECK(strstr(texts[i], url_password) == NULL);
    }
    CHECK_RC(tl_manager_free(mgr), TL_OK);
    pthread_mutex_destroy(&log.lock);
}

/* ---- session APIs (issue 16): the vSphere and Zuora SOAP profiles of examples/profiles,
 * pointed at the test server; the header, the body and the verdict come from core ---- */

/* examples/profiles/NAME (the tests run from the checkout's root) with `host` replaced by
 * the test server's URL and the {"env": ...} credentials replaced by inline ones. */
static int load_profile(const char *name, const char *host, const char *user_env,
                        const char *password_env, const char *password, char *out, size_t len) {
    char path[512];
    snprintf(path, sizeof path, "examples/profiles/%s", name);
    FILE *file = fopen(path, "r");
    if (file == NULL) {
        fprintf(stderr, "cannot open %s (run from the checkout's root)\n", path);
        return 0;
    }
    static char text[16384], step1[16384], step2[16384];
    size_t got = fread(text, 1, sizeof text - 1, file);
    fclose(file);
    text[got] = '\0';
    char user_from[64], password_from[64], password_to[128];
    snprintf(user_from, sizeof user_from, "{\"env\": \"%s\"}", user_env);
    snprintf(password_from, sizeof password_from, "{\"env\": \"%s\"}", password_env);
    snprintf(password_to, sizeof password_to, "\"%s\"", password);
    return replace_all(text, host, server_url(), step1, sizeof step1) &&
           replace_all(step1, user_from, "\"alice\"", step2, sizeof step2) &&
           replace_all(step2, password_from, password_to, out, len);
}

static tl_manager *profile_manager(const char *name, const char *host, const char *user_env,
                                   const char *password_env, const char *password) {
    static char config[16384];
    if (!load_profile(name, host, user_env, password_env, password, config, sizeof config)) {
        return NULL;
    }
    return manager_from(config);
}

static struct http_answer g_answer;

static void test_vsphere_profile_end_to_end(void) {
    tl_manager *mgr = profile_manager("vsphere.json", "https://vcenter.example", "VSPHERE_USER",
                                      "VSPHERE_PASSWORD", "wonderland");
    CHECK(mgr != NULL);
    if (!mgr) return;
    long logins = server_stat("session_logins");
    long logouts = server_stat("session_logouts");
    long rejections = server_stat("session_rejections");

    /* Basic-auth login (POST /api/session); the session travels in vmware-api-session-id. */
    tl_token *tok = NULL;
    CHECK_RC(tl_manager_token_handle(mgr, &tok), TL_OK);
    if (!tok) goto done;
    CHECK(server_stat("session_logins") == logins + 1);
    char name[64], value[512];
    size_t name_written = 0, value_written = 0;
    bool has_header = false;
    CHECK_RC(tl_manager_request_header(mgr, tok, name, sizeof name, &name_written, value,
                                       sizeof value, &value_written, &has_header),
             TL_OK);
    const char *token_value = NULL;
    size_t token_len = 0;
    CHECK_RC(tl_token_value(tok, &token_value, &token_len), TL_OK);
    CHECK(has_header);
    CHECK(strcmp(name, "vmware-api-session-id") == 0 && name_written == strlen(name));
    CHECK(value_written == token_len && strcmp(value, token_value) == 0);
    CHECK(tl_token_attribute(tok, "server_url") == NULL); /* this profile keeps no values */

    char line[1024];
    header_line(mgr, tok, line, sizeof line);
    CHECK(http_exchange("GET", "/api/vcenter/vm", line, NULL, NULL, 0, &g_answer) == 200);
    CHECK(strstr(g_answer.body, "vm-42") != NULL);
    CHECK(!tl_manager_needs_response_body(mgr, 200));
    CHECK(!rejects(mgr, tok, &g_answer));

    /* Session.get: whose session it is. */
    char info[2048];
    size_t written = 0;
    CHECK_RC(tl_manager_session_info(mgr, info, sizeof info, &written), TL_OK);
    CHECK(strstr(info, "alice") != NULL && written == strlen(info));
    char tiny[4];
    CHECK_RC(tl_manager_session_info(mgr, tiny, sizeof tiny, &written), TL_BUFFER_TOO_SMALL);
    CHECK(written == strlen(info) + 1 && tiny[0] == '\0');

    /* The server ends every session: 401 UNAUTHENTICATED, core says rejected, a token
     * again (one new login), one retry. */
    CHECK(server_control("{\"revoke_all\": true}") == 200);
    CHECK(http_exchange("GET", "/api/vcenter/vm", line, NULL, NULL, 0, &g_answer) == 401);
    CHECK(strstr(g_answer.body, "UNAUTHENTICATED") != NULL);
    CHECK(tl_manager_needs_response_body(mgr, 401));
    uint64_t old_generation = tl_token_generation(tok);
    CHECK(rejects(mgr, tok, &g_answer));
    tl_token *fresh = NULL;
    CHECK_RC(tl_manager_token_handle(mgr, &fresh), TL_OK);
    if (fresh) {
        CHECK(tl_token_generation(fresh) == old_generation + 1);
        header_line(mgr, fresh, line, sizeof line);
        CHECK(http_exchange("GET", "/api/vcenter/vm", line, NULL, NULL, 0, &g_answer) == 200);
        CHECK(strstr(g_answer.body, "vm-42") != NULL);
        CHECK(!rejects(mgr, fresh, &g_answer));
        CHECK(server_stat("session_logins") == logins + 2);
        CHECK(server_stat("session_rejections") == rejections + 1);
        /* A late verdict on the old session never discards the new one. */
        CHECK(http_exchange("GET", "/api/vcenter/vm", "vmware-api-session-id: gone\r\n", NULL,
                            NULL, 0, &g_answer) == 401);
        CHECK(rejects(mgr, tok, &g_answer));
        /* A 401 without the configured expiry text is not a rejection. */
        bool rejected = true;
        const char *no_permission = "{\"error_type\": \"NO_PERMISSION\"}";
        CHECK_RC(tl_manager_judge_response(mgr, tl_token_generation(fresh), 401, NULL, 0,
                                           (const uint8_t *)no_permission, strlen(no_permission),
                                           &rejected),
                 TL_OK);
        CHECK(!rejected);
        tl_status status;
        CHECK_RC(tl_manager_status(mgr, &status), TL_OK);
        CHECK(status.generation == tl_token_generation(fresh));
        tl_token_free(fresh);
    }

    /* Logout: DELETE /api/session. */
    CHECK_RC(tl_manager_revoke(mgr), TL_OK);
    CHECK(server_stat("session_logouts") == logouts + 1);
    tl_token_free(tok);
done:
    memset(value, 0, sizeof value);
    CHECK_RC(tl_manager_free(mgr), TL_OK);
}

#define ZUORA_QUERY                                                                          \
    "<soapenv:Envelope xmlns:soapenv=\"http://schemas.xmlsoap.org/soap/envelope/\""          \
    " xmlns:api=\"http://api.zuora.com/\"><soapenv:Header><api:SessionHeader>"                \
    "<api:session>{{session}}</api:session></api:SessionHeader></soapenv:Header>"            \
    "<soapenv:Body><api:query><api:queryString>select Id from Account</api:queryString>"     \
    "</api:query></soapenv:Body></soapenv:Envelope>"

/* POSTs the query with the session core placed in it; returns the status. */
static int zuora_query(tl_manager *mgr, const tl_token *tok, const char *path) {
    static char rendered[4096];
    size_t written = 0;
    bool placed = false;
    CHECK_RC(tl_manager_authorize_body(mgr, tok, ZUORA_QUERY, strlen(ZUORA_QUERY), rendered,
                                       sizeof rendered, &written, &placed),
             TL_OK);
    CHECK(placed && written == strlen(rendered));
    CHECK(strstr(rendered, "{{session}}") == NULL);
    const char *token_value = NULL;
    CHECK_RC(tl_token_value(tok, &token_value, NULL), TL_OK);
    char session[1024];
    snprintf(session, sizeof session, "<api:session>%s</api:session>", token_value);
    CHECK(strstr(rendered, session) != NULL);
    int status = http_exchange("POST", path, "SOAPAction: \"\"\r\n", "text/xml; charset=utf-8",
                               rendered, written, &g_answer);
    memset(rendered, 0, sizeof rendered);
    return status;
}

static void test_zuora_soap_profile_with_the_session_in_the_body(void) {
    tl_manager *mgr = profile_manager("zuora-soap.json", "https://apisandbox.zuora.example",
                                      "ZUORA_USER", "ZUORA_PASSWORD", "wonderland");
    CHECK(mgr != NULL);
    if (!mgr) return;
    long logins = server_stat("session_logins");
    long logouts = server_stat("session_logouts");
    tl_token *tok = NULL;
    CHECK_RC(tl_manager_token_handle(mgr, &tok), TL_OK);
    if (!tok) goto done;

    /* The endpoint is the ServerUrl the login answered, kept with the session. */
    const char *server_url_value = tl_token_attribute(tok, "server_url");
    CHECK(server_url_value != NULL);
    const char *suffix = "/apps/services/a/91.0";
    char path[256] = "/";
    if (server_url_value) {
        size_t n = strlen(server_url_value);
        CHECK(n > strlen(suffix) && strcmp(server_url_value + n - strlen(suffix), suffix) == 0);
        CHECK(strncmp(server_url_value, server_url(), strlen(server_url())) == 0);
        snprintf(path, sizeof path, "%s", server_url_value + strlen(server_url()));
    }
    const char *id_token = (const char *)1;
    size_t id_len = 1;
    CHECK_RC(tl_token_id_token(tok, &id_token, &id_len), TL_OK);
    CHECK(id_token == NULL && id_len == 0);

    /* No header: the session travels in the SOAP header of the body. */
    char name[64] = "x", value[512] = "x";
    size_t name_written = 1, value_written = 1;
    bool has_header = true;
    CHECK_RC(tl_manager_request_header(mgr, tok, name, sizeof name, &name_written, value,
                                       sizeof value, &value_written, &has_header),
             TL_OK);
    CHECK(!has_header && name[0] == '\0' && value[0] == '\0');
    CHECK(name_written == 0 && value_written == 0);

    CHECK(zuora_query(mgr, tok, path) == 200);
    CHECK(strstr(g_answer.body, "queryResponse") != NULL);
    CHECK(!rejects(mgr, tok, &g_answer));

    /* The session ends: a 500 INVALID_SESSION fault, core says rejected, a new login, the
     * body rendered again with the new session, one retry. */
    CHECK(server_control("{\"revoke_all\": true}") == 200);
    CHECK(zuora_query(mgr, tok, path) == 500);
    CHECK(strstr(g_answer.body, "INVALID_SESSION") != NULL);
    CHECK(tl_manager_needs_response_body(mgr, 500));
    CHECK(rejects(mgr, tok, &g_answer));
    tl_token *fresh = NULL;
    CHECK_RC(tl_manager_token_handle(mgr, &fresh), TL_OK);
    if (fresh) {
        CHECK(zuora_query(mgr, fresh, path) == 200);
        CHECK(strstr(g_answer.body, "queryResponse") != NULL);
        CHECK(!rejects(mgr, fresh, &g_answer));
        tl_token_free(fresh);
    }
    CHECK(server_stat("session_logins") == logins + 2);

    /* Logout: the SOAP logout call with the session in its header. */
    CHECK_RC(tl_manager_revoke(mgr), TL_OK);
    CHECK(server_stat("session_logouts") == logouts + 1);
    tl_token_free(tok);
done:
    CHECK_RC(tl_manager_free(mgr), TL_OK);

    /* A wrong password: a LoginFault with HTTP 500 is invalid credentials, not transient. */
    const char *password = "c-zuora-wrong-9d3e";
    mgr = profile_manager("zuora-soap.json", "https://apisandbox.zuora.example", "ZUORA_USER",
                          "ZUORA_PASSWORD", password);
    CHECK(mgr != NULL);
    if (!mgr) return;
    char token[256];
    size_t written = 0;
    CHECK_RC(tl_manager_token(mgr, token, sizeof token, &written, NULL), TL_INVALID_CREDENTIALS);
    char detail[1024];
    CHECK_RC(tl_manager_last_error(mgr, detail, sizeof detail, &written), TL_OK);
    CHECK(strstr(detail, password) == NULL);
    CHECK(server_stat("session_logins") == logins + 2);
    CHECK_RC(tl_manager_free(mgr), TL_OK);
}

int main(void) {
    printf("# tokenlease %s against %s\n", tl_version(), server_url());
    RUN(test_fetch_and_cache);
    RUN(test_concurrent_cold_cache);
    RUN(test_retry_after_rejection);
    RUN(test_events_and_revoke);
    RUN(test_background_refresh);
    RUN(test_errors_keep_their_kind);
    RUN(test_session_login_secrets_stay_secret);
    RUN(test_vsphere_profile_end_to_end);
    RUN(test_zuora_soap_profile_with_the_session_in_the_body);
    return finish();
}
