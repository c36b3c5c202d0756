/// Intel Data Streaming Accelerator (DSA) and In-Memory Analytics Accelerator (IAA): device IDs,
/// the BAR0 register map, device commands, the 64-byte work descriptor, the 32-byte completion
/// record and the per-generation profile. The one place these numbers live; the provider and
/// the device model both use them (dsa.md §1–§6, §9.1).
///
/// Names follow Linux's `drivers/dma/idxd/registers.h` and `include/uapi/linux/idxd.h`.
public enum DSA {
    /// Intel's PCI vendor ID.
    public static let vendorID: UInt16 = 0x8086

    // MARK: Fixed BAR0 registers (§2.1)

    /// `VERSION` (32-bit, RO): 0x100 on DSA 1.0 (SPR/EMR), 0x200 on DSA 2.0. Compare the raw value.
    public static let VERSION = 0x00
    /// `GENCAP` (64-bit, RO): general capabilities, see ``GenCap``.
    public static let GENCAP = 0x10
    /// `WQCAP` (64-bit, RO): work-queue capabilities, see ``WQCap``.
    public static let WQCAP = 0x20
    /// `GRPCAP` (64-bit, RO): group capabilities, see ``GrpCap``.
    public static let GRPCAP = 0x30
    /// `ENGCAP` (64-bit, RO): bits 7:0 = number of engines.
    public static let ENGCAP = 0x38
    /// `OPCAP` (4 × 64-bit, RO): bit n set ⇒ opcode n supported; word 0 holds opcodes 0–63.
    public static let OPCAP = 0x40
    /// `TABLE_OFFSET` (128-bit, RO): table positions in 0x100-byte units, see ``TableOffset``.
    public static let TABLE_OFFSET = 0x60
    /// `GENCFG` (32-bit, RW while Disabled): bits 7:0 read-buffer limit; 12 user interrupt; 13 event log.
    public static let GENCFG = 0x80
    /// `GENCTRL` (32-bit, RW): see ``GenCtrl``.
    public static let GENCTRL = 0x88
    /// `GENSTS` (32-bit, RO): bits 1:0 ``DeviceState``, bits 3:2 ``ResetType``.
    public static let GENSTS = 0x90
    /// `INTCAUSE` (32-bit, RW1C): see ``IntCause``.
    public static let INTCAUSE = 0x98
    /// `CMD` (32-bit): bits 19:0 operand, 24:20 ``Command`` code, 31 request completion interrupt.
    public static let CMD = 0xA0
    /// `CMDSTS` (32-bit, RO): bits 7:0 ``CommandError``, 23:8 result, 31 active.
    public static let CMDSTS = 0xA8
    /// `CMDCAP` (32-bit, RO): bitmap of supported command codes; present only if ``GenCap/commandCapabilities``.
    public static let CMDCAP = 0xB0
    /// `SWERR` (4 × 64-bit): software error log, see ``SWErr``.
    public static let SWERR = 0xC0
    /// `EVLCFG` (128-bit, DSA 2.0): event-log configuration (not used under vfio).
    public static let EVLCFG = 0xE0
    /// `EVLSTATUS` (64-bit, DSA 2.0): event-log head/tail.
    public static let EVLSTATUS = 0xF0

    /// The size of one BAR2 portal window per WQ (four 4 KiB pages).
    public static let portalWindowSize = 0x4000
    /// The size of a portal page.
    public static let portalPageSize = 0x1000
    /// The unit of TABLE_OFFSET fields.
    public static let tableOffsetUnit = 0x100

    // MARK: Capability fields (§2.2–§2.5)

    /// `GENCAP` bits and fields.
    public struct GenCap: Sendable, Hashable {
        public var rawValue: UInt64
        public init(rawValue: UInt64) { self.rawValue = rawValue }
        /// Bit 0: block on fault supported.
        public var blockOnFault: Bool { rawValue & (1 << 0) != 0 }
        /// Bit 1: overlapping memmove supported.
        public var overlappingMove: Bool { rawValue & (1 << 1) != 0 }
        /// Bit 2: cache control for memory writes (descriptor CC flag).
        public var cacheControlMemory: Bool { rawValue & (1 << 2) != 0 }
        /// Bit 3: cache control for cache flush.
        public var cacheControlFlush: Bool { rawValue & (1 << 3) != 0 }
        /// Bit 4: CMDCAP present (request/release interrupt handle).
        public var commandCapabilities: Bool { rawValue & (1 << 4) != 0 }
        /// Bit 8: destination readback (DRDBK flag).
        public var destinationReadback: Bool { rawValue & (1 << 8) != 0 }
        /// Bit 9: drain descriptor readback addresses.
        public var drainReadback: Bool { rawValue & (1 << 9) != 0 }
        /// Bits 20:16: log2 of the largest transfer.
        public var maxTransferShift: Int { Int((rawValue >> 16) & 0x1F) }
        /// Bits 24:21: log2 of the largest batch.
        public var maxBatchShift: Int { Int((rawValue >> 21) & 0xF) }
        /// Bits 30:25: IMS size multiplier (× 256 entries).
        public var imsSizeMultiplier: Int { Int((rawValue >> 25) & 0x3F) }
        /// Bit 31: GRPCFG/WQCFG are writable.
        public var configurable: Bool { rawValue & (1 << 31) != 0 }
    }

    /// `WQCAP` fields.
    public struct WQCap: Sendable, Hashable {
        public var rawValue: UInt64
        public init(rawValue: UInt64) { self.rawValue = rawValue }
        /// Bits 15:0: WQ entries shared by all WQs.
        public var totalSize: Int { Int(rawValue & 0xFFFF) }
        /// Bits 23:16: number of WQs.
        public var count: Int { Int((rawValue >> 16) & 0xFF) }
        /// Bits 27:24: WQCFG entry size code (entry = 32 << code bytes).
        public var configSizeCode: Int { Int((rawValue >> 24) & 0xF) }
        /// The WQCFG stride in bytes.
        public var configStride: Int { 32 << configSizeCode }
        /// Bit 48: shared WQs supported.
        public var sharedMode: Bool { rawValue & (1 << 48) != 0 }
        /// Bit 49: dedicated WQs supported.
        public var dedicatedMode: Bool { rawValue & (1 << 49) != 0 }
        /// Bit 50: per-WQ ATS disable supported.
        public var atsDisable: Bool { rawValue & (1 << 50) != 0 }
        /// Bit 51: WQ priority supported.
        public var priority: Bool { rawValue & (1 << 51) != 0 }
        /// Bit 52: occupancy reporting supported.
        public var occupancy: Bool { rawValue & (1 << 52) != 0 }
        /// Bit 53: occupancy interrupt supported.
        public var occupancyInterrupt: Bool { rawValue & (1 << 53) != 0 }
        /// Bit 54: per-WQ op_config (DSA 2.0, 64-byte WQCFG).
        public var opConfig: Bool { rawValue & (1 << 54) != 0 }
        /// Bit 55: per-WQ PRS disable supported (DSA 2.0).
        public var prsDisable: Bool { rawValue & (1 << 55) != 0 }
    }

