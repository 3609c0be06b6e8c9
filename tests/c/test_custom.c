/* A token source and a token store written in C: callbacks, userdata, error kinds kept,
 * refresh tokens, revocation, persistence across managers, callback rules. No network. */
#include "test_support.h"

#include <pthread.h>
#include <stdatomic.h>

/* ---- a C token source ---- */

struct source_state {
    atomic_int fetches;
    atomic_int refreshes;
    atomic_int revokes;
    uint32_t fail_with;       /* returned by fetch when non-zero */
    int skip_set_token;       /* return TL_OK without a token */
    int set_refresh_token;    /* issue "refresh-1" */
    uint64_t expires_in_ms;
    char last_refresh_token[64];
    char last_revoked[64];
    tl_manager *self;         /* for the re-entrancy test */
    tl_result reentrant_rc;
};

static uint32_t src_fetch(void *userdata, tl_fetch_output *out) {
    struct source_state *s = userdata;
    int n = atomic_fetch_add(&s->fetches, 1) + 1;
    if (s->self != NULL) {
        /* A blocking call from inside a callback is refused, not deadlocked. */
        char buf[64];
        size_t written = 0;
        s->reentrant_rc = tl_manager_token(s->self, buf, sizeof buf, &written, NULL);
    }
    if (s->fail_with != 0) {
        tl_fetch_output_set_error_message(out, "custom source says no");
        return s->fail_with;
    }
    if (s->skip_set_token) return TL_OK;
    char value[64];
    int len = snprintf(value, sizeof value, "c-token-%d", n);
    tl_fetch_output_set_token(out, value, (size_t)len, s->expires_in_ms);
    if (s->set_refresh_token) {
        tl_fetch_output_set_refresh_token(out, "refresh-1", 9);
        tl_fetch_output_set_token_type(out, "DPoP");
    }
    return TL_OK;
}

static uint32_t src_refresh(void *userdata, const char *refresh_token, size_t len,
                            tl_fetch_output *out) {
    struct source_state *s = userdata;
    int n = atomic_fetch_add(&s->refreshes, 1) + 1;
    snprintf(s->last_refresh_token, sizeof s->last_refresh_token, "%.*s", (int)len, refresh_token);
    char value[64];
    int vlen = snprintf(value, sizeof value, "c-refreshed-%d", n);
    tl_fetch_output_set_token(out, value, (size_t)vlen, s->expires_in_ms);
    return TL_OK;
}

static uint32_t src_revoke(void *userdata, const char *token, size_t len) {
    struct source_state *s = userdata;
    atomic_fetch_add(&s->revokes, 1);
    snprintf(s->last_revoked, sizeof s->last_revoked, "%.*s", (int)len, token);
    return TL_OK;
}

static tl_source_callbacks source_of(struct source_state *s) {
    tl_source_callbacks cbs;
    memset(&cbs, 0, sizeof cbs);
    cbs.userdata = s;
    cbs.fetch = src_fetch;
    cbs.refresh = src_refresh;
    cbs.revoke = src_revoke;
    return cbs;
}

/* ---- a C store: one slot per key, in memory, guarded by a mutex ---- */

#define SLOTS 8
struct store_state {
    pthread_mutex_t lock;
    char *keys[SLOTS];
    char *records[SLOTS];
    atomic_int loads, saves, removes;
    uint32_t fail_save_with;
};

static int slot_of(struct store_state *st, const char *key, int create) {
    for (int i = 0; i < SLOTS; i++)
        if (st->keys[i] && strcmp(st->keys[i], key) == 0) return i;
    if (!create) return -1;
    for (int i = 0; i < SLOTS; i++)
        if (!st->keys[i]) {
            st->keys[i] = strdup(key);
            return i;
        }
    return -1;
}

static uint32_t store_load(void *userdata, const char *key, tl_load_output *out) {
    struct store_state *st = userdata;
    atomic_fetch_add(&st->loads, 1);
    pthread_mutex_lock(&st->lock);
    int i = slot_of(st, key, 0);
    uint32_t rc = TL_OK;
    if (i >= 0 && st->records[i]) rc = tl_load_output_set_record(out, st->records[i], strlen(st->records[i]));
    pthread_mutex_unlock(&st->lock);
    return rc;
}

static uint32_t store_save(void *userdata, const char *key, const char *json, size_t len) {
    struct store_state *st = userdata;
    atomic_fetch_add(&st->saves, 1);
    if (st->fail_save_with) return st->fail_save_with;
    if (strlen(json) != len) return TL_STORE;
    pthread_mutex_lock(&st->lock);
    int i = slot_of(st, key, 1);
    if (i >= 0) {
        free(st->records[i]);
        st->records[i] = strdup(json);
    }
    pthread_mutex_unlock(&st->lock);
    return i >= 0 ? TL_OK : TL_STORE;
}

