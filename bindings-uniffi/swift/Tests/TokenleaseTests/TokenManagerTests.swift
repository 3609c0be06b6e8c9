import Foundation
import XCTest
import Tokenlease

final class TokenManagerTests: XCTestCase {
    override func setUp() {
        super.setUp()
        TestServer.reset()
    }

    func testFetchesOnceAndServesFromTheCache() async throws {
        let manager = try TokenManager.fromConfig(config: TestServer.config())
        XCTAssertNil(manager.cached())
        let first = try await manager.token()
        let second = try await manager.token()
        XCTAssertEqual(first, second)
        XCTAssertEqual(first, try manager.tokenBlocking())
        XCTAssertEqual(first.tokenType, "Bearer")
        XCTAssertEqual(first.generation, 1)
        XCTAssertEqual(TestServer.resource(first), 200)
        XCTAssertEqual(TestServer.stat("token_requests"), 1)
        let status = manager.status()
        XCTAssertEqual(status.state, .fresh)
        XCTAssertEqual(status.counters.fetches, 1)
        XCTAssertNil(status.lastErrorKind)
    }

    func testThousandTasksOnAColdCacheMakeOneTokenRequest() async throws {
        let manager = try TokenManager.fromConfig(config: TestServer.config())
        let values = try await withThrowingTaskGroup(of: String.self) { group in
            for _ in 0..<1000 { group.addTask { try await manager.token().value.expose() } }
            var values = Set<String>()
            for try await value in group { values.insert(value) }
            return values
        }
        XCTAssertEqual(values.count, 1)
        XCTAssertEqual(TestServer.stat("token_requests"), 1)
    }

