/* Every bad-argument case of the C ABI returns a result code; none crashes. No network (the
 * login checks use a closed loopback port that is never reached). */
#include "test_support.h"

#define NOT_UTF8 "\xff\xfe"

/* ---- a source whose callback also probes the output setters with bad arguments ---- */

struct probe {
    tl_result set_token_null, set_token_empty, set_token_not_utf8;
    tl_result set_type_null, set_type_not_utf8, set_refresh_null, set_refresh_empty;
    tl_result set_message_null, set_record_null, set_record_not_utf8, set_record_ok;
    uint32_t return_code;
};

static uint32_t probe_fetch(void *userdata, tl_fetch_output *out) {
    struct probe *p = userdata;
    p->set_token_null = tl_fetch_output_set_token(out, NULL, 5, 1000);
    p->set_token_empty = tl_fetch_output_set_token(out, "", 0, 1000);
    p->set_token_not_utf8 = tl_fetch_output_set_token(out, NOT_UTF8, 2, 1000);
    p->set_type_null = tl_fetch_output_set_token_type(out, NULL);
    p->set_type_not_utf8 = tl_fetch_output_set_token_type(out, NOT_UTF8);
    p->set_refresh_null = tl_fetch_output_set_refresh_token(out, NULL, 3);
    p->set_refresh_empty = tl_fetch_output_set_refresh_token(out, "x", 0);
    p->set_message_null = tl_fetch_output_set_error_message(out, NULL);
    if (p->return_code != TL_OK) return p->return_code;
    tl_fetch_output_set_token(out, "probe-token-value", 17, 600000);
    return TL_OK;
}

static uint32_t probe_load(void *userdata, const char *key, tl_load_output *out) {
    struct probe *p = userdata;
    (void)key;
    p->set_record_null = tl_load_output_set_record(out, NULL, 3);
    p->set_record_not_utf8 = tl_load_output_set_record(out, NOT_UTF8, 2);
    p->set_record_ok = tl_load_output_set_record(out, "{}", 2); /* corrupt: store error */
    return TL_OK;
}

static uint32_t probe_save(void *userdata, const char *key, const char *json, size_t len) {
    (void)userdata; (void)key; (void)json; (void)len;
    return 12345; /* unknown code from a store: a store error event, tokens still work */
}

static tl_manager *probe_manager(struct probe *p, int with_store) {
    tl_source_callbacks cbs;
    memset(&cbs, 0, sizeof cbs);
    cbs.userdata = p;
    cbs.fetch = probe_fetch;
    tl_store_callbacks store;
    memset(&store, 0, sizeof store);
    store.userdata = p;
    store.load = probe_load;
    store.save = probe_save;
    tl_manager *mgr = NULL;
    CHECK_RC(tl_manager_new_custom(&cbs, with_store ? &store : NULL, "probe", NULL, &mgr), TL_OK);
    return mgr;
}

static void test_result_codes(void) {
    CHECK(strcmp(tl_result_name(TL_OK), "TL_OK") == 0);
    CHECK(strcmp(tl_result_name(TL_TRANSIENT), "TL_TRANSIENT") == 0);
    CHECK(strcmp(tl_result_name(TL_BUFFER_TOO_SMALL), "TL_BUFFER_TOO_SMALL") == 0);
    CHECK(strcmp(tl_result_name(TL_LOGIN_REQUIRED), "TL_LOGIN_REQUIRED") == 0);
    CHECK(strcmp(tl_result_name(17), "TL_UNKNOWN") == 0);
    CHECK(strcmp(tl_result_name(0xFFFFFFFFu), "TL_UNKNOWN") == 0);
    /* The numbers are the stable error-kind numbers. */
    CHECK(TL_INVALID_CREDENTIALS == 1 && TL_TRANSIENT == 5 && TL_CANCELLED == 15);
    CHECK(TL_LOGIN_REQUIRED == 16);
    CHECK(TL_NULL_ARGUMENT == 100 && TL_INVALID_ARGUMENT == 103);

    char buf[256];
    size_t written = 0;
    CHECK_RC(tl_result_message(TL_TRANSIENT, buf, sizeof buf, &written), TL_OK);
    CHECK(strstr(buf, "TL_TRANSIENT (transient)") == buf && written == strlen(buf));
    size_t full = written;
    /* Size query, too small, NULL pointers, unknown code. */
    CHECK_RC(tl_result_message(TL_TRANSIENT, NULL, 0, &written), TL_BUFFER_TOO_SMALL);
    CHECK(written == full + 1);
    memset(buf, 'x', sizeof buf);
    CHECK_RC(tl_result_message(TL_TRANSIENT, buf, full, &written), TL_BUFFER_TOO_SMALL);
    CHECK(written == full + 1 && buf[0] == '\0' && buf[1] == 'x');
    CHECK_RC(tl_result_message(TL_TRANSIENT, buf, full + 1, &written), TL_OK);
    CHECK_RC(tl_result_message(TL_TRANSIENT, NULL, 10, &written), TL_NULL_ARGUMENT);
    CHECK_RC(tl_result_message(TL_TRANSIENT, buf, sizeof buf, NULL), TL_NULL_ARGUMENT);
    CHECK_RC(tl_result_message(17, buf, sizeof buf, &written), TL_INVALID_ARGUMENT);
    CHECK_RC(tl_result_message(99, buf, sizeof buf, &written), TL_INVALID_ARGUMENT);
    CHECK_RC(tl_result_message(0xFFFFFFFFu, buf, sizeof buf, &written), TL_INVALID_ARGUMENT);
    CHECK(tl_version() != NULL && strlen(tl_version()) > 0);
}

