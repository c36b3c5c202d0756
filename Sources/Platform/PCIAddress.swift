/// A PCI function's address: domain, bus, device and function (`0000:03:00.0`).
///
/// This is the name sysfs (`/sys/bus/pci/devices/<address>`), VFIO
/// (`VFIO_GROUP_GET_DEVICE_FD`) and `lspci -D` use for a function.
public struct PCIAddress: Sendable, Hashable, Comparable, CustomStringConvertible, LosslessStringConvertible, Codable {
    /// The PCI segment (domain), 0–0xFFFF.
    public var domain: UInt16
    /// The bus number.
    public var bus: UInt8
    /// The device (slot) number, 0–31.
    public var device: UInt8
    /// The function number, 0–7.
    public var function: UInt8

    /// Creates an address from its parts.
    ///
    /// - Precondition: `device < 32` and `function < 8`.
    public init(domain: UInt16 = 0, bus: UInt8, device: UInt8, function: UInt8) {
        precondition(device < 32 && function < 8, "PCI device must be < 32 and function < 8")
        self.domain = domain
        self.bus = bus
        self.device = device
        self.function = function
    }

    /// Parses `DDDD:BB:dd.f` or the short form `BB:dd.f` (domain 0). Hexadecimal, any case.
    public init?(_ text: String) {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        let domainText: Substring, busText: Substring, rest: Substring
        switch parts.count {
        case 3: (domainText, busText, rest) = (parts[0], parts[1], parts[2])
        case 2: (domainText, busText, rest) = ("0", parts[0], parts[1])
        default: return nil
        }
        let slot = rest.split(separator: ".", omittingEmptySubsequences: false)
        guard slot.count == 2, !domainText.isEmpty, domainText.count <= 4, !busText.isEmpty, busText.count <= 2,
              !slot[0].isEmpty, slot[0].count <= 2, slot[1].count == 1,
              let d = UInt16(domainText, radix: 16), let b = UInt8(busText, radix: 16),
              let dev = UInt8(slot[0], radix: 16), let fn = UInt8(slot[1], radix: 16),
              dev < 32, fn < 8
        else { return nil }
        self.init(domain: d, bus: b, device: dev, function: fn)
    }

    /// The canonical form, `0000:03:00.0`.
    public var description: String {
        hex(UInt64(domain), 4) + ":" + hex(UInt64(bus), 2) + ":" + hex(UInt64(device), 2) + "." + String(function)
    }

    public static func < (a: PCIAddress, b: PCIAddress) -> Bool {
        (a.domain, a.bus, a.device, a.function) < (b.domain, b.bus, b.device, b.function)
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.singleValueContainer()
        let s = try c.decode(String.self)
        guard let a = PCIAddress(s) else {
            throw DecodingError.dataCorruptedError(in: c, debugDescription: "not a PCI address: \(s)")
        }
        self = a
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(description)
    }
}

/// `value` in lower-case hexadecimal, zero-padded to `width` digits.
@usableFromInline
func hex(_ value: UInt64, _ width: Int) -> String {
    let s = String(value, radix: 16)
    return s.count >= width ? s : String(repeating: "0", count: width - s.count) + s
}
