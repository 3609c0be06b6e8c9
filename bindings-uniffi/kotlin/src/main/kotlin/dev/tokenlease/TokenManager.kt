package dev.tokenlease

import com.sun.jna.Native
import com.sun.jna.NativeLibrary
import java.util.concurrent.atomic.AtomicBoolean
import java.util.concurrent.atomic.AtomicLong

/**
 * Gets, caches and refreshes the token of one credential.
 *
 * Thread-safe; share one per credential. Every lifecycle decision is made by the Rust core
 * (through the generated [NativeTokenManager]); this class only adds a cheap cached read:
 * a generic UniFFI call from Kotlin costs ~10 µs (JNA allocates and registers a call-status
 * structure per call), so a fresh token is checked with one direct-mapped native call that
 * returns its generation, and the [TokenInfo] lifted the first time that generation was
 * seen is handed out again (a generation's value, type and expiry never change).
 *
 * Close it with [close] or `use {}`; an unreachable manager is closed by the cleaner.
 */
class TokenManager private constructor(internal val native: NativeTokenManager) : AutoCloseable {
    private val fastHandle = FastHandle(native.fastHandle().toLong())
    private val cleanable = UniffiLib.CLEANER.register(this, fastHandle)

    /** The [TokenInfo] last lifted from the native side; never mutated once published. */
    @Volatile
    private var lastLifted: TokenInfo? = null

    companion object {
        /**
         * A manager described by the shared JSON or TOML configuration (the same text every
         * binding accepts). Throws [TokenleaseException.Configuration] naming the field.
         */
        @JvmStatic
        @Throws(TokenleaseException::class)
        fun fromConfig(config: String): TokenManager = TokenManager(NativeTokenManager.fromConfig(config))

        /**
         * As [fromConfig], on a [ManualClock] instead of the system clock: for tests that
         * live through hours of token lifetimes without sleeping (see [advance]).
         */
        @JvmStatic
        @Throws(TokenleaseException::class)
        fun fromConfig(config: String, clock: ManualClock): TokenManager =
            TokenManager(NativeTokenManager.fromConfigOnClock(config, clock))

        /**
         * A manager around a Kotlin [source], optionally persisting to [store] under [key]
         * (default `"default"`). Source and store run on tokenlease's blocking pool.
         */
        @JvmStatic
        @JvmOverloads
        fun withSource(source: TokenSource, store: TokenStore? = null, key: String? = null): TokenManager =
            TokenManager(NativeTokenManager.withSource(source, store, key))

        /**
         * A manager around a Kotlin [source] that also refreshes with refresh tokens and
         * revokes on logout; otherwise as the `withSource` above.
         */
        @JvmStatic
        @JvmOverloads
        fun withSource(source: RefreshingTokenSource, store: TokenStore? = null, key: String? = null): TokenManager =
            TokenManager(NativeTokenManager.withRefreshingSource(source, store, key))
    }

    /**
     * A valid token: from the cache when fresh or stale (no thread hop, no suspension),
     * otherwise after the one in-flight refresh, which runs on tokenlease's background
     * runtime. Cancelling the coroutine stops this caller's wait only.
     */
    @Throws(TokenleaseException::class)
    suspend fun token(): TokenInfo = fromCache() ?: lifted(native.token())

    /** Blocking form of [token]. Throws [TokenleaseException.Usage] inside a callback. */
    @Throws(TokenleaseException::class)
    fun tokenBlocking(): TokenInfo = fromCache() ?: lifted(native.tokenBlocking())

    /** The cached token if it is fresh or stale, without waiting; null otherwise. */
    fun cached(): TokenInfo? = fromCache() ?: native.cached()?.let(::lifted)

    /**
     * Discards the cached token if it is still [generation] (a late rejection of an older
     * token never discards a newer one). Returns whether it did.
     */
    fun invalidate(generation: ULong): Boolean = native.invalidate(generation)

    /**
     * Starts a user login with the authorization code grant and PKCE: open
     * [LoginRequest.url] in the browser (AppAuth, a Custom Tab), then hand the URL it is
     * redirected back to to [completeLogin]. [redirectUri] must be registered for the client.
     * Throws [TokenleaseException.Configuration] unless the source is an OAuth2 one.
     */
    @Throws(TokenleaseException::class)
    suspend fun beginLogin(redirectUri: String): LoginRequest = native.beginLogin(redirectUri)

