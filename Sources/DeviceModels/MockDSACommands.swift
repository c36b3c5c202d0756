import Hardware
import Synchronization

/// Device commands (CMD/CMDSTS, dsa.md §3 and §9.2–§9.3, §9.7).
extension DSADeviceCore {
    /// A 32-bit write to CMD.
    func issueCommand(_ raw: UInt32) {
        let rejected: Bool = control.withLock { c in
            if dword(DSA.CMDSTS) & DSA.CmdSts.active != 0 { return true }
            setDword(DSA.CMDSTS, DSA.CmdSts.active)
            c.pending = PendingCommand(raw: raw, pollsRemaining: options.commandLatency)
            if options.commandLatency <= 0 { startCommand(&c) }
            return false
        }
        // A CMD write while a command is active is dropped and logged (Intel's VDCM: SWERR 0x52).
        if rejected { reportSoftwareError(code: DSA.SoftwareErrorCode.commandWhileActive) }
    }

    /// A read of CMDSTS: counts down a configured command latency.
    func readCMDSTS() -> UInt32 {
        control.withLock { c in
            if var p = c.pending, !p.started {
                p.pollsRemaining -= 1
                c.pending = p
                if p.pollsRemaining <= 0 { startCommand(&c) }
            }
            return dword(DSA.CMDSTS)
        }
    }

    /// Called by the engine (thread, or `step()`): discards aborted descriptors and completes
    /// a waiting command once its WQs have drained. Returns whether the command finished.
    func serviceCommand() -> Bool {
        control.withLock { c in serviceLocked(&c, consumer: true) }
    }

    private func serviceLocked(_ c: inout Control, consumer: Bool) -> Bool {
        guard var p = c.pending, p.started else { return false }
        if !p.abortWQs.isEmpty {
            guard consumer else { return false }
            for wq in p.abortWQs { discardQueued(wq) }
            p.abortWQs = []
            c.pending = p
        }
        for w in p.waits where wqCompleted[w.wq].load(ordering: .acquiring) < w.target { return false }
        switch p.finish {
        case .none: break
        case .disableWQs(let wqs):
            for wq in wqs { resetQueue(wq, state: .disabled) }
        case .resetWQs(let wqs):
            for wq in wqs { resetQueue(wq, state: .disabled); resetWQConfig(wq) }
        case .disableDevice:
            for wq in 0..<wqCount { resetQueue(wq, state: .disabled) }
            setDword(DSA.GENSTS, DSA.DeviceState.disabled.rawValue)
        case .resetDevice:
            for wq in 0..<wqCount { resetQueue(wq, state: .disabled); resetWQConfig(wq) }
            setDword(DSA.GENSTS, DSA.DeviceState.disabled.rawValue)
            setDword(DSA.GENCFG, 0)
            for g in 0..<groupCount {
                for q in stride(from: 0, to: DSA.GrpCfg.stride, by: 4) { setDword(grpcfg(g, q), 0) }
            }
            for v in 0..<interruptVectorCount { setQword(tableOffset.msixPerm + v * DSA.MSIXPerm.stride, 0) }
        }
        finish(&c, .success)
        return true
    }

    /// Pops every published descriptor of `wq` without running it or writing its record.
    private func discardQueued(_ wq: Int) {
        let cap = UInt64(wqCapacity[wq].load(ordering: .relaxed))
        while true {
            let pos = wqHead[wq].load(ordering: .relaxed)
            let slot = wq * maxEntries + Int(pos % cap)
            guard slotSeq[slot].load(ordering: .acquiring) == pos &+ 1 else { return }
            slotSeq[slot].store(pos &+ cap, ordering: .releasing)
            wqHead[wq].store(pos &+ 1, ordering: .releasing)
            wqCompleted[wq].add(1, ordering: .releasing)
        }
    }

    private func finish(_ c: inout Control, _ error: DSA.CommandError, result: UInt32 = 0) {
        let raw = c.pending?.raw ?? 0
        c.pending = nil
        commandPending.store(false, ordering: .releasing)
        setDword(DSA.CMDSTS, UInt32(error.rawValue) | (result << DSA.CmdSts.resultShift) & DSA.CmdSts.resultMask)
        if raw & DSA.Cmd.requestInterrupt != 0 {
            orDword(DSA.INTCAUSE, DSA.IntCause.commandCompleted)
            signal(vector: 0)
        }
    }

