import ArgumentParser

/// The `netdma` command: find, bind, probe and benchmark PCIe DMA engines through VFIO.
///
/// Each subcommand lives in its own file (`List.swift`, `Bind.swift`, ...). To add one, write
/// a `ParsableCommand` in a new file and add it to ``subcommands`` below.
@main
struct NetDMATool: ParsableCommand {
    /// Every subcommand, in the order `--help` shows them.
    static let subcommands: [any ParsableCommand.Type] = [
        List.self,
        Bind.self,
        Unbind.self,
        UdevRules.self,
        Probe.self,
        Selftest.self,
        Bench.self,
        SoakCommand.self,
    ]

    static let configuration = CommandConfiguration(
        commandName: "netdma",
        abstract: "Find, bind, probe and benchmark PCIe DMA engines (Intel CBDMA/I/OAT and DSA) through VFIO.",
        discussion: """
            Engines must be bound to vfio-pci (`netdma bind`) with the IOMMU on \
            (kernel command line `intel_iommu=on iommu=pt`). See README.md for setup.
            """,
        version: "0.1.0",
        subcommands: subcommands,
        defaultSubcommand: List.self)
}
