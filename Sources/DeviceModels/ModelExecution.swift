/// How a device model's engine runs (``MockIOATDevice`` and ``MockDSADevice``).
public enum ModelExecution: Sendable, Hashable {
    /// On its own thread, at memcpy speed: it spins `Options.spinIterations` idle passes (with a
    /// pause), then sleeps on a futex until the next doorbell, portal write or command.
    case thread
    /// Only when the caller calls the model's `step()` or `runUntilIdle(maxSteps:)`, so that
    /// queue occupancy, drops and command waits are deterministic in tests.
    case manual
}

import CVFIO
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A model's engine thread: its pthread and its kernel thread ID (to pin it, or to read its CPU
/// time, as a benchmark does with DPDK's `dma_skel_0` worker).
struct ModelEngineThread {
    let thread: pthread_t
    let id: Int32

    /// What the new thread needs before it runs `main`; freed by the starter once the thread
    /// has published its ID (the thread no longer touches it then).
    private struct Start: ~Copyable {
        var main: @convention(c) (UnsafeMutableRawPointer?) -> UnsafeMutableRawPointer?
        var context: UnsafeMutableRawPointer
        let id = Atomic<Int32>(0)
    }

    /// Starts `main(context)` on a new thread and returns once it runs (`name` names the model
    /// in a failure).
    init(name: String, context: UnsafeMutableRawPointer,
         _ main: @escaping @convention(c) (UnsafeMutableRawPointer?) -> UnsafeMutableRawPointer?) {
        let start = UnsafeMutablePointer<Start>.allocate(capacity: 1)
        start.initialize(to: Start(main: main, context: context))
        var t = pthread_t()
        let r = pthread_create(&t, nil, { raw in
            let s = raw!.assumingMemoryBound(to: Start.self)
            let (main, context) = (s.pointee.main, s.pointee.context)
            s.pointee.id.store(Int32(cvfio_gettid()), ordering: .releasing)
            return main(context)
        }, start)
        precondition(r == 0, "\(name): cannot start the model's engine thread (pthread_create: \(r))")
        var id: Int32 = 0
        while true {
            id = start.pointee.id.load(ordering: .acquiring)
            if id != 0 { break }
            sched_yield()
        }
        start.deinitialize(count: 1)
        start.deallocate()
        thread = t
        self.id = id
    }
}