static void test_constructor_arguments(void) {
    tl_manager *mgr = (tl_manager *)1;
    char detail[512];
    size_t written = 0;

    CHECK_RC(tl_manager_from_config(NULL, &mgr), TL_NULL_ARGUMENT);
    CHECK(mgr == NULL);
    CHECK_RC(tl_manager_last_error(NULL, detail, sizeof detail, &written), TL_OK);
    CHECK(strstr(detail, "config") != NULL);
    CHECK_RC(tl_manager_from_config("{}", NULL), TL_NULL_ARGUMENT);
    mgr = (tl_manager *)1;
    CHECK_RC(tl_manager_from_config("{\"key\": \"" NOT_UTF8 "\"}", &mgr), TL_INVALID_UTF8);
    CHECK(mgr == NULL);
    CHECK_RC(tl_manager_from_config("", &mgr), TL_CONFIGURATION);
    CHECK_RC(tl_manager_from_config("{not json", &mgr), TL_CONFIGURATION);
    CHECK_RC(tl_manager_from_config("[source]\ntype = \"nope\"\n", &mgr), TL_CONFIGURATION);
    CHECK_RC(tl_manager_last_error(NULL, detail, sizeof detail, &written), TL_OK);
    CHECK(strstr(detail, "unknown variant") != NULL);
    CHECK_RC(tl_manager_from_config(
                 "{\"source\": {\"type\": \"oauth2_client_credentials\", \"token_url\": "
                 "\"http://idp.example/token\", \"client_id\": \"c\", \"client_secret\": "
                 "\"very-secret-value\"}}",
                 &mgr),
             TL_CONFIGURATION);
    CHECK_RC(tl_manager_last_error(NULL, detail, sizeof detail, &written), TL_OK);
    CHECK(strstr(detail, "HTTPS") != NULL && strstr(detail, "very-secret-value") == NULL);
    CHECK(mgr == NULL);

    struct probe p;
    memset(&p, 0, sizeof p);
    tl_source_callbacks cbs;
    memset(&cbs, 0, sizeof cbs);
    cbs.userdata = &p;
    mgr = (tl_manager *)1;
    CHECK_RC(tl_manager_new_custom(NULL, NULL, "k", NULL, &mgr), TL_NULL_ARGUMENT);
    CHECK(mgr == NULL);
    CHECK_RC(tl_manager_new_custom(&cbs, NULL, "k", NULL, &mgr), TL_NULL_ARGUMENT); /* no fetch */
    CHECK_RC(tl_manager_last_error(NULL, detail, sizeof detail, &written), TL_OK);
    CHECK(strstr(detail, "fetch") != NULL);
    cbs.fetch = probe_fetch;
    CHECK_RC(tl_manager_new_custom(&cbs, NULL, "k", NULL, NULL), TL_NULL_ARGUMENT);
    CHECK_RC(tl_manager_new_custom(&cbs, NULL, NOT_UTF8, NULL, &mgr), TL_INVALID_UTF8);
    CHECK_RC(tl_manager_new_custom(&cbs, NULL, "k", NOT_UTF8, &mgr), TL_INVALID_UTF8);
    CHECK_RC(tl_manager_new_custom(&cbs, NULL, "k", "not json", &mgr), TL_CONFIGURATION);
    CHECK_RC(tl_manager_new_custom(&cbs, NULL, "k", "{\"no_such_field\": 1}", &mgr),
             TL_CONFIGURATION);
    CHECK_RC(tl_manager_new_custom(&cbs, NULL, "k", "{\"jitter_fraction\": 5}", &mgr),
             TL_CONFIGURATION);
    CHECK_RC(tl_manager_last_error(NULL, detail, sizeof detail, &written), TL_OK);
    CHECK(strstr(detail, "jitter_fraction") != NULL);
    tl_store_callbacks store;
    memset(&store, 0, sizeof store);
    store.load = probe_load; /* save missing */
    CHECK_RC(tl_manager_new_custom(&cbs, &store, "k", NULL, &mgr), TL_NULL_ARGUMENT);
    CHECK(mgr == NULL);

    /* NULL-safe frees. */
    tl_manager_free(NULL);
    tl_token_free(NULL);
}

