import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import XCTest
import Tokenlease

/// The npm oidc-provider (tests/oidc/server.js under /realms/tl), started by
/// scripts/test-swift on the host and named by TOKENLEASE_OIDC_ISSUER. Its `/__browser/...`
/// routes are the user's browser, shared with the other languages' tests.
enum OidcProvider {
    static var issuer: String {
        guard let issuer = ProcessInfo.processInfo.environment["TOKENLEASE_OIDC_ISSUER"], !issuer.isEmpty else {
            fatalError("TOKENLEASE_OIDC_ISSUER is not set (run scripts/test-swift)")
        }
        return issuer
    }

    static var origin: String {
        let url = URL(string: issuer)!
        return "\(url.scheme!)://\(url.host!):\(url.port!)"
    }

    static func userLoginConfig(store: String = #"{"type": "memory"}"#) -> String {
        """
        {
          "source": {
            "type": "oauth2",
            "issuer": "\(issuer)",
            "client_id": "tokenlease-app",
            "grant": {"type": "user_login"},
            "scopes": ["openid", "offline_access"],
            "authorization_params": {"prompt": "consent"}
          },
          "store": \(store)
        }
        """
    }

    static func browser(_ action: String, _ body: [String: Any]) -> [String: Any] {
        var request = URLRequest(url: URL(string: "\(origin)/__browser/\(action)")!)
        request.httpMethod = "POST"
        request.timeoutInterval = 30
        request.httpBody = try! JSONSerialization.data(withJSONObject: body)
        request.setValue("application/json", forHTTPHeaderField: "Content-Type")
        let done = DispatchSemaphore(value: 0)
        let result = Locked<(Int, Data)>((0, Data()))
        URLSession.shared.dataTask(with: request) { data, response, _ in
            result.set(((response as? HTTPURLResponse)?.statusCode ?? 0, data ?? Data()))
            done.signal()
        }.resume()
        done.wait()
        let (status, data) = result.get()
        let object = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] ?? [:]
        precondition(status == 200, "browser \(action): \(status) \(object)")
        return object
    }

    /// The browser follows `url`, alice logs in: the redirect back to the app.
    static func authorize(_ url: String) -> String { browser("authorize", ["url": url])["redirect"] as! String }

    /// Alice enters `userCode` at the verification page and approves (or denies).
    static func device(_ userCode: String, approve: Bool) { _ = browser("device", ["user_code": userCode, "approve": approve]) }

    /// Alice removes the app's access: every grant she gave ends.
    static func revokeAllGrants() { _ = browser("revoke-grants", [:]) }

    /// A counter from /__stats, e.g. `grants` / `refresh_token`; 0 when absent.
    static func stat(_ group: String, _ name: String) -> Int {
        let url = URL(string: "\(origin)/__stats")!
        let done = DispatchSemaphore(value: 0)
        let result = Locked<Data>(Data())
        URLSession.shared.dataTask(with: url) { data, _, _ in
            result.set(data ?? Data())
            done.signal()
        }.resume()
        done.wait()
        let object = try! JSONSerialization.jsonObject(with: result.get()) as! [String: Any]
        return ((object[group] as? [String: Any])?[name] as? NSNumber)?.intValue ?? 0
    }
}

final class UserLoginTests: XCTestCase {
    private let redirectUri = "http://127.0.0.1:49152/callback"

    private func assertLoginRequired(_ manager: TokenManager, file: StaticString = #filePath, line: UInt = #line) async {
        do {
            _ = try await manager.token()
            XCTFail("a token without a login", file: file, line: line)
        } catch TokenleaseError.LoginRequired {
        } catch {
            XCTFail("expected LoginRequired, got \(error)", file: file, line: line)
        }
    }

