import CVFIO
import Hardware
import Platform
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Everything a ``MockIOATDevice`` is: registers, config space, engine state and the engine
/// thread's wake-up word. Shared by the device, its BAR and config values, and the engine thread.
/// When the engine's fast path (``IOATDeviceCore/runCached(_:count:next:v:limit:)``) was set up:
/// redone when a translation cache is refilled (`cacheStamp` moves), the IOMMU generation
/// changes or another channel runs.
struct FastRunState {
    var cacheStamp: UInt64 = 0
    var builtStamp: UInt64 = ~0
    var builtGeneration: UInt64 = 1
    var builtChannel: UnsafeMutablePointer<IOATChannelState>? = nil
    var usable = false
}

final class IOATDeviceCore: @unchecked Sendable {
    // @unchecked: every mutable field is an atomic, a Mutex, or engine-local state (`caches`)
    // touched only by the single executor (the engine thread, or the stepping caller in manual mode).

    let profile: IOAT.Profile
    let iommu: SoftIOMMU
    let options: MockIOATDevice.Options
    let manual: Bool
    let channelCount: Int
    let vectorCount: Int
    let v1: Bool
    /// Profile fields the engine loop reads, copied out so it never touches the profile's strings.
    let capabilities: IOAT.DMACapability
    let maximumTransferSize: Int
    /// ``maximumTransferSize`` as the engine compares it.
    let maximumTransfer: UInt64
    /// Register-map constants for the engine loop (see ``EngineBits``).
    let bits: EngineBits
    let config: PCIConfigModel

    let channels: UnsafeMutablePointer<IOATChannelState>
    /// The IOMMU's generation word (``SoftIOMMU/generationWord``), read by the engine's fast path.
    let iommuGeneration: UnsafePointer<Atomic<UInt64>>
    let caches: UnsafeMutablePointer<TranslationCache>
    /// The engine fast path's state (``runCached(_:count:next:v:limit:)``): its constants set
    /// here, the rest for each run.
    let fastRun: UnsafeMutablePointer<cvfio_ioat_run>
    let offsets = IOATChannelWordOffsets()
    /// When ``fastRun`` was set up (engine-local, like ``caches``).
    let fastRunState: UnsafeMutablePointer<FastRunState>

    // Device registers.
    let genCtrl = Atomic<UInt32>(0)
    let intrCtrl = Atomic<UInt32>(0)
    let attnStatus = Atomic<UInt32>(0)
    let intrDelay = Atomic<UInt16>(0)
    let prefetchLimit = Atomic<UInt32>(0)
    /// MSI-X table (4 dwords per vector) and PBA.
    let msix: UnsafeMutablePointer<Atomic<UInt32>>
    let pba = Atomic<UInt64>(0)
    /// Interrupt routing: the model's own dup of each vector's eventfd, -1 when detached.
    let interruptFDs: UnsafeMutablePointer<Atomic<Int32>>
    let routing = Mutex<[Int32]>([])  // retired dups, closed at deinit

    // Counters.
    let interruptsSignalled = Atomic<UInt64>(0)
    let interruptsLost = Atomic<UInt64>(0)
    let droppedWideWrites = Atomic<UInt64>(0)
    let droppedChainWrites = Atomic<UInt64>(0)

    // Engine thread coordination.
    let wakeWord: UnsafeMutablePointer<Atomic<UInt32>>
    let sleeping = Atomic<Bool>(false)
    let stopRequested = Atomic<Bool>(false)
    let deferredPending = Atomic<Bool>(false)
    let powerRequest = Atomic<UInt32>(0)  // 1: lose registers only, 2: lose config too
    let powerAck = Atomic<UInt64>(0)
    let stepping = Atomic<Bool>(false)

