import CVFIO
import Glibc
import Hardware
import Synchronization
import Testing
@testable import Platform

let ioatBDF = PCIAddress("0000:00:04.0")!

func makeDiscovery(_ tree: FakeSysfsTree) -> PCIDiscovery {
    PCIDiscovery(sysfsRoot: tree.sysfsRoot, devRoot: tree.devRoot, stateDirectory: tree.stateDirectory)
}

@Suite struct PCIAddressTests {
    @Test(arguments: [("0000:00:04.0", "0000:00:04.0"), ("00:04.7", "0000:00:04.7"), ("ABCD:ff:1f.3", "abcd:ff:1f.3")])
    func parses(text: String, canonical: String) throws {
        #expect(try #require(PCIAddress(text)).description == canonical)
    }

    @Test(arguments: ["", "0000:00:04", "0000:00:20.0", "0000:00:04.8", "00000:00:04.0", "0000:000:04.0", "zz:00.0", "0000:00:04.0.1"])
    func rejects(text: String) { #expect(PCIAddress(text) == nil) }

    @Test func ordersByDomainBusDeviceFunction() {
        let list = ["0001:00:00.0", "0000:01:00.0", "0000:00:04.1", "0000:00:04.0"].compactMap(PCIAddress.init)
        #expect(list.sorted().map(\.description) == ["0000:00:04.0", "0000:00:04.1", "0000:01:00.0", "0001:00:00.0"])
    }
}

@Suite struct DiscoveryTests {
    @Test func readsDriverGroupAndNodeFromSysfs() throws {
        let tree = try FakeSysfsTree()
        try tree.addDevice(ioatBDF, id: PCIID(vendor: 0x8086, device: 0x2021), driver: "ioatdma", iommuGroup: 12, numaNode: 1)
        try tree.addDevice(PCIAddress("0000:00:03.0")!, id: PCIID(vendor: 0x1af4, device: 0x1041), driver: "virtio-pci", classCode: 0x020000)
        let discovery = makeDiscovery(tree)
        let all = discovery.devices()
        #expect(all.map(\.address.description) == ["0000:00:03.0", "0000:00:04.0"])
        let d = try discovery.device(at: ioatBDF)
        #expect(d.driver == "ioatdma")
        #expect(d.iommuGroup == 12)
        #expect(d.numaNode == 1)
        #expect(d.driverOverride == nil)
        #expect(d.classCode == 0x088000)
        #expect(d.engine?.family == .ioat)
        #expect(d.engine?.generation == "CBDMA 3.2")
        let nic = all[0]
        #expect(nic.engine == nil && nic.iommuGroup == nil && nic.numaNode == nil)
        #expect(discovery.engines().map(\.address) == [ioatBDF])
        #expect(discovery.groupMembers(12) == [ioatBDF])
    }

    @Test(arguments: EngineTable.all)
    func classifiesEveryIDInTheEngineTable(row: EngineIdentity) throws {
        let tree = try FakeSysfsTree()
        try tree.addDevice(ioatBDF, id: row.id, driver: nil, iommuGroup: 3, numaNode: 0)
        let engines = makeDiscovery(tree).engines()
        #expect(engines.count == 1)
        #expect(engines.first?.engine == row)
        #expect(engines.first?.engine?.family == row.family)
    }

    @Test func unknownDeviceIsNotAnEngine() throws {
        let tree = try FakeSysfsTree()
        try tree.addDevice(ioatBDF, id: PCIID(vendor: 0x8086, device: 0xFFFF))
        #expect(makeDiscovery(tree).engines().isEmpty)
        #expect(makeDiscovery(tree).devices().count == 1)
    }

