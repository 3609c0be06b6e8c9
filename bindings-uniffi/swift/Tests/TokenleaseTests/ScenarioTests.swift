import Foundation
#if canImport(Glibc)
import Glibc
#endif
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import Tokenlease
import XCTest

/// The shared scenarios of tests/scenarios (see the README there), run from Swift: each story
/// against a fresh test token server whose clock moves in step with the manager's
/// `ManualClock`; every API call goes through `TokenManager.data(for:)` (URLSession), so core
/// decides the header, the SOAP body placement and the verdict.
final class ScenarioTests: XCTestCase {
    private var repo: URL {
        URL(fileURLWithPath: ProcessInfo.processInfo.environment["TOKENLEASE_REPO"] ?? "../..")
    }

    func testEveryScenario() async throws {
        let folder = repo.appendingPathComponent("tests/scenarios")
        let files = try FileManager.default.contentsOfDirectory(atPath: folder.path)
            .filter { $0.hasSuffix(".scenario") }.sorted()
        XCTAssertGreaterThanOrEqual(files.count, 5, "the shared scenarios: \(files)")
        for file in files {
            try await run(folder.appendingPathComponent(file))
            print("scenario \(file): done")
        }
    }

    func testTheManualClockMovesOnlyWhenTold() throws {
        let clock = try ManualClock(wallUnixMs: 1_800_000_000_000)
        XCTAssertEqual(clock.wallUnixMs(), 1_800_000_000_000)
        clock.advance(ms: 90_500)
        XCTAssertEqual(clock.wallUnixMs(), 1_800_000_090_500)
        XCTAssertThrowsError(try ManualClock(wallUnixMs: -1))
    }

    /// A fresh test token server on 127.0.0.1 (stopped by `stop`, and by itself after 300 s).
    private final class Server {
        let process = Process()
        let url: String

        init() throws {
            guard let binary = ProcessInfo.processInfo.environment["TOKENLEASE_TEST_SERVER_BIN"] else {
                throw NSError(domain: "scenario", code: 1,
                              userInfo: [NSLocalizedDescriptionKey: "TOKENLEASE_TEST_SERVER_BIN is not set (run scripts/test-swift)"])
            }
            let output = Pipe()
            process.executableURL = URL(fileURLWithPath: binary)
            process.arguments = ["--max-lifetime-s", "300"]
            process.standardOutput = output
            // Never the test runner's own stderr: a server that outlived its test would hold
            // that pipe open, and `swift test` waits for its end.
            process.standardError = FileHandle.nullDevice
            try process.run()
            var line = Data()
            while !line.contains(UInt8(ascii: "\n")) {
                let chunk = output.fileHandleForReading.availableData
                if chunk.isEmpty { break }
                line.append(chunk)
            }
            let text = String(decoding: line, as: UTF8.self)
            guard let first = text.split(separator: "\n").first,
                  first.hasPrefix("TOKENLEASE_TEST_SERVER_URL=") else {
                process.terminate()
                throw NSError(domain: "scenario", code: 2,
                              userInfo: [NSLocalizedDescriptionKey: "the test server did not start: \(text)"])
            }
            url = String(first.dropFirst("TOKENLEASE_TEST_SERVER_URL=".count))
        }

        /// SIGTERM, then waits (at most 5 s) for the exit with `waitpid`, then SIGKILL.
        /// (Not `waitUntilExit()` or `isRunning`: on Linux they depend on a run loop an async
        /// test does not run, and were seen never to notice the exit.)
        func stop() {
            let pid = process.processIdentifier
            guard pid > 0 else { return }
            kill(pid, SIGTERM)
            var status: Int32 = 0
            for _ in 0..<500 {
                let reaped = waitpid(pid, &status, WNOHANG)
                // ECHILD: Foundation's own child monitor reaped it first.
                if reaped == pid || (reaped == -1 && errno == ECHILD) { return }
                usleep(10_000)
            }
            kill(pid, SIGKILL)
            _ = waitpid(pid, &status, 0)
        }

