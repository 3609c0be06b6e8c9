package dev.tokenlease

import java.io.BufferedReader
import java.io.InputStreamReader
import java.net.URI
import java.net.http.HttpClient
import java.net.http.HttpRequest
import java.net.http.HttpResponse
import java.time.Duration

/**
 * The npm oidc-provider the project pins (tests/oidc/server.js, mounted under /realms/tl),
 * started once per JVM with node and stopped when the JVM exits (its stdin closes). Its
 * `/__browser/...` routes are the user's browser, shared with the other languages' tests.
 */
object OidcProvider {
    const val APP_CLIENT = "tokenlease-app"
    val issuer: String by lazy { start() }
    private val origin: String by lazy { URI.create(issuer).let { "${it.scheme}://${it.authority}" } }
    private val http: HttpClient = HttpClient.newBuilder().connectTimeout(Duration.ofSeconds(5)).build()

    /** Where the server wrote the private keys of its assertion clients (`<client_id>.pem`). */
    val clientKeys: java.io.File by lazy {
        java.nio.file.Files.createTempDirectory("tokenlease-client-keys").toFile().also { it.deleteOnExit() }
    }

    /** Starts the server; one that stalls at start-up (seen rarely on a loaded machine) is started again once. */
    private fun start(): String = startOnce() ?: startOnce() ?: error("tests/oidc/server.js did not start twice (run scripts/setup-oidc)")

    private fun startOnce(): String? {
        val script = System.getProperty("tokenlease.oidcServer")
            ?: error("system property tokenlease.oidcServer (tests/oidc/server.js) is not set")
        val proc = ProcessBuilder(
            "node", script, "--lifetime", "300", "--exit-with-stdin", "--mount", "/realms/tl",
            "--client-keys-out", clientKeys.absolutePath,
        )
            .redirectError(ProcessBuilder.Redirect.INHERIT)
            .start()
        Runtime.getRuntime().addShutdownHook(Thread { proc.destroy() })
        val issuer = java.util.concurrent.CompletableFuture<String?>()
        Thread {
            val reader = BufferedReader(InputStreamReader(proc.inputStream))
            while (true) {
                val line = reader.readLine() ?: break
                if (line.startsWith("OIDC_PROVIDER_URL=")) {
                    issuer.complete(line.removePrefix("OIDC_PROVIDER_URL=").trim())
                }
            }
            issuer.complete(null)
        }.apply { isDaemon = true }.start()
        val started = runCatching { issuer.get(60, java.util.concurrent.TimeUnit.SECONDS) }.getOrNull()
        if (started == null) {
            System.err.println("tests/oidc/server.js did not start within 60 s; starting it again")
            proc.destroy()
        }
        return started
    }

    /** A user login for the public app client, kept in [store] (JSON). */
    fun userLoginConfig(store: String = """{"type": "memory"}""", clientId: String = APP_CLIENT): String = """
        {
          "source": {
            "type": "oauth2",
            "issuer": "$issuer",
            "client_id": "$clientId",
            "grant": {"type": "user_login"},
            "scopes": ["openid", "offline_access"],
            "authorization_params": {"prompt": "consent"}
          },
          "store": $store
        }
    """.trimIndent()

    /** The browser follows [url], alice logs in; the redirect back to the app. */
    fun browserAuthorize(url: String): String {
        val answer = browser("authorize", """{"url": ${quoted(url)}}""")
        return Regex("\"redirect\"\\s*:\\s*\"([^\"]+)\"").find(answer)?.groupValues?.get(1)
            ?: error("the browser did not come back: $answer")
    }

    /** Alice enters [userCode] at the verification page and approves (or denies). */
    fun browserDevice(userCode: String, approve: Boolean) {
        val answer = browser("device", """{"user_code": ${quoted(userCode)}, "approve": $approve}""")
        check(answer.contains("\"done\":true")) { answer }
    }

    /** Alice removes the app's access: every grant she gave ends. */
    fun revokeAllGrants() {
        browser("revoke-grants", "{}")
    }

    /** A counter from /__stats, e.g. `grants` / `refresh_token`; 0 when absent. */
    fun stat(group: String, name: String): Long {
        val body = http.send(
            HttpRequest.newBuilder(URI.create("$origin/__stats")).GET().build(),
            HttpResponse.BodyHandlers.ofString(),
        ).body()
        val section = Regex("\"$group\"\\s*:\\s*\\{([^}]*)\\}").find(body)?.groupValues?.get(1) ?: return 0
        return Regex("\"${Regex.escape(name)}\"\\s*:\\s*(\\d+)").find(section)?.groupValues?.get(1)?.toLong() ?: 0
    }

    private fun browser(action: String, json: String): String {
        val response = http.send(
            HttpRequest.newBuilder(URI.create("$origin/__browser/$action"))
                .header("Content-Type", "application/json")
                .timeout(Duration.ofSeconds(30))
                .POST(HttpRequest.BodyPublishers.ofString(json))
                .build(),
            HttpResponse.BodyHandlers.ofString(),
        )
        check(response.statusCode() == 200) { "browser $action: ${response.statusCode()} ${response.body()}" }
        return response.body()
    }

    private fun quoted(text: String) = "\"" + text.replace("\\", "\\\\").replace("\"", "\\\"") + "\""
}
