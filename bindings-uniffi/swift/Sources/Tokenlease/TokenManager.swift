import Foundation

/// Gets, caches and refreshes the token of one credential.
///
/// Thread-safe; share one per credential. Every lifecycle decision is made by the Rust core
/// (through the generated `NativeTokenManager`); this class only adds a cheap cached read.
/// Lifting a `TokenInfo` from Rust decodes its strings through Foundation on every call
/// (~2 µs on Linux), so a cached read asks Rust only for the generation of the token it
/// would serve and hands out the `TokenInfo` lifted the first time that generation was seen
/// (a generation's value, type and expiry never change). Releasing the last reference
/// closes the manager.
public final class TokenManager: @unchecked Sendable {
    let native: NativeTokenManager
    private let lock = NSLock()
    /// Guarded by `lock`.
    private var lastLifted: TokenInfo?

    private init(_ native: NativeTokenManager) { self.native = native }

    /// A manager described by the shared JSON or TOML configuration (the same text every
    /// binding accepts). Throws `TokenleaseError.Configuration` naming the field.
    public static func fromConfig(config: String) throws -> TokenManager {
        TokenManager(try NativeTokenManager.fromConfig(config: config))
    }

    /// As `fromConfig(config:)`, on a `ManualClock` instead of the system clock: for tests
    /// that live through hours of token lifetimes without sleeping (see
    /// `ManualClock.advance(ms:settle:timeoutMs:)`).
    public static func fromConfig(config: String, clock: ManualClock) throws -> TokenManager {
        TokenManager(try NativeTokenManager.fromConfigOnClock(config: config, clock: clock))
    }

    /// A manager around a Swift `source`, optionally persisting to `store` under `key`
    /// (default `"default"`). Source and store run on tokenlease's blocking pool.
    public static func withSource(source: TokenSource, store: TokenStore? = nil, key: String? = nil)
        -> TokenManager
    {
        TokenManager(NativeTokenManager.withSource(source: source, store: store, key: key))
    }

    /// A manager around a Swift `source` that also refreshes with refresh tokens and
    /// revokes on logout; otherwise as the `withSource` above.
    public static func withSource(source: RefreshingTokenSource, store: TokenStore? = nil, key: String? = nil)
        -> TokenManager
    {
        TokenManager(NativeTokenManager.withRefreshingSource(source: source, store: store, key: key))
    }

    /// A valid token: from the cache when fresh or stale (no suspension), otherwise after
    /// the one in-flight refresh, which runs on tokenlease's background runtime.
    /// Cancelling the task ends this caller's wait at once with `CancellationError`; the
    /// shared refresh goes on for the others.
    public func token() async throws -> TokenInfo {
        if let token = fromCache() { return token }
        try Task.checkCancellation()
        let signal = CancelSignal()
        do {
            return lifted(try await withTaskCancellationHandler {
                try await native.tokenCancellable(signal: signal)
            } onCancel: {
                signal.cancel()
            })
        } catch TokenleaseError.Cancelled where signal.isCancelled() {
            throw CancellationError()
        }
    }

    /// Blocking form of `token()`. Throws `TokenleaseError.Usage` inside a callback.
    public func tokenBlocking() throws -> TokenInfo {
        if let token = fromCache() { return token }
        return lifted(try native.tokenBlocking())
    }

    /// The cached token if it is fresh or stale, without waiting; nil otherwise.
    public func cached() -> TokenInfo? {
        if let token = fromCache() { return token }
        return native.cached().map(lifted)
    }

    /// Discards the cached token if it is still `generation` (a late rejection of an older
    /// token never discards a newer one). Returns whether it did.
    public func invalidate(generation: UInt64) -> Bool { native.invalidate(generation: generation) }

    /// Starts a user login with the authorization code grant and PKCE: open `url()` of the
    /// result in the browser (AppAuth, `ASWebAuthenticationSession`), then hand the URL it
    /// redirects back to to `completeLogin`. `redirectUri` must be registered for the
    /// client. Throws `TokenleaseError.Configuration` unless the source is an OAuth2 one.
    public func beginLogin(redirectUri: String) async throws -> LoginRequest {
        try await native.beginLogin(redirectUri: redirectUri)
    }

    /// Finishes a user login with the redirect URL: checks its state, redeems the code with
    /// the PKCE verifier, persists and serves the tokens (waiting callers get them). The
    /// user saying no is `TokenleaseError.Cancelled`; a forged redirect `.Protocol`.
    public func completeLogin(request: LoginRequest, redirectUrl: String) async throws -> TokenInfo {
        lifted(try await native.completeLogin(request: request, redirectUrl: redirectUrl))
    }

    /// Starts a device login (RFC 8628): show `userCode()` and `verificationUri()`.
    public func startDeviceLogin() async throws -> DeviceLogin {
        try await native.startDeviceLogin()
    }

    /// Waits until the user approved `device`, then persists and serves the tokens. Denied,
    /// or `device.cancel()`: `TokenleaseError.Cancelled`; the task cancelled:
    /// `CancellationError`; the code expired: `TokenleaseError.LoginRequired`.
    public func completeDeviceLogin(device: DeviceLogin) async throws -> TokenInfo {
        try Task.checkCancellation()
        do {
            return lifted(try await withTaskCancellationHandler {
                try await native.completeDeviceLogin(device: device)
            } onCancel: {
                device.cancel()
            })
        } catch TokenleaseError.Cancelled where Task.isCancelled {
            throw CancellationError()
        }
    }