    /**
     * Finishes a user login with the redirect URL: checks its state, redeems the code with
     * the PKCE verifier, persists and serves the tokens (waiting callers get them). The user
     * saying no is [TokenleaseException.Cancelled]; a forged redirect
     * [TokenleaseException.Protocol].
     */
    @Throws(TokenleaseException::class)
    suspend fun completeLogin(request: LoginRequest, redirectUrl: String): TokenInfo =
        lifted(native.completeLogin(request, redirectUrl))

    /** Starts a device login (RFC 8628): show [DeviceLogin.userCode] and its verification URI. */
    @Throws(TokenleaseException::class)
    suspend fun startDeviceLogin(): DeviceLogin = native.startDeviceLogin()

    /**
     * Waits until the user approved [device], then persists and serves the tokens. Denied,
     * or this coroutine cancelled: [TokenleaseException.Cancelled] /
     * `CancellationException`; the code expired: [TokenleaseException.LoginRequired].
     */
    @Throws(TokenleaseException::class)
    suspend fun completeDeviceLogin(device: DeviceLogin): TokenInfo {
        try {
            return lifted(native.completeDeviceLogin(device))
        } catch (cancelled: kotlinx.coroutines.CancellationException) {
            device.cancel()
            throw cancelled
        }
    }

    /**
     * Hands over the result of a new interactive login done elsewhere (AppAuth's token
     * response): persisted and served from now on.
     */
    @Throws(TokenleaseException::class)
    suspend fun login(result: FetchedToken): TokenInfo = lifted(native.login(result))

    /**
     * Hands over a login result kept from before (e.g. at every app start) without rolling
     * back anything newer: a token in memory or the store obtained at or after
     * [issuedAtUnixMs] (null: any stored token) is served instead.
     */
    @Throws(TokenleaseException::class)
    suspend fun seed(result: FetchedToken, issuedAtUnixMs: Long? = null): TokenInfo =
        lifted(native.seed(result, issuedAtUnixMs?.toULong()))

    /**
     * Logs out: revokes at the source (for a user login: the access and the refresh token,
     * RFC 7009), clears memory and store.
     */
    @Throws(TokenleaseException::class)
    suspend fun revoke() = native.revoke()

    /** Blocking form of [revoke]. */
    @Throws(TokenleaseException::class)
    fun revokeBlocking() = native.revokeBlocking()

    /**
     * The header that carries [token] on an API request, as the configuration says (bearer
     * `Authorization`, or a session's own header); null when the token travels only in the
     * body ([authorizeBody]). Its value contains the token.
     */
    @Throws(TokenleaseException::class)
    fun requestHeader(token: TokenInfo): RequestHeader? = native.requestHeader(token)

    /**
     * For a configuration that carries the token in request bodies (a SOAP `SessionHeader`):
     * [body] with the placeholder replaced by the XML-escaped token; null otherwise.
     */
    fun authorizeBody(token: TokenInfo, body: String): SecretString? = native.authorizeBody(token, body)

    /**
     * The DPoP proof (RFC 9449) for an API request with [token] when it is bound to this
     * manager's key (token type `DPoP`): the `DPoP` header's value; null for other tokens.
     */
    @Throws(TokenleaseException::class)
    fun dpopProof(token: TokenInfo, method: String, url: String): SecretString? = native.dpopProof(token, method, url)

    /**
     * Core's answer for a response to a request made with [token] to [url]: keeps its
     * `DPoP-Nonce` (any status) and says whether to send the request once more with a new
     * proof (a DPoP-bound token's 401 that brought a new nonce). Ask before [judgeResponse].
     */
    fun dpopResend(token: TokenInfo, url: String, status: Int, headers: List<ResponseHeader>): Boolean =
        status in 0..0xFFFF && native.dpopResend(token, url, status.toUShort(), headers)

    /** Keeps a response's `DPoP-Nonce`; true when it is new (to resend, ask [dpopResend]). */
    fun rememberDpopNonce(url: String, headers: List<ResponseHeader>): Boolean = native.rememberDpopNonce(url, headers)

    /** Whether a response with [status] needs a body prefix (≤ 64 KiB) for [judgeResponse]. */
    fun needsResponseBody(status: Int): Boolean = status in 0..0xFFFF && native.needsResponseBody(status.toUShort())

    /**
     * Judges the response to a request made with the token of [generation]: true when it
     * rejects the token per the configuration's rules (the token is discarded: get one again
     * and retry the request once). [TokenleaseInterceptor] and [TokenleaseHttp] do this for you.
     */
    fun judgeResponse(generation: ULong, status: Int, headers: List<ResponseHeader>, bodyPrefix: ByteArray): Boolean =
        status in 0..0xFFFF && native.judgeResponse(generation, status.toUShort(), headers, bodyPrefix)

