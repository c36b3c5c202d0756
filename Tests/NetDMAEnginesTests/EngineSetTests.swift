import DeviceModels
import Foundation
import Hardware
import NetDMAEngines
import Testing

/// Copies `length` bytes from `source` to `destination` through a fresh queue on `channel` and
/// waits for the engine (polling).
func copy(on channel: NetDMAChannel, _ source: borrowing DMABuffer, _ destination: borrowing DMABuffer,
          length: Int) throws -> CopyCompletion {
    let queue = try CopyQueue(channel: channel, ringSize: 16)
    _ = try queue.enqueueCopy(source: source.iova, destination: destination.iova, length: length)
    try queue.submit()
    let deadline = ContinuousClock.now + .seconds(10)
    var done = queue.completed(max: 1)
    while done.count == 0 && !done.hadError && ContinuousClock.now < deadline { done = queue.completed(max: 1) }
    return done
}

func fillPattern(_ buffer: borrowing DMABuffer, seed: Int) {
    for i in 0..<buffer.length { buffer.bytes[i] = UInt8(truncatingIfNeeded: i &* 31 &+ seed) }
}

@Suite struct EngineSetTests {
    static let everyModel: [ModelConfiguration] =
        [EngineFamily.ioat, .dsa].flatMap { f in ModelConfiguration.profileNames(f).map { ModelConfiguration(f, profile: $0) } }

    @Test("Every profile of both models opens, copies on every channel and closes", arguments: everyModel)
    func everyProfile(_ model: ModelConfiguration) throws {
        let dma = try EngineSet.open(.model(model))
        let engine = try #require(dma.engines.first)
        #expect(dma.engines.count == 1 && engine.isModel && engine.family == model.family)
        #expect(engine.label == "model:\(model.family.rawValue)/\(model.profile)")
        #expect(engine.channelCount == engine.info.channels && engine.channelCount > 0)
        #expect(dma.headline.hasPrefix("Running on the built-in device model"))
        let source = try dma.memory.allocate(length: 4096), destination = try dma.memory.allocate(length: 4096)
        var channels: [NetDMAChannel] = []
        for c in 0..<engine.channelCount {
            fillPattern(source, seed: c)
            let channel = try dma.allocateChannel()
            #expect(CPUSet.allowed.contains(channel.cpu), "the DPC runs on a CPU this process may use")
            let done = try copy(on: channel, source, destination, length: 4096 - c)
            #expect(done.count == 1 && !done.hadError)
            #expect(source.bytes.prefix(4096 - c).elementsEqual(destination.bytes.prefix(4096 - c)))
            channels.append(channel)
        }
        #expect(throws: DriverError.self) { try dma.allocateChannel() }
        #expect(engine.freeChannels == 0)
        try dma.stop()
        #expect(dma.registry.providers.isEmpty, "stop deregisters every provider")
        #expect(channels.allSatisfy { $0.state == .freed })
        #expect(try dma.stop().isEmpty, "a second stop does nothing")
    }

    @Test("Engines of one set share one DMA memory: a buffer copies on either engine")
    func sharedMemory() throws {
        let dma = try EngineSet.open(EngineSelection(targets: [.model(ModelConfiguration(.ioat)), .model(ModelConfiguration(.dsa))],
                                                     headline: "two models", usesModel: true))
        defer { dma.close() }
        #expect(dma.engines.map(\.family) == [.ioat, .dsa])
        #expect(dma.engines.allSatisfy { $0.memory === dma.memory })
        let a = try dma.memory.allocate(length: 8192), b = try dma.memory.allocate(length: 8192), c = try dma.memory.allocate(length: 8192)
        fillPattern(a, seed: 3)
        let first = try dma.engines[0].allocateChannel()
        let second = try dma.engines[1].allocateChannel()
        #expect(try copy(on: first, a, b, length: 8192).count == 1)
        #expect(try copy(on: second, b, c, length: 8192).count == 1)
        #expect(a.bytes.elementsEqual(c.bytes), "ioat copied a→b, dsa copied b→c")
    }

