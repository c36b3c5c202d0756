import ArgumentParser
import Foundation
import Hardware
import Platform

/// `netdma list [--all] [--json]`: the machine's DMA engines and whether each is ready for VFIO.
struct List: OutputCommand {
    static let configuration = CommandConfiguration(
        abstract: "List DMA engines (CBDMA/I/OAT, DSA, IAA, QEMU edu) and whether each is ready for VFIO.")

    @Flag(help: "List every PCI device, not only DMA engines.")
    var all = false

    @Flag(help: "Print JSON instead of a table.")
    var json = false

    @OptionGroup var system: SystemOptions

    /// One row of the listing, also the JSON schema.
    struct Row: Codable, Equatable {
        var address: String
        var id: String
        var vendorName: String?
        var name: String
        var classCode: String
        var family: String?
        var generation: String?
        var platform: String?
        var expectedVersion: String?
        var supported: Bool?
        var driver: String?
        var driverOverride: String?
        var iommuGroup: Int?
        var numaNode: Int?
        var vfioReady: Bool
        var reason: String?
    }

    /// The JSON document.
    struct Document: Codable, Equatable {
        var devices: [Row]
        var pciDevicesScanned: Int
        var engineCount: Int
        var all: Bool
    }

    func document() throws(DriverError) -> Document {
        let discovery = system.discovery
        try discovery.requirePCIBus()
        let devices = discovery.devices()
        let shown = all ? devices : devices.filter { $0.engine != nil }
        let rows = shown.map { d -> Row in
            let readiness = discovery.readiness(of: d)
            return Row(
                address: d.address.description, id: d.id.description, vendorName: d.vendorName, name: d.displayName,
                classCode: hex(d.classCode, 6), family: d.engine?.family.rawValue, generation: d.engine?.generation,
                platform: d.engine?.platform, expectedVersion: d.engine.map { "0x" + String($0.expectedVersion, radix: 16) },
                supported: d.engine?.supported, driver: d.driver, driverOverride: d.driverOverride,
                iommuGroup: d.iommuGroup, numaNode: d.numaNode, vfioReady: readiness.isReady,
                reason: readiness.problem?.message)
        }
        return Document(devices: rows, pciDevicesScanned: devices.count,
                        engineCount: devices.filter { $0.engine != nil }.count, all: all)
    }

    func output() throws -> String {
        let doc = try document()
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            return String(decoding: try encoder.encode(doc), as: UTF8.self)
        }
        return List.table(doc)
    }

    static func table(_ doc: Document) -> String {
        var out: [String] = []
        if doc.engineCount == 0 {
            out.append("No DMA engines found: none of the \(doc.pciDevicesScanned) PCI devices on this machine is an Intel CBDMA/I/OAT, DSA or IAA engine (or QEMU edu).")
            if !doc.all { out.append("Run `netdma list --all` to see every PCI device.") }
        }
        guard !doc.devices.isEmpty else { return out.joined(separator: "\n") }
        let header = ["BDF", "ID", "NAME", "ENGINE", "DRIVER", "GROUP", "NODE", "VFIO"]
        var rows = doc.devices.map { r -> [String] in
            let engine = r.generation.map { g in (r.supported == false) ? g + " (not driven)" : g } ?? "-"
            return [r.address, r.id, String(r.name.prefix(40)), engine, r.driver ?? "-",
                    r.iommuGroup.map(String.init) ?? "-", r.numaNode.map(String.init) ?? "-",
                    r.vfioReady ? "ready" : "no"]
        }
        rows.insert(header, at: 0)
        let widths = (0..<header.count).map { c in rows.map { $0[c].count }.max() ?? 0 }
        for row in rows {
            out.append(zip(row, widths).map { $0.padding(toLength: $1, withPad: " ", startingAt: 0) }
                .joined(separator: "  ").trimmingCharacters(in: .whitespaces))
        }
        let problems = doc.devices.filter { !$0.vfioReady && $0.family != nil }
        if !problems.isEmpty {
            out.append("")
            for p in problems { out.append("\(p.address): \(p.reason ?? "not ready")") }
        }
        return out.joined(separator: "\n")
    }

    private func hex(_ v: UInt32, _ width: Int) -> String {
        let s = String(v, radix: 16)
        return String(repeating: "0", count: max(0, width - s.count)) + s
    }
}
