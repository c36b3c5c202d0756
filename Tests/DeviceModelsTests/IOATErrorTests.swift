import DeviceModels
import Hardware
import Platform
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// One error class: how to break descriptor 1 (descriptor 0 is a good NULL), and the CHANERR bit.
struct ErrorCase: Sendable, CustomTestStringConvertible {
    let name: String
    let bit: IOAT.ChanErr
    let profile: String
    /// Breaks slot 1 of the ring; gets the ring, a good source and destination, and a read-only buffer.
    let breakIt: @Sendable (borrowing Ring, UInt64, UInt64, UInt64, Int) -> Void
    var testDescription: String { name }
}

let errorCases: [ErrorCase] = [
    ErrorCase(name: "NULL with size 0 → DXSERR", bit: .transferSize, profile: "skx") { r, _, _, _, _ in
        r.set(1, size: 0, control: IOAT.DescriptorControl.null | CW)
    },
    ErrorCase(name: "size > 2^XFERCAP → DXSERR", bit: .transferSize, profile: "skx") { r, s, d, _, max in
        r.copy(1, max + 1, src: s, dst: d, CW)
    },
    ErrorCase(name: "misaligned next → DERR", bit: .descriptor, profile: "skx") { r, s, d, _, _ in
        r.setNext(0, r.iova(1) + 8)
    },
    ErrorCase(name: "unmapped next descriptor → NDADDERR", bit: .nextDescriptorAddress, profile: "skx") { r, _, _, _, _ in
        r.setNext(0, 0x40)
    },
    ErrorCase(name: "unmapped source → XSADDERR", bit: .sourceAddress, profile: "skx") { r, _, d, _, _ in
        r.copy(1, 64, src: 0x1000, dst: d, CW)
    },
    ErrorCase(name: "FreeBSD's 0xFFFF_0000_0000_0000 destination → XDADDERR", bit: .destinationAddress, profile: "skx") { r, s, _, _, _ in
        r.copy(1, 64, src: s, dst: 0xFFFF_0000_0000_0000, CW)
    },
    ErrorCase(name: "source running off its mapping → RDERR", bit: .readData, profile: "icx") { r, s, d, _, _ in
        r.copy(1, 8192, src: s + 4096 - 64, dst: d, CW)
    },
    ErrorCase(name: "read-only destination → WDERR", bit: .writeData, profile: "icx") { r, s, _, ro, _ in
        r.copy(1, 64, src: s, dst: ro, CW)
    },
    ErrorCase(name: "unknown opcode → DCERR", bit: .descriptorControl, profile: "skx") { r, s, d, _, _ in
        r.set(1, size: 64, control: 0x87 << 24 | CW, src: s, dst: d)
    },
    ErrorCase(name: "FILL without BFILL (TBG) → DCERR", bit: .descriptorControl, profile: "tbg") { r, _, d, _, _ in
        r.fill(1, 64, pattern: 1, dst: d, CW)
    },
]

