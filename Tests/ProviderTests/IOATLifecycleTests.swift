import DeviceModels
import Hardware
import IOAT
import NetDMA
import Platform
import Synchronization
import Testing

@Suite("IOAT provider lifecycle")
struct IOATLifecycleTests {
    @Test("allocation prefers the channel whose interrupt CPU is acceptable, reports the CPU, and refuses when all are taken")
    func allocation() throws {
        let rig = try IOATProviderRig("cb1", version: .v1_1)  // four channels behind one function
        try rig.provider.setChannelCPUAffinity((0..<4).map { ChannelCPUAffinity(channel: $0, cpu: 10 + $0) })
        let two = try IOATDirectChannel(rig, affinity: [12, 40])
        #expect(two.channel.index == 2 && two.cpu == 12)
        let any = try IOATDirectChannel(rig, affinity: [40, 41])
        #expect(any.channel.index == 0 && any.cpu == 40, "no interrupt CPU fits: the DPC goes to a CPU of the set")
        _ = try IOATDirectChannel(rig, affinity: [7])
        _ = try IOATDirectChannel(rig, affinity: [7])
        do {
            _ = try IOATDirectChannel(rig, affinity: [7])
            Issue.record("a fifth channel was allocated")
        } catch let e as DriverError {
            #expect(e.code == .busy)
        }
        // Free resets the channel, turns its control off, and makes it allocatable again.
        two.channel.free()
        let ch = IOAT.channelBase(2)
        #expect(rig.device.bar0.read16(ch + IOAT.CHANCTRL) == 0)
        #expect(IOAT.ChannelState(rawValue: UInt8(rig.device.bar0.read32(ch + IOAT.V1.CHANSTS) & 7)) == .halted)
        let again = try IOATDirectChannel(rig, affinity: [12])
        #expect(again.channel.index == 2)
        do {
            try rig.provider.setChannelCPUAffinity([ChannelCPUAffinity(channel: 4, cpu: 0)])
            Issue.record("an affinity entry for a channel the function does not have was accepted")
        } catch {
            #expect(error.code == .invalidArgument)
        }
    }

    @Test("register starts the provider with its attributes; deregister stops (drains, frees) and removes it")
    func registry() throws {
        let rig = try IOATProviderRig("icx")
        let registry = NetDMARegistry(drainTimeout: .seconds(2))
        let handle = try rig.provider.register(with: registry)
        let info = try #require(registry.info(handle))
        #expect(info.state == .started)
        #expect(info.attributes == rig.provider.attributes)
        #expect(info.characteristics.friendlyName == rig.provider.characteristics.friendlyName)
        let channel = try registry.allocateChannel(provider: handle, affinity: [0], priority: 20)
        #expect(rig.provider.channels[channel.index].allocated)
        // ChannelPriority → CHANCTRL bits 15:12, clamped to the field.
        let ctrl = rig.device.bar0.read16(IOAT.channelBase(channel.index) + IOAT.CHANCTRL)
        #expect(ctrl & IOAT.ChanCtrl.priorityMask == 0xF000)
        #expect(IOAT.ChanCtrl(rawValue: ctrl).isSuperset(of: [.anyErrAbortEnable, .errCompletionEnable, .errIntEnable]))
        #expect(throws: DriverError.self) { try rig.provider.register(with: registry) }
        let aborted = try rig.provider.deregister()
        #expect(aborted.isEmpty)
        #expect(registry.info(handle) == nil)
        #expect(channel.state == .freed)
        #expect(!rig.provider.channels[0].allocated)
    }

    @Test("PowerDown drains and puts the function in D3hot; PowerUp restores it and the channel continues (1.1, 2.0)",
          arguments: [("bdx", NetDMAVersion.v1_1), ("icx", .v2_0), ("bdxde", .v2_0)])
    func power(_ arg: (profile: String, version: NetDMAVersion)) throws {
        let r = try IOATRegistered(arg.profile, version: arg.version)
        let counted = r.counted
        let src = try r.rig.buffer(8192), dst = try r.rig.buffer(8192)
        src.ioatPattern(21)
        for i in 0..<4 { IOATChain.copy(r.pool, i, from: src.iova(at: i * 1024), to: dst.iova(at: i * 1024), 1024) }
        try r.channel.start(IOATChain.link(r.pool, 0..<2, counted: counted))
        try r.rig.provider.powerDown()
        #expect(r.registry.info(r.handle)?.state == .poweredDown)
        #expect(r.channel.completionWord == CompletionWord(descriptor: r.pool.iova(at: 1), status: .idle), "drained first")
        #expect(r.rig.device.config.read32(0x94) & 3 == 3, "PMCSR: D3hot")
        try r.rig.provider.powerUp()
        #expect(r.rig.device.config.read32(0x94) & 3 == 0, "PMCSR: D0")
        #expect(r.registry.info(r.handle)?.state == .started)
        // The interface re-Started the channel with a NULL descriptor; the chain continues.
        if !counted { DescriptorPool.publishNext(of: r.pool[1], r.pool.iova(at: 2)) }
        IOATChain.copy(r.pool, 3, from: src.iova(at: 3 * 1024), to: dst.iova(at: 3 * 1024), 1024,
                       [.statusUpdateOnCompletion, .interruptOnCompletion])
        let g = r.channel.interruptGeneration
        try r.channel.append(IOATChain.link(r.pool, 2..<4, counted: counted))
        #expect(r.waitCompleted(r.pool.iova(at: 3)))
        let same = dst.ioatEqual(0, src, 0, 4096)
        #expect(same)
        #expect(ioatWait { r.channel.interruptGeneration > g }, "interrupts work after the power cycle")
        #expect(r.rig.device.statistics.interruptsLost == 0)
    }

    @Test("NetDMA 1.0: after a power cycle the next Append reports lost context and the interface re-seeds the channel")
    func power10() throws {
        let r = try IOATRegistered("skx", version: .v1_0)
        let src = try r.rig.buffer(8192), dst = try r.rig.buffer(8192)
        src.ioatPattern(22)
        for i in 0..<4 { IOATChain.copy(r.pool, i, from: src.iova(at: i * 1024), to: dst.iova(at: i * 1024), 1024) }
        try r.channel.start(IOATChain.link(r.pool, 0..<2, counted: false))
        #expect(r.waitCompleted(r.pool.iova(at: 1)))
        try r.rig.provider.powerDown()
        try r.rig.provider.powerUp()
        #expect(r.rig.state() == .halted, "the engine lost its chain")
        let next = IOATChain.link(r.pool, 2..<4, counted: false)
        DescriptorPool.publishNext(of: r.pool[1], next.iova)
        try r.channel.append(next)  // contextLost inside; the channel re-Starts with a NULL descriptor
        #expect(r.waitCompleted(r.pool.iova(at: 3)))
        let same = dst.ioatEqual(0, src, 0, 4096)
        #expect(same)
    }
}
