// swift-tools-version: 6.1
//
// NetDMA for Linux: Microsoft's NetDMA provider model over VFIO, for Intel CBDMA (I/OAT) and
// DSA engines, with register-level device models for machines without an engine.
//
// Layers (bottom to top):
//   CVFIO, CPCI, CNUMA   C shims and system libraries (ioctls, volatile MMIO, barriers, libpci, libnuma)
//   Hardware             register maps, descriptor layouts and device-ID tables, one file per engine
//   Platform             RegisterIO, DMA memory and address spaces, eventfds, CPU/NUMA, PCI discovery
//   VFIO                 container, group, device, regions, IRQs, DMA map (kernel IOMMU)
//   DeviceModels         MockIOATDevice, MockDSADevice and the in-process IOMMU they share
//   NetDMA               the NetDMA interface: registry, provider protocol, channels, CopyQueue
//   IOAT, DSA, Edu       providers, one engine family each, generic over RegisterIO
//   NetDMAEngines        the facade clients link: open engines (VFIO or model), DMA memory, channels
//   NetDMATool           the `netdma` command-line tool (a client of NetDMAEngines)
//   CNetDMA, NetDMAC     the C ABI (include/netdma.h, libnetdma.so) over NetDMAEngines
import PackageDescription

let swiftSettings: [SwiftSetting] = [
    .swiftLanguageMode(.v6),
    .enableExperimentalFeature("Lifetimes"),
]