    /// `GRPCAP` fields.
    public struct GrpCap: Sendable, Hashable {
        public var rawValue: UInt64
        public init(rawValue: UInt64) { self.rawValue = rawValue }
        /// Bits 7:0: number of groups.
        public var count: Int { Int(rawValue & 0xFF) }
        /// Bits 15:8: total read buffers.
        public var totalReadBuffers: Int { Int((rawValue >> 8) & 0xFF) }
        /// Bit 16: read-buffer control supported.
        public var readBufferControl: Bool { rawValue & (1 << 16) != 0 }
        /// Bit 17: read-buffer limit supported.
        public var readBufferLimit: Bool { rawValue & (1 << 17) != 0 }
    }

    /// `TABLE_OFFSET` fields: byte offsets in BAR0 of the configuration tables.
    public struct TableOffset: Sendable, Hashable {
        /// Bits 63:0 of the register.
        public var low: UInt64
        /// Bits 127:64 of the register.
        public var high: UInt64
        /// The register from its two 64-bit halves.
        public init(low: UInt64, high: UInt64 = 0) { self.low = low; self.high = high }
        /// Builds the register from byte offsets (each a multiple of 0x100).
        public init(grpcfg: Int, wqcfg: Int, msixPerm: Int, ims: Int, perfmon: Int) {
            func u(_ v: Int) -> UInt64 { UInt64(v / DSA.tableOffsetUnit) & 0xFFFF }
            low = u(grpcfg) | u(wqcfg) << 16 | u(msixPerm) << 32 | u(ims) << 48
            high = u(perfmon)
        }
        private func field(_ v: UInt64, _ shift: UInt64) -> Int { Int((v >> shift) & 0xFFFF) * DSA.tableOffsetUnit }
        /// Bits 15:0: GRPCFG table.
        public var grpcfg: Int { field(low, 0) }
        /// Bits 31:16: WQCFG table.
        public var wqcfg: Int { field(low, 16) }
        /// Bits 47:32: MSI-X permission table.
        public var msixPerm: Int { field(low, 32) }
        /// Bits 63:48: IMS table.
        public var ims: Int { field(low, 48) }
        /// Bits 79:64: perfmon block.
        public var perfmon: Int { field(high, 0) }
    }

    // MARK: Control and status fields (§2.1)

    /// `GENCTRL` bits.
    public enum GenCtrl {
        /// Software-error interrupt enable (INTCAUSE bit 0 → vector 0).
        public static let softwareErrorInterruptEnable: UInt32 = 1 << 0
        /// Halt interrupt enable (INTCAUSE bit 4 → vector 0).
        public static let haltInterruptEnable: UInt32 = 1 << 1
        /// Event-log interrupt enable (DSA 2.0).
        public static let eventLogInterruptEnable: UInt32 = 1 << 2
    }

    /// `GENSTS` bits 1:0: the device state.
    public enum DeviceState: UInt32, Sendable, Hashable {
        case disabled = 0
        case enabled = 1
        case draining = 2
        case halted = 3
    }

    /// `GENSTS` bits 3:2: the reset needed to leave Halt.
    public enum ResetType: UInt32, Sendable, Hashable {
        /// Reset Device command.
        case software = 0
        /// Function-level reset (`VFIO_DEVICE_RESET`).
        case flr = 1
        case warm = 2
        case cold = 3
    }

    /// `INTCAUSE` bits (write 1 to clear).
    public enum IntCause {
        /// Bit 0: software error (SWERR valid).
        public static let softwareError: UInt32 = 1 << 0
        /// Bit 1: a command asked to interrupt has completed.
        public static let commandCompleted: UInt32 = 1 << 1
        /// Bit 2: WQ occupancy fell below its limit.
        public static let occupancyBelowLimit: UInt32 = 1 << 2
        /// Bit 3: perfmon counter overflow.
        public static let perfmonOverflow: UInt32 = 1 << 3
        /// Bit 4: the device entered Halt.
        public static let halted: UInt32 = 1 << 4
        /// Bit 5: event-log entry (DSA 2.0).
        public static let eventLog: UInt32 = 1 << 5
        /// Bit 31: interrupt handles revoked.
        public static let handlesRevoked: UInt32 = 1 << 31
    }

    /// `CMD` encoding.
    public enum Cmd {
        /// Bits 19:0: the operand.
        public static let operandMask: UInt32 = 0xF_FFFF
        /// The command code's shift (bits 24:20).
        public static let codeShift: UInt32 = 20
        /// Bits 24:20: the command code.
        public static let codeMask: UInt32 = 0x1F << 20
        /// Bit 31: raise INTCAUSE bit 1 and vector 0 on completion.
        public static let requestInterrupt: UInt32 = 1 << 31
        /// The CMD value for `command` with `operand`.
        @inlinable public static func encode(_ command: Command, operand: UInt32 = 0, interrupt: Bool = false) -> UInt32 {
            (command.rawValue << codeShift) | (operand & operandMask) | (interrupt ? requestInterrupt : 0)
        }
        /// The operand of the WQ-mask commands (Disable/Drain/Abort/Reset WQ) for `wq`:
        /// bits 15:0 = the WQ's bit within its block of 16, bits 19:16 = the block.
        @inlinable public static func wqMaskOperand(_ wq: Int) -> UInt32 {
            (UInt32(wq / 16) << 16) | (1 << UInt32(wq % 16))
        }
    }

    /// Device command codes (`CMD` bits 24:20, §3.1).
    public enum Command: UInt32, Sendable, Hashable, CaseIterable {
        case enableDevice = 1
        case disableDevice = 2
        case drainAll = 3
        case abortAll = 4
        case resetDevice = 5
        /// Operand: the WQ index.
        case enableWQ = 6
        /// Operand: WQ mask (``Cmd/wqMaskOperand(_:)``).
        case disableWQ = 7
        case drainWQ = 8
        case abortWQ = 9
        case resetWQ = 10
        case drainPASID = 11
        case abortPASID = 12
        /// Operand: bits 15:0 table index, bit 16 IMS. Result: the handle (CMDSTS 23:8).
        case requestInterruptHandle = 13
        case releaseInterruptHandle = 14
    }

