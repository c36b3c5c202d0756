import SystemPackage

/// The error every layer of the driver throws: what failed, the errno if a system call
/// failed, and a message that says what to do about it.
///
/// Codes are open: each module adds its own as static members of ``Code``. Compare errors by
/// ``code``; the message is for people.
///
/// ```swift
/// do { try container.map(buffer) }
/// catch let error where error.code == .memlockLimit { print(error) }
/// ```
public struct DriverError: Error, Sendable, Hashable, CustomStringConvertible {
    /// A kind of failure, stable across releases.
    public struct Code: Sendable, Hashable, RawRepresentable, CustomStringConvertible {
        public let rawValue: String
        public init(rawValue: String) { self.rawValue = rawValue }
        public var description: String { rawValue }
    }

    /// What failed.
    public var code: Code
    /// The system call's errno, when one failed.
    public var errno: Errno?
    /// What happened and what to do about it.
    public var message: String

    public init(_ code: Code, errno: Errno? = nil, _ message: String) {
        self.code = code
        self.errno = errno
        self.message = message
    }

    public var description: String {
        if let errno { return "\(message) [\(code); \(errno)]" }
        return "\(message) [\(code)]"
    }
}

extension DriverError.Code {
    /// The caller is not root and lacks the capability or file permission needed.
    public static let permissionDenied = Self(rawValue: "permissionDenied")
    /// A device, file or resource does not exist.
    public static let notFound = Self(rawValue: "notFound")
    /// The device is bound to a driver other than the one required.
    public static let wrongDriver = Self(rawValue: "wrongDriver")
    /// The IOMMU group holds devices not bound to vfio-pci (or to no driver).
    public static let groupNotViable = Self(rawValue: "groupNotViable")
    /// No IOMMU is enabled; VFIO cannot isolate the device.
    public static let noIOMMU = Self(rawValue: "noIOMMU")
    /// RLIMIT_MEMLOCK is too low to pin the requested DMA memory.
    public static let memlockLimit = Self(rawValue: "memlockLimit")
    /// A BAR or region cannot be mmapped.
    public static let notMappable = Self(rawValue: "notMappable")
    /// An address is not inside any DMA mapping.
    public static let unmappedAddress = Self(rawValue: "unmappedAddress")
    /// A mapping overlaps an existing one or lies outside the valid IOVA ranges.
    public static let invalidMapping = Self(rawValue: "invalidMapping")
    /// Memory could not be allocated.
    public static let outOfMemory = Self(rawValue: "outOfMemory")
    /// An argument is out of range.
    public static let invalidArgument = Self(rawValue: "invalidArgument")
    /// The device or resource is in use by someone else.
    public static let busy = Self(rawValue: "busy")
    /// The device did not respond in time.
    public static let timeout = Self(rawValue: "timeout")
    /// The operation is not supported by this device, kernel or build.
    public static let unsupported = Self(rawValue: "unsupported")
    /// A system call failed in a way not covered by a more specific code.
    public static let systemCallFailed = Self(rawValue: "systemCallFailed")
    /// The device reported an error.
    public static let deviceError = Self(rawValue: "deviceError")
}

extension DriverError {
    /// An error for a failed system call, with the errno's usual remedy added for the common
    /// cases (EPERM/EACCES, ENOMEM, EBUSY, ENODEV).
    ///
    /// - Precondition: `errno` is not EFAULT or EBADF: those are programmer errors and trap.
    public static func systemCall(_ operation: String, _ errno: Errno, _ context: String = "") -> DriverError {
        precondition(errno != .badAddress && errno != .badFileDescriptor,
                     "\(operation) failed with \(errno): programmer error")
        let what = context.isEmpty ? operation : "\(operation) (\(context))"
        switch errno {
        case .notPermitted, .permissionDenied:
            return DriverError(.permissionDenied, errno: errno,
                "\(what): permission denied. Run as root, or install udev/60-netdma-vfio.rules and add yourself to the 'vfio' group.")
        case .noMemory:
            return DriverError(.outOfMemory, errno: errno, "\(what): out of memory.")
        case .resourceBusy:
            return DriverError(.busy, errno: errno, "\(what): device or resource busy; another process may own it.")
        case .noSuchFileOrDirectory, .operationNotSupportedByDevice, .noSuchAddressOrDevice:
            return DriverError(.notFound, errno: errno, "\(what): no such device.")
        default:
            return DriverError(.systemCallFailed, errno: errno, "\(what) failed.")
        }
    }
}
