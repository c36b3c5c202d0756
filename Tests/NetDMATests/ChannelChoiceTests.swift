import NetDMA
import Platform
import Testing

@Suite("Channel and CPU choice (netdma.md §5.2)")
struct ChannelChoiceTests {
    @Test func prefersAFreeChannelWhoseInterruptCPUIsWanted() throws {
        let r = try #require(ChannelChoice.pick(free: [0, 2, 3], interruptCPUs: [0, 1, 5, 6], wanted: [6, 7], localCPUs: nil))
        #expect(r.index == 3 && r.cpu == 6)
    }

    @Test func otherwiseTheFirstWantedCPUOnTheDevicesNode() throws {
        let r = try #require(ChannelChoice.pick(free: [1, 2], interruptCPUs: [0, 1, 2], wanted: [4, 9], localCPUs: [8, 9]))
        #expect(r.index == 1 && r.cpu == 9)
        let far = try #require(ChannelChoice.pick(free: [1], interruptCPUs: [nil, nil], wanted: [4, 9], localCPUs: [2]))
        #expect(far.cpu == 4)
    }

    @Test func noWishTakesTheInterruptCPUOrALocalOne() throws {
        #expect(ChannelChoice.pick(free: [0], interruptCPUs: [3], wanted: [], localCPUs: [1])?.cpu == 3)
        #expect(ChannelChoice.pick(free: [0], interruptCPUs: [nil], wanted: [], localCPUs: [1])?.cpu == 1)
        #expect(ChannelChoice.pick(free: [], interruptCPUs: [nil], wanted: [], localCPUs: nil) == nil)
    }
}
