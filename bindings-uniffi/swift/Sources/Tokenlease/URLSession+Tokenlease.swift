import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

extension TokenManager {
    /// Sends `request` with this manager's token (in the header the configuration names)
    /// and, when core judges the response a rejection of that token (401 `invalid_token`, a
    /// session's `INVALID_SESSION`, ... per the configuration), sends it once more with the
    /// new token. Requests with a body stream are not retried.
    public func data(for request: URLRequest, session: URLSession = .shared) async throws -> (Data, HTTPURLResponse) {
        let first = try await token()
        var (data, response) = try await Self.send(try authorized(request, first), session)
        // A DPoP server asking for a fresh nonce (core decides): the same token once more,
        // with a new proof.
        if dpopResend(token: first, url: request.url?.absoluteString ?? "", status: response.statusCode,
                      headers: Self.headers(of: response)),
           request.httpBodyStream == nil {
            (data, response) = try await Self.send(try authorized(request, first), session)
        }
        guard rejects(response, data, first), request.httpBodyStream == nil else { return (data, response) }
        return try await Self.send(try authorized(request, try await token()), session)
    }

    private func authorized(_ request: URLRequest, _ token: TokenInfo) throws -> URLRequest {
        var request = request
        if let header = try requestHeader(token: token) {
            request.setValue(header.value.expose(), forHTTPHeaderField: header.name)
        }
        if let body = request.httpBody, let text = String(data: body, encoding: .utf8),
           let placed = authorizeBody(token: token, body: text) {
            request.httpBody = Data(placed.expose().utf8)
        }
        if let url = request.url?.absoluteString,
           let proof = try dpopProof(token: token, method: request.httpMethod ?? "GET", url: url) {
            request.setValue(proof.expose(), forHTTPHeaderField: "DPoP")
        }
        return request
    }

    private static func headers(of response: HTTPURLResponse) -> [ResponseHeader] {
        response.allHeaderFields.compactMap { name, value -> ResponseHeader? in
            guard let name = name as? String else { return nil }
            return ResponseHeader(name: name, value: "\(value)")
        }
    }

    /// Core judges every response: a rejection, or a use (sliding sessions, reported lifetimes).
    private func rejects(_ response: HTTPURLResponse, _ data: Data, _ token: TokenInfo) -> Bool {
        let prefix = needsResponseBody(status: response.statusCode) ? data.prefix(64 * 1024) : Data()
        return judgeResponse(generation: token.generation, status: response.statusCode,
                             headers: Self.headers(of: response), bodyPrefix: prefix)
    }

    private static func send(_ request: URLRequest, _ session: URLSession) async throws -> (Data, HTTPURLResponse) {
        try await withCheckedThrowingContinuation { continuation in
            session.dataTask(with: request) { data, response, error in
                if let error {
                    continuation.resume(throwing: error)
                } else if let response = response as? HTTPURLResponse {
                    continuation.resume(returning: (data ?? Data(), response))
                } else {
                    continuation.resume(throwing: URLError(.badServerResponse))
                }
            }.resume()
        }
    }
}
