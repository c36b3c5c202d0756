import Foundation
import Hardware
import Platform
import Testing
@testable import NetDMATool

func run(_ arguments: [String]) throws -> String {
    var command = try NetDMATool.parseAsRoot(arguments)
    guard let c = command as? any OutputCommand else {
        try command.run()
        return ""
    }
    return try c.output()
}

func roots(_ tree: FakeSysfsTree) -> [String] {
    ["--sysfs-root", tree.sysfsRoot, "--dev-root", tree.devRoot, "--state-dir", tree.stateDirectory]
}

@Suite struct ListTests {
    @Test func saysPlainlyWhenThereAreNoEngines() throws {
        let tree = try FakeSysfsTree()
        try tree.addDevice(PCIAddress("0000:00:03.0")!, id: PCIID(vendor: 0x1af4, device: 0x1041), driver: "virtio-pci")
        let out = try run(["list"] + roots(tree))
        #expect(out.contains("No DMA engines found"))
        #expect(out.contains("1 PCI devices"))
        #expect(!out.contains("0000:00:03.0"), "non-engines only with --all")
        let all = try run(["list", "--all"] + roots(tree))
        #expect(all.contains("0000:00:03.0") && all.contains("virtio-pci"))
    }

    @Test func tableShowsEnginesAndWhyTheyAreNotReady() throws {
        let tree = try FakeSysfsTree()
        try tree.addDevice(PCIAddress("0000:00:04.0")!, id: PCIID(vendor: 0x8086, device: 0x0B00), driver: "ioatdma", iommuGroup: 5, numaNode: 0)
        try tree.addDevice(PCIAddress("0000:6a:01.0")!, id: PCIID(vendor: 0x8086, device: 0x0B25), driver: "vfio-pci", iommuGroup: 9, numaNode: 1, vfioNode: true)
        let out = try run(["list"] + roots(tree))
        #expect(out.contains("CBDMA 3.4") && out.contains("DSA 1.0"))
        #expect(out.contains("0000:00:04.0: 0000:00:04.0 is bound to ioatdma, not vfio-pci. Run `sudo netdma bind 0000:00:04.0`."))
        let dsaLine = try #require(out.split(separator: "\n").first { $0.hasPrefix("0000:6a:01.0") })
        #expect(dsaLine.hasSuffix("ready"))
    }

    @Test func jsonParsesAndCarriesEveryField() throws {
        let tree = try FakeSysfsTree()
        try tree.addDevice(PCIAddress("0000:00:04.0")!, id: PCIID(vendor: 0x8086, device: 0x2021), driver: "ioatdma", iommuGroup: 5, numaNode: 0)
        try tree.addDevice(PCIAddress("0000:00:03.0")!, id: PCIID(vendor: 0x1af4, device: 0x1041), driver: "virtio-pci")
        let text = try run(["list", "--json"] + roots(tree))
        let object = try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
        #expect(object["engineCount"] as? Int == 1)
        #expect(object["pciDevicesScanned"] as? Int == 2)
        let devices = try #require(object["devices"] as? [[String: Any]])
        #expect(devices.count == 1)
        let d = devices[0]
        #expect(d["address"] as? String == "0000:00:04.0")
        #expect(d["id"] as? String == "8086:2021")
        #expect(d["family"] as? String == "ioat")
        #expect(d["generation"] as? String == "CBDMA 3.2")
        #expect(d["driver"] as? String == "ioatdma")
        #expect(d["iommuGroup"] as? Int == 5)
        #expect(d["numaNode"] as? Int == 0)
        #expect(d["vfioReady"] as? Bool == false)
        #expect((d["reason"] as? String)?.contains("netdma bind") == true)
        let decoded = try JSONDecoder().decode(List.Document.self, from: Data(text.utf8))
        #expect(decoded.devices.first?.expectedVersion == "0x32")
    }

    @Test func emptyJSONStillParses() throws {
        let tree = try FakeSysfsTree()
        let text = try run(["list", "--json"] + roots(tree))
        let doc = try JSONDecoder().decode(List.Document.self, from: Data(text.utf8))
        #expect(doc.devices.isEmpty && doc.engineCount == 0)
    }

    @Test func listIsTheDefaultSubcommand() throws {
        let command = try NetDMATool.parseAsRoot([])
        #expect(command is List)
    }

