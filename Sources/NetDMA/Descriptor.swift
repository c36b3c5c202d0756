/// `NET_DMA_DESCRIPTOR.ControlFlags`: what a descriptor asks of the engine.
///
/// The low bits are NetDMA's (netdma.h); the top byte is the operation type.
public struct ControlFlags: OptionSet, Sendable, Hashable {
    public let rawValue: UInt32
    @inlinable public init(rawValue: UInt32) { self.rawValue = rawValue }

    /// Raise the channel's interrupt after this descriptor. The corresponding flag is
    /// `NET_DMA_INTERRUPT_ON_COMPLETION` (0x1).
    public static let interruptOnCompletion = ControlFlags(rawValue: 0x1)
    /// Do not snoop CPU caches on source reads (`NET_DMA_SOURCE_NO_SNOOP`).
    public static let sourceNoSnoop = ControlFlags(rawValue: 0x2)
    /// Do not snoop CPU caches on destination writes (`NET_DMA_DESTINATION_NO_SNOOP`).
    public static let destinationNoSnoop = ControlFlags(rawValue: 0x4)
    /// Write the completion word after this descriptor (`NET_DMA_STATUS_UPDATE_ON_COMPLETION`).
    public static let statusUpdateOnCompletion = ControlFlags(rawValue: 0x8)
    /// Fence: finish this descriptor's writes before reading the next one's data
    /// (`NET_DMA_SERIALIZE_TRANSFER`).
    public static let serializeTransfer = ControlFlags(rawValue: 0x10)
    /// Move no data (`NET_DMA_NULL_TRANSFER`).
    public static let nullTransfer = ControlFlags(rawValue: 0x20)
    /// Source continues at `nextSource` at the end of its 4 KiB page (2.0, `NET_DMA_SOURCE_PAGE_BREAK`).
    public static let sourcePageBreak = ControlFlags(rawValue: 0x40)
    /// Destination continues at `nextDestination` at the end of its 4 KiB page
    /// (2.0, `NET_DMA_DESTINATION_PAGE_BREAK`).
    public static let destinationPageBreak = ControlFlags(rawValue: 0x80)
    /// DCA hint for the destination (2.0, `NET_DMA_DESTINATION_DCA_ENABLE`). Accepted and ignored:
    /// no supported engine has DCA.
    public static let destinationDCAEnable = ControlFlags(rawValue: 0x200)

    /// The operation-type byte (`NET_DMA_OP_TYPE_MASK`, bits 31:24).
    public static let operationMask: UInt32 = 0xFF00_0000
    /// Bits no operation may set (`NET_DMA_RESERVED_MASK`, bits 23:10 and 8).
    public static let reservedMask: UInt32 = 0x00FF_FD00

    /// The operation this descriptor performs.
    @inlinable public var operation: Operation {
        get { Operation(rawValue: UInt8(truncatingIfNeeded: rawValue >> 24)) }
        set { self = ControlFlags(rawValue: (rawValue & ~Self.operationMask) | UInt32(newValue.rawValue) << 24) }
    }
}

/// A descriptor's operation type (the top byte of ``ControlFlags``).
public struct Operation: RawRepresentable, Sendable, Hashable {
    public let rawValue: UInt8
    @inlinable public init(rawValue: UInt8) { self.rawValue = rawValue }
    /// A copy (`NET_DMA_OP_TYPE_STANDARD_DMA`).
    public static let copy = Operation(rawValue: 0x00)
    /// A fill: the 8-byte pattern in `source` is repeated over `transferSize` bytes at
    /// `destination`. A Linux extension of NetDMA (the CBDMA block-fill opcode); providers
    /// advertise it with ``ProviderFlags/fill``.
    public static let fill = Operation(rawValue: 0x01)
    /// A DCA context change (`NET_DMA_OP_TYPE_CONTEXT_CHANGE`); not supported.
    public static let contextChange = Operation(rawValue: 0xFF)
}

