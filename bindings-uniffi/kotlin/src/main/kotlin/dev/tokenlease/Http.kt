package dev.tokenlease

import okhttp3.RequestBody.Companion.toRequestBody
import java.net.http.HttpClient
import java.net.http.HttpRequest
import java.net.http.HttpResponse

/** The largest body prefix the core reads to judge a response (the rest is not needed). */
internal const val MAX_JUDGED_BODY_BYTES = 64 * 1024

/**
 * OkHttp integration: attaches the manager's token to every request (in the header the
 * configuration names) and, when core judges the response a rejection of that token
 * (401 `invalid_token`, a session's `INVALID_SESSION`, ... per the configuration), retries
 * the request once with the new token. Requests with a one-shot body are not retried.
 * Runs on OkHttp's calling thread (the token is read with [TokenManager.tokenBlocking]).
 *
 * `OkHttpClient.Builder().addInterceptor(TokenleaseInterceptor(manager)).build()`
 */
class TokenleaseInterceptor(private val manager: TokenManager) : okhttp3.Interceptor {
    override fun intercept(chain: okhttp3.Interceptor.Chain): okhttp3.Response {
        val request = chain.request()
        val token = manager.tokenBlocking()
        var response = chain.proceed(authorized(request, token))
        // A DPoP server asking for a fresh nonce (core decides): the same token once more,
        // with a new proof.
        if (manager.dpopResend(token, request.url.toString(), response.code, headersOf(response)) &&
            request.body?.isOneShot() != true
        ) {
            response.close()
            response = chain.proceed(authorized(request, token))
        }
        if (!rejects(response, token)) return response
        if (request.body?.isOneShot() == true) return response
        response.close()
        return chain.proceed(authorized(request, manager.tokenBlocking()))
    }

    private fun headersOf(response: okhttp3.Response) = response.headers.map { (name, value) -> ResponseHeader(name, value) }

    private fun authorized(request: okhttp3.Request, token: TokenInfo): okhttp3.Request {
        val builder = request.newBuilder()
        manager.requestHeader(token)?.let { builder.header(it.name, it.value.expose()) }
        manager.dpopProof(token, request.method, request.url.toString())?.let { builder.header("DPoP", it.expose()) }
        val body = request.body
        if (body != null && !body.isOneShot()) {
            val buffer = okio.Buffer()
            body.writeTo(buffer)
            manager.authorizeBody(token, buffer.readUtf8())?.let {
                builder.method(request.method, it.expose().toByteArray().toRequestBody(body.contentType()))
            }
        }
        return builder.build()
    }

    /** Core judges every response: a rejection, or a use (sliding sessions, reported lifetimes). */
    private fun rejects(response: okhttp3.Response, token: TokenInfo): Boolean {
        val prefix = if (manager.needsResponseBody(response.code)) {
            response.peekBody(MAX_JUDGED_BODY_BYTES.toLong()).bytes()
        } else {
            ByteArray(0)
        }
        return manager.judgeResponse(token.generation, response.code, headersOf(response), prefix)
    }
}

/**
 * `java.net.http` integration: sends a request with the manager's token and retries it once
 * when core judges the response a rejection of that token. The body is read whole (as
 * bytes); the rejection check looks at its first 64 KiB. (A configuration that carries the
 * token in the request body needs [TokenManager.authorizeBody] on the body you build.)
 */
object TokenleaseHttp {
    @JvmStatic
    @Throws(TokenleaseException::class, java.io.IOException::class, InterruptedException::class)
    fun send(manager: TokenManager, client: HttpClient, request: HttpRequest.Builder): HttpResponse<ByteArray> {
        val first = manager.tokenBlocking()
        var response = client.send(authorized(manager, request, first), HttpResponse.BodyHandlers.ofByteArray())
        // A DPoP server asking for a fresh nonce (core decides): the same token once more,
        // with a new proof.
        if (manager.dpopResend(first, response.uri().toString(), response.statusCode(), headersOf(response))) {
            response = client.send(authorized(manager, request, first), HttpResponse.BodyHandlers.ofByteArray())
        }
        if (!rejects(manager, response, first)) return response
        return client.send(authorized(manager, request, manager.tokenBlocking()), HttpResponse.BodyHandlers.ofByteArray())
    }

    private fun authorized(manager: TokenManager, request: HttpRequest.Builder, token: TokenInfo): HttpRequest {
        val builder = request.copy()
        manager.requestHeader(token)?.let { builder.setHeader(it.name, it.value.expose()) }
        val built = builder.build()
        val proof = manager.dpopProof(token, built.method(), built.uri().toString()) ?: return built
        return builder.setHeader("DPoP", proof.expose()).build()
    }

    /** Core judges every response: a rejection, or a use (sliding sessions, reported lifetimes). */
    private fun rejects(manager: TokenManager, response: HttpResponse<ByteArray>, token: TokenInfo): Boolean {
        val status = response.statusCode()
        val body = response.body()
        val prefix = when {
            !manager.needsResponseBody(status) -> ByteArray(0)
            body.size > MAX_JUDGED_BODY_BYTES -> body.copyOf(MAX_JUDGED_BODY_BYTES)
            else -> body
        }
        return manager.judgeResponse(token.generation, status, headersOf(response), prefix)
    }

    private fun headersOf(response: HttpResponse<*>) =
        response.headers().map().flatMap { (name, values) -> values.map { ResponseHeader(name, it) } }
}
