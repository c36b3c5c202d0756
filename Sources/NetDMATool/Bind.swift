import ArgumentParser
import Platform

/// `netdma bind BDF... [--force]`: hand engines to vfio-pci.
struct Bind: OutputCommand {
    static let configuration = CommandConfiguration(
        abstract: "Bind DMA engines to vfio-pci (driver_override + drivers_probe).",
        discussion: "The previous driver is remembered so `netdma unbind` can restore it. Needs root.")

    @Argument(help: "PCI addresses, e.g. 0000:00:04.0.")
    var addresses: [PCIAddress]

    @Flag(help: "Bind devices that are not known DMA engines too.")
    var force = false

    @OptionGroup var system: SystemOptions

    func output() throws -> String {
        let discovery = system.discovery
        var lines: [String] = []
        for a in addresses {
            let r = try discovery.bindToVFIO(a, force: force)
            if !r.changed {
                lines.append("\(a): already bound to vfio-pci")
            } else {
                lines.append("\(a): \(r.previousDriver ?? "no driver") -> \(r.currentDriver ?? "no driver (kernel has not probed it yet)")")
            }
            if let d = try? discovery.device(at: a), let problem = discovery.readiness(of: d).problem,
               r.currentDriver == "vfio-pci" {
                lines.append("  warning: \(problem.message)")
            }
        }
        return lines.joined(separator: "\n")
    }
}

/// `netdma unbind BDF...`: give engines back to their previous driver.
struct Unbind: OutputCommand {
    static let configuration = CommandConfiguration(
        abstract: "Unbind devices from vfio-pci and restore the driver they had before `netdma bind`.")

    @Argument(help: "PCI addresses, e.g. 0000:00:04.0.")
    var addresses: [PCIAddress]

    @OptionGroup var system: SystemOptions

    func output() throws -> String {
        let discovery = system.discovery
        var lines: [String] = []
        for a in addresses {
            let r = try discovery.unbindFromVFIO(a)
            if !r.changed {
                lines.append("\(a): not bound to vfio-pci (driver: \(r.previousDriver ?? "none")); nothing to do")
            } else {
                lines.append("\(a): \(r.previousDriver ?? "no driver") -> \(r.currentDriver ?? "no driver")")
            }
        }
        return lines.joined(separator: "\n")
    }
}
