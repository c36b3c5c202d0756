import CNetDMA
import Foundation
import NetDMA
import Testing

/// Builds C and C++ programs against this build's libnetdma (`.build/<config>/libnetdma-c.so`,
/// SONAME libnetdma.so.0) and runs them.
enum CBuild {
    /// The repository root (this file is Tests/NetDMACTests/CABITests.swift).
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()
    static let include = root.appendingPathComponent("Sources/CNetDMA/include")
    static let header = include.appendingPathComponent("netdma.h")
    /// The build's library, next to the test bundle.
    static let library: URL = {
        let bin = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        let candidates = [bin, bin.deletingLastPathComponent()].map { $0.appendingPathComponent("libnetdma-c.so") }
        return candidates.first { FileManager.default.fileExists(atPath: $0.path) } ?? candidates[0]
    }()
    /// A directory where the library has its installed names (libnetdma.so.0, libnetdma.so).
    static let work: URL = {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("netdma-cabi-\(getpid())")
        try? FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        for name in ["libnetdma.so.0", "libnetdma.so"] {
            let link = dir.appendingPathComponent(name)
            try? FileManager.default.removeItem(at: link)
            try? FileManager.default.createSymbolicLink(at: link, withDestinationURL: library)
        }
        return dir
    }()

    struct Output {
        var status: Int32
        var stdout: String
        var stderr: String
    }

    /// Runs `tool` (found on PATH) with `arguments`.
    static func run(_ tool: String, _ arguments: [String], timeout: Duration = .seconds(120)) throws -> Output {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = [tool] + arguments
        let out = work.appendingPathComponent("out-\(UUID().uuidString)")
        let err = work.appendingPathComponent("err-\(UUID().uuidString)")
        _ = FileManager.default.createFile(atPath: out.path, contents: nil)
        _ = FileManager.default.createFile(atPath: err.path, contents: nil)
        defer {
            try? FileManager.default.removeItem(at: out)
            try? FileManager.default.removeItem(at: err)
        }
        p.standardOutput = try FileHandle(forWritingTo: out)
        p.standardError = try FileHandle(forWritingTo: err)
        try p.run()
        let deadline = ContinuousClock.now + timeout
        while p.isRunning && ContinuousClock.now < deadline { usleep(10_000) }
        if p.isRunning { p.terminate() }
        p.waitUntilExit()
        return Output(status: p.terminationStatus, stdout: try String(contentsOf: out, encoding: .utf8),
                      stderr: try String(contentsOf: err, encoding: .utf8))
    }

    /// Compiles `sources` (paths relative to the repository root) into an executable linked
    /// with -lnetdma, as C11 with -Wall -Wextra -Werror -pedantic; returns its path.
    static func program(_ sources: [String], name: String, extra: [String] = []) throws -> String {
        let exe = work.appendingPathComponent(name).path
        let args = ["-std=gnu11", "-O1", "-Wall", "-Wextra", "-Werror", "-pedantic", "-I", include.path]
            + sources.map { root.appendingPathComponent($0).path }
            + ["-o", exe, "-L", work.path, "-lnetdma", "-lpthread", "-Wl,-rpath," + work.path] + extra
        let r = try run("cc", args)
        guard r.status == 0 else { throw CBuildError.compile(sources.joined(separator: " "), r.stderr) }
        return exe
    }
}

enum CBuildError: Error, CustomStringConvertible {
    case compile(String, String)
    var description: String {
        switch self {
        case .compile(let what, let log): "cannot compile \(what):\n\(log)"
        }
    }
}

