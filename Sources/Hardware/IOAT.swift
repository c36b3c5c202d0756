/// Intel Crystal Beach DMA (CBDMA / QuickData / I/OAT): device IDs, the BAR0 register map,
/// the descriptor format and the per-generation profile. The one place these numbers live;
/// the provider and the device model both use them.
///
/// Names follow Linux's `drivers/dma/ioat/registers.h` and `hw.h`.
public enum IOAT {
    public static let vendorID: UInt16 = 0x8086

    // MARK: Device-level registers (BAR0 + offset)

    /// `CHANCNT` (8-bit, RO): bits 4:0 = channels behind this function.
    public static let CHANCNT = 0x00
    /// `XFERCAP` (8-bit, RO): bits 4:0 = log2 of the largest transfer.
    public static let XFERCAP = 0x01
    /// `GENCTRL` (8-bit, RW): bit 0 debug enable.
    public static let GENCTRL = 0x02
    /// `INTRCTRL` (8-bit): see ``IntrCtrl``.
    public static let INTRCTRL = 0x03
    /// `ATTNSTATUS` (32-bit, RO): one bit per channel needing attention.
    public static let ATTNSTATUS = 0x04
    /// `CBVER` (8-bit, RO): major in bits 7:4, minor in 3:0.
    public static let CBVER = 0x08
    /// `PERPORTOFFSET` (16-bit, RO).
    public static let PERPORTOFFSET = 0x0A
    /// `INTRDELAY` (16-bit): bits 13:0 coalescing delay in µs; bit 15 (RO) coalescing supported.
    public static let INTRDELAY = 0x0C
    /// INTRDELAY bits 13:0, the delay in µs.
    public static let intrDelayMask: UInt16 = 0x3FFF
    /// INTRDELAY bit 15 (RO): interrupt coalescing is supported.
    public static let intrDelayCoalescingSupported: UInt16 = 0x8000
    /// `CS_STATUS` (16-bit, RO).
    public static let CS_STATUS = 0x0E
    /// `DMACAPABILITY` (32-bit, RO): see ``DMACapability``.
    public static let DMACAPABILITY = 0x10
    /// `DCAOFFSET` (16-bit, RO): offset of the DCA block.
    public static let DCAOFFSET = 0x14
    /// `CHWPREFLMT` (8-bit, 3.4 with DPS): descriptor prefetch limit.
    public static let CHWPREFLMT = 0x4C

    /// INTRCTRL bits.
    public struct IntrCtrl: OptionSet, Sendable, Hashable {
        public let rawValue: UInt8
        public init(rawValue: UInt8) { self.rawValue = rawValue }
        public static let masterIntEnable = IntrCtrl(rawValue: 0x01)
        /// RO: ATTNSTATUS non-zero or a channel interrupt pending.
        public static let intStatus = IntrCtrl(rawValue: 0x02)
        /// RO: intStatus and master enable.
        public static let int = IntrCtrl(rawValue: 0x04)
        public static let msixVectorControl = IntrCtrl(rawValue: 0x08)
    }

    /// DMACAPABILITY bits.
    public struct DMACapability: OptionSet, Sendable, Hashable {
        public let rawValue: UInt32
        public init(rawValue: UInt32) { self.rawValue = rawValue }
        public static let pageBreak = DMACapability(rawValue: 1 << 0)
        public static let crc = DMACapability(rawValue: 1 << 1)
        public static let skipMarker = DMACapability(rawValue: 1 << 2)
        public static let dca = DMACapability(rawValue: 1 << 4)
        public static let crcMove = DMACapability(rawValue: 1 << 5)
        public static let blockFill = DMACapability(rawValue: 1 << 6)
        public static let apic = DMACapability(rawValue: 1 << 7)
        public static let xor = DMACapability(rawValue: 1 << 8)
        public static let pq = DMACapability(rawValue: 1 << 9)
        public static let dif = DMACapability(rawValue: 1 << 10)
        public static let dwbes = DMACapability(rawValue: 1 << 13)
        public static let raid16ss = DMACapability(rawValue: 1 << 17)
        public static let dmaMulticast = DMACapability(rawValue: 1 << 18)
        public static let completionTimeout = DMACapability(rawValue: 1 << 19)
        public static let descriptorPrefetch = DMACapability(rawValue: 1 << 23)
    }

