import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import Tokenlease

/// The project's test token server, started by scripts/test-swift on the host (the chroot
/// shares its loopback) and named by TOKENLEASE_TEST_SERVER_URL.
enum TestServer {
    static var url: String {
        guard let url = ProcessInfo.processInfo.environment["TOKENLEASE_TEST_SERVER_URL"] else {
            fatalError("TOKENLEASE_TEST_SERVER_URL is not set (run scripts/test-swift)")
        }
        return url
    }

    static func config(secret: String = "demo-secret", key: String = "swift-test", policy: String = "{}") -> String {
        """
        {
          "key": "\(key)",
          "source": {
            "type": "oauth2_client_credentials",
            "token_url": "\(url)/oauth/token",
            "client_id": "demo-client",
            "client_secret": "\(secret)",
            "revocation_url": "\(url)/oauth/revoke"
          },
          "policy": \(policy)
        }
        """
    }

    /// A synchronous HTTP request (tests and the blocking Swift source use it).
    static func request(_ path: String, method: String = "GET", body: String? = nil,
                        contentType: String? = nil, authorization: String? = nil,
                        base: String? = nil) -> (Int, String) {
        var request = URLRequest(url: URL(string: (base ?? url) + path)!)
        request.httpMethod = method
        request.timeoutInterval = 10
        if let body { request.httpBody = body.data(using: .utf8) }
        if let contentType { request.setValue(contentType, forHTTPHeaderField: "Content-Type") }
        if let authorization { request.setValue(authorization, forHTTPHeaderField: "Authorization") }
        let done = DispatchSemaphore(value: 0)
        let result = Locked<(Int, String)>((0, ""))
        URLSession.shared.dataTask(with: request) { data, response, _ in
            let status = (response as? HTTPURLResponse)?.statusCode ?? 0
            result.set((status, data.flatMap { String(data: $0, encoding: .utf8) } ?? ""))
            done.signal()
        }.resume()
        done.wait()
        return result.get()
    }

    @discardableResult
    static func control(_ json: String) -> String {
        request("/control", method: "POST", body: json, contentType: "application/json").1
    }

    static func reset() {
        control(#"{"reset_stats":true,"clear_outage":true,"clear_rate_limit":true,"latency_ms":0}"#)
    }

    static func stat(_ name: String) -> Int {
        let body = request("/stats").1
        let object = try! JSONSerialization.jsonObject(with: body.data(using: .utf8)!) as! [String: Any]
        return (object[name] as! NSNumber).intValue
    }

    static func resource(_ token: TokenInfo) -> Int {
        request("/api/resource", authorization: "\(token.tokenType) \(token.value.expose())").0
    }
}

final class Locked<T>: @unchecked Sendable {
    private var value: T
    private let lock = NSLock()
    init(_ value: T) { self.value = value }
    func get() -> T { lock.lock(); defer { lock.unlock() }; return value }
    func set(_ newValue: T) { lock.lock(); value = newValue; lock.unlock() }
    func update(_ change: (inout T) -> Void) { lock.lock(); change(&value); lock.unlock() }
}

/// A Swift `TokenSource` (foreign-trait implementations must be `final class`): OAuth2
/// client credentials against the test server. It picks the error kind by throwing.
final class SwiftHttpSource: TokenSource, @unchecked Sendable {
    let secret: String
    let calls = Locked(0)
    init(secret: String = "demo-secret") { self.secret = secret }

    func fetch() throws -> FetchedToken {
        calls.update { $0 += 1 }
        return try tokenRequest("grant_type=client_credentials&client_id=demo-client&client_secret=\(secret)")
    }
}

/// A Swift `RefreshingTokenSource`: the password grant, refresh-token grants (the server
/// rotates refresh tokens and revokes the family on reuse) and RFC 7009 revocation.
final class SwiftPasswordSource: RefreshingTokenSource, @unchecked Sendable {
    static let client = "client_id=demo-client&client_secret=demo-secret"
    let scope: String
    let calls = Locked([String]())
    init(scope: String) { self.scope = scope }

