package dev.tokenlease

import kotlinx.coroutines.CancellationException
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.async
import kotlinx.coroutines.awaitAll
import kotlinx.coroutines.delay
import kotlinx.coroutines.launch
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withTimeout
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertFalse
import org.junit.jupiter.api.Assertions.assertNotEquals
import org.junit.jupiter.api.Assertions.assertNotNull
import org.junit.jupiter.api.Assertions.assertNull
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.BeforeEach
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.assertThrows
import java.util.concurrent.CountDownLatch
import java.util.concurrent.TimeUnit

class TokenManagerTest {
    @BeforeEach
    fun reset() = TestServer.reset()

    @Test
    fun `fetches once and serves from the cache`() = runBlocking<Unit> {
        TokenManager.fromConfig(TestServer.config()).use { manager ->
            assertNull(manager.cached())
            val first = manager.token()
            val second = manager.token()
            val blocking = manager.tokenBlocking()
            assertEquals(first, second)
            assertEquals(first, blocking)
            assertEquals("Bearer", first.tokenType)
            assertEquals(1uL, first.generation)
            assertTrue(first.expiresAtUnixMs.toLong() > System.currentTimeMillis() + 3_000_000)
            assertEquals(200, TestServer.resource(first))
            assertEquals(1L, TestServer.stat("token_requests"))
            val status = manager.status()
            assertEquals(TokenState.FRESH, status.state)
            assertEquals(1uL, status.generation)
            assertEquals(1uL, status.counters.fetches)
            assertNull(status.lastErrorKind)
            assertEquals("kotlin-test", manager.key())
        }
    }

    @Test
    fun `1000 coroutines on a cold cache make one token request`() = runBlocking<Unit> {
        TokenManager.fromConfig(TestServer.config()).use { manager ->
            val tokens = (1..1000).map { async(Dispatchers.Default) { manager.token() } }.awaitAll()
            assertEquals(1, tokens.map { it.value }.toSet().size)
            assertEquals(1L, TestServer.stat("token_requests"))
            assertEquals(1uL, manager.status().counters.fetches)
        }
    }

    @Test
    fun `retry on expiry invalidates exactly the rejected generation`() = runBlocking<Unit> {
        TokenManager.fromConfig(TestServer.config()).use { manager ->
            val old = manager.token()
            assertEquals(200, TestServer.resource(old))
            TestServer.control("""{"revoke_all":true}""")
            assertEquals(401, TestServer.resource(old))
            // The app saw a 401 with this token: invalidate exactly it, get the new one, retry once.
            assertTrue(manager.invalidate(old.generation))
            val fresh = manager.token()
            assertEquals(old.generation + 1uL, fresh.generation)
            assertNotEquals(old.value, fresh.value)
            assertEquals(200, TestServer.resource(fresh))
            // A late 401 for the old token never discards the newer one.
            assertFalse(manager.invalidate(old.generation))
            assertEquals(fresh, manager.token())
            assertEquals(2L, TestServer.stat("token_requests"))
        }
    }

    @Test
    fun `refreshes in the background before expiry`() = runBlocking<Unit> {
        val source = CountingSource(lifetimeMs = 2_000)
        val listener = RecordingListener()
        TokenManager.withSource(source).use { manager ->
            manager.addListener(listener)
            val first = manager.token()
            assertEquals(1, source.calls.get())
            // Advisory window of a 2 s token: 1 s. No caller asks; the timer refreshes.
            val deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(5)
            while (source.calls.get() < 2 && System.nanoTime() < deadline) delay(50)
            assertTrue(source.calls.get() >= 2, "background refresh happened")
            val next = manager.cached()
            assertNotNull(next)
            assertTrue(next!!.generation > first.generation)
            assertTrue(manager.flushEvents(), "events delivered")
            assertTrue(listener.events.any { it is TokenEvent.RefreshStarted && it.reason == RefreshReason.SCHEDULED })
            assertTrue(listener.events.any { it is TokenEvent.RefreshSucceeded })
            assertTrue(listener.events.none { it.toString().contains("synthetic-") }, "events carry no token values")
        }
    }