    // MARK: Per-channel registers (channel base + offset)

    /// The base of channel `n`'s registers: BAR0 + 0x80·(n+1).
    @inlinable public static func channelBase(_ n: Int) -> Int { 0x80 * (n + 1) }

    /// `CHANCTRL` (16-bit, RW): see ``ChanCtrl``.
    public static let CHANCTRL = 0x00
    /// `DMA_COMP` (16-bit, RO): bit 0 v1-compatible, bit 1 v2-compatible.
    public static let DMA_COMP = 0x02
    /// `CHANCMD` (8-bit, RW; v2+): see ``ChanCmd``. On v1 it is at 0x14.
    public static let CHANCMD = 0x04
    /// `DMACOUNT` (16-bit, RW; v2+): the running descriptor count (doorbell).
    public static let DMACOUNT = 0x06
    /// `CHANSTS` (64-bit, RO): completed descriptor | flags | state. On v1 it is at 0x04.
    public static let CHANSTS = 0x08
    /// `CHAINADDR` (64-bit, RW): first descriptor of the chain. On v1 it is at 0x0C.
    public static let CHAINADDR = 0x10
    /// `CHANCMP` (64-bit, RW): IOVA of the 8-byte completion writeback area.
    public static let CHANCMP = 0x18
    /// `CDAR` (64-bit, RO): current descriptor address.
    public static let CDAR = 0x20
    /// `CHANERR` (32-bit, write-1-to-clear): see ``ChanErr``.
    public static let CHANERR = 0x28
    /// `CHANERR_MASK` (32-bit, RW).
    public static let CHANERR_MASK = 0x2C
    /// `DCACTRL` (32-bit, RW).
    public static let DCACTRL = 0x30
    /// `DRSCTL` (16-bit, 3.4): descriptor prefetch region control.
    public static let DRSCTL = 0xB6
    /// `LTR_SWSEL` (8-bit, 3.4).
    public static let LTR_SWSEL = 0xBC
    /// `LTR_ACTIVE` (32-bit, 3.4).
    public static let LTR_ACTIVE = 0xC0
    /// `LTR_IDLE` (32-bit, 3.4).
    public static let LTR_IDLE = 0xC4

    /// v1 (CB 1.x) layout differences.
    public enum V1 {
        /// `CHANSTS` on v1.
        public static let CHANSTS = 0x04
        /// `CHAINADDR` on v1.
        public static let CHAINADDR = 0x0C
        /// `CHANCMD` on v1.
        public static let CHANCMD = 0x14
    }

    /// CHANCTRL bits.
    public struct ChanCtrl: OptionSet, Sendable, Hashable {
        public let rawValue: UInt16
        public init(rawValue: UInt16) { self.rawValue = rawValue }
        /// Write 1 to arm the channel interrupt once.
        public static let intRearm = ChanCtrl(rawValue: 1 << 0)
        /// Write the HALTED status to the completion area on error.
        public static let errCompletionEnable = ChanCtrl(rawValue: 1 << 2)
        /// Halt the channel on any error (every driver sets it).
        public static let anyErrAbortEnable = ChanCtrl(rawValue: 1 << 3)
        /// Interrupt on error.
        public static let errIntEnable = ChanCtrl(rawValue: 1 << 4)
        public static let descriptorAddressSnoopControl = ChanCtrl(rawValue: 1 << 5)
        /// Software ownership flag; a stale one is cleared at bring-up.
        public static let inUse = ChanCtrl(rawValue: 1 << 8)
        public static let completionDCAEnable = ChanCtrl(rawValue: 1 << 9)
        /// Bits 15:12, the channel priority.
        public static let priorityMask: UInt16 = 0xF000
    }

