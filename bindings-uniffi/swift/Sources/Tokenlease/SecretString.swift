/// A secret string: a token value or a refresh token. Printing, `dump` and string
/// interpolation never show it, so a `TokenInfo` or `FetchedToken` can be logged; read the
/// value with `expose()` where it is sent (an `Authorization` header).
public struct SecretString: Hashable, Sendable, CustomStringConvertible, CustomDebugStringConvertible,
    CustomReflectable
{
    private let value: String

    public init(_ value: String) { self.value = value }

    /// The secret value itself.
    public func expose() -> String { value }

    public var description: String { "SecretString([redacted])" }
    public var debugDescription: String { description }
    public var customMirror: Mirror { Mirror(self, children: [:]) }

    /// Constant-time comparison of equal-length values, so equality checks do not leak the
    /// value by timing.
    public static func == (lhs: SecretString, rhs: SecretString) -> Bool {
        let left = Array(lhs.value.utf8)
        let right = Array(rhs.value.utf8)
        guard left.count == right.count else { return false }
        var difference: UInt8 = 0
        for index in left.indices { difference |= left[index] ^ right[index] }
        return difference == 0
    }

    public func hash(into hasher: inout Hasher) { hasher.combine(value) }
}