static void test_manager_arguments(void) {
    struct probe p;
    memset(&p, 0, sizeof p);
    tl_manager *mgr = probe_manager(&p, 0);
    if (!mgr) return;
    char buf[64];
    size_t written = 0;
    uint64_t generation = 0;

    /* The probe's bad setter calls were refused inside the callback. */
    CHECK_RC(tl_manager_token(mgr, buf, sizeof buf, &written, &generation), TL_OK);
    CHECK(strcmp(buf, "probe-token-value") == 0 && written == 17);
    CHECK_RC(p.set_token_null, TL_NULL_ARGUMENT);
    CHECK_RC(p.set_token_empty, TL_INVALID_ARGUMENT);
    CHECK_RC(p.set_token_not_utf8, TL_INVALID_UTF8);
    CHECK_RC(p.set_type_null, TL_NULL_ARGUMENT);
    CHECK_RC(p.set_type_not_utf8, TL_INVALID_UTF8);
    CHECK_RC(p.set_refresh_null, TL_NULL_ARGUMENT);
    CHECK_RC(p.set_refresh_empty, TL_INVALID_ARGUMENT);
    CHECK_RC(p.set_message_null, TL_NULL_ARGUMENT);
    /* Setters outside a callback, on NULL. */
    CHECK_RC(tl_fetch_output_set_token(NULL, "x", 1, 0), TL_NULL_ARGUMENT);
    CHECK_RC(tl_fetch_output_set_token_type(NULL, "x"), TL_NULL_ARGUMENT);
    CHECK_RC(tl_fetch_output_set_refresh_token(NULL, "x", 1), TL_NULL_ARGUMENT);
    CHECK_RC(tl_fetch_output_set_error_message(NULL, "x"), TL_NULL_ARGUMENT);
    CHECK_RC(tl_load_output_set_record(NULL, "{}", 2), TL_NULL_ARGUMENT);

    /* tl_manager_token. */
    CHECK_RC(tl_manager_token(NULL, buf, sizeof buf, &written, NULL), TL_NULL_ARGUMENT);
    CHECK_RC(tl_manager_token(mgr, buf, sizeof buf, NULL, NULL), TL_NULL_ARGUMENT);
    CHECK_RC(tl_manager_token(mgr, NULL, 10, &written, NULL), TL_NULL_ARGUMENT);
    CHECK_RC(tl_manager_token(mgr, NULL, 0, &written, NULL), TL_BUFFER_TOO_SMALL);
    CHECK(written == 18);
    memset(buf, 'x', sizeof buf);
    CHECK_RC(tl_manager_token(mgr, buf, 17, &written, NULL), TL_BUFFER_TOO_SMALL);
    CHECK(written == 18 && buf[0] == '\0' && buf[1] == 'x'); /* no partial secret */
    CHECK_RC(tl_manager_token(mgr, buf, 18, &written, NULL), TL_OK);
    CHECK(written == 17 && buf[17] == '\0');
    char detail[256];
    CHECK_RC(tl_manager_token(mgr, buf, 4, &written, NULL), TL_BUFFER_TOO_SMALL);
    CHECK_RC(tl_manager_last_error(mgr, detail, sizeof detail, &written), TL_OK);
    CHECK(strstr(detail, "too small") != NULL && strstr(detail, "probe-token") == NULL);
    CHECK_RC(tl_manager_last_error(mgr, detail, 3, &written), TL_BUFFER_TOO_SMALL);
    CHECK(written == strlen("buffer of 4 bytes is too small: 18 bytes needed") + 1);
    CHECK_RC(tl_manager_last_error(mgr, detail, sizeof detail, NULL), TL_NULL_ARGUMENT);
    CHECK_RC(tl_manager_last_error(mgr, NULL, 5, &written), TL_NULL_ARGUMENT);

    /* Handles. */
    tl_token *tok = (tl_token *)1;
    CHECK_RC(tl_manager_token_handle(NULL, &tok), TL_NULL_ARGUMENT);
    CHECK_RC(tl_manager_token_handle(mgr, NULL), TL_NULL_ARGUMENT);
    CHECK_RC(tl_manager_token_handle(mgr, &tok), TL_OK);
    const char *value = NULL;
    size_t len = 0;
    CHECK_RC(tl_token_value(NULL, &value, &len), TL_NULL_ARGUMENT);
    CHECK_RC(tl_token_value(tok, NULL, &len), TL_NULL_ARGUMENT);
    CHECK_RC(tl_token_value(tok, &value, NULL), TL_OK);
    CHECK(strcmp(value, "probe-token-value") == 0);
    CHECK_RC(tl_token_type(NULL, &value, &len), TL_NULL_ARGUMENT);
    CHECK_RC(tl_token_type(tok, NULL, &len), TL_NULL_ARGUMENT);
    CHECK(tl_token_generation(NULL) == 0 && tl_token_generation(tok) == generation);
    CHECK(tl_token_expires_at_unix_ms(NULL) == 0 && tl_token_expires_at_unix_ms(tok) > 0);
    tl_token_free(tok);

    /* Invalidate, retry, revoke, status, events, key, close. */
    bool invalidated = true;
    CHECK_RC(tl_manager_invalidate(NULL, 1, &invalidated), TL_NULL_ARGUMENT);
    CHECK_RC(tl_manager_invalidate(mgr, 987654, &invalidated), TL_OK);
    CHECK(!invalidated);
    CHECK_RC(tl_manager_invalidate(mgr, 0, NULL), TL_OK);
    CHECK_RC(tl_manager_token_after_rejection(NULL, 1, buf, sizeof buf, &written, NULL),
             TL_NULL_ARGUMENT);
    CHECK_RC(tl_manager_token_after_rejection(mgr, 1, buf, sizeof buf, NULL, NULL),
             TL_NULL_ARGUMENT);
    CHECK_RC(tl_manager_token_after_rejection(mgr, 987654, buf, 2, &written, NULL),
             TL_BUFFER_TOO_SMALL);
    CHECK_RC(tl_manager_revoke(NULL), TL_NULL_ARGUMENT);
    tl_status status;
    CHECK_RC(tl_manager_status(NULL, &status), TL_NULL_ARGUMENT);
    CHECK_RC(tl_manager_status(mgr, NULL), TL_NULL_ARGUMENT);
    CHECK_RC(tl_manager_set_event_callback(NULL, NULL, NULL), TL_NULL_ARGUMENT);
    CHECK_RC(tl_manager_set_event_callback(mgr, NULL, NULL), TL_OK);
    CHECK_RC(tl_manager_key(NULL, buf, sizeof buf, &written), TL_NULL_ARGUMENT);
    CHECK_RC(tl_manager_key(mgr, buf, 3, &written), TL_BUFFER_TOO_SMALL);
    CHECK(written == 6);
    CHECK_RC(tl_manager_key(mgr, buf, sizeof buf, NULL), TL_NULL_ARGUMENT);
    CHECK_RC(tl_manager_close(NULL), TL_NULL_ARGUMENT);

    /* A closed manager: every call reports TL_CLOSED, nothing crashes. */
    CHECK_RC(tl_manager_close(mgr), TL_OK);
    CHECK_RC(tl_manager_token(mgr, buf, sizeof buf, &written, NULL), TL_CLOSED);
    tok = (tl_token *)1;
    CHECK_RC(tl_manager_token_handle(mgr, &tok), TL_CLOSED);
    CHECK(tok == NULL);
    CHECK_RC(tl_manager_token_after_rejection(mgr, 1, buf, sizeof buf, &written, NULL), TL_CLOSED);
    CHECK_RC(tl_manager_revoke(mgr), TL_CLOSED);
    CHECK_RC(tl_manager_status(mgr, &status), TL_OK);
    CHECK(status.state == TL_STATE_EMPTY);
    tl_manager_free(mgr);
}

static void test_bad_callback_results(void) {
    /* A callback returning an ABI-only code (not an error kind) is an internal error. */
    struct probe p;
    memset(&p, 0, sizeof p);
    p.return_code = TL_NULL_ARGUMENT;
    tl_manager *mgr = probe_manager(&p, 0);
    if (!mgr) return;
    char buf[64];
    size_t written = 0;
    CHECK_RC(tl_manager_token(mgr, buf, sizeof buf, &written, NULL), TL_INTERNAL);
    tl_manager_free(mgr);

    /* Bad store results (non-UTF-8 record refused, corrupt record, unknown save code): the
     * token call still succeeds from the source; the store failures are counted. */
    memset(&p, 0, sizeof p);
    mgr = probe_manager(&p, 1);
    if (!mgr) return;
    CHECK_RC(tl_manager_token(mgr, buf, sizeof buf, &written, NULL), TL_OK);
    CHECK_RC(p.set_record_null, TL_NULL_ARGUMENT);
    CHECK_RC(p.set_record_not_utf8, TL_INVALID_UTF8);
    CHECK_RC(p.set_record_ok, TL_OK);
    tl_status status;
    CHECK_RC(tl_manager_status(mgr, &status), TL_OK);
    CHECK(status.counters.store_errors == 2); /* corrupt load + failed save */
    tl_manager_free(mgr);
}