    @Test
    fun `a Kotlin source and a Kotlin store`() = runBlocking<Unit> {
        val store = MapStore()
        val source = KotlinHttpSource()
        val first = TokenManager.withSource(source, store, "kotlin-store").use { manager ->
            manager.token()
        }
        assertEquals(1, source.calls)
        assertEquals(1L, TestServer.stat("token_requests"))
        val record = store.records["kotlin-store"]
        assertNotNull(record)
        assertTrue(record!!.contains("\"version\":1"), record)

        // A restart: a new manager adopts the stored token instead of fetching.
        val second = CountingSource()
        val listener = RecordingListener()
        TokenManager.withSource(second, store, "kotlin-store").use { manager ->
            manager.addListener(listener)
            val adopted = manager.token()
            assertEquals(first.value, adopted.value)
            assertEquals(0, second.calls.get())
            assertEquals(1uL, manager.status().counters.storeLoads)
            assertEquals(200, TestServer.resource(adopted))
            manager.revoke()
            assertNull(store.records["kotlin-store"], "revoke deletes the record")
            assertTrue(manager.flushEvents(), "events delivered")
            assertTrue(listener.events.any { it is TokenEvent.Revoked })
        }
        assertEquals(1L, TestServer.stat("token_requests"))
    }

    @Test
    fun `a Kotlin source with refresh tokens and revocation`() = runBlocking<Unit> {
        TestServer.control("""{"scope_ttls_s":{"kotlin-short":2}}""")
        val source = KotlinPasswordSource(scope = "kotlin-short")
        TokenManager.withSource(source).use { manager ->
            val first = manager.token()
            assertEquals(200, TestServer.resource(first))
            // 2 s tokens: the manager refreshes in the background with the rotated refresh token.
            val deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(8)
            // The source records a call when it starts: wait for the second refresh's token to
            // be published too, not only for the call.
            while ((source.calls.count { it == "refresh" } < 2 || manager.token().generation < 3uL) &&
                System.nanoTime() < deadline
            ) {
                delay(50)
            }
            assertEquals(listOf("fetch", "refresh", "refresh"), source.calls.take(3))
            val current = manager.token()
            assertTrue(current.generation >= 3uL, "generation ${current.generation}")
            // Reusing a rotated refresh token would have revoked the family: the token works.
            assertEquals(200, TestServer.resource(current))
            manager.revoke()
            assertEquals("revoke", source.calls.last())
            assertEquals(401, TestServer.resource(current))
            assertEquals(1, source.calls.count { it == "fetch" })
        }
    }

    @Test
    fun `revoke logs out and the next token is new`() = runBlocking<Unit> {
        TokenManager.fromConfig(TestServer.config()).use { manager ->
            val old = manager.token()
            manager.revoke()
            assertEquals(1L, TestServer.stat("revocations"))
            assertEquals(401, TestServer.resource(old))
            val fresh = manager.token()
            assertNotEquals(old.value, fresh.value)
            assertEquals(200, TestServer.resource(fresh))
        }
    }

    @Test
    fun `invalid credentials from a bad secret`() = runBlocking<Unit> {
        TokenManager.fromConfig(TestServer.config(secret = "wrong-secret")).use { manager ->
            val err = assertThrows<TokenleaseException.InvalidCredentials> { manager.token() }
            assertFalse(err.reason.contains("wrong-secret"), err.reason)
            assertEquals(ErrorKind.INVALID_CREDENTIALS, manager.status().lastErrorKind)
            assertEquals(1u, errorKindCode(errorKindOf(err)))
        }
        // The same failure from a Kotlin source that throws the binding's error.
        TokenManager.withSource(KotlinHttpSource("wrong-secret")).use { manager ->
            assertThrows<TokenleaseException.InvalidCredentials> { manager.tokenBlocking() }
        }
    }

    @Test
    fun `invalid grant and transient errors from the server`() = runBlocking<Unit> {
        TestServer.control("""{"fail_next_token_requests":{"count":1,"error":"invalid_grant"}}""")
        TokenManager.fromConfig(TestServer.config()).use { manager ->
            assertThrows<TokenleaseException.InvalidGrant> { manager.token() }
        }
        TestServer.control("""{"fail_next_token_requests":{"count":1,"error":"temporarily_unavailable"}}""")
        TokenManager.fromConfig(TestServer.config()).use { manager ->
            assertThrows<TokenleaseException.Transient> { manager.token() }
        }
    }

    @Test
    fun `timeout while the token endpoint is slow`() = runBlocking<Unit> {
        TestServer.control("""{"latency_ms":2000}""")
        TokenManager.fromConfig(TestServer.config(policy = """{"waiter_timeout_ms":200}""")).use { manager ->
            val err = assertThrows<TokenleaseException.Timeout> { manager.token() }
            assertTrue(err.reason.contains("waited"), err.reason)
        }
    }