    /// `CMDSTS` fields.
    public enum CmdSts {
        /// Bits 7:0: the error code.
        public static let errorMask: UInt32 = 0xFF
        /// The result's shift (bits 23:8).
        public static let resultShift: UInt32 = 8
        /// Bits 23:8: the result (e.g. an interrupt handle).
        public static let resultMask: UInt32 = 0xFFFF << 8
        /// Bit 31: a command is running.
        public static let active: UInt32 = 1 << 31
    }

    /// `CMDSTS` bits 7:0: command error codes (§3.3).
    public struct CommandError: RawRepresentable, Sendable, Hashable, CustomStringConvertible {
        public let rawValue: UInt8
        public init(rawValue: UInt8) { self.rawValue = rawValue }
        /// CMDSTS: success.
        public static let success = Self(rawValue: 0x00)
        /// CMDSTS: invalid command code (0x01).
        public static let invalidCommand = Self(rawValue: 0x01)
        /// CMDSTS: invalid WQ index (0x02).
        public static let invalidWQIndex = Self(rawValue: 0x02)
        /// CMDSTS: internal or platform hardware error, or device halted (0x03).
        public static let hardwareError = Self(rawValue: 0x03)
        /// CMDSTS: non-zero reserved field in the command (0x04).
        public static let reservedOperand = Self(rawValue: 0x04)
        /// CMDSTS: Enable Device: device not disabled (0x10).
        public static let deviceEnabled = Self(rawValue: 0x10)
        /// CMDSTS: Enable Device: configuration error (0x11).
        public static let configError = Self(rawValue: 0x11)
        /// CMDSTS: Enable Device: PCI Bus Master Enable is 0 (0x12).
        public static let busMasterDisabled = Self(rawValue: 0x12)
        /// CMDSTS: Enable Device: PRS allocation unsupported (0x13).
        public static let prsInvalid = Self(rawValue: 0x13)
        /// CMDSTS: Enable Device: sum of WQ sizes out of range (0x14).
        public static let wqSizeRange = Self(rawValue: 0x14)
        /// CMDSTS: group configuration: a group lacks WQs or engines (0x15).
        public static let groupConfig = Self(rawValue: 0x15)
        /// CMDSTS: group configuration: WQ misconfigured (0x16).
        public static let groupWQConfig = Self(rawValue: 0x16)
        /// CMDSTS: group configuration: engine misconfigured (0x17).
        public static let groupEngineConfig = Self(rawValue: 0x17)
        /// CMDSTS: group configuration: invalid read-buffer settings (0x18).
        public static let groupReadBuffers = Self(rawValue: 0x18)
        /// CMDSTS: Enable WQ: device not enabled (0x20).
        public static let deviceNotEnabled = Self(rawValue: 0x20)
        /// CMDSTS: Enable WQ: WQ not disabled (0x21).
        public static let wqEnabled = Self(rawValue: 0x21)
        /// CMDSTS: Enable WQ: WQ size is 0 (0x22).
        public static let wqSizeZero = Self(rawValue: 0x22)
        /// CMDSTS: Enable WQ: priority is 0 (0x23).
        public static let wqPriority = Self(rawValue: 0x23)
        /// CMDSTS: Enable WQ: mode not supported (0x24).
        public static let wqMode = Self(rawValue: 0x24)
        /// CMDSTS: Enable WQ: invalid block-on-fault setting (0x25).
        public static let wqBlockOnFault = Self(rawValue: 0x25)
        /// CMDSTS: Enable WQ: invalid PASID enable (0x26).
        public static let wqPASIDEnable = Self(rawValue: 0x26)
        /// CMDSTS: Enable WQ: invalid max batch size (0x27).
        public static let wqMaxBatch = Self(rawValue: 0x27)
        /// CMDSTS: Enable WQ: invalid max transfer size (0x28).
        public static let wqMaxTransfer = Self(rawValue: 0x28)
        /// CMDSTS: Enable WQ: privileged WQ without PASID privileged mode (0x2A).
        public static let wqPrivileged = Self(rawValue: 0x2A)
        /// CMDSTS: Enable WQ: invalid occupancy interrupt (0x2B).
        public static let wqOccupancyInterrupt = Self(rawValue: 0x2B)
        /// CMDSTS: Enable WQ: ATS configuration mismatch (0x2C).
        public static let wqATS = Self(rawValue: 0x2C)
        /// CMDSTS: Disable Device: device not enabled (0x31).
        public static let deviceNotEnabledForDisable = Self(rawValue: 0x31)
        /// CMDSTS: WQ command: WQ not enabled (0x32).
        public static let wqNotEnabled = Self(rawValue: 0x32)
        /// CMDSTS: interrupt handle: invalid table index (0x41).
        public static let invalidInterruptIndex = Self(rawValue: 0x41)
        /// CMDSTS: no interrupt handle available (0x42).
        public static let noInterruptHandle = Self(rawValue: 0x42)

        public var description: String {
            switch rawValue {
            case 0x00: "success"
            case 0x01: "invalid command code (0x01)"
            case 0x02: "invalid WQ index (0x02)"
            case 0x03: "internal or platform hardware error, or device halted (0x03)"
            case 0x04: "non-zero reserved field in the command (0x04)"
            case 0x10: "Enable Device: device not disabled (0x10)"
            case 0x11: "Enable Device: configuration error (0x11)"
            case 0x12: "Enable Device: PCI Bus Master Enable is 0 (0x12)"
            case 0x13: "Enable Device: PRS allocation unsupported (0x13)"
            case 0x14: "Enable Device: sum of WQ sizes out of range (0x14)"
            case 0x15: "group configuration: a group lacks WQs or engines (0x15)"
            case 0x16: "group configuration: WQ misconfigured (0x16)"
            case 0x17: "group configuration: engine misconfigured (0x17)"
            case 0x18: "group configuration: invalid read-buffer settings (0x18)"
            case 0x20: "Enable WQ: device not enabled (0x20)"
            case 0x21: "Enable WQ: WQ not disabled (0x21)"
            case 0x22: "Enable WQ: WQ size is 0 (0x22)"
            case 0x23: "Enable WQ: priority is 0 (0x23)"
            case 0x24: "Enable WQ: mode not supported (0x24)"
            case 0x25: "Enable WQ: invalid block-on-fault setting (0x25)"
            case 0x26: "Enable WQ: invalid PASID enable (0x26)"
            case 0x27: "Enable WQ: invalid max batch size (0x27)"
            case 0x28: "Enable WQ: invalid max transfer size (0x28)"
            case 0x2A: "Enable WQ: privileged WQ without PASID privileged mode (0x2A)"
            case 0x2B: "Enable WQ: invalid occupancy interrupt (0x2B)"
            case 0x2C: "Enable WQ: ATS configuration mismatch (0x2C)"
            case 0x31: "Disable Device: device not enabled (0x31)"
            case 0x32: "WQ command: WQ not enabled (0x32)"
            case 0x41: "interrupt handle: invalid table index (0x41)"
            case 0x42: "no interrupt handle available (0x42)"
            default: "command error 0x\(String(rawValue, radix: 16))"
            }
        }
    }

