import Hardware
import Synchronization

/// The channel control word: every state transition of a channel is one compare-and-swap on it,
/// so register writers (any thread) and the engine (its own thread) never take a lock.
///
/// Layout (bits): 15:0 DMACOUNT as last written; 31:16 the engine's descriptor count
/// (published whenever the channel leaves ACTIVE); 34:32 CHANSTS state; 35 busy (a register
/// writer is changing engine-owned fields; held for a few stores, never across a wait);
/// 36 halted by an error; 37 no descriptor fetched since CHAINADDR; 38 CHANSTS.SOFT_ERR;
/// 39 CHANSTS.UNAFFILIATED_ERR; 47:40 commands posted while ACTIVE, applied by the engine
/// after the current descriptor; 48 a descriptor fault was injected (fail or corrupt; kept
/// across RESET, cleared by power loss): the engine's fast path leaves such a channel to the
/// general path, which counts the faults down.
enum Ctl {
    static let countShift: UInt64 = 16
    static let stateShift: UInt64 = 32
    static let stateMask: UInt64 = 0x7 << 32
    static let busy: UInt64 = 1 << 35
    static let errorHalt: UInt64 = 1 << 36
    static let fresh: UInt64 = 1 << 37
    static let softError: UInt64 = 1 << 38
    static let unaffiliated: UInt64 = 1 << 39
    static let reqSuspend: UInt64 = 1 << 40
    static let reqAbort: UInt64 = 1 << 41
    static let reqReset: UInt64 = 1 << 42
    static let reqAppend: UInt64 = 1 << 43
    static let requests: UInt64 = 0xFF << 40
    static let faultArmed: UInt64 = 1 << 48

    static let active = UInt64(IOAT.ChannelState.active.rawValue)
    static let done = UInt64(IOAT.ChannelState.done.rawValue)
    static let suspended = UInt64(IOAT.ChannelState.suspended.rawValue)
    static let halted = UInt64(IOAT.ChannelState.halted.rawValue)
    static let armed = UInt64(IOAT.ChannelState.armed.rawValue)

    @inline(__always) static func dmacount(_ v: UInt64) -> UInt16 { UInt16(truncatingIfNeeded: v) }
    @inline(__always) static func count(_ v: UInt64) -> UInt16 { UInt16(truncatingIfNeeded: v >> countShift) }
    @inline(__always) static func state(_ v: UInt64) -> UInt64 { (v & stateMask) >> stateShift }
    @inline(__always) static func with(_ v: UInt64, dmacount: UInt16) -> UInt64 { (v & ~0xFFFF) | UInt64(dmacount) }
    @inline(__always) static func with(_ v: UInt64, count: UInt16) -> UInt64 {
        (v & ~(0xFFFF << countShift)) | (UInt64(count) << countShift)
    }
    @inline(__always) static func with(_ v: UInt64, state: UInt64) -> UInt64 { (v & ~stateMask) | (state << stateShift) }
    /// Power-on / reset value: HALTED, counts 0.
    static let initial: UInt64 = halted << stateShift
}