    /// CHANCMD commands.
    public struct ChanCmd: OptionSet, Sendable, Hashable {
        public let rawValue: UInt8
        public init(rawValue: UInt8) { self.rawValue = rawValue }
        /// v1: start at CHAINADDR.
        public static let start = ChanCmd(rawValue: 0x01)
        /// v1: descriptors were linked on; re-read the tail.
        public static let append = ChanCmd(rawValue: 0x02)
        /// Stop after the current descriptor.
        public static let suspend = ChanCmd(rawValue: 0x04)
        /// Stop at once.
        public static let abort = ChanCmd(rawValue: 0x08)
        public static let resume = ChanCmd(rawValue: 0x10)
        /// Reset; reads back 1 until done.
        public static let reset = ChanCmd(rawValue: 0x20)
    }

    /// CHANSTS (and completion word) state, bits 2:0.
    public enum ChannelState: UInt8, Sendable, Hashable, CustomStringConvertible {
        case active = 0
        /// DONE in Linux, IDLE elsewhere.
        case done = 1
        case suspended = 2
        case halted = 3
        case armed = 4
        public var description: String {
            switch self {
            case .active: "ACTIVE"
            case .done: "DONE"
            case .suspended: "SUSPENDED"
            case .halted: "HALTED"
            case .armed: "ARMED"
            }
        }
    }

    /// CHANSTS bit masks.
    public enum ChanSts {
        public static let stateMask: UInt64 = 0x7
        public static let unaffiliatedError: UInt64 = 1 << 3
        public static let softError: UInt64 = 1 << 4
        public static let completedDescriptorMask: UInt64 = ~0x3F
    }

    /// CHANERR bits (Linux/FreeBSD meanings).
    public struct ChanErr: OptionSet, Sendable, Hashable, CustomStringConvertible {
        public let rawValue: UInt32
        public init(rawValue: UInt32) { self.rawValue = rawValue }
        public static let sourceAddress = ChanErr(rawValue: 1 << 0)          // XSADDERR
        public static let destinationAddress = ChanErr(rawValue: 1 << 1)     // XDADDERR
        public static let nextDescriptorAddress = ChanErr(rawValue: 1 << 2)  // NDADDERR
        public static let descriptor = ChanErr(rawValue: 1 << 3)             // DERR (next alignment)
        public static let chainAddress = ChanErr(rawValue: 1 << 4)           // CHADDERR
        public static let command = ChanErr(rawValue: 1 << 5)                // CCMDERR
        public static let chipsetUncorrectable = ChanErr(rawValue: 1 << 6)   // CUNCORERR
        public static let dmaUncorrectable = ChanErr(rawValue: 1 << 7)       // DUNCORERR
        public static let readData = ChanErr(rawValue: 1 << 8)               // RDERR
        public static let writeData = ChanErr(rawValue: 1 << 9)              // WDERR
        public static let descriptorControl = ChanErr(rawValue: 1 << 10)     // DCERR
        public static let transferSize = ChanErr(rawValue: 1 << 11)          // DXSERR
        public static let completionAddress = ChanErr(rawValue: 1 << 12)     // CMPADDERR
        public static let interruptConfiguration = ChanErr(rawValue: 1 << 13) // INTCFGERR
        public static let superExtendedDescriptor = ChanErr(rawValue: 1 << 14) // SEDERR
        public static let unaffiliated = ChanErr(rawValue: 1 << 15)          // UNAFFERR
        public static let crcXorP = ChanErr(rawValue: 1 << 16)               // CXPERR
        public static let xorQ = ChanErr(rawValue: 1 << 17)
        public static let descriptorCount = ChanErr(rawValue: 1 << 18)       // DCNTERR

