import Platform
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Counts the live threads of one provider's interrupt machinery.
final class ThreadCounter: Sendable {
    let count = Atomic<Int>(0)
}

/// A joinable POSIX thread running a Swift closure: the interrupt thread and the completion
/// workers. (No Foundation in this package.)
final class NativeThread: @unchecked Sendable {
    // @unchecked: `thread` is written once, in `spawn`, before the object is shared; then only joined.
    private var thread = pthread_t()

    private final class Body {
        let run: @Sendable () -> Void
        init(_ run: @escaping @Sendable () -> Void) { self.run = run }
    }

    static func spawn(name: String, _ run: @escaping @Sendable () -> Void) throws(DriverError) -> NativeThread {
        let t = NativeThread()
        let body = Unmanaged.passRetained(Body(run)).toOpaque()
        let r = pthread_create(&t.thread, nil, { arg in
            let body = Unmanaged<Body>.fromOpaque(arg!).takeRetainedValue()
            body.run()
            return nil
        }, body)
        guard r == 0 else {
            Unmanaged<Body>.fromOpaque(body).release()
            throw DriverError(.outOfMemory, "Cannot create the \(name) thread (pthread_create returned \(r)); raise the process thread limit.")
        }
        return t
    }

    func join() { pthread_join(thread, nil) }
}

/// One provider's interrupt machinery: an interrupt thread waiting on every allocated channel's
/// eventfd (the ISR side), and one completion worker per DPC CPU (the DPC side).
///
/// NetDMA flow (netdma.md §7.2): the ISR acknowledges the interrupt (``ProviderChannel/serviceInterrupt()``)
/// and asks the interface for the DPC CPU (`NetDmaIsr`); the DPC runs on that CPU, re-arms the
/// interrupt and calls the interface's completion processing (`NetDmaInterruptDpc`).
final class InterruptDispatcher: @unchecked Sendable {
    // @unchecked: `thread` is set once in `init`; all mutable state is in Mutexes and atomics.
    private struct Entry {
        let fd: Int32
        let channel: NetDMAChannel
    }
    private struct Table {
        var entries: [Entry] = []
        var generation: UInt64 = 0
        var stopping = false
    }

    private let name: String
    private let wake: EventFD
    private let ack: EventFD
    private let table = Mutex(Table())
    private let acknowledged = Atomic<UInt64>(0)
    private let exited = Atomic<Bool>(false)
    /// Serialises add/remove/shutdown (they wait for the interrupt thread's acknowledgement).
    private let control = Mutex<Void>(())
    private let workers = Mutex<[Int: CompletionWorker]>([:])
    /// Threads of this dispatcher running now: the interrupt thread and its completion workers.
    let threads = ThreadCounter()
    private var thread: NativeThread?
    /// The registry, asked for each DPC's CPU (`NetDmaIsr`).
    private let dpcCPU: @Sendable (NetDMAChannel, InterruptReport) -> Int

    init(name: String, dpcCPU: @escaping @Sendable (NetDMAChannel, InterruptReport) -> Int) throws(DriverError) {
        self.name = name
        self.dpcCPU = dpcCPU
        wake = try EventFD()
        ack = try EventFD()
        thread = try NativeThread.spawn(name: "netdma-irq") { [self] in run() }
    }

    /// Starts waiting on `channel`'s eventfd, with a completion worker on its DPC CPU.
    ///
    /// - Throws: `.outOfMemory` when the worker thread cannot be created.
    func add(_ channel: NetDMAChannel, fd: Int32) throws(DriverError) {
        if workers.withLock({ $0[channel.cpu] }) == nil {
            let w = try CompletionWorker(cpu: channel.cpu, threads: threads)
            let extra: CompletionWorker? = workers.withLock { ws in
                if ws[channel.cpu] != nil { return w }
                ws[channel.cpu] = w
                return nil
            }
            extra?.shutdown()
        }
        control.withLock { _ in
            let g = table.withLock { t in
                t.entries.append(Entry(fd: fd, channel: channel))
                t.generation += 1
                return t.generation
            }
            waitForAcknowledgement(g)
        }
    }

    /// Stops waiting on `channel`'s eventfd. When this returns, the interrupt thread no longer
    /// touches the fd or calls the channel's ISR, so the provider may close it.
    func remove(_ channel: NetDMAChannel) {
        control.withLock { _ in
            let g = table.withLock { t in
                t.entries.removeAll { $0.channel === channel }
                t.generation += 1
                return t.generation
            }
            waitForAcknowledgement(g)
        }
    }

