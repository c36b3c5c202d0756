import ArgumentParser

@main
struct NetDMATool: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "netdma",
        abstract: "Find, bind, probe and benchmark PCIe DMA engines (Intel CBDMA/I/OAT and DSA) through VFIO.")
}