    @Test("allocateChannel takes the next engine when one is full, and names every engine when all are")
    func allocationAcrossEngines() throws {
        var dsa = ModelConfiguration(.dsa)
        dsa.dsa.workQueues = 1
        let dma = try EngineSet.open(EngineSelection(targets: [.model(dsa), .model(dsa)], headline: "", usesModel: true))
        defer { dma.close() }
        _ = try dma.allocateChannel()
        _ = try dma.allocateChannel()
        #expect(dma.engines.map(\.freeChannels) == [0, 0])
        let error = try #require(throws: DriverError.self) { try dma.allocateChannel() }
        #expect(error.code == .busy)
        #expect(error.message.contains("model:dsa/spr (1)"))
    }

    @Test("A failing engine closes the engines opened before it")
    func failedOpenClosesTheRest() throws {
        var bad = ModelConfiguration(.dsa)
        bad.beforeBringUp = { model in
            guard case .dsa(let d) = model else { return }
            d.inject(.halt(resetType: .flr))
        }
        let registry = NetDMARegistry(drainTimeout: .seconds(2))
        let selection = EngineSelection(targets: [.model(ModelConfiguration(.ioat)), .model(bad)], headline: "", usesModel: true)
        #expect(throws: DriverError.self) { try EngineSet.open(selection, registry: registry) }
        #expect(registry.providers.isEmpty, "the CBDMA provider opened first was stopped and deregistered")
    }

    @Test("Bad model configurations are typed errors that name the choices")
    func badModels() throws {
        let unknown = try #require(throws: DriverError.self) { try EngineSet.open(.model(.ioat, profile: "p4")) }
        #expect(unknown.code == .invalidArgument && unknown.message.contains("icx"))
        let noModel = try #require(throws: DriverError.self) { try EngineSet.open(.model(.edu)) }
        #expect(noModel.code == .unsupported)
    }

    @Test("Power down and up through the engine: a 2.0 channel copies again after PowerUp")
    func power() throws {
        let dma = try EngineSet.open(.model(.ioat))
        defer { dma.close() }
        let engine = dma.engines[0]
        let channel = try engine.allocateChannel()
        let a = try dma.memory.allocate(length: 4096), b = try dma.memory.allocate(length: 4096)
        fillPattern(a, seed: 9)
        try engine.powerDown()
        try engine.powerUp()
        #expect(try copy(on: channel, a, b, length: 4096).count == 1)
        #expect(a.bytes.elementsEqual(b.bytes))
    }

    @Test("The model's engine thread ID names a thread of this process")
    func engineThread() throws {
        let dma = try EngineSet.open(.model(.dsa))
        defer { dma.close() }
        let id = try #require(dma.engines[0].model?.engineThreadID)
        #expect(id > 0)
        #expect(FileManager.default.fileExists(atPath: "/proc/self/task/\(id)"))
    }
}

@Suite struct EngineSelectionTests {
    func tree(_ devices: [(String, UInt16, String?)]) throws -> FakeSysfsTree {
        let t = try FakeSysfsTree()
        for (i, (bdf, id, driver)) in devices.enumerated() {
            try t.addDevice(PCIAddress(bdf)!, id: PCIID(vendor: 0x8086, device: id), driver: driver, iommuGroup: 10 + i, vfioNode: true)
        }
        return t
    }

    func discovery(_ t: FakeSysfsTree) -> PCIDiscovery {
        PCIDiscovery(sysfsRoot: t.sysfsRoot, devRoot: t.devRoot, stateDirectory: t.stateDirectory)
    }

