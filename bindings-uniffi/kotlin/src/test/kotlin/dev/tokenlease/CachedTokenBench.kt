package dev.tokenlease

import kotlinx.coroutines.runBlocking
import org.junit.jupiter.api.Test

/**
 * Cost of reading a cached (fresh) token from Kotlin through JNA. Not a unit test (Surefire
 * only runs it when asked): `scripts/test-kotlin --bench`, which builds the release library.
 * Prints the median ns per call over many batches.
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

    @Test
    fun cachedToken() = runBlocking<Unit> {
        TokenManager.withSource(CountingSource(lifetimeMs = 3_600_000)).use { manager ->
            manager.token()
            var sink = 0L
            // Warm up the JIT and JNA.
            repeat(50_000) { sink += manager.token().generation.toLong() }
            repeat(50_000) { sink += manager.tokenBlocking().generation.toLong() }
            val suspendNs = median(200, 1_000) { runBlocking { sink += manager.token().generation.toLong() } }
            val inlineSuspendNs = run {
                val samples = DoubleArray(200)
                for (b in 0 until 200) {
                    val start = System.nanoTime()
                    for (i in 0 until 1_000) sink += manager.token().generation.toLong()
                    samples[b] = (System.nanoTime() - start).toDouble() / 1_000
                }
                samples.sort(); samples[100]
            }
            val blockingNs = median(200, 1_000) { sink += manager.tokenBlocking().generation.toLong() }
            val cachedNs = median(200, 1_000) { sink += manager.cached()!!.generation.toLong() }
            // Calibration: a plain JNA interface-mapped call to libc, no UniFFI involved.
            val libc = com.sun.jna.Native.load("c", CLib::class.java)
            repeat(50_000) { sink += libc.getpid() }
            val jnaNs = median(200, 1_000) { sink += libc.getpid() }
            println("BENCH kotlin JNA getpid() (calibration, no UniFFI): median %.0f ns/call".format(jnaNs))
            // A UniFFI method with primitives only (clone-pointer call + the call): the floor.
            val floorNs = median(200, 1_000) { if (manager.isClosed()) sink++ }
            println("BENCH kotlin isClosed() (UniFFI primitive call floor): median %.0f ns/call".format(floorNs))
            // One enum argument, lowered through a RustBuffer.
            val enumNs = median(200, 1_000) { sink += errorKindCode(ErrorKind.TIMEOUT).toLong() }
            println("BENCH kotlin errorKindCode() (enum via RustBuffer): median %.0f ns/call".format(enumNs))
            println("BENCH kotlin token() suspend, in a coroutine: median %.0f ns/call".format(inlineSuspendNs))
            println("BENCH kotlin token() suspend, own runBlocking: median %.0f ns/call".format(suspendNs))
            println("BENCH kotlin tokenBlocking(): median %.0f ns/call".format(blockingNs))
            println("BENCH kotlin cached(): median %.0f ns/call".format(cachedNs))
            check(sink != 42L)
        }
    }
}
