package dev.tokenlease

import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.assertThrows
import java.io.BufferedReader
import java.io.File
import java.io.InputStreamReader
import java.nio.file.Files
import java.nio.file.attribute.PosixFilePermissions
import java.util.Base64

/** Credentials that are keys, from the shared config: each kind end to end from Kotlin. */
class KeyCredentialsTest {
    private fun json(text: String) = "\"" + text.replace("\\", "\\\\").replace("\"", "\\\"").replace("\n", "\\n") + "\""

    @Test
    fun `private_key_jwt signs a fresh assertion per token request at oidc-provider`() {
        OidcProvider.issuer
        val key = File(OidcProvider.clientKeys, "tokenlease-pkjwt.pem")
        val config = """
            {"source": {"type": "oauth2", "issuer": "${OidcProvider.issuer}", "client_id": "tokenlease-pkjwt",
              "scopes": ["api:read"],
              "client_auth": {"private_key_jwt": {"key": {"file": ${json(key.absolutePath)}}, "alg": "RS256", "kid": "pkjwt-rs"}}}}
        """.trimIndent()
        TokenManager.fromConfig(config).use { manager ->
            val first = manager.tokenBlocking()
            assertTrue(manager.invalidate(first.generation))
            val second = manager.tokenBlocking()
            assertTrue(first.value.expose() != second.value.expose())
        }
    }

    @Test
    fun `DPoP binds the token to the manager's key and follows the server's nonce`() {
        val config = """
            {"source": {"type": "oauth2", "issuer": "${OidcProvider.issuer}", "client_id": "tokenlease-dpop",
              "client_secret": "tokenlease-secret", "scopes": ["api:read"], "dpop": true}}
        """.trimIndent()
        TokenManager.fromConfig(config).use { manager ->
            assertEquals("DPoP", manager.tokenBlocking().tokenType)
        }
    }

    @Test
    fun `a DPoP-bound user login reaches the userinfo API through OkHttp with a proof per request`() = kotlinx.coroutines.runBlocking<Unit> {
        val config = OidcProvider.userLoginConfig().replace("\"grant\":", "\"dpop\": true, \"grant\":")
        TokenManager.fromConfig(config).use { manager ->
            val request = manager.beginLogin("http://127.0.0.1:49152/callback")
            val token = manager.completeLogin(request, OidcProvider.browserAuthorize(request.url()))
            assertEquals("DPoP", token.tokenType)
            val okhttp = okhttp3.OkHttpClient.Builder().addInterceptor(TokenleaseInterceptor(manager)).build()
            okhttp.newCall(okhttp3.Request.Builder().url("${OidcProvider.issuer}/me").build()).execute().use {
                assertEquals(200, it.code)
                assertTrue(it.body.string().contains("alice"))
            }
        }
    }

    @Test
    fun `a service account key file gets tokens with the JWT-bearer grant`() {
        val dir = Files.createTempDirectory("tokenlease-sa").toFile()
        val pair = java.security.KeyPairGenerator.getInstance("RSA").apply { initialize(2048) }.generateKeyPair()
        fun pem(kind: String, der: ByteArray) =
            "-----BEGIN $kind-----\n" + Base64.getMimeEncoder(64, "\n".toByteArray()).encodeToString(der) + "\n-----END $kind-----\n"
        val email = "kotlin@project.iam.gserviceaccount.com"
        val keys = File(dir, "keys.json")
        keys.writeText("""[{"issuer": "$email", "public_key_pem": ${json(pem("PUBLIC KEY", pair.public.encoded))}}]""")
        val binary = System.getProperty("tokenlease.testServer") ?: error("tokenlease.testServer is not set")
        val server = ProcessBuilder(binary, "--max-lifetime-s", "120", "--jwt-bearer-keys", keys.absolutePath)
            .redirectError(ProcessBuilder.Redirect.INHERIT).start()
        try {
            val url = BufferedReader(InputStreamReader(server.inputStream)).readLine().removePrefix("TOKENLEASE_TEST_SERVER_URL=").trim()
            val keyFile = File(dir, "service-account.json")
            keyFile.writeText(
                """{"type": "service_account", "client_email": "$email", "private_key_id": "k1",
                   "private_key": ${json(pem("PRIVATE KEY", pair.private.encoded))}, "token_uri": "$url/oauth/token"}""",
            )
            Files.setPosixFilePermissions(keyFile.toPath(), PosixFilePermissions.fromString("rw-------"))
            val config = """{"source": {"type": "service_account", "key_file": {"file": ${json(keyFile.absolutePath)}}, "scopes": ["batch"]}}"""
            TokenManager.fromConfig(config).use { manager ->
                val token = manager.tokenBlocking()
                assertEquals("Bearer", token.tokenType)
                val stats = java.net.http.HttpClient.newHttpClient().send(
                    java.net.http.HttpRequest.newBuilder(java.net.URI.create("$url/stats")).build(),
                    java.net.http.HttpResponse.BodyHandlers.ofString(),
                ).body()
                assertTrue(Regex("\"jwt_bearer_grants\"\\s*:\\s*1\\b").containsMatchIn(stats), stats)
            }
        } finally {
            server.destroy()
            dir.deleteRecursively()
        }
    }

