import CNetDMA
import NetDMAEngines

// DMA memory: buffers the set owns (by CPU address) and registrations of caller memory, both
// mapped into every engine of the set by its ``DMAMemory``.

@c @implementation
public func netdma_mem_alloc(_ engines: OpaquePointer?, _ length: Int, _ numaNode: Int32,
                             _ out: UnsafeMutablePointer<netdma_buffer>?) -> Int32 {
    guard let engines else { return null("netdma_mem_alloc", "engines") }
    if let e = CEngines.notLive(engines, "netdma_mem_alloc", "engines", madeBy: "netdma_open") { return e }
    guard let out else { return null("netdma_mem_alloc", "out") }
    out.pointee = netdma_buffer(addr: nil, iova: 0, length: 0)
    guard numaNode >= -1 else {
        return fail(NETDMA_EINVAL, "netdma_mem_alloc: numa_node \(numaNode) is not a node; pass -1 for the calling thread's policy.")
    }
    return CEngines.with(engines) { e in
        do throws(DriverError) {
            let box = BufferBox(try e.set.memory.allocate(length: length, node: numaNode < 0 ? nil : Int(numaNode)))
            e.resources.withLock { $0.buffers[UInt(bitPattern: box.buffer.base)] = box }
            out.pointee = netdma_buffer(addr: box.buffer.base, iova: box.buffer.iova, length: box.buffer.length)
            return 0
        } catch {
            return fail(error)
        }
    }
}

@c @implementation
public func netdma_mem_free(_ engines: OpaquePointer?, _ addr: UnsafeMutableRawPointer?) -> Int32 {
    guard let engines else { return null("netdma_mem_free", "engines") }
    if let e = CEngines.notLive(engines, "netdma_mem_free", "engines", madeBy: "netdma_open") { return e }
    guard let addr else { return null("netdma_mem_free", "addr") }
    return CEngines.with(engines) { e in
        let box = e.resources.withLock { $0.buffers.removeValue(forKey: UInt(bitPattern: addr)) }
        guard box != nil else {
            return fail(NETDMA_ENOTFOUND,
                "netdma_mem_free: \(addr) is not the addr of a buffer from netdma_mem_alloc of this set (freed twice?).")
        }
        return 0  // the buffer is unmapped and freed with `box`
    }
}

@c @implementation
public func netdma_mem_register(_ engines: OpaquePointer?, _ addr: UnsafeMutableRawPointer?, _ length: Int,
                                _ iova: UnsafeMutablePointer<UInt64>?) -> Int32 {
    guard let engines else { return null("netdma_mem_register", "engines") }
    if let e = CEngines.notLive(engines, "netdma_mem_register", "engines", madeBy: "netdma_open") { return e }
    guard let addr else { return null("netdma_mem_register", "addr") }
    guard let iova else { return null("netdma_mem_register", "iova") }
    return CEngines.with(engines) { e in
        do throws(DriverError) {
            iova.pointee = try e.set.memory.register(addr, length: length)
            e.resources.withLock { $0.registrations.append((UInt(bitPattern: addr), length)) }
            return 0
        } catch {
            return fail(error)
        }
    }
}

@c @implementation
public func netdma_mem_unregister(_ engines: OpaquePointer?, _ addr: UnsafeMutableRawPointer?) -> Int32 {
    guard let engines else { return null("netdma_mem_unregister", "engines") }
    if let e = CEngines.notLive(engines, "netdma_mem_unregister", "engines", madeBy: "netdma_open") { return e }
    guard let addr else { return null("netdma_mem_unregister", "addr") }
    return CEngines.with(engines) { e in
        do throws(DriverError) {
            try e.set.memory.unregister(addr)
            // Forget the registration that held addr (the memory's page rounding covers at least it).
            let a = UInt(bitPattern: addr)
            e.resources.withLock { r in
                if let i = r.registrations.firstIndex(where: { a >= $0.address && a - $0.address < UInt(max(1, $0.length)) }) {
                    r.registrations.remove(at: i)
                }
            }
            return 0
        } catch {
            return fail(error)
        }
    }
}

@c @implementation
public func netdma_mem_iova(_ engines: OpaquePointer?, _ addr: UnsafeRawPointer?, _ iova: UnsafeMutablePointer<UInt64>?) -> Int32 {
    guard let engines else { return null("netdma_mem_iova", "engines") }
    if let e = CEngines.notLive(engines, "netdma_mem_iova", "engines", madeBy: "netdma_open") { return e }
    guard let addr else { return null("netdma_mem_iova", "addr") }
    guard let iova else { return null("netdma_mem_iova", "iova") }
    return CEngines.with(engines) { e in
        guard let v = e.set.memory.iova(of: addr) else {
            return fail(NETDMA_EUNMAPPED,
                "netdma_mem_iova: \(addr) is not inside DMA memory of this set; allocate it with netdma_mem_alloc or register it with netdma_mem_register.")
        }
        iova.pointee = v
        return 0
    }
}
