// swift-tools-version:5.9
// The Swift binding of tokenlease. Sources/Tokenlease/Tokenlease.swift and
// Sources/TokenleaseFFI/{TokenleaseFFI.h,module.modulemap} are generated from the built
// library by the workspace's uniffi-bindgen (scripts/test-swift, docs/mobile.md) and are
// never committed; next to them, Sources/Tokenlease holds the hand-written TokenManager and
// SecretString. On Apple platforms the library comes as an XCFramework (docs/mobile.md).
import PackageDescription

let package = Package(
    name: "Tokenlease",
    platforms: [.macOS(.v12), .iOS(.v15)],
    products: [
        .library(name: "Tokenlease", targets: ["Tokenlease"]),
    ],
    targets: [
        // The C declarations of libtokenlease_uniffi (header + module map linking it).
        .systemLibrary(name: "TokenleaseFFI", path: "Sources/TokenleaseFFI"),
        .target(name: "Tokenlease", dependencies: ["TokenleaseFFI"], path: "Sources/Tokenlease"),
        .testTarget(name: "TokenleaseTests", dependencies: ["Tokenlease"], path: "Tests/TokenleaseTests"),
    ]
)