    /**
     * Asks the server about the current session (vSphere's `GET /api/session`: whose it is,
     * whether it is alive): the response body.
     */
    @Throws(TokenleaseException::class)
    suspend fun sessionInfo(): String = native.sessionInfo()

    /** A snapshot of state, deadlines, last error and counters. */
    fun status(): ManagerStatus = native.status()

    /** The store key. */
    fun key(): String = native.key()

    /** Adds an event listener. */
    fun addListener(listener: EventListener) = native.addListener(listener)

    /**
     * Waits (at most [timeoutMs]) until queued events reached their listeners, which run on
     * tokenlease's event thread after the call that caused them; true when they did.
     */
    fun flushEvents(timeoutMs: Long = 10_000): Boolean = native.flushEvents(timeoutMs.toULong())

    /**
     * Closes the manager now but keeps this object usable: later calls throw
     * [TokenleaseException.Closed]. [close] also frees the native object.
     */
    fun shutdown() {
        native.shutdown()
        lastLifted = null
    }

    /** Whether the manager is closed. */
    fun isClosed(): Boolean = native.isClosed()

    /** Closes the manager and frees the native object; later calls throw [IllegalStateException]. */
    override fun close() {
        lastLifted = null
        cleanable.clean()
        native.close()
    }

    private fun fromCache(): TokenInfo? {
        val generation = fastHandle.cachedGeneration()
        if (generation == 0L) return null
        val last = lastLifted ?: return null
        // A copy, because generated records have `var` fields and the caller may change them.
        return if (last.generation.toLong() == generation) last.copy() else null
    }

    private fun lifted(token: TokenInfo): TokenInfo {
        // Two callers can lift different generations at once; keep the newer one.
        val last = lastLifted
        if (last == null || token.generation >= last.generation) lastLifted = token.copy()
        return token
    }
}

/**
 * A strong native reference to the manager for the direct-mapped calls. Its owner's
 * reference is dropped once, by [TokenManager.close] or by the cleaner; calls in flight
 * hold their own, so the native object is released only after the last one returns.
 * (The cleaner cannot run while a call is in flight only if `this` stays reachable, which
 * a JIT does not promise; the counter makes it not matter.)
 */
private class FastHandle(private val handle: Long) : Runnable {
    private val references = AtomicLong(1)
    private val ownerReleased = AtomicBoolean(false)

    /** The generation `cached()` would return, or 0 (also once released). */
    fun cachedGeneration(): Long {
        while (true) {
            val count = references.get()
            if (count == 0L) return 0L
            if (references.compareAndSet(count, count + 1)) break
        }
        try {
            return FastCalls.tokenlease_uniffi_fast_generation(handle)
        } finally {
            unreference()
        }
    }

    /** Drops the owner's reference (close or cleaner), at most once. */
    override fun run() {
        if (ownerReleased.compareAndSet(false, true)) unreference()
    }

    private fun unreference() {
        if (references.decrementAndGet() == 0L) FastCalls.tokenlease_uniffi_fast_release(handle)
    }
}

/** The two plain C functions of the fast path, bound with JNA direct mapping. */
@Suppress("FunctionName")
private object FastCalls {
    init {
        // The same library (and override property) the generated bindings load.
        val name = System.getProperty("uniffi.component.tokenlease_uniffi.libraryOverride") ?: "tokenlease_uniffi"
        Native.register(FastCalls::class.java, NativeLibrary.getInstance(name))
    }

    @JvmStatic
    external fun tokenlease_uniffi_fast_generation(handle: Long): Long

    @JvmStatic
    external fun tokenlease_uniffi_fast_release(handle: Long)
}

/**
 * Moves the clock forward by [ms] milliseconds, then blocks (at most [timeoutMs] of real
 * time) until [settle]'s background work the move started (a refresh, a keep-alive) has
 * finished; throws [TokenleaseException.Timeout] otherwise. With a test server that has a
 * clock of its own, move the server first.
 */
@Throws(TokenleaseException::class)
fun ManualClock.advance(ms: Long, settle: TokenManager, timeoutMs: Long = 20_000) {
    require(ms >= 0 && timeoutMs > 0) { "ms must not be negative and timeoutMs must be positive" }
    advanceAndSettle(ms.toULong(), settle.native, timeoutMs.toULong())
}
