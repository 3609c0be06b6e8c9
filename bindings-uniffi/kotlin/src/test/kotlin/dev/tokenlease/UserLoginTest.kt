package dev.tokenlease

import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.async
import kotlinx.coroutines.awaitAll
import kotlinx.coroutines.delay
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withTimeout
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertNotEquals
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.assertThrows

/** User logins against the real oidc-provider: the lifecycle a phone or desktop app lives. */
class UserLoginTest {
    private val redirectUri = "http://127.0.0.1:49152/callback"

    @Test
    fun `a browser login is refreshed with rotation until the user removes access, then a device login`() = runBlocking<Unit> {
        TokenManager.fromConfig(OidcProvider.userLoginConfig()).use { manager ->
            // Nobody logged in yet: a distinct, sealed error the app shows its login screen for.
            assertThrows<TokenleaseException.LoginRequired> { manager.token() }

            val request = manager.beginLogin(redirectUri)
            assertTrue(request.url().contains("code_challenge_method=S256"), "PKCE S256")
            assertTrue(!request.toString().contains(request.url()), "no state or verifier in toString")
            val first = manager.completeLogin(request, OidcProvider.browserAuthorize(request.url()))
            assertEquals(first, manager.token())
            assertTrue(first.idToken != null, "the OpenID Connect ID token is kept")
            assertTrue(!first.toString().contains(first.idToken!!.expose()), "and never printed")

            // Refreshed with the refresh-token grant; the server rotates the refresh token.
            val refreshes = OidcProvider.stat("grants", "refresh_token")
            assertTrue(manager.invalidate(first.generation))
            val second = manager.token()
            assertNotEquals(first.value.expose(), second.value.expose())
            assertEquals(refreshes + 1, OidcProvider.stat("grants", "refresh_token"))

            // The user removes the app's access: 32 concurrent callers all get LoginRequired,
            // from one refresh attempt, and nothing hangs.
            val refused = OidcProvider.stat("errors", "invalid_grant")
            OidcProvider.revokeAllGrants()
            assertTrue(manager.invalidate(second.generation))
            val outcomes = withTimeout(30_000) {
                (1..32).map { async(Dispatchers.IO) { runCatching { manager.token() } } }.awaitAll()
            }
            outcomes.forEach { assertTrue(it.exceptionOrNull() is TokenleaseException.LoginRequired, "$it") }
            assertEquals(refused + 1, OidcProvider.stat("errors", "invalid_grant"))

            // A new login, this time with the device flow (a TV, a CLI).
            val device = manager.startDeviceLogin()
            assertTrue(device.verificationUri().endsWith("/realms/tl/device"), device.verificationUri())
            assertTrue(device.userCode().isNotEmpty())
            OidcProvider.browserDevice(device.userCode(), approve = true)
            val relogin = withTimeout(60_000) { manager.completeDeviceLogin(device) }
            assertEquals(relogin, manager.token())

            manager.revoke()
            assertThrows<TokenleaseException.LoginRequired> { manager.token() }
        }
    }

    @Test
    fun `a denied device login and a cancelled one end with Cancelled`() = runBlocking<Unit> {
        TokenManager.fromConfig(OidcProvider.userLoginConfig()).use { manager ->
            val denied = manager.startDeviceLogin()
            OidcProvider.browserDevice(denied.userCode(), approve = false)
            assertThrows<TokenleaseException.Cancelled> { withTimeout(60_000) { manager.completeDeviceLogin(denied) } }

            val device = manager.startDeviceLogin()
            val waiting = async(Dispatchers.IO) { runCatching { manager.completeDeviceLogin(device) } }
            delay(200)
            device.cancel()
            val outcome = withTimeout(10_000) { waiting.await() }
            assertTrue(outcome.exceptionOrNull() is TokenleaseException.Cancelled, "$outcome")
        }
    }

    @Test
    fun `a seed never rolls back a newer stored login`() = runBlocking<Unit> {
        val store = MapStore()
        val kept: FetchedToken
        val issuedAt = System.currentTimeMillis()
        // The login result an app kept (from AppAuth, say): here from a login through a
        // manager, as the app would have received it.
        TokenManager.fromConfig(OidcProvider.userLoginConfig()).use { login ->
            val request = login.beginLogin(redirectUri)
            val token = login.completeLogin(request, OidcProvider.browserAuthorize(request.url()))
            kept = FetchedToken(value = token.value, expiresInMs = 60_000uL)
        }
        TokenManager.withSource(RejectingSource, store, "user").use { manager ->
            val seeded = manager.seed(kept, issuedAt)
            assertEquals(kept.value.expose(), seeded.value.expose())
        }
        // A later start with an older seed: the stored token stays.
        val older = FetchedToken(value = SecretString("an-older-login"), expiresInMs = 60_000uL)
        TokenManager.withSource(RejectingSource, store, "user").use { manager ->
            val served = manager.seed(older, issuedAt - 60_000)
            assertEquals(kept.value.expose(), served.value.expose())
        }
    }

    /** A source that never has a token by itself: only logins and seeds give one. */
    private object RejectingSource : TokenSource {
        override fun fetch(): FetchedToken = throw TokenleaseException.LoginRequired("log in first")
    }
}