    /// `SWERR` layout (§2.9): word 0 flags and codes, word 1 batch index, word 2 fault address.
    public enum SWErr {
        /// Word 0 bit 0 (RW1C).
        public static let valid: UInt64 = 1 << 0
        /// Word 0 bit 1 (RW1C): another error arrived while valid.
        public static let overflow: UInt64 = 1 << 1
        /// Word 0 bit 2: the descriptor fields are meaningful.
        public static let descriptorValid: UInt64 = 1 << 2
        /// Word 0 bit 3: the WQ index is meaningful.
        public static let wqIndexValid: UInt64 = 1 << 3
        /// Word 0 bit 4: the error happened inside a batch.
        public static let batch: UInt64 = 1 << 4
        /// Word 0 bit 5: the fault was a write.
        public static let faultWrite: UInt64 = 1 << 5
        /// Word 0 bit 6: privileged descriptor.
        public static let privileged: UInt64 = 1 << 6
        /// Word 0 bits 15:8: the error code.
        public static let errorShift: UInt64 = 8
        /// Word 0 bits 23:16: the WQ index.
        public static let wqIndexShift: UInt64 = 16
        /// Word 0 bits 39:32: the failing descriptor's opcode.
        public static let opcodeShift: UInt64 = 32
        /// Word 0 bits 59:40: PASID.
        public static let pasidShift: UInt64 = 40
        /// The error code of word 0.
        @inlinable public static func error(_ word0: UInt64) -> UInt8 { UInt8(truncatingIfNeeded: word0 >> errorShift) }
        /// The WQ index of word 0.
        @inlinable public static func wqIndex(_ word0: UInt64) -> Int { Int((word0 >> wqIndexShift) & 0xFF) }
        /// The opcode of word 0.
        @inlinable public static func opcode(_ word0: UInt64) -> UInt8 { UInt8(truncatingIfNeeded: word0 >> opcodeShift) }
    }

    /// Software-error codes that are not completion statuses.
    public enum SoftwareErrorCode {
        /// PCI configuration error, e.g. Bus Master cleared while enabled (Intel's VDCM).
        public static let pciConfig: UInt8 = 0x51
        /// CMD written while a command was active (Intel's VDCM).
        public static let commandWhileActive: UInt8 = 0x52
        /// GAP (model's choice): a descriptor written to a full dedicated WQ was dropped.
        public static let wqFull: UInt8 = 0x53
        /// GAP (model's choice): a descriptor written to a WQ that is not enabled was dropped.
        public static let wqNotEnabled: UInt8 = 0x54
    }

    // MARK: Configuration tables (§2.6–§2.8)

    /// GRPCFG entry (64 bytes per group).
    public enum GrpCfg {
        /// Bytes per group entry.
        public static let stride = 64
        /// +0…+31: 256-bit bitmap of the group's WQs.
        public static let wqs = 0
        /// +32: 64-bit bitmap of the group's engines.
        public static let engines = 32
        /// +40: GRPFLAGS.
        public static let flags = 40
        /// GRPFLAGS bits 2:0 TC-A, 5:3 TC-B (DPDK ORs 0x9: TC-A = TC-B = 1).
        public static let trafficClassOne: UInt64 = 0x9
        /// GRPFLAGS bit 7: use the global read-buffer limit.
        public static let useGlobalReadBufferLimit: UInt64 = 1 << 7
        /// GRPFLAGS bits 15:8: read buffers reserved.
        public static let readBuffersReservedShift: UInt64 = 8
        /// GRPFLAGS bits 27:20: read buffers allowed.
        public static let readBuffersAllowedShift: UInt64 = 20
    }

    /// WQCFG entry, indexed by dword (stride from ``WQCap/configStride``).
    public enum WQCfg {
        /// Dword 0 bits 15:0: WQ size.
        public static let size = 0
        /// Dword 1 bits 15:0: threshold (shared WQs).
        public static let threshold = 1
        /// Dword 2: mode, BOF, ATS/PRS disable, priority, PASID, privileged.
        public static let mode = 2
        /// Dword 3: max transfer shift (4:0), max batch shift (8:5).
        public static let limits = 3
        /// Dword 4: occupancy interrupt handle (15:0), table (16).
        public static let occupancyHandle = 4
        /// Dword 5: occupancy limit (15:0), occupancy interrupt enable (16).
        public static let occupancyLimit = 5
        /// Dword 6 (RO): occupancy (15:0), interrupt pending (16), mode support (29), state (31:30).
        public static let status = 6
        /// Dwords 8–15 (DSA 2.0, 64-byte entries): op_config bitmap.
        public static let opConfig = 8

        /// Dword 2 bit 0: dedicated mode (0: shared).
        public static let dedicated: UInt32 = 1 << 0
        /// Dword 2 bit 1: block on fault enable.
        public static let blockOnFault: UInt32 = 1 << 1
        /// Dword 2 bit 2: ATS disable.
        public static let atsDisable: UInt32 = 1 << 2
        /// Dword 2 bit 3: PRS disable (DSA 2.0).
        public static let prsDisable: UInt32 = 1 << 3
        /// Dword 2 bits 7:4: priority (1–15).
        public static let priorityShift: UInt32 = 4
        /// Dword 2 bits 7:4: priority (1–15).
        public static let priorityMask: UInt32 = 0xF << 4
        /// Dword 2 bits 27:8: PASID.
        public static let pasidShift: UInt32 = 8
        /// Dword 2 bit 28: PASID enable (keep 0 under vfio-pci).
        public static let pasidEnable: UInt32 = 1 << 28
        /// Dword 2 bit 29: privileged.
        public static let privileged: UInt32 = 1 << 29
        /// Dword 3 bits 4:0: log2 of the largest transfer.
        public static let maxTransferShiftMask: UInt32 = 0x1F
        /// Dword 3 bits 8:5: log2 of the largest batch.
        public static let maxBatchShiftShift: UInt32 = 5
        /// Dword 3 bits 8:5: log2 of the largest batch.
        public static let maxBatchShiftMask: UInt32 = 0xF << 5
        /// Dword 5 bit 16: occupancy interrupt enable.
        public static let occupancyInterruptEnable: UInt32 = 1 << 16
        /// Dword 6 bit 29 (RO): the mode bit is writable.
        public static let modeSupport: UInt32 = 1 << 29
        /// Dword 6 bits 31:30 (RO): the WQ state.
        public static let stateShift: UInt32 = 30