    /// Decodes and runs the pending command: either finishes it at once or leaves it waiting.
    private func startCommand(_ c: inout Control) {
        guard var p = c.pending else { return }
        p.started = true
        c.pending = p
        let raw = p.raw
        let operand = raw & DSA.Cmd.operandMask
        let code = (raw & DSA.Cmd.codeMask) >> DSA.Cmd.codeShift
        guard let command = DSA.Command(rawValue: code) else { return finish(&c, .invalidCommand) }
        if profile.genCap.commandCapabilities {
            if profile.cmdcap & (1 << code) == 0 { return finish(&c, .invalidCommand) }
        } else if command == .requestInterruptHandle || command == .releaseInterruptHandle {
            return finish(&c, .invalidCommand)
        }
        let state = deviceState
        if state == .halted {
            let type = (dword(DSA.GENSTS) >> 2) & 3
            if command != .resetDevice || type != DSA.ResetType.software.rawValue { return finish(&c, .hardwareError) }
        }
        if options.strictReservedOperand && code <= DSA.Command.resetDevice.rawValue && operand != 0 {
            return finish(&c, .reservedOperand)
        }
        let allWQs = Array(0..<wqCount)
        switch command {
        case .enableDevice:
            let e = enableDeviceCheck(busMaster: c.busMaster)
            if e == .success { setDword(DSA.GENSTS, DSA.DeviceState.enabled.rawValue) }
            return finish(&c, e)
        case .disableDevice:
            guard state == .enabled else { return finish(&c, .deviceNotEnabledForDisable) }
            setDword(DSA.GENSTS, DSA.DeviceState.draining.rawValue)
            for wq in allWQs where wqState[wq].load(ordering: .acquiring) == DSA.WQState.enabled.rawValue {
                setWQState(wq, .busy)
            }
            wait(&c, on: allWQs, abort: false, then: .disableDevice)
        case .drainAll:
            wait(&c, on: allWQs, abort: false, then: .none)
        case .abortAll:
            wait(&c, on: allWQs, abort: true, then: .none)
        case .resetDevice:
            for wq in allWQs where wqState[wq].load(ordering: .acquiring) != DSA.WQState.disabled.rawValue {
                setWQState(wq, .busy)
            }
            wait(&c, on: allWQs, abort: true, then: .resetDevice)
        case .enableWQ:
            let wq = Int(operand)
            let e = enableWQCheck(wq)
            if e == .success {
                let size = Int(dword(wqcfg(wq, DSA.WQCfg.size)) & 0xFFFF)
                resetQueue(wq, state: .enabled, capacity: size)
            }
            return finish(&c, e)
        case .disableWQ, .drainWQ, .abortWQ, .resetWQ:
            let block = Int(operand >> 16) & 0xF
            var wqs: [Int] = []
            for b in 0..<16 where operand & (1 << UInt32(b)) != 0 { wqs.append(block * 16 + b) }
            if wqs.contains(where: { $0 >= wqCount }) { return finish(&c, .invalidWQIndex) }
            if wqs.contains(where: { wqState[$0].load(ordering: .acquiring) != DSA.WQState.enabled.rawValue }) {
                return finish(&c, .wqNotEnabled)
            }
            switch command {
            case .disableWQ:
                for wq in wqs { setWQState(wq, .busy) }
                wait(&c, on: wqs, abort: false, then: .disableWQs(wqs))
            case .drainWQ:
                wait(&c, on: wqs, abort: false, then: .none)
            case .abortWQ:
                wait(&c, on: wqs, abort: true, then: .none)
            default:
                for wq in wqs { setWQState(wq, .busy) }
                wait(&c, on: wqs, abort: true, then: .resetWQs(wqs))
            }
        case .drainPASID, .abortPASID:
            // No WQ can have PASID enabled in this model (no PCIe PASID under vfio-pci).
            return finish(&c, .success)
        case .requestInterruptHandle:
            let index = Int(operand & 0xFFFF)
            if operand & (1 << 16) != 0 || index == 0 || index >= interruptVectorCount {
                return finish(&c, .invalidInterruptIndex)
            }
            return finish(&c, .success, result: UInt32(index))
        case .releaseInterruptHandle:
            let index = Int(operand & 0xFFFF)
            if operand & (1 << 16) != 0 || index == 0 || index >= interruptVectorCount {
                return finish(&c, .invalidInterruptIndex)
            }
            return finish(&c, .success)
        }
        // A waiting command: complete it now if nothing has to be discarded and the WQs are
        // already drained, else leave it to the engine context.
        commandPending.store(true, ordering: .releasing)
        if !serviceLocked(&c, consumer: execution == .manual) { wakeEngine() }
    }

    private func wait(_ c: inout Control, on wqs: [Int], abort: Bool, then action: FinishAction) {
        guard var p = c.pending else { return }
        p.waits = wqs.map { ($0, wqTail[$0].load(ordering: .acquiring)) }
        p.abortWQs = abort ? wqs : []
        p.finish = action
        c.pending = p
    }