    init(profile: IOAT.Profile, iommu: SoftIOMMU, manual: Bool, options: MockIOATDevice.Options) {
        self.profile = profile
        self.iommu = iommu
        iommuGeneration = iommu.generationWord
        self.options = options
        self.manual = manual
        channelCount = max(1, min(profile.channelsPerFunction, 31))
        vectorCount = channelCount
        v1 = profile.isV1
        capabilities = profile.capabilities
        maximumTransferSize = profile.maximumTransferSize
        maximumTransfer = UInt64(max(0, profile.maximumTransferSize))
        bits = EngineBits(capabilities: profile.capabilities)
        config = PCIConfigModel(profile: profile, vectors: channelCount)
        channels = .allocate(capacity: channelCount)
        for i in 0..<channelCount { (channels + i).initialize(to: IOATChannelState()) }
        caches = .allocate(capacity: 4)
        caches.initialize(repeating: TranslationCache(), count: 4)
        fastRun = .allocate(capacity: 1)
        fastRunState = .allocate(capacity: 1)
        fastRunState.initialize(to: FastRunState())
        // The C fast path tests the control word's and descriptors' bits by its own names.
        precondition(CVFIO_IOAT_CTL_BUSY == Ctl.busy && CVFIO_IOAT_CTL_SOFT_ERROR == Ctl.softError
            && CVFIO_IOAT_CTL_WATCH == Ctl.stateMask | Ctl.busy | Ctl.requests | Ctl.faultArmed && Ctl.active == 0
            && CVFIO_IOAT_DESC_OFF_PATH == bits.offFastPath && CVFIO_IOAT_DESC_COMPLETION_WRITE == bits.completionWrite
            && CVFIO_IOAT_DESC_INT_ENABLE == bits.intEnable, "CVFIO's CBDMA fast-path constants differ from the model's")
        let scratch = UnsafeMutableRawPointer(caches).assumingMemoryBound(to: UInt64.self)
        let none = cvfio_window(base: ~0, reach: 0, host: UnsafeMutableRawPointer(scratch).assumingMemoryBound(to: CChar.self))
        let word = UnsafeRawPointer(iommuGeneration).assumingMemoryBound(to: UInt64.self)
        fastRun.initialize(to: cvfio_ioat_run(
            descriptor: none, source: none, destination: none, completion: none, generation_word: word, generation: 1,
            ctl: word, cdar: scratch, completed: scratch, previous_completed: scratch, last_descriptor: scratch,
            chancmp: word, largest: 0, overlap: 0,
            state_active: Ctl.active, state_done: Ctl.done, status_soft_error: IOAT.ChanSts.softError,
            count: 0, end: 0, next: 0, ctl_value: 0, last: 0, control: 0, stopped_after: 0))
        msix = .allocate(capacity: channelCount * 4)
        for i in 0..<(channelCount * 4) { (msix + i).initialize(to: Atomic(i % 4 == 3 ? IOAT.msixVectorMasked : 0)) }
        interruptFDs = .allocate(capacity: channelCount)
        for i in 0..<channelCount { (interruptFDs + i).initialize(to: Atomic(-1)) }
        wakeWord = .allocate(capacity: 1)
        wakeWord.initialize(to: Atomic(0))
        intrDelay.store(profile.major >= 3 ? IOAT.intrDelayCoalescingSupported : 0, ordering: .relaxed)
        config.core = self
    }

    deinit {
        for i in 0..<channelCount {
            let fd = interruptFDs[i].load(ordering: .relaxed)
            if fd >= 0 { close(fd) }
        }
        for fd in routing.withLock({ $0 }) { close(fd) }
        channels.deinitialize(count: channelCount); channels.deallocate()
        caches.deinitialize(count: 4); caches.deallocate()
        fastRun.deinitialize(count: 1); fastRun.deallocate()
        fastRunState.deinitialize(count: 1); fastRunState.deallocate()
        msix.deinitialize(count: channelCount * 4); msix.deallocate()
        interruptFDs.deinitialize(count: channelCount); interruptFDs.deallocate()
        wakeWord.deinitialize(count: 1); wakeWord.deallocate()
    }

    // MARK: Waking the engine

    /// Tells the engine thread there is work; a system call only when it sleeps.
    @inline(__always)
    func wake() {
        guard !manual else { return }
        wakeWord.pointee.add(1, ordering: .sequentiallyConsistent)
        if sleeping.load(ordering: .sequentiallyConsistent) {
            _ = cvfio_futex_wake(futexAddress, 1)
        }
    }

    var futexAddress: UnsafeMutablePointer<UInt32> {
        UnsafeMutableRawPointer(wakeWord).assumingMemoryBound(to: UInt32.self)
    }