        /// Dword 2 for a dedicated WQ of `priority` (PASID, BOF, privileged off).
        @inlinable public static func dedicatedMode(priority: UInt32) -> UInt32 {
            dedicated | ((priority << priorityShift) & priorityMask)
        }
        /// Dword 3 from the two shifts.
        @inlinable public static func limits(maxTransferShift: Int, maxBatchShift: Int) -> UInt32 {
            (UInt32(maxTransferShift) & maxTransferShiftMask) | ((UInt32(maxBatchShift) << maxBatchShiftShift) & maxBatchShiftMask)
        }
        /// The WQ state in dword 6 (bits 31:30).
        @inlinable public static func state(_ dword6: UInt32) -> WQState? { WQState(rawValue: dword6 >> stateShift) }
    }

    /// WQCFG dword 6 bits 31:30.
    public enum WQState: UInt32, Sendable, Hashable {
        case disabled = 0
        case enabled = 1
        /// Transition (SPDK: "BUSY"), e.g. while draining for Disable WQ.
        case busy = 2
    }

    /// MSI-X permission table entries (8 bytes per vector, low 32 bits used).
    public enum MSIXPerm {
        /// Bytes per vector entry.
        public static let stride = 8
        /// Bit 2: suppress this vector.
        public static let ignore: UInt32 = 1 << 2
        /// Bit 3: PASID enable.
        public static let pasidEnable: UInt32 = 1 << 3
        /// Bits 31:12: PASID.
        public static let pasidShift: UInt32 = 12
    }

    // MARK: Work descriptor (§5)

    /// Work descriptor field offsets (64 bytes).
    public enum Descriptor {
        /// Bytes per descriptor (64-byte aligned in memory).
        public static let size = 64
        /// Bytes 0–3: PASID (19:0), privileged (31). Ignored for dedicated WQs.
        public static let pasid = 0
        /// Bytes 4–7: flags (23:0), opcode (31:24).
        public static let flagsAndOpcode = 4
        /// Byte 7: opcode.
        public static let opcode = 7
        /// Bytes 8–15: completion record address.
        public static let completionAddress = 8
        /// Bytes 16–23: source / fill pattern / descriptor list / source 1.
        public static let source = 16
        /// Bytes 24–31: destination / source 2 / compare pattern.
        public static let destination = 24
        /// Bytes 32–35: transfer size, or descriptor count for a batch.
        public static let transferSize = 32
        /// Bytes 36–37: completion interrupt handle.
        public static let interruptHandle = 36
        /// Bytes 38–39: reserved on DSA.
        public static let reserved38 = 38
        /// Byte 40: expected result (compare ops with CR).
        public static let expectedResult = 40
        /// Bytes 40–47: second destination (dualcast).
        public static let destination2 = 40
        /// Bytes 40–43: CRC seed.
        public static let crcSeed = 40
        /// Bytes 48–55: CRC seed address (flag ``Flags/crcReadSeed``).
        public static let crcSeedAddress = 48
        /// Bytes 40–47: delta record address (create/apply delta).
        public static let deltaRecordAddress = 40
        /// Bytes 48–51: max delta record size (create) / delta record size (apply).
        public static let deltaRecordSize = 48
    }

    /// A 64-byte work descriptor as values (§5.1): build one, then ``store(to:)`` it into a
    /// batch list or a staging buffer for a portal write.
    public struct WorkDescriptor: Sendable, Hashable {
        /// Bytes 0–3: PASID and privileged bit (ignored for dedicated WQs; keep 0).
        public var pasid: UInt32
        /// Bits 23:0 of bytes 4–7: ``Flags``.
        public var flags: UInt32
        /// Byte 7: ``Opcode``.
        public var opcode: UInt8
        /// Bytes 8–15: the completion record's IOVA (32-byte aligned).
        public var completionAddress: UInt64
        /// Bytes 16–23: source, fill pattern or descriptor list.
        public var source: UInt64
        /// Bytes 24–31: destination, second source or compare pattern.
        public var destination: UInt64
        /// Bytes 32–35: transfer size, or descriptor count for a batch.
        public var transferSize: UInt32
        /// Bytes 36–37: completion interrupt handle (the MSI-X vector on SPR).
        public var interruptHandle: UInt16
        /// Bytes 40–47: operation-specific (dualcast destination 2, CRC seed, expected result).
        public var operation0: UInt64
        /// Bytes 48–55.
        public var operation1: UInt64
        /// Bytes 56–63.
        public var operation2: UInt64

        /// A descriptor; unnamed fields are zero.
        @inlinable
        public init(opcode: UInt8, flags: UInt32, completionAddress: UInt64 = 0, source: UInt64 = 0,
                    destination: UInt64 = 0, transferSize: UInt32 = 0, interruptHandle: UInt16 = 0,
                    operation0: UInt64 = 0, operation1: UInt64 = 0, operation2: UInt64 = 0) {
            self.pasid = 0
            self.flags = flags
            self.opcode = opcode
            self.completionAddress = completionAddress
            self.source = source
            self.destination = destination
            self.transferSize = transferSize
            self.interruptHandle = interruptHandle
            self.operation0 = operation0
            self.operation1 = operation1
            self.operation2 = operation2
        }

        /// Reads the 64 bytes at `p`.
        @inlinable
        public init(loading p: UnsafeRawPointer) {
            let word = p.loadUnaligned(fromByteOffset: Descriptor.flagsAndOpcode, as: UInt32.self)
            self.init(opcode: UInt8(truncatingIfNeeded: word >> 24), flags: word & Flags.mask,
                      completionAddress: p.loadUnaligned(fromByteOffset: Descriptor.completionAddress, as: UInt64.self),
                      source: p.loadUnaligned(fromByteOffset: Descriptor.source, as: UInt64.self),
                      destination: p.loadUnaligned(fromByteOffset: Descriptor.destination, as: UInt64.self),
                      transferSize: p.loadUnaligned(fromByteOffset: Descriptor.transferSize, as: UInt32.self),
                      interruptHandle: p.loadUnaligned(fromByteOffset: Descriptor.interruptHandle, as: UInt16.self),
                      operation0: p.loadUnaligned(fromByteOffset: 40, as: UInt64.self),
                      operation1: p.loadUnaligned(fromByteOffset: 48, as: UInt64.self),
                      operation2: p.loadUnaligned(fromByteOffset: 56, as: UInt64.self))
            pasid = p.loadUnaligned(fromByteOffset: Descriptor.pasid, as: UInt32.self)
        }