let package = Package(
    name: "netdma",
    products: [
        .library(name: "NetDMAEngines", targets: ["NetDMAEngines"]),
        .library(name: "NetDMA", targets: ["NetDMA"]),
        .library(name: "IOAT", targets: ["IOAT"]),
        .library(name: "DSA", targets: ["DSA"]),
        .library(name: "Edu", targets: ["Edu"]),
        .library(name: "VFIO", targets: ["VFIO"]),
        .library(name: "Platform", targets: ["Platform"]),
        .library(name: "DeviceModels", targets: ["DeviceModels"]),
        .library(name: "Hardware", targets: ["Hardware"]),
        .executable(name: "netdma", targets: ["NetDMATool"]),
        // libnetdma.so for C and C++ clients (the product name `netdma` is the CLI's; the file
        // is libnetdma-c.so in .build and is installed as libnetdma.so by Scripts/install).
        .library(name: "netdma-c", type: .dynamic, targets: ["NetDMAC"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-system", from: "1.8.1"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
    ],
    targets: [
        .systemLibrary(name: "CVFIO", path: "Sources/CVFIO"),
        .systemLibrary(name: "CPCI", path: "Sources/CPCI", pkgConfig: "libpci", providers: [.apt(["libpci-dev"])]),
        .systemLibrary(name: "CNUMA", path: "Sources/CNUMA", pkgConfig: "numa", providers: [.apt(["libnuma-dev"])]),

        .target(name: "Hardware", swiftSettings: swiftSettings),
        .target(
            name: "Platform",
            dependencies: ["CVFIO", "CPCI", "CNUMA", "Hardware", .product(name: "SystemPackage", package: "swift-system")],
            swiftSettings: swiftSettings),
        .target(
            name: "VFIO",
            dependencies: ["CVFIO", "Platform", .product(name: "SystemPackage", package: "swift-system")],
            swiftSettings: swiftSettings),
        .target(name: "DeviceModels", dependencies: ["Platform", "Hardware", "CVFIO"], swiftSettings: swiftSettings),
        .target(name: "NetDMA", dependencies: ["Platform", "CVFIO"], swiftSettings: swiftSettings),
        .target(name: "IOAT", dependencies: ["NetDMA", "Platform", "Hardware", "CVFIO"], swiftSettings: swiftSettings),
        .target(name: "DSA", dependencies: ["NetDMA", "Platform", "Hardware", "CVFIO"], swiftSettings: swiftSettings),
        .target(name: "Edu", dependencies: ["NetDMA", "Platform", "Hardware", "CVFIO"], swiftSettings: swiftSettings),
        .target(
            name: "NetDMAEngines",
            dependencies: ["NetDMA", "IOAT", "DSA", "VFIO", "Platform", "DeviceModels", "Hardware"],
            swiftSettings: swiftSettings),
        .executableTarget(
            name: "NetDMATool",
            dependencies: [
                "NetDMAEngines", "NetDMA", "IOAT", "DSA", "Edu", "VFIO", "Platform", "DeviceModels", "Hardware", "CVFIO",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: swiftSettings),
        // The C ABI: netdma.h (shared with the Swift side, which implements its functions with
        // `@c @implementation`) and the thread-local last error, in C.
        .target(name: "CNetDMA"),
        // Its Swift implementation, linked into libnetdma.so with the Swift runtime inside
        // (-static-stdlib: no Swift .so needed at run time) and only `netdma_*` exported.
        .target(
            name: "NetDMAC",
            dependencies: ["CNetDMA", "NetDMAEngines"],
            exclude: ["netdma.map"],
            // LLVM would merge the enqueue entry points (same shape) into one that calls
            // CopyQueue through a function pointer: a call and an indirect call more per op.
            swiftSettings: swiftSettings + [.unsafeFlags(["-Xfrontend", "-disable-llvm-merge-functions-pass"])],
            linkerSettings: [.unsafeFlags([
                "-static-stdlib",
                "-Xlinker", "--version-script=\(Context.packageDirectory)/Sources/NetDMAC/netdma.map",
                "-Xlinker", "-soname=libnetdma.so.0",
            ])]),
        // The README's library example, compiled and run by NetDMAEnginesTests.
        .executableTarget(name: "CopyExample", dependencies: ["NetDMAEngines"], path: "Examples/swift/Copy",
                          swiftSettings: swiftSettings),
        // libFuzzer harness (Scripts/fuzz builds it with -sanitize=fuzzer); a corpus replayer otherwise.
        .executableTarget(
            name: "NetDMAFuzz",
            dependencies: ["NetDMA", "IOAT", "DSA", "DeviceModels", "Platform", "Hardware"],
            swiftSettings: swiftSettings),

        .testTarget(name: "HardwareTests", dependencies: ["Hardware"], swiftSettings: swiftSettings),
        .testTarget(name: "PlatformTests", dependencies: ["Platform", "Hardware", "CVFIO"], swiftSettings: swiftSettings),
        .testTarget(name: "VFIOTests", dependencies: ["VFIO", "Platform", "CVFIO"], swiftSettings: swiftSettings),
        .testTarget(name: "DeviceModelsTests", dependencies: ["DeviceModels", "Platform", "Hardware"], swiftSettings: swiftSettings),
        .testTarget(name: "NetDMATests", dependencies: ["NetDMA", "Platform", "DeviceModels"], swiftSettings: swiftSettings),
        .testTarget(
            name: "ProviderTests",
            dependencies: ["NetDMA", "IOAT", "DSA", "Edu", "DeviceModels", "Platform", "Hardware"],
            swiftSettings: swiftSettings),
        .testTarget(name: "NetDMAToolTests", dependencies: ["NetDMATool", "NetDMAEngines"], swiftSettings: swiftSettings),
        .testTarget(name: "NetDMAEnginesTests", dependencies: ["NetDMAEngines", "DeviceModels", "Hardware", "CopyExample"],
                    swiftSettings: swiftSettings),
        // Drives libnetdma-c.so from C programs (C/) and checks the header against NetDMA.
        .testTarget(name: "NetDMACTests", dependencies: ["CNetDMA", "NetDMA"], exclude: ["C"], swiftSettings: swiftSettings),
        .testTarget(name: "VMTests", dependencies: ["VFIO", "Platform", "NetDMA", "Edu", "Hardware", "CVFIO"], swiftSettings: swiftSettings),
    ]
)
