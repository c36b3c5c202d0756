import DeviceModels
import Hardware
import Platform
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Submits `total` bytes as descriptors of at most 2^XFERCAP (Linux's split), compl_write on the last.
func submitCopy(_ rig: IOATRig, _ ring: borrowing Ring, head: inout Int, src: UInt64, dst: UInt64, total: Int, fill: UInt64? = nil) {
    let max = rig.profile.maximumTransferSize
    var done = 0
    while done < total {
        let n = min(max, total - done)
        let last = done + n == total
        if let fill {
            ring.fill(head, n, pattern: fill, dst: dst + UInt64(done), last ? CW : 0)
        } else {
            ring.copy(head, n, src: src + UInt64(done), dst: dst + UInt64(done), last ? CW : 0)
        }
        head += 1
        done += n
    }
    rig.doorbell(UInt16(truncatingIfNeeded: head))
}

@Suite("CBDMA model: data movement")
struct IOATDataTests {
    @Test("Copies from 1 B to 64 MiB are byte-exact (threaded engine)")
    func copies() throws {
        let rig = IOATRig("skx", execution: .thread)
        let ring = try Ring(rig, count: 1024)
        let comp = try Completion(rig)
        let size = 64 << 20
        let src = try rig.allocate(size + 64), dst = try rig.allocate(size + 64)
        fillRandom(src.base, size + 64, seed: 42)
        rig.start(ring: ring.base, completion: comp.iova)
        var head = 0
        var total = 1
        var offset = 0
        while total <= size {
            for length in [total - 1, total, total + 7] where length > 0 && length <= size {
                offset = (offset + 13) % 61
                memset(dst.base, 0xA5, min(length + 128, size + 64))
                submitCopy(rig, ring, head: &head, src: src.iova(at: offset), dst: dst.iova(at: 3), total: length)
                let last = ring.iova(head - 1)
                let deadline = ContinuousClock.now + .seconds(20)
                while comp.address != last && ContinuousClock.now < deadline { sched_yield() }
                #expect(comp.address == last, "length \(length)")
                #expect(memcmp(src.base + offset, dst.base + 3, length) == 0, "length \(length)")
                #expect(dst.base.load(fromByteOffset: 2, as: UInt8.self) == 0xA5)
                if length + 3 < size + 64 { #expect(dst.base.load(fromByteOffset: 3 + length, as: UInt8.self) == 0xA5) }
            }
            total *= 4
        }
        #expect(rig.chanerr().isEmpty)
    }

    @Test("Fills are byte-exact, pattern phase from the start of each descriptor",
          arguments: [1, 7, 8, 9, 63, 64, 65, 4095, 4096, 100_000, 3 << 20])
    func fills(_ length: Int) throws {
        let rig = IOATRig("icx")
        let ring = try Ring(rig, count: 16)
        let comp = try Completion(rig)
        let dst = try rig.allocate(length + 16)
        memset(dst.base, 0, length + 16)
        rig.start(ring: ring.base, completion: comp.iova)
        let pattern: UInt64 = 0x0123_4567_89AB_CDEF
        var head = 0
        submitCopy(rig, ring, head: &head, src: 0, dst: dst.iova(at: 5), total: length, fill: pattern)
        rig.device.runUntilIdle()
        #expect(comp.address == ring.iova(head - 1))
        var ok = true
        for i in 0..<length where dst.base.load(fromByteOffset: 5 + i, as: UInt8.self) != UInt8(truncatingIfNeeded: pattern >> UInt64(8 * (i % 8))) {
            ok = false; break
        }
        #expect(ok)
        #expect(dst.base.load(fromByteOffset: 4, as: UInt8.self) == 0)
        #expect(dst.base.load(fromByteOffset: 5 + length, as: UInt8.self) == 0)
    }

    @Test("Page-break copy and fill continue at next_src / next_dst after the 4 KiB boundary")
    func pageBreak() throws {
        let rig = IOATRig("bdx")
        let ring = try Ring(rig, count: 8)
        let comp = try Completion(rig)
        let src = try rig.allocate(4 * 4096), dst = try rig.allocate(4 * 4096)
        fillRandom(src.base, 4 * 4096, seed: 9)
        rig.start(ring: ring.base, completion: comp.iova)
        // 2 pages: source halves at page 0 and page 2; destination at page 0 + 100, continuing at page 2.
        let s0 = src.iova(at: 0), s1 = src.iova(at: 2 * 4096)
        let d0 = dst.iova(at: 100), d1 = dst.iova(at: 2 * 4096)
        ring.set(0, size: 8192, control: IOAT.DescriptorControl.sourcePageBreak | IOAT.DescriptorControl.destinationPageBreak | CW,
                 src: s0, dst: d0, nextSrc: s1, nextDst: d1)
        rig.doorbell(1)
        rig.device.runUntilIdle()
        #expect(rig.chanerr().isEmpty)
        var expected = [UInt8](repeating: 0, count: 8192)
        for i in 0..<4096 { expected[i] = src.base.load(fromByteOffset: i, as: UInt8.self) }
        for i in 0..<4096 { expected[4096 + i] = src.base.load(fromByteOffset: 2 * 4096 + i, as: UInt8.self) }
        let firstDst = 4096 - 100
        #expect(memcmp(dst.base + 100, expected, firstDst) == 0)
        expected.withUnsafeBufferPointer { e in
            #expect(memcmp(dst.base + 2 * 4096, e.baseAddress! + firstDst, 8192 - firstDst) == 0)
        }
        // Without the PB capability the same descriptor is a descriptor control error.
        var noPB = IOAT.profile(named: "icx")!
        noPB.capabilities.remove(.pageBreak)
        let iommu = SoftIOMMU()
        let memory = DMAMemory(spaces: [iommu], preferHugePages: false)
        let device = MockIOATDevice(profile: noPB, iommu: iommu, execution: .manual)
        let r2 = try memory.allocate(length: 4096)
        let p = r2.base
        p.storeBytes(of: UInt32(64), toByteOffset: 0, as: UInt32.self)
        p.storeBytes(of: IOAT.DescriptorControl.sourcePageBreak, toByteOffset: 4, as: UInt32.self)
        device.config.write16(4, 6)
        device.bar0.write64(IOAT.channelBase(0) + IOAT.CHAINADDR, r2.iova)
        device.bar0.write16(IOAT.channelBase(0) + IOAT.DMACOUNT, 1)
        device.runUntilIdle()
        #expect(device.bar0.read32(IOAT.channelBase(0) + IOAT.CHANERR) == IOAT.ChanErr.descriptorControl.rawValue)
    }
}

@Suite("CBDMA model: threaded engine under load")
struct IOATStressTests {
    @Test("200 000 small copies in batches of 1–32 with a concurrent CHANSTS reader and re-armer: none lost")
    func manySmallCopies() throws {
        let rig = IOATRig("icx", execution: .thread)
        let ring = try Ring(rig, count: 1024)
        let comp = try Completion(rig)
        let src = try rig.allocate(1 << 16), dst = try rig.allocate(1 << 16)
        fillRandom(src.base, 1 << 16, seed: 99)
        let event = try EventFD()
        try rig.device.routeInterrupts(start: 0, eventFDs: [event.rawValue])
        rig.bar.write8(IOAT.INTRCTRL, 0x09)
        rig.start(ring: ring.base, completion: comp.iova, control: [.intRearm, .anyErrAbortEnable, .errCompletionEnable])
        let bar = rig.bar, ch = rig.ch
        let stop = StopFlag()
        let noise = TestThread {
            while !stop.stopped {
                _ = bar.read64(ch + IOAT.CHANSTS)
                bar.write16(ch + IOAT.CHANCTRL, 0x1D)
            }
        }
        var head = 0, total = 0
        var x: UInt64 = 12345
        var offsets = [Int](repeating: 0, count: 32)
        while total < 200_000 {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17
            let batch = Int(x % 32) + 1
            for i in 0..<batch {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17
                offsets[i] = Int(x % 60_000)
                ring.copy(head, 64, src: src.iova(at: offsets[i]), dst: dst.iova(at: offsets[i]), (i == batch - 1 ? CW : 0) | IE)
                head += 1
            }
            bar.write16(ch + IOAT.DMACOUNT, UInt16(truncatingIfNeeded: head))
            let last = ring.iova(head - 1)
            let deadline = ContinuousClock.now + .seconds(10)
            while comp.address != last && ContinuousClock.now < deadline { sched_yield() }
            #expect(comp.address == last)
            if comp.address != last { break }
            for i in 0..<batch where memcmp(src.base + offsets[i], dst.base + offsets[i], 64) != 0 {
                Issue.record("copy \(i) of batch ending at \(head) differs")
            }
            total += batch
        }
        stop.stop()
        noise.join()
        #expect(total >= 200_000)
        #expect(rig.device.statistics.descriptorsExecuted == UInt64(head))
        #expect(rig.chanerr().isEmpty)
        #expect(event.consume() > 0)
    }
}

extension IOATStressTests {
    @Test("Threaded: SUSPEND mid-run stops after a descriptor, RESUME finishes; RESET of a running channel halts it")
    func suspendAndResetWhileRunning() throws {
        let rig = IOATRig("icx", execution: .thread)
        let ring = try Ring(rig, count: 64)
        let comp = try Completion(rig)
        let mib = 1 << 20
        let src = try rig.allocate(64 * mib), dst = try rig.allocate(64 * mib)
        fillRandom(src.base, 64 * mib, seed: 4)
        rig.start(ring: ring.base, completion: comp.iova)
        for i in 0..<64 { ring.copy(i, mib, src: src.iova(at: i * mib), dst: dst.iova(at: i * mib), CW) }
        // Hold the engine while the doorbell and the SUSPEND are posted, so that the SUSPEND
        // is pending before any copy runs however the threads are scheduled (a stall of
        // 0 µs releases it).
        rig.device.inject(.stall(microseconds: 60_000_000))
        rig.doorbell(64)
        rig.command(.suspend)
        rig.device.inject(.stall(microseconds: 0))
        let deadline = ContinuousClock.now + .seconds(10)
        while rig.state() != .suspended && rig.state() != .done && ContinuousClock.now < deadline { sched_yield() }
        let done = rig.bar.read64(rig.ch + IOAT.CHANSTS) & IOAT.ChanSts.completedDescriptorMask
        #expect(rig.state() == .suspended, "the SUSPEND was pending before the first copy")
        if done == 0 {
            #expect(comp.value == 0, "suspended before the first descriptor started")
        } else {
            let k = Int((done - ring.base) / 64)
            #expect(k < 63)
            #expect(comp.value == done | 2, "the last completion write carries SUSPENDED")
            #expect(memcmp(src.base, dst.base, (k + 1) * mib) == 0)
        }
        rig.command(.resume)
        rig.run()
        #expect(comp.value == ring.iova(63) | 1)
        #expect(memcmp(src.base, dst.base, 64 * mib) == 0)

        // RESET while ACTIVE: the bit reads 1 until the engine applied it, then HALTED.
        for i in 0..<64 { ring.copy(i, mib, src: src.iova(at: i * mib), dst: dst.iova(at: i * mib)) }
        rig.write64(IOAT.CHAINADDR, ring.base)
        rig.command(.suspend)
        rig.chanctrl([.anyErrAbortEnable])
        rig.write64(IOAT.CHANCMP, comp.iova)
        rig.write64(IOAT.CHAINADDR, ring.base)
        #expect(rig.state() == .armed)
        // As above: the RESET is posted while the engine is held, so it lands mid-chain.
        rig.device.inject(.stall(microseconds: 60_000_000))
        rig.doorbell(64)
        rig.command(.reset)
        rig.device.inject(.stall(microseconds: 0))
        var polls = 0
        while rig.bar.read8(rig.ch + IOAT.CHANCMD) & 0x20 != 0 && ContinuousClock.now < deadline + .seconds(10) { polls += 1; sched_yield() }
        #expect(rig.chansts() == 3)
        #expect(rig.device.waitUntilIdle())
        #expect(rig.device.statistics.descriptorsExecuted < 128)
    }

    @Test("Threaded: two threads writing random registers while the engine runs never crash it")
    func concurrentFuzz() throws {
        let rig = IOATRig("bdxde", execution: .thread)
        let garbage = try rig.allocate(1 << 16)
        fillRandom(garbage.base, 1 << 16, seed: 17)
        rig.enableBusMaster()
        let bar = rig.bar, base = garbage.iova
        let stop = StopFlag()
        let threads = (0..<2).map { t in
            TestThread {
                var x: UInt64 = 0xDEAD_BEEF &+ UInt64(t)
                var n = 0
                while !stop.stopped && n < 200_000 {
                    x ^= x << 13; x ^= x >> 7; x ^= x << 17
                    let offset = 0x80 + Int(x % 0x40)
                    let value = x & 1 == 0 ? base + (x >> 20) % (1 << 16) : x >> 3
                    switch (x >> 50) % 6 {
                    case 0: bar.write16(offset & ~1, UInt16(truncatingIfNeeded: value))
                    case 1: bar.write32(offset & ~3, UInt32(truncatingIfNeeded: value))
                    case 2: bar.write8(offset, UInt8(truncatingIfNeeded: value))
                    case 3: bar.write16(0x86, UInt16(truncatingIfNeeded: value))
                    default: _ = bar.read64(offset & ~7)
                    }
                    n += 1
                }
            }
        }
        for t in threads { t.join() }
        stop.stop()
        _ = rig.device.waitUntilIdle(timeout: .seconds(10))
        #expect(rig.bar.read8(IOAT.CBVER) == 0x33)
    }
}