        /// Writes all 64 bytes at `p` (reserved bytes 38–39 as zero). Little-endian hosts only.
        @inlinable
        public func store(to p: UnsafeMutableRawPointer) {
            p.storeBytes(of: pasid, toByteOffset: Descriptor.pasid, as: UInt32.self)
            p.storeBytes(of: (flags & Flags.mask) | UInt32(opcode) << 24, toByteOffset: Descriptor.flagsAndOpcode, as: UInt32.self)
            p.storeBytes(of: completionAddress, toByteOffset: Descriptor.completionAddress, as: UInt64.self)
            p.storeBytes(of: source, toByteOffset: Descriptor.source, as: UInt64.self)
            p.storeBytes(of: destination, toByteOffset: Descriptor.destination, as: UInt64.self)
            p.storeBytes(of: transferSize, toByteOffset: Descriptor.transferSize, as: UInt32.self)
            p.storeBytes(of: interruptHandle, toByteOffset: Descriptor.interruptHandle, as: UInt16.self)
            p.storeBytes(of: UInt16(0), toByteOffset: Descriptor.reserved38, as: UInt16.self)
            p.storeBytes(of: operation0, toByteOffset: 40, as: UInt64.self)
            p.storeBytes(of: operation1, toByteOffset: 48, as: UInt64.self)
            p.storeBytes(of: operation2, toByteOffset: 56, as: UInt64.self)
        }
    }

    /// Descriptor flag bits (bits 23:0 of bytes 4–7).
    public enum Flags {
        /// Bit 0: in a batch, wait for every earlier member; abandon the rest after a failure.
        public static let fence: UInt32 = 1 << 0
        /// Bit 1: block on fault (needs WQCFG BOF; not usable under vfio-pci).
        public static let blockOnFault: UInt32 = 1 << 1
        /// Completion record address valid.
        public static let completionRecordValid: UInt32 = 1 << 2
        /// Request a completion record (else one is written only on failure).
        public static let requestCompletionRecord: UInt32 = 1 << 3
        /// Request a completion interrupt.
        public static let requestCompletionInterrupt: UInt32 = 1 << 4
        /// Completion-record steering-tag selector (DSA 2.0).
        public static let completionRecordSteering: UInt32 = 1 << 5
        /// Check result (compare ops): mismatch ⇒ status 0x02.
        public static let checkResult: UInt32 = 1 << 7
        /// Cache control: allocate destination writes in the LLC.
        public static let cacheControl: UInt32 = 1 << 8
        /// Bit 9: traffic class B for the source.
        public static let address1TCS: UInt32 = 1 << 9
        /// Bit 10: traffic class B for the destination.
        public static let address2TCS: UInt32 = 1 << 10
        /// Bit 11: traffic class B for the third address.
        public static let address3TCS: UInt32 = 1 << 11
        /// Bit 12: traffic class B for the completion record.
        public static let completionRecordTCS: UInt32 = 1 << 12
        /// Bit 13: strict ordering of destination writes.
        public static let strictOrdering: UInt32 = 1 << 13
        /// Bit 14: read the destination back before completing (GENCAP bit 8).
        public static let destinationReadback: UInt32 = 1 << 14
        /// Destination steering-tag selector (DSA 2.0).
        public static let destinationSteering: UInt32 = 1 << 15
        /// CRC ops: read the seed from the seed address.
        public static let crcReadSeed: UInt32 = 1 << 16
        /// CRC ops: bypass seed/result inversion and reflection.
        public static let crcBypassInversion: UInt32 = 1 << 17
        /// CRC ops: bypass data reflection.
        public static let crcBypassDataReflection: UInt32 = 1 << 18
        /// Every defined flag below the op-specific byte.
        public static let generalMask: UInt32 = 0xFFBF
        /// Bits 23:0: every flag bit.
        public static let mask: UInt32 = 0xFF_FFFF
    }

    /// Descriptor opcodes (byte 7, §5.3).
    public enum Opcode {
        /// 0x00: no-op (a record only).
        public static let noop: UInt8 = 0x00
        /// 0x01: batch (list address, count).
        public static let batch: UInt8 = 0x01
        /// 0x02: drain (completes after every earlier descriptor of the WQ).
        public static let drain: UInt8 = 0x02
        /// 0x03: memory move.
        public static let memmove: UInt8 = 0x03
        /// 0x04: memory fill with an 8-byte pattern.
        public static let fill: UInt8 = 0x04
        /// 0x05: compare two buffers.
        public static let compare: UInt8 = 0x05
        /// 0x06: compare a buffer with an 8-byte pattern.
        public static let comparePattern: UInt8 = 0x06
        /// 0x07: create a delta record.
        public static let createDelta: UInt8 = 0x07
        /// 0x08: apply a delta record.
        public static let applyDelta: UInt8 = 0x08
        /// 0x09: copy to two destinations.
        public static let dualcast: UInt8 = 0x09
        /// 0x0A: translation fetch (DSA 2.0).
        public static let translationFetch: UInt8 = 0x0A
        /// 0x10: CRC-32C generation.
        public static let crcGenerate: UInt8 = 0x10
        /// 0x11: copy with CRC-32C.
        public static let copyCRC: UInt8 = 0x11
        /// 0x12: DIF check.
        public static let difCheck: UInt8 = 0x12
        /// 0x13: DIF insert.
        public static let difInsert: UInt8 = 0x13
        /// 0x14: DIF strip.
        public static let difStrip: UInt8 = 0x14
        /// 0x15: DIF update.
        public static let difUpdate: UInt8 = 0x15
        /// 0x17: DIX generate (DSA 2.0).
        public static let dixGenerate: UInt8 = 0x17
        /// 0x20: cache flush.
        public static let cacheFlush: UInt8 = 0x20
    }

    // MARK: Completion record (§6)

