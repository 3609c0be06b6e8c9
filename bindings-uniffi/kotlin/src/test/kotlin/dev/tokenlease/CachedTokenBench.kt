package dev.tokenlease

import kotlinx.coroutines.runBlocking
import org.junit.jupiter.api.Test

/**
 * Cost of reading a cached (fresh) token from Kotlin through JNA. Not a unit test (Surefire
 * only runs it when asked): `scripts/test-kotlin --bench`, which builds the release library.
 * Prints the median ns per call over many batches, for [TokenManager] (the API apps use,
 * with its direct-mapped fast path) and, side by side, for the generated
 * [NativeTokenManager] alone (every call a generic UniFFI call).
 */
class CachedTokenBench {
    interface CLib : com.sun.jna.Library {
        fun getpid(): Int
    }

    private fun median(batches: Int, perBatch: Int, op: () -> Unit): Double {
        val samples = DoubleArray(batches)
        for (b in 0 until batches) {
            val start = System.nanoTime()
            for (i in 0 until perBatch) op()
            samples[b] = (System.nanoTime() - start).toDouble() / perBatch
        }
        samples.sort()
        return samples[batches / 2]
    }

    private fun report(what: String, ns: Double) = println("BENCH kotlin %s: median %.0f ns/call".format(what, ns))

    @Test
    fun cachedToken() = runBlocking<Unit> {
        var sink = 0L
        TokenManager.withSource(CountingSource(lifetimeMs = 3_600_000)).use { manager ->
            manager.token()
            // Warm up the JIT and JNA.
            repeat(200_000) { sink += manager.token().generation.toLong() }
            repeat(200_000) { sink += manager.tokenBlocking().generation.toLong() }
            val inCoroutine = run {
                val samples = DoubleArray(200)
                for (b in 0 until 200) {
                    val start = System.nanoTime()
                    for (i in 0 until 10_000) sink += manager.token().generation.toLong()
                    samples[b] = (System.nanoTime() - start).toDouble() / 10_000
                }
                samples.sort(); samples[100]
            }
            report("TokenManager.token() suspend, in a coroutine", inCoroutine)
            report("TokenManager.token() suspend, own runBlocking", median(200, 1_000) { runBlocking { sink += manager.token().generation.toLong() } })
            report("TokenManager.tokenBlocking()", median(200, 10_000) { sink += manager.tokenBlocking().generation.toLong() })
            report("TokenManager.cached()", median(200, 10_000) { sink += manager.cached()!!.generation.toLong() })
        }
        NativeTokenManager.withSource(CountingSource(lifetimeMs = 3_600_000)).use { native ->
            native.token()
            repeat(50_000) { sink += native.token().generation.toLong() }
            repeat(50_000) { sink += native.tokenBlocking().generation.toLong() }
            report("NativeTokenManager.token() (generated only), in a coroutine", median(200, 1_000) { runBlocking { sink += native.token().generation.toLong() } })
            report("NativeTokenManager.tokenBlocking() (generated only)", median(200, 1_000) { sink += native.tokenBlocking().generation.toLong() })
            // A UniFFI method with primitives only (clone-pointer call + the call): the floor.
            report("NativeTokenManager.isClosed() (UniFFI primitive call floor)", median(200, 1_000) { if (native.isClosed()) sink++ })
        }
        // Calibration: a plain JNA interface-mapped call to libc, no UniFFI involved.
        val libc = com.sun.jna.Native.load("c", CLib::class.java)
        repeat(50_000) { sink += libc.getpid() }
        report("JNA getpid() (calibration, interface mapping, no UniFFI)", median(200, 1_000) { sink += libc.getpid() })
        check(sink != 42L)
    }
}