        /// Hardware names of the bits, low to high.
        public static let names: [(ChanErr, String)] = [
            (.sourceAddress, "source address error (XSADDERR)"),
            (.destinationAddress, "destination address error (XDADDERR)"),
            (.nextDescriptorAddress, "next descriptor address error (NDADDERR)"),
            (.descriptor, "descriptor error (DERR)"),
            (.chainAddress, "chain address error (CHADDERR)"),
            (.command, "channel command error (CCMDERR)"),
            (.chipsetUncorrectable, "chipset uncorrectable data error (CUNCORERR)"),
            (.dmaUncorrectable, "DMA uncorrectable data error (DUNCORERR)"),
            (.readData, "read data error (RDERR)"),
            (.writeData, "write data error (WDERR)"),
            (.descriptorControl, "descriptor control error (DCERR)"),
            (.transferSize, "descriptor transfer size error (DXSERR)"),
            (.completionAddress, "completion address error (CMPADDERR)"),
            (.interruptConfiguration, "interrupt configuration error (INTCFGERR)"),
            (.superExtendedDescriptor, "super-extended descriptor address error (SEDERR)"),
            (.unaffiliated, "unaffiliated error (UNAFFERR)"),
            (.crcXorP, "CRC or XOR-P validation error (CXPERR)"),
            (.xorQ, "XOR-Q validation error"),
            (.descriptorCount, "descriptor count error (DCNTERR)"),
        ]

        /// The names of the bits set.
        public var causes: [String] {
            var out = Self.names.filter { contains($0.0) }.map(\.1)
            let known = Self.names.reduce(UInt32(0)) { $0 | $1.0.rawValue }
            let unknown = rawValue & ~known
            if unknown != 0 { out.append("unknown CHANERR bits 0x\(String(unknown, radix: 16))") }
            return out
        }
        public var description: String { causes.joined(separator: ", ") }
    }

    // MARK: PCI configuration space

    /// `DMAUNCERRSTS` (config 0x148): uncorrectable error status.
    public static let configDMAUNCERRSTS = 0x148
    /// `CHANERR_INT` (config 0x180): internal copy of channel errors, write-1-to-clear.
    public static let configCHANERR_INT = 0x180
    /// `CHANERRMSK_INT` (config 0x184).
    public static let configCHANERRMSK_INT = 0x184
    /// DMAUNCERRSTS bit 4: the spurious parity error TBG channel 0 reports after a restart.
    public static let dmauncerrstsParityError: UInt32 = 0x10

    // MARK: MSI-X (inside BAR0)

    /// Bytes per MSI-X table entry: message address low, high, data, vector control.
    public static let msixEntrySize = 16
    /// MSI-X vector control bit 0: the vector is masked.
    public static let msixVectorMasked: UInt32 = 1

    // MARK: Descriptor

    /// Descriptor control-word bits (§4.2); the low ten match NetDMA's ControlFlags.
    public enum DescriptorControl {
        public static let intEnable: UInt32 = 1 << 0
        public static let sourceSnoopDisable: UInt32 = 1 << 1
        public static let destinationSnoopDisable: UInt32 = 1 << 2
        public static let completionWrite: UInt32 = 1 << 3
        public static let fence: UInt32 = 1 << 4
        public static let null: UInt32 = 1 << 5
        public static let sourcePageBreak: UInt32 = 1 << 6
        public static let destinationPageBreak: UInt32 = 1 << 7
        public static let bundle: UInt32 = 1 << 8
        public static let destinationDCA: UInt32 = 1 << 9
        public static let hint: UInt32 = 1 << 10
        /// Bits 23:11 must be zero for COPY/FILL.
        public static let reservedMask: UInt32 = 0x00FF_F800
        public static let opShift: UInt32 = 24
    }

    /// Descriptor opcodes (bits 31:24 of the control word).
    public enum Opcode {
        public static let copy: UInt8 = 0x00
        public static let fill: UInt8 = 0x01
        public static let moveCRC: UInt8 = 0x41
        public static let crc: UInt8 = 0x81
        public static let xor: UInt8 = 0x87
        public static let pq: UInt8 = 0x89
    }

    /// Descriptor field offsets (64 bytes, 64-byte aligned).
    public enum DescriptorField {
        public static let size = 0x00
        public static let control = 0x04
        public static let source = 0x08
        public static let destination = 0x10
        public static let next = 0x18
        public static let nextSource = 0x20
        public static let nextDestination = 0x28
        public static let user1 = 0x30
        public static let user2 = 0x38
    }

