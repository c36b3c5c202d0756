import NetDMA
import Testing

@Suite("CopyQueue.cpuCopyThreshold(for:): the copy threshold netdma bench prints")
struct CopyThresholdTests {
    func m(_ size: Int, engine: Double, cpu: Double) -> CopyThroughput {
        CopyThroughput(size: size, engineBytesPerSecond: engine, cpuBytesPerSecond: cpu)
    }

    @Test func theSmallestSizeFromWhichTheEngineIsNeverSlower() {
        #expect(CopyQueue.cpuCopyThreshold(for: [m(64, engine: 1, cpu: 5), m(4096, engine: 6, cpu: 5), m(65536, engine: 9, cpu: 5)]) == 4096)
        #expect(CopyQueue.cpuCopyThreshold(for: [m(65536, engine: 9, cpu: 5), m(64, engine: 1, cpu: 5), m(4096, engine: 5, cpu: 5)]) == 4096,
                "any order; a tie goes to the engine")
        #expect(CopyQueue.cpuCopyThreshold(for: [m(64, engine: 9, cpu: 5), m(4096, engine: 4, cpu: 5), m(65536, engine: 9, cpu: 5)]) == 65536,
                "a win below a loss does not count")
        #expect(CopyQueue.cpuCopyThreshold(for: [m(64, engine: 6, cpu: 5)]) == 64)
    }

    @Test func noneWhenTheCPUWinsAtTheLargestSizeOrTheEngineFailed() {
        #expect(CopyQueue.cpuCopyThreshold(for: [m(64, engine: 1, cpu: 5), m(65536, engine: 4, cpu: 5)]) == nil)
        #expect(CopyQueue.cpuCopyThreshold(for: [m(64, engine: 6, cpu: 5), m(65536, engine: 0, cpu: 0)]) == nil,
                "an engine at 0 B/s (copies wrong or failed) never wins")
        #expect(CopyQueue.cpuCopyThreshold(for: []) == nil)
    }
}