/* A user-login manager with fixed endpoints on a closed loopback port: begin_login needs no
 * network (no discovery), so the argument checks run offline. */
static tl_manager *offline_login_manager(void) {
    tl_manager *mgr = NULL;
    CHECK_RC(tl_manager_from_config(
                 "{\"source\": {\"type\": \"oauth2\", \"client_id\": \"app\","
                 " \"token_url\": \"http://127.0.0.1:9/token\","
                 " \"authorization_url\": \"http://127.0.0.1:9/authorize\","
                 " \"grant\": {\"type\": \"user_login\"}, \"scopes\": [\"openid\"]}}",
                 &mgr),
             TL_OK);
    return mgr;
}

static void test_login_arguments(void) {
    char detail[512], redirect[2048];
    size_t written = 0;
    tl_manager *mgr = offline_login_manager();
    if (!mgr) return;

    /* tl_manager_begin_login. */
    tl_login_request *req = (tl_login_request *)1;
    CHECK_RC(tl_manager_begin_login(NULL, "http://127.0.0.1:1/cb", &req), TL_NULL_ARGUMENT);
    CHECK_RC(tl_manager_begin_login(mgr, "http://127.0.0.1:1/cb", NULL), TL_NULL_ARGUMENT);
    CHECK_RC(tl_manager_begin_login(mgr, NULL, &req), TL_NULL_ARGUMENT);
    CHECK(req == NULL);
    CHECK_RC(tl_manager_last_error(mgr, detail, sizeof detail, &written), TL_OK);
    CHECK(strstr(detail, "redirect_uri") != NULL);
    CHECK_RC(tl_manager_begin_login(mgr, NOT_UTF8, &req), TL_INVALID_UTF8);
    CHECK_RC(tl_manager_begin_login(mgr, "not a url", &req), TL_USAGE);
    CHECK(req == NULL);
    CHECK_RC(tl_manager_last_error(mgr, detail, sizeof detail, &written), TL_OK);
    CHECK(strstr(detail, "redirect_uri") != NULL);
    CHECK_RC(tl_manager_begin_login(mgr, "http://127.0.0.1:49152/callback", &req), TL_OK);
    if (!req) goto done;
    const char *url = tl_login_request_url(req);
    CHECK(url != NULL && strncmp(url, "http://127.0.0.1:9/authorize?", 29) == 0);
    CHECK(strcmp(tl_login_request_redirect_uri(req), "http://127.0.0.1:49152/callback") == 0);
    CHECK(tl_login_request_url(NULL) == NULL && tl_login_request_redirect_uri(NULL) == NULL);

    /* tl_manager_complete_login: NULL request or redirect, non-UTF-8, forged redirects. None
     * of these reaches the (closed) token endpoint. */
    tl_token *tok = (tl_token *)1;
    CHECK_RC(tl_manager_complete_login(NULL, req, "http://127.0.0.1:49152/callback", &tok),
             TL_NULL_ARGUMENT);
    CHECK_RC(tl_manager_complete_login(mgr, NULL, "http://127.0.0.1:49152/callback?code=x", &tok),
             TL_NULL_ARGUMENT);
    CHECK(tok == NULL);
    CHECK_RC(tl_manager_last_error(mgr, detail, sizeof detail, &written), TL_OK);
    CHECK(strcmp(detail, "argument `req` is NULL") == 0);
    tok = (tl_token *)1;
    CHECK_RC(tl_manager_complete_login(mgr, req, NULL, &tok), TL_NULL_ARGUMENT);
    CHECK(tok == NULL);
    CHECK_RC(tl_manager_last_error(mgr, detail, sizeof detail, &written), TL_OK);
    CHECK(strcmp(detail, "argument `redirect_url` is NULL") == 0);
    CHECK_RC(tl_manager_complete_login(mgr, req, NOT_UTF8, NULL), TL_INVALID_UTF8);
    CHECK_RC(tl_manager_complete_login(mgr, req, "not a url", NULL), TL_PROTOCOL);
    CHECK_RC(tl_manager_complete_login(mgr, req,
                                       "http://127.0.0.1:49152/callback?code=c&state=forged",
                                       NULL),
             TL_PROTOCOL);
    CHECK_RC(tl_manager_last_error(mgr, detail, sizeof detail, &written), TL_OK);
    CHECK(strstr(detail, "state") != NULL);
    /* The user said no: the redirect carries the error and the request's own state. */
    const char *state = strstr(url, "state=");
    CHECK(state != NULL);
    if (state != NULL) {
        size_t state_len = strcspn(state + 6, "&");
        snprintf(redirect, sizeof redirect,
                 "http://127.0.0.1:49152/callback?error=access_denied&state=%.*s",
                 (int)state_len, state + 6);
        CHECK_RC(tl_manager_complete_login(mgr, req, redirect, &tok), TL_CANCELLED);
        CHECK(tok == NULL);
    }
    tl_login_request_free(req);

    /* Device logins: this source has no device endpoint; NULL handles. */
    tl_device_login *dev = (tl_device_login *)1;
    CHECK_RC(tl_manager_start_device_login(NULL, &dev), TL_NULL_ARGUMENT);
    CHECK_RC(tl_manager_start_device_login(mgr, NULL), TL_NULL_ARGUMENT);
    CHECK_RC(tl_manager_start_device_login(mgr, &dev), TL_CONFIGURATION);
    CHECK(dev == NULL);
    CHECK_RC(tl_manager_complete_device_login(mgr, NULL, &tok), TL_NULL_ARGUMENT);
    CHECK_RC(tl_manager_last_error(mgr, detail, sizeof detail, &written), TL_OK);
    CHECK(strcmp(detail, "argument `dev` is NULL") == 0);
    CHECK(tl_device_login_user_code(NULL) == NULL);
    CHECK(tl_device_login_verification_uri(NULL) == NULL);
    CHECK(tl_device_login_verification_uri_complete(NULL) == NULL);
    CHECK(tl_device_login_expires_in_ms(NULL) == 0 && tl_device_login_interval_ms(NULL) == 0);
    CHECK_RC(tl_device_login_cancel(NULL), TL_NULL_ARGUMENT);

    /* tl_manager_login / tl_manager_seed: NULL or empty login results. */
    tl_fetch_output *login = NULL;
    CHECK_RC(tl_fetch_output_new(NULL), TL_NULL_ARGUMENT);
    CHECK_RC(tl_fetch_output_new(&login), TL_OK);
    CHECK_RC(tl_manager_login(mgr, NULL, &tok), TL_NULL_ARGUMENT);
    CHECK_RC(tl_manager_login(NULL, login, &tok), TL_NULL_ARGUMENT);
    CHECK_RC(tl_manager_login(mgr, login, &tok), TL_INVALID_ARGUMENT);
    CHECK(tok == NULL);
    CHECK_RC(tl_manager_last_error(mgr, detail, sizeof detail, &written), TL_OK);
    CHECK(strstr(detail, "tl_fetch_output_set_token") != NULL);
    CHECK_RC(tl_manager_seed(mgr, NULL, 0, &tok), TL_NULL_ARGUMENT);
    CHECK_RC(tl_manager_seed(mgr, login, 0, &tok), TL_INVALID_ARGUMENT);
    CHECK_RC(tl_fetch_output_set_token(login, "", 0, 1000), TL_INVALID_ARGUMENT);
    CHECK_RC(tl_fetch_output_set_token(login, "line\nbreak", 10, 1000), TL_INVALID_ARGUMENT);

    /* A closed manager installs nothing. */
    CHECK_RC(tl_fetch_output_set_token(login, "late-login", 10, 1000), TL_OK);
    CHECK_RC(tl_manager_close(mgr), TL_OK);
    tok = (tl_token *)1;
    CHECK_RC(tl_manager_login(mgr, login, &tok), TL_CLOSED);
    CHECK(tok == NULL);
    CHECK_RC(tl_manager_seed(mgr, login, 0, NULL), TL_CLOSED);
    tl_fetch_output_free(login);
done:
    tl_manager_free(mgr);
    tl_login_request_free(NULL);
    tl_device_login_free(NULL);
    tl_fetch_output_free(NULL);

    /* A source without interactive logins (a C source). */
    struct probe p;
    memset(&p, 0, sizeof p);
    mgr = probe_manager(&p, 0);
    if (!mgr) return;
    req = (tl_login_request *)1;
    CHECK_RC(tl_manager_begin_login(mgr, "http://127.0.0.1:49152/callback", &req), TL_CONFIGURATION);
    CHECK(req == NULL);
    dev = (tl_device_login *)1;
    CHECK_RC(tl_manager_start_device_login(mgr, &dev), TL_CONFIGURATION);
    CHECK(dev == NULL);
    tl_manager_free(mgr);
}