    /// The page size page-break descriptors cross at.
    public static let pageBreakSize = 4096

    // MARK: Generations

    /// What a CBDMA generation looks like and which quirks its driver must apply.
    public struct Profile: Sendable, Hashable {
        /// A short name, e.g. "skx".
        public var name: String
        public var platform: String
        public var deviceID: UInt16
        /// CBVER value.
        public var cbver: UInt8
        /// XFERCAP value (log2 of the largest transfer).
        public var xfercap: UInt8
        public var capabilities: DMACapability
        /// Channels behind one PCI function (CHANCNT).
        public var channelsPerFunction: Int
        /// MSI-X table and PBA offsets in BAR0.
        public var msixTableOffset: Int
        public var msixPBAOffset: Int
        /// BAR0 size.
        public var bar0Size: Int

        /// Major version (CBVER bits 7:4).
        public var major: UInt8 { cbver >> 4 }
        /// Minor version (CBVER bits 3:0).
        public var minor: UInt8 { cbver & 0xF }
        /// v1 register layout and START/APPEND commands (CB 1.x).
        public var isV1: Bool { cbver < 0x20 }
        /// 64-bit register writes must be split into two 32-bit halves (< 3.3).
        public var splitsWide64BitWrites: Bool { cbver < 0x33 }
        /// 64-bit CHANSTS reads may tear (< 3.3): take addresses from the completion word.
        public var tornChanstsReads: Bool { cbver < 0x33 }
        /// A channel reset wipes the MSI-X table (CB 3.3 Atom C2000 / Xeon D parts).
        public var resetClobbersMSIX: Bool { cbver == 0x33 }
        /// Halt recovery in place (DPDK style) works only on 3.4; older parts reset and restart.
        public var recoversFromHalt: Bool { cbver >= 0x34 }
        /// A channel reset on TBG channel 0 (0x3430) leaves a spurious parity error (bit 4) in
        /// config DMAUNCERRSTS (0x148); the driver writes 0x10 there in its reset path.
        public var spuriousParityErrorAfterReset: Bool { deviceID == 0x3430 }
        /// NULL descriptors need a non-zero size (3.0 erratum; every driver uses one).
        public var nullNeedsSize: Bool { true }
        /// The largest transfer in bytes.
        public var maximumTransferSize: Int { xfercap == 0 ? Int(UInt32.max) : 1 << Int(xfercap) }
    }

    /// Profiles of the generations this project models, oldest first.
    public static let profiles: [Profile] = [
        Profile(name: "cb1", platform: "5000-series chipset", deviceID: 0x1A38, cbver: 0x12, xfercap: 20,
                capabilities: [], channelsPerFunction: 4, msixTableOffset: 0x1000, msixPBAOffset: 0x1800, bar0Size: 0x4000),
        Profile(name: "tbg", platform: "5520/X58 IOH (Tylersburg)", deviceID: 0x3430, cbver: 0x30, xfercap: 20,
                capabilities: [.pageBreak, .dca], channelsPerFunction: 1, msixTableOffset: 0x1000, msixPBAOffset: 0x1800, bar0Size: 0x4000),
        Profile(name: "snb", platform: "Xeon E5 (Sandy Bridge-EP)", deviceID: 0x3C20, cbver: 0x32, xfercap: 20,
                capabilities: [.pageBreak, .dca, .blockFill, .crc, .crcMove], channelsPerFunction: 1,
                msixTableOffset: 0x1000, msixPBAOffset: 0x1800, bar0Size: 0x4000),
        Profile(name: "bdx", platform: "Xeon E5 v4 (Broadwell-EP)", deviceID: 0x6F20, cbver: 0x32, xfercap: 20,
                capabilities: [.pageBreak, .dca, .blockFill, .crc, .crcMove], channelsPerFunction: 1,
                msixTableOffset: 0x1000, msixPBAOffset: 0x1800, bar0Size: 0x4000),
        Profile(name: "skx", platform: "Xeon Scalable (Skylake-SP)", deviceID: 0x2021, cbver: 0x32, xfercap: 20,
                capabilities: [.pageBreak, .dca, .blockFill, .crc, .crcMove], channelsPerFunction: 1,
                msixTableOffset: 0x1000, msixPBAOffset: 0x1800, bar0Size: 0x4000),
        Profile(name: "bwd", platform: "Atom C2000 (Avoton)", deviceID: 0x0C52, cbver: 0x33, xfercap: 20,
                capabilities: [.pageBreak, .dca, .blockFill, .crc, .crcMove], channelsPerFunction: 1,
                msixTableOffset: 0x1000, msixPBAOffset: 0x1800, bar0Size: 0x4000),
        // ioat.md §1.1: BDX-DE has no RAID, so no XOR/PQ capability is advertised.
        Profile(name: "bdxde", platform: "Xeon D-1500 (Broadwell-DE)", deviceID: 0x6F50, cbver: 0x33, xfercap: 20,
                capabilities: [.pageBreak, .dca, .blockFill, .crc, .crcMove], channelsPerFunction: 1,
                msixTableOffset: 0x1000, msixPBAOffset: 0x1800, bar0Size: 0x4000),
        Profile(name: "icx", platform: "Xeon Scalable gen 3 (Ice Lake-SP)", deviceID: 0x0B00, cbver: 0x34, xfercap: 30,
                capabilities: [.pageBreak, .blockFill, .crc, .crcMove, .descriptorPrefetch], channelsPerFunction: 1,
                msixTableOffset: 0x1000, msixPBAOffset: 0x1800, bar0Size: 0x4000),
    ]