/// `NET_DMA_DESCRIPTOR`: one 64-byte, 64-byte-aligned transfer descriptor in DMA memory.
///
/// The layout is field for field the CBDMA hardware descriptor, so a CBDMA provider hands
/// chains straight to the engine.
@frozen
public struct Descriptor: Sendable, Hashable, BitwiseCopyable {
    /// Bytes to move (`TransferSize`).
    public var transferSize: UInt32
    /// ``ControlFlags`` bits (`ControlFlags`).
    public var controlFlags: UInt32
    /// IOVA of the source, or the fill pattern (`SourceAddress`).
    public var source: UInt64
    /// IOVA of the destination (`DestinationAddress`).
    public var destination: UInt64
    /// IOVA of the next descriptor (`NextDescriptor`); 0 ends a 1.x chain.
    public var next: UInt64
    /// IOVA of the second source page (`Reserved1` / `NextSourceAddress`).
    public var nextSource: UInt64
    /// IOVA of the second destination page (`Reserved2` / `NextDestinationAddress`).
    public var nextDestination: UInt64
    /// Owned by the NetDMA interface and its client; providers never touch it (`UserContext1`).
    public var userContext1: UInt64
    /// Owned by the NetDMA interface and its client (`UserContext2`).
    public var userContext2: UInt64

    @inlinable
    public init(transferSize: UInt32 = 0, controlFlags: ControlFlags = [], source: UInt64 = 0,
                destination: UInt64 = 0, next: UInt64 = 0, nextSource: UInt64 = 0, nextDestination: UInt64 = 0,
                userContext1: UInt64 = 0, userContext2: UInt64 = 0) {
        self.transferSize = transferSize
        self.controlFlags = controlFlags.rawValue
        self.source = source
        self.destination = destination
        self.next = next
        self.nextSource = nextSource
        self.nextDestination = nextDestination
        self.userContext1 = userContext1
        self.userContext2 = userContext2
    }

    /// The control flags as an option set.
    @inlinable public var flags: ControlFlags {
        get { ControlFlags(rawValue: controlFlags) }
        set { controlFlags = newValue.rawValue }
    }

    /// The descriptor size and alignment in DMA memory.
    public static let size = 64
}

/// `NET_DMA_TRANSFER_STATUS`: the low three bits of the completion word.
public enum TransferStatus: UInt8, Sendable, Hashable, CustomStringConvertible {
    /// The descriptor finished and more are pending (`NetDmaTransferStatusActive`).
    case active = 0
    /// The descriptor finished and was the last one pending (`NetDmaTransferStatusIdle`).
    case idle = 1
    /// A suspend finished; the channel waits for Resume (`NetDmaTransferStatusSuspend`).
    case suspend = 2
    /// Stopped by an error, Abort or Reset (`NetDmaTransferStatusHalted`).
    case halted = 3
    /// Nothing has completed since Start; the address is not valid (`NetDmaTransferStatusArmed`).
    case armed = 4

    public var description: String {
        switch self {
        case .active: "active"
        case .idle: "idle"
        case .suspend: "suspend"
        case .halted: "halted"
        case .armed: "armed"
        }
    }
}

/// A value of the 64-bit completion word: the IOVA of the most recent processed descriptor
/// (bits 63:6) and a ``TransferStatus`` (bits 2:0).
@frozen
public struct CompletionWord: RawRepresentable, Sendable, Hashable, CustomStringConvertible {
    public var rawValue: UInt64
    @inlinable public init(rawValue: UInt64) { self.rawValue = rawValue }
    @inlinable public init(descriptor: UInt64, status: TransferStatus) {
        rawValue = (descriptor & ~0x3F) | UInt64(status.rawValue)
    }
    /// `NET_DMA_TRANSFER_STATUS_MASK`.
    public static let statusMask: UInt64 = 0x7
    /// The IOVA of the last processed descriptor; meaningless when the status is ``TransferStatus/armed``.
    @inlinable public var descriptor: UInt64 { rawValue & ~0x3F }
    /// The status; nil for a value no engine writes (5–7).
    @inlinable public var status: TransferStatus? { TransferStatus(rawValue: UInt8(rawValue & Self.statusMask)) }
    public var description: String {
        "0x\(String(descriptor, radix: 16))|\(status.map(\.description) ?? "invalid(\(rawValue & 7))")"
    }
}
