import CVFIO
import Hardware
import Platform
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The DSA model's state and engine (see ``MockDSADevice``, the public handle that owns it).
///
/// The engine thread works on this object, never on the handle: the handle's `deinit` stops and
/// joins the thread before it drops the core, so the thread never makes the last release (a
/// `deinit` running on the engine thread could not join it).
final class DSADeviceCore: @unchecked Sendable {
    typealias Execution = MockDSADevice.Execution
    typealias Options = MockDSADevice.Options
    typealias Fault = MockDSADevice.Fault
    typealias Statistics = MockDSADevice.Statistics

    // @unchecked: all mutable state is atomics in buffers this object allocates and frees,
    // or inside the `control` / `swerrLock` mutexes.

    /// The capability profile (VERSION, GENCAP, WQCAP, GRPCAP, ENGCAP, OPCAP).
    public let profile: DSA.Profile
    /// The address space every device memory access goes through.
    public let iommu: SoftIOMMU
    /// How the engine runs.
    public let execution: Execution
    /// Test switches.
    public let options: Options
    /// Where the model placed the configuration tables (also readable from TABLE_OFFSET).
    public let tableOffset: DSA.TableOffset
    /// The BAR0 size.
    public let bar0Length: Int
    /// The BAR2 size: 16 KiB per WQ.
    public let bar2Length: Int

    // Capabilities, copied out of the profile for the engine's hot path.
    let genCap: DSA.GenCap
    let wqCap: DSA.WQCap
    let version: UInt32

    // Geometry.
    let wqCount: Int
    let groupCount: Int
    let engineCount: Int
    let wqStride: Int
    let maxEntries: Int
    /// MSI-X vectors: 0 for device events and errors, 1… for completions.
    public let interruptVectorCount: Int

    // BAR0 as dwords.
    let regs: UnsafeMutablePointer<Atomic<UInt32>>
    let regCount: Int

    // Per-WQ queues: a bounded multi-producer, single-consumer ring per WQ (Vyukov sequence
    // numbers), `maxEntries` slots each, of which `capacity` are in use while enabled.
    let wqState: UnsafeMutablePointer<Atomic<UInt32>>
    let wqCapacity: UnsafeMutablePointer<Atomic<Int>>
    let wqHead: UnsafeMutablePointer<Atomic<UInt64>>
    let wqTail: UnsafeMutablePointer<Atomic<UInt64>>
    let wqCompleted: UnsafeMutablePointer<Atomic<UInt64>>
    let slotSeq: UnsafeMutablePointer<Atomic<UInt64>>
    let slotData: UnsafeMutableRawPointer
    let slotIMS: UnsafeMutablePointer<UInt8>

    // Interrupts.
    let vectorFD: UnsafeMutablePointer<Atomic<Int32>>
    let vectorCount: UnsafeMutablePointer<Atomic<UInt64>>

    // Engine.
    let scratch: UnsafeMutableRawPointer  // 64 bytes top-level + 64 bytes batch member
    /// The fast path's state (``runFast(list:from:count:wq:)``): its cached mappings and the
    /// IOMMU generation they belong to (the engine's only).
    let fastRun: UnsafeMutablePointer<cvfio_dsa_run>
    let doorbell: UnsafeMutablePointer<Atomic<UInt32>>
    let sleeping = Atomic<UInt32>(0)
    let stopFlag = Atomic<Bool>(false)
    let stalledFlag = Atomic<Bool>(false)
    /// Non-zero while BAR accesses are not decoded: bit 0 power off, bit 1 COMMAND.Memory clear.
    let decodeOff = Atomic<UInt8>(0)
    let engineBusy = Atomic<Bool>(false)
    let commandPending = Atomic<Bool>(false)
    let nextWQ = Atomic<Int>(0)
    let injectCountdown = Atomic<Int>(-1)
    let injectStatus = Atomic<UInt8>(0)
    let dropped = Atomic<UInt64>(0)
    let operations = Atomic<UInt64>(0)
    /// Operations the fast path executed (``runFast(list:from:count:wq:)``).
    let fastOperations = Atomic<UInt64>(0)
    let signalled = Atomic<UInt64>(0)
    let lost = Atomic<UInt64>(0)
    let stepping = Atomic<Bool>(false)
    /// Eventfd duplicates replaced by a later route; closed at deinit (the engine may still
    /// be writing to one, so it is never closed earlier).
    let retiredFDs = Mutex<[Int32]>([])
    var thread: pthread_t? = nil
    /// The engine thread's kernel thread ID (0: manual execution).
    var threadID: Int32 = 0

    // Control plane.
    struct PendingCommand {
        var raw: UInt32
        var pollsRemaining: Int
        var started = false
        /// WQs the command waits for, with the submission count each must complete.
        var waits: [(wq: Int, target: UInt64)] = []
        /// WQs whose queued descriptors are discarded (abort) before waiting.
        var abortWQs: [Int] = []
        var finish: FinishAction = .none
    }
    enum FinishAction { case none, disableWQs([Int]), resetWQs([Int]), disableDevice, resetDevice }
    struct Control {
        var pending: PendingCommand? = nil
        var busMaster = true
    }
    let control = Mutex<Control>(Control())
    let swerrLock = Mutex<Void>(())

