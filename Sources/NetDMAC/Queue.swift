import CNetDMA
import NetDMAEngines

/// What a `netdma_queue *` points at: a ``CopyQueue`` on a ``CChannel``.
///
/// The hot path reaches it through ``CHandle/with(_:_:)`` (no retain/release) and calls the
/// queue through a strong `let` of a final class, which the compiler borrows in place.
final class CQueue: CHandle {
    let queue: CopyQueue
    let channel: CChannel

    init(_ queue: CopyQueue, channel: CChannel) {
        self.queue = queue
        self.channel = channel
    }
}

/// The op flags netdma.h defines.
let knownOpFlags: UInt64 = NETDMA_OP_FENCE | NETDMA_OP_SUBMIT

@inline(never)
func unknownOpFlags(_ function: StaticString, _ flags: UInt64) -> Int32 {
    fail(NETDMA_EINVAL, "\(function): flags 0x\(String(flags, radix: 16)) has bits netdma.h does not define; use NETDMA_OP_FENCE and NETDMA_OP_SUBMIT.")
}

extension netdma_queue_params {
    /// NETDMA_QUEUE_PARAMS_INIT.
    static var defaults: netdma_queue_params {
        netdma_queue_params(size: UInt32(MemoryLayout<netdma_queue_params>.size), ring_size: 0, flags: 0, cpu_copy_threshold: 0)
    }
}

@c @implementation
public func netdma_queue_create(_ channel: OpaquePointer?, _ params: UnsafePointer<netdma_queue_params>?,
                                _ out: UnsafeMutablePointer<OpaquePointer?>?) -> Int32 {
    guard let channel else { return null("netdma_queue_create", "channel") }
    if let e = CChannel.notLive(channel, "netdma_queue_create", "channel", madeBy: "netdma_channel_alloc") { return e }
    guard let out else { return null("netdma_queue_create", "out") }
    out.pointee = nil
    var p = netdma_queue_params.defaults
    if let params {
        guard params.pointee.size >= p.size else {
            return fail(NETDMA_EINVAL,
                "netdma_queue_create: params->size is \(params.pointee.size); set it to sizeof(netdma_queue_params) = \(p.size) (NETDMA_QUEUE_PARAMS_INIT does).")
        }
        p = params.pointee
    }
    guard p.flags & ~NETDMA_QUEUE_INTERRUPTS == 0 else {
        return fail(NETDMA_EINVAL, "netdma_queue_create: flags 0x\(String(p.flags, radix: 16)) has bits netdma.h does not define; use NETDMA_QUEUE_INTERRUPTS.")
    }
    return CChannel.with(channel) { c in
        guard !c.hasQueue else {
            return fail(NETDMA_EBUSY, "netdma_queue_create: the channel already has a queue; one queue per channel.")
        }
        do throws(DriverError) {
            let q = try CopyQueue(channel: c.channel, ringSize: p.ring_size == 0 ? 1024 : Int(p.ring_size),
                                  interrupts: p.flags & NETDMA_QUEUE_INTERRUPTS != 0,
                                  cpuCopyThreshold: Int(p.cpu_copy_threshold))
            c.hasQueue = true
            out.pointee = CQueue(q, channel: c).retainedHandle
            return 0
        } catch {
            if error.code == .unsupported && p.flags & NETDMA_QUEUE_INTERRUPTS != 0 {
                return fail(NETDMA_ENOTSUP,
                    "netdma_queue_create: channel \(c.channel.index) has no interrupt vector; make the queue without NETDMA_QUEUE_INTERRUPTS and poll netdma_completed.")
            }
            return fail(error)
        }
    }
}

@c @implementation
public func netdma_queue_destroy(_ queue: OpaquePointer?) -> Int32 {
    guard let queue else { return null("netdma_queue_destroy", "queue") }
    if let e = CQueue.notLive(queue, "netdma_queue_destroy", "queue", madeBy: "netdma_queue_create") { return e }
    CQueue.with(queue) { $0.channel.hasQueue = false }
    CQueue.release(queue)  // the CopyQueue goes away here: a running channel is Reset
    return 0
}

// MARK: - hot path

// The copy and fill entry points run CopyQueue's inlined common case (flags 0, an op the
// engine takes, room in the queue) in their own frame, which then holds no error path and no
// call; everything else (a fence, NETDMA_OP_SUBMIT, unknown flags, an op CopyQueue refuses,
// routes to the CPU or has no room for) takes the out-of-line path, still without allocating.

@c @implementation
public func netdma_enqueue_copy(_ queue: OpaquePointer?, _ src: UInt64, _ dst: UInt64, _ length: UInt32, _ flags: UInt64) -> Int32 {
    guard let queue else { return null("netdma_enqueue_copy", "queue") }
    if flags == 0, let ticket = CQueue.with(queue, { $0.queue.enqueueCopyIfCommon(source: src, destination: dst, length: Int(length)) }) {
        return Int32(ticket)
    }
    return enqueueSlowly("netdma_enqueue_copy", queue, flags) { q, fence throws(DriverError) in
        try q.enqueueCopy(source: src, destination: dst, length: Int(length), fence: fence)
    }
}

