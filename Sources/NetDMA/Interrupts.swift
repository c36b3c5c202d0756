import CVFIO
import Platform
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Counts the live threads of one provider's interrupt machinery.
final class ThreadCounter: Sendable {
    let count = Atomic<Int>(0)
}

/// A joinable POSIX thread running a Swift closure: the interrupt threads. (No Foundation in
/// this package.)
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

/// One provider's interrupt machinery: for each DPC CPU, one thread pinned to that CPU that
/// waits (one epoll set) on the eventfds of every channel whose interrupt is steered there, runs
/// the ISR and then, because the interface names that same CPU for the DPC, the DPC right
/// away on the same thread (what Windows does with a DPC queued to the current processor).
///
/// NetDMA flow (netdma.md §7.2): the ISR acknowledges the interrupt (``ProviderChannel/serviceInterrupt()``)
/// and asks the interface for the DPC CPU (`NetDmaIsr`); the DPC runs on that CPU, re-arms the
/// interrupt and calls the interface's completion processing (`NetDmaInterruptDpc`). A DPC
/// for another CPU is queued to that CPU's thread (made for one of the provider's channels);
/// when the provider has none there, it runs on the channel's own CPU thread.
///
/// An interrupt thus costs one thread wake-up (the engine's eventfd write wakes the thread on
/// the DPC CPU), where a separate interrupt thread and DPC worker cost two.
final class InterruptDispatcher: @unchecked Sendable {
    // @unchecked: `cpus` and `stopped` are guarded by `control`; the per-CPU threads are
    // thread-safe.
    private let control = Mutex<Void>(())
    private var cpus: [Int: InterruptCPU] = [:]
    /// Read by the interrupt threads to route a DPC to another CPU (rare).
    private let routes = Mutex<[Int: InterruptCPU]>([:])
    private var stopped = false
    /// Threads of this dispatcher running now (one per DPC CPU in use).
    let threads = ThreadCounter()
    /// The registry, asked for each DPC's CPU (`NetDmaIsr`).
    private let dpcCPU: @Sendable (NetDMAChannel, InterruptReport) -> Int

    init(dpcCPU: @escaping @Sendable (NetDMAChannel, InterruptReport) -> Int) {
        self.dpcCPU = dpcCPU
    }

    /// Starts waiting on `channel`'s eventfd on the thread of its DPC CPU (made on first use).
    ///
    /// - Throws: `.outOfMemory` when the thread or its epoll set cannot be created.
    func add(_ channel: NetDMAChannel, fd: Int32) throws(DriverError) {
        try control.withLock { _ throws(DriverError) in
            guard !stopped else {
                throw DriverError(.invalidState, "The provider's interrupt machinery is stopped; start the provider again.")
            }
            let t: InterruptCPU
            if let existing = cpus[channel.cpu] {
                t = existing
            } else {
                t = try InterruptCPU(cpu: channel.cpu, threads: threads, dpcCPU: dpcCPU) { [unowned self] cpu in
                    self.routes.withLock { $0[cpu] }
                }
                cpus[channel.cpu] = t
                routes.withLock { $0[channel.cpu] = t }
            }
            try t.add(channel, fd: fd)
        }
    }

    /// Stops waiting on `channel`'s eventfd. When this returns, no interrupt thread touches the
    /// fd or calls the channel's ISR any more, so the provider may close it.
    func remove(_ channel: NetDMAChannel) {
        control.withLock { _ in cpus[channel.cpu]?.remove(channel) }
    }

    /// Stops every interrupt thread (each runs the DPCs queued to it first).
    func shutdown() {
        control.withLock { _ in
            stopped = true
            routes.withLock { $0.removeAll() }
            for t in cpus.values { t.shutdown() }
            cpus.removeAll()
        }
    }
}

