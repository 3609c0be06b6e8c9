/* C callbacks that hang or misbehave never wedge a manager: a slow event callback does not
 * delay another manager, a hung fetch is never overlapped by its retry and does not make
 * tl_manager_free wait forever, re-entrant calls are refused, bad values are refused.
 * No network. */
#include "test_support.h"

#include <pthread.h>
#include <stdatomic.h>

static long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

/* ---- a source that answers at once, or blocks until released ---- */

struct blocking_source {
    atomic_int calls;
    atomic_int running;
    atomic_int most_at_once;
    atomic_int release; /* fetch blocks until this is non-zero */
    atomic_int block_first_only;
};

static uint32_t blocking_fetch(void *userdata, tl_fetch_output *out) {
    struct blocking_source *s = userdata;
    int running = atomic_fetch_add(&s->running, 1) + 1;
    int most = atomic_load(&s->most_at_once);
    while (running > most && !atomic_compare_exchange_weak(&s->most_at_once, &most, running)) {
    }
    int call = atomic_fetch_add(&s->calls, 1);
    if (!atomic_load(&s->block_first_only) || call == 0) {
        while (!atomic_load(&s->release)) sleep_ms(5);
    }
    tl_fetch_output_set_token(out, "hardening-token", 15, 600000);
    atomic_fetch_sub(&s->running, 1);
    return TL_OK;
}

static uint32_t quick_fetch(void *userdata, tl_fetch_output *out) {
    (void)userdata;
    tl_fetch_output_set_token(out, "quick-token", 11, 600000);
    return TL_OK;
}

static tl_source_callbacks callbacks(void *userdata,
                                     uint32_t (*fetch)(void *, tl_fetch_output *)) {
    tl_source_callbacks cbs;
    memset(&cbs, 0, sizeof cbs);
    cbs.userdata = userdata;
    cbs.fetch = fetch;
    return cbs;
}

/* ---- 1. a slow event callback never delays another manager ---- */

static atomic_int g_listener_sleeping;

static void sleepy_listener(void *userdata, const tl_event *event) {
    (void)userdata;
    if (event->kind == TL_EVENT_REFRESH_STARTED) {
        atomic_store(&g_listener_sleeping, 1);
        sleep_ms(2000);
    }
}

static void a_slow_event_callback_never_delays_another_manager(void) {
    tl_source_callbacks quick = callbacks(NULL, quick_fetch);
    tl_manager *slow = NULL;
    CHECK_RC(tl_manager_new_custom(&quick, NULL, "slow-listener", NULL, &slow), TL_OK);
    CHECK_RC(tl_manager_set_event_callback(slow, sleepy_listener, NULL), TL_OK);
    char buf[64];
    size_t written = 0;
    CHECK_RC(tl_manager_token(slow, buf, sizeof buf, &written, NULL), TL_OK);
    for (int i = 0; i < 400 && !atomic_load(&g_listener_sleeping); i++) sleep_ms(5);
    CHECK(atomic_load(&g_listener_sleeping));

    struct blocking_source hung = {0};
    tl_source_callbacks cbs = callbacks(&hung, blocking_fetch);
    tl_manager *other = NULL;
    CHECK_RC(tl_manager_new_custom(&cbs, NULL, "other", "{\"waiter_timeout_ms\": 100}", &other),
             TL_OK);
    long started = now_ms();
    CHECK_RC(tl_manager_token(other, buf, sizeof buf, &written, NULL), TL_TIMEOUT);
    long waited = now_ms() - started;
    if (waited >= 1500) fprintf(stderr, "waited %ld ms behind another manager's listener\n", waited);
    CHECK(waited < 1500);

    atomic_store(&hung.release, 1);
    CHECK_RC(tl_manager_free(other), TL_OK);
    CHECK_RC(tl_manager_free(slow), TL_OK);
}

/* ---- 2. a hung fetch: no overlap, bounded free ---- */