@c @implementation
public func netdma_enqueue_fill(_ queue: OpaquePointer?, _ pattern: UInt64, _ dst: UInt64, _ length: UInt32, _ flags: UInt64) -> Int32 {
    guard let queue else { return null("netdma_enqueue_fill", "queue") }
    if flags == 0, let ticket = CQueue.with(queue, { $0.queue.enqueueFillIfCommon(pattern: pattern, destination: dst, length: Int(length)) }) {
        return Int32(ticket)
    }
    return enqueueSlowly("netdma_enqueue_fill", queue, flags) { q, fence throws(DriverError) in
        try q.enqueueFill(pattern: pattern, destination: dst, length: Int(length), fence: fence)
    }
}

@c @implementation
public func netdma_enqueue_null(_ queue: OpaquePointer?, _ flags: UInt64) -> Int32 {
    guard let queue else { return null("netdma_enqueue_null", "queue") }
    guard flags & ~NETDMA_OP_FENCE == 0 else {
        return enqueueSlowly("netdma_enqueue_null", queue, flags) { q, fence throws(DriverError) in try q.enqueueNull(fence: fence) }
    }
    return CQueue.with(queue) { q in
        do throws(DriverError) {
            return Int32(try q.queue.enqueueNull(fence: flags != 0))
        } catch {
            return fail(error)
        }
    }
}

/// An enqueue the entry point's inlined common case did not take (a fence, unknown flags,
/// NETDMA_OP_SUBMIT, an op CopyQueue refuses, routes or has no room for). After the enqueue,
/// NETDMA_OP_SUBMIT submits: a failed submit leaves the ops enqueued (netdma_submit retries)
/// and records why as the thread's last error; the enqueue still returns its ticket.
@inline(never)
func enqueueSlowly(_ function: StaticString, _ queue: OpaquePointer, _ flags: UInt64,
                   _ enqueue: (CopyQueue, Bool) throws(DriverError) -> UInt16) -> Int32 {
    guard flags & ~knownOpFlags == 0 else { return unknownOpFlags(function, flags) }
    return CQueue.with(queue) { q in
        let ticket: UInt16
        do throws(DriverError) {
            ticket = try enqueue(q.queue, flags & NETDMA_OP_FENCE != 0)
        } catch {
            return fail(error)
        }
        if flags & NETDMA_OP_SUBMIT != 0 {
            do throws(DriverError) { try q.queue.submit() } catch { _ = fail(error) }
        }
        return Int32(ticket)
    }
}

@c @implementation
public func netdma_submit(_ queue: OpaquePointer?) -> Int32 {
    guard let queue else { return null("netdma_submit", "queue") }
    return CQueue.with(queue) { q in
        do throws(DriverError) {
            try q.queue.submit()
            return 0
        } catch {
            return fail(error)
        }
    }
}

@c @implementation
public func netdma_completed(_ queue: OpaquePointer?, _ max: UInt16, _ lastTicket: UnsafeMutablePointer<UInt16>?,
                             _ hasError: UnsafeMutablePointer<Bool>?) -> Int32 {
    guard let queue else { return null("netdma_completed", "queue") }
    return CQueue.with(queue) { q in
        let c = q.queue.completed(max: Int(max))
        lastTicket?.pointee = c.lastTicket
        hasError?.pointee = c.hadError
        return Int32(truncatingIfNeeded: c.count)
    }
}

@c @implementation
public func netdma_completed_status(_ queue: OpaquePointer?, _ max: UInt16, _ lastTicket: UnsafeMutablePointer<UInt16>?,
                                    _ status: UnsafeMutablePointer<UInt8>?) -> Int32 {
    guard let queue else { return null("netdma_completed_status", "queue") }
    guard let status else {
        if max == 0 { return 0 }
        return null("netdma_completed_status", "status")
    }
    return CQueue.with(queue) { q in
        // CopyStatus is one byte whose values are NETDMA_OP_STATUS_* (checked by the tests).
        let r = status.withMemoryRebound(to: CopyStatus.self, capacity: Int(max)) {
            q.queue.completedStatus(max: Int(max), into: UnsafeMutableBufferPointer(start: $0, count: Int(max)))
        }
        lastTicket?.pointee = r.lastTicket
        return Int32(truncatingIfNeeded: r.count)
    }
}

@c @implementation
public func netdma_burst_capacity(_ queue: OpaquePointer?) -> Int32 {
    guard let queue else { return null("netdma_burst_capacity", "queue") }
    return CQueue.with(queue) { Int32(truncatingIfNeeded: $0.queue.freeSlots) }
}

@c @implementation
public func netdma_queue_stats_get(_ queue: OpaquePointer?, _ stats: UnsafeMutablePointer<netdma_queue_stats>?) -> Int32 {
    guard let queue else { return null("netdma_queue_stats_get", "queue") }
    if let e = CQueue.notLive(queue, "netdma_queue_stats_get", "queue", madeBy: "netdma_queue_create") { return e }
    guard let stats else { return null("netdma_queue_stats_get", "stats") }
    return CQueue.with(queue) { q in
        let cq = q.queue
        var s = netdma_queue_stats()
        s.capacity = UInt32(cq.capacity)
        s.free_slots = UInt32(cq.freeSlots)
        s.pending = UInt32(cq.pendingSubmission)
        s.outstanding = UInt32(cq.outstanding)
        s.failed = UInt64(cq.failedCount)
        s.cpu_ops = UInt64(cq.cpuOpCount)
        copyCString(cq.lastFault?.description ?? "", into: &s.last_fault)
        stats.pointee = s
        return 0
    }
}