    /// Creates a DSA model.
    ///
    /// - Parameters:
    ///   - profile: the capability registers (``DSA/sapphireRapids`` or ``DSA/dsa2``, or a variant).
    ///   - iommu: the address space descriptors' IOVAs are translated through.
    ///   - execution: an engine thread (default) or manual stepping.
    ///   - options: test switches.
    public init(profile: DSA.Profile = DSA.sapphireRapids, iommu: SoftIOMMU, execution: Execution = .thread,
                options: Options = Options()) {
        self.profile = profile
        self.iommu = iommu
        self.execution = execution
        self.options = options
        genCap = profile.genCap
        wqCap = profile.wqCap
        version = profile.version
        wqCount = profile.wqCap.count
        groupCount = profile.grpCap.count
        engineCount = profile.engineCount
        wqStride = profile.wqCap.configStride
        maxEntries = max(1, profile.wqCap.totalSize)
        interruptVectorCount = profile.msixVectorCount
        // Tables: GRPCFG at 0x400, WQCFG after it, MSI-X permissions, IMS at a 4 KiB boundary.
        let grp = 0x400
        let wq = grp + ((groupCount * DSA.GrpCfg.stride + 0xFF) & ~0xFF)
        let perm = wq + ((wqCount * wqStride + 0xFF) & ~0xFF)
        let ims = (perm + interruptVectorCount * DSA.MSIXPerm.stride + 0xFFF) & ~0xFFF
        tableOffset = DSA.TableOffset(grpcfg: grp, wqcfg: wq, msixPerm: perm, ims: ims, perfmon: 0)
        let imsBytes = profile.genCap.imsSizeMultiplier * 256 * 16
        bar0Length = (ims + max(imsBytes, 0x1000) + 0xFFF) & ~0xFFF
        bar2Length = wqCount * DSA.portalWindowSize

        regCount = bar0Length / 4
        regs = .allocate(capacity: regCount)
        for i in 0..<regCount { (regs + i).initialize(to: Atomic(0)) }
        func atomics<T: AtomicRepresentable>(_ n: Int, _ v: T) -> UnsafeMutablePointer<Atomic<T>> {
            let p = UnsafeMutablePointer<Atomic<T>>.allocate(capacity: n)
            for i in 0..<n { (p + i).initialize(to: Atomic(v)) }
            return p
        }
        wqState = atomics(wqCount, 0)
        wqCapacity = atomics(wqCount, 1)
        wqHead = atomics(wqCount, 0)
        wqTail = atomics(wqCount, 0)
        wqCompleted = atomics(wqCount, 0)
        slotSeq = atomics(wqCount * maxEntries, 0)
        slotData = .allocate(byteCount: wqCount * maxEntries * 64, alignment: 64)
        slotIMS = .allocate(capacity: wqCount * maxEntries)
        slotIMS.initialize(repeating: 0, count: wqCount * maxEntries)
        vectorFD = atomics(interruptVectorCount, -1)
        vectorCount = atomics(interruptVectorCount, 0)
        scratch = .allocate(byteCount: 128, alignment: 64)
        fastRun = .allocate(capacity: 1)
        fastRun.initialize(to: cvfio_dsa_run(list: Self.noWindow, source: Self.noWindow, destination: Self.noWindow,
                                             generation_word: UnsafeRawPointer(iommu.generationWord).assumingMemoryBound(to: UInt64.self),
                                             generation: 1, largest: 0, allowed: (0, 0, 0, 0, 0),
                                             avx2: cvfio_cpu_avx2(), address: 0, remaining: 0))
        doorbell = atomics(1, 0)
        powerOnReset()
        if execution == .thread { startThread() }
    }

    /// Stops and joins the engine thread (the handle's `deinit`).
    func stopEngineThread() {
        guard let thread else { return }
        stopFlag.store(true, ordering: .sequentiallyConsistent)
        wakeEngine()
        pthread_join(thread, nil)
        self.thread = nil
    }

    deinit {
        stopEngineThread()
        regs.deinitialize(count: regCount); regs.deallocate()
        for p in [wqHead, wqTail, wqCompleted] { p.deinitialize(count: wqCount); p.deallocate() }
        wqState.deinitialize(count: wqCount); wqState.deallocate()
        wqCapacity.deinitialize(count: wqCount); wqCapacity.deallocate()
        slotSeq.deinitialize(count: wqCount * maxEntries); slotSeq.deallocate()
        slotData.deallocate()
        slotIMS.deallocate()
        for i in 0..<interruptVectorCount where vectorFD[i].load(ordering: .relaxed) >= 0 { close(vectorFD[i].load(ordering: .relaxed)) }
        vectorFD.deinitialize(count: interruptVectorCount); vectorFD.deallocate()
        vectorCount.deinitialize(count: interruptVectorCount); vectorCount.deallocate()
        scratch.deallocate()
        fastRun.deallocate()
        doorbell.deinitialize(count: 1); doorbell.deallocate()
        for fd in retiredFDs.withLock({ $0 }) { close(fd) }
    }

    // MARK: - PCI

    /// The PCI command register's Bus Master Enable bit, as the driver set it through config space.
    ///
    /// Enable Device fails with CMDSTS 0x12 while it is clear. Clearing it while the device is
    /// Enabled halts the device with reset type FLR and logs SWERR 0x51 (Intel's VDCM behaviour).
    public var busMasterEnabled: Bool {
        get { control.withLock { $0.busMaster } }
        set {
            let halt: Bool = control.withLock { c in
                let was = c.busMaster
                c.busMaster = newValue
                return was && !newValue && deviceState == .enabled
            }
            if halt {
                reportSoftwareError(code: DSA.SoftwareErrorCode.pciConfig)
                enterHalt(.flr)
            }
        }
    }

    /// COMMAND bit 1, Memory Space Enable: while clear, BAR0 reads return all-ones and BAR0
    /// and BAR2 writes are dropped, as on a PCIe bus.
    public var memorySpaceEnabled: Bool {
        get { decodeOff.load(ordering: .acquiring) & 2 == 0 }
        set {
            if newValue { _ = decodeOff.bitwiseAnd(~2, ordering: .sequentiallyConsistent) }
            else { _ = decodeOff.bitwiseOr(2, ordering: .sequentiallyConsistent) }
        }
    }

    /// A function-level reset (`VFIO_DEVICE_RESET`): queued descriptors are discarded without
    /// records and every register returns to its reset value. The only way out of a Halt whose
    /// reset type is FLR. Bus Master keeps its value (vfio-pci restores config space).
    public func functionLevelReset() {
        quiesceEngine {
            control.withLock { c in c.pending = nil }
            powerOnReset()
        }
    }

    // MARK: - Manual stepping

    /// Runs one unit of engine work: one descriptor (a whole batch counts as one), or
    /// progress on a waiting command. Returns false when there was nothing to do.
    ///
    /// - Precondition: the model was created with `execution: .manual`; no concurrent calls.
    @discardableResult
    public func step() -> Bool {
        precondition(execution == .manual, "MockDSADevice.step() needs execution: .manual")
        precondition(!stepping.exchange(true, ordering: .acquiring), "MockDSADevice.step() called concurrently")
        defer { stepping.store(false, ordering: .releasing) }
        return engineStep()
    }

