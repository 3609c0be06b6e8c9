package dev.tokenlease

import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.BeforeEach
import org.junit.jupiter.api.Test
import java.net.URI
import java.net.http.HttpClient
import java.net.http.HttpRequest

/**
 * A vSphere-style session API (the test server's `/session/...`: the session id travels in
 * `vmware-api-session-id`, an ended session answers 401 `INVALID_SESSION`) through OkHttp and
 * java.net.http: the header and the verdict come from core, per the shared config.
 */
class SessionHttpTest {
    @BeforeEach
    fun reset() = TestServer.reset()

    private fun sessionConfig(): String = """
        {"source": {"type": "session_login",
          "credentials": {"username": "alice", "password": "wonderland"},
          "session": {
            "login": {"url": "${TestServer.url}/session/login",
                      "json": {"username": "{{username}}", "password": "{{password}}"}},
            "token": {"json_pointer": "/session/id"},
            "lifetime_s": 900,
            "send": {"header": "vmware-api-session-id"},
            "logout": {"url": "${TestServer.url}/session/logout", "authenticated": true},
            "expired": {"statuses": [401], "body_contains": ["INVALID_SESSION"]}}}}
    """.trimIndent()

    @Test
    fun `the session header comes from core and an ended session is retried once with a new login`() {
        TokenManager.fromConfig(sessionConfig()).use { manager ->
            val token = manager.tokenBlocking()
            val header = manager.requestHeader(token)!!
            assertEquals("vmware-api-session-id", header.name)
            assertEquals(token.value.expose(), header.value.expose())

            val okhttp = okhttp3.OkHttpClient.Builder().addInterceptor(TokenleaseInterceptor(manager)).build()
            val resource = "${TestServer.url}/session/resource"
            okhttp.newCall(okhttp3.Request.Builder().url(resource).build()).execute().use { assertEquals(200, it.code) }
            assertEquals(1L, TestServer.stat("session_logins"))

            // The server ends every session: one 401 INVALID_SESSION, a new login, one retry.
            TestServer.control("""{"revoke_all": true}""")
            okhttp.newCall(okhttp3.Request.Builder().url(resource).build()).execute().use { assertEquals(200, it.code) }
            assertEquals(2L, TestServer.stat("session_logins"))

            // The same through java.net.http.
            TestServer.control("""{"revoke_all": true}""")
            val response = TokenleaseHttp.send(manager, HttpClient.newHttpClient(), HttpRequest.newBuilder(URI.create(resource)))
            assertEquals(200, response.statusCode())
            assertEquals(3L, TestServer.stat("session_logins"))

            // A 401 that is not the configured expiry is the application's business: no retry.
            val notExpired = manager.judgeResponse(manager.tokenBlocking().generation, 401, emptyList(), "NO_PERMISSION".toByteArray())
            assertEquals(false, notExpired)

            manager.revokeBlocking()
            assertEquals(1L, TestServer.stat("session_logouts"))
        }
    }

    /** examples/profiles/vsphere.json, pointed at the test server, credentials inline. */
    private fun vsphereProfile(): String {
        val workspace = System.getProperty("tokenlease.workspace") ?: error("tokenlease.workspace is not set")
        val profile = java.io.File(workspace, "examples/profiles/vsphere.json").readText()
        return profile.replace("https://vcenter.example", TestServer.url)
            .replace("{\"env\": \"VSPHERE_USER\"}", "\"alice\"")
            .replace("{\"env\": \"VSPHERE_PASSWORD\"}", "\"wonderland\"")
    }

    @Test
    fun `the vSphere profile logs in with basic auth, says whose session it is, retries once and logs out`() = kotlinx.coroutines.runBlocking<Unit> {
        TokenManager.fromConfig(vsphereProfile()).use { manager ->
            val okhttp = okhttp3.OkHttpClient.Builder().addInterceptor(TokenleaseInterceptor(manager)).build()
            val vms = "${TestServer.url}/api/vcenter/vm"
            okhttp.newCall(okhttp3.Request.Builder().url(vms).build()).execute().use {
                assertEquals(200, it.code)
                assertEquals(true, it.body.string().contains("vm-42"))
            }
            assertEquals(true, manager.sessionInfo().contains("alice"))
            TestServer.control("""{"revoke_all": true}""")
            okhttp.newCall(okhttp3.Request.Builder().url(vms).build()).execute().use { assertEquals(200, it.code) }
            assertEquals(2L, TestServer.stat("session_logins"))
            manager.revoke()
            assertEquals(1L, TestServer.stat("session_logouts"))
        }
    }
}