static uint32_t store_remove(void *userdata, const char *key) {
    struct store_state *st = userdata;
    atomic_fetch_add(&st->removes, 1);
    pthread_mutex_lock(&st->lock);
    int i = slot_of(st, key, 0);
    if (i >= 0) {
        free(st->records[i]);
        st->records[i] = NULL;
    }
    pthread_mutex_unlock(&st->lock);
    return TL_OK;
}

static void store_clear(struct store_state *st) {
    for (int i = 0; i < SLOTS; i++) {
        free(st->keys[i]);
        free(st->records[i]);
        st->keys[i] = st->records[i] = NULL;
    }
}

static tl_store_callbacks store_of(struct store_state *st) {
    tl_store_callbacks cbs;
    memset(&cbs, 0, sizeof cbs);
    cbs.userdata = st;
    cbs.load = store_load;
    cbs.save = store_save;
    cbs.remove = store_remove;
    return cbs;
}

/* ---- events ---- */

struct events {
    atomic_int from_store;
    atomic_int store_errors;
    atomic_int failed;
    atomic_uint failed_kind;
};

static void on_event(void *userdata, const tl_event *e) {
    struct events *ev = userdata;
    if (e->kind == TL_EVENT_REFRESH_SUCCEEDED && e->from_store) atomic_fetch_add(&ev->from_store, 1);
    if (e->kind == TL_EVENT_STORE_ERROR) atomic_fetch_add(&ev->store_errors, 1);
    if (e->kind == TL_EVENT_REFRESH_FAILED) {
        atomic_fetch_add(&ev->failed, 1);
        atomic_store(&ev->failed_kind, (unsigned)e->error);
    }
}

/* ---- tests ---- */

static void test_custom_source_fetch_and_cache(void) {
    struct source_state s;
    memset(&s, 0, sizeof s);
    s.expires_in_ms = 600000;
    tl_source_callbacks cbs = source_of(&s);
    tl_manager *mgr = NULL;
    CHECK_RC(tl_manager_new_custom(&cbs, NULL, "custom", NULL, &mgr), TL_OK);
    char token[64];
    size_t written = 0;
    uint64_t generation = 0;
    CHECK_RC(tl_manager_token(mgr, token, sizeof token, &written, &generation), TL_OK);
    CHECK(strcmp(token, "c-token-1") == 0 && written == 9 && generation == 1);
    CHECK_RC(tl_manager_token(mgr, token, sizeof token, &written, &generation), TL_OK);
    CHECK(atomic_load(&s.fetches) == 1);

    tl_token *tok = NULL;
    CHECK_RC(tl_manager_token_handle(mgr, &tok), TL_OK);
    const char *type = NULL;
    size_t type_len = 0;
    CHECK_RC(tl_token_type(tok, &type, &type_len), TL_OK);
    CHECK(strcmp(type, "Bearer") == 0 && type_len == 6);
    uint64_t now_ms = (uint64_t)time(NULL) * 1000;
    uint64_t expires = tl_token_expires_at_unix_ms(tok);
    CHECK(expires + 2000 > now_ms + 600000 && expires < now_ms + 602000);
    tl_token_free(tok);

    /* Revocation reaches the C callback with the token value. */
    CHECK_RC(tl_manager_revoke(mgr), TL_OK);
    CHECK(atomic_load(&s.revokes) == 1);
    CHECK(strcmp(s.last_revoked, "c-token-1") == 0);
    CHECK_RC(tl_manager_token(mgr, token, sizeof token, &written, &generation), TL_OK);
    CHECK(strcmp(token, "c-token-2") == 0 && generation == 2);
    tl_manager_free(mgr);
    /* After free, no callback runs again. */
    int fetches = atomic_load(&s.fetches);
    sleep_ms(50);
    CHECK(atomic_load(&s.fetches) == fetches);
}

