import DeviceModels
import Hardware
@testable import IOAT
import NetDMA
import Platform
import Testing

/// Regression: a fault that halted a CBDMA channel keeps its cause across PowerDown/PowerUp
/// (the power-down reset clears CHANERR; in D3hot CHANERR reads all-ones).
@Suite("IOAT fault across a power cycle")
struct IOATPowerFaultTests {
    @Test("the decoded CHANERR survives PowerDown (D3hot) and PowerUp until the client's Start")
    func faultSurvivesPowerCycle() throws {
        let r = try IOATRegistered("icx")
        let src = try r.rig.buffer(8192), dst = try r.rig.buffer(8192)
        for i in 0..<3 { IOATChain.copy(r.pool, i, from: src.iova(at: i * 1024), to: dst.iova(at: i * 1024), 1024) }
        r.rig.device.inject(.failDescriptor(index: 1, error: .readData))
        try r.channel.start(IOATChain.link(r.pool, 0..<3, counted: true))
        #expect(ioatWait { r.channel.state == .halted })
        let before = try #require(r.channel.fault)
        #expect(before.rawValue == UInt64(IOAT.ChanErr.readData.rawValue))
        try r.rig.provider.powerDown()
        #expect(r.rig.device.config.read32(0x94) & 3 == 3, "PMCSR: D3hot")
        #expect(r.channel.fault == before, "while powered down: the kept fault, never all-ones")
        do { try r.channel.abort(); Issue.record("Abort reached a powered-down channel") } catch {
            #expect(error.code == .invalidState)
        }
        try r.rig.provider.powerUp()
        #expect(r.channel.state == .halted, "PowerUp does not re-Start a halted channel")
        #expect(r.channel.fault == before, "the reset at power-down did not lose the cause")
        // The client's Start clears it.
        try r.channel.start(IOATChain.link(r.pool, 2..<3, counted: true))
        #expect(r.waitCompleted(r.pool.iova(at: 2)))
        #expect(r.channel.fault == nil)
    }

    @Test("a fault read racing PowerDown's reset (CHANERR reads 0 after the powered check) is the kept one, not nil")
    func faultReadRacingPowerDownReset() throws {
        // No interrupts: nothing but this test reads CHANERR, so the fault is not yet kept.
        let r = try IOATRegistered("icx", interrupts: false)
        let src = try r.rig.buffer(8192), dst = try r.rig.buffer(8192)
        for i in 0..<3 { IOATChain.copy(r.pool, i, from: src.iova(at: i * 1024), to: dst.iova(at: i * 1024), 1024) }
        r.rig.device.inject(.failDescriptor(index: 1, error: .readData))
        try r.channel.start(IOATChain.link(r.pool, 0..<3, counted: true))
        #expect(ioatWait { r.channel.state == .halted })
        let engine = r.rig.provider.channels[r.channel.index]
        // The client's `fault` has seen the function powered; before its CHANERR read lands,
        // PowerDown keeps the fault and resets the channel (CHANERR is 0 afterwards, still D0).
        let chanerr = IOAT.channelBase(r.channel.index) + IOAT.CHANERR
        r.rig.bar.beforeNextRead32(of: chanerr) {
            do { try engine.powerDown() } catch { Issue.record("PowerDown failed: \(error)") }
        }
        let seen = r.channel.fault
        #expect(r.rig.bar.base.read32(chanerr) == 0, "PowerDown's reset ran before the client's CHANERR read")
        #expect(seen?.rawValue == UInt64(IOAT.ChanErr.readData.rawValue), "the cause survives the race: \(String(describing: seen))")
        try engine.powerUp(contextLost: false)
        #expect(r.channel.fault == seen)
    }
}
