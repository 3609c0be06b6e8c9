// C++17 use of the tokenlease C API through a small RAII wrapper: handles are owned by
// std::unique_ptr with the library's _free functions, errors become exceptions that keep
// their tl_result kind.
#include <tokenlease.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace tokenlease {

class Error : public std::runtime_error {
public:
    Error(tl_result code, const std::string& detail)
        : std::runtime_error(std::string(tl_result_name(code)) + ": " + detail), code_(code) {}
    tl_result code() const noexcept { return code_; }

private:
    tl_result code_;
};

struct ManagerDeleter {
    void operator()(tl_manager* mgr) const noexcept { tl_manager_free(mgr); }
};
struct TokenDeleter {
    void operator()(tl_token* tok) const noexcept { tl_token_free(tok); }
};

// Copies text out of a tl_*(..., buf, len, &written) function, growing the buffer as told.
template <typename F>
std::string copy_text(F&& call) {
    std::string out(64, '\0');
    size_t written = 0;
    tl_result rc = call(out.data(), out.size(), &written);
    if (rc == TL_BUFFER_TOO_SMALL) {
        out.assign(written, '\0');
        rc = call(out.data(), out.size(), &written);
    }
    if (rc != TL_OK) throw Error(rc, "cannot copy text");
    out.resize(written);
    return out;
}

class Token {
public:
    explicit Token(tl_token* tok) : tok_(tok) {}
    std::string value() const {
        const char* ptr = nullptr;
        size_t len = 0;
        tl_token_value(tok_.get(), &ptr, &len);
        return std::string(ptr, len);
    }
    uint64_t generation() const { return tl_token_generation(tok_.get()); }

private:
    std::unique_ptr<tl_token, TokenDeleter> tok_;
};

class Manager {
public:
    static Manager from_config(const std::string& config) {
        tl_manager* mgr = nullptr;
        tl_result rc = tl_manager_from_config(config.c_str(), &mgr);
        if (rc != TL_OK) throw Error(rc, last_error(nullptr));
        return Manager(mgr);
    }
    static Manager custom(const tl_source_callbacks& source, const char* key) {
        tl_manager* mgr = nullptr;
        tl_result rc = tl_manager_new_custom(&source, nullptr, key, nullptr, &mgr);
        if (rc != TL_OK) throw Error(rc, last_error(nullptr));
        return Manager(mgr);
    }

    Token token() const {
        tl_token* tok = nullptr;
        tl_result rc = tl_manager_token_handle(mgr_.get(), &tok);
        if (rc != TL_OK) throw Error(rc, last_error(mgr_.get()));
        return Token(tok);
    }
    std::string token_value() const {
        char buf[512];
        size_t written = 0;
        tl_result rc = tl_manager_token(mgr_.get(), buf, sizeof buf, &written, nullptr);
        if (rc != TL_OK) throw Error(rc, last_error(mgr_.get()));
        std::string value(buf, written);
        std::memset(buf, 0, sizeof buf);
        return value;
    }
    tl_status status() const {
        tl_status status{};
        tl_manager_status(mgr_.get(), &status);
        return status;
    }

private:
    explicit Manager(tl_manager* mgr) : mgr_(mgr) {}
    static std::string last_error(const tl_manager* mgr) {
        return copy_text([mgr](char* buf, size_t len, size_t* written) {
            return tl_manager_last_error(mgr, buf, len, written);
        });
    }
    std::unique_ptr<tl_manager, ManagerDeleter> mgr_;
};

}  // namespace tokenlease

static int failures = 0;
#define EXPECT(cond)                                                              \
    do {                                                                          \
        if (!(cond)) {                                                            \
            ++failures;                                                           \
            std::fprintf(stderr, "%s:%d: expected %s\n", __FILE__, __LINE__, #cond); \
        }                                                                         \
    } while (0)

static std::atomic<int> fetches{0};

int main() {
    // A C++ source: a captureless lambda converts to the C function pointer.
    tl_source_callbacks source{};
    source.fetch = [](void*, tl_fetch_output* out) -> uint32_t {
        std::string value = "cpp-token-" + std::to_string(++fetches);
        tl_fetch_output_set_token(out, value.data(), value.size(), 60000);
        return TL_OK;
    };
    {
        auto mgr = tokenlease::Manager::custom(source, "cpp");
        std::vector<std::thread> threads;
        std::atomic<int> ok{0};
        for (int i = 0; i < 8; ++i) {
            threads.emplace_back([&] { ok += mgr.token_value() == "cpp-token-1"; });
        }
        for (auto& t : threads) t.join();
        EXPECT(ok == 8);
        EXPECT(fetches == 1);
        auto token = mgr.token();
        EXPECT(token.value() == "cpp-token-1");
        EXPECT(token.generation() == 1);
        EXPECT(mgr.status().state == TL_STATE_FRESH);
    }  // freed here

    try {
        tokenlease::Manager::from_config("{\"source\": {\"type\": \"nope\"}}");
        EXPECT(false);
    } catch (const tokenlease::Error& err) {
        EXPECT(err.code() == TL_CONFIGURATION);
        EXPECT(std::strstr(err.what(), "unknown variant") != nullptr);
    }

    if (const char* url = std::getenv("TOKENLEASE_TEST_SERVER_URL")) {
        std::string config = std::string("{\"key\": \"cpp-server\", \"source\": {\"type\": "
                                          "\"oauth2_client_credentials\", \"token_url\": \"") +
                             url + "/oauth/token\", \"client_id\": \"demo-client\", "
                                   "\"client_secret\": \"demo-secret\"}}";
        auto mgr = tokenlease::Manager::from_config(config);
        std::string first = mgr.token_value();
        EXPECT(!first.empty());
        EXPECT(mgr.token_value() == first);
        EXPECT(mgr.status().counters.fetches == 1);
    }

    std::printf("%s cpp_raii_wrapper (tokenlease %s)\n", failures ? "FAIL" : "ok", tl_version());
    return failures ? 1 : 0;
}