    @Test(.enabled(if: PCIDiscovery().engines().isEmpty, "this machine has DMA engines"))
    func thisMachineWithoutEnginesSaysSo() throws {
        let out = try run(["list"])
        #expect(out.hasPrefix("No DMA engines found"))
        let json = try run(["list", "--json"])
        #expect(try JSONSerialization.jsonObject(with: Data(json.utf8)) is [String: Any])
    }
}

@Suite struct BindTests {
    @Test func refusesNonEnginesWithoutForce() throws {
        let tree = try FakeSysfsTree()
        try tree.addDriver("vfio-pci")
        try tree.addDevice(PCIAddress("0000:00:03.0")!, id: PCIID(vendor: 0x1af4, device: 0x1041), driver: "virtio-pci", iommuGroup: 1)
        do {
            _ = try run(["bind", "0000:00:03.0"] + roots(tree))
            Issue.record("bind of a NIC must be refused")
        } catch let error as DriverError {
            #expect(error.code == .invalidArgument)
            #expect(error.message.contains("not a known DMA engine") && error.message.contains("--force"))
        }
        #expect(tree.readFile("sys/bus/pci/drivers/virtio-pci/unbind") == "")
        let forced = try run(["bind", "--force", "0000:00:03.0"] + roots(tree))
        #expect(forced.contains("virtio-pci ->"))
        #expect(tree.readFile("sys/bus/pci/drivers/virtio-pci/unbind") == "0000:00:03.0")
    }

    @Test func bindsAndUnbindsSeveralEngines() throws {
        let tree = try FakeSysfsTree()
        try tree.addDriver("vfio-pci")
        let a = PCIAddress("0000:00:04.0")!, b = PCIAddress("0000:00:04.1")!
        try tree.addDevice(a, id: PCIID(vendor: 0x8086, device: 0x0B00), driver: "ioatdma", iommuGroup: 5)
        try tree.addDevice(b, id: PCIID(vendor: 0x8086, device: 0x0B00), driver: nil, iommuGroup: 6)
        let out = try run(["bind", "0000:00:04.0", "00:04.1"] + roots(tree))
        #expect(out.contains("0000:00:04.0: ioatdma -> ioatdma") || out.contains("0000:00:04.0: ioatdma ->"))
        #expect(out.contains("0000:00:04.1: no driver ->"))
        try tree.setDriver(a, "vfio-pci")
        let un = try run(["unbind", "0000:00:04.0"] + roots(tree))
        #expect(un.contains("0000:00:04.0: vfio-pci ->"))
        #expect(tree.readFile("sys/bus/pci/drivers/ioatdma/bind") == "0000:00:04.0")
    }

    @Test func rejectsMalformedAddresses() {
        #expect(throws: (any Error).self) { try NetDMATool.parseAsRoot(["bind", "04.0"]) }
        #expect(throws: (any Error).self) { try NetDMATool.parseAsRoot(["bind"]) }
    }
}

@Suite struct UdevRulesTests {
    /// The package root, found from this file's path.
    static let root: String = {
        var parts = #filePath.split(separator: "/", omittingEmptySubsequences: false)
        parts.removeLast(3)
        return parts.joined(separator: "/")
    }()

    @Test func committedRulesMatchTheEngineTable() throws {
        let access = try String(contentsOfFile: UdevRulesTests.root + "/udev/60-netdma-vfio.rules", encoding: .utf8)
        let bind = try String(contentsOfFile: UdevRulesTests.root + "/udev/61-netdma-bind-vfio.rules", encoding: .utf8)
        #expect(access == UdevRules.accessRules, "regenerate with `swift run netdma udev-rules > udev/60-netdma-vfio.rules`")
        #expect(bind == UdevRules.bindRules, "regenerate with `swift run netdma udev-rules --bind > udev/61-netdma-bind-vfio.rules`")
    }

    @Test func everyDrivenEngineHasARuleAndIAAHasNone() {
        for e in EngineTable.all {
            let needle = "ATTR{device}==\"0x\(UdevRules.hex4(e.id.device))\""
            let count = UdevRules.accessRules.components(separatedBy: needle).count - 1
            #expect(count == (e.supported ? 1 : 0), "\(e.id) \(e.generation)")
        }
        #expect(UdevRules.accessRules.contains("KERNEL==\"vfio\", GROUP=\"vfio\""))
    }
}