    /// Steps until nothing is left to do (or `maxSteps` steps); returns the steps taken.
    ///
    /// - Precondition: the model was created with `execution: .manual`.
    @discardableResult
    public func runUntilIdle(maxSteps: Int = Int.max) -> Int {
        var n = 0
        while n < maxSteps && step() { n += 1 }
        return n
    }

    /// Waits until every WQ is empty, no descriptor runs and no command waits, or `timeout`
    /// passes. In manual mode it runs the engine itself. Returns whether the device went idle.
    public func waitUntilIdle(timeout: Duration = .seconds(5)) -> Bool {
        if execution == .manual { runUntilIdle(); return isIdle }
        let (s, a) = timeout.components
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        let end = Int64(ts.tv_sec) &* 1_000_000_000 &+ Int64(ts.tv_nsec) &+ s &* 1_000_000_000 &+ a / 1_000_000_000
        while !isIdle {
            clock_gettime(CLOCK_MONOTONIC, &ts)
            if Int64(ts.tv_sec) &* 1_000_000_000 &+ Int64(ts.tv_nsec) > end { return false }
            sched_yield()
        }
        return true
    }

    /// Descriptors accepted by WQ `wq` and not yet taken by the engine (WQCFG dword 6 bits 15:0).
    public func occupancy(wq: Int) -> Int {
        let t = wqTail[wq].load(ordering: .acquiring), h = wqHead[wq].load(ordering: .acquiring)
        return Int(truncatingIfNeeded: t &- h)
    }

    /// Whether every WQ is empty, no descriptor is executing and no command waits.
    public var isIdle: Bool {
        if engineBusy.load(ordering: .acquiring) || commandPending.load(ordering: .acquiring) { return false }
        for w in 0..<wqCount where occupancy(wq: w) != 0 { return false }
        return true
    }

    /// Counters since creation.
    public var statistics: Statistics {
        Statistics(descriptorsExecuted: operations.load(ordering: .relaxed),
                   fastPathDescriptors: fastOperations.load(ordering: .relaxed),
                   droppedDescriptors: dropped.load(ordering: .relaxed),
                   interruptsSignalled: signalled.load(ordering: .relaxed),
                   interruptsLost: lost.load(ordering: .relaxed),
                   iommuFaults: iommu.faults)
    }

    /// How many times vector `vector` has fired (routed or not, unless suppressed).
    public func interruptCount(vector: Int) -> UInt64 { vectorCount[vector].load(ordering: .acquiring) }

    // MARK: - Fault injection

    /// Injects `fault`.
    public func inject(_ fault: Fault) {
        switch fault {
        case .failDescriptor(let index, let status):
            injectStatus.store(status.rawValue, ordering: .relaxed)
            injectCountdown.store(max(0, index), ordering: .releasing)
        case .halt(let resetType):
            enterHalt(resetType)
        }
    }

    /// Stops the engine from taking descriptors: they pile up in their WQs (occupancy grows,
    /// a dedicated WQ overflows) and commands that wait for them stay active. Commands that
    /// discard descriptors (abort, reset) still run.
    public func stall() { stalledFlag.store(true, ordering: .releasing) }

    /// Lets a stalled engine run again.
    public func resume() {
        stalledFlag.store(false, ordering: .releasing)
        wakeEngine()
    }

    /// Power loss: queued descriptors vanish without records or interrupts and every register
    /// returns to its power-on value (Disabled, configuration lost). With `stayOff`, register
    /// reads return all-ones and writes and portal writes are ignored until ``powerOn()``.
    /// Returns once the engine has stopped touching memory.
    public func injectPowerLoss(stayOff: Bool = false) {
        if stayOff { _ = decodeOff.bitwiseOr(1, ordering: .sequentiallyConsistent) }
        quiesceEngine {
            control.withLock { $0.pending = nil }
            powerOnReset()
        }
    }

    /// Power returns after ``injectPowerLoss(stayOff:)``: the device answers again, at reset values.
    public func powerOn() {
        quiesceEngine { powerOnReset() }
        _ = decodeOff.bitwiseAnd(~1, ordering: .sequentiallyConsistent)
    }

    // MARK: - InterruptRouting

    /// Routes vector `start + i` to `eventFDs[i]` (-1 detaches it). The model keeps its own
    /// duplicate of each eventfd, as VFIO keeps a reference.
    ///
    /// - Throws: `.invalidArgument` for vectors beyond ``interruptVectorCount`` or a bad fd.
    public func routeInterrupts(start: Int, eventFDs: [Int32]) throws(DriverError) {
        guard start >= 0, start + eventFDs.count <= interruptVectorCount else {
            throw DriverError(.invalidArgument,
                "Vectors \(start)..<\(start + eventFDs.count) do not exist: this DSA has \(interruptVectorCount) MSI-X vectors.")
        }
        var dups: [Int32] = []
        for fd in eventFDs {
            if fd < 0 { dups.append(-1); continue }
            let d = fcntl(fd, F_DUPFD_CLOEXEC, 0)
            guard d >= 0 else {
                for x in dups where x >= 0 { close(x) }
                throw DriverError(.invalidArgument, errno: .init(rawValue: errno), "Eventfd \(fd) is not an open file descriptor.")
            }
            dups.append(d)
        }
        for (i, d) in dups.enumerated() { retire(vectorFD[start + i].exchange(d, ordering: .acquiringAndReleasing)) }
    }

    /// Detaches every vector.
    public func disableInterrupts() throws(DriverError) {
        for i in 0..<interruptVectorCount { retire(vectorFD[i].exchange(-1, ordering: .acquiringAndReleasing)) }
    }

    private func retire(_ fd: Int32) {
        if fd >= 0 { retiredFDs.withLock { $0.append(fd) } }
    }

    /// Signals MSI-X vector `vector` unless its permission entry sets "ignore".
    func signal(vector: Int) {
        guard vector >= 0, vector < interruptVectorCount else { return }
        let perm = dword(tableOffset.msixPerm + vector * DSA.MSIXPerm.stride)
        if perm & DSA.MSIXPerm.ignore != 0 { lost.add(1, ordering: .relaxed); return }
        vectorCount[vector].add(1, ordering: .releasing)
        let fd = vectorFD[vector].load(ordering: .acquiring)
        if fd >= 0 {
            var one: UInt64 = 1
            _ = Glibc.write(fd, &one, 8)
            signalled.add(1, ordering: .relaxed)
        } else {
            lost.add(1, ordering: .relaxed)
        }
    }

