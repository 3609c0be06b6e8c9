package dev.tokenlease

import java.io.BufferedReader
import java.io.InputStreamReader
import java.net.URI
import java.net.http.HttpClient
import java.net.http.HttpRequest
import java.net.http.HttpResponse
import java.time.Duration

/**
 * Starts a test token server (tests/server, the binary named by the `tokenlease.testServer`
 * system property) on 127.0.0.1; it stops itself after [maxLifetimeS]. Returns the process and
 * its base URL.
 */
fun startTokenServer(maxLifetimeS: Int = 300): Pair<Process, String> {
    val binary = System.getProperty("tokenlease.testServer")
        ?: error("system property tokenlease.testServer (test server binary) is not set")
    val proc = ProcessBuilder(binary, "--max-lifetime-s", maxLifetimeS.toString())
        .redirectError(ProcessBuilder.Redirect.INHERIT)
        .start()
    val first = BufferedReader(InputStreamReader(proc.inputStream)).readLine()
    if (first == null || !first.startsWith("TOKENLEASE_TEST_SERVER_URL=")) {
        proc.destroy()
        error("the test server did not print its URL: $first")
    }
    return proc to first.removePrefix("TOKENLEASE_TEST_SERVER_URL=").trim()
}

/**
 * The project's loopback test token server (tests/server), started once per JVM from the
 * binary named by the `tokenlease.testServer` system property and stopped at JVM exit.
 */
object TestServer {
    val url: String by lazy { start() }
    private var process: Process? = null
    private val http: HttpClient = HttpClient.newBuilder().connectTimeout(Duration.ofSeconds(5)).build()

    private fun start(): String {
        val (proc, url) = startTokenServer()
        process = proc
        Runtime.getRuntime().addShutdownHook(Thread { proc.destroy() })
        return url
    }

    /** The shared config of a client-credentials manager against this server. */
    fun config(
        secret: String = "demo-secret",
        key: String = "kotlin-test",
        policy: String = "{}",
    ): String = """
        {
          "key": "$key",
          "source": {
            "type": "oauth2_client_credentials",
            "token_url": "$url/oauth/token",
            "client_id": "demo-client",
            "client_secret": "$secret",
            "revocation_url": "$url/oauth/revoke"
          },
          "policy": $policy
        }
    """.trimIndent()

    fun control(json: String): String = post("/control", json, "application/json").body()

    fun reset() {
        control("""{"reset_stats":true,"clear_outage":true,"clear_rate_limit":true,"latency_ms":0}""")
    }

    fun stat(name: String): Long {
        val body = http.send(
            HttpRequest.newBuilder(URI.create("$url/stats")).GET().build(),
            HttpResponse.BodyHandlers.ofString(),
        ).body()
        val match = Regex("\"$name\"\\s*:\\s*(\\d+)").find(body) ?: error("no $name in $body")
        return match.groupValues[1].toLong()
    }

    /** GET /api/resource with the token; returns the HTTP status. */
    fun resource(token: TokenInfo): Int = http.send(
        HttpRequest.newBuilder(URI.create("$url/api/resource"))
            .header("Authorization", "${token.tokenType} ${token.value.expose()}")
            .GET().build(),
        HttpResponse.BodyHandlers.discarding(),
    ).statusCode()

    fun post(path: String, body: String, contentType: String, auth: String? = null): HttpResponse<String> {
        val builder = HttpRequest.newBuilder(URI.create("$url$path"))
            .header("Content-Type", contentType)
            .timeout(Duration.ofSeconds(10))
            .POST(HttpRequest.BodyPublishers.ofString(body))
        if (auth != null) builder.header("Authorization", auth)
        return http.send(builder.build(), HttpResponse.BodyHandlers.ofString())
    }
}

/**
 * A Kotlin [TokenSource]: OAuth2 client credentials against the test server, written with
 * java.net.http. It chooses the error kind of a failure by throwing the matching
 * [TokenleaseException] variant.
 */