    /// The profile named `name` ("cb1", "tbg", "snb", "bdx", "skx", "bwd", "bdxde", "icx").
    public static func profile(named name: String) -> Profile? { profiles.first { $0.name == name } }

    // MARK: Device IDs

    private static func rows(_ ids: [UInt16], _ platform: String, _ cbver: UInt32, supported: Bool = true) -> [EngineIdentity] {
        ids.map {
            EngineIdentity(id: PCIID(vendor: vendorID, device: $0), family: .ioat, platform: platform,
                           expectedVersion: cbver, generation: "CBDMA \(cbver >> 4).\(cbver & 0xF)", supported: supported)
        }
    }

    /// Every CBDMA device ID, with its platform and expected CBVER (ioat.md §1.1).
    public static let deviceTable: [EngineIdentity] =
        rows([0x1A38], "5000-series chipset", 0x12, supported: false)
        + rows([0x360B], "7300 chipset (CNB)", 0x10, supported: false)
        + rows([0x65FF], "5100 chipset (SCNB)", 0x10, supported: false)
        + rows([0x402F], "5400 chipset", 0x20, supported: false)
        + rows([0x3430, 0x3431, 0x3432, 0x3433, 0x3429, 0x342A, 0x342B, 0x342C], "5520/X58 IOH (Tylersburg)", 0x30)
        + rows(Array(0x3710...0x3719), "Xeon C5500/C3500 (Jasper Forest)", 0x32)
        + rows(Array(0x3C20...0x3C27) + [0x3C2E, 0x3C2F], "Xeon E5 (Sandy Bridge-EP)", 0x32)
        + rows(Array(0x0E20...0x0E27) + [0x0E2E, 0x0E2F], "Xeon E5 v2 (Ivy Bridge-EP)", 0x32)
        + rows(Array(0x2F20...0x2F27) + [0x2F2E, 0x2F2F], "Xeon E5 v3 (Haswell-EP)", 0x32)
        + rows(Array(0x6F20...0x6F27) + [0x6F2E, 0x6F2F], "Xeon E5 v4 (Broadwell-EP)", 0x32)
        + rows(Array(0x0C50...0x0C53), "Atom C2000 (Avoton)", 0x33)
        + rows(Array(0x6F50...0x6F53), "Xeon D-1500 (Broadwell-DE)", 0x33)
        + rows([0x2021], "Xeon Scalable gen 1/2 (Skylake-SP, Cascade Lake)", 0x32)
        + rows([0x0B00], "Xeon Scalable gen 3 (Ice Lake-SP)", 0x34)
}