    // MARK: - Register storage

    @inline(__always) func dword(_ offset: Int) -> UInt32 { regs[offset >> 2].load(ordering: .acquiring) }
    @inline(__always) func setDword(_ offset: Int, _ v: UInt32) { regs[offset >> 2].store(v, ordering: .releasing) }
    @inline(__always) func orDword(_ offset: Int, _ v: UInt32) { _ = regs[offset >> 2].bitwiseOr(v, ordering: .acquiringAndReleasing) }
    func qword(_ offset: Int) -> UInt64 { UInt64(dword(offset)) | UInt64(dword(offset + 4)) << 32 }
    func setQword(_ offset: Int, _ v: UInt64) {
        setDword(offset, UInt32(truncatingIfNeeded: v)); setDword(offset + 4, UInt32(truncatingIfNeeded: v >> 32))
    }

    var deviceState: DSA.DeviceState { DSA.DeviceState(rawValue: dword(DSA.GENSTS) & 3)! }

    /// The byte offset of WQ `wq`'s WQCFG dword `d`.
    @inline(__always) func wqcfg(_ wq: Int, _ d: Int) -> Int { tableOffset.wqcfg + wq * wqStride + d * 4 }
    /// The byte offset of group `g`'s GRPCFG field at `field`.
    @inline(__always) func grpcfg(_ g: Int, _ field: Int) -> Int { tableOffset.grpcfg + g * DSA.GrpCfg.stride + field }

    /// Every register at its power-on value; WQ queues emptied.
    func powerOnReset() {
        for i in 0..<regCount { regs[i].store(0, ordering: .relaxed) }
        setDword(DSA.VERSION, profile.version)
        setQword(DSA.GENCAP, profile.gencap)
        setQword(DSA.WQCAP, profile.wqcap)
        setQword(DSA.GRPCAP, profile.grpcap)
        setQword(DSA.ENGCAP, profile.engcap)
        for (i, w) in profile.opcap.prefix(4).enumerated() { setQword(DSA.OPCAP + 8 * i, w) }
        setQword(DSA.TABLE_OFFSET, tableOffset.low)
        setQword(DSA.TABLE_OFFSET + 8, tableOffset.high)
        if profile.genCap.commandCapabilities { setDword(DSA.CMDCAP, profile.cmdcap) }
        for w in 0..<wqCount { resetWQConfig(w) }
        for w in 0..<wqCount { resetQueue(w, state: .disabled) }
        commandPending.store(false, ordering: .releasing)
    }

    /// WQCFG of `wq` at its reset value: zero, mode support set, op_config = OPCAP (2.0).
    func resetWQConfig(_ wq: Int) {
        for d in 0..<(wqStride / 4) where d != DSA.WQCfg.status { setDword(wqcfg(wq, d), 0) }
        setDword(wqcfg(wq, DSA.WQCfg.status), DSA.WQCfg.modeSupport)
        if profile.wqCap.opConfig && wqStride >= 64 {
            for d in 0..<8 {
                let w = d / 2 < profile.opcap.count ? profile.opcap[d / 2] : 0
                setDword(wqcfg(wq, DSA.WQCfg.opConfig + d), UInt32(truncatingIfNeeded: d % 2 == 0 ? w : w >> 32))
            }
        }
    }

    /// Empties WQ `wq`'s queue and sets its state (WQCFG dword 6 bits 31:30).
    func resetQueue(_ wq: Int, state: DSA.WQState, capacity: Int? = nil) {
        let cap = max(1, min(capacity ?? 1, maxEntries))
        wqState[wq].store(DSA.WQState.disabled.rawValue, ordering: .sequentiallyConsistent)
        wqHead[wq].store(0, ordering: .relaxed)
        wqTail[wq].store(0, ordering: .relaxed)
        wqCompleted[wq].store(0, ordering: .relaxed)
        for j in 0..<maxEntries { slotSeq[wq * maxEntries + j].store(UInt64(j), ordering: .relaxed) }
        wqCapacity[wq].store(cap, ordering: .relaxed)
        setWQState(wq, state)
    }

    func setWQState(_ wq: Int, _ state: DSA.WQState) {
        let off = wqcfg(wq, DSA.WQCfg.status)
        setDword(off, (dword(off) & 0x3FFF_FFFF) | state.rawValue << DSA.WQCfg.stateShift)
        wqState[wq].store(state.rawValue, ordering: .sequentiallyConsistent)
    }

    // MARK: - Register access (the RegisterIO of BAR0)

    func readRegister(_ offset: Int) -> UInt32 {
        if decodeOff.load(ordering: .acquiring) != 0 { return 0xFFFF_FFFF }
        if offset == DSA.CMDSTS { return readCMDSTS() }
        let tw = tableOffset.wqcfg
        if offset >= tw && offset < tw + wqCount * wqStride {
            let wq = (offset - tw) / wqStride, d = ((offset - tw) % wqStride) / 4
            if d == DSA.WQCfg.status {
                return (dword(offset) & ~0xFFFF) | UInt32(min(occupancy(wq: wq), 0xFFFF))
            }
        }
        return dword(offset)
    }

    /// Writes `value` to the bits `mask` of the dword at `offset` (a piece of an 8–64-bit store).
    func writeRegister(_ offset: Int, _ value: UInt32, mask: UInt32) {
        if decodeOff.load(ordering: .acquiring) != 0 { return }
        if offset == DSA.CMD {
            if mask == 0xFFFF_FFFF { issueCommand(value) }
            return
        }
        control.withLock { _ in writeLocked(offset, value, mask: mask) }
    }