    func testRetryOnExpiryInvalidatesExactlyTheRejectedGeneration() async throws {
        let manager = try TokenManager.fromConfig(config: TestServer.config())
        let old = try await manager.token()
        TestServer.control(#"{"revoke_all":true}"#)
        XCTAssertEqual(TestServer.resource(old), 401)
        XCTAssertTrue(manager.invalidate(generation: old.generation))
        let fresh = try await manager.token()
        XCTAssertEqual(fresh.generation, old.generation + 1)
        XCTAssertNotEqual(fresh.value, old.value)
        XCTAssertEqual(TestServer.resource(fresh), 200)
        XCTAssertFalse(manager.invalidate(generation: old.generation), "a late 401 keeps the newer token")
        XCTAssertEqual(TestServer.stat("token_requests"), 2)
    }

    func testRefreshesInTheBackground() async throws {
        let source = CountingSource(lifetimeMs: 2_000)
        let listener = RecordingListener()
        let manager = TokenManager.withSource(source: source)
        manager.addListener(listener: listener)
        let first = try await manager.token()
        let deadline = Date().addingTimeInterval(5)
        while source.calls.get() < 2 && Date() < deadline {
            try await Task.sleep(nanoseconds: 50_000_000)
        }
        XCTAssertGreaterThanOrEqual(source.calls.get(), 2, "background refresh happened")
        XCTAssertGreaterThan(manager.cached()?.generation ?? 0, first.generation)
        XCTAssertTrue(manager.flushEvents(), "events delivered")
        let events = listener.events.get()
        XCTAssertTrue(events.contains { if case .refreshStarted(reason: .scheduled) = $0 { return true }; return false })
        XCTAssertFalse(events.contains { "\($0)".contains("synthetic-") }, "events carry no token values")
    }

    func testASwiftSourceAndASwiftStore() async throws {
        let store = DictionaryStore()
        let source = SwiftHttpSource()
        let first = try await TokenManager.withSource(source: source, store: store, key: "swift-store").token()
        XCTAssertEqual(source.calls.get(), 1)
        XCTAssertNotNil(store.records.get()["swift-store"])

        // A restart adopts the stored token instead of fetching.
        let second = CountingSource()
        let manager = TokenManager.withSource(source: second, store: store, key: "swift-store")
        let adopted = try await manager.token()
        XCTAssertEqual(adopted.value, first.value)
        XCTAssertEqual(second.calls.get(), 0)
        XCTAssertEqual(manager.status().counters.storeLoads, 1)
        XCTAssertEqual(TestServer.resource(adopted), 200)
        try await manager.revoke()
        XCTAssertNil(store.records.get()["swift-store"], "revoke deletes the record")
        XCTAssertEqual(TestServer.stat("token_requests"), 1)
    }

    func testInvalidCredentialsFromABadSecret() async throws {
        let manager = try TokenManager.fromConfig(config: TestServer.config(secret: "wrong-secret"))
        do {
            _ = try await manager.token()
            XCTFail("expected invalid credentials")
        } catch TokenleaseError.InvalidCredentials(let reason) {
            XCTAssertFalse(reason.contains("wrong-secret"))
        }
        XCTAssertEqual(manager.status().lastErrorKind, .invalidCredentials)
        let fromSwift = TokenManager.withSource(source: SwiftHttpSource(secret: "wrong-secret"))
        XCTAssertThrowsError(try fromSwift.tokenBlocking()) { error in
            guard case TokenleaseError.InvalidCredentials = error else { return XCTFail("got \(error)") }
            XCTAssertEqual(errorKindCode(kind: errorKindOf(error: error as! TokenleaseError)), 1)
        }
    }

    func testInvalidGrantTransientAndTimeoutFromTheServer() async throws {
        TestServer.control(#"{"fail_next_token_requests":{"count":1,"error":"invalid_grant"}}"#)
        await assertThrowsKind(.invalidGrant) { try await TokenManager.fromConfig(config: TestServer.config()).token() }
        TestServer.control(#"{"fail_next_token_requests":{"count":1,"error":"temporarily_unavailable"}}"#)
        await assertThrowsKind(.transient) { try await TokenManager.fromConfig(config: TestServer.config()).token() }
        TestServer.control(#"{"latency_ms":2000}"#)
        let slow = try TokenManager.fromConfig(config: TestServer.config(policy: #"{"waiter_timeout_ms":200}"#))
        await assertThrowsKind(.timeout) { try await slow.token() }
    }

    func testConfigurationErrorsNameTheField() {
        XCTAssertThrowsError(try TokenManager.fromConfig(config: #"{"source":{"type":"oauth2_client_credentials"},"nope":1}"#)) { error in
            guard case TokenleaseError.Configuration(let reason) = error else { return XCTFail("got \(error)") }
            XCTAssertTrue(reason.hasPrefix("config"), reason)
        }
    }

    func testClosedAfterShutdown() async throws {
        let manager = try TokenManager.fromConfig(config: TestServer.config())
        _ = try await manager.token()
        manager.shutdown()
        XCTAssertTrue(manager.isClosed())
        await assertThrowsKind(.closed) { try await manager.token() }
    }

    func testKindsChosenByASwiftSource() async throws {
        let limited = TokenManager.withSource(source: FailingSource(TokenleaseError.RateLimited(reason: "slow down")))
        await assertThrowsKind(.rateLimited) { try await limited.token() }
        let buggy = TokenManager.withSource(source: FailingSource(FailingSource.AppBug()))
        await assertThrowsKind(.internal) { try await buggy.token() }
    }

    func testDeinitClosesTheManager() async throws {
        let source = CountingSource(lifetimeMs: 1_000)
        do {
            let manager = TokenManager.withSource(source: source)
            _ = try await manager.token()
        }
        // The manager is gone: its background timer no longer refreshes the 1 s token.
        try await Task.sleep(nanoseconds: 1_500_000_000)
        XCTAssertEqual(source.calls.get(), 1)
    }

    func testTheCachedReadFollowsEachNewGeneration() async throws {
        let source = CountingSource()
        let manager = TokenManager.withSource(source: source)
        let first = try await manager.token()
        XCTAssertEqual(first.value.expose(), "synthetic-1")
        for _ in 0..<10_000 {
            let again = try await manager.token()
            XCTAssertEqual(again.generation, 1)
        }
        XCTAssertEqual(try manager.tokenBlocking(), first)
        XCTAssertEqual(manager.cached(), first)
        XCTAssertEqual(source.calls.get(), 1)
        // A new generation is picked up at once, never the remembered old one.
        XCTAssertTrue(manager.invalidate(generation: 1))
        XCTAssertNil(manager.cached())
        let second = try await manager.token()
        XCTAssertEqual(second.value.expose(), "synthetic-2")
        XCTAssertEqual(try manager.tokenBlocking().value.expose(), "synthetic-2")
        try manager.revokeBlocking()
        XCTAssertNil(manager.cached())
        let third = try await manager.token()
        XCTAssertEqual(third.generation, 3)
        XCTAssertEqual(source.calls.get(), 3)
        manager.shutdown()
        XCTAssertNil(manager.cached(), "nothing remembered is served after shutdown")
    }

    func testPrintingTokensNeverShowsTheirValues() async throws {
        let manager = TokenManager.withSource(source: CountingSource())
        let token = try await manager.token()
        let fetched = FetchedToken(value: SecretString("fetched-secret"), expiresInMs: 1,
                                   refreshToken: SecretString("refresh-secret"))
        var dumped = ""
        dump(token, to: &dumped)
        dump(fetched, to: &dumped)
        for text in ["\(token)", String(reflecting: token), "\(fetched)", String(reflecting: fetched), dumped,
                     "\(manager.status())"] {
            XCTAssertFalse(text.contains("synthetic-") || text.contains("-secret"), text)
        }
        XCTAssertTrue("\(token)".contains("generation: 1"), "\(token)")
        XCTAssertEqual(token.value, SecretString("synthetic-1"))
        XCTAssertNotEqual(token.value, SecretString("synthetic-2"))
    }

    func testConcurrentReadersSeeOneTokenPerGeneration() async throws {
        let source = CountingSource()
        let manager = TokenManager.withSource(source: source)
        let generations = try await withThrowingTaskGroup(of: Set<UInt64>.self) { group in
            for task in 0..<8 {
                group.addTask {
                    var seen = Set<UInt64>()
                    for call in 0..<2_000 {
                        let token = try await manager.token()
                        XCTAssertEqual(token.value.expose(), "synthetic-\(token.generation)")
                        seen.insert(token.generation)
                        // One reader invalidates now and then: the others must follow.
                        if task == 0 && call % 500 == 499 { _ = manager.invalidate(generation: token.generation) }
                    }
                    return seen
                }
            }
            var all = Set<UInt64>()
            for try await seen in group { all.formUnion(seen) }
            return all
        }
        XCTAssertEqual(UInt64(source.calls.get()), generations.max())
        XCTAssertGreaterThanOrEqual(generations.count, 4)
    }

    func testASwiftSourceWithRefreshTokensAndRevocation() async throws {
        TestServer.control(#"{"scope_ttls_s":{"swift-short":2}}"#)
        let source = SwiftPasswordSource(scope: "swift-short")
        let manager = TokenManager.withSource(source: source)
        let first = try await manager.token()
        XCTAssertEqual(TestServer.resource(first), 200)
        // 2 s tokens: the manager refreshes in the background with the rotated refresh token.
        let deadline = Date().addingTimeInterval(8)
        // The source records a call when it starts: wait for the second refresh's token to be
        // published too, not only for the call.
        while Date() < deadline {
            let refreshes = source.calls.get().filter({ $0 == "refresh" }).count
            let generation = try await manager.token().generation
            if refreshes >= 2 && generation >= 3 { break }
            try await Task.sleep(nanoseconds: 50_000_000)
        }
        XCTAssertEqual(Array(source.calls.get().prefix(3)), ["fetch", "refresh", "refresh"])
        let current = try await manager.token()
        XCTAssertGreaterThanOrEqual(current.generation, 3)
        // Reusing a rotated refresh token would have revoked the family: the token works.
        XCTAssertEqual(TestServer.resource(current), 200)
        try await manager.revoke()
        XCTAssertEqual(source.calls.get().last, "revoke")
        XCTAssertEqual(TestServer.resource(current), 401)
        XCTAssertEqual(source.calls.get().filter { $0 == "fetch" }.count, 1)
    }

    func testCancellingATaskEndsItsWaitOnly() async throws {
        let source = GatedSource()
        let manager = TokenManager.withSource(source: source)
        let waiter = Task { try await manager.token() }
        try await Task.sleep(nanoseconds: 100_000_000)
        let cancelledAt = Date()
        waiter.cancel()
        do {
            _ = try await waiter.value
            XCTFail("expected CancellationError")
        } catch is CancellationError {
            XCTAssertLessThan(Date().timeIntervalSince(cancelledAt), 2, "the wait ended at once")
        }
        // The shared refresh went on: once the source answers, callers get its token.
        source.gate.signal()
        let token = try await manager.token()
        XCTAssertEqual(token.value.expose(), "gated")
        XCTAssertEqual(token.generation, 1)
    }

    private func assertThrowsKind(_ kind: ErrorKind, file: StaticString = #filePath, line: UInt = #line,
                                  _ body: () async throws -> TokenInfo) async {
        do {
            _ = try await body()
            XCTFail("expected \(kind)", file: file, line: line)
        } catch let error as TokenleaseError {
            XCTAssertEqual(errorKindOf(error: error), kind, "\(error)", file: file, line: line)
        } catch {
            XCTFail("unexpected \(error)", file: file, line: line)
        }
    }

    func testASlowSwiftListenerNeverDelaysAnotherManager() throws {
        final class SlowListener: EventListener, @unchecked Sendable {
            let sleeping = DispatchSemaphore(value: 0)
            func onEvent(key: String, event: TokenEvent) {
                if case .refreshStarted = event {
                    sleeping.signal()
                    Thread.sleep(forTimeInterval: 2)
                }
            }
        }
        let listener = SlowListener()
        let slow = TokenManager.withSource(source: CountingSource())
        slow.addListener(listener: listener)
        _ = try slow.tokenBlocking()
        XCTAssertEqual(listener.sleeping.wait(timeout: .now() + 5), .success, "the listener is asleep")
        // The other manager's token endpoint takes 3 s; its 100 ms waiter timeout must fire
        // on time although the first manager's listener sleeps.
        _ = TestServer.control(#"{"latency_ms": 3000}"#)
        defer { TestServer.reset() }
        let other = try TokenManager.fromConfig(config: TestServer.config(policy: #"{"waiter_timeout_ms": 100}"#))
        let started = Date()
        XCTAssertThrowsError(try other.tokenBlocking()) { error in
            guard case TokenleaseError.Timeout = error else { return XCTFail("got \(error)") }
        }
        let waited = Date().timeIntervalSince(started)
        XCTAssertLessThan(waited, 1.5, "waited \(waited) s behind another manager's listener")
    }

    func testExpiresInMsZeroMeansUnknownAndBadValuesAreProtocolErrors() throws {
        final class FixedSource: TokenSource, @unchecked Sendable {
            let value: String
            let expiresInMs: UInt64
            init(_ value: String, _ expiresInMs: UInt64) { self.value = value; self.expiresInMs = expiresInMs }
            func fetch() throws -> FetchedToken {
                FetchedToken(value: SecretString(value), expiresInMs: expiresInMs)
            }
        }
        let token = try TokenManager.withSource(source: FixedSource("no-lifetime-said", 0)).tokenBlocking()
        let lifetimeMs = Double(token.expiresAtUnixMs) - Date().timeIntervalSince1970 * 1000
        // The policy's default lifetime (1 h), as `expires_in_ms` 0 in C.
        XCTAssertTrue((3_500_000...3_600_000).contains(lifetimeMs), "lifetime \(lifetimeMs) ms")
        for (value, expiresInMs) in [("", UInt64(60_000)), ("a\u{0}b", 60_000), ("ok", UInt64.max)] {
            XCTAssertThrowsError(try TokenManager.withSource(source: FixedSource(value, expiresInMs)).tokenBlocking()) { error in
                guard case TokenleaseError.Protocol = error else { return XCTFail("got \(error)") }
            }
        }
    }
}

final class CachedTokenBenchmark: XCTestCase {
    /// Median ns per cached read, for `TokenManager` (the API apps use) and, side by side,
    /// the generated `NativeTokenManager` alone; runs only with TOKENLEASE_BENCH=1
    /// (scripts/test-swift --bench).
    func testBenchCachedToken() async throws {
        guard ProcessInfo.processInfo.environment["TOKENLEASE_BENCH"] == "1" else { return }
        var sink: UInt64 = 0
        func median(_ perBatch: Int, _ op: () async throws -> Void) async rethrows -> Double {
            var samples = [Double]()
            for _ in 0..<200 {
                let start = DispatchTime.now().uptimeNanoseconds
                for _ in 0..<perBatch { try await op() }
                samples.append(Double(DispatchTime.now().uptimeNanoseconds - start) / Double(perBatch))
            }
            samples.sort()
            return samples[100]
        }
        func report(_ what: String, _ ns: Double) {
            print("BENCH swift \(what): median \(Int(ns.rounded())) ns/call")
        }
        let manager = TokenManager.withSource(source: CountingSource(lifetimeMs: 3_600_000))
        _ = try await manager.token()
        for _ in 0..<200_000 { sink &+= try await manager.token().generation }
        report("TokenManager.token() async", try await median(10_000) { sink &+= try await manager.token().generation })
        report("TokenManager.tokenBlocking()", try await median(10_000) { sink &+= try manager.tokenBlocking().generation })
        report("TokenManager.cached()", await median(10_000) { sink &+= manager.cached()!.generation })

        let native = NativeTokenManager.withSource(source: CountingSource(lifetimeMs: 3_600_000))
        _ = try await native.token()
        for _ in 0..<50_000 { sink &+= try await native.token().generation }
        report("NativeTokenManager.token() async (generated only)", try await median(1_000) { sink &+= try await native.token().generation })
        report("NativeTokenManager.tokenBlocking() (generated only)", try await median(1_000) { sink &+= try native.tokenBlocking().generation })
        report("NativeTokenManager.isClosed() (UniFFI primitive call floor)", await median(1_000) { if native.isClosed() { sink &+= 1 } })
        XCTAssertNotEqual(sink, 42)
    }

}