/// The interrupt thread of one DPC CPU: pinned to it, waiting on one epoll set that holds the
/// eventfds of the channels whose DPC runs there and a wake eventfd (table changes, DPCs other
/// CPUs queue here, shutdown).
final class InterruptCPU: @unchecked Sendable {
    // @unchecked: `thread` is set once in `init`; the table and queue are in Mutexes, the
    // rest is atomic or immutable.
    private struct Entry {
        let token: UInt64
        let fd: Int32
        let channel: NetDMAChannel
    }
    private struct Table {
        var entries: [Entry] = []
        var nextToken: UInt64 = 1
        var stopping = false
    }
    private struct Item {
        let channel: NetDMAChannel
        let report: InterruptReport
    }

    let cpu: Int
    private let epoll: Int32
    private let wake: EventFD
    private let ack: EventFD
    private let table = Mutex(Table())
    /// Bumped (under the table's lock) at every table change; the thread re-reads the table
    /// when it moved.
    private let generation = Atomic<UInt64>(0)
    private let acknowledged = Atomic<UInt64>(0)
    private let exited = Atomic<Bool>(false)
    private let queue = Mutex<[Item]>([])
    private let queued = Atomic<Bool>(false)
    private let threads: ThreadCounter
    private let dpcCPU: @Sendable (NetDMAChannel, InterruptReport) -> Int
    private let route: @Sendable (Int) -> InterruptCPU?
    private var thread: NativeThread?

    /// The token of the wake eventfd in the epoll set.
    private static let wakeToken: UInt64 = 0
    /// The SCHED_FIFO priority of the interrupt threads: the lowest real-time one.
    static let realtimePriority: Int32 = 1
    /// Tokens one `epoll_wait` returns at most.
    private static let batch: Int32 = 16

    init(cpu: Int, threads: ThreadCounter, dpcCPU: @escaping @Sendable (NetDMAChannel, InterruptReport) -> Int,
         route: @escaping @Sendable (Int) -> InterruptCPU?) throws(DriverError) {
        self.cpu = cpu
        self.threads = threads
        self.dpcCPU = dpcCPU
        self.route = route
        let ep = cvfio_epoll_create()
        guard ep >= 0 else { throw Self.epollError("create the epoll set of", cpu: cpu, errno: -ep) }
        epoll = ep
        do {
            wake = try EventFD()
            ack = try EventFD()
        } catch {
            close(ep)
            throw error
        }
        let r = cvfio_epoll_add(ep, wake.rawValue, Self.wakeToken)
        guard r == 0 else {
            close(ep)
            throw Self.epollError("add the wake eventfd to", cpu: cpu, errno: -r)
        }
        do {
            thread = try NativeThread.spawn(name: "netdma-irq\(cpu)") { [self] in run() }
        } catch {
            close(ep)
            throw error
        }
    }

    deinit { close(epoll) }

    /// Adds `channel`'s eventfd. The table changes first, then the fd joins the epoll set: an
    /// interrupt already pending is reported at once and finds its entry.
    func add(_ channel: NetDMAChannel, fd: Int32) throws(DriverError) {
        let token = table.withLock { t in
            let token = t.nextToken
            t.nextToken += 1
            t.entries.append(Entry(token: token, fd: fd, channel: channel))
            generation.add(1, ordering: .releasing)
            return token
        }
        let r = cvfio_epoll_add(epoll, fd, token)
        if r != 0 {
            table.withLock { t in
                t.entries.removeAll { $0.token == token }
                generation.add(1, ordering: .releasing)
            }
            throw Self.epollError("add channel \(channel.index)'s eventfd to", cpu: cpu, errno: -r)
        }
    }

    private static func epollError(_ what: String, cpu: Int, errno: Int32) -> DriverError {
        DriverError(errno == ENOMEM || errno == ENOSPC ? .outOfMemory : .systemCallFailed,
                    "Cannot \(what) the interrupt thread of CPU \(cpu) (errno \(errno)); raise the open-file limit (`ulimit -n`) or fs.epoll.max_user_watches.")
    }

    /// Removes `channel`'s eventfd and waits until the thread has dropped its entry.
    func remove(_ channel: NetDMAChannel) {
        let (fds, g): ([Int32], UInt64) = table.withLock { t in
            let fds = t.entries.filter { $0.channel === channel }.map(\.fd)
            t.entries.removeAll { $0.channel === channel }
            return (fds, generation.add(1, ordering: .releasing).newValue)
        }
        for fd in fds { _ = cvfio_epoll_remove(epoll, fd) }
        waitForAcknowledgement(g)
    }