    @Test func missingDeviceIsNotFound() throws {
        let tree = try FakeSysfsTree()
        do {
            _ = try makeDiscovery(tree).device(at: ioatBDF)
            Issue.record("expected notFound")
        } catch { #expect(error.code == .notFound) }
    }

    @Test func readinessExplainsEachProblem() throws {
        let tree = try FakeSysfsTree()
        let discovery = makeDiscovery(tree)
        // No IOMMU group.
        try tree.addDevice(ioatBDF, id: PCIID(vendor: 0x8086, device: 0x0B00), driver: "ioatdma")
        var r = discovery.readiness(of: try discovery.device(at: ioatBDF))
        #expect(r.problem?.code == .noIOMMU && r.summary.contains("intel_iommu=on iommu=pt"))
        // In a group, on ioatdma.
        try tree.addDevice(ioatBDF, id: PCIID(vendor: 0x8086, device: 0x0B00), driver: "ioatdma", iommuGroup: 5)
        r = discovery.readiness(of: try discovery.device(at: ioatBDF))
        #expect(r.problem?.code == .wrongDriver && r.summary.contains("netdma bind 0000:00:04.0"))
        // On vfio-pci, but the group also holds a NIC on e1000e and a bridge on pcieport.
        try tree.setDriver(ioatBDF, "vfio-pci")
        try tree.addDevice(PCIAddress("0000:00:04.1")!, id: PCIID(vendor: 0x8086, device: 0x10D3), driver: "e1000e", iommuGroup: 5)
        try tree.addDevice(PCIAddress("0000:00:01.0")!, id: PCIID(vendor: 0x8086, device: 0x2F02), driver: "pcieport", iommuGroup: 5, classCode: 0x060400)
        r = discovery.readiness(of: try discovery.device(at: ioatBDF))
        #expect(r.problem?.code == .groupNotViable)
        #expect(r.summary.contains("0000:00:04.1 (e1000e)") && !r.summary.contains("0000:00:01.0"))
        // The NIC moves to vfio-pci: viable, but /dev/vfio/5 is missing.
        try tree.setDriver(PCIAddress("0000:00:04.1")!, "vfio-pci")
        r = discovery.readiness(of: try discovery.device(at: ioatBDF))
        #expect(r.problem?.code == .notFound && r.summary.contains("/vfio/5"))
        // With the node: ready.
        try tree.writeFile("dev/vfio/5", "")
        #expect(discovery.readiness(of: try discovery.device(at: ioatBDF)).isReady)
    }

    @Test func bindRefusesNonEnginesUnlessForced() throws {
        let tree = try FakeSysfsTree()
        try tree.addDriver("vfio-pci")
        let nic = PCIAddress("0000:00:03.0")!
        try tree.addDevice(nic, id: PCIID(vendor: 0x1af4, device: 0x1041), driver: "virtio-pci", iommuGroup: 2)
        let discovery = makeDiscovery(tree)
        do {
            _ = try discovery.bindToVFIO(nic)
            Issue.record("binding a NIC without --force must fail")
        } catch {
            #expect(error.code == .invalidArgument)
            #expect(error.message.contains("not a known DMA engine") && error.message.contains("--force"))
        }
        #expect(tree.readFile("sys/bus/pci/devices/0000:00:03.0/driver_override") == "(null)\n")
        let r = try discovery.bindToVFIO(nic, force: true)
        #expect(r.changed && r.previousDriver == "virtio-pci")
        #expect(tree.readFile("sys/bus/pci/devices/0000:00:03.0/driver_override") == "vfio-pci")
    }

    @Test func bindAndUnbindWriteTheKernelsSequenceAndRestoreTheDriver() throws {
        let tree = try FakeSysfsTree()
        try tree.addDriver("vfio-pci")
        try tree.addDevice(ioatBDF, id: PCIID(vendor: 0x8086, device: 0x0B00), driver: "ioatdma", iommuGroup: 5)
        let discovery = makeDiscovery(tree)
        let bound = try discovery.bindToVFIO(ioatBDF)
        #expect(bound.changed && bound.previousDriver == "ioatdma")
        #expect(tree.readFile("sys/bus/pci/devices/0000:00:04.0/driver_override") == "vfio-pci")
        #expect(tree.readFile("sys/bus/pci/drivers/ioatdma/unbind") == "0000:00:04.0")
        #expect(tree.readFile("sys/bus/pci/drivers_probe") == "0000:00:04.0")
        #expect(Sysfs.readFile(discovery.statePath(ioatBDF)) == "ioatdma\n")

        // The kernel probes it into vfio-pci.
        try tree.setDriver(ioatBDF, "vfio-pci")
        #expect(try discovery.bindToVFIO(ioatBDF).changed == false)
        let unbound = try discovery.unbindFromVFIO(ioatBDF)
        #expect(unbound.changed && unbound.previousDriver == "vfio-pci")
        #expect(tree.readFile("sys/bus/pci/devices/0000:00:04.0/driver_override") == "\n")
        #expect(tree.readFile("sys/bus/pci/drivers/vfio-pci/unbind") == "0000:00:04.0")
        #expect(tree.readFile("sys/bus/pci/drivers/ioatdma/bind") == "0000:00:04.0")
        #expect(access(discovery.statePath(ioatBDF), F_OK) != 0, "the record is removed")
        // Unbinding a device not on vfio-pci changes nothing.
        try tree.setDriver(ioatBDF, "ioatdma")
        #expect(try discovery.unbindFromVFIO(ioatBDF).changed == false)
    }

    @Test func bindWithoutVFIOPCIDriverSaysModprobe() throws {
        let tree = try FakeSysfsTree()
        try tree.addDevice(ioatBDF, id: PCIID(vendor: 0x8086, device: 0x0B00), driver: "ioatdma", iommuGroup: 5)
        do {
            _ = try makeDiscovery(tree).bindToVFIO(ioatBDF)
            Issue.record("expected unsupported")
        } catch {
            #expect(error.code == .unsupported && error.message.contains("modprobe vfio-pci"))
        }
    }

    @Test(.enabled(if: !Sysfs().list("bus/pci/devices").isEmpty, "needs PCI devices in /sys"))
    func libpciAndSysfsAgreeOnThisMachine() {
        let live = PCIDiscovery().devices()
        let scanned = PCIDiscovery.libpciScan() ?? []
        let fromSysfs = Set(Sysfs().list("bus/pci/devices").compactMap(PCIAddress.init))
        #expect(Set(live.map(\.address)) == fromSysfs)
        #expect(Set(scanned.map(\.0)) == fromSysfs)
        for d in live {
            let v = Sysfs().readInteger("bus/pci/devices/\(d.address)/vendor")
            let c = Sysfs().readInteger("bus/pci/devices/\(d.address)/class")
            #expect(v == Int(d.id.vendor))
            #expect(c == Int(d.classCode), "\(d.address)")
        }
    }
}

@Suite struct NUMATests {
    @Test func topologyIsConsistent() {
        #expect(NUMA.nodeCount >= 1)
        #expect(NUMA.maxNode >= 0)
        let cpu = CPUAffinity.currentCPU
        let node = NUMA.node(ofCPU: cpu)
        #expect(node != nil)
        if let node, NUMA.isAvailable { #expect(NUMA.cpus(ofNode: node).contains(cpu)) }
        #expect(!NUMA.isValidNode(-1) && !NUMA.isValidNode(NUMA.maxNode + 1))
    }

    @Test func hugePageCountsComeFromSysfs() throws {
        let tree = try FakeSysfsTree()
        try tree.writeFile("sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages", "17\n")
        #expect(HugePages.free(sysfs: Sysfs(root: tree.sysfsRoot)) == 17)
        #expect(HugePages.free(onNode: 3, sysfs: Sysfs(root: tree.sysfsRoot)) == 0)
    }
}

@Suite struct CPUAffinityTests {
    /// A thread that publishes its kernel thread ID, waits to be told, then reports its CPU set.
    final class Subject: @unchecked Sendable {
        // @unchecked: `thread` is written once before use; the rest is atomic or in a Mutex.
        let tid = Atomic<Int32>(0)
        let go = Atomic<Bool>(false)
        let seen = Mutex<CPUSet?>(nil)
        var thread = pthread_t()
        func start() {
            let arg = Unmanaged.passRetained(self).toOpaque()
            _ = pthread_create(&thread, nil, { arg in
                let me = Unmanaged<Subject>.fromOpaque(arg!).takeRetainedValue()
                me.tid.store(Int32(cvfio_gettid()), ordering: .releasing)
                while !me.go.load(ordering: .acquiring) { sched_yield() }
                let allowed = CPUSet.allowed
                me.seen.withLock { $0 = allowed }
                return nil
            }, arg)
        }
    }

    @Test("pinThread pins another thread of the process; a thread that does not exist is invalidArgument")
    func pinAnotherThread() throws {
        let s = Subject()
        s.start()
        while s.tid.load(ordering: .acquiring) == 0 { sched_yield() }
        let cpu = try #require(Array(CPUSet.allowed).last)
        try CPUAffinity.pinThread(s.tid.load(ordering: .acquiring), to: [cpu])
        s.go.store(true, ordering: .releasing)
        pthread_join(s.thread, nil)
        #expect(s.seen.withLock { $0 } == [cpu])
        #expect(CPUSet.allowed.count >= 1, "the caller's own set is untouched")
        do { try CPUAffinity.pinThread(Int32.max, to: [cpu]); Issue.record("pinned a thread that does not exist") } catch {
            #expect(error.code == .invalidArgument && error.message.contains("\(Int32.max)"))
        }
    }
}