    private func writeLocked(_ offset: Int, _ value: UInt32, mask: UInt32) {
        func merge(_ writable: UInt32) {
            let m = mask & writable
            setDword(offset, (dword(offset) & ~m) | (value & m))
        }
        let disabled = deviceState == .disabled
        switch offset {
        case DSA.GENCFG:
            if disabled { merge(0x30FF) }
        case DSA.GENCTRL:
            merge(0x7)
        case DSA.INTCAUSE:
            _ = regs[offset >> 2].bitwiseAnd(~(value & mask), ordering: .acquiringAndReleasing)
        case DSA.SWERR:
            let clear = value & mask & UInt32(DSA.SWErr.valid | DSA.SWErr.overflow)
            swerrLock.withLock { _ in _ = regs[offset >> 2].bitwiseAnd(~clear, ordering: .acquiringAndReleasing) }
        default:
            let tg = tableOffset.grpcfg, tw = tableOffset.wqcfg, tp = tableOffset.msixPerm
            if offset >= tg && offset < tg + groupCount * DSA.GrpCfg.stride {
                let f = (offset - tg) % DSA.GrpCfg.stride
                if disabled && f < DSA.GrpCfg.flags + 8 { merge(0xFFFF_FFFF) }
            } else if offset >= tw && offset < tw + wqCount * wqStride {
                let wq = (offset - tw) / wqStride, d = ((offset - tw) % wqStride) / 4
                let wqDisabled = wqState[wq].load(ordering: .acquiring) == DSA.WQState.disabled.rawValue
                switch d {
                case DSA.WQCfg.size: if disabled { merge(0xFFFF) }
                case DSA.WQCfg.threshold: if wqDisabled { merge(0xFFFF) }
                case DSA.WQCfg.mode: if wqDisabled { merge(0x3FFF_FFFF) }
                case DSA.WQCfg.limits: if wqDisabled { merge(0x1FF) }
                case DSA.WQCfg.occupancyHandle, DSA.WQCfg.occupancyLimit: if wqDisabled { merge(0x1FFFF) }
                case 8..<16: if wqDisabled && profile.wqCap.opConfig { merge(0xFFFF_FFFF) }
                default: break  // dword 6 RO, dword 7 reserved
                }
            } else if offset >= tp && offset < tp + interruptVectorCount * DSA.MSIXPerm.stride {
                if (offset - tp) % DSA.MSIXPerm.stride == 0 { merge(0xFFFF_F00C) }
            }
            // Capability registers, GENSTS, CMDSTS, CMDCAP and everything else: read-only.
        }
    }

    // MARK: - SWERR and interrupts

    /// Logs an error in SWERR (or sets Overflow if one is already logged) and, if GENCTRL
    /// enables it, sets INTCAUSE bit 0 and signals vector 0.
    func reportSoftwareError(code: UInt8, wq: Int? = nil, opcode: UInt8? = nil, batchIndex: Int? = nil,
                             faultAddress: UInt64 = 0, write: Bool = false, invalidFlags: UInt32 = 0) {
        let fresh: Bool = swerrLock.withLock { _ in
            let w0 = qword(DSA.SWERR)
            if w0 & DSA.SWErr.valid != 0 {
                orDword(DSA.SWERR, UInt32(DSA.SWErr.overflow))
                return false
            }
            setQword(DSA.SWERR + 8, UInt64(batchIndex ?? 0) & 0xFFFF | UInt64(invalidFlags) << 32)
            setQword(DSA.SWERR + 16, faultAddress)
            setQword(DSA.SWERR + 24, 0)
            var v = DSA.SWErr.valid | UInt64(code) << DSA.SWErr.errorShift
            if let wq { v |= DSA.SWErr.wqIndexValid | UInt64(wq & 0xFF) << DSA.SWErr.wqIndexShift }
            if let opcode { v |= DSA.SWErr.descriptorValid | UInt64(opcode) << DSA.SWErr.opcodeShift }
            if batchIndex != nil { v |= DSA.SWErr.batch }
            if write { v |= DSA.SWErr.faultWrite }
            setDword(DSA.SWERR + 4, UInt32(truncatingIfNeeded: v >> 32))
            setDword(DSA.SWERR, UInt32(truncatingIfNeeded: v))
            return true
        }
        if fresh && dword(DSA.GENCTRL) & DSA.GenCtrl.softwareErrorInterruptEnable != 0 {
            orDword(DSA.INTCAUSE, DSA.IntCause.softwareError)
            signal(vector: 0)
        }
    }

    func enterHalt(_ type: DSA.ResetType) {
        setDword(DSA.GENSTS, DSA.DeviceState.halted.rawValue | type.rawValue << 2)
        orDword(DSA.INTCAUSE, DSA.IntCause.halted)
        if dword(DSA.GENCTRL) & DSA.GenCtrl.haltInterruptEnable != 0 { signal(vector: 0) }
    }

    // MARK: - Portals (BAR2)

    /// A 64-byte portal write: decode the WQ, drop it (SWERR) if the WQ is not enabled or full,
    /// else copy the descriptor into the WQ. Lock-free and allocation-free.
    func submit(_ offset: Int, _ descriptor: UnsafeRawPointer) {
        guard offset & 63 == 0, offset >= 0, offset + 64 <= bar2Length else { return }
        if decodeOff.load(ordering: .relaxed) != 0 { return }
        let wq = offset >> 14
        let ims: UInt8 = (offset >> 12) & 2 != 0 ? 1 : 0
        if wqState[wq].load(ordering: .acquiring) != DSA.WQState.enabled.rawValue || deviceState != .enabled {
            drop(descriptor, wq: wq, code: DSA.SoftwareErrorCode.wqNotEnabled)
            return
        }
        let cap = UInt64(wqCapacity[wq].load(ordering: .relaxed))
        let base = wq * maxEntries
        var pos = wqTail[wq].load(ordering: .relaxed)
        while true {
            let slot = base + Int(pos % cap)
            let seq = slotSeq[slot].load(ordering: .acquiring)
            if seq == pos {
                let (exchanged, original) = wqTail[wq].weakCompareExchange(
                    expected: pos, desired: pos &+ 1, ordering: .relaxed)
                if exchanged {
                    (slotData + slot * 64).copyMemory(from: descriptor, byteCount: 64)
                    slotIMS[slot] = ims
                    slotSeq[slot].store(pos &+ 1, ordering: .releasing)
                    break
                }
                pos = original
            } else if seq < pos {
                // Full: a dedicated WQ gives no back-pressure; the descriptor is lost.
                drop(descriptor, wq: wq, code: DSA.SoftwareErrorCode.wqFull)
                return
            } else {
                pos = wqTail[wq].load(ordering: .relaxed)
            }
        }
        doorbell.pointee.add(1, ordering: .sequentiallyConsistent)
        if sleeping.load(ordering: .sequentiallyConsistent) != 0 { wakeEngine() }
    }

