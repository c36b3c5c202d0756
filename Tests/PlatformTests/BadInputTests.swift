import Glibc
import Hardware
import SystemPackage
import Testing
@testable import Platform

// One test per row of the README's "Bad input" table that concerns DMA memory (rows P1–P5) and the
// environment (rows E1–E7): the error code, and that the message says what to do.

/// An address space whose IOMMU aperture is one small window (as a narrow DMA mask gives).
private final class NarrowSpace: DMAAddressSpace, @unchecked Sendable {
    let validIOVARanges: [ClosedRange<UInt64>] = [0x10_0000...0x1F_FFFF]
    func map(_ address: UnsafeMutableRawPointer, length: Int, iova: UInt64, access: DMAAccess) throws(DriverError) {}
    func unmap(iova: UInt64, length: Int) throws(DriverError) {}
}

private func expectError(_ code: DriverError.Code, mentioning words: [String] = [],
                         _ body: () throws -> Void, sourceLocation: SourceLocation = #_sourceLocation) {
    do {
        try body()
        Issue.record("expected \(code), got success", sourceLocation: sourceLocation)
    } catch {
        guard let error = error as? DriverError else {
            Issue.record("expected a DriverError, got \(error)", sourceLocation: sourceLocation)
            return
        }
        #expect(error.code == code, "\(error)", sourceLocation: sourceLocation)
        for w in words { #expect(error.message.contains(w), "message: \(error.message)", sourceLocation: sourceLocation) }
    }
}

@Suite("Bad input: DMA memory")
struct MemoryBadInputTests {
    let memory = DMAMemory(spaces: [NarrowSpace()], policy: .allocate(in: 0x10_0000...0x1F_FFFF), preferHugePages: false)

    @Test("P1 a buffer of zero or negative length, or on a NUMA node that does not exist")
    func allocation() {
        expectError(.invalidArgument, mentioning: ["positive"]) { _ = try memory.allocate(length: 0) }
        expectError(.invalidArgument, mentioning: ["positive"]) { _ = try memory.allocate(length: -4096) }
        expectError(.invalidArgument, mentioning: ["does not exist"]) { _ = try memory.allocate(length: 4096, node: 4000) }
    }

    @Test("P2 registering zero bytes, or memory that overlaps a registered region")
    func registration() throws {
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let p = UnsafeMutableRawPointer.allocate(byteCount: 2 * page, alignment: page)
        defer { p.deallocate() }
        expectError(.invalidArgument, mentioning: ["positive"]) { _ = try memory.register(p, length: 0) }
        _ = try memory.register(p, length: page)
        expectError(.invalidMapping, mentioning: ["overlaps"]) { _ = try memory.register(p + 16, length: 64) }
        try memory.unregister(p)
    }

    @Test("P3 unregistering memory twice (or memory never registered)")
    func unregisterTwice() throws {
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let p = UnsafeMutableRawPointer.allocate(byteCount: page, alignment: page)
        defer { p.deallocate() }
        _ = try memory.register(p, length: page)
        try memory.unregister(p)
        expectError(.unmappedAddress, mentioning: ["not inside"]) { try memory.unregister(p) }
    }

    @Test("P4 IOVA = VA when the virtual address lies outside the IOMMU's aperture")
    func identityOutsideAperture() {
        let identity = DMAMemory(spaces: [NarrowSpace()], policy: .identity, preferHugePages: false)
        expectError(.invalidMapping, mentioning: ["IOVAPolicy.allocate"]) { _ = try identity.allocate(length: 4096) }
    }

    @Test("P5 more DMA memory than the IOVA range holds")
    func iovaSpaceExhausted() throws {
        let first = try memory.allocate(length: 0x10_0000)
        expectError(.invalidMapping, mentioning: ["No IOVA space left"]) { _ = try memory.allocate(length: 4096) }
        _ = consume first
    }
}

@Suite("Bad input: environment")
struct EnvironmentBadInputTests {
    @Test("E1 RLIMIT_MEMLOCK too low for the DMA memory asked for")
    func memlock() throws {
        let e = try #require(MemoryLock.check(length: 1 << 20, locked: 0, limit: 65536, privileged: false))
        #expect(e.code == .memlockLimit)
        #expect(e.message.contains("ulimit -l"))
        #expect(MemoryLock.check(length: 1 << 20, locked: 0, limit: 65536, privileged: true) == nil, "CAP_IPC_LOCK ignores the limit")
    }

    @Test("E2 the IOMMU is off (the device has no IOMMU group)")
    func noIOMMU() throws {
        let tree = try FakeSysfsTree()
        try tree.addDevice(ioatBDF, id: PCIID(vendor: 0x8086, device: 0x2021), driver: "vfio-pci")
        let d = makeDiscovery(tree)
        let problem = try #require(d.readiness(of: try d.device(at: ioatBDF)).problem)
        #expect(problem.code == .noIOMMU && problem.message.contains("intel_iommu=on"))
    }

    @Test("E3 the engine is bound to its kernel driver, not vfio-pci")
    func wrongDriver() throws {
        let tree = try FakeSysfsTree()
        try tree.addDevice(ioatBDF, id: PCIID(vendor: 0x8086, device: 0x2021), driver: "ioatdma", iommuGroup: 3)
        let d = makeDiscovery(tree)
        let problem = try #require(d.readiness(of: try d.device(at: ioatBDF)).problem)
        #expect(problem.code == .wrongDriver && problem.message.contains("netdma bind 0000:00:04.0"))
    }

    @Test("E4 the IOMMU group also holds a device bound to another driver")
    func groupNotViable() throws {
        let tree = try FakeSysfsTree()
        try tree.addDevice(ioatBDF, id: PCIID(vendor: 0x8086, device: 0x2021), driver: "vfio-pci", iommuGroup: 3, vfioNode: true)
        try tree.addDevice(PCIAddress("0000:00:04.1")!, id: PCIID(vendor: 0x8086, device: 0x2021), driver: "ioatdma", iommuGroup: 3)
        let d = makeDiscovery(tree)
        let problem = try #require(d.readiness(of: try d.device(at: ioatBDF)).problem)
        #expect(problem.code == .groupNotViable && problem.message.contains("0000:00:04.1"))
    }

    @Test("E5 no permission for /dev/vfio (not root, no udev rule)")
    func permission() {
        let e = DriverError.systemCall("open", .permissionDenied, "/dev/vfio/3")
        #expect(e.code == .permissionDenied && e.message.contains("udev/60-netdma-vfio.rules"))
        let p = PCIDiscovery.permissionProblem("/dev/vfio/3")
        #expect(p.code == .permissionDenied && p.message.contains("vfio"))
    }

    @Test("E6 vfio-pci is not available when binding")
    func noVFIOPCI() throws {
        let tree = try FakeSysfsTree()
        try tree.addDevice(ioatBDF, id: PCIID(vendor: 0x8086, device: 0x2021), driver: "ioatdma", iommuGroup: 3)
        expectError(.unsupported, mentioning: ["modprobe vfio-pci"]) { _ = try makeDiscovery(tree).bindToVFIO(ioatBDF) }
    }

    @Test("E7 a PCI address with no device behind it")
    func noDevice() throws {
        let tree = try FakeSysfsTree()
        expectError(.notFound, mentioning: ["netdma list --all"]) { _ = try makeDiscovery(tree).device(at: ioatBDF) }
    }
}