class KotlinHttpSource(private val secret: String = "demo-secret") : TokenSource {
    @Volatile var calls = 0

    override fun fetch(): FetchedToken {
        calls++
        return tokenRequest("grant_type=client_credentials&client_id=demo-client&client_secret=$secret")
    }
}

/**
 * A Kotlin [RefreshingTokenSource]: the password grant, refresh-token grants (the server
 * rotates refresh tokens and revokes the family on reuse) and RFC 7009 revocation.
 */
class KotlinPasswordSource(private val scope: String) : RefreshingTokenSource {
    val calls = java.util.concurrent.CopyOnWriteArrayList<String>()

    override fun fetch(): FetchedToken {
        calls.add("fetch")
        return tokenRequest("grant_type=password&username=alice&password=wonderland&scope=$scope&$CLIENT")
    }

    override fun refresh(refreshToken: SecretString): FetchedToken {
        calls.add("refresh")
        return tokenRequest("grant_type=refresh_token&refresh_token=${refreshToken.expose()}&$CLIENT")
    }

    override fun revoke(token: TokenInfo) {
        calls.add("revoke")
        val response = TestServer.post("/oauth/revoke", "token=${token.value.expose()}&$CLIENT", FORM)
        if (response.statusCode() != 200) throw TokenleaseException.Protocol("revocation answered ${response.statusCode()}")
    }

    private companion object {
        const val CLIENT = "client_id=demo-client&client_secret=demo-secret"
    }
}

private const val FORM = "application/x-www-form-urlencoded"

/** POSTs a token request to the test server; the failure's kind follows the status. */
private fun tokenRequest(form: String): FetchedToken {
    val response = TestServer.post("/oauth/token", form, FORM)
    val body = response.body()
    when {
        response.statusCode() == 401 -> throw TokenleaseException.InvalidCredentials("token endpoint answered 401")
        response.statusCode() >= 500 -> throw TokenleaseException.Transient("token endpoint answered ${response.statusCode()}")
        body.contains("invalid_grant") -> throw TokenleaseException.InvalidGrant("token endpoint answered invalid_grant")
        response.statusCode() != 200 -> throw TokenleaseException.Protocol("token endpoint answered ${response.statusCode()}")
    }
    fun field(name: String): String? =
        Regex("\"$name\"\\s*:\\s*\"?([^\",}]+)\"?").find(body)?.groupValues?.get(1)
    val value = field("access_token") ?: throw TokenleaseException.Protocol("no access_token in the answer")
    val expiresIn = field("expires_in")?.toLong() ?: 3600
    return FetchedToken(
        value = SecretString(value),
        expiresInMs = (expiresIn * 1000).toULong(),
        tokenType = field("token_type") ?: "Bearer",
        refreshToken = field("refresh_token")?.let(::SecretString),
    )
}

/** A Kotlin [TokenStore] keeping the JSON records in a map (a real app: a file, Keystore, DB). */
class MapStore : TokenStore {
    val records = java.util.concurrent.ConcurrentHashMap<String, String>()
    override fun load(key: String): String? = records[key]
    override fun save(key: String, recordJson: String) { records[key] = recordJson }
    override fun delete(key: String) { records.remove(key) }
}

/** Records events; never sees token values. */
class RecordingListener : EventListener {
    val events = java.util.concurrent.CopyOnWriteArrayList<TokenEvent>()
    override fun onEvent(key: String, event: TokenEvent) { events.add(event) }
}

/** A source of short-lived synthetic tokens that counts its calls. */
class CountingSource(private val lifetimeMs: Long = 60_000, private val block: () -> Unit = {}) : TokenSource {
    val calls = java.util.concurrent.atomic.AtomicInteger()
    override fun fetch(): FetchedToken {
        block()
        val n = calls.incrementAndGet()
        return FetchedToken(value = SecretString("synthetic-$n"), expiresInMs = lifetimeMs.toULong())
    }
}
