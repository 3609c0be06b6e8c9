package dev.tokenlease

import okhttp3.MediaType.Companion.toMediaType
import okhttp3.RequestBody.Companion.toRequestBody
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.DynamicTest
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.TestFactory
import java.io.File
import java.net.URI
import java.net.http.HttpClient
import java.net.http.HttpRequest
import java.net.http.HttpResponse
import java.time.Duration

/**
 * The shared scenarios of tests/scenarios (see the README there), run from Kotlin: each story
 * against a fresh test token server whose clock moves in step with the manager's
 * [ManualClock]; every API call goes through OkHttp with [TokenleaseInterceptor], so core
 * decides the header, the SOAP body placement and the verdict.
 */
class ScenarioTest {
    private val root = File(System.getProperty("tokenlease.workspace") ?: "../..")
    private val scenarios = File(root, "tests/scenarios")

    @TestFactory
    fun `every shared scenario`(): List<DynamicTest> {
        val files = scenarios.listFiles { file -> file.name.endsWith(".scenario") }!!.sortedBy { it.name }
        assertTrue(files.size >= 5, "the shared scenarios: $files")
        return files.map { file -> DynamicTest.dynamicTest(file.name) { run(file) } }
    }

    @Test
    fun `the manual clock moves only when told`() {
        val clock = ManualClock(1_800_000_000_000)
        assertEquals(1_800_000_000_000, clock.wallUnixMs())
        clock.advance(90_500uL)
        assertEquals(1_800_000_090_500, clock.wallUnixMs())
        val negative = runCatching { ManualClock(-1) }.exceptionOrNull()
        assertTrue(negative is TokenleaseException.Usage, "$negative")
    }

    private class Story(val url: String) : AutoCloseable {
        private val http = HttpClient.newBuilder().connectTimeout(Duration.ofSeconds(5)).build()
        val clock = ManualClock(null)
        var config = ""
        private var manager: TokenManager? = null
        private var okhttp: okhttp3.OkHttpClient? = null

        fun built(): TokenManager = manager ?: TokenManager.fromConfig(config.replace("{{server}}", url), clock).also {
            manager = it
            okhttp = okhttp3.OkHttpClient.Builder()
                .addInterceptor(TokenleaseInterceptor(it))
                .readTimeout(Duration.ofSeconds(30))
                .build()
        }

        fun control(json: String) {
            val response = http.send(
                HttpRequest.newBuilder(URI.create("$url/control")).header("Content-Type", "application/json")
                    .timeout(Duration.ofSeconds(10)).POST(HttpRequest.BodyPublishers.ofString(json)).build(),
                HttpResponse.BodyHandlers.ofString(),
            )
            check(response.statusCode() == 200) { "control: ${response.statusCode()} ${response.body()}" }
        }

        /** A field of /stats; `grants.NAME` for a grant count; missing means 0. */
        fun stat(name: String): Pair<Long, String> {
            val body = http.send(
                HttpRequest.newBuilder(URI.create("$url/stats")).timeout(Duration.ofSeconds(10)).GET().build(),
                HttpResponse.BodyHandlers.ofString(),
            ).body()
            val parts = name.split('.')
            val scope = if (parts.size == 2) {
                Regex("\"${parts[0]}\"\\s*:\\s*\\{([^}]*)\\}").find(body)?.groupValues?.get(1) ?: ""
            } else {
                body
            }
            val value = Regex("\"${parts.last()}\"\\s*:\\s*(\\d+)").find(scope)?.groupValues?.get(1)?.toLong() ?: 0
            return value to body
        }

        fun call(method: String, target: String, expected: Int, bodyFile: String?, scenarios: File) {
            val manager = built()
            val address = if (target.startsWith("@")) {
                manager.tokenBlocking().attributes[target.removePrefix("@")] ?: error("no attribute $target")
            } else {
                url + target
            }
            val text = bodyFile?.let { File(scenarios, it).readText() }
            // OkHttp wants a body (possibly empty) exactly for the methods that carry one.
            val body = if (text != null || method in setOf("POST", "PUT", "PATCH")) {
                (text ?: "").toRequestBody("text/xml".toMediaType())
            } else {
                null
            }
            val request = okhttp3.Request.Builder().url(address).method(method, body).build()
            okhttp!!.newCall(request).execute().use { response ->
                assertEquals(expected, response.code, response.peekBody(500).string())
            }
        }

        override fun close() {
            manager?.close()
            okhttp?.let { it.dispatcher.executorService.shutdown(); it.connectionPool.evictAll() }
        }
    }

    private fun run(file: File) {
        val (process, url) = startTokenServer(300)
        try {
            Story(url).use { story ->
                file.readLines().forEachIndexed { index, line ->
                    if (line.isBlank() || line.startsWith("#")) return@forEachIndexed
                    try {
                        step(story, line)
                    } catch (failure: Throwable) {
                        throw AssertionError("${file.name}:${index + 1}: $line: ${failure.message}", failure)
                    }
                }
            }
        } finally {
            process.destroy()
            process.waitFor()
        }
    }

    private fun step(story: Story, line: String) {
        val step = line.substringBefore(' ')
        val rest = line.substringAfter(' ', "")
        when (step) {
            "config" -> story.config = File(root, rest).readText()
            "replace" -> {
                val (from, to) = rest.split(" => ", limit = 2)
                assertTrue(story.config.contains(from), "not in the configuration")
                story.config = story.config.replace(from, to)
            }
            "control" -> story.control(rest)
            "call" -> {
                val words = rest.split(' ')
                story.call(words[0], words[1], words[2].toInt(), words.getOrNull(3), scenarios)
            }
            "advance" -> {
                val manager = story.built()
                repeat(rest.toInt()) {
                    story.control("""{"advance_s": 60}""")
                    story.clock.advance(60_000, manager)
                }
            }
            "server-stat" -> {
                val (name, expected) = rest.split(' ')
                val (value, body) = story.stat(name)
                assertEquals(expected.toLong(), value, body)
            }
            "manager-counter" -> {
                val (name, expected) = rest.split(' ')
                val counters = story.built().status().counters
                val value = when (name) {
                    "fetches" -> counters.fetches
                    "refreshes" -> counters.refreshes
                    "keep_alives" -> counters.keepAlives
                    "failures" -> counters.failures
                    else -> error("unknown counter $name")
                }
                assertEquals(expected.toULong(), value, "$counters")
            }
            "info-contains" -> {
                val info = kotlinx.coroutines.runBlocking { story.built().sessionInfo() }
                assertTrue(info.contains(rest), info)
            }
            "revoke" -> story.built().revokeBlocking()
            else -> error("unknown step $step")
        }
    }
}