    /// Queues a DPC another CPU's ISR asked for on this CPU.
    func enqueue(_ channel: NetDMAChannel, _ report: InterruptReport) {
        queue.withLock { $0.append(Item(channel: channel, report: report)) }
        queued.store(true, ordering: .releasing)
        wake.signal()
    }

    /// Stops the thread (after the DPCs queued to it) and joins it.
    func shutdown() {
        table.withLock { t in
            t.stopping = true
            generation.add(1, ordering: .releasing)
        }
        wake.signal()
        thread?.join()
    }

    private func waitForAcknowledgement(_ g: UInt64) {
        wake.signal()
        while acknowledged.load(ordering: .acquiring) < g && !exited.load(ordering: .acquiring) {
            _ = ack.wait(timeoutMilliseconds: 100)
        }
    }

    private func run() {
        threads.count.add(1, ordering: .relaxed)
        defer { threads.count.subtract(1, ordering: .relaxed) }
        // If the CPU went offline the DPCs still run here, unpinned; the channel reports its CPU.
        try? CPUAffinity.pinCurrentThread(to: [cpu])
        // Like Linux's threaded interrupt handlers (and NetDMA's ISR and DPC, which run above
        // every thread): a real-time priority, so that the DPC does not wait for a busy
        // thread's time slice on its CPU. Without the privilege (CAP_SYS_NICE or
        // RLIMIT_RTPRIO) the thread keeps its normal priority.
        var param = sched_param(sched_priority: Self.realtimePriority)
        _ = pthread_setschedparam(pthread_self(), SCHED_FIFO, &param)
        let tokens = UnsafeMutablePointer<UInt64>.allocate(capacity: Int(Self.batch))
        defer { tokens.deallocate() }
        var seen = UInt64.max
        var entries: [Entry] = []
        var stopping = false
        while true {
            // Re-read the table when it changed; the acknowledgement tells `remove` that no
            // entry it dropped is used from here on (every use goes through `entries`).
            let g = generation.load(ordering: .acquiring)
            if g != seen {
                (entries, stopping) = table.withLock { t in (t.entries, t.stopping) }
                seen = g
                acknowledged.store(g, ordering: .releasing)
                ack.signal()
            }
            if queued.load(ordering: .acquiring) { runQueued() }
            if stopping {
                runQueued()
                exited.store(true, ordering: .releasing)
                ack.signal()
                return
            }
            let n = cvfio_epoll_wait(epoll, tokens, Self.batch, -1)
            guard n > 0 else { continue }  // EINTR
            if generation.load(ordering: .acquiring) != seen {
                // A channel added since: its pending interrupt may be in this batch.
                let t = table.withLock { t in (t.entries, t.stopping) }
                (entries, stopping) = t
                seen = generation.load(ordering: .acquiring)
                acknowledged.store(seen, ordering: .releasing)
                ack.signal()
            }
            for i in 0..<Int(n) {
                let token = tokens[i]
                if token == Self.wakeToken {
                    _ = wake.consume()
                    continue
                }
                guard let e = entries.first(where: { $0.token == token }) else { continue }
                var v: UInt64 = 0
                _ = read(e.fd, &v, 8)
                // The ISR: acknowledge and report (NetDmaIsr), then the DPC on the CPU the
                // interface names: here and now when it is this thread's CPU.
                let report = e.channel.serviceInterrupt(signals: v)
                guard report.queuesDPC else { continue }  // the provider's own interrupt
                let target = dpcCPU(e.channel, report)
                if target != cpu, let other = route(target) {
                    other.enqueue(e.channel, report)
                } else {
                    e.channel.runDPC(report)
                }
            }
        }
    }

    private func runQueued() {
        queued.store(false, ordering: .releasing)
        let items = queue.withLock { q in
            let items = q
            q.removeAll(keepingCapacity: true)
            return items
        }
        for item in items { item.channel.runDPC(item.report) }
    }
}