    /// Hands over the result of a new interactive login done elsewhere (AppAuth's token
    /// response): persisted and served from now on.
    public func login(result: FetchedToken) async throws -> TokenInfo {
        lifted(try await native.login(login: result))
    }

    /// Hands over a login result kept from before (e.g. at every app start) without rolling
    /// back anything newer: a token in memory or the store obtained at or after
    /// `issuedAtUnixMs` (nil: any stored token) is served instead.
    public func seed(result: FetchedToken, issuedAtUnixMs: UInt64? = nil) async throws -> TokenInfo {
        lifted(try await native.seed(login: result, issuedAtUnixMs: issuedAtUnixMs))
    }

    /// Logs out: revokes at the source (for a user login: the access and the refresh token,
    /// RFC 7009), clears memory and store.
    public func revoke() async throws { try await native.revoke() }

    /// Blocking form of `revoke()`.
    public func revokeBlocking() throws { try native.revokeBlocking() }

    /// The header that carries `token` on an API request, as the configuration says (bearer
    /// `Authorization`, or a session's own header); nil when the token travels only in the
    /// body (`authorizeBody`). Its value contains the token.
    public func requestHeader(token: TokenInfo) throws -> RequestHeader? { try native.requestHeader(token: token) }

    /// For a configuration that carries the token in request bodies (a SOAP `SessionHeader`):
    /// `body` with the placeholder replaced by the XML-escaped token; nil otherwise.
    public func authorizeBody(token: TokenInfo, body: String) -> SecretString? {
        native.authorizeBody(token: token, body: body)
    }

    /// The DPoP proof (RFC 9449) for an API request with `token` when it is bound to this
    /// manager's key (token type `DPoP`): the `DPoP` header's value; nil for other tokens.
    public func dpopProof(token: TokenInfo, method: String, url: String) throws -> SecretString? {
        try native.dpopProof(token: token, method: method, url: url)
    }

    /// Core's answer for a response to a request made with `token` to `url`: keeps its
    /// `DPoP-Nonce` (any status) and says whether to send the request once more with a new
    /// proof (a DPoP-bound token's 401 that brought a new nonce). Ask before `judgeResponse`.
    public func dpopResend(token: TokenInfo, url: String, status: Int, headers: [ResponseHeader]) -> Bool {
        (0...0xFFFF).contains(status)
            && native.dpopResend(token: token, url: url, status: UInt16(status), headers: headers)
    }

    /// Keeps a response's `DPoP-Nonce`; true when it is new (to resend, ask `dpopResend`).
    public func rememberDpopNonce(url: String, headers: [ResponseHeader]) -> Bool {
        native.rememberDpopNonce(url: url, headers: headers)
    }

    /// Whether a response with `status` needs a body prefix (at most 64 KiB) for `judgeResponse`.
    public func needsResponseBody(status: Int) -> Bool {
        (0...0xFFFF).contains(status) && native.needsResponseBody(status: UInt16(status))
    }

    /// Judges the response to a request made with the token of `generation`: true when it
    /// rejects the token per the configuration's rules (the token is discarded: get one again
    /// and retry once). `data(for:session:)` does this for you.
    public func judgeResponse(generation: UInt64, status: Int, headers: [ResponseHeader], bodyPrefix: Data) -> Bool {
        (0...0xFFFF).contains(status)
            && native.judgeResponse(generation: generation, status: UInt16(status), headers: headers, bodyPrefix: bodyPrefix)
    }

    /// Asks the server about the current session (vSphere's `GET /api/session`: whose it is,
    /// whether it is alive): the response body.
    public func sessionInfo() async throws -> String { try await native.sessionInfo() }

    /// A snapshot of state, deadlines, last error and counters.
    public func status() -> ManagerStatus { native.status() }

    /// The store key.
    public func key() -> String { native.key() }

    /// Adds an event listener.
    public func addListener(listener: EventListener) { native.addListener(listener: listener) }

    /// Waits (at most `timeoutMs`) until queued events reached their listeners, which run on
    /// tokenlease's event thread after the call that caused them; true when they did.
    @discardableResult
    public func flushEvents(timeoutMs: UInt64 = 10_000) -> Bool { native.flushEvents(timeoutMs: timeoutMs) }

    /// Closes the manager now; later calls throw `TokenleaseError.Closed`.
    public func shutdown() {
        native.shutdown()
        lock.lock()
        lastLifted = nil
        lock.unlock()
    }

    /// Whether the manager is closed.
    public func isClosed() -> Bool { native.isClosed() }

    private func fromCache() -> TokenInfo? {
        let generation = native.cachedGeneration()
        guard generation != 0 else { return nil }
        lock.lock()
        defer { lock.unlock() }
        guard let last = lastLifted, last.generation == generation else { return nil }
        return last
    }

    private func lifted(_ token: TokenInfo) -> TokenInfo {
        lock.lock()
        // Two callers can lift different generations at once; keep the newer one.
        if token.generation >= lastLifted?.generation ?? 0 { lastLifted = token }
        lock.unlock()
        return token
    }
}

extension ManualClock {
    /// Moves the clock forward by `ms` milliseconds, then blocks (at most `timeoutMs` of real
    /// time) until `settle`'s background work the move started (a refresh, a keep-alive) has
    /// finished; throws `TokenleaseError.Timeout` otherwise. With a test server that has a
    /// clock of its own, move the server first.
    public func advance(ms: UInt64, settle: TokenManager, timeoutMs: UInt64 = 20_000) throws {
        try advanceAndSettle(ms: ms, manager: settle.native, timeoutMs: timeoutMs)
    }
}