@Suite("CBDMA model: errors")
struct IOATErrorTests {
    @Test("Each error class halts with its CHANERR bit, HALTED completion, error interrupt", arguments: errorCases)
    func errorClass(_ e: ErrorCase) throws {
        let rig = IOATRig(e.profile)
        let ring = try Ring(rig, count: 8)
        let comp = try Completion(rig)
        let src = try rig.allocate(4096), dst = try rig.allocate(4096)
        // A read-only page mapped straight into the IOMMU.
        let ro = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 4096)
        defer { ro.deallocate() }
        try rig.iommu.map(ro, length: 4096, iova: 0x7000_0000, access: .read)
        let event = try EventFD()
        try rig.device.routeInterrupts(start: 0, eventFDs: [event.rawValue])
        rig.bar.write8(IOAT.INTRCTRL, 0x09)
        rig.start(ring: ring.base, completion: comp.iova,
                  control: [.anyErrAbortEnable, .errCompletionEnable, .errIntEnable])  // no INT_REARM
        ring.null(0, CW)
        e.breakIt(ring, src.iova, dst.iova, 0x7000_0000, rig.profile.maximumTransferSize)
        ring.null(2, CW)
        rig.doorbell(3)
        rig.device.runUntilIdle()
        #expect(rig.chanerr() == e.bit)
        #expect(rig.state() == .halted)
        #expect(comp.value == ring.iova(0) | 3, "completion stays at the last good descriptor, state HALTED")
        #expect(rig.bar.read32(rig.ch + IOAT.CHANSTS) == UInt32(truncatingIfNeeded: ring.iova(0)) | 3)
        #expect(event.consume() == 1, "ERR_INT_EN interrupts without INT_REARM")
        #expect(rig.bar.read32(IOAT.ATTNSTATUS) == 1)
        if rig.profile.cbver < 0x33 {
            #expect(rig.device.config.read32(IOAT.configCHANERR_INT) == e.bit.rawValue)
        }
        // Halted: further doorbells do nothing.
        rig.doorbell(4)
        #expect(!rig.device.step())
        #expect(rig.state() == .halted)
    }

    @Test("A failure of the first descriptor leaves the completion address 0 (restart artefact)")
    func firstDescriptorFails() throws {
        let rig = IOATRig("icx")
        let ring = try Ring(rig, count: 4)
        let comp = try Completion(rig)
        rig.start(ring: ring.base, completion: comp.iova)
        ring.copy(0, 64, src: 0x1000, dst: 0x2000, CW)
        rig.doorbell(1)
        rig.device.runUntilIdle()
        #expect(comp.value == 3)
        #expect(rig.chansts() == 3)
        #expect(rig.chanerr() == .sourceAddress)
    }

    @Test("Unmapped or misaligned CHAINADDR → CHADDERR; unmapped completion area → CMPADDERR")
    func chainAndCompletion() throws {
        do {
            let rig = IOATRig("icx")
            let comp = try Completion(rig)
            let ring = try Ring(rig, count: 4)
            rig.start(ring: ring.base + 0x20, completion: comp.iova)
            rig.doorbell(1)
            rig.device.runUntilIdle()
            #expect(rig.chanerr() == .chainAddress)
            #expect(comp.value == 3)
        }
        do {
            let rig = IOATRig("icx")
            let ring = try Ring(rig, count: 4)
            rig.start(ring: ring.base, completion: 0x5000)
            ring.null(0, CW)
            rig.doorbell(1)
            rig.device.runUntilIdle()
            #expect(rig.chanerr() == .completionAddress)
            #expect(rig.state() == .halted)
        }
    }

    @Test("Injected failure of descriptor N; CHANERR_MASK hides a class; no ANY_ERR_ABORT_EN skips")
    func injectedAndMasked() throws {
        let rig = IOATRig("icx")
        let ring = try Ring(rig, count: 8)
        let comp = try Completion(rig)
        rig.start(ring: ring.base, completion: comp.iova)
        for i in 0..<6 { ring.null(i, CW) }
        rig.device.inject(.failDescriptor(index: 2, error: .readData))
        rig.doorbell(6)
        rig.device.runUntilIdle()
        #expect(rig.chanerr() == .readData)
        #expect(comp.value == ring.iova(1) | 3)
        #expect(rig.device.statistics.descriptorsExecuted == 3)
        #expect(rig.chansts() & (IOAT.ChanSts.unaffiliatedError | IOAT.ChanSts.softError) == 0)

        // An unaffiliated error also shows in CHANSTS bit 3.
        rig.reset()
        rig.chanctrl([.anyErrAbortEnable, .errCompletionEnable])
        rig.write64(IOAT.CHANCMP, comp.iova)
        rig.write64(IOAT.CHAINADDR, ring.base)
        rig.device.inject(.failDescriptor(index: 0, error: .unaffiliated))
        rig.doorbell(1)
        rig.device.runUntilIdle()
        #expect(rig.chansts() == IOAT.ChanSts.unaffiliatedError | 3)
        rig.bar.write32(rig.ch + IOAT.CHANERR, rig.bar.read32(rig.ch + IOAT.CHANERR))

        // Masked: the same failure is ignored and the chain completes.
        rig.reset()
        rig.bar.write32(rig.ch + IOAT.CHANERR_MASK, IOAT.ChanErr.readData.rawValue)
        rig.chanctrl([.anyErrAbortEnable, .errCompletionEnable])
        rig.write64(IOAT.CHANCMP, comp.iova)
        rig.write64(IOAT.CHAINADDR, ring.base)
        rig.device.inject(.failDescriptor(index: 1, error: .readData))
        rig.doorbell(3)
        rig.device.runUntilIdle()
        #expect(rig.chanerr().isEmpty)
        #expect(comp.value == ring.iova(2) | 1)

        // No ANY_ERR_ABORT_EN: recorded, SOFT_ERR, skipped, the rest runs.
        rig.reset()
        rig.bar.write32(rig.ch + IOAT.CHANERR_MASK, 0)
        rig.chanctrl([.errCompletionEnable])
        rig.write64(IOAT.CHANCMP, comp.iova)
        rig.write64(IOAT.CHAINADDR, ring.base)
        rig.device.inject(.failDescriptor(index: 1, error: .writeData))
        rig.doorbell(3)
        rig.device.runUntilIdle()
        #expect(rig.chanerr() == .writeData)
        #expect(rig.state() == .done)
        #expect(rig.chansts() & IOAT.ChanSts.softError != 0)
        #expect(comp.address == ring.iova(2))
    }
}
