import CNetDMA
import NetDMAEngines

/// What a `netdma_channel *` points at: an allocated ``NetDMAChannel`` of a ``CEngines``.
///
/// One thread uses a channel at a time (netdma.h), so `hasQueue` and `events` need no lock.
final class CChannel: CHandle, @unchecked Sendable {
    let channel: NetDMAChannel
    let owner: CEngines
    /// The engine's index in the set.
    let engine: Int
    /// The completion word's CPU address.
    let completionWord: UnsafePointer<UInt64>?
    /// Whether a queue is on the channel.
    var hasQueue = false
    /// The eventfd netdma_channel_eventfd handed out (made on first use).
    var events: ChannelEvents?

    init(_ channel: NetDMAChannel, owner: CEngines) {
        self.channel = channel
        self.owner = owner
        engine = owner.engineIndex(channel.provider) ?? 0
        completionWord = channel.dmaMemory.address(ofIOVA: channel.completionIOVA).map {
            UnsafePointer($0.assumingMemoryBound(to: UInt64.self))
        }
    }
}

/// The eventfd a channel's DPC signals. The DPC's completion handler holds it too, so it is
/// closed only once neither the channel nor a DPC still running can write to it.
final class ChannelEvents: Sendable {
    let fd: EventFD
    init() throws(DriverError) { fd = try EventFD() }
}

/// The CPUs of a cpu_set_t-layout mask: CPU n is bit n % 8 of byte n / 8.
func cpuSet(_ mask: UnsafeRawPointer, bytes: Int) -> CPUSet {
    var s = CPUSet()
    let b = mask.assumingMemoryBound(to: UInt8.self)
    for i in 0..<bytes where b[i] != 0 {
        for bit in 0..<8 where b[i] & (1 << bit) != 0 { s.insert(i * 8 + bit) }
    }
    return s
}

@c @implementation
public func netdma_channel_alloc(_ engines: OpaquePointer?, _ engine: Int32, _ cpus: UnsafeRawPointer?, _ cpusSize: Int,
                                 _ out: UnsafeMutablePointer<OpaquePointer?>?) -> Int32 {
    guard let engines else { return null("netdma_channel_alloc", "engines") }
    if let e = CEngines.notLive(engines, "netdma_channel_alloc", "engines", madeBy: "netdma_open") { return e }
    guard let out else { return null("netdma_channel_alloc", "out") }
    out.pointee = nil
    var affinity: CPUSet?
    if let cpus {
        let s = cpuSet(cpus, bytes: cpusSize)
        guard !s.isEmpty else {
            return fail(NETDMA_EINVAL,
                "netdma_channel_alloc: the CPU mask (\(cpusSize) bytes) holds no CPU; set at least one (CPU_SET), or pass NULL for the engine's local CPUs.")
        }
        affinity = s
    }
    return CEngines.with(engines) { e in
        do throws(DriverError) {
            let channel: NetDMAChannel
            if engine < 0 {
                guard engine == -1 else {
                    throw DriverError(.invalidArgument, "netdma_channel_alloc: engine \(engine); pass an index (0 to netdma_engine_count() - 1) or -1 for any.")
                }
                channel = try e.set.allocateChannel(cpus: affinity)
            } else {
                channel = try e.engine(UInt32(engine), "netdma_channel_alloc").get().allocateChannel(cpus: affinity)
            }
            e.resources.withLock { $0.channels += 1 }
            out.pointee = CChannel(channel, owner: e).retainedHandle
            return Int32(channel.cpu)
        } catch {
            return fail(error)
        }
    }
}

@c @implementation
public func netdma_channel_free(_ channel: OpaquePointer?) -> Int32 {
    guard let channel else { return null("netdma_channel_free", "channel") }
    if let e = CChannel.notLive(channel, "netdma_channel_free", "channel", madeBy: "netdma_channel_alloc") { return e }
    let result: Int32 = CChannel.with(channel) { c in
        guard !c.hasQueue else {
            return fail(NETDMA_EBUSY, "netdma_channel_free: a queue is on this channel; destroy it (netdma_queue_destroy) first.")
        }
        do throws(DriverError) {
            try c.channel.free()
        } catch {
            return fail(error)
        }
        if c.events != nil { c.channel.setCompletionHandler(nil) }
        c.events = nil
        c.owner.resources.withLock { $0.channels -= 1 }
        return 0
    }
    if result == 0 { CChannel.release(channel) }
    return result
}

@c @implementation
public func netdma_channel_info_get(_ channel: OpaquePointer?, _ info: UnsafeMutablePointer<netdma_channel_info>?) -> Int32 {
    guard let channel else { return null("netdma_channel_info_get", "channel") }
    if let e = CChannel.notLive(channel, "netdma_channel_info_get", "channel", madeBy: "netdma_channel_alloc") { return e }
    guard let info else { return null("netdma_channel_info_get", "info") }
    return CChannel.with(channel) { c in
        let ch = c.channel
        var flags: UInt32 = 0
        if ch.countedChains { flags |= NETDMA_CHANNEL_COUNTED_CHAINS }
        if ch.providerFlags.contains(.fill) { flags |= NETDMA_CHANNEL_FILL }
        if ch.callbacks.contains(.suspendResume) { flags |= NETDMA_CHANNEL_SUSPEND_RESUME }
        if ch.callbacks.contains(.abort) { flags |= NETDMA_CHANNEL_ABORT }
        if ch.callbacks.contains(.reset) { flags |= NETDMA_CHANNEL_RESET }
        if ch.interruptEventFD != nil { flags |= NETDMA_CHANNEL_INTERRUPT }
        info.pointee = netdma_channel_info(
            engine: UInt32(c.engine), index: UInt32(ch.index), cpu: Int32(ch.cpu), netdma_version: ch.providerVersion.encoded,
            flags: flags, reserved: 0, max_transfer_size: UInt64(ch.maximumTransferSize), max_address: ch.maximumAddress,
            completion_word: c.completionWord, completion_iova: ch.completionIOVA)
        return 0
    }
}

