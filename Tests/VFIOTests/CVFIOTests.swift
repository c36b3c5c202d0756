import CVFIO
import Glibc
import Platform
import Testing
@testable import VFIO

@Suite struct CVFIOTests {
    @Test func kernelStructuresHaveTheLayoutTheSwiftCodeBuilds() {
        #expect(MemoryLayout<vfio_region_info>.size == 32)
        #expect(MemoryLayout<vfio_iommu_type1_info>.size == 24)
        #expect(MemoryLayout<vfio_iommu_type1_dma_map>.size == 32)
        #expect(MemoryLayout<vfio_iommu_type1_dma_unmap>.size == 24)
        #expect(MemoryLayout<vfio_irq_set>.size == 20)
        #expect(MemoryLayout<vfio_irq_info>.size == 16)
        #expect(MemoryLayout<vfio_group_status>.size == 8)
        #expect(MemoryLayout<vfio_region_info>.offset(of: \.cap_offset) == 12)
        #expect(VFIO_API_VERSION == 0 && VFIO_TYPE1_IOMMU == 1 && VFIO_TYPE1v2_IOMMU == 3)
        #expect(Int(VFIO_PCI_CONFIG_REGION_INDEX) == 7 && Int(VFIO_PCI_MSIX_IRQ_INDEX) == 2)
    }

    @Test func mmioAccessorsUseTheGivenWidthAtTheOffset() {
        let p = UnsafeMutableRawPointer.allocate(byteCount: 64, alignment: 64)
        defer { p.deallocate() }
        memset(p, 0, 64)
        cvfio_mmio_write64(p, 8, 0x1122_3344_5566_7788)
        #expect(cvfio_mmio_read32(p, 8) == 0x5566_7788)
        #expect(cvfio_mmio_read32(p, 12) == 0x1122_3344)
        #expect(cvfio_mmio_read16(p, 10) == 0x5566)
        #expect(cvfio_mmio_read8(p, 15) == 0x11)
        cvfio_mmio_write8(p, 8, 0xAA)
        cvfio_mmio_write16(p, 16, 0xBEEF)
        cvfio_mmio_write32(p, 20, 0xCAFE_F00D)
        #expect(cvfio_mmio_read64(p, 8) == 0x1122_3344_5566_77AA)
        #expect(cvfio_mmio_read64(p, 16) == 0xCAFE_F00D_0000_BEEF)
        cvfio_io_wmb(); cvfio_io_rmb(); cvfio_wmb(); cvfio_rmb(); cvfio_mb()
    }

    @Test func eventfdCountsSignals() throws {
        let efd = try EventFD()
        efd.signal()
        efd.signal(2)
        #expect(efd.consume() == 3)
        #expect(efd.consume() == 0)
    }

    static let hasMOVDIR64B = (Sysfs.readFile("/proc/cpuinfo") ?? "").split(separator: "\n")
        .first { $0.hasPrefix("flags") }?.split(separator: " ").contains("movdir64b") ?? false

    @Test(.enabled(if: hasMOVDIR64B, "the CPU has no MOVDIR64B"))
    func portalSubmitIsOne64ByteStore() throws {
        // The portal owns its mapping (deinit munmaps), so give it an mmapped page.
        let dst = try #require(mmap(nil, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0))
        let src = UnsafeMutableRawPointer.allocate(byteCount: 64, alignment: 64)
        defer { src.deallocate() }
        for i in 0..<64 { src.storeBytes(of: UInt8(i), toByteOffset: i, as: UInt8.self) }
        memset(dst, 0, 128)
        let portal = MappedPortal(base: dst, length: 4096)
        portal.submit64(64, src)
        #expect(memcmp(dst + 64, src, 64) == 0)
        #expect(dst.load(as: UInt64.self) == 0)
        try portal.unmap()
    }
}

/// Driver code is generic over RegisterIO; a mapped BAR must work there.
func ringDoorbell<B: RegisterIO & ~Copyable>(_ bar: borrowing B, at offset: Int) -> UInt32 {
    bar.write32(offset, bar.read32(offset) &+ 1)
    return bar.read32(offset)
}

@Suite struct MappedBARGenericTests {
    @Test func mappedBARDrivesGenericCode() throws {
        let m = try Machine()
        let device = try m.container().openDevice(engineBDF)
        let bar = try device.mapBAR(0)
        #expect(ringDoorbell(bar, at: 0x40) == 1)
        #expect(ringDoorbell(bar, at: 0x40) == 2)
        #expect(bar.read64Split(0x40) == 2)
        try bar.unmap()
    }

    @Test func outOfRangeRegisterTraps() async {
        await #expect(processExitsWith: .failure) {
            let m = try Machine()
            let device = try m.container().openDevice(engineBDF)
            let bar = try device.mapBAR(0)
            _ = bar.read32(0x4000)
        }
    }
}