/* tl_manager_login and tl_manager_seed need no network: a C source's manager, memory only. */
static void test_login_and_seed_offline(void) {
    struct probe p;
    memset(&p, 0, sizeof p);
    tl_manager *mgr = probe_manager(&p, 0);
    if (!mgr) return;
    char buf[64];
    size_t written = 0;
    uint64_t generation = 0;
    CHECK_RC(tl_manager_token(mgr, buf, sizeof buf, &written, &generation), TL_OK);
    CHECK(strcmp(buf, "probe-token-value") == 0);

    tl_fetch_output *login = NULL;
    CHECK_RC(tl_fetch_output_new(&login), TL_OK);
    CHECK_RC(tl_fetch_output_set_token(login, "seeded-value", 12, 600000), TL_OK);
    CHECK_RC(tl_fetch_output_set_refresh_token(login, "seeded-refresh", 14), TL_OK);
    /* Issued long before the token the manager holds, or at an unknown time: not installed. */
    tl_token *tok = NULL;
    CHECK_RC(tl_manager_seed(mgr, login, 1000, &tok), TL_OK);
    const char *value = NULL;
    CHECK(tok != NULL && tl_token_value(tok, &value, NULL) == TL_OK &&
          strcmp(value, "probe-token-value") == 0);
    tl_token_free(tok);
    CHECK_RC(tl_manager_seed(mgr, login, 0, NULL), TL_OK);
    CHECK_RC(tl_manager_token(mgr, buf, sizeof buf, &written, NULL), TL_OK);
    CHECK(strcmp(buf, "probe-token-value") == 0);
    /* Issued after it (an hour from now): installed. */
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t in_an_hour = ((uint64_t)ts.tv_sec + 3600u) * 1000u;
    CHECK_RC(tl_manager_seed(mgr, login, in_an_hour, &tok), TL_OK);
    CHECK(tok != NULL && tl_token_value(tok, &value, NULL) == TL_OK &&
          strcmp(value, "seeded-value") == 0);
    CHECK(tl_token_generation(tok) > generation);
    tl_token_free(tok);
    CHECK_RC(tl_manager_token(mgr, buf, sizeof buf, &written, NULL), TL_OK);
    CHECK(strcmp(buf, "seeded-value") == 0);
    /* A login always replaces. */
    CHECK_RC(tl_fetch_output_set_token(login, "login-value", 11, 600000), TL_OK);
    CHECK_RC(tl_manager_login(mgr, login, NULL), TL_OK);
    CHECK_RC(tl_manager_token(mgr, buf, sizeof buf, &written, NULL), TL_OK);
    CHECK(strcmp(buf, "login-value") == 0);
    tl_fetch_output_free(login);
    tl_manager_free(mgr);
}

/* The request decisions (issue 16): header, body, verdict, session info, token values. No
 * network: a C source's token, and a body-placing session manager whose login URL is a
 * closed loopback port (never reached). */