    /// Whether any channel can make progress now (ACTIVE, not stalled, DMA allowed), or a request waits.
    func hasWork() -> Bool {
        if powerRequest.load(ordering: .sequentiallyConsistent) != 0 { return true }
        for c in 0..<channelCount {
            let v = channels[c].ctl.load(ordering: .sequentiallyConsistent)
            guard Ctl.state(v) == Ctl.active else { continue }
            if v & Ctl.requests != 0 { return true }
            if !dmaAllowed { continue }
            if channels[c].faultFlag.load(ordering: .relaxed) & IOATChannelState.faultStall != 0,
               monotonicNanoseconds() < channels[c].stallUntil.load(ordering: .relaxed) { continue }
            return true
        }
        return false
    }

    /// The earliest stall end or deferred interrupt, 0 if none.
    func nextDeadline() -> UInt64 {
        var nearest: UInt64 = 0
        for c in 0..<channelCount {
            let d = channels[c].deferredInterrupt.load(ordering: .relaxed)
            if d != 0 { nearest = nearest == 0 ? d : min(nearest, d) }
            if channels[c].faultFlag.load(ordering: .relaxed) & IOATChannelState.faultStall != 0,
               Ctl.state(channels[c].ctl.load(ordering: .relaxed)) == Ctl.active {
                let s = channels[c].stallUntil.load(ordering: .relaxed)
                nearest = nearest == 0 ? s : min(nearest, s)
            }
        }
        return nearest
    }

    // MARK: The engine thread

    /// The engine thread's loop: service every channel, spin briefly when idle, then sleep on
    /// the futex until a doorbell, a command or a deadline.
    func runEngineThread() {
        var idle = 0
        let spinLimit = max(0, options.spinIterations)
        while !stopRequested.load(ordering: .relaxed) {
            if powerRequest.load(ordering: .acquiring) != 0 { applyPowerLoss() }
            var work = 0
            for c in 0..<channelCount { work += service(c, budget: 256) }
            if deferredPending.load(ordering: .relaxed) { _ = deliverDeferred() }
            if work > 0 { idle = 0; continue }
            idle += 1
            if idle < spinLimit { cvfio_pause(); continue }
            let seen = wakeWord.pointee.load(ordering: .sequentiallyConsistent)
            sleeping.store(true, ordering: .sequentiallyConsistent)
            if hasWork() || stopRequested.load(ordering: .sequentiallyConsistent) {
                sleeping.store(false, ordering: .relaxed)
                idle = 0
                continue
            }
            let deadline = nextDeadline()
            var timeout: Int = -1
            if deadline != 0 {
                let now = monotonicNanoseconds()
                timeout = deadline > now ? Int(deadline - now) : 0
            }
            if timeout != 0 { _ = cvfio_futex_wait(futexAddress, seen, timeout) }
            sleeping.store(false, ordering: .relaxed)
            idle = spinLimit / 2
        }
    }

    // MARK: Manual stepping

    /// One unit of work on the first channel (round-robin from `start`) that has any.
    func stepOnce() -> Bool {
        if powerRequest.load(ordering: .acquiring) != 0 { applyPowerLoss(); return true }
        _ = deliverDeferred()
        for c in 0..<channelCount where service(c, budget: 1) > 0 { return true }
        return false
    }

    // MARK: Reset and power

    /// The control word after a channel RESET: HALTED, counts 0, no requests, no error halt
    /// (an injected fault stays armed).
    func resetValue(_ v: UInt64) -> UInt64 { Ctl.initial | (v & Ctl.faultArmed) }

    /// Clears what a RESET clears: the engine's position (call with the channel not ACTIVE, or
    /// from the engine) and, with `registers`, the registers software writes (CHANCTRL and the
    /// interrupt arm, CHAINADDR, CHANCMP, ATTNSTATUS bit). CHANERR is kept.
    func clearForReset(_ c: Int, engine: Bool = true, registers: Bool = true) {
        let ch = channels + c
        if engine {
            ch.pointee.completed.store(0, ordering: .relaxed)
            ch.pointee.previousCompleted.store(0, ordering: .relaxed)
            ch.pointee.cdar.store(0, ordering: .relaxed)
            ch.pointee.nextDescriptor.store(0, ordering: .relaxed)
            ch.pointee.lastDescriptor.store(0, ordering: .relaxed)
            ch.pointee.deferredInterrupt.store(0, ordering: .relaxed)
        }
        guard registers else { return }
        ch.pointee.chainAddr.store(0, ordering: .relaxed)
        ch.pointee.chanCmp.store(0, ordering: .relaxed)
        ch.pointee.chanCmpCommitted.store(0, ordering: .relaxed)
        ch.pointee.chanctrl.store(0, ordering: .relaxed)
        ch.pointee.intArmed.store(false, ordering: .relaxed)
        attnStatus.bitwiseAnd(~(1 << UInt32(c)), ordering: .relaxed)
    }