    /// Completion record field offsets (32 bytes, 32-byte aligned).
    public enum CompletionRecord {
        /// Bytes per record.
        public static let size = 32
        /// Records must be 32-byte aligned (else status 0x1B).
        public static let alignment = 32
        /// Byte 0: status (bits 6:0 ``CompletionStatus``, bit 7 fault on write).
        public static let status = 0
        /// Byte 1: result (compare: 0 equal / 1 different; memmove fault: bit 0 direction).
        public static let result = 1
        /// Bytes 4–7: bytes completed (batch: descriptors completed).
        public static let bytesCompleted = 4
        /// Bytes 8–15: fault address.
        public static let faultAddress = 8
        /// Bytes 16–19: invalid-flags bitmap (status 0x11), CRC value, delta record size.
        public static let operationSpecific = 16
        /// Status byte bit 7: the faulting access was a write.
        public static let statusWriteFault: UInt8 = 0x80
        /// Status byte bits 6:0: the status code.
        public static let statusCodeMask: UInt8 = 0x7F
        /// Result bit 0 after a memmove fault: 1 = the copy ran descending.
        public static let resultDescending: UInt8 = 0x01
    }

    /// A completion record's fields, read from memory the device wrote (§6.1).
    public struct CompletionRecordValue: Sendable, Hashable {
        /// Byte 0: the status byte (bit 7: the fault was a write). 0: not written yet.
        public var statusByte: UInt8
        /// Byte 1: the result (compare: 0 equal / 1 different; memmove fault: bit 0 direction).
        public var result: UInt8
        /// Bytes 4–7: bytes completed (batch: descriptors completed).
        public var bytesCompleted: UInt32
        /// Bytes 8–15: the fault address.
        public var faultAddress: UInt64
        /// Bytes 16–19: invalid-flags bitmap (0x11), CRC value.
        public var operationSpecific: UInt32

        /// The status code (bits 6:0 of the status byte).
        @inlinable public var status: CompletionStatus { CompletionStatus(statusByte: statusByte) }
        /// Whether the faulting access was a write (status bit 7).
        @inlinable public var faultWasWrite: Bool { statusByte & CompletionRecord.statusWriteFault != 0 }

        /// Reads the record at `p`. Read the status byte first (with acquire ordering) and this
        /// only once it is non-zero.
        @inlinable
        public init(loading p: UnsafeRawPointer) {
            statusByte = p.load(fromByteOffset: CompletionRecord.status, as: UInt8.self)
            result = p.load(fromByteOffset: CompletionRecord.result, as: UInt8.self)
            bytesCompleted = p.loadUnaligned(fromByteOffset: CompletionRecord.bytesCompleted, as: UInt32.self)
            faultAddress = p.loadUnaligned(fromByteOffset: CompletionRecord.faultAddress, as: UInt64.self)
            operationSpecific = p.loadUnaligned(fromByteOffset: CompletionRecord.operationSpecific, as: UInt32.self)
        }
    }

    /// Completion status codes (byte 0 bits 6:0, §6.2).
    public struct CompletionStatus: RawRepresentable, Sendable, Hashable, CustomStringConvertible {
        public let rawValue: UInt8
        public init(rawValue: UInt8) { self.rawValue = rawValue }
        /// Status: not completed.
        public static let none = Self(rawValue: 0x00)
        /// Status: success.
        public static let success = Self(rawValue: 0x01)
        /// Status: success with false predicate (0x02).
        public static let successFalsePredicate = Self(rawValue: 0x02)
        /// Status: page fault, partial completion (0x03).
        public static let pageFault = Self(rawValue: 0x03)
        /// Status: unresolved page fault (0x04).
        public static let pageFaultUnresolved = Self(rawValue: 0x04)
        /// Status: batch: a member did not succeed (0x05).
        public static let batchFail = Self(rawValue: 0x05)
        /// Status: batch: page fault reading the descriptor list (0x06).
        public static let batchPageFault = Self(rawValue: 0x06)
        /// Status: delta record offsets not increasing (0x07).
        public static let deltaOffsetNotIncreasing = Self(rawValue: 0x07)
        /// Status: delta record offset out of range (0x08).
        public static let deltaOffsetRange = Self(rawValue: 0x08)
        /// Status: DIF check failed (0x09).
        public static let difError = Self(rawValue: 0x09)
        /// Status: unsupported opcode (0x10).
        public static let badOpcode = Self(rawValue: 0x10)
        /// Status: invalid flags (0x11).
        public static let invalidFlags = Self(rawValue: 0x11)
        /// Status: non-zero reserved field (0x12).
        public static let nonZeroReserved = Self(rawValue: 0x12)
        /// Status: transfer size out of range (0x13).
        public static let transferSizeRange = Self(rawValue: 0x13)
        /// Status: batch descriptor count out of range (0x14).
        public static let descriptorCountRange = Self(rawValue: 0x14)
        /// Status: delta record size out of range (0x15).
        public static let deltaRecordRange = Self(rawValue: 0x15)
        /// Status: overlapping buffers (0x16).
        public static let overlappingBuffers = Self(rawValue: 0x16)
        /// Status: dualcast destinations differ in bits 11:0 (0x17).
        public static let dualcastAlignment = Self(rawValue: 0x17)
        /// Status: descriptor list not 64-byte aligned (0x18).
        public static let descriptorListAlignment = Self(rawValue: 0x18)
        /// Status: invalid interrupt handle (0x19).
        public static let invalidInterruptHandle = Self(rawValue: 0x19)
        /// Status: completion record address translation failed (0x1A).
        public static let completionRecordTranslation = Self(rawValue: 0x1A)
        /// Status: completion record not 32-byte aligned (0x1B).
        public static let completionRecordAlignment = Self(rawValue: 0x1B)
        /// Status: operand alignment (0x1C).
        public static let addressAlignment = Self(rawValue: 0x1C)
        /// Status: privilege violation (0x1D).
        public static let privilege = Self(rawValue: 0x1D)
        /// Status: traffic class misconfigured (0x1E).
        public static let trafficClass = Self(rawValue: 0x1E)
        /// Status: fault on a drain readback address (0x1F).
        public static let readbackFault = Self(rawValue: 0x1F)
        /// Status: hardware error (0x20).
        public static let hardwareError = Self(rawValue: 0x20)
        /// Status: error during destination readback (0x21).
        public static let readbackError = Self(rawValue: 0x21)
        /// Status: translation failed (0x22).
        public static let translationFailed = Self(rawValue: 0x22)

        /// The status of a record's status byte (bit 7, the write-fault bit, removed).
        @inlinable public init(statusByte: UInt8) { rawValue = statusByte & CompletionRecord.statusCodeMask }