    @Test
    fun `mutual TLS authenticates with a client certificate at oidc-provider over TLS`() {
        val dir = Files.createTempDirectory("tokenlease-mtls").toFile()
        fun openssl(vararg args: String) {
            val proc = ProcessBuilder(listOf("openssl") + args).directory(dir).redirectErrorStream(true).start()
            val output = proc.inputStream.readBytes().decodeToString()
            check(proc.waitFor() == 0) { output }
        }
        File(dir, "server.ext").writeText("subjectAltName=IP:127.0.0.1\n")
        File(dir, "client.ext").writeText("extendedKeyUsage=clientAuth\n")
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=kotlin test CA")
        for ((name, subject) in listOf("server" to "/CN=127.0.0.1", "client" to "/CN=tokenlease-mtls")) {
            openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "$name.key", "-out", "$name.csr", "-subj", subject)
            openssl(
                "x509", "-req", "-in", "$name.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", "$name.pem", "-days", "1", "-extfile", "$name.ext",
            )
        }
        Files.setPosixFilePermissions(File(dir, "client.key").toPath(), PosixFilePermissions.fromString("rw-------"))
        val script = System.getProperty("tokenlease.oidcServer") ?: error("tokenlease.oidcServer is not set")
        val server = ProcessBuilder(
            "node", script, "--lifetime", "120", "--exit-with-stdin",
            "--tls-cert", File(dir, "server.pem").path, "--tls-key", File(dir, "server.key").path,
            "--tls-ca", File(dir, "ca.pem").path,
        ).redirectError(ProcessBuilder.Redirect.INHERIT).start()
        try {
            val reader = BufferedReader(InputStreamReader(server.inputStream))
            var issuer: String? = null
            while (issuer == null) {
                val line = reader.readLine() ?: error("the TLS oidc server exited")
                if (line.startsWith("OIDC_PROVIDER_URL=")) issuer = line.removePrefix("OIDC_PROVIDER_URL=").trim()
            }
            assertTrue(issuer.startsWith("https://"))
            val caFile = json(File(dir, "ca.pem").path)
            val certificate = json(File(dir, "client.pem").path)
            val key = json(File(dir, "client.key").path)
            val config = "{\"source\": {\"type\": \"oauth2\", \"issuer\": \"$issuer\", \"client_id\": \"tokenlease-mtls\", " +
                "\"scopes\": [\"api:read\"], \"ca_file\": $caFile, " +
                "\"client_auth\": {\"tls_client_auth\": {\"certificate\": $certificate, \"key\": {\"file\": $key}}}}}"
            TokenManager.fromConfig(config).use { manager ->
                assertEquals("Bearer", manager.tokenBlocking().tokenType)
            }
        } finally {
            server.destroy()
            dir.deleteRecursively()
        }
    }

    @Test
    fun `a workload token file is read again for every exchange`() {
        val dir = Files.createTempDirectory("tokenlease-subject").toFile()
        try {
            val file = File(dir, "token")
            val config = """
                {"source": {"type": "oauth2", "token_url": "${TestServer.url}/oauth/token", "client_id": "demo-client",
                  "client_secret": "demo-secret",
                  "grant": {"type": "token_exchange", "subject_token_file": ${json(file.absolutePath)},
                            "subject_token_type": "urn:ietf:params:oauth:token-type:jwt"}}}
            """.trimIndent()
            file.writeText("projected-token-1")
            TokenManager.fromConfig(config).use { it.tokenBlocking() }
            file.writeText("invalid")
            TokenManager.fromConfig(config).use { manager ->
                assertThrows<TokenleaseException.InvalidGrant> { manager.tokenBlocking() }
            }
        } finally {
            dir.deleteRecursively()
        }
    }
}