        /// Synchronous (as every test helper here): URLSession's async `data(for:)` has been
        /// seen to never resume on Linux when the server closes the connection.
        func request(_ path: String, method: String = "GET", body: String? = nil) -> (Int, String) {
            TestServer.request(path, method: method, body: body,
                               contentType: body == nil ? nil : "application/json", base: url)
        }

        /// A field of /stats; `grants.NAME` for a grant count; missing means 0.
        func stat(_ name: String) throws -> (Int, String) {
            let body = request("/stats").1
            var value: Any? = try JSONSerialization.jsonObject(with: Data(body.utf8))
            for part in name.split(separator: ".") {
                value = (value as? [String: Any])?[String(part)]
            }
            return ((value as? NSNumber)?.intValue ?? 0, body)
        }
    }

    private func run(_ file: URL) async throws {
        let server = try Server()
        defer { server.stop() }
        let clock = try ManualClock(wallUnixMs: nil)
        var config = ""
        var manager: TokenManager?
        func built() throws -> TokenManager {
            if let manager { return manager }
            let made = try TokenManager.fromConfig(
                config: config.replacingOccurrences(of: "{{server}}", with: server.url), clock: clock)
            manager = made
            return made
        }
        let text = try String(contentsOf: file, encoding: .utf8)
        for (index, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            if line.trimmingCharacters(in: .whitespaces).isEmpty || line.hasPrefix("#") { continue }
            let at = "\(file.lastPathComponent):\(index + 1): \(line)"
            let step = line.split(separator: " ", maxSplits: 1).first.map(String.init) ?? ""
            let rest = line.split(separator: " ", maxSplits: 1).dropFirst().first.map(String.init) ?? ""
            switch step {
            case "config":
                config = try String(contentsOf: repo.appendingPathComponent(rest), encoding: .utf8)
            case "replace":
                let parts = rest.components(separatedBy: " => ")
                XCTAssertEqual(parts.count, 2, at)
                XCTAssertTrue(config.contains(parts[0]), "\(at): not in the configuration")
                config = config.replacingOccurrences(of: parts[0], with: parts[1])
            case "control":
                let (status, body) = server.request("/control", method: "POST", body: rest)
                XCTAssertEqual(status, 200, "\(at): \(body)")
            case "call":
                let words = rest.split(separator: " ").map(String.init)
                let manager = try built()
                let address: String
                if words[1].hasPrefix("@") {
                    address = try await manager.token().attributes[String(words[1].dropFirst())] ?? ""
                } else {
                    address = server.url + words[1]
                }
                var request = URLRequest(url: URL(string: address)!)
                request.httpMethod = words[0]
                request.timeoutInterval = 30
                if words.count > 3 {
                    let body = try String(contentsOf: file.deletingLastPathComponent()
                        .appendingPathComponent(words[3]), encoding: .utf8)
                    request.httpBody = Data(body.utf8)
                }
                let (data, response) = try await manager.data(for: request)
                XCTAssertEqual(String(response.statusCode), words[2],
                               "\(at): \(String(decoding: data.prefix(500), as: UTF8.self))")
            case "advance":
                let manager = try built()
                for _ in 0..<(Int(rest) ?? 0) {
                    let (status, body) = server.request("/control", method: "POST", body: #"{"advance_s": 60}"#)
                    XCTAssertEqual(status, 200, "\(at): \(body)")
                    try clock.advance(ms: 60_000, settle: manager)
                }
            case "server-stat":
                let words = rest.split(separator: " ").map(String.init)
                let (value, body) = try server.stat(words[0])
                XCTAssertEqual(String(value), words[1], "\(at): \(body)")
            case "manager-counter":
                let words = rest.split(separator: " ").map(String.init)
                let counters = try built().status().counters
                let values: [String: UInt64] = [
                    "fetches": counters.fetches, "refreshes": counters.refreshes,
                    "failures": counters.failures, "keep_alives": counters.keepAlives,
                ]
                XCTAssertEqual(values[words[0]].map { String($0) }, words[1], "\(at): \(counters)")
            case "info-contains":
                let info = try await built().sessionInfo()
                XCTAssertTrue(info.contains(rest), "\(at): \(info)")
            case "revoke":
                try await built().revoke()
            default:
                XCTFail("\(at): unknown step")
            }
        }
    }
}