    /// Stops the interrupt thread and every completion worker (each finishes its queued DPCs).
    func shutdown() {
        control.withLock { _ in
            table.withLock { t in t.stopping = true }
            wake.signal()
            thread?.join()
            let all = workers.withLock { w in
                let all = Array(w.values)
                w.removeAll()
                return all
            }
            for w in all { w.shutdown() }
        }
    }

    private func waitForAcknowledgement(_ generation: UInt64) {
        wake.signal()
        while acknowledged.load(ordering: .acquiring) < generation && !exited.load(ordering: .acquiring) {
            _ = ack.wait(timeoutMilliseconds: 100)
        }
    }

    /// The interrupt thread: poll every channel's eventfd and the wake fd.
    private func run() {
        threads.count.add(1, ordering: .relaxed)
        defer { threads.count.subtract(1, ordering: .relaxed) }
        var seen = UInt64.max
        var fds: [pollfd] = []
        var entries: [Entry] = []
        while true {
            let t = table.withLock { $0 }
            if t.stopping {
                exited.store(true, ordering: .releasing)
                ack.signal()
                return
            }
            if t.generation != seen {
                seen = t.generation
                entries = t.entries
                fds = [pollfd(fd: wake.rawValue, events: Int16(POLLIN), revents: 0)]
                for e in entries { fds.append(pollfd(fd: e.fd, events: Int16(POLLIN), revents: 0)) }
                acknowledged.store(seen, ordering: .releasing)
                ack.signal()
            }
            for i in fds.indices { fds[i].revents = 0 }
            let r = poll(&fds, nfds_t(fds.count), -1)
            if r < 0 { continue }  // EINTR
            if fds[0].revents != 0 { _ = wake.consume() }
            for (i, e) in entries.enumerated() where fds[i + 1].revents & Int16(POLLIN) != 0 {
                var v: UInt64 = 0
                _ = read(e.fd, &v, 8)
                // The ISR: acknowledge and report (NetDmaIsr), then queue the DPC on the CPU the
                // interface names.
                let report = e.channel.serviceInterrupt()
                let cpu = dpcCPU(e.channel, report)
                // `add` made a worker for the channel's CPU; a DPC CPU the registry names
                // beyond those falls back to the channel's own worker.
                let w = workers.withLock { $0[cpu] ?? $0[e.channel.cpu] }
                w?.enqueue(e.channel, report)
            }
        }
    }
}

/// A thread pinned to one CPU that runs DPCs (NetDMA's DPC on CPU n).
final class CompletionWorker: @unchecked Sendable {
    // @unchecked: `thread` is set once in `init`; the queue is in a Mutex.
    private struct Item {
        let channel: NetDMAChannel
        let report: InterruptReport
    }
    private struct Queue {
        var items: [Item] = []
        var stopping = false
    }
    let cpu: Int
    private let wake: EventFD
    private let queue = Mutex(Queue())
    private var thread: NativeThread?
    private let threads: ThreadCounter

    init(cpu: Int, threads: ThreadCounter) throws(DriverError) {
        self.cpu = cpu
        self.threads = threads
        wake = try EventFD()
        thread = try NativeThread.spawn(name: "netdma-dpc\(cpu)") { [self] in run() }
    }

    func enqueue(_ channel: NetDMAChannel, _ report: InterruptReport) {
        queue.withLock { $0.items.append(Item(channel: channel, report: report)) }
        wake.signal()
    }

    func shutdown() {
        queue.withLock { $0.stopping = true }
        wake.signal()
        thread?.join()
    }

    private func run() {
        threads.count.add(1, ordering: .relaxed)
        defer { threads.count.subtract(1, ordering: .relaxed) }
        // If the CPU went offline the DPC still runs, unpinned; the channel reports its CPU.
        try? CPUAffinity.pinCurrentThread(to: [cpu])
        while true {
            let (items, stopping) = queue.withLock { q in
                let items = q.items
                q.items.removeAll(keepingCapacity: true)
                return (items, q.stopping)
            }
            for item in items { item.channel.runDPC(item.report) }
            if stopping {
                if items.isEmpty { return }
                continue
            }
            if items.isEmpty { _ = wake.wait(timeoutMilliseconds: -1) }
        }
    }
}