static void test_request_decision_arguments(void) {
    struct probe p;
    memset(&p, 0, sizeof p);
    tl_manager *mgr = probe_manager(&p, 0);
    if (!mgr) return;
    tl_token *tok = NULL;
    CHECK_RC(tl_manager_token_handle(mgr, &tok), TL_OK);
    if (!tok) {
        tl_manager_free(mgr);
        return;
    }
    uint64_t generation = tl_token_generation(tok);
    char name[64], value[64], detail[256];
    size_t nw = 0, vw = 0, written = 0;
    bool has = false;

    /* tl_manager_request_header: a bearer manager's header. */
    CHECK_RC(tl_manager_request_header(NULL, tok, name, sizeof name, &nw, value, sizeof value, &vw, &has),
             TL_NULL_ARGUMENT);
    CHECK_RC(tl_manager_request_header(mgr, NULL, name, sizeof name, &nw, value, sizeof value, &vw, &has),
             TL_NULL_ARGUMENT);
    CHECK_RC(tl_manager_last_error(mgr, detail, sizeof detail, &written), TL_OK);
    CHECK(strstr(detail, "`token`") != NULL);
    CHECK_RC(tl_manager_request_header(mgr, tok, name, sizeof name, NULL, value, sizeof value, &vw, &has),
             TL_NULL_ARGUMENT);
    CHECK_RC(tl_manager_request_header(mgr, tok, name, sizeof name, &nw, value, sizeof value, NULL, &has),
             TL_NULL_ARGUMENT);
    CHECK_RC(tl_manager_request_header(mgr, tok, name, sizeof name, &nw, value, sizeof value, &vw, NULL),
             TL_NULL_ARGUMENT);
    CHECK_RC(tl_manager_request_header(mgr, tok, NULL, 5, &nw, value, sizeof value, &vw, &has),
             TL_NULL_ARGUMENT);
    CHECK_RC(tl_manager_request_header(mgr, tok, name, sizeof name, &nw, NULL, 5, &vw, &has),
             TL_NULL_ARGUMENT);
    /* A size query, then a value buffer one byte short: sizes, no partial secret. */
    CHECK_RC(tl_manager_request_header(mgr, tok, NULL, 0, &nw, NULL, 0, &vw, &has), TL_BUFFER_TOO_SMALL);
    CHECK(has && nw == strlen("authorization") + 1 && vw == strlen("Bearer probe-token-value") + 1);
    memset(name, 'x', sizeof name);
    memset(value, 'x', sizeof value);
    CHECK_RC(tl_manager_request_header(mgr, tok, name, sizeof name, &nw, value, vw - 1, &vw, &has),
             TL_BUFFER_TOO_SMALL);
    CHECK(name[0] == '\0' && value[0] == '\0' && value[1] == 'x');
    CHECK(nw == 14 && vw == 25);
    CHECK_RC(tl_manager_request_header(mgr, tok, name, sizeof name, &nw, value, sizeof value, &vw, &has),
             TL_OK);
    CHECK(has && strcmp(name, "authorization") == 0 && nw == 13);
    CHECK(strcmp(value, "Bearer probe-token-value") == 0 && vw == 24);

    /* tl_manager_authorize_body on a bearer manager: nothing placed; the body is not read
     * (binary is fine), and its pointer rules still hold. */
    char out[256];
    bool placed = true;
    CHECK_RC(tl_manager_authorize_body(mgr, tok, NOT_UTF8, 2, out, sizeof out, &written, &placed), TL_OK);
    CHECK(!placed && written == 0 && out[0] == '\0');
    CHECK_RC(tl_manager_authorize_body(mgr, tok, NULL, 3, out, sizeof out, &written, &placed),
             TL_NULL_ARGUMENT);
    CHECK_RC(tl_manager_authorize_body(mgr, tok, "{}", SIZE_MAX, out, sizeof out, &written, &placed),
             TL_INVALID_ARGUMENT);

    /* tl_manager_needs_response_body. */
    CHECK(!tl_manager_needs_response_body(NULL, 401));
    CHECK(tl_manager_needs_response_body(mgr, 401));
    CHECK(!tl_manager_needs_response_body(mgr, 200));

    /* tl_manager_judge_response: bad arguments are refused before anything is judged. */
    bool rejected = true;
    tl_header headers[300];
    for (size_t i = 0; i < 300; i++) {
        headers[i].name = "X-Filler";
        headers[i].value = "1";
    }
    CHECK_RC(tl_manager_judge_response(NULL, generation, 401, NULL, 0, NULL, 0, &rejected), TL_NULL_ARGUMENT);
    CHECK_RC(tl_manager_judge_response(mgr, generation, 401, NULL, 0, NULL, 0, NULL), TL_NULL_ARGUMENT);
    CHECK_RC(tl_manager_judge_response(mgr, generation, 401, NULL, 1, NULL, 0, &rejected), TL_NULL_ARGUMENT);
    CHECK_RC(tl_manager_judge_response(mgr, generation, 401, NULL, 0, NULL, 1, &rejected), TL_NULL_ARGUMENT);
    headers[3].name = NULL;
    CHECK_RC(tl_manager_judge_response(mgr, generation, 401, headers, 5, NULL, 0, &rejected), TL_NULL_ARGUMENT);
    CHECK_RC(tl_manager_last_error(mgr, detail, sizeof detail, &written), TL_OK);
    CHECK(strstr(detail, "headers[3].name") != NULL);
    headers[3].name = "X-Filler";
    headers[4].value = NOT_UTF8;
    CHECK_RC(tl_manager_judge_response(mgr, generation, 401, headers, 5, NULL, 0, &rejected), TL_INVALID_UTF8);
    headers[4].value = "1";
    tl_status status;
    CHECK_RC(tl_manager_status(mgr, &status), TL_OK);
    CHECK(status.generation == generation && status.state == TL_STATE_FRESH); /* nothing discarded */
    /* Huge counts are bounded: only TL_MAX_JUDGED_HEADERS headers and TL_MAX_JUDGED_BODY_BYTES
     * body bytes are read (valgrind and ASan would see a read past these arrays). */
    static uint8_t body[TL_MAX_JUDGED_BODY_BYTES];
    memset(body, 'b', sizeof body);
    CHECK_RC(tl_manager_judge_response(mgr, generation, 200, headers, SIZE_MAX, body, SIZE_MAX, &rejected),
             TL_OK);
    CHECK(!rejected);
    /* A 401 with an insufficient_scope challenge is not a rejection of the token... */
    headers[0].name = "WWW-Authenticate";
    headers[0].value = "Bearer error=\"insufficient_scope\"";
    CHECK_RC(tl_manager_judge_response(mgr, generation, 401, headers, 1, NULL, 0, &rejected), TL_OK);
    CHECK(!rejected);
    /* ...but the same challenge past the first 256 headers is not looked at: a bare 401. */
    headers[0].name = "X-Filler";
    headers[0].value = "1";
    headers[299].name = "WWW-Authenticate";
    headers[299].value = "Bearer error=\"insufficient_scope\"";
    CHECK_RC(tl_manager_judge_response(mgr, generation, 401, headers, 300, NULL, 0, &rejected), TL_OK);
    CHECK(rejected);
    CHECK_RC(tl_manager_status(mgr, &status), TL_OK);
    CHECK(status.state == TL_STATE_EMPTY); /* that generation was discarded */

    /* tl_manager_dpop_proof and tl_manager_remember_dpop_nonce on a manager without DPoP:
     * no proof, no nonce kept; the pointer and text rules hold all the same. */
    const char *api = "https://api.example/items";
    bool has_proof = true, is_new = true;
    CHECK_RC(tl_manager_dpop_proof(NULL, tok, "GET", api, out, sizeof out, &written, &has_proof),
             TL_NULL_ARGUMENT);
    CHECK_RC(tl_manager_dpop_proof(mgr, NULL, "GET", api, out, sizeof out, &written, &has_proof),
             TL_NULL_ARGUMENT);
    CHECK_RC(tl_manager_dpop_proof(mgr, tok, NULL, api, out, sizeof out, &written, &has_proof),
             TL_NULL_ARGUMENT);
    CHECK_RC(tl_manager_last_error(mgr, detail, sizeof detail, &written), TL_OK);
    CHECK(strstr(detail, "`method`") != NULL);
    CHECK_RC(tl_manager_dpop_proof(mgr, tok, "GET", NULL, out, sizeof out, &written, &has_proof),
             TL_NULL_ARGUMENT);
    CHECK_RC(tl_manager_dpop_proof(mgr, tok, NOT_UTF8, api, out, sizeof out, &written, &has_proof),
             TL_INVALID_UTF8);
    CHECK_RC(tl_manager_dpop_proof(mgr, tok, "GET", NOT_UTF8, out, sizeof out, &written, &has_proof),
             TL_INVALID_UTF8);
    CHECK_RC(tl_manager_dpop_proof(mgr, tok, "GET", api, out, sizeof out, NULL, &has_proof),
             TL_NULL_ARGUMENT);
    CHECK_RC(tl_manager_dpop_proof(mgr, tok, "GET", api, out, sizeof out, &written, NULL),
             TL_NULL_ARGUMENT);
    CHECK_RC(tl_manager_dpop_proof(mgr, tok, "GET", api, NULL, 5, &written, &has_proof),
             TL_NULL_ARGUMENT);
    memset(out, 'x', sizeof out);
    written = 9;
    CHECK_RC(tl_manager_dpop_proof(mgr, tok, "GET", api, out, sizeof out, &written, &has_proof),
             TL_OK);
    CHECK(!has_proof && written == 0 && out[0] == '\0');
    has_proof = true;
    CHECK_RC(tl_manager_dpop_proof(mgr, tok, "GET", api, NULL, 0, &written, &has_proof), TL_OK);
    CHECK(!has_proof && written == 0);
    tl_header nonce_headers[] = {{"DPoP-Nonce", "n-1"}};
    CHECK_RC(tl_manager_remember_dpop_nonce(NULL, api, nonce_headers, 1, &is_new), TL_NULL_ARGUMENT);
    CHECK_RC(tl_manager_remember_dpop_nonce(mgr, NULL, nonce_headers, 1, &is_new), TL_NULL_ARGUMENT);
    CHECK_RC(tl_manager_remember_dpop_nonce(mgr, NOT_UTF8, nonce_headers, 1, &is_new), TL_INVALID_UTF8);
    CHECK_RC(tl_manager_remember_dpop_nonce(mgr, api, nonce_headers, 1, NULL), TL_NULL_ARGUMENT);
    CHECK_RC(tl_manager_remember_dpop_nonce(mgr, api, NULL, 1, &is_new), TL_NULL_ARGUMENT);
    headers[3].name = NULL;
    CHECK_RC(tl_manager_remember_dpop_nonce(mgr, api, headers, 5, &is_new), TL_NULL_ARGUMENT);
    CHECK_RC(tl_manager_last_error(mgr, detail, sizeof detail, &written), TL_OK);
    CHECK(strstr(detail, "headers[3].name") != NULL);
    headers[3].name = "X-Filler";
    headers[4].value = NOT_UTF8;
    CHECK_RC(tl_manager_remember_dpop_nonce(mgr, api, headers, 5, &is_new), TL_INVALID_UTF8);
    headers[4].value = "1";
    CHECK_RC(tl_manager_remember_dpop_nonce(mgr, "not a url", nonce_headers, 1, &is_new), TL_USAGE);
    CHECK_RC(tl_manager_remember_dpop_nonce(mgr, api, NULL, 0, &is_new), TL_OK);
    CHECK(!is_new);
    is_new = true;
    CHECK_RC(tl_manager_remember_dpop_nonce(mgr, api, nonce_headers, 1, &is_new), TL_OK);
    CHECK(!is_new);
    /* Huge counts are bounded (only TL_MAX_JUDGED_HEADERS headers are read). */
    CHECK_RC(tl_manager_remember_dpop_nonce(mgr, api, headers, SIZE_MAX, &is_new), TL_OK);
    /* tl_manager_dpop_resend: the same argument rules; a token without DPoP (this C
     * source's) is never resent, and a huge count is bounded. */
    bool resend = true;
    CHECK_RC(tl_manager_dpop_resend(NULL, tok, api, 401, nonce_headers, 1, &resend), TL_NULL_ARGUMENT);
    CHECK_RC(tl_manager_dpop_resend(mgr, NULL, api, 401, nonce_headers, 1, &resend), TL_NULL_ARGUMENT);
    CHECK_RC(tl_manager_dpop_resend(mgr, tok, NULL, 401, nonce_headers, 1, &resend), TL_NULL_ARGUMENT);
    CHECK_RC(tl_manager_dpop_resend(mgr, tok, NOT_UTF8, 401, nonce_headers, 1, &resend), TL_INVALID_UTF8);
    CHECK_RC(tl_manager_dpop_resend(mgr, tok, api, 401, nonce_headers, 1, NULL), TL_NULL_ARGUMENT);
    CHECK_RC(tl_manager_dpop_resend(mgr, tok, api, 401, NULL, 1, &resend), TL_NULL_ARGUMENT);
    CHECK_RC(tl_manager_dpop_resend(mgr, tok, "not a url", 401, nonce_headers, 1, &resend), TL_USAGE);
    CHECK(!resend);
    resend = true;
    CHECK_RC(tl_manager_dpop_resend(mgr, tok, api, 401, nonce_headers, 1, &resend), TL_OK);
    CHECK(!resend);
    CHECK_RC(tl_manager_dpop_resend(mgr, tok, api, 401, headers, SIZE_MAX, &resend), TL_OK);
    CHECK(!resend);

    /* tl_manager_session_info: a C source has no session info request. */
    CHECK_RC(tl_manager_session_info(NULL, out, sizeof out, &written), TL_NULL_ARGUMENT);
    CHECK_RC(tl_manager_session_info(mgr, out, sizeof out, NULL), TL_NULL_ARGUMENT);
    CHECK_RC(tl_manager_session_info(mgr, NULL, 4, &written), TL_NULL_ARGUMENT);
    CHECK_RC(tl_manager_session_info(mgr, out, sizeof out, &written), TL_CONFIGURATION);
    CHECK(out[0] == '\0' && written == 0);

    /* tl_token_attribute and tl_token_id_token. */
    CHECK(tl_token_attribute(NULL, "server_url") == NULL);
    CHECK(tl_token_attribute(tok, NULL) == NULL);
    CHECK(tl_token_attribute(tok, NOT_UTF8) == NULL);
    CHECK(tl_token_attribute(tok, "server_url") == NULL);
    const char *id_token = (const char *)1;
    size_t id_len = 7;
    CHECK_RC(tl_token_id_token(NULL, &id_token, &id_len), TL_NULL_ARGUMENT);
    CHECK_RC(tl_token_id_token(tok, NULL, &id_len), TL_NULL_ARGUMENT);
    CHECK_RC(tl_token_id_token(tok, &id_token, NULL), TL_OK);
    CHECK(id_token == NULL);
    CHECK_RC(tl_token_id_token(tok, &id_token, &id_len), TL_OK);
    CHECK(id_token == NULL && id_len == 0);
    tl_token_free(tok);

    /* A session whose token travels in request bodies (a SOAP SessionHeader). Its token
     * here comes from a login with XML metacharacters in it, installed in the C source's
     * manager: a tl_token is independent of the manager it came from. */
    tl_fetch_output *login = NULL;
    CHECK_RC(tl_fetch_output_new(&login), TL_OK);
    CHECK_RC(tl_fetch_output_set_token(login, "x&<y>", 5, 600000), TL_OK);
    tok = NULL;
    CHECK_RC(tl_manager_login(mgr, login, &tok), TL_OK);
    tl_fetch_output_free(login);
    tl_manager *soap = NULL;
    CHECK_RC(tl_manager_from_config(
                 "{\"source\": {\"type\": \"session_login\","
                 " \"credentials\": {\"username\": \"u\", \"password\": \"p\"},"
                 " \"session\": {\"login\": {\"url\": \"http://127.0.0.1:9/login\","
                 " \"xml\": \"<login><u>{{username}}</u><p>{{password}}</p></login>\"},"
                 " \"token\": {\"xml_path\": \"loginResponse/Session\"}, \"lifetime_s\": 900,"
                 " \"send\": {\"body\": \"{{session}}\"},"
                 " \"expired\": {\"statuses\": [500], \"body_contains\": [\"INVALID_SESSION\"]}}}}",
                 &soap),
             TL_OK);
    if (soap && tok) {
        const char *template_body = "<s>{{session}}</s>";
        size_t template_len = strlen(template_body);
        const char *expected = "<s>x&amp;&lt;y&gt;</s>";
        CHECK_RC(tl_manager_authorize_body(NULL, tok, template_body, template_len, out, sizeof out, &written, &placed),
                 TL_NULL_ARGUMENT);
        CHECK_RC(tl_manager_authorize_body(soap, NULL, template_body, template_len, out, sizeof out, &written, &placed),
                 TL_NULL_ARGUMENT);
        CHECK_RC(tl_manager_authorize_body(soap, tok, template_body, template_len, out, sizeof out, NULL, &placed),
                 TL_NULL_ARGUMENT);
        CHECK_RC(tl_manager_authorize_body(soap, tok, template_body, template_len, out, sizeof out, &written, NULL),
                 TL_NULL_ARGUMENT);
        CHECK_RC(tl_manager_authorize_body(soap, tok, template_body, template_len, NULL, 4, &written, &placed),
                 TL_NULL_ARGUMENT);
        CHECK_RC(tl_manager_authorize_body(soap, tok, NULL, 1, out, sizeof out, &written, &placed),
                 TL_NULL_ARGUMENT);
        CHECK_RC(tl_manager_authorize_body(soap, tok, template_body, SIZE_MAX, out, sizeof out, &written, &placed),
                 TL_INVALID_ARGUMENT);
        CHECK_RC(tl_manager_authorize_body(soap, tok, NOT_UTF8, 2, out, sizeof out, &written, &placed),
                 TL_INVALID_UTF8);
        /* An empty body: placed (there was nowhere to put the token). */
        CHECK_RC(tl_manager_authorize_body(soap, tok, NULL, 0, out, sizeof out, &written, &placed), TL_OK);
        CHECK(placed && written == 0 && out[0] == '\0');
        /* Too small: the size needed, nothing of the token written. */
        memset(out, 'x', sizeof out);
        CHECK_RC(tl_manager_authorize_body(soap, tok, template_body, template_len, out, 8, &written, &placed),
                 TL_BUFFER_TOO_SMALL);
        CHECK(placed && written == strlen(expected) + 1 && out[0] == '\0' && out[1] == 'x');
        CHECK_RC(tl_manager_authorize_body(soap, tok, template_body, template_len, out, sizeof out, &written, &placed),
                 TL_OK);
        CHECK(placed && strcmp(out, expected) == 0 && written == strlen(expected));
        /* No header for it, and its 500s may be rejections. */
        CHECK_RC(tl_manager_request_header(soap, tok, name, sizeof name, &nw, value, sizeof value, &vw, &has),
                 TL_OK);
        CHECK(!has && nw == 0 && vw == 0 && name[0] == '\0' && value[0] == '\0');
        CHECK(tl_manager_needs_response_body(soap, 500));
    }
    tl_token_free(tok);
    tl_manager_free(soap);
    tl_manager_free(mgr);
}

int main(void) {
    RUN(test_result_codes);
    RUN(test_constructor_arguments);
    RUN(test_manager_arguments);
    RUN(test_bad_callback_results);
    RUN(test_login_arguments);
    RUN(test_login_and_seed_offline);
    RUN(test_request_decision_arguments);
    return finish();
}