    func fetch() throws -> FetchedToken {
        calls.update { $0.append("fetch") }
        return try tokenRequest("grant_type=password&username=alice&password=wonderland&scope=\(scope)&\(Self.client)")
    }

    func refresh(refreshToken: SecretString) throws -> FetchedToken {
        calls.update { $0.append("refresh") }
        return try tokenRequest("grant_type=refresh_token&refresh_token=\(refreshToken.expose())&\(Self.client)")
    }

    func revoke(token: TokenInfo) throws {
        calls.update { $0.append("revoke") }
        let (status, _) = TestServer.request("/oauth/revoke", method: "POST",
                                             body: "token=\(token.value.expose())&\(Self.client)",
                                             contentType: "application/x-www-form-urlencoded")
        guard status == 200 else {
            let error: TokenleaseError = .Protocol(reason: "revocation answered \(status)")
            throw error
        }
    }
}

/// POSTs a token request to the test server; the failure's kind follows the answer.
func tokenRequest(_ form: String) throws -> FetchedToken {
    let (status, body) = TestServer.request("/oauth/token", method: "POST", body: form,
                                            contentType: "application/x-www-form-urlencoded")
    switch status {
    case 200: break
    case 401: throw TokenleaseError.InvalidCredentials(reason: "token endpoint answered 401")
    case 500...: throw TokenleaseError.Transient(reason: "token endpoint answered \(status)")
    default:
        if body.contains("invalid_grant") { throw TokenleaseError.InvalidGrant(reason: "invalid_grant") }
        // `TokenleaseError.Protocol` would name the metatype; the implicit member works.
        let error: TokenleaseError = .Protocol(reason: "token endpoint answered \(status)")
        throw error
    }
    guard let object = try? JSONSerialization.jsonObject(with: body.data(using: .utf8)!) as? [String: Any],
          let value = object["access_token"] as? String else {
        let error: TokenleaseError = .Protocol(reason: "no access_token in the answer")
        throw error
    }
    let expiresIn = (object["expires_in"] as? NSNumber)?.uint64Value ?? 3600
    return FetchedToken(value: SecretString(value), expiresInMs: expiresIn * 1000,
                        tokenType: object["token_type"] as? String ?? "Bearer",
                        refreshToken: (object["refresh_token"] as? String).map(SecretString.init))
}

/// A source whose `fetch` waits until the test opens the gate.
final class GatedSource: TokenSource, @unchecked Sendable {
    let gate = DispatchSemaphore(value: 0)
    func fetch() throws -> FetchedToken {
        gate.wait()
        return FetchedToken(value: SecretString("gated"), expiresInMs: 60_000)
    }
}

/// A Swift `TokenStore` keeping the JSON records in a dictionary (a real app: the Keychain).
final class DictionaryStore: TokenStore, @unchecked Sendable {
    let records = Locked([String: String]())
    func load(key: String) throws -> String? { records.get()[key] }
    func save(key: String, recordJson: String) throws { records.update { $0[key] = recordJson } }
    func delete(key: String) throws { records.update { $0[key] = nil } }
}

/// Records events (which never carry token values).
final class RecordingListener: EventListener, @unchecked Sendable {
    let events = Locked([TokenEvent]())
    func onEvent(key: String, event: TokenEvent) { events.update { $0.append(event) } }
}

/// Synthetic tokens of a given lifetime; counts its calls.
final class CountingSource: TokenSource, @unchecked Sendable {
    let lifetimeMs: UInt64
    let calls = Locked(0)
    init(lifetimeMs: UInt64 = 60_000) { self.lifetimeMs = lifetimeMs }
    func fetch() throws -> FetchedToken {
        var n = 0
        calls.update { $0 += 1; n = $0 }
        return FetchedToken(value: SecretString("synthetic-\(n)"), expiresInMs: lifetimeMs)
    }
}

/// A source that fails the way its closure says.
final class FailingSource: TokenSource, @unchecked Sendable {
    struct AppBug: Error {}
    let error: Error
    init(_ error: Error) { self.error = error }
    func fetch() throws -> FetchedToken { throw error }
}
