import ArgumentParser
import Foundation
import NetDMAEngines
import Platform
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// What a command returns: its text and its exit status (0: everything passed).
struct CommandResult {
    var text: String
    var exitCode: Int32 = 0
}

/// A command whose result tests can capture (text and exit status); `run()` prints the text
/// and exits with the status.
protocol ResultCommand: ParsableCommand {
    /// Runs the command; `progress` is a progress bar on a terminal, nil otherwise.
    func execute(progress: ProgressBar?) throws -> CommandResult
}

extension ResultCommand {
    func run() throws {
        let bar = ProgressBar.onTerminal()
        let result = try execute(progress: bar)
        bar?.finish()
        if !result.text.isEmpty { print(result.text, terminator: result.text.hasSuffix("\n") ? "" : "\n") }
        if result.exitCode != 0 { throw ExitCode(result.exitCode) }
    }
}

/// A one-line progress bar on standard error, drawn only when standard error is a terminal.
final class ProgressBar: @unchecked Sendable {
    // @unchecked: used from the command's thread only.
    private var lastDraw = ContinuousClock.now - .seconds(1)
    private var drawn = false

    static func onTerminal() -> ProgressBar? { isatty(STDERR_FILENO) == 1 ? ProgressBar() : nil }

    /// Draws `fraction` (0…1) and a label, at most 20 times a second.
    func update(_ fraction: Double, _ label: String) {
        let now = ContinuousClock.now
        guard now - lastDraw >= .milliseconds(50) || fraction >= 1 else { return }
        lastDraw = now
        let width = 30
        let filled = max(0, min(width, Int(fraction * Double(width))))
        let line = "\r[" + String(repeating: "#", count: filled) + String(repeating: " ", count: width - filled) + "] "
            + String(format: "%3d%% ", Int(fraction * 100)) + label.prefix(40) + "\u{1B}[K"
        FileHandle.standardError.write(Data(line.utf8))
        drawn = true
    }

    /// Clears the bar.
    func finish() {
        if drawn { FileHandle.standardError.write(Data("\r\u{1B}[K".utf8)) }
        drawn = false
    }
}

/// A small fast generator (SplitMix64) so that runs can be repeated with `--seed`.
struct SplitMix64: RandomNumberGenerator, Sendable {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    /// A number in 0..<n.
    mutating func below(_ n: Int) -> Int { Int(next() % UInt64(n)) }
    /// True with probability 1/n.
    mutating func oneIn(_ n: Int) -> Bool { n > 0 && next() % UInt64(n) == 0 }
}

/// A channel with a ``CopyQueue`` and two DMA buffers (source and destination), for the
/// checks of `probe` and `selftest` and the runs of `bench`.
final class ChannelRig {
    let channel: NetDMAChannel
    let queue: CopyQueue
    let source: DMABuffer
    let destination: DMABuffer
    let length: Int

    /// Allocates a channel of `session` and `length`-byte buffers; interrupts when the channel has a vector.
    init(session: EngineSession, length: Int, ringSize: Int = 64, interrupts: Bool? = nil) throws(DriverError) {
        let channel = try session.allocateChannel()
        do {
            let wantInterrupts = interrupts ?? (channel.interruptEventFD != nil)
            queue = try CopyQueue(channel: channel, ringSize: ringSize, interrupts: wantInterrupts && channel.interruptEventFD != nil)
            source = try channel.dmaMemory.allocate(length: length)
            destination = try channel.dmaMemory.allocate(length: length)
        } catch {
            try? channel.free()
            throw error
        }
        self.channel = channel
        self.length = length
    }

    var hasInterrupts: Bool { queue.interrupts }
    var sourceBytes: UnsafeMutablePointer<UInt8> { source.base.assumingMemoryBound(to: UInt8.self) }
    var destinationBytes: UnsafeMutablePointer<UInt8> { destination.base.assumingMemoryBound(to: UInt8.self) }
    func sourceIOVA(_ offset: Int) -> UInt64 { source.iova + UInt64(offset) }
    func destinationIOVA(_ offset: Int) -> UInt64 { destination.iova + UInt64(offset) }

    /// Fills the source with a pattern from `seed`.
    func fillSource(seed: UInt64) {
        var g = SplitMix64(seed: seed)
        var i = 0
        while i + 8 <= length { source.base.storeBytes(of: g.next(), toByteOffset: i, as: UInt64.self); i += 8 }
        while i < length { source.base.storeBytes(of: UInt8(truncatingIfNeeded: g.next()), toByteOffset: i, as: UInt8.self); i += 1 }
    }