    @Test
    fun `configuration errors name the field`() {
        val err = assertThrows<TokenleaseException.Configuration> {
            TokenManager.fromConfig("""{"source":{"type":"oauth2_client_credentials"},"nope":1}""")
        }
        assertTrue(err.reason.startsWith("config"), err.reason)
        assertTrue(err.message!!.contains("reason="), err.message)
    }

    @Test
    fun `closed after shutdown`() = runBlocking<Unit> {
        val manager = TokenManager.fromConfig(TestServer.config())
        manager.use {
            it.token()
            it.shutdown()
            assertTrue(it.isClosed())
            assertThrows<TokenleaseException.Closed> { it.token() }
            assertThrows<TokenleaseException.Closed> { it.tokenBlocking() }
        }
    }

    @Test
    fun `kinds chosen by a Kotlin source`() {
        val rateLimited = object : TokenSource {
            override fun fetch(): FetchedToken = throw TokenleaseException.RateLimited("slow down")
        }
        TokenManager.withSource(rateLimited).use { manager ->
            val err = assertThrows<TokenleaseException.RateLimited> { manager.tokenBlocking() }
            assertEquals("slow down", err.reason)
        }
        val buggy = object : TokenSource {
            override fun fetch(): FetchedToken = throw IllegalStateException("bug in the app")
        }
        TokenManager.withSource(buggy).use { manager ->
            assertThrows<TokenleaseException.Internal> { manager.tokenBlocking() }
        }
    }

    @Test
    fun `a blocking call inside a callback is a usage error`() {
        var inner: Throwable? = null
        lateinit var manager: TokenManager
        val source = object : TokenSource {
            override fun fetch(): FetchedToken {
                inner = runCatching { manager.tokenBlocking() }.exceptionOrNull()
                return FetchedToken(value = SecretString("outer"), expiresInMs = 60_000uL)
            }
        }
        manager = TokenManager.withSource(source)
        manager.use {
            assertEquals("outer", it.tokenBlocking().value.expose())
            assertTrue(inner is TokenleaseException.Usage, "got $inner")
        }
    }

    @Test
    fun `cancelling a suspended token call`() = runBlocking<Unit> {
        val release = CountDownLatch(1)
        val source = CountingSource { release.await(10, TimeUnit.SECONDS) }
        TokenManager.withSource(source).use { manager ->
            var outcome: Throwable? = null
            val job = launch(Dispatchers.Default) {
                try {
                    manager.token()
                } catch (e: Throwable) {
                    outcome = e
                    throw e
                }
            }
            delay(200)
            val started = System.nanoTime()
            job.cancel()
            withTimeout(2_000) { job.join() }
            assertTrue(System.nanoTime() - started < TimeUnit.SECONDS.toNanos(1), "cancelled promptly")
            assertTrue(job.isCancelled)
            assertTrue(outcome is CancellationException, "got $outcome")
            // The manager is still fine: the source finishes and the next call gets a token.
            release.countDown()
            assertEquals("synthetic-1", manager.token().value.expose())
        }
    }

    @Test
    fun `use closes the manager`() = runBlocking<Unit> {
        val source = CountingSource(lifetimeMs = 1_000)
        val manager = TokenManager.withSource(source)
        manager.use { it.token() }
        assertThrows<IllegalStateException> { manager.tokenBlocking() }
        // Closed: the background timer no longer refreshes the 1 s token.
        delay(1_500)
        assertEquals(1, source.calls.get())
    }

    @Test
    fun `the cached read follows each new generation and hands out copies`() = runBlocking<Unit> {
        val source = CountingSource()
        TokenManager.withSource(source).use { manager ->
            val first = manager.token()
            // Records are mutable in generated Kotlin; a caller's change must not leak into
            // what the next caller is handed.
            first.value = SecretString("changed by the caller")
            val again = manager.tokenBlocking()
            assertEquals("synthetic-1", again.value.expose())
            assertEquals(again, manager.cached())
            repeat(10_000) { assertEquals(1uL, manager.token().generation) }
            assertEquals(1, source.calls.get())
            // A new generation is picked up at once, never the remembered old one.
            assertTrue(manager.invalidate(1uL))
            assertNull(manager.cached())
            assertEquals("synthetic-2", manager.token().value.expose())
            assertEquals("synthetic-2", manager.tokenBlocking().value.expose())
            assertEquals(2uL, manager.cached()!!.generation)
            manager.revokeBlocking()
            assertNull(manager.cached())
            assertEquals(3uL, manager.token().generation)
            assertEquals(3, source.calls.get())
        }
    }