    private func drop(_ descriptor: UnsafeRawPointer, wq: Int, code: UInt8) {
        dropped.add(1, ordering: .relaxed)
        reportSoftwareError(code: code, wq: wq, opcode: descriptor.load(fromByteOffset: DSA.Descriptor.opcode, as: UInt8.self))
    }

    // MARK: - Engine thread

    func wakeEngine() {
        doorbell.pointee.add(1, ordering: .sequentiallyConsistent)
        _ = cvfio_futex_wake(UnsafeMutableRawPointer(doorbell).assumingMemoryBound(to: UInt32.self), 1)
    }

    private func startThread() {
        let t = ModelEngineThread(name: "MockDSADevice", context: Unmanaged.passUnretained(self).toOpaque()) { arg in
            Unmanaged<DSADeviceCore>.fromOpaque(arg!)._withUnsafeGuaranteedRef { $0.engineMain() }
            return nil
        }
        thread = t.thread
        threadID = t.id
    }

    private func engineMain() {
        let spins = options.spinIterations
        let word = UnsafeMutableRawPointer(doorbell).assumingMemoryBound(to: UInt32.self)
        var idle = 0
        while !stopFlag.load(ordering: .acquiring) {
            let seen = doorbell.pointee.load(ordering: .acquiring)
            if engineStep() { idle = 0; continue }
            idle += 1
            if idle < spins { cvfio_pause(); continue }
            sleeping.store(1, ordering: .sequentiallyConsistent)
            if doorbell.pointee.load(ordering: .sequentiallyConsistent) == seen && !stopFlag.load(ordering: .acquiring) {
                _ = cvfio_futex_wait(word, seen, 100_000_000)
            }
            sleeping.store(0, ordering: .sequentiallyConsistent)
            idle = 0
        }
    }

    /// Runs `body` while the engine is guaranteed not to be executing a descriptor.
    func quiesceEngine(_ body: () -> Void) {
        let wasStalled = stalledFlag.exchange(true, ordering: .sequentiallyConsistent)
        if execution == .thread {
            while engineBusy.load(ordering: .sequentiallyConsistent) { cvfio_pause() }
        }
        body()
        stalledFlag.store(wasStalled, ordering: .sequentiallyConsistent)
        wakeEngine()
    }
}

/// A register-level model of an Intel DSA (dsa.md §9): BAR0 registers, BAR2 portals, the
/// device and WQ state machines, every device command, the descriptor engine, completion
/// records, SWERR and MSI-X interrupts through eventfds.
///
/// Drive BAR0 through ``bar0`` (a ``RegisterIO``), BAR2 through ``bar2`` (a ``PortalIO``) and
/// config space through ``config`` exactly as a driver drives the mmapped BARs of a vfio-pci device. Every
/// memory access the model makes (batch lists, sources, destinations, completion records)
/// goes through ``iommu``; an unmapped address becomes the documented completion status
/// (0x03 partial completion, 0x06 for a batch list) or SWERR (0x1A when the completion record
/// itself cannot be written), never a crash.
///
/// Execution: with ``Execution/thread`` an engine thread takes descriptors as they arrive
/// (spinning briefly, then sleeping on a futex); with ``Execution/manual`` nothing runs until
/// the test calls ``step()`` or ``runUntilIdle(maxSteps:)``, so WQ occupancy, drops and
/// command waits are deterministic.
///
/// Model choices where the reference has gaps: one engine thread serves every WQ round-robin
/// and completes descriptors in submission order per WQ; the minimum batch count is
/// ``Options/minimumBatchCount``; SWERR codes for dropped descriptors are
/// ``DSA/SoftwareErrorCode/wqFull`` and ``DSA/SoftwareErrorCode/wqNotEnabled``; IMS is not
/// modelled (descriptors from IMS portals run, but their interrupt handles are invalid);
/// the PCIe PASID capability is off (as under vfio-pci), so shared WQs cannot be enabled.
public final class MockDSADevice: InterruptRouting, @unchecked Sendable {
    // @unchecked: immutable; the state is the core's.

    /// How the engine runs.
    public typealias Execution = ModelExecution

    /// Behaviour switches for tests.
    public struct Options: Sendable, Hashable {
        /// CMDSTS reads that still show "active" before a command runs (exercises polling).
        public var commandLatency: Int
        /// Reject non-zero operands of device-level commands with CMDSTS 0x04.
        public var strictReservedOperand: Bool
        /// Reject FENCE outside a batch with status 0x11.
        public var strictFence: Bool
        /// The smallest batch count accepted (GAP: 2 here; DML refuses fewer than 4).
        public var minimumBatchCount: Int
        /// Idle passes the engine thread spins (with a pause) before it sleeps.
        public var spinIterations: Int

        /// Options; the defaults model the hardware as documented.
        public init(commandLatency: Int = 0, strictReservedOperand: Bool = false, strictFence: Bool = false,
                    minimumBatchCount: Int = 2, spinIterations: Int = 2000) {
            self.commandLatency = commandLatency
            self.strictReservedOperand = strictReservedOperand
            self.strictFence = strictFence
            self.minimumBatchCount = minimumBatchCount
            self.spinIterations = spinIterations
        }
    }

    /// A fault the model injects.
    public enum Fault: Sendable, Hashable {
        /// The `index`-th operation executed from now on (0: the next; batch members count,
        /// the batch descriptor itself does not) fails with `status` without touching memory.
        case failDescriptor(index: Int, status: DSA.CompletionStatus)
        /// A fatal error: the device enters Halt with `resetType` (GENSTS bits 3:2), INTCAUSE
        /// bit 4 is set and vector 0 fires if GENCTRL bit 1 enables it.
        case halt(resetType: DSA.ResetType)
    }