    /// Enable Device checks in the order of dsa.md §3.4/§9.3.
    private func enableDeviceCheck(busMaster: Bool) -> DSA.CommandError {
        if deviceState != .disabled { return .deviceEnabled }
        if !busMaster { return .busMasterDisabled }
        var total = 0
        for wq in 0..<wqCount { total += Int(dword(wqcfg(wq, DSA.WQCfg.size)) & 0xFFFF) }
        if total > profile.wqCap.totalSize { return .wqSizeRange }
        var wqGroups = [Int](repeating: 0, count: wqCount)
        var engineOwner = [Int](repeating: -1, count: max(engineCount, 64))
        var reservedSum = 0
        var groupError: DSA.CommandError? = nil, wqError: DSA.CommandError? = nil
        var engineError: DSA.CommandError? = nil, bufferError: DSA.CommandError? = nil
        let totalBuffers = profile.grpCap.totalReadBuffers
        for g in 0..<groupCount {
            var hasWQ = false
            for word in 0..<4 {
                let bits = qword(grpcfg(g, DSA.GrpCfg.wqs + 8 * word))
                for b in 0..<64 where bits & (1 << UInt64(b)) != 0 {
                    let wq = word * 64 + b
                    if wq >= wqCount { wqError = wqError ?? .groupWQConfig; continue }
                    wqGroups[wq] += 1
                    if dword(wqcfg(wq, DSA.WQCfg.size)) & 0xFFFF != 0 { hasWQ = true }
                }
            }
            let engines = qword(grpcfg(g, DSA.GrpCfg.engines))
            for e in 0..<64 where engines & (1 << UInt64(e)) != 0 {
                if e >= engineCount || engineOwner[e] >= 0 { engineError = engineError ?? .groupEngineConfig }
                else { engineOwner[e] = g }
            }
            if hasWQ && engines == 0 { groupError = groupError ?? .groupConfig }
            let flags = qword(grpcfg(g, DSA.GrpCfg.flags))
            let reserved = Int((flags >> DSA.GrpCfg.readBuffersReservedShift) & 0xFF)
            let allowed = Int((flags >> DSA.GrpCfg.readBuffersAllowedShift) & 0xFF)
            reservedSum += reserved
            if reserved > allowed && allowed != 0 || allowed > totalBuffers { bufferError = bufferError ?? .groupReadBuffers }
        }
        for wq in 0..<wqCount where dword(wqcfg(wq, DSA.WQCfg.size)) & 0xFFFF != 0 && wqGroups[wq] != 1 {
            wqError = wqError ?? .groupWQConfig
        }
        if reservedSum > totalBuffers { bufferError = bufferError ?? .groupReadBuffers }
        return groupError ?? wqError ?? engineError ?? bufferError ?? .success
    }

    /// Enable WQ checks in the order of dsa.md §3.4.
    private func enableWQCheck(_ wq: Int) -> DSA.CommandError {
        guard wq < wqCount else { return .invalidWQIndex }
        if deviceState != .enabled { return .deviceNotEnabled }
        if wqState[wq].load(ordering: .acquiring) != DSA.WQState.disabled.rawValue { return .wqEnabled }
        if dword(wqcfg(wq, DSA.WQCfg.size)) & 0xFFFF == 0 { return .wqSizeZero }
        let mode = dword(wqcfg(wq, DSA.WQCfg.mode))
        let dedicated = mode & DSA.WQCfg.dedicated != 0
        let cap = profile.wqCap
        if dedicated ? !cap.dedicatedMode : !cap.sharedMode { return .wqMode }
        // The PCIe PASID capability is off (vfio-pci): PASID enable and shared WQs are refused.
        if mode & DSA.WQCfg.pasidEnable != 0 || !dedicated { return .wqPASIDEnable }
        if mode & DSA.WQCfg.privileged != 0 { return .wqPrivileged }
        if mode & DSA.WQCfg.priorityMask == 0 { return .wqPriority }
        // Block on fault needs GENCAP bit 0 and page requests (PRS), which vfio-pci does not give.
        if mode & DSA.WQCfg.blockOnFault != 0 { return .wqBlockOnFault }
        let limits = dword(wqcfg(wq, DSA.WQCfg.limits))
        if Int((limits & DSA.WQCfg.maxBatchShiftMask) >> DSA.WQCfg.maxBatchShiftShift) > profile.genCap.maxBatchShift {
            return .wqMaxBatch
        }
        if Int(limits & DSA.WQCfg.maxTransferShiftMask) > profile.genCap.maxTransferShift { return .wqMaxTransfer }
        let occLimit = dword(wqcfg(wq, DSA.WQCfg.occupancyLimit))
        if occLimit & DSA.WQCfg.occupancyInterruptEnable != 0 {
            let h = dword(wqcfg(wq, DSA.WQCfg.occupancyHandle))
            if h & (1 << 16) != 0 || Int(h & 0xFFFF) >= interruptVectorCount { return .wqOccupancyInterrupt }
        }
        if mode & DSA.WQCfg.atsDisable != 0 && !cap.atsDisable { return .wqATS }
        return .success
    }
}