    @Test
    fun `printing tokens never shows their values`() = runBlocking<Unit> {
        TokenManager.withSource(CountingSource()).use { manager ->
            val token = manager.token()
            val fetched = FetchedToken(value = SecretString("fetched-secret"), expiresInMs = 1uL, refreshToken = SecretString("refresh-secret"))
            for (text in listOf(token.toString(), fetched.toString(), manager.toString(), manager.status().toString())) {
                assertFalse(text.contains("synthetic-") || text.contains("-secret"), text)
            }
            assertTrue(token.toString().contains("generation=1"), token.toString())
            assertEquals(SecretString("synthetic-1"), token.value)
            assertNotEquals(SecretString("synthetic-2"), token.value)
        }
    }

    @Test
    fun `closing while other threads read never crashes`() {
        repeat(20) {
            val manager = TokenManager.withSource(CountingSource())
            manager.tokenBlocking()
            val started = CountDownLatch(4)
            val unexpected = java.util.concurrent.ConcurrentLinkedQueue<Throwable>()
            val readers = (1..4).map {
                Thread {
                    started.countDown()
                    try {
                        while (true) manager.tokenBlocking()
                    } catch (closed: IllegalStateException) {
                        // The object was freed: the documented outcome after close().
                    } catch (other: Throwable) {
                        unexpected.add(other)
                    }
                }.apply { start() }
            }
            started.await()
            Thread.sleep(5)
            manager.close()
            readers.forEach { it.join(10_000) }
            assertTrue(readers.none { it.isAlive }, "every reader stopped")
            assertTrue(unexpected.isEmpty(), unexpected.toString())
        }
    }

    @Test
    fun `an unreachable manager is freed by the cleaner`() {
        fun abandon(): java.lang.ref.WeakReference<CountingSource> {
            val source = CountingSource()
            TokenManager.withSource(source).tokenBlocking()
            return java.lang.ref.WeakReference(source)
        }
        val source = abandon()
        // The native manager holds the Kotlin source until it is dropped, which needs both
        // the generated object and the fast-path handle released.
        val deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(20)
        while (source.get() != null && System.nanoTime() < deadline) {
            System.gc()
            Thread.sleep(50)
        }
        assertNull(source.get(), "the source was released")
    }

    @Test
    fun `a slow Kotlin listener never delays another manager`() = runBlocking<Unit> {
        val sleeping = CountDownLatch(1)
        val slowListener = object : EventListener {
            override fun onEvent(key: String, event: TokenEvent) {
                if (event is TokenEvent.RefreshStarted) {
                    sleeping.countDown()
                    Thread.sleep(2_000)
                }
            }
        }
        // A token endpoint that accepts connections and never answers.
        java.net.ServerSocket(0, 50, java.net.InetAddress.getLoopbackAddress()).use { silent ->
            TokenManager.withSource(CountingSource()).use { slow ->
                slow.addListener(slowListener)
                slow.token()
                assertTrue(sleeping.await(5, TimeUnit.SECONDS), "the listener is asleep")
                val config = """{"source": {"type": "oauth2_client_credentials",
                    "token_url": "http://127.0.0.1:${silent.localPort}/token",
                    "client_id": "c", "client_secret": "s"},
                    "policy": {"waiter_timeout_ms": 100}}"""
                TokenManager.fromConfig(config).use { other ->
                    val started = System.nanoTime()
                    assertThrows<TokenleaseException.Timeout> { other.tokenBlocking() }
                    val waitedMs = (System.nanoTime() - started) / 1_000_000
                    assertTrue(waitedMs < 1_500, "waited $waitedMs ms behind another manager's listener")
                }
            }
        }
    }

    @Test
    fun `expiresInMs 0 means unknown and bad values are protocol errors`() = runBlocking<Unit> {
        fun sourceOf(value: String, expiresInMs: ULong) = object : TokenSource {
            override fun fetch() = FetchedToken(value = SecretString(value), expiresInMs = expiresInMs)
        }
        TokenManager.withSource(sourceOf("no-lifetime-said", 0uL)).use { manager ->
            val token = manager.token()
            val lifetimeMs = token.expiresAtUnixMs.toLong() - System.currentTimeMillis()
            // The policy's default lifetime (1 h), as `expires_in_ms` 0 in C.
            assertTrue(lifetimeMs in 3_500_000..3_600_000, "lifetime $lifetimeMs ms")
        }
        for ((value, expiresInMs) in listOf("" to 60_000uL, "a\u0000b" to 60_000uL, "ok" to ULong.MAX_VALUE)) {
            TokenManager.withSource(sourceOf(value, expiresInMs)).use { manager ->
                assertThrows<TokenleaseException.Protocol> { manager.tokenBlocking() }
            }
        }
    }
}