static void test_refresh_token_and_type(void) {
    struct source_state s;
    memset(&s, 0, sizeof s);
    s.expires_in_ms = 600000;
    s.set_refresh_token = 1;
    tl_source_callbacks cbs = source_of(&s);
    tl_manager *mgr = NULL;
    CHECK_RC(tl_manager_new_custom(&cbs, NULL, NULL, "{\"jitter_fraction\": 0}", &mgr), TL_OK);
    tl_token *tok = NULL;
    CHECK_RC(tl_manager_token_handle(mgr, &tok), TL_OK);
    const char *type = NULL;
    CHECK_RC(tl_token_type(tok, &type, NULL), TL_OK);
    CHECK(strcmp(type, "DPoP") == 0);
    uint64_t generation = tl_token_generation(tok);
    tl_token_free(tok);
    char key[32];
    size_t written = 0;
    CHECK_RC(tl_manager_key(mgr, key, sizeof key, &written), TL_OK);
    CHECK(strcmp(key, "default") == 0);

    /* Rejected: the next token comes from the refresh callback with the refresh token. */
    char token[64];
    uint64_t next = 0;
    CHECK_RC(tl_manager_token_after_rejection(mgr, generation, token, sizeof token, &written, &next),
             TL_OK);
    CHECK(strcmp(token, "c-refreshed-1") == 0);
    CHECK(next == generation + 1);
    CHECK(strcmp(s.last_refresh_token, "refresh-1") == 0);
    CHECK(atomic_load(&s.fetches) == 1 && atomic_load(&s.refreshes) == 1);
    tl_status status;
    CHECK_RC(tl_manager_status(mgr, &status), TL_OK);
    CHECK(status.counters.refreshes == 1 && status.counters.invalidations == 1);
    tl_manager_free(mgr);
}

static void test_callback_errors_keep_their_kind(void) {
    static const uint32_t kinds[] = {TL_TRANSIENT, TL_INVALID_CREDENTIALS, TL_REVOKED,
                                     TL_RATE_LIMITED, TL_CONFIGURATION};
    for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++) {
        struct source_state s;
        memset(&s, 0, sizeof s);
        s.fail_with = kinds[k];
        tl_source_callbacks cbs = source_of(&s);
        tl_manager *mgr = NULL;
        CHECK_RC(tl_manager_new_custom(&cbs, NULL, "failing", NULL, &mgr), TL_OK);
        struct events ev;
        memset(&ev, 0, sizeof ev);
        CHECK_RC(tl_manager_set_event_callback(mgr, on_event, &ev), TL_OK);
        char token[64];
        size_t written = 0;
        CHECK_RC(tl_manager_token(mgr, token, sizeof token, &written, NULL), kinds[k]);
        char detail[256];
        CHECK_RC(tl_manager_last_error(mgr, detail, sizeof detail, &written), TL_OK);
        CHECK(strstr(detail, "custom source says no") != NULL);
        tl_status status;
        CHECK_RC(tl_manager_status(mgr, &status), TL_OK);
        CHECK(status.last_error == kinds[k]);
        CHECK_RC(tl_manager_flush_events(mgr, 10000), TL_OK);
        CHECK(atomic_load(&ev.failed) == 1 && atomic_load(&ev.failed_kind) == kinds[k]);
        tl_manager_free(mgr);
    }

    /* An unknown code is an internal error, not a crash. */
    struct source_state s;
    memset(&s, 0, sizeof s);
    s.fail_with = 999;
    tl_source_callbacks cbs = source_of(&s);
    tl_manager *mgr = NULL;
    CHECK_RC(tl_manager_new_custom(&cbs, NULL, "unknown-code", NULL, &mgr), TL_OK);
    char token[64];
    size_t written = 0;
    CHECK_RC(tl_manager_token(mgr, token, sizeof token, &written, NULL), TL_INTERNAL);
    char detail[256];
    CHECK_RC(tl_manager_last_error(mgr, detail, sizeof detail, &written), TL_OK);
    CHECK(strstr(detail, "999") != NULL);
    tl_manager_free(mgr);

    /* TL_OK without a token is a protocol error. */
    memset(&s, 0, sizeof s);
    s.skip_set_token = 1;
    cbs = source_of(&s);
    CHECK_RC(tl_manager_new_custom(&cbs, NULL, "no-token", NULL, &mgr), TL_OK);
    CHECK_RC(tl_manager_token(mgr, token, sizeof token, &written, NULL), TL_PROTOCOL);
    tl_manager_free(mgr);

    /* A blocking call from inside a callback gets TL_USAGE instead of deadlocking. */
    memset(&s, 0, sizeof s);
    s.expires_in_ms = 60000;
    cbs = source_of(&s);
    CHECK_RC(tl_manager_new_custom(&cbs, NULL, "reentrant", NULL, &mgr), TL_OK);
    s.self = mgr;
    CHECK_RC(tl_manager_token(mgr, token, sizeof token, &written, NULL), TL_OK);
    CHECK_RC(s.reentrant_rc, TL_USAGE);
    tl_manager_free(mgr);
}