static void a_hung_fetch_is_never_overlapped_and_free_returns_within_its_bound(void) {
    struct blocking_source hung = {0};
    tl_source_callbacks cbs = callbacks(&hung, blocking_fetch);
    tl_manager *mgr = NULL;
    CHECK_RC(tl_manager_new_custom(&cbs, NULL, "hung",
                                   "{\"source_timeout_ms\": 200, \"waiter_timeout_ms\": 300,"
                                   " \"backoff_base_ms\": 20, \"backoff_cap_ms\": 40}",
                                   &mgr),
             TL_OK);
    char buf[64];
    size_t written = 0;
    /* Callers keep asking for a second; each retry finds the first call still running. */
    long until = now_ms() + 1000;
    while (now_ms() < until) {
        tl_result rc = tl_manager_token(mgr, buf, sizeof buf, &written, NULL);
        CHECK(rc == TL_TIMEOUT || rc == TL_EXPIRED || rc == TL_TRANSIENT);
        sleep_ms(20);
    }
    CHECK(atomic_load(&hung.calls) == 1);
    CHECK(atomic_load(&hung.most_at_once) == 1);
    tl_status status;
    CHECK_RC(tl_manager_status(mgr, &status), TL_OK);
    CHECK(status.counters.source_timeouts >= 1);

    long started = now_ms();
    CHECK_RC(tl_manager_free(mgr), TL_TIMEOUT);
    long took = now_ms() - started;
    CHECK(took >= (long)TL_FREE_WAIT_MS - 100);
    CHECK(took < (long)TL_FREE_WAIT_MS + 3000);
    /* The callback still holds our userdata: let it return before it goes out of scope. */
    atomic_store(&hung.release, 1);
    for (int i = 0; i < 400 && atomic_load(&hung.running) != 0; i++) sleep_ms(5);
    CHECK(atomic_load(&hung.running) == 0);
    sleep_ms(50); /* the callback's last instructions after the decrement */
}

/* ---- 3. re-entrant calls from callbacks are refused ---- */

struct reentrant {
    tl_manager *mgr;
    atomic_int seen;
    tl_result free_rc;
    tl_result set_rc;
};

static void reentrant_listener(void *userdata, const tl_event *event) {
    (void)event;
    struct reentrant *r = userdata;
    if (atomic_fetch_add(&r->seen, 1) == 0) {
        r->free_rc = tl_manager_free(r->mgr);
        r->set_rc = tl_manager_set_event_callback(r->mgr, NULL, NULL);
    }
}

static void free_and_set_event_callback_inside_a_callback_are_usage_errors(void) {
    tl_source_callbacks quick = callbacks(NULL, quick_fetch);
    struct reentrant r = {0};
    CHECK_RC(tl_manager_new_custom(&quick, NULL, "reentrant", NULL, &r.mgr), TL_OK);
    CHECK_RC(tl_manager_set_event_callback(r.mgr, reentrant_listener, &r), TL_OK);
    char buf[64];
    size_t written = 0;
    CHECK_RC(tl_manager_token(r.mgr, buf, sizeof buf, &written, NULL), TL_OK);
    for (int i = 0; i < 400 && atomic_load(&r.seen) == 0; i++) sleep_ms(5);
    sleep_ms(50);
    CHECK(r.free_rc == TL_USAGE);
    CHECK(r.set_rc == TL_USAGE);
    /* The manager is still alive and usable, and frees normally from here. */
    CHECK_RC(tl_manager_token(r.mgr, buf, sizeof buf, &written, NULL), TL_OK);
    CHECK_RC(tl_manager_free(r.mgr), TL_OK);
}

/* ---- 4. bad values from a fetch callback ---- */

struct bad_value {
    int which;
    tl_result set_rc;
};

static uint32_t bad_fetch(void *userdata, tl_fetch_output *out) {
    struct bad_value *b = userdata;
    switch (b->which) {
    case 0: b->set_rc = tl_fetch_output_set_token(out, "abc\0def", 7, 60000); break;
    case 1: b->set_rc = tl_fetch_output_set_token(out, "abc\r\nX-Evil: 1", 15, 60000); break;
    case 2: b->set_rc = tl_fetch_output_set_token(out, "abc", 3, (uint64_t)(int64_t)-1000); break;
    case 3: b->set_rc = tl_fetch_output_set_token(out, "", 0, 60000); break;
    default:
        tl_fetch_output_set_token(out, "abc", 3, 60000);
        b->set_rc = tl_fetch_output_set_refresh_token(out, "r\0t", 3);
        break;
    }
    return TL_OK;
}

static void bad_values_from_a_fetch_callback_are_refused(void) {
    for (int which = 0; which < 5; which++) {
        struct bad_value b = {which, TL_OK};
        tl_source_callbacks cbs = callbacks(&b, bad_fetch);
        tl_manager *mgr = NULL;
        CHECK_RC(tl_manager_new_custom(&cbs, NULL, "bad", NULL, &mgr), TL_OK);
        char buf[64];
        size_t written = 0;
        tl_result rc = tl_manager_token(mgr, buf, sizeof buf, &written, NULL);
        CHECK(b.set_rc == TL_INVALID_ARGUMENT);
        /* A value that was refused is never served (a refused refresh token only drops it). */
        if (which < 4) CHECK(rc == TL_PROTOCOL);
        CHECK_RC(tl_manager_free(mgr), TL_OK);
    }
}

int main(void) {
    RUN(a_slow_event_callback_never_delays_another_manager);
    RUN(a_hung_fetch_is_never_overlapped_and_free_returns_within_its_bound);
    RUN(free_and_set_event_callback_inside_a_callback_are_usage_errors);
    RUN(bad_values_from_a_fetch_callback_are_refused);
    return finish();
}
