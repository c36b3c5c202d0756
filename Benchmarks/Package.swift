// swift-tools-version: 6.1
//
// Benchmarks for the NetDMA package, kept out of the root package so that CI's test build does
// not pay for ordo-one/benchmark and its dependencies.
//
//   CopyQueueBench   ordo-one/benchmark: enqueue+submit+poll on the device models, counting
//                    mallocs and retains, with checked-in thresholds (Thresholds/)
//   netdma-peer      the NetDMA side of Scripts/peer-bench (the DPDK dma_skeleton comparison)
//   BenchRig         a model opened through NetDMAEngines and a CopyQueue, shared by both
import PackageDescription

let swiftSettings: [SwiftSetting] = [.swiftLanguageMode(.v6)]

let package = Package(
    name: "netdma-benchmarks",
    products: [.executable(name: "netdma-peer", targets: ["NetDMAPeer"])],
    dependencies: [
        .package(name: "netdma", path: "../"),
        .package(url: "https://github.com/ordo-one/benchmark", from: "1.38.1", traits: ["MallocInterposer"]),
    ],
    targets: [
        .target(name: "CBenchSupport"),
        .target(
            name: "BenchRig",
            dependencies: [
                "CBenchSupport",
                .product(name: "NetDMAEngines", package: "netdma"),
                .product(name: "DSA", package: "netdma"),
            ],
            swiftSettings: swiftSettings),
        .executableTarget(name: "NetDMAPeer", dependencies: ["BenchRig", "CBenchSupport"], swiftSettings: swiftSettings),
        .executableTarget(
            name: "CopyQueueBench",
            dependencies: ["BenchRig", .product(name: "Benchmark", package: "benchmark")],
            path: "Benchmarks/CopyQueueBench",
            swiftSettings: swiftSettings,
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]),
    ]
)
