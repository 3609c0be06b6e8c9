/* The shared scenarios of tests/scenarios (its README describes the step language), run from
 * C: every *.scenario file against a fresh test token server of its own
 * ($TOKENLEASE_TEST_SERVER_BIN --max-lifetime-s 300), the manager built with
 * tl_manager_from_config_on_clock on a tl_manual_clock that moves in step with the server's
 * clock. API calls go through the C request functions: tl_manager_request_header or
 * tl_manager_authorize_body, the test helpers' HTTP, tl_manager_judge_response, and after a
 * rejection a new token and one retry. The reference semantics are run_shared_scenario in
 * core/tests/scenarios.rs.
 *
 * Also: the manual clock's own contract (bad arguments, a clock freed before its manager,
 * the settle timeout, TL_USAGE from inside a callback).
 *
 * Run from the repository root (as scripts/test-c does). A failing step prints
 * "FAIL <file>:<line>: <step>: <why>". Needs no TOKENLEASE_TEST_SERVER_URL. */
#include "test_support.h"

#include <dirent.h>
#include <stdarg.h>
#include <stdatomic.h>

#define SCENARIO_DIR "tests/scenarios"
#define MIN_SCENARIOS 5
#define MINUTE_MS 60000

static const char *server_bin(void) {
    const char *bin = getenv("TOKENLEASE_TEST_SERVER_BIN");
    return bin != NULL && bin[0] != '\0' ? bin : NULL;
}

/* A fresh test token server (started once more when it stalled at start-up, as the other
 * harnesses do). 1 on success. */
static int start_server(spawned *server) {
    char *argv[] = {(char *)server_bin(), "--max-lifetime-s", "300", NULL};
    if (argv[0] == NULL) return 0;
    if (spawn_server(argv, "TOKENLEASE_TEST_SERVER_URL", server)) return 1;
    printf("# the test token server did not start within 60 s; starting it again\n");
    return spawn_server(argv, "TOKENLEASE_TEST_SERVER_URL", server);
}

/* A whole file, NUL-terminated, or NULL. Free it with free(). */
static char *read_text(const char *path) {
    FILE *file = fopen(path, "rb");
    if (file == NULL) return NULL;
    char *text = NULL;
    long size = -1;
    if (fseek(file, 0, SEEK_END) == 0) size = ftell(file);
    if (size >= 0 && fseek(file, 0, SEEK_SET) == 0 && (text = malloc((size_t)size + 1)) != NULL) {
        size_t got = fread(text, 1, (size_t)size, file);
        text[got] = '\0';
    }
    fclose(file);
    return text;
}

/* `in` with every `from` (not empty) replaced by `to`, newly allocated; NULL when out of
 * memory. */
static char *replaced(const char *in, const char *from, const char *to) {
    size_t count = 0, from_len = strlen(from);
    for (const char *at = strstr(in, from); at != NULL; at = strstr(at + from_len, from)) count++;
    size_t len = strlen(in) + count * strlen(to) + 1;
    char *out = malloc(len);
    if (out != NULL && !replace_all(in, from, to, out, len)) {
        free(out);
        out = NULL;
    }
    return out;
}

static void wipe_free(char *text) {
    if (text == NULL) return;
    memset(text, 0, strlen(text));
    free(text);
}

/* ---- a little JSON reading for GET /stats ---- */