    @Test func noEngineMeansTheModel() throws {
        let t = try tree([])
        let s = try EngineSelection.resolve(discovery: discovery(t))
        #expect(s.usesModel && s.headline.hasSuffix("this machine has no CBDMA or DSA engine."))
        guard case .model(let m) = try #require(s.targets.first) else { Issue.record("not a model"); return }
        #expect(m.family == .ioat && m.profile == "icx")
    }

    @Test func anEngineOnItsKernelDriverIsNamed() throws {
        let t = try tree([("0000:00:04.0", 0x0B00, "ioatdma")])
        let s = try EngineSelection.resolve(discovery: discovery(t))
        #expect(s.usesModel && s.headline.contains("0000:00:04.0 (ioatdma)") && s.headline.contains("sudo netdma bind"))
        let named = try #require(throws: DriverError.self) {
            try EngineSelection.resolve(addresses: [PCIAddress("0000:00:04.0")!], discovery: discovery(t))
        }
        #expect(named.code == .wrongDriver)
    }

    @Test func boundEnginesAreChosenAndGenerationAloneIsRefused() throws {
        let t = try tree([("0000:00:04.0", 0x0B00, "vfio-pci"), ("0000:6a:01.0", 0x0B25, "vfio-pci")])
        let s = try EngineSelection.resolve(discovery: discovery(t))
        #expect(!s.usesModel && s.targets.map(\.label) == ["0000:00:04.0", "0000:6a:01.0"])
        #expect(throws: DriverError.self) { try EngineSelection.resolve(generation: "skx", discovery: discovery(t)) }
        let model = try EngineSelection.resolve(model: .dsa, generation: "dsa2", discovery: discovery(t))
        #expect(model.targets.map(\.label) == ["model:dsa/dsa2"])
    }

    @Test func aDeviceThatIsNoEngineIsRefused() throws {
        let t = try FakeSysfsTree()
        try t.addDevice(PCIAddress("0000:00:03.0")!, id: PCIID(vendor: 0x1af4, device: 0x1041), driver: "virtio-pci")
        let e = try #require(throws: DriverError.self) {
            try EngineSelection.resolve(addresses: [PCIAddress("0000:00:03.0")!], discovery: discovery(t))
        }
        #expect(e.code == .invalidArgument && e.message.contains("netdma list"))
    }

    @Test func configureAdjustsTheModel() throws {
        let t = try tree([])
        let s = try EngineSelection.resolve(model: .dsa, discovery: discovery(t)) { $0.dsa.workQueues = 1 }
        guard case .model(let m) = try #require(s.targets.first) else { Issue.record("not a model"); return }
        #expect(m.dsa.workQueues == 1)
    }
}

@Suite struct ReadmeExampleTests {
    /// The repository root (this file is Tests/NetDMAEnginesTests/EngineSetTests.swift).
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()

    @Test("README's library example is Examples/swift/Copy/main.swift as written, and it runs")
    func readmeExample() throws {
        let readme = try String(contentsOf: Self.root.appendingPathComponent("README.md"), encoding: .utf8)
        let example = try String(contentsOf: Self.root.appendingPathComponent("Examples/swift/Copy/main.swift"), encoding: .utf8)
        let shown = readme.contains("```swift\n" + example + "```\n")
        #expect(shown, "README.md must show Examples/swift/Copy/main.swift verbatim in a ```swift block")
        #expect(example.split(separator: "\n").count <= 12, "about ten lines from nothing to a verified copy")

        let bin = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        let candidates = [bin, bin.deletingLastPathComponent()].map { $0.appendingPathComponent("CopyExample").path }
        let path = try #require(candidates.first { FileManager.default.isExecutableFile(atPath: $0) },
                                "swift build --build-tests builds CopyExample next to the tests")
        let p = Process()
        p.executableURL = URL(fileURLWithPath: path)
        let out = Pipe()
        p.standardOutput = out
        try p.run()
        let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        #expect(p.terminationStatus == 0)
        #expect(text == "copied 1 MiB on model:ioat/icx and verified it\n")
    }
}