@Suite(.serialized) struct CABITests {
    @Test("netdma.h is self-contained and clean C11, C17, C++11 and C++17 with -Wall -Wextra -Werror -pedantic")
    func headerCompiles() throws {
        let use = """
            #include <netdma.h>
            int netdma_use(void);
            int netdma_use(void) {
                netdma_open_params p = NETDMA_OPEN_PARAMS_INIT;
                netdma_queue_params q = NETDMA_QUEUE_PARAMS_INIT;
                netdma_descriptor d = {0, NETDMA_DESC_NULL_TRANSFER, 0, 0, 0, 0, 0, 0, 0};
                uint64_t word = NETDMA_TRANSFER_ARMED;
                netdma_descriptor_publish_next(&d, netdma_completion_word_load(&word) & NETDMA_COMPLETION_ADDRESS_MASK);
                return (int)(p.size + q.size + d.control_flags) + NETDMA_EINVAL;
            }

            """
        let c = CBuild.work.appendingPathComponent("use.c"), cxx = CBuild.work.appendingPathComponent("use.cpp")
        try use.write(to: c, atomically: true, encoding: .utf8)
        try use.write(to: cxx, atomically: true, encoding: .utf8)
        for (compiler, std, file) in [("cc", "c11", c), ("cc", "c17", c), ("c++", "c++11", cxx), ("c++", "c++17", cxx)] {
            let r = try CBuild.run(compiler, ["-std=\(std)", "-Wall", "-Wextra", "-Werror", "-pedantic", "-fsyntax-only",
                                              "-I", CBuild.include.path, file.path])
            #expect(r.status == 0, "\(compiler) -std=\(std): \(r.stderr)")
        }
    }

    /// The functions netdma.h declares (static inline helpers are not exported).
    static func declaredFunctions() throws -> Set<String> {
        let text = try String(contentsOf: CBuild.header, encoding: .utf8)
        var names = Set<String>()
        for line in text.split(separator: "\n") {
            guard let first = line.first, first.isLetter, !line.hasPrefix("static"), !line.hasPrefix("typedef"),
                  !line.hasPrefix("enum"), let paren = line.firstIndex(of: "(") else { continue }
            let name = line[..<paren].split(whereSeparator: { $0 == " " || $0 == "*" }).last.map(String.init) ?? ""
            if name.hasPrefix("netdma_") { names.insert(name) }
        }
        return names
    }

    @Test("libnetdma exports exactly the functions netdma.h declares, and needs no Swift runtime .so")
    func exports() throws {
        let declared = try Self.declaredFunctions()
        #expect(declared.count > 30 && declared.contains("netdma_enqueue_copy") && !declared.contains("netdma_completion_word_load"))
        let r = try CBuild.run("nm", ["-D", "--defined-only", CBuild.library.path])
        try #require(r.status == 0, "nm: \(r.stderr)")
        var exported = Set<String>(), kinds = Set<String>()
        for line in r.stdout.split(separator: "\n") {
            let f = line.split(separator: " ")
            // Global and weak symbols have upper-case types; `A` is the version node NETDMA_0.
            guard f.count == 3, let t = f[1].first, t.isUppercase, t != "A" else { continue }
            exported.insert(String(f[2].split(separator: "@").first!))
            kinds.insert(String(f[1]))
        }
        #expect(exported.subtracting(declared).isEmpty, "exported but not declared: \(exported.subtracting(declared).sorted())")
        #expect(declared.subtracting(exported).isEmpty, "declared but not exported: \(declared.subtracting(exported).sorted())")
        #expect(kinds == ["T"], "only functions are exported, got symbol types \(kinds)")
        let d = try CBuild.run("readelf", ["-d", CBuild.library.path])
        #expect(d.stdout.contains("Library soname: [libnetdma.so.0]"))
        #expect(!d.stdout.contains("libswift"), "links a Swift runtime .so:\n\(d.stdout)")
    }

