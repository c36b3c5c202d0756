import ArgumentParser
import Platform

/// Where the tool looks for sysfs, `/dev` and its state; hidden, for tests and containers.
struct SystemOptions: ParsableArguments {
    @Option(name: .customLong("sysfs-root"), help: .hidden)
    var sysfsRoot: String = "/sys"

    @Option(name: .customLong("dev-root"), help: .hidden)
    var devRoot: String = "/dev"

    @Option(name: .customLong("state-dir"), help: .hidden)
    var stateDirectory: String = "/run/netdma"

    var discovery: PCIDiscovery {
        PCIDiscovery(sysfsRoot: sysfsRoot, devRoot: devRoot, stateDirectory: stateDirectory)
    }
}

extension PCIAddress: ExpressibleByArgument {
    public init?(argument: String) { self.init(argument) }
}

/// A command whose output tests can capture: `run()` prints ``output()``.
protocol OutputCommand: ParsableCommand {
    func output() throws -> String
}

extension OutputCommand {
    func run() throws {
        let text = try output()
        if !text.isEmpty { print(text, terminator: text.hasSuffix("\n") ? "" : "\n") }
    }
}
