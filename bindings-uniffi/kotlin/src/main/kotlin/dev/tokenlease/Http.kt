package dev.tokenlease

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
        val response = chain.proceed(authorized(request, token))
        if (!rejects(response, token)) return response
        if (request.body?.isOneShot() == true) return response
        response.close()
        return chain.proceed(authorized(request, manager.tokenBlocking()))
    }

    private fun authorized(request: okhttp3.Request, token: TokenInfo): okhttp3.Request {
        val builder = request.newBuilder()
        manager.requestHeader(token)?.let { builder.header(it.name, it.value.expose()) }
        val body = request.body
        if (body != null && !body.isOneShot()) {
            val buffer = okio.Buffer()
            body.writeTo(buffer)
            manager.authorizeBody(token, buffer.readUtf8())?.let {
                builder.method(request.method, okhttp3.RequestBody.create(body.contentType(), it.expose().toByteArray()))
            }
        }
        return builder.build()
    }

    private fun rejects(response: okhttp3.Response, token: TokenInfo): Boolean {
        if (!manager.needsResponseBody(response.code)) return false
        val prefix = response.peekBody(MAX_JUDGED_BODY_BYTES.toLong()).bytes()
        val headers = response.headers.map { (name, value) -> ResponseHeader(name, value) }
        return manager.judgeResponse(token.generation, response.code, headers, prefix)
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
        val response = client.send(authorized(manager, request, first), HttpResponse.BodyHandlers.ofByteArray())
        if (!rejects(manager, response, first)) return response
        return client.send(authorized(manager, request, manager.tokenBlocking()), HttpResponse.BodyHandlers.ofByteArray())
    }

    private fun authorized(manager: TokenManager, request: HttpRequest.Builder, token: TokenInfo): HttpRequest {
        val builder = request.copy()
        manager.requestHeader(token)?.let { builder.setHeader(it.name, it.value.expose()) }
        return builder.build()
    }

    private fun rejects(manager: TokenManager, response: HttpResponse<ByteArray>, token: TokenInfo): Boolean {
        val status = response.statusCode()
        if (!manager.needsResponseBody(status)) return false
        val body = response.body()
        val prefix = if (body.size > MAX_JUDGED_BODY_BYTES) body.copyOf(MAX_JUDGED_BODY_BYTES) else body
        val headers = response.headers().map().flatMap { (name, values) -> values.map { ResponseHeader(name, it) } }
        return manager.judgeResponse(token.generation, status, headers, prefix)
    }
}