    /// Counters, for tests and diagnostics.
    public struct Statistics: Sendable, Hashable {
        /// Operations executed, failed ones included (batch members count one each).
        public var descriptorsExecuted: UInt64
        /// Of those, batch members the engine's fast path ran: no-ops, memory moves and fills
        /// that succeed without a record or an interrupt, their buffers in mappings it had
        /// cached, no failure injected. (The rest took the general path; the results are the same.)
        public var fastPathDescriptors: UInt64
        /// Descriptors dropped at a portal: dedicated WQ full, WQ or device not enabled.
        public var droppedDescriptors: UInt64
        /// Interrupts written to an eventfd.
        public var interruptsSignalled: UInt64
        /// Interrupts that reached no eventfd (no route) or were suppressed by the MSI-X
        /// permission table's ignore bit.
        public var interruptsLost: UInt64
        /// IOMMU translation faults.
        public var iommuFaults: UInt64
    }

    /// The state and the engine. The engine thread works on it and never on this handle, so
    /// this handle's `deinit` (on whichever thread drops the last reference) can join it.
    let core: DSADeviceCore

    /// Creates a DSA function in its power-on state (device disabled, WQs unconfigured).
    ///
    /// - Parameters:
    ///   - profile: the capabilities (default: Sapphire Rapids).
    ///   - iommu: the address space of every device memory access.
    ///   - execution: `.thread` (default) or `.manual` stepping.
    ///   - options: test switches.
    public init(profile: DSA.Profile = DSA.sapphireRapids, iommu: SoftIOMMU, execution: Execution = .thread,
                options: Options = Options()) {
        core = DSADeviceCore(profile: profile, iommu: iommu, execution: execution, options: options)
    }

    deinit { core.stopEngineThread() }

    /// The kernel thread ID of the engine thread (0 with manual execution).
    public var engineThreadID: Int32 { core.threadID }

    /// The capability profile (VERSION, GENCAP, WQCAP, GRPCAP, ENGCAP, OPCAP).
    public var profile: DSA.Profile { core.profile }
    /// The address space every device memory access goes through.
    public var iommu: SoftIOMMU { core.iommu }
    /// How the engine runs.
    public var execution: Execution { core.execution }
    /// Test switches.
    public var options: Options { core.options }
    /// Where the model placed the configuration tables (also readable from TABLE_OFFSET).
    public var tableOffset: DSA.TableOffset { core.tableOffset }
    /// The BAR0 size.
    public var bar0Length: Int { core.bar0Length }
    /// The BAR2 size: 16 KiB per WQ.
    public var bar2Length: Int { core.bar2Length }
    /// MSI-X vectors: 0 for device events and errors, 1… for completions.
    public var interruptVectorCount: Int { core.interruptVectorCount }

    // MARK: - Views

    /// BAR0, as a driver reaches the mmapped registers.
    public var bar0: MockDSARegisters { MockDSARegisters(device: self) }
    /// BAR2, the WQ portals (64-byte writes).
    public var bar2: MockDSAPortals { MockDSAPortals(device: self) }
    /// PCI configuration space (COMMAND: Memory Space and Bus Master).
    public var config: MockDSAConfig { MockDSAConfig(device: self) }

    // MARK: - PCI

    /// PCI COMMAND.Bus Master. Clearing it while the device is enabled halts the device (SWERR).
    public var busMasterEnabled: Bool {
        get { core.busMasterEnabled }
        set { core.busMasterEnabled = newValue }
    }

    /// PCI COMMAND.Memory Space: while clear, BAR reads return all-ones and writes are dropped.
    public var memorySpaceEnabled: Bool {
        get { core.memorySpaceEnabled }
        set { core.memorySpaceEnabled = newValue }
    }

    /// A function-level reset: every register back to its power-on value.
    public func functionLevelReset() { core.functionLevelReset() }

    // MARK: - Manual stepping

    /// Manual execution: runs one engine step (a command poll or one descriptor). False when
    /// there was nothing to do.
    @discardableResult
    public func step() -> Bool { core.step() }

    /// Manual execution: steps until idle (or `maxSteps`); returns the steps taken.
    @discardableResult
    public func runUntilIdle(maxSteps: Int = Int.max) -> Int { core.runUntilIdle(maxSteps: maxSteps) }

    /// Waits (bounded) until no descriptor is queued or running and no command is pending.
    public func waitUntilIdle(timeout: Duration = .seconds(5)) -> Bool { core.waitUntilIdle(timeout: timeout) }

    /// Descriptors queued in WQ `wq` (accepted, not yet completed).
    public func occupancy(wq: Int) -> Int { core.occupancy(wq: wq) }

    /// Whether nothing is queued, running or pending.
    public var isIdle: Bool { core.isIdle }

    /// The counters.
    public var statistics: Statistics { core.statistics }

    /// How many times MSI-X vector `vector` fired.
    public func interruptCount(vector: Int) -> UInt64 { core.interruptCount(vector: vector) }

    // MARK: - Fault injection

    /// Injects `fault` (see ``Fault``).
    public func inject(_ fault: Fault) { core.inject(fault) }

    /// Stops the engine taking descriptors (they queue) until ``resume()``.
    public func stall() { core.stall() }

    /// Lets a stalled engine go on.
    public func resume() { core.resume() }

    /// Power loss (D3cold): every register back to its power-on value; with `stayOff` BAR
    /// accesses fail until ``powerOn()``.
    public func injectPowerLoss(stayOff: Bool = false) { core.injectPowerLoss(stayOff: stayOff) }

    /// Power back on after ``injectPowerLoss(stayOff:)``.
    public func powerOn() { core.powerOn() }

    // MARK: - InterruptRouting

    /// Routes MSI-X vectors `start…` to `eventFDs` (duplicated; -1 leaves a vector unrouted).
    public func routeInterrupts(start: Int, eventFDs: [Int32]) throws(DriverError) {
        try core.routeInterrupts(start: start, eventFDs: eventFDs)
    }

    /// Unroutes every vector.
    public func disableInterrupts() throws(DriverError) { try core.disableInterrupts() }
}

/// BAR0 of a ``MockDSADevice``: its registers, with the access rules of dsa.md §9.2.
public struct MockDSARegisters: RegisterIO, Sendable {
    /// The device this window belongs to.
    public let device: MockDSADevice
    public var length: Int { device.core.bar0Length }