static void test_custom_store_persists_across_managers(void) {
    struct store_state st;
    memset(&st, 0, sizeof st);
    pthread_mutex_init(&st.lock, NULL);
    struct source_state s1, s2;
    memset(&s1, 0, sizeof s1);
    memset(&s2, 0, sizeof s2);
    s1.expires_in_ms = s2.expires_in_ms = 600000;
    tl_source_callbacks cbs1 = source_of(&s1), cbs2 = source_of(&s2);
    tl_store_callbacks store = store_of(&st);

    tl_manager *first = NULL;
    CHECK_RC(tl_manager_new_custom(&cbs1, &store, "shared-key", NULL, &first), TL_OK);
    char token[64];
    size_t written = 0;
    CHECK_RC(tl_manager_token(first, token, sizeof token, &written, NULL), TL_OK);
    CHECK(strcmp(token, "c-token-1") == 0);
    CHECK(atomic_load(&st.loads) == 1 && atomic_load(&st.saves) == 1);
    int i = slot_of(&st, "shared-key", 0);
    CHECK(i >= 0 && st.records[i] != NULL && strstr(st.records[i], "\"value\":\"c-token-1\"") != NULL);

    /* A second manager (a "restarted process") adopts the stored token: no fetch. */
    tl_manager *second = NULL;
    CHECK_RC(tl_manager_new_custom(&cbs2, &store, "shared-key", NULL, &second), TL_OK);
    struct events ev;
    memset(&ev, 0, sizeof ev);
    CHECK_RC(tl_manager_set_event_callback(second, on_event, &ev), TL_OK);
    char token2[64];
    CHECK_RC(tl_manager_token(second, token2, sizeof token2, &written, NULL), TL_OK);
    CHECK(strcmp(token2, "c-token-1") == 0);
    CHECK(atomic_load(&s2.fetches) == 0);
    CHECK_RC(tl_manager_flush_events(second, 10000), TL_OK);
    CHECK(atomic_load(&ev.from_store) == 1);
    tl_status status;
    CHECK_RC(tl_manager_status(second, &status), TL_OK);
    CHECK(status.counters.store_loads == 1 && status.counters.fetches == 0);

    /* Revoke removes the record. */
    CHECK_RC(tl_manager_revoke(second), TL_OK);
    CHECK(atomic_load(&st.removes) == 1);
    CHECK(st.records[i] == NULL);
    tl_manager_free(second);
    tl_manager_free(first);

    /* A failing store never fails token calls: an event reports it. */
    st.fail_save_with = TL_STORE;
    struct source_state s3;
    memset(&s3, 0, sizeof s3);
    s3.expires_in_ms = 600000;
    tl_source_callbacks cbs3 = source_of(&s3);
    tl_manager *third = NULL;
    CHECK_RC(tl_manager_new_custom(&cbs3, &store, "failing-store", NULL, &third), TL_OK);
    memset(&ev, 0, sizeof ev);
    CHECK_RC(tl_manager_set_event_callback(third, on_event, &ev), TL_OK);
    CHECK_RC(tl_manager_token(third, token, sizeof token, &written, NULL), TL_OK);
    CHECK_RC(tl_manager_flush_events(third, 10000), TL_OK);
    CHECK(atomic_load(&ev.store_errors) == 1);
    CHECK_RC(tl_manager_status(third, &status), TL_OK);
    CHECK(status.counters.store_errors == 1);
    tl_manager_free(third);

    /* A corrupt record is a store error too; the source is used instead. */
    st.fail_save_with = 0;
    pthread_mutex_lock(&st.lock);
    int j = slot_of(&st, "corrupt", 1);
    st.records[j] = strdup("{\"version\": 1, \"value\": \"x\"");
    pthread_mutex_unlock(&st.lock);
    tl_manager *fourth = NULL;
    CHECK_RC(tl_manager_new_custom(&cbs3, &store, "corrupt", NULL, &fourth), TL_OK);
    CHECK_RC(tl_manager_token(fourth, token, sizeof token, &written, NULL), TL_OK);
    CHECK(strncmp(token, "c-token-", 8) == 0);
    CHECK_RC(tl_manager_status(fourth, &status), TL_OK);
    CHECK(status.counters.store_errors == 1 && status.counters.fetches == 1);
    tl_manager_free(fourth);

    store_clear(&st);
    pthread_mutex_destroy(&st.lock);
}

int main(void) {
    RUN(test_custom_source_fetch_and_cache);
    RUN(test_refresh_token_and_type);
    RUN(test_callback_errors_keep_their_kind);
    RUN(test_custom_store_persists_across_managers);
    return finish();
}