    @Test("netdma.h's layouts and constants are the NetDMA module's")
    func constants() {
        typealias C = netdma_descriptor
        #expect(MemoryLayout<C>.size == MemoryLayout<Descriptor>.size)
        let pairs: [(Int?, Int?)] = [
            (MemoryLayout<C>.offset(of: \.transfer_size), MemoryLayout<Descriptor>.offset(of: \.transferSize)),
            (MemoryLayout<C>.offset(of: \.control_flags), MemoryLayout<Descriptor>.offset(of: \.controlFlags)),
            (MemoryLayout<C>.offset(of: \.source), MemoryLayout<Descriptor>.offset(of: \.source)),
            (MemoryLayout<C>.offset(of: \.destination), MemoryLayout<Descriptor>.offset(of: \.destination)),
            (MemoryLayout<C>.offset(of: \.next), MemoryLayout<Descriptor>.offset(of: \.next)),
            (MemoryLayout<C>.offset(of: \.next_source), MemoryLayout<Descriptor>.offset(of: \.nextSource)),
            (MemoryLayout<C>.offset(of: \.next_destination), MemoryLayout<Descriptor>.offset(of: \.nextDestination)),
            (MemoryLayout<C>.offset(of: \.user_context1), MemoryLayout<Descriptor>.offset(of: \.userContext1)),
            (MemoryLayout<C>.offset(of: \.user_context2), MemoryLayout<Descriptor>.offset(of: \.userContext2)),
        ]
        for (c, s) in pairs { #expect(c != nil && c == s) }
        let flags: [(UInt32, ControlFlags)] = [
            (NETDMA_DESC_INTERRUPT_ON_COMPLETION, .interruptOnCompletion), (NETDMA_DESC_SOURCE_NO_SNOOP, .sourceNoSnoop),
            (NETDMA_DESC_DESTINATION_NO_SNOOP, .destinationNoSnoop),
            (NETDMA_DESC_STATUS_UPDATE_ON_COMPLETION, .statusUpdateOnCompletion),
            (NETDMA_DESC_SERIALIZE_TRANSFER, .serializeTransfer), (NETDMA_DESC_NULL_TRANSFER, .nullTransfer),
            (NETDMA_DESC_SOURCE_PAGE_BREAK, .sourcePageBreak), (NETDMA_DESC_DESTINATION_PAGE_BREAK, .destinationPageBreak),
            (NETDMA_DESC_DESTINATION_DCA_ENABLE, .destinationDCAEnable),
        ]
        for (c, s) in flags { #expect(c == s.rawValue) }
        #expect(NETDMA_DESC_OP_MASK == ControlFlags.operationMask)
        #expect(NETDMA_DESC_OP_FILL >> 24 == UInt32(Operation.fill.rawValue) && NETDMA_DESC_OP_COPY >> 24 == UInt32(Operation.copy.rawValue))
        #expect(UInt64(NETDMA_COMPLETION_STATUS_MASK) == CompletionWord.statusMask)
        #expect(NETDMA_COMPLETION_ADDRESS_MASK == ~UInt64(0x3F))
        let transfer: [(UInt32, TransferStatus)] = [(NETDMA_TRANSFER_ACTIVE, .active), (NETDMA_TRANSFER_IDLE, .idle),
                                                    (NETDMA_TRANSFER_SUSPEND, .suspend), (NETDMA_TRANSFER_HALTED, .halted),
                                                    (NETDMA_TRANSFER_ARMED, .armed)]
        for (c, s) in transfer { #expect(c == UInt32(s.rawValue)) }
        let states: [(Int32, ChannelState)] = [(NETDMA_STATE_ALLOCATED, .allocated), (NETDMA_STATE_RUNNING, .running),
                                               (NETDMA_STATE_SUSPENDED, .suspended), (NETDMA_STATE_HALTED, .halted)]
        for (c, s) in states { #expect(c == Int32(s.rawValue)) }
        let events: [(Int32, NetDMANotification.Code)] = [
            (NETDMA_NOTIFY_REGISTERED, .providerRegistered), (NETDMA_NOTIFY_ARRIVAL, .providerArrival),
            (NETDMA_NOTIFY_REMOVAL, .providerRemoval), (NETDMA_NOTIFY_CHANNEL_ARRIVAL, .channelArrival),
            (NETDMA_NOTIFY_POWER_DOWN, .providerPowerDown), (NETDMA_NOTIFY_POWER_UP, .providerPowerUp),
        ]
        for (c, s) in events { #expect(UInt32(c) == s.rawValue) }
        // netdma_completed_status hands CopyQueue's status bytes to C as they are.
        #expect(MemoryLayout<CopyStatus>.size == 1)
        #expect(unsafeBitCast(CopyStatus.successful, to: UInt8.self) == UInt8(NETDMA_OP_STATUS_SUCCESSFUL))
        #expect(unsafeBitCast(CopyStatus.failed, to: UInt8.self) == UInt8(NETDMA_OP_STATUS_FAILED))
    }

    @Test("Every error code in netdma.h has its own message saying what to do")
    func errorMessages() throws {
        let text = try String(contentsOf: CBuild.header, encoding: .utf8)
        var codes: [Int32] = []
        for line in text.split(separator: "\n") where line.contains("NETDMA_E") && line.contains(" = -") {
            let value = String(line.split(separator: "=")[1].drop { $0 == " " }.prefix { $0 == "-" || $0.isNumber })
            codes.append(try #require(Int32(value), "\(line)"))
        }
        #expect(codes == (1...codes.count).map { -Int32($0) }, "codes are -1, -2, ... with no gap")
        let unknown = String(cString: netdma_strerror(12345))
        var seen = Set<String>()
        for code in codes {
            let m = String(cString: netdma_strerror(code))
            #expect(m != unknown && m.count >= 40 && m.hasSuffix("."), "code \(code): \(m)")
            #expect(seen.insert(m).inserted, "code \(code) shares its message")
        }
        #expect(String(cString: netdma_strerror(NETDMA_OK.rawValue)) == "Success.")
    }

    /// The IDs of README's "API arguments: C ABI" table.
    static func readmeIDs() throws -> [String] {
        let readme = try String(contentsOf: CBuild.root.appendingPathComponent("README.md"), encoding: .utf8)
        guard let start = readme.range(of: "### API arguments: C ABI") else { return [] }
        let section = readme[start.upperBound...].split(separator: "\n").prefix { !$0.hasPrefix("#") }
        return section.compactMap { line -> String? in
            let f = line.split(separator: "|").map { $0.trimmingCharacters(in: .whitespaces) }
            guard line.hasPrefix("| X"), let id = f.first else { return nil }
            return id
        }
    }

    @Test("Bad input through the ABI returns the right code and a message saying what to do (README rows X1...)")
    func badInput() throws {
        let exe = try CBuild.program(["Tests/NetDMACTests/C/bad_input.c"], name: "bad_input")
        let r = try CBuild.run(exe, [])
        #expect(r.status == 0, "\(r.stdout)\(r.stderr)")
        let ran = r.stdout.split(separator: "\n").filter { $0.hasPrefix("case ") }.map { String($0.dropFirst(5)) }
        let ids = try Self.readmeIDs()
        #expect(!ids.isEmpty && ran == ids, "README rows \(ids), cases run \(ran)")
    }

    @Test("The ABI on both models: info, notifications, CPU choice, ops, registered memory, the eventfd, the NetDMA level")
    func behaviour() throws {
        let exe = try CBuild.program(["Tests/NetDMACTests/C/behaviour.c"], name: "behaviour")
        let r = try CBuild.run(exe, [])
        #expect(r.status == 0, "\(r.stdout)\(r.stderr)")
        #expect(r.stdout.hasSuffix("0 failures\n"))
    }

    @Test("Examples/c: copy.c and receive_copy.c build with the header and library, run and verify")
    func examples() throws {
        let copy = try CBuild.run(try CBuild.program(["Examples/c/copy.c"], name: "copy"), [])
        #expect(copy.status == 0, "\(copy.stderr)")
        #expect(copy.stdout == "copied 1 MiB on model:ioat/icx and verified it\n")
        let receiveCopy = try CBuild.program(["Examples/c/receive_copy.c"], name: "receive_copy")
        let receive = try CBuild.run(receiveCopy, ["--datagrams", "3000", "--threshold", "0"])
        #expect(receive.status == 0, "\(receive.stderr)")
        #expect(receive.stdout.contains("  engine: every byte verified; 3000 datagrams copied by the engine, 0 by the CPU"))
        #expect(receive.stdout.contains("  memcpy: every byte verified"))
        // Its default threshold (512 B): the small datagrams (64-256 B, about half) go to the CPU.
        let fallback = try CBuild.run(receiveCopy, ["--datagrams", "3000"])
        #expect(fallback.status == 0, "\(fallback.stderr)")
        let split = Self.copiedBy(fallback.stdout)
        #expect(split.map { $0.engine + $0.cpu } == 3000 && split.map { $0.engine > 500 && $0.cpu > 500 } == true,
                "\(fallback.stdout)")
        #expect(fallback.stdout.contains("CPU-copy threshold 512 B") && fallback.stdout.contains("  memcpy: every byte verified"))
    }

    /// The "N datagrams copied by the engine, M by the CPU" of receive_copy's output.
    static func copiedBy(_ output: String) -> (engine: Int, cpu: Int)? {
        guard let line = output.split(separator: "\n").first(where: { $0.contains("copied by the engine") }) else { return nil }
        let words = line.split(separator: " ")
        // "... 1500 datagrams copied by the engine, 1500 by the CPU; ..."
        guard let e = words.firstIndex(of: "datagrams"), e > 0, let engine = Int(words[e - 1]),
              let c = words.firstIndex(of: "CPU;"), c >= 3, let cpu = Int(words[c - 3]) else { return nil }
        return (engine, cpu)
    }
}
