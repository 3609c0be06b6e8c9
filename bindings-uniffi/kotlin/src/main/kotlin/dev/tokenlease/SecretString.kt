package dev.tokenlease

import java.security.MessageDigest

/**
 * A secret string: a token value or a refresh token. [toString] never shows it, so a
 * [TokenInfo] or [FetchedToken] can be logged; read the value with [expose] where it is
 * sent (an `Authorization` header).
 */
class SecretString(private val value: String) {
    /** The secret value itself. */
    fun expose(): String = value

    override fun toString(): String = "SecretString([redacted])"

    /** Constant-time comparison, so equality checks do not leak the value by timing. */
    override fun equals(other: Any?): Boolean =
        other is SecretString && MessageDigest.isEqual(value.toByteArray(), other.value.toByteArray())

    override fun hashCode(): Int = value.hashCode()
}