@c @implementation
public func netdma_channel_eventfd(_ channel: OpaquePointer?) -> Int32 {
    guard let channel else { return null("netdma_channel_eventfd", "channel") }
    if let e = CChannel.notLive(channel, "netdma_channel_eventfd", "channel", madeBy: "netdma_channel_alloc") { return e }
    return CChannel.with(channel) { c in
        if let events = c.events { return events.fd.rawValue }
        guard c.channel.interruptEventFD != nil else {
            return fail(NETDMA_ENOTSUP,
                "netdma_channel_eventfd: channel \(c.channel.index) has no interrupt vector (opened with NETDMA_OPEN_NO_INTERRUPTS?); poll netdma_completed instead.")
        }
        do throws(DriverError) {
            let events = try ChannelEvents()
            c.channel.setCompletionHandler { _ in events.fd.signal() }
            c.events = events
            return events.fd.rawValue
        } catch {
            return fail(error)
        }
    }
}

// MARK: - the NetDMA level

@c @implementation
public func netdma_channel_state(_ channel: OpaquePointer?) -> Int32 {
    guard let channel else { return null("netdma_channel_state", "channel") }
    return CChannel.with(channel) { Int32($0.channel.state.rawValue) }
}

@c @implementation
public func netdma_channel_completion_word(_ channel: OpaquePointer?) -> UInt64 {
    guard let channel else { _ = null("netdma_channel_completion_word", "channel"); return 0 }
    return CChannel.with(channel) { $0.channel.completionWord.rawValue }
}

/// Runs a NetDMA channel call and turns its error into the C code; refused while a queue owns
/// the channel's chain.
@inline(__always)
func channelCall(_ channel: OpaquePointer?, _ function: StaticString,
                 _ body: (NetDMAChannel) throws(DriverError) -> Void) -> Int32 {
    guard let channel else { return null(function, "channel") }
    return CChannel.with(channel) { c in
        guard !c.hasQueue else {
            return fail(NETDMA_EBUSY, "\(function): a queue owns this channel's chain; use the queue, or destroy it (netdma_queue_destroy) first.")
        }
        do throws(DriverError) {
            try body(c.channel)
            return 0
        } catch {
            return fail(error)
        }
    }
}

/// The chain at `first`, or nil when it is NULL.
func chain(_ first: UnsafeMutablePointer<netdma_descriptor>?, _ iova: UInt64, _ count: UInt32) -> DescriptorChain? {
    first.map {
        DescriptorChain(address: UnsafeMutableRawPointer($0).assumingMemoryBound(to: Descriptor.self), iova: iova, count: Int(count))
    }
}

@c @implementation
public func netdma_channel_start(_ channel: OpaquePointer?, _ first: UnsafeMutablePointer<netdma_descriptor>?,
                                 _ firstIOVA: UInt64, _ count: UInt32) -> Int32 {
    guard let c = chain(first, firstIOVA, count) else { return null("netdma_channel_start", "first") }
    return channelCall(channel, "netdma_channel_start") { ch throws(DriverError) in try ch.start(c) }
}

@c @implementation
public func netdma_channel_append(_ channel: OpaquePointer?, _ first: UnsafeMutablePointer<netdma_descriptor>?,
                                  _ firstIOVA: UInt64, _ count: UInt32) -> Int32 {
    guard let c = chain(first, firstIOVA, count) else { return null("netdma_channel_append", "first") }
    return channelCall(channel, "netdma_channel_append") { ch throws(DriverError) in try ch.append(c) }
}

@c @implementation
public func netdma_channel_suspend(_ channel: OpaquePointer?, _ lastIOVA: UnsafeMutablePointer<UInt64>?) -> Int32 {
    channelCall(channel, "netdma_channel_suspend") { ch throws(DriverError) in
        let last = try ch.suspend()
        lastIOVA?.pointee = last
    }
}

@c @implementation
public func netdma_channel_resume(_ channel: OpaquePointer?) -> Int32 {
    channelCall(channel, "netdma_channel_resume") { ch throws(DriverError) in try ch.resume() }
}

@c @implementation
public func netdma_channel_abort(_ channel: OpaquePointer?) -> Int32 {
    channelCall(channel, "netdma_channel_abort") { ch throws(DriverError) in try ch.abort() }
}

@c @implementation
public func netdma_channel_reset(_ channel: OpaquePointer?) -> Int32 {
    channelCall(channel, "netdma_channel_reset") { ch throws(DriverError) in try ch.reset() }
}