    /// Side effects of a completed RESET beyond the channel: the 3.3 MSI-X wipe, TBG0's parity error.
    func afterReset(_ c: Int) {
        if profile.resetClobbersMSIX { wipeMSIX() }
        if profile.spuriousParityErrorAfterReset { config.setDMAUncorrectable(IOAT.dmauncerrstsParityError) }
    }

    /// MSI-X table and PBA to their reset values (entries zero and masked).
    func wipeMSIX() {
        for i in 0..<(vectorCount * 4) { msix[i].store(i % 4 == 3 ? IOAT.msixVectorMasked : 0, ordering: .relaxed) }
        pba.store(0, ordering: .relaxed)
    }

    /// Loses every BAR0 register (power loss, D3hot → D0 without No_Soft_Reset); with `request`
    /// 2 the configuration space and MSI-X table are lost too.
    func applyPowerLoss() {
        let kind = powerRequest.load(ordering: .acquiring)
        guard kind != 0 else { return }
        for c in 0..<channelCount {
            let ch = channels + c
            // Take the channel from any racing writer.
            while true {
                let v = ch.pointee.ctl.load(ordering: .acquiring)
                if v & Ctl.busy != 0 { cvfio_pause(); continue }
                if ch.pointee.ctl.compareExchange(expected: v, desired: Ctl.initial | Ctl.busy, ordering: .acquiringAndReleasing).exchanged { break }
            }
            clearForReset(c)
            ch.pointee.chanerr.store(0, ordering: .relaxed)
            ch.pointee.chanerrMask.store(0, ordering: .relaxed)
            ch.pointee.dcactrl.store(0, ordering: .relaxed)
            ch.pointee.drsctl.store(0, ordering: .relaxed)
            ch.pointee.ltrSwsel.store(0, ordering: .relaxed)
            ch.pointee.ltrActive.store(0, ordering: .relaxed)
            ch.pointee.ltrIdle.store(0, ordering: .relaxed)
            ch.pointee.resetReadsLeft.store(0, ordering: .relaxed)
            ch.pointee.resetUntil.store(0, ordering: .relaxed)
            ch.pointee.faultFlag.store(0, ordering: .relaxed)
            ch.pointee.failCountdown.store(-1, ordering: .relaxed)
            ch.pointee.corruptCountdown.store(-1, ordering: .relaxed)
            ch.pointee.ctl.store(Ctl.initial, ordering: .releasing)
        }
        genCtrl.store(0, ordering: .relaxed)
        intrCtrl.store(0, ordering: .relaxed)
        attnStatus.store(0, ordering: .relaxed)
        intrDelay.store(profile.major >= 3 ? IOAT.intrDelayCoalescingSupported : 0, ordering: .relaxed)
        prefetchLimit.store(0, ordering: .relaxed)
        if kind == 2 {
            wipeMSIX()
            config.powerOnReset()
        }
        powerRequest.store(0, ordering: .relaxed)
        powerAck.add(1, ordering: .releasing)
        if !manual { wakeWord.pointee.add(1, ordering: .sequentiallyConsistent); _ = cvfio_futex_wake(futexAddress, Int32.max) }
    }
}

/// The engine thread's entry point.
private func ioatEngineThreadMain(_ context: UnsafeMutableRawPointer?) -> UnsafeMutableRawPointer? {
    let core = Unmanaged<IOATDeviceCore>.fromOpaque(context!).takeRetainedValue()
    core.runEngineThread()
    return nil
}

extension IOATDeviceCore {
    /// Starts the engine thread; it holds the core until ``stopEngineThread(_:)``.
    func startEngineThread() -> ModelEngineThread {
        ModelEngineThread(name: "MockIOATDevice", context: Unmanaged.passRetained(self).toOpaque()) { ioatEngineThreadMain($0) }
    }

    func stopEngineThread(_ thread: pthread_t) {
        stopRequested.store(true, ordering: .sequentiallyConsistent)
        wakeWord.pointee.add(1, ordering: .sequentiallyConsistent)
        _ = cvfio_futex_wake(futexAddress, Int32.max)
        pthread_join(thread, nil)
    }
}