        public var description: String {
            switch rawValue {
            case 0x00: "not completed"
            case 0x01: "success"
            case 0x02: "success with false predicate (0x02)"
            case 0x03: "page fault, partial completion (0x03)"
            case 0x04: "unresolved page fault (0x04)"
            case 0x05: "batch: a member did not succeed (0x05)"
            case 0x06: "batch: page fault reading the descriptor list (0x06)"
            case 0x10: "unsupported opcode (0x10)"
            case 0x11: "invalid flags (0x11)"
            case 0x12: "non-zero reserved field (0x12)"
            case 0x13: "transfer size out of range (0x13)"
            case 0x14: "batch descriptor count out of range (0x14)"
            case 0x16: "overlapping buffers (0x16)"
            case 0x17: "dualcast destinations differ in bits 11:0 (0x17)"
            case 0x18: "descriptor list not 64-byte aligned (0x18)"
            case 0x19: "invalid interrupt handle (0x19)"
            case 0x1A: "completion record address translation failed (0x1A)"
            case 0x1B: "completion record not 32-byte aligned (0x1B)"
            case 0x20: "hardware error (0x20)"
            case 0x22: "translation failed (0x22)"
            default: "completion status 0x\(String(rawValue, radix: 16))"
            }
        }
    }

    // MARK: Profiles (§2, §8, §9.1)

    /// The capability registers of one DSA generation.
    public struct Profile: Sendable, Hashable {
        /// A short name, e.g. "spr".
        public var name: String
        /// Platform code name.
        public var platform: String
        /// The PCI device ID.
        public var deviceID: UInt16
        /// VERSION.
        public var version: UInt32
        /// GENCAP.
        public var gencap: UInt64
        /// WQCAP.
        public var wqcap: UInt64
        /// GRPCAP.
        public var grpcap: UInt64
        /// ENGCAP.
        public var engcap: UInt64
        /// OPCAP, words 0–3.
        public var opcap: [UInt64]
        /// CMDCAP (meaningful when GENCAP bit 4 is set).
        public var cmdcap: UInt32
        /// MSI-X vectors (vector 0 = misc, 1… = completions).
        public var msixVectorCount: Int

        /// A profile from its register values.
        public init(name: String, platform: String, deviceID: UInt16, version: UInt32, gencap: UInt64, wqcap: UInt64,
                    grpcap: UInt64, engcap: UInt64, opcap: [UInt64], cmdcap: UInt32, msixVectorCount: Int) {
            self.name = name; self.platform = platform; self.deviceID = deviceID; self.version = version
            self.gencap = gencap; self.wqcap = wqcap; self.grpcap = grpcap; self.engcap = engcap
            self.opcap = opcap; self.cmdcap = cmdcap; self.msixVectorCount = msixVectorCount
        }

        /// GENCAP decoded.
        public var genCap: GenCap { GenCap(rawValue: gencap) }
        /// WQCAP decoded.
        public var wqCap: WQCap { WQCap(rawValue: wqcap) }
        /// GRPCAP decoded.
        public var grpCap: GrpCap { GrpCap(rawValue: grpcap) }
        /// ENGCAP bits 7:0: the number of engines.
        public var engineCount: Int { Int(engcap & 0xFF) }
        /// Whether OPCAP advertises `opcode`.
        public func supports(opcode: UInt8) -> Bool {
            let w = Int(opcode) / 64
            return w < opcap.count && opcap[w] & (1 << UInt64(opcode % 64)) != 0
        }
    }

    /// OPCAP word 0 of SPR: opcodes 0–9, 0x10–0x15 and 0x20 (cache flush).
    public static let sprOPCAP0: UInt64 = 0x0000_0001_003F_03FF

    /// Sapphire Rapids / Emerald Rapids DSA 1.0: the real capability values (dsa.md §2, §8).
    public static let sapphireRapids = Profile(
        name: "spr", platform: "Sapphire Rapids / Emerald Rapids", deviceID: 0x0B25, version: 0x100,
        gencap: 0x40_915F_0107,
        wqcap: 128 | 8 << 16 | 0 << 24 | 1 << 48 | 1 << 49 | 1 << 50,
        grpcap: 4 | 96 << 8 | 1 << 16 | 1 << 17,
        engcap: 4, opcap: [sprOPCAP0, 0, 0, 0], cmdcap: 0, msixVectorCount: 9)

    /// DSA 2.0 (Granite Rapids class): VERSION 0x200, 64-byte WQCFG with op_config, CMDCAP with
    /// interrupt-handle commands. Capacities are SPR's (GAP: the 2.0 parts' values).
    public static let dsa2 = Profile(
        name: "dsa2", platform: "Granite Rapids (DSA 2.0)", deviceID: 0x11FB, version: 0x200,
        gencap: 0x40_915F_0117 | 1 << 9,
        wqcap: 128 | 8 << 16 | 1 << 24 | 1 << 48 | 1 << 49 | 1 << 50 | 1 << 54 | 1 << 55,
        grpcap: 4 | 96 << 8 | 1 << 16 | 1 << 17,
        engcap: 4, opcap: [sprOPCAP0, 0, 0, 0], cmdcap: 0x7FFE, msixVectorCount: 9)

    /// The profiles this project models.
    public static let profiles: [Profile] = [sapphireRapids, dsa2]

    /// The profile named `name` ("spr", "dsa2").
    public static func profile(named name: String) -> Profile? { profiles.first { $0.name == name } }

    // MARK: Device IDs

    /// Every DSA/IAA device ID, with its platform and expected VERSION register (dsa.md §1.1).
    public static let deviceTable: [EngineIdentity] = [
        EngineIdentity(id: PCIID(vendor: vendorID, device: 0x0B25), family: .dsa,
                       platform: "Sapphire Rapids / Emerald Rapids", expectedVersion: 0x100, generation: "DSA 1.0", supported: true),
        EngineIdentity(id: PCIID(vendor: vendorID, device: 0x11FB), family: .dsa,
                       platform: "Granite Rapids-D", expectedVersion: 0x200, generation: "DSA 2.0", supported: true),
        EngineIdentity(id: PCIID(vendor: vendorID, device: 0x1212), family: .dsa,
                       platform: "Diamond Rapids", expectedVersion: 0x300, generation: "DSA 3.0", supported: true),
        EngineIdentity(id: PCIID(vendor: vendorID, device: 0x0CFE), family: .iaa,
                       platform: "Sapphire Rapids / Emerald Rapids", expectedVersion: 0x100, generation: "IAA 1.0", supported: false),
        EngineIdentity(id: PCIID(vendor: vendorID, device: 0x1216), family: .iaa,
                       platform: "Diamond Rapids", expectedVersion: 0x300, generation: "IAA 3.0", supported: false),
        EngineIdentity(id: PCIID(vendor: vendorID, device: 0xB02D), family: .iaa,
                       platform: "Panther Lake", expectedVersion: 0x200, generation: "IAA 2.0", supported: false),
    ]
}
