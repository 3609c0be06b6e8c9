/* End-to-end tests of the C ABI against the real test token server (loopback):
 * fetch and cache, concurrent callers on a cold cache and during a refresh, background
 * refresh, retry after rejection, revoke, events, status, errors with their kinds. */
#include "test_support.h"

#include <pthread.h>
#include <stdatomic.h>

#define THREADS 16

static tl_manager *new_manager(const char *key, const char *secret, const char *policy) {
    char config[2048];
    server_config(config, sizeof config, key, secret, policy);
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

int main(void) {
    printf("# tokenlease %s against %s\n", tl_version(), server_url());
    RUN(test_fetch_and_cache);
    RUN(test_concurrent_cold_cache);
    RUN(test_retry_after_rejection);
    RUN(test_events_and_revoke);
    RUN(test_background_refresh);
    RUN(test_errors_keep_their_kind);
    RUN(test_session_login_secrets_stay_secret);
    return finish();
}
