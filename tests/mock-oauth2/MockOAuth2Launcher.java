// Test-only launcher for no.nav.security:mock-oauth2-server (Maven Central; a third-party
// OAuth2/OIDC server we did not write), for tokenlease's interop tests. Run by
// tests/mock-oauth2/launch as a single-file Java program (java -cp 'lib/*' THIS_FILE).
//
//   launch [--lifetime SECONDS] [--exit-with-stdin]
//
// Starts the server library on 127.0.0.1 with a port the OS picks and prints, once it
// listens, one line
//   MOCK_OAUTH2_SERVER_URL=http://127.0.0.1:PORT
// on stdout. Every path is an issuer (http://127.0.0.1:PORT/default,
// http://127.0.0.1:PORT/realms/tl, ...), with its discovery document at
// <issuer>/.well-known/openid-configuration. Refresh tokens rotate (rotateRefreshToken).
// Exits after --lifetime seconds (default 300), and with --exit-with-stdin when its
// standard input closes (the test process that started it is gone).
//
// The one addition to the library's own routes: GET <any issuer>/__stats answers the
// requests the server has seen so far, counted by "METHOD /path" (query left out), as a
// JSON object. They are read from the library's own request log (MockWebServer's), so
// nothing in the OAuth2 handling is touched.

import java.io.InputStream;
import java.net.InetAddress;
import java.util.Map;
import java.util.TreeMap;
import java.util.concurrent.TimeUnit;

import no.nav.security.mock.oauth2.MockOAuth2Server;
import no.nav.security.mock.oauth2.OAuth2Config;
import no.nav.security.mock.oauth2.http.MockWebServerWrapper;
import no.nav.security.mock.oauth2.http.OAuth2HttpResponse;
import no.nav.security.mock.oauth2.http.OAuth2HttpRouterKt;
import no.nav.security.mock.oauth2.http.Route;
import okhttp3.Headers;
import okhttp3.mockwebserver.MockWebServer;
import okhttp3.mockwebserver.RecordedRequest;

public final class MockOAuth2Launcher {
    private static final Map<String, Long> COUNTS = new TreeMap<>();
    private static MockWebServer recorder;

    private static synchronized String stats() throws InterruptedException {
        RecordedRequest request;
        while ((request = recorder.takeRequest(0, TimeUnit.MILLISECONDS)) != null) {
            String path = request.getPath() == null ? "" : request.getPath();
            int query = path.indexOf('?');
            if (query >= 0) path = path.substring(0, query);
            if (path.endsWith("/__stats")) continue;
            COUNTS.merge(request.getMethod() + " " + path, 1L, Long::sum);
        }
        StringBuilder json = new StringBuilder("{");
        for (Map.Entry<String, Long> entry : COUNTS.entrySet()) {
            if (json.length() > 1) json.append(',');
            json.append('"').append(entry.getKey().replace("\\", "\\\\").replace("\"", "\\\""))
                .append("\":").append(entry.getValue());
        }
        return json.append('}').toString();
    }

    public static void main(String[] args) throws Exception {
        long lifetimeSeconds = 300;
        boolean exitWithStdin = false;
        for (int i = 0; i < args.length; i++) {
            switch (args[i]) {
                case "--lifetime" -> lifetimeSeconds = Long.parseLong(args[++i]);
                case "--exit-with-stdin" -> exitWithStdin = true;
                default -> {
                    System.err.println("mock-oauth2 launcher: unknown argument " + args[i]);
                    System.exit(2);
                }
            }
        }

        OAuth2Config config = OAuth2Config.Companion.fromJson(
            "{\"interactiveLogin\": false, \"rotateRefreshToken\": true,"
                + " \"httpServer\": \"MockWebServerWrapper\"}");
        recorder = ((MockWebServerWrapper) config.getHttpServer()).getMockWebServer();
        Route statsRoute = OAuth2HttpRouterKt.route("/__stats", "GET", request -> {
            try {
                return new OAuth2HttpResponse(
                    Headers.of("Content-Type", "application/json", "Cache-Control", "no-store"),
                    200, stats(), null);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                return new OAuth2HttpResponse(Headers.of(), 500, "interrupted", null);
            }
        });
        MockOAuth2Server server = new MockOAuth2Server(config, statsRoute);
        server.start(InetAddress.getByName("127.0.0.1"), 0);
        int port = config.getHttpServer().port();

        Thread exit = new Thread(() -> {
            try {
                server.shutdown();
            } catch (RuntimeException ignored) {
                // exiting anyway
            }
        });
        Runtime.getRuntime().addShutdownHook(exit);

        final long lifetimeMillis = TimeUnit.SECONDS.toMillis(lifetimeSeconds);
        Thread timer = new Thread(() -> {
            try {
                Thread.sleep(lifetimeMillis);
            } catch (InterruptedException e) {
                return;
            }
            System.err.println("mock-oauth2 launcher: lifetime is over, exiting");
            System.exit(0);
        });
        timer.setDaemon(true);
        timer.start();
        if (exitWithStdin) {
            Thread watcher = new Thread(() -> {
                try {
                    InputStream in = System.in;
                    byte[] buffer = new byte[256];
                    while (in.read(buffer) >= 0) {
                        // discard
                    }
                } catch (Exception ignored) {
                    // closed or broken: the parent is gone
                }
                System.exit(0);
            });
            watcher.setDaemon(true);
            watcher.start();
        }

        System.out.println("MOCK_OAUTH2_SERVER_URL=http://127.0.0.1:" + port);
        System.out.flush();
        Thread.currentThread().join();
    }
}