    /// Sets the destination to `byte` everywhere.
    func clearDestination(_ byte: UInt8) { memset(destination.base, Int32(byte), length) }

    /// Polls until nothing is outstanding or `timeout` passes; returns ops completed and failed.
    func drain(timeout: Duration) -> (completed: Int, failed: Int, timedOut: Bool) {
        var done = 0, failed = 0
        let deadline = ContinuousClock.now + timeout
        while queue.outstanding > 0 {
            let c = queue.completed(max: 64)
            done += c.count
            if c.hadError { failed += 1 }
            if c.count == 0 && !c.hadError {
                if ContinuousClock.now >= deadline { return (done, failed, true) }
                sched_yield()
            }
        }
        return (done, failed, false)
    }

    /// Waits until the channel's DPC has run after interrupt generation `generation` (read it
    /// before the last poll that found nothing, so no interrupt is missed). The thread spins for
    /// up to `spin`, then sleeps until the DPC wakes it
    /// (``NetDMAChannel/blockUntilInterrupt(after:timeout:spin:)``); no async executor is involved.
    ///
    /// - Throws: `.timeout` when no interrupt came within `timeout`.
    func waitForInterrupt(after generation: UInt64, timeout: Duration, spin: Duration = .microseconds(50)) throws(DriverError) {
        do {
            _ = try channel.blockUntilInterrupt(after: generation, timeout: timeout, spin: spin)
        } catch where error.code == .timeout {
            throw DriverError(.timeout, "No interrupt on channel \(channel.index) within \(formatDuration(timeout)) (channel \(channel.state)); check the MSI-X routing (`dmesg`, /proc/interrupts).")
        }
    }

    /// Frees the channel (after a drain; a channel with work left is reset first).
    func free() {
        if (try? channel.free()) == nil {
            try? channel.reset()
            try? channel.free()
        }
    }

    /// The first byte where `destination[offset..<offset+count]` differs from
    /// `source[sourceOffset...]`, or nil when they are equal.
    func firstMismatch(destination offset: Int, source sourceOffset: Int, count: Int) -> Int? {
        if memcmp(destinationBytes + offset, sourceBytes + sourceOffset, count) == 0 { return nil }
        for i in 0..<count where destinationBytes[offset + i] != sourceBytes[sourceOffset + i] { return i }
        return nil
    }

    /// The first byte of `destination[offset..<offset+count]` that is not the 8-byte `pattern`
    /// repeated (in memory order from `offset`), or nil.
    func firstFillMismatch(destination offset: Int, pattern: UInt64, count: Int) -> Int? {
        for i in 0..<count {
            let want = UInt8(truncatingIfNeeded: pattern >> UInt64((i & 7) * 8))
            if destinationBytes[offset + i] != want { return i }
        }
        return nil
    }

    /// The first byte of `destination[range]` that is not `byte`, or nil.
    func firstNot(_ byte: UInt8, in range: Range<Int>) -> Int? {
        range.first { destinationBytes[$0] != byte }
    }
}

/// Formats a duration as "12 µs", "1.5 ms", "2.0 s".
func formatDuration(_ d: Duration) -> String {
    let us = Double(d.components.seconds) * 1e6 + Double(d.components.attoseconds) / 1e12
    if us < 1000 { return String(format: "%.0f µs", us) }
    if us < 1_000_000 { return String(format: "%.1f ms", us / 1000) }
    return String(format: "%.2f s", us / 1e6)
}

func microseconds(_ d: Duration) -> Double {
    Double(d.components.seconds) * 1e6 + Double(d.components.attoseconds) / 1e12
}

/// Lays out rows as aligned columns (the first row is the header).
func columns(_ rows: [[String]], rightAligned: Set<Int> = []) -> [String] {
    guard let first = rows.first else { return [] }
    let widths = (0..<first.count).map { c in rows.map { $0[c].count }.max() ?? 0 }
    return rows.map { row in
        zip(row.indices, row).map { c, cell in
            let pad = String(repeating: " ", count: widths[c] - cell.count)
            return rightAligned.contains(c) ? pad + cell : cell + pad
        }.joined(separator: "  ").trimmingTrailingSpaces
    }
}

extension String {
    var trimmingTrailingSpaces: String {
        var s = Substring(self)
        while s.last == " " { s.removeLast() }
        return String(s)
    }
}

/// JSON with sorted keys, pretty-printed.
func encodeJSON<T: Encodable>(_ value: T) throws -> String {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
    return String(decoding: try encoder.encode(value), as: UTF8.self)
}