    @inline(__always) private func check(_ offset: Int, _ width: Int) {
        precondition(offset >= 0 && offset & (width - 1) == 0 && offset + width <= device.core.bar0Length,
                     "BAR0 access of \(width) bytes at 0x\(String(offset, radix: 16)) is misaligned or out of range")
    }
    public func read8(_ offset: Int) -> UInt8 {
        check(offset, 1)
        return UInt8(truncatingIfNeeded: device.core.readRegister(offset & ~3) >> UInt32((offset & 3) * 8))
    }
    public func read16(_ offset: Int) -> UInt16 {
        check(offset, 2)
        return UInt16(truncatingIfNeeded: device.core.readRegister(offset & ~3) >> UInt32((offset & 3) * 8))
    }
    public func read32(_ offset: Int) -> UInt32 { check(offset, 4); return device.core.readRegister(offset) }
    public func read64(_ offset: Int) -> UInt64 {
        check(offset, 8)
        return UInt64(device.core.readRegister(offset)) | UInt64(device.core.readRegister(offset + 4)) << 32
    }
    public func write8(_ offset: Int, _ value: UInt8) {
        check(offset, 1)
        let s = UInt32((offset & 3) * 8)
        device.core.writeRegister(offset & ~3, UInt32(value) << s, mask: 0xFF << s)
    }
    public func write16(_ offset: Int, _ value: UInt16) {
        check(offset, 2)
        let s = UInt32((offset & 3) * 8)
        device.core.writeRegister(offset & ~3, UInt32(value) << s, mask: 0xFFFF << s)
    }
    public func write32(_ offset: Int, _ value: UInt32) { check(offset, 4); device.core.writeRegister(offset, value, mask: 0xFFFF_FFFF) }
    public func write64(_ offset: Int, _ value: UInt64) {
        check(offset, 8)
        device.core.writeRegister(offset, UInt32(truncatingIfNeeded: value), mask: 0xFFFF_FFFF)
        device.core.writeRegister(offset + 4, UInt32(truncatingIfNeeded: value >> 32), mask: 0xFFFF_FFFF)
    }
}

/// BAR2 of a ``MockDSADevice``: 16 KiB of portals per WQ (dsa.md §1.3, §9.4).
///
/// WQ = offset >> 14, page = (offset >> 12) & 3 (pages 2 and 3 are the IMS portals).
/// Writes that are not 64-byte aligned are ignored. Reads are not meaningful and not offered.
public struct MockDSAPortals: PortalIO, Sendable {
    /// The device this window belongs to.
    public let device: MockDSADevice
    public var length: Int { device.core.bar2Length }
    /// MOVDIR64B of `descriptor` to the portal at `offset`.
    @inline(__always)
    public func submit64(_ offset: Int, _ descriptor: UnsafeRawPointer) { device.core.submit(offset, descriptor) }
}

/// The PCI configuration space of a ``MockDSADevice`` (4 KiB): vendor and device ID, COMMAND
/// (bit 1 Memory Space, bit 2 Bus Master; the rest read as zero and ignore writes), the class
/// code (0x088000, system peripheral). Everything else reads zero.
public struct MockDSAConfig: RegisterIO, Sendable {
    /// The device this space belongs to.
    public let device: MockDSADevice
    public var length: Int { 4096 }
    /// PCI `COMMAND` (16-bit at 0x04).
    public static let COMMAND = 0x04
    /// COMMAND bit 1: Memory Space Enable.
    public static let commandMemorySpace: UInt16 = 1 << 1
    /// COMMAND bit 2: Bus Master Enable (Enable Device fails with 0x12 without it).
    public static let commandBusMaster: UInt16 = 1 << 2

    private func dword(_ offset: Int) -> UInt32 {
        switch offset {
        case 0x00: return UInt32(device.profile.deviceID) << 16 | UInt32(DSA.vendorID)
        case 0x04:
            return UInt32((device.memorySpaceEnabled ? Self.commandMemorySpace : 0)
                          | (device.busMasterEnabled ? Self.commandBusMaster : 0))
        case 0x08: return 0x0880_0000
        default: return 0
        }
    }
    private func write(_ offset: Int, _ value: UInt32, mask: UInt32) {
        guard offset == Self.COMMAND, mask & 0xFFFF != 0 else { return }
        let v = (dword(offset) & ~mask) | (value & mask)
        device.memorySpaceEnabled = v & UInt32(Self.commandMemorySpace) != 0
        device.busMasterEnabled = v & UInt32(Self.commandBusMaster) != 0
    }
    @inline(__always) private func check(_ offset: Int, _ width: Int) {
        precondition(offset >= 0 && offset & (width - 1) == 0 && offset + width <= 4096,
                     "config access of \(width) bytes at 0x\(String(offset, radix: 16)) is misaligned or out of range")
    }
    public func read8(_ offset: Int) -> UInt8 { check(offset, 1); return UInt8(truncatingIfNeeded: dword(offset & ~3) >> UInt32((offset & 3) * 8)) }
    public func read16(_ offset: Int) -> UInt16 { check(offset, 2); return UInt16(truncatingIfNeeded: dword(offset & ~3) >> UInt32((offset & 3) * 8)) }
    public func read32(_ offset: Int) -> UInt32 { check(offset, 4); return dword(offset) }
    public func read64(_ offset: Int) -> UInt64 { check(offset, 8); return UInt64(dword(offset)) | UInt64(dword(offset + 4)) << 32 }
    public func write8(_ offset: Int, _ value: UInt8) {
        check(offset, 1)
        let s = UInt32((offset & 3) * 8)
        write(offset & ~3, UInt32(value) << s, mask: 0xFF << s)
    }
    public func write16(_ offset: Int, _ value: UInt16) {
        check(offset, 2)
        let s = UInt32((offset & 3) * 8)
        write(offset & ~3, UInt32(value) << s, mask: 0xFFFF << s)
    }
    public func write32(_ offset: Int, _ value: UInt32) { check(offset, 4); write(offset, value, mask: 0xFFFF_FFFF) }
    public func write64(_ offset: Int, _ value: UInt64) {
        check(offset, 8)
        write(offset, UInt32(truncatingIfNeeded: value), mask: 0xFFFF_FFFF)
        write(offset + 4, UInt32(truncatingIfNeeded: value >> 32), mask: 0xFFFF_FFFF)
    }
}
