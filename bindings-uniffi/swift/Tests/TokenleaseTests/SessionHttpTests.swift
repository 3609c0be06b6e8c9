import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import XCTest
import Tokenlease

/// A vSphere-style session API (the test server's `/session/...`) through URLSession: the
/// header and the verdict come from core, per the shared config.
final class SessionHttpTests: XCTestCase {
    override func setUp() {
        super.setUp()
        TestServer.reset()
    }

    private var sessionConfig: String {
        """
        {"source": {"type": "session_login",
          "credentials": {"username": "alice", "password": "wonderland"},
          "session": {
            "login": {"url": "\(TestServer.url)/session/login",
                      "json": {"username": "{{username}}", "password": "{{password}}"}},
            "token": {"json_pointer": "/session/id"},
            "lifetime_s": 900,
            "send": {"header": "vmware-api-session-id"},
            "logout": {"url": "\(TestServer.url)/session/logout", "authenticated": true},
            "expired": {"statuses": [401], "body_contains": ["INVALID_SESSION"]}}}}
        """
    }

    func testTheSessionHeaderComesFromCoreAndAnEndedSessionIsRetriedOnce() async throws {
        let manager = try TokenManager.fromConfig(config: sessionConfig)
        let token = try await manager.token()
        let header = try XCTUnwrap(manager.requestHeader(token: token))
        XCTAssertEqual(header.name, "vmware-api-session-id")
        XCTAssertEqual(header.value.expose(), token.value.expose())

        let resource = URLRequest(url: URL(string: "\(TestServer.url)/session/resource")!)
        let (_, first) = try await manager.data(for: resource)
        XCTAssertEqual(first.statusCode, 200)
        XCTAssertEqual(TestServer.stat("session_logins"), 1)

        // The server ends every session: one 401 INVALID_SESSION, a new login, one retry.
        TestServer.control(#"{"revoke_all": true}"#)
        let (_, retried) = try await manager.data(for: resource)
        XCTAssertEqual(retried.statusCode, 200)
        XCTAssertEqual(TestServer.stat("session_logins"), 2)

        // A 401 that is not the configured expiry is the application's business.
        let current = try await manager.token()
        XCTAssertFalse(manager.judgeResponse(generation: current.generation, status: 401, headers: [],
                                             bodyPrefix: Data("NO_PERMISSION".utf8)))

        try await manager.revoke()
        XCTAssertEqual(TestServer.stat("session_logouts"), 1)
    }

    /// examples/profiles/vsphere.json (copied into the chroot by scripts/test-swift),
    /// pointed at the test server, credentials inline.
    private func vsphereProfile() throws -> String {
        let dir = try XCTUnwrap(ProcessInfo.processInfo.environment["TOKENLEASE_PROFILES"])
        let profile = try String(contentsOfFile: dir + "/vsphere.json", encoding: .utf8)
        return profile.replacingOccurrences(of: "https://vcenter.example", with: TestServer.url)
            .replacingOccurrences(of: #"{"env": "VSPHERE_USER"}"#, with: #""alice""#)
            .replacingOccurrences(of: #"{"env": "VSPHERE_PASSWORD"}"#, with: #""wonderland""#)
    }

    func testTheVSphereProfileLogsInWithBasicAuthSaysWhoseSessionItIsRetriesOnceAndLogsOut() async throws {
        let manager = try TokenManager.fromConfig(config: try vsphereProfile())
        let vms = URLRequest(url: URL(string: "\(TestServer.url)/api/vcenter/vm")!)
        let (body, first) = try await manager.data(for: vms)
        XCTAssertEqual(first.statusCode, 200)
        XCTAssertTrue(String(decoding: body, as: UTF8.self).contains("vm-42"))
        let info = try await manager.sessionInfo()
        XCTAssertTrue(info.contains("alice"), info)
        TestServer.control(#"{"revoke_all": true}"#)
        let (_, retried) = try await manager.data(for: vms)
        XCTAssertEqual(retried.statusCode, 200)
        XCTAssertEqual(TestServer.stat("session_logins"), 2)
        try await manager.revoke()
        XCTAssertEqual(TestServer.stat("session_logouts"), 1)
    }
}
