import ArgumentParser
import Foundation
import Hardware
import Platform
import Testing
@testable import NetDMATool

// One test per row of the README's "Bad input" table that concerns `netdma` arguments (rows C1–C8).

/// The message and exit code ArgumentParser gives for `arguments`, or nil when they parse.
private func parseError(_ arguments: [String]) -> (message: String, exitCode: Int32)? {
    do {
        _ = try NetDMATool.parseAsRoot(arguments)
        return nil
    } catch {
        return (NetDMATool.message(for: error), NetDMATool.exitCode(for: error).rawValue)
    }
}

@Suite("Bad input: netdma arguments")
struct ToolBadInputTests {
    @Test("C1 an unknown subcommand or option: usage error, exit 64")
    func unknown() throws {
        let a = try #require(parseError(["frobnicate"]))
        #expect(a.exitCode == 64 && a.message.contains("frobnicate"))
        let b = try #require(parseError(["list", "--colour"]))
        #expect(b.exitCode == 64 && b.message.contains("--colour"))
    }

    @Test("C2 a malformed PCI address: usage error naming it, exit 64")
    func malformedAddress() throws {
        for bad in ["xyz", "0000:00:04", "00:20.0"] {
            let e = try #require(parseError(["bind", bad]))
            #expect(e.exitCode == 64 && e.message.contains(bad))
        }
    }

    @Test("C3 binding a device that is not a DMA engine without --force")
    func notAnEngine() throws {
        let tree = try FakeSysfsTree()
        let nic = PCIAddress("0000:00:03.0")!
        try tree.addDevice(nic, id: PCIID(vendor: 0x1af4, device: 0x1041), driver: "virtio-pci", iommuGroup: 2)
        do {
            _ = try run(["bind", "0000:00:03.0"] + roots(tree))
            Issue.record("expected invalidArgument")
        } catch let error as DriverError {
            #expect(error.code == .invalidArgument && error.message.contains("--force"))
        }
    }

    @Test("C4 a PCI address with no device: notFound, exit 1")
    func noDevice() throws {
        let tree = try FakeSysfsTree()
        do {
            _ = try run(["unbind", "0000:00:1f.7"] + roots(tree))
            Issue.record("expected notFound")
        } catch let error as DriverError {
            #expect(error.code == .notFound && error.message.contains("netdma list --all"))
            #expect(NetDMATool.exitCode(for: error).rawValue == 1)
        }
    }

    @Test("C7 a sysfs root without a PCI bus (sysfs not mounted): notFound naming the path, not an empty list")
    func noSysfs() throws {
        let missing = FileManager.default.temporaryDirectory.appendingPathComponent("netdma-no-sysfs-\(getpid())").path
        for args in [["list"], ["list", "--json"]] {
            do {
                let out = try run(args + ["--sysfs-root", missing])
                Issue.record("listed without sysfs: \(out)")
            } catch let error as DriverError {
                #expect(error.code == .notFound && error.message.contains("\(missing)/bus/pci/devices"))
                #expect(error.message.contains("mount -t sysfs"))
                #expect(NetDMATool.exitCode(for: error).rawValue == 1)
            }
        }
    }

    @Test("C5 soak options out of range: a validation error naming the option, exit 64", arguments: [
        (["--seconds", "0"], "--seconds"), (["--clients", "0"], "--clients"), (["--ioat", "p4"], "--ioat 'p4'"),
        (["--skip", "gremlins"], "--skip 'gremlins'"), (["--dsa-work-queues", "9"], "--dsa-work-queues"),
        (["--ioat", "none", "--dsa-work-queues", "0"], "Nothing to soak"), (["--power-cycle-ms", "-1"], "--power-cycle-ms"),
    ])
    func soakOptions(_ args: [String], _ named: String) throws {
        let e = try #require(parseError(["soak"] + args))
        #expect(e.exitCode == 64)
        #expect(e.message.contains(named), "\(e.message)")
    }

    @Test("C8 bench --channels above the engine's channel count: invalidArgument naming how many there are, exit 1",
          arguments: [(["--channels", "99"], "model:ioat/icx has 1 channel;"), (["--model", "dsa", "--channels", "5"], "model:dsa/spr has 4 channels;")])
    func tooManyChannels(_ args: [String], _ says: String) throws {
        let tree = try emptyMachine()
        do {
            let out = try execute(["bench", "--quick"] + args + roots(tree))
            Issue.record("ran with more channels than the engine has: \(out.text)")
        } catch let error as DriverError {
            #expect(error.code == .invalidArgument)
            #expect(error.message.contains(says) && error.message.contains("--channels \(args.last!)"), "\(error.message)")
            #expect(NetDMATool.exitCode(for: error).rawValue == 1)
        }
    }

    @Test("C6 a value of the wrong type (a word for a number)")
    func wrongType() throws {
        let e = try #require(parseError(["soak", "--seconds", "ten"]))
        #expect(e.exitCode == 64 && e.message.contains("ten"))
    }
}