/// One channel's registers and engine hand-off fields, all atomics, living in memory the device
/// allocates once (so the engine loop touches them without reference counting).
struct IOATChannelState: ~Copyable {
    let ctl = Atomic<UInt64>(Ctl.initial)
    /// CHANCTRL as written, bit 0 (INT_REARM) stripped.
    let chanctrl = Atomic<UInt32>(0)
    /// The channel interrupt is armed (CHANCTRL written with INT_REARM since the last one).
    let intArmed = Atomic<Bool>(false)
    /// CHAINADDR as software sees it (a low-half write shows before the high half commits).
    let chainAddr = Atomic<UInt64>(0)
    /// CHANCMP as software sees it, and the committed value the engine writes to.
    let chanCmp = Atomic<UInt64>(0)
    let chanCmpCommitted = Atomic<UInt64>(0)
    /// The next descriptor to fetch (engine-owned while ACTIVE).
    let nextDescriptor = Atomic<UInt64>(0)
    /// The last descriptor executed (v1 APPEND re-reads its `next`).
    let lastDescriptor = Atomic<UInt64>(0)
    /// CHANSTS bits 63:6: the last completed descriptor; 0 after reset or CHAINADDR.
    let completed = Atomic<UInt64>(0)
    let cdar = Atomic<UInt64>(0)
    let chanerr = Atomic<UInt32>(0)
    let chanerrMask = Atomic<UInt32>(0)
    let dcactrl = Atomic<UInt32>(0)
    let drsctl = Atomic<UInt32>(0)
    let ltrSwsel = Atomic<UInt32>(0)
    let ltrActive = Atomic<UInt32>(0)
    let ltrIdle = Atomic<UInt32>(0)
    /// RESET readback: CHANCMD bit 5 reads 1 while reads remain or before `resetUntil` (ns).
    let resetReadsLeft = Atomic<Int>(0)
    let resetUntil = Atomic<UInt64>(0)
    /// Torn 64-bit CHANSTS reads (< 3.3): the completed address before the latest one.
    let previousCompleted = Atomic<UInt64>(0)
    /// Interrupt coalescing: when the deferred interrupt is due (monotonic ns), 0 if none.
    let deferredInterrupt = Atomic<UInt64>(0)
    /// Fault injection: a flag the engine checks once per descriptor, and the faults.
    let faultFlag = Atomic<UInt32>(0)
    let failCountdown = Atomic<Int>(-1)
    let failBits = Atomic<UInt32>(0)
    let corruptCountdown = Atomic<Int>(-1)
    let corruptOffset = Atomic<Int>(0)
    let corruptMask = Atomic<UInt32>(0)
    let stallUntil = Atomic<UInt64>(0)
    /// Descriptors executed (published at the end of each engine batch).
    let executed = Atomic<UInt64>(0)
    /// Of those, the ones the engine's fast path ran (only the engine writes it).
    let fastExecuted = Atomic<UInt64>(0)

    static let faultFail: UInt32 = 1
    static let faultCorrupt: UInt32 = 2
    static let faultStall: UInt32 = 4
}

/// Where the words the engine's C fast path (``cvfio_ioat_run``) reads and writes lie in an
/// ``IOATChannelState`` (each an `Atomic<UInt64>`: one 64-bit word in memory).
struct IOATChannelWordOffsets {
    let ctl, cdar, completed, previousCompleted, lastDescriptor, chanCmpCommitted: Int

    init() {
        let state = UnsafeMutablePointer<IOATChannelState>.allocate(capacity: 1)
        state.initialize(to: IOATChannelState())
        defer { state.deinitialize(count: 1); state.deallocate() }
        let base = UnsafeRawPointer(state)
        // An atomic is borrowed in place: the pointer is that of its storage.
        func offset(_ word: borrowing Atomic<UInt64>) -> Int { withUnsafePointer(to: word) { UnsafeRawPointer($0) - base } }
        ctl = offset(state.pointee.ctl)
        cdar = offset(state.pointee.cdar)
        completed = offset(state.pointee.completed)
        previousCompleted = offset(state.pointee.previousCompleted)
        lastDescriptor = offset(state.pointee.lastDescriptor)
        chanCmpCommitted = offset(state.pointee.chanCmpCommitted)
        precondition([ctl, cdar, completed, previousCompleted, lastDescriptor, chanCmpCommitted].allSatisfy {
            $0 >= 0 && $0 + 8 <= MemoryLayout<IOATChannelState>.size && $0 % 8 == 0
        }, "IOATChannelState: a word the fast path uses lies outside the state")
    }
}

/// Monotonic time in nanoseconds (vDSO; no system call).
@inline(__always)
func monotonicNanoseconds() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
}

#if canImport(Glibc)
import Glibc
#endif