    func testABrowserLoginIsRefreshedUntilTheUserRemovesAccessThenADeviceLogin() async throws {
        let manager = try TokenManager.fromConfig(config: OidcProvider.userLoginConfig())
        await assertLoginRequired(manager)

        let request = try await manager.beginLogin(redirectUri: redirectUri)
        XCTAssertTrue(request.url().contains("code_challenge_method=S256"))
        let first = try await manager.completeLogin(request: request, redirectUrl: OidcProvider.authorize(request.url()))
        let served = try await manager.token()
        XCTAssertEqual(first, served)
        XCTAssertNotNil(first.idToken, "the OpenID Connect ID token is kept")
        XCTAssertFalse("\(first)".contains(first.idToken!.expose()), "and never printed")

        // Refreshed with the refresh-token grant; the server rotates the refresh token.
        let refreshes = OidcProvider.stat("grants", "refresh_token")
        XCTAssertTrue(manager.invalidate(generation: first.generation))
        let second = try await manager.token()
        XCTAssertNotEqual(first.value.expose(), second.value.expose())
        XCTAssertEqual(OidcProvider.stat("grants", "refresh_token"), refreshes + 1)

        // The user removes the app's access: every concurrent caller gets LoginRequired,
        // from one refresh attempt.
        let refused = OidcProvider.stat("errors", "invalid_grant")
        OidcProvider.revokeAllGrants()
        XCTAssertTrue(manager.invalidate(generation: second.generation))
        let loginRequired = await withTaskGroup(of: Bool.self) { group in
            for _ in 0..<32 {
                group.addTask {
                    do { _ = try await manager.token(); return false } catch TokenleaseError.LoginRequired { return true } catch { return false }
                }
            }
            var count = 0
            for await outcome in group where outcome { count += 1 }
            return count
        }
        XCTAssertEqual(loginRequired, 32)
        XCTAssertEqual(OidcProvider.stat("errors", "invalid_grant"), refused + 1)

        // A new login, this time with the device flow.
        let device = try await manager.startDeviceLogin()
        XCTAssertTrue(device.verificationUri().hasSuffix("/realms/tl/device"), device.verificationUri())
        OidcProvider.device(device.userCode(), approve: true)
        let relogin = try await manager.completeDeviceLogin(device: device)
        let afterRelogin = try await manager.token()
        XCTAssertEqual(relogin, afterRelogin)

        try await manager.revoke()
        await assertLoginRequired(manager)
    }

    func testADeniedDeviceLoginIsCancelledAndATaskCancelStopsTheWait() async throws {
        let manager = try TokenManager.fromConfig(config: OidcProvider.userLoginConfig())
        let denied = try await manager.startDeviceLogin()
        OidcProvider.device(denied.userCode(), approve: false)
        do {
            _ = try await manager.completeDeviceLogin(device: denied)
            XCTFail("a denied login succeeded")
        } catch TokenleaseError.Cancelled {}

        let device = try await manager.startDeviceLogin()
        let waiting = Task { try await manager.completeDeviceLogin(device: device) }
        try await Task.sleep(nanoseconds: 200_000_000)
        waiting.cancel()
        do {
            _ = try await waiting.value
            XCTFail("a cancelled wait succeeded")
        } catch is CancellationError {}
        XCTAssertTrue(device.isCancelled())
    }

    func testADPoPBoundLoginReachesTheUserinfoAPIWithAProofPerRequest() async throws {
        let config = OidcProvider.userLoginConfig().replacingOccurrences(of: "\"grant\":", with: "\"dpop\": true, \"grant\":")
        let manager = try TokenManager.fromConfig(config: config)
        let request = try await manager.beginLogin(redirectUri: redirectUri)
        let token = try await manager.completeLogin(request: request, redirectUrl: OidcProvider.authorize(request.url()))
        XCTAssertEqual(token.tokenType, "DPoP")
        let (body, response) = try await manager.data(for: URLRequest(url: URL(string: "\(OidcProvider.issuer)/me")!))
        XCTAssertEqual(response.statusCode, 200, String(decoding: body, as: UTF8.self))
        XCTAssertTrue(String(decoding: body, as: UTF8.self).contains("alice"))
    }

    func testASeedNeverRollsBackANewerStoredLogin() async throws {
        let store = DictionaryStore()
        let issuedAt = UInt64(Date().timeIntervalSince1970 * 1000)
        let login = try TokenManager.fromConfig(config: OidcProvider.userLoginConfig())
        let request = try await login.beginLogin(redirectUri: redirectUri)
        let token = try await login.completeLogin(request: request, redirectUrl: OidcProvider.authorize(request.url()))
        let kept = FetchedToken(value: token.value, expiresInMs: 60_000, tokenType: "Bearer", refreshToken: nil)

        let first = TokenManager.withSource(source: NoLoginSource(), store: store, key: "user")
        let seeded = try await first.seed(result: kept, issuedAtUnixMs: issuedAt)
        XCTAssertEqual(seeded.value.expose(), token.value.expose())
        first.shutdown()

        let older = FetchedToken(value: SecretString("an-older-login"), expiresInMs: 60_000, tokenType: "Bearer", refreshToken: nil)
        let restarted = TokenManager.withSource(source: NoLoginSource(), store: store, key: "user")
        let served = try await restarted.seed(result: older, issuedAtUnixMs: issuedAt - 60_000)
        XCTAssertEqual(served.value.expose(), token.value.expose())
    }
}

/// A source that has no token by itself: only logins and seeds give one.
final class NoLoginSource: TokenSource, @unchecked Sendable {
    func fetch() throws -> FetchedToken { throw TokenleaseError.LoginRequired(reason: "log in first") }
}