static const char *json_ws(const char *p) {
    while (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t') p++;
    return p;
}

/* `p` at a '"': the position after the string, or NULL. */
static const char *json_after_string(const char *p) {
    for (p++; *p != '\0' && *p != '"'; p++) {
        if (*p == '\\' && p[1] != '\0') p++;
    }
    return *p == '"' ? p + 1 : NULL;
}

/* The position after the value at `p`, or NULL. */
static const char *json_after_value(const char *p) {
    p = json_ws(p);
    if (*p == '"') return json_after_string(p);
    if (*p == '{' || *p == '[') {
        int depth = 0;
        while (*p != '\0') {
            if (*p == '"') {
                if ((p = json_after_string(p)) == NULL) return NULL;
                continue;
            }
            if (*p == '{' || *p == '[') depth++;
            if ((*p == '}' || *p == ']') && --depth == 0) return p + 1;
            p++;
        }
        return NULL;
    }
    while (*p != '\0' && *p != ',' && *p != '}' && *p != ']') p++;
    return p;
}

/* The value of member `name` (`name_len` bytes) of the object at `p`, or NULL. */
static const char *json_member(const char *p, const char *name, size_t name_len) {
    p = json_ws(p);
    if (*p != '{') return NULL;
    p = json_ws(p + 1);
    while (*p == '"') {
        const char *key = p + 1;
        const char *after = json_after_string(p);
        if (after == NULL) return NULL;
        size_t key_len = (size_t)(after - 1 - key);
        p = json_ws(after);
        if (*p != ':') return NULL;
        p = json_ws(p + 1);
        if (key_len == name_len && strncmp(key, name, name_len) == 0) return p;
        if ((p = json_after_value(p)) == NULL) return NULL;
        p = json_ws(p);
        if (*p != ',') return NULL;
        p = json_ws(p + 1);
    }
    return NULL;
}

/* The unsigned number at the dotted path (e.g. "grants.client_credentials") of `json`; 0
 * when it is missing or not one (as the Rust interpreter's `unwrap_or(0)`). */
static unsigned long long json_count(const char *json, const char *dotted) {
    const char *value = json;
    while (value != NULL) {
        const char *dot = strchr(dotted, '.');
        size_t len = dot ? (size_t)(dot - dotted) : strlen(dotted);
        value = json_member(value, dotted, len);
        if (dot == NULL) break;
        dotted = dot + 1;
    }
    if (value == NULL || *value < '0' || *value > '9') return 0;
    return strtoull(value, NULL, 10);
}

/* ---- one scenario ---- */

typedef struct {
    const char *file; /* e.g. "vsphere.scenario" */
    int line;
    const char *step; /* the whole line */
    spawned server;
    tl_manual_clock *clock;
    tl_manager *mgr;
    char *config;
    int failed;
} scenario;

/* "FAIL <file>:<line>: <step>: <why>" (scripts/test-c counts it as a failed test). */
static void step_failed(scenario *sc, const char *format, ...) {
    char why[1024];
    va_list args;
    va_start(args, format);
    vsnprintf(why, sizeof why, format, args);
    va_end(args);
    printf("FAIL %s:%d: %s: %s\n", sc->file, sc->line, sc->step, why);
    fflush(stdout);
    g_failures++;
    sc->failed++;
}

/* The detail of the last failure on `mgr` (NULL: of the last constructor on this thread). */
static const char *last_error(const tl_manager *mgr) {
    static char detail[1024];
    size_t written = 0;
    if (tl_manager_last_error(mgr, detail, sizeof detail, &written) != TL_OK) detail[0] = '\0';
    return detail;
}

/* The manager is built at the first step that needs it. 1 when there is one. */
static int ensure_manager(scenario *sc) {
    if (sc->mgr != NULL) return 1;
    if (sc->config == NULL) {
        step_failed(sc, "no configuration (a `config` step comes first)");
        return 0;
    }
    char *text = replaced(sc->config, "{{server}}", sc->server.url);
    if (text == NULL) {
        step_failed(sc, "out of memory");
        return 0;
    }
    tl_result rc = tl_manager_from_config_on_clock(text, sc->clock, &sc->mgr);
    wipe_free(text);
    if (rc != TL_OK) {
        step_failed(sc, "tl_manager_from_config_on_clock: %s: %s", tl_result_name(rc),
                    last_error(NULL));
        return 0;
    }
    return 1;
}

/* POST /control with `json` to the scenario's server. 1 on a 200. */
static int control(scenario *sc, const char *json) {
    char answer[4096];
    int status = http_to(sc->server.port, "POST", "/control", NULL, "application/json", json,
                         answer, sizeof answer);
    if (status != 200) {
        step_failed(sc, "POST /control %s answered %d: %.200s", json, status,
                    status < 0 ? "" : answer);
        return 0;
    }
    return 1;
}

/* An absolute http URL on this machine, split. */
typedef struct {
    int port;
    char path[1024];
} target_url;

static int split_url(const char *url, target_url *out) {
    const char *host = NULL;
    if (strncmp(url, "http://127.0.0.1:", 17) == 0) host = url + 17;
    if (strncmp(url, "http://localhost:", 17) == 0) host = url + 17;
    if (host == NULL) return 0;
    char *end = NULL;
    long port = strtol(host, &end, 10);
    if (port <= 0 || port > 65535 || (*end != '/' && *end != '\0')) return 0;
    out->port = (int)port;
    snprintf(out->path, sizeof out->path, "%s", *end == '/' ? end : "/");
    return 1;
}

static struct http_answer g_answer;

/* One request with `tok`, authorized as core says (a header, or the token placed in the
 * body); the response in g_answer. 1 when an answer came. */
static int send_once(scenario *sc, const tl_token *tok, const char *method,
                     const target_url *url, const char *body, int xml) {
    char headers[6144];
    int before = g_failures;
    header_line(sc->mgr, tok, headers, sizeof headers);
    if (g_failures != before) {
        step_failed(sc, "tl_manager_request_header failed: %s", last_error(sc->mgr));
        return 0;
    }
    if (xml) strncat(headers, "SOAPAction: \"\"\r\n", sizeof headers - strlen(headers) - 1);
    size_t body_len = strlen(body), needed = 0;
    bool placed = false;
    char *rendered = NULL;
    /* A size query first: the rendered body's size is known only to core. */
    tl_result rc =
        tl_manager_authorize_body(sc->mgr, tok, body, body_len, NULL, 0, &needed, &placed);
    if (rc == TL_BUFFER_TOO_SMALL && placed) {
        rendered = malloc(needed);
        rc = rendered ? tl_manager_authorize_body(sc->mgr, tok, body, body_len, rendered, needed,
                                                  &needed, &placed)
                      : TL_INTERNAL;
    }
    if (rc != TL_OK) {
        step_failed(sc, "tl_manager_authorize_body: %s: %s", tl_result_name(rc),
                    last_error(sc->mgr));
        wipe_free(rendered);
        memset(headers, 0, sizeof headers);
        return 0;
    }
    const char *sent = placed ? rendered : body;
    size_t sent_len = placed ? needed : body_len;
    int status = http_exchange_to(url->port, method, url->path, headers,
                                  xml ? "text/xml; charset=utf-8" : "application/json", sent,
                                  sent_len, &g_answer);
    wipe_free(rendered);
    memset(headers, 0, sizeof headers);
    if (status < 0) {
        step_failed(sc, "no HTTP answer from port %d", url->port);
        return 0;
    }
    return 1;
}

/* A token handle, or NULL after a step failure. */
static tl_token *token_now(scenario *sc) {
    tl_token *tok = NULL;
    tl_result rc = tl_manager_token_handle(sc->mgr, &tok);
    if (rc != TL_OK) {
        step_failed(sc, "no token: %s: %s", tl_result_name(rc), last_error(sc->mgr));
        return NULL;
    }
    return tok;
}

/* call METHOD TARGET STATUS [BODY_FILE] */
static void step_call(scenario *sc, char *args) {
    char *words[5] = {NULL};
    int count = 0;
    for (char *word = args; word != NULL && count < 5; count++) {
        words[count] = word;
        word = strchr(word, ' ');
        if (word != NULL) *word++ = '\0';
    }
    if (count < 3 || count > 4) {
        step_failed(sc, "expected METHOD TARGET STATUS [BODY_FILE]");
        return;
    }
    const char *method = words[0], *target = words[1], *body_file = words[3];
    int expected = atoi(words[2]);
    char *body = NULL;
    if (body_file != NULL) {
        char path[512];
        snprintf(path, sizeof path, "%s/%s", SCENARIO_DIR, body_file);
        if ((body = read_text(path)) == NULL) {
            step_failed(sc, "cannot read %s", path);
            return;
        }
    }
    int xml = body_file != NULL && strlen(body_file) > 4 &&
              strcmp(body_file + strlen(body_file) - 4, ".xml") == 0;
    tl_token *tok = token_now(sc);
    if (tok == NULL) goto done;
    char url[1024];
    if (target[0] == '@') {
        const char *kept = tl_token_attribute(tok, target + 1);
        if (kept == NULL) {
            step_failed(sc, "the token has no attribute %s", target + 1);
            goto done;
        }
        snprintf(url, sizeof url, "%s", kept);
    } else {
        snprintf(url, sizeof url, "%s%s", sc->server.url, target);
    }
    target_url where;
    if (!split_url(url, &where)) {
        step_failed(sc, "%s is not an http URL on 127.0.0.1", url);
        goto done;
    }
    /* The application's call: on a rejection verdict a new token and ONE retry (the same URL,
     * the body rendered again); the status asserted is the final one. */
    if (!send_once(sc, tok, method, &where, body ? body : "", xml)) goto done;
    int before = g_failures;
    bool rejected = rejects(sc->mgr, tok, &g_answer);
    if (g_failures != before) {
        step_failed(sc, "tl_manager_judge_response failed: %s", last_error(sc->mgr));
        goto done;
    }
    if (rejected) {
        tl_token_free(tok);
        if ((tok = token_now(sc)) == NULL) goto done;
        if (!send_once(sc, tok, method, &where, body ? body : "", xml)) goto done;
        before = g_failures;
        (void)rejects(sc->mgr, tok, &g_answer); /* a sliding session records the use */
        if (g_failures != before) {
            step_failed(sc, "tl_manager_judge_response failed: %s", last_error(sc->mgr));
            goto done;
        }
    }
    if (g_answer.status != expected) {
        step_failed(sc, "status %d, expected %d%s: %.300s", g_answer.status, expected,
                    rejected ? " (after one retry)" : "", g_answer.body);
    }
done:
    tl_token_free(tok);
    free(body);
}

/* advance MINUTES: minute by minute, the server's clock, then the manager's, waiting for
 * the background work the minute started. 0 when time could not move (the scenario ends). */
static int step_advance(scenario *sc, const char *args) {
    char *end = NULL;
    long minutes = strtol(args, &end, 10);
    if (end == args || *end != '\0' || minutes < 0) {
        step_failed(sc, "expected a number of minutes");
        return 0;
    }
    for (long minute = 1; minute <= minutes; minute++) {
        if (!control(sc, "{\"advance_s\": 60}")) return 0;
        tl_result rc = tl_manual_clock_advance(sc->clock, MINUTE_MS, sc->mgr, 0);
        if (rc != TL_OK) {
            step_failed(sc, "minute %ld: tl_manual_clock_advance: %s: %s", minute,
                        tl_result_name(rc), last_error(sc->mgr));
            return 0;
        }
    }
    return 1;
}

/* server-stat NAME N */
static void step_server_stat(scenario *sc, const char *args) {
    char name[128];
    unsigned long long expected = 0;
    if (sscanf(args, "%127s %llu", name, &expected) != 2) {
        step_failed(sc, "expected NAME N");
        return;
    }
    char stats[16384];
    int status =
        http_to(sc->server.port, "GET", "/stats", NULL, NULL, NULL, stats, sizeof stats);
    if (status != 200) {
        step_failed(sc, "GET /stats answered %d", status);
        return;
    }
    unsigned long long value = json_count(stats, name);
    if (value != expected) step_failed(sc, "%s is %llu: %s", name, value, stats);
}

/* manager-counter NAME N */
static void step_manager_counter(scenario *sc, const char *args) {
    char name[128];
    unsigned long long expected = 0;
    if (sscanf(args, "%127s %llu", name, &expected) != 2) {
        step_failed(sc, "expected NAME N");
        return;
    }
    tl_status status;
    tl_result rc = tl_manager_status(sc->mgr, &status);
    if (rc != TL_OK) {
        step_failed(sc, "tl_manager_status: %s", tl_result_name(rc));
        return;
    }
    const tl_counters *c = &status.counters;
    const struct {
        const char *name;
        uint64_t value;
    } counters[] = {
        {"fetches", c->fetches},           {"refreshes", c->refreshes},
        {"failures", c->failures},         {"served_stale", c->served_stale},
        {"waits", c->waits},               {"invalidations", c->invalidations},
        {"store_loads", c->store_loads},   {"store_errors", c->store_errors},
        {"keep_alives", c->keep_alives},   {"events_dropped", c->events_dropped},
        {"store_timeouts", c->store_timeouts}, {"source_timeouts", c->source_timeouts},
    };
    for (size_t i = 0; i < sizeof counters / sizeof counters[0]; i++) {
        if (strcmp(counters[i].name, name) != 0) continue;
        if (counters[i].value != expected) {
            step_failed(sc, "%s is %llu (fetches %llu, refreshes %llu, failures %llu)", name,
                        (unsigned long long)counters[i].value, (unsigned long long)c->fetches,
                        (unsigned long long)c->refreshes, (unsigned long long)c->failures);
        }
        return;
    }
    step_failed(sc, "no counter %s", name);
}

/* info-contains TEXT */
static void step_info_contains(scenario *sc, const char *text) {
    static char info[65536];
    size_t written = 0;
    tl_result rc = tl_manager_session_info(sc->mgr, info, sizeof info, &written);
    if (rc != TL_OK) {
        step_failed(sc, "tl_manager_session_info: %s: %s", tl_result_name(rc),
                    last_error(sc->mgr));
        return;
    }
    if (strstr(info, text) == NULL) step_failed(sc, "the session info is: %.300s", info);
}

/* One step; 0 when the scenario cannot go on. */
static int run_step(scenario *sc, char *line) {
    char *rest = strchr(line, ' ');
    if (rest != NULL) {
        *rest++ = '\0';
    } else {
        rest = line + strlen(line);
    }
    const char *step = line;
    int needs_manager = strcmp(step, "config") != 0 && strcmp(step, "replace") != 0 &&
                        strcmp(step, "control") != 0 && strcmp(step, "server-stat") != 0;
    if (needs_manager && !ensure_manager(sc)) return 0;
    if (strcmp(step, "config") == 0) {
        free(sc->config);
        if ((sc->config = read_text(rest)) == NULL) {
            step_failed(sc, "cannot read %s (run from the repository root)", rest);
            return 0;
        }
    } else if (strcmp(step, "replace") == 0) {
        char *arrow = strstr(rest, " => ");
        if (arrow == NULL || arrow == rest) {
            step_failed(sc, "expected FROM => TO");
            return 0;
        }
        *arrow = '\0';
        if (sc->config == NULL || strstr(sc->config, rest) == NULL) {
            step_failed(sc, "not in the configuration");
            return 0;
        }
        char *next = replaced(sc->config, rest, arrow + 4);
        if (next == NULL) {
            step_failed(sc, "out of memory");
            return 0;
        }
        wipe_free(sc->config);
        sc->config = next;
    } else if (strcmp(step, "control") == 0) {
        control(sc, rest);
    } else if (strcmp(step, "call") == 0) {
        step_call(sc, rest);
    } else if (strcmp(step, "advance") == 0) {
        return step_advance(sc, rest);
    } else if (strcmp(step, "server-stat") == 0) {
        step_server_stat(sc, rest);
    } else if (strcmp(step, "manager-counter") == 0) {
        step_manager_counter(sc, rest);
    } else if (strcmp(step, "info-contains") == 0) {
        step_info_contains(sc, rest);
    } else if (strcmp(step, "revoke") == 0) {
        tl_result rc = tl_manager_revoke(sc->mgr);
        if (rc != TL_OK) {
            step_failed(sc, "tl_manager_revoke: %s: %s", tl_result_name(rc), last_error(sc->mgr));
        }
    } else {
        step_failed(sc, "unknown step %s", step);
        return 0;
    }
    return 1;
}

/* Runs tests/scenarios/FILE; prints "ok scenario FILE" or "FAIL scenario FILE". */
static void run_scenario(const char *file) {
    scenario sc;
    memset(&sc, 0, sizeof sc);
    sc.file = file;
    sc.step = "(start)";
    sc.server.pid = -1;
    sc.server.stdout_fd = -1;
    char path[512];
    snprintf(path, sizeof path, "%s/%s", SCENARIO_DIR, file);
    char *text = read_text(path);
    if (text == NULL) {
        step_failed(&sc, "cannot read %s", path);
    } else if (!start_server(&sc.server)) {
        step_failed(&sc, "the test token server did not start");
    } else if (tl_manual_clock_new(0, &sc.clock) != TL_OK) {
        step_failed(&sc, "tl_manual_clock_new failed");
    } else {
        int number = 0;
        char *next = text;
        while (next != NULL) {
            char *line = next;
            next = strchr(line, '\n');
            if (next != NULL) *next++ = '\0';
            number++;
            size_t len = strlen(line);
            if (len > 0 && line[len - 1] == '\r') line[--len] = '\0';
            if (strspn(line, " \t") == len || line[0] == '#') continue;
            char step[1024];
            snprintf(step, sizeof step, "%s", line);
            sc.line = number;
            sc.step = step;
            int go_on = run_step(&sc, line);
            sc.step = "(end)";
            if (!go_on) break;
        }
    }
    if (sc.mgr != NULL) {
        tl_result rc = tl_manager_free(sc.mgr);
        if (rc != TL_OK) step_failed(&sc, "tl_manager_free: %s", tl_result_name(rc));
    }
    tl_manual_clock_free(sc.clock);
    stop_server(&sc.server);
    wipe_free(sc.config);
    free(text);
    printf("%s scenario %s\n", sc.failed == 0 ? "ok" : "FAIL", file);
    fflush(stdout);
}

static int by_name(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Every .scenario file in tests/scenarios, sorted by name. */
static void test_every_shared_scenario(void) {
    DIR *dir = opendir(SCENARIO_DIR);
    if (dir == NULL) {
        printf("FAIL cannot open %s (run from the repository root)\n", SCENARIO_DIR);
        g_failures++;
        return;
    }
    char *files[256];
    size_t count = 0;
    struct dirent *entry;
    while ((entry = readdir(dir)) != NULL && count < sizeof files / sizeof files[0]) {
        size_t len = strlen(entry->d_name);
        if (len > 9 && strcmp(entry->d_name + len - 9, ".scenario") == 0) {
            files[count++] = strdup(entry->d_name);
        }
    }
    closedir(dir);
    qsort(files, count, sizeof files[0], by_name);
    printf("# %zu scenarios in %s\n", count, SCENARIO_DIR);
    CHECK(count >= MIN_SCENARIOS);
    for (size_t i = 0; i < count; i++) {
        if (files[i] != NULL) run_scenario(files[i]);
        free(files[i]);
    }
}

/* ---- the manual clock's contract ---- */

#define NO_SERVER_CONFIG                                                                     \
    "{\"source\": {\"type\": \"oauth2_client_credentials\", \"token_url\":"                  \
    " \"http://127.0.0.1:9/oauth/token\", \"client_id\": \"c\", \"client_secret\": \"s\"}}"

static void test_manual_clock_arguments(void) {
    tl_manual_clock *clock = (tl_manual_clock *)&clock;
    CHECK_RC(tl_manual_clock_new(-1, &clock), TL_INVALID_ARGUMENT);
    CHECK(clock == NULL);
    CHECK_RC(tl_manual_clock_new(0, NULL), TL_NULL_ARGUMENT);
    CHECK_RC(tl_manual_clock_advance(NULL, 1000, NULL, 0), TL_NULL_ARGUMENT);
    tl_manual_clock_free(NULL);

    tl_manager *mgr = (tl_manager *)&mgr;
    CHECK_RC(tl_manager_from_config_on_clock(NO_SERVER_CONFIG, NULL, &mgr), TL_NULL_ARGUMENT);
    CHECK(mgr == NULL);
    CHECK(strstr(last_error(NULL), "clock") != NULL);

    CHECK_RC(tl_manual_clock_new(1767225600000LL, &clock), TL_OK); /* 2026-01-01T00:00:00Z */
    if (clock == NULL) return;
    CHECK_RC(tl_manager_from_config_on_clock(NULL, clock, &mgr), TL_NULL_ARGUMENT);
    CHECK_RC(tl_manager_from_config_on_clock("{\"source\": {}}", clock, &mgr), TL_CONFIGURATION);
    CHECK(mgr == NULL);
    CHECK_RC(tl_manager_from_config_on_clock(NO_SERVER_CONFIG, clock, NULL), TL_NULL_ARGUMENT);
    CHECK_RC(tl_manager_from_config_on_clock(NO_SERVER_CONFIG, clock, &mgr), TL_OK);
    CHECK(mgr != NULL);
    /* Nothing fetched yet: an empty manager is settled at once. */
    CHECK_RC(tl_manual_clock_advance(clock, MINUTE_MS, mgr, 1000), TL_OK);
    CHECK_RC(tl_manual_clock_advance(clock, 0, NULL, 0), TL_OK);
    /* The manager keeps its own reference: the clock may go first. */
    tl_manual_clock_free(clock);
    tl_status status;
    CHECK_RC(tl_manager_status(mgr, &status), TL_OK);
    CHECK(status.state == TL_STATE_EMPTY);
    CHECK_RC(tl_manager_free(mgr), TL_OK);
}

static tl_manual_clock *g_clock;
static _Atomic unsigned g_advance_in_callback = 0xffffffffu;

static void advance_from_callback(void *userdata, const tl_event *event) {
    (void)userdata;
    (void)event;
    atomic_store(&g_advance_in_callback, (unsigned)tl_manual_clock_advance(g_clock, 1, NULL, 0));
}

static void test_settle_timeout_and_callbacks(void) {
    spawned server = {-1, -1, "", "", 0, -1, 0};
    tl_manager *mgr = NULL;
    g_clock = NULL;
    if (!start_server(&server)) {
        CHECK(!"the test token server did not start");
        return;
    }
    CHECK_RC(tl_manual_clock_new(0, &g_clock), TL_OK);
    char config[1024];
    snprintf(config, sizeof config,
             "{\"source\": {\"type\": \"oauth2_client_credentials\", \"token_url\":"
             " \"%s/oauth/token\", \"client_id\": \"demo-client\", \"client_secret\":"
             " \"demo-secret\"}}",
             server.url);
    /* A manager on the system clock: this clock never sees its timer, so settling on it
     * times out (and says so in the manager's last error). */
    CHECK_RC(tl_manager_from_config(config, &mgr), TL_OK);
    if (mgr == NULL || g_clock == NULL) goto done;
    CHECK_RC(tl_manager_set_event_callback(mgr, advance_from_callback, NULL), TL_OK);
    char token[2048];
    size_t written = 0;
    CHECK_RC(tl_manager_token(mgr, token, sizeof token, &written, NULL), TL_OK);
    memset(token, 0, sizeof token);
    CHECK_RC(tl_manual_clock_advance(g_clock, 0, mgr, 50), TL_TIMEOUT);
    CHECK(strstr(last_error(mgr), "did not finish within 50 ms") != NULL);
    /* From inside a tokenlease callback: TL_USAGE. */
    CHECK_RC(tl_manager_flush_events(mgr, 10000), TL_OK);
    CHECK(atomic_load(&g_advance_in_callback) == (unsigned)TL_USAGE);
done:
    if (mgr != NULL) CHECK_RC(tl_manager_free(mgr), TL_OK);
    tl_manual_clock_free(g_clock);
    g_clock = NULL;
    stop_server(&server);
}

int main(void) {
    signal(SIGPIPE, SIG_IGN);
    printf("# tokenlease %s: the shared scenarios from C\n", tl_version());
    fflush(stdout);
    RUN(test_manual_clock_arguments);
    if (server_bin() == NULL) {
        printf("FAIL TOKENLEASE_TEST_SERVER_BIN is not set (the test token server's binary)\n");
        g_failures++;
        return finish();
    }
    RUN(test_settle_timeout_and_callbacks);
    RUN(test_every_shared_scenario);
    return finish();
}
