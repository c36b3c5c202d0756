import CNetDMA
import NetDMAEngines
import Synchronization

/// What a `netdma_engines *` points at: an ``EngineSet`` and what the C side allocated from it.
final class CEngines: CHandle, @unchecked Sendable {
    // @unchecked: `headline` is written once in init and freed in deinit; the rest is in Mutexes.

    let set: EngineSet
    /// The headline as a C string (netdma_headline), owned by this object.
    let headline: UnsafeMutablePointer<CChar>

    struct Resources {
        /// DMA buffers from netdma_mem_alloc, by CPU address.
        var buffers: [UInt: BufferBox] = [:]
        /// Caller memory from netdma_mem_register: start address and length.
        var registrations: [(address: UInt, length: Int)] = []
        /// Channels allocated and not yet freed.
        var channels = 0
    }
    let resources = Mutex(Resources())
    let notifications = Mutex<ClientRegistration?>(nil)

    init(_ set: EngineSet) {
        self.set = set
        let utf8 = Array(set.headline.utf8CString)
        headline = .allocate(capacity: utf8.count)
        headline.initialize(from: utf8, count: utf8.count)
    }

    deinit {
        headline.deallocate()
    }

    /// The index of the engine whose provider is `handle`.
    func engineIndex(_ handle: ProviderHandle) -> Int? {
        set.engines.firstIndex { $0.handle == handle }
    }

    /// Engine `index`, or the error for an index out of range.
    func engine(_ index: UInt32, _ function: StaticString) -> Result<Engine, DriverError> {
        guard Int(index) < set.engines.count else {
            return .failure(DriverError(.invalidArgument,
                "\(function): engine \(index) does not exist; the set has \(set.engines.count) (0 to netdma_engine_count() - 1)."))
        }
        return .success(set.engines[Int(index)])
    }
}

/// Owns a DMA buffer (``DMABuffer`` is non-copyable) in a dictionary.
final class BufferBox: Sendable {
    let buffer: DMABuffer
    init(_ buffer: consuming DMABuffer) { self.buffer = buffer }
}

// MARK: - opening

extension netdma_open_params {
    /// NETDMA_OPEN_PARAMS_INIT.
    static var defaults: netdma_open_params {
        netdma_open_params(size: UInt32(MemoryLayout<netdma_open_params>.size), source: NETDMA_SOURCE_AUTO,
                           addresses: nil, address_count: 0, model: nil, profile: nil, flags: 0,
                           netdma_version: 0, dsa_work_queues: 0, model_idle_spins: 0)
    }

    /// What to open, as ``EngineSelection`` says it.
    func selection() throws(DriverError) -> EngineSelection {
        guard flags & ~(NETDMA_OPEN_IOVA_VA | NETDMA_OPEN_NO_INTERRUPTS) == 0 else {
            throw DriverError(.invalidArgument,
                "netdma_open: flags 0x\(String(flags, radix: 16)) has bits netdma.h does not define; use NETDMA_OPEN_* flags.")
        }
        var parsed: [PCIAddress] = []
        if address_count > 0 {
            guard let addresses else {
                throw DriverError(.invalidArgument, "netdma_open: address_count is \(address_count) but addresses is NULL.")
            }
            for i in 0..<address_count {
                guard let p = addresses[i] else {
                    throw DriverError(.invalidArgument, "netdma_open: addresses[\(i)] is NULL.")
                }
                let text = String(cString: p)
                guard let a = PCIAddress(text) else {
                    throw DriverError(.invalidArgument,
                        "netdma_open: '\(text)' is not a PCI address; write it as 0000:00:04.0 (`netdma list` shows the engines).")
                }
                parsed.append(a)
            }
        }
        let model = try modelConfiguration()
        switch source {
        case NETDMA_SOURCE_MODEL:
            guard parsed.isEmpty else {
                throw DriverError(.invalidArgument, "netdma_open: NETDMA_SOURCE_MODEL opens the model; give no PCI addresses with it.")
            }
            return .model(model, because: "NETDMA_SOURCE_MODEL asked for it")
        case NETDMA_SOURCE_AUTO:
            return try EngineSelection.resolve(addresses: parsed) { $0 = model }
        case NETDMA_SOURCE_VFIO:
            let s = try EngineSelection.resolve(addresses: parsed)
            guard !s.usesModel else {
                throw DriverError(.notFound,
                    "netdma_open: NETDMA_SOURCE_VFIO found no engine bound to vfio-pci. \(s.headline) Bind one with `sudo netdma bind <BDF>`, or open the model with NETDMA_SOURCE_MODEL.")
            }
            return s
        default:
            throw DriverError(.invalidArgument,
                "netdma_open: source \(source) is not NETDMA_SOURCE_AUTO (0), NETDMA_SOURCE_VFIO (1) or NETDMA_SOURCE_MODEL (2).")
        }
    }

    /// The model these parameters describe (used when the selection is the model).
    func modelConfiguration() throws(DriverError) -> ModelConfiguration {
        let profileName = profile.map { String(cString: $0) }
        let family: EngineFamily
        if let model {
            switch String(cString: model) {
            case "ioat", "cbdma": family = .ioat
            case "dsa": family = .dsa
            case let other:
                throw DriverError(.invalidArgument, "netdma_open: model '\(other)' is not a model family; use \"ioat\" (CBDMA) or \"dsa\".")
            }
        } else {
            family = profileName.flatMap(ModelConfiguration.family(ofProfile:)) ?? .ioat
        }
        var m = ModelConfiguration(family, profile: profileName)
        try m.validate()
        if netdma_version != 0 { m.version = NetDMAVersion(encoded: netdma_version) }
        if flags & NETDMA_OPEN_IOVA_VA != 0 { m.addressing = .identity }
        if flags & NETDMA_OPEN_NO_INTERRUPTS != 0 { m.interrupts = false }
        if dsa_work_queues != 0 {
            guard family == .dsa else {
                throw DriverError(.invalidArgument, "netdma_open: dsa_work_queues is for the DSA model; leave it 0 for \(family.rawValue).")
            }
            m.dsa.workQueues = Int(dsa_work_queues)
        }
        if model_idle_spins != 0 {
            m.ioat.spinIterations = Int(model_idle_spins)
            m.dsaModel.spinIterations = Int(model_idle_spins)
            m.dsa.pollerSpins = Int(model_idle_spins)
        }
        return m
    }
}

@c @implementation
public func netdma_open(_ params: UnsafePointer<netdma_open_params>?, _ out: UnsafeMutablePointer<OpaquePointer?>?) -> Int32 {
    guard let out else { return null("netdma_open", "out") }
    out.pointee = nil
    var p = netdma_open_params.defaults
    if let params {
        guard params.pointee.size >= p.size else {
            return fail(NETDMA_EINVAL,
                "netdma_open: params->size is \(params.pointee.size); set it to sizeof(netdma_open_params) = \(p.size) (NETDMA_OPEN_PARAMS_INIT does).")
        }
        p = params.pointee
    }
    do throws(DriverError) {
        let set = try EngineSet.open(try p.selection())
        out.pointee = CEngines(set).retainedHandle
        return 0
    } catch {
        return fail(error)
    }
}

@c @implementation
public func netdma_close(_ engines: OpaquePointer?) -> Int32 {
    guard let engines else { return null("netdma_close", "engines") }
    if let e = CEngines.notLive(engines, "netdma_close", "engines", madeBy: "netdma_open") { return e }
    let e = Unmanaged<CEngines>.fromOpaque(UnsafeRawPointer(engines)).takeUnretainedValue()
    let channels = e.resources.withLock { $0.channels }
    guard channels == 0 else {
        return fail(NETDMA_EBUSY,
            "netdma_close: \(channels) channel\(channels == 1 ? " is" : "s are") still allocated; destroy their queues (netdma_queue_destroy) and free them (netdma_channel_free) first.")
    }
    var result: Int32 = 0
    do throws(DriverError) { try e.set.stop() } catch { result = fail(error) }
    if let r = e.notifications.withLock({ s in defer { s = nil }; return s }) { e.set.registry.removeClient(r) }
    let (buffers, registrations) = e.resources.withLock { r in
        defer { r.buffers = [:]; r.registrations = [] }
        return (r.buffers, r.registrations)
    }
    for r in registrations { try? e.set.memory.unregister(UnsafeMutableRawPointer(bitPattern: r.address)!) }
    _ = buffers  // the buffers are unmapped and freed here
    CEngines.release(engines)
    return result
}

@c @implementation
public func netdma_headline(_ engines: OpaquePointer?) -> UnsafePointer<CChar>? {
    guard let engines else { _ = null("netdma_headline", "engines"); return nil }
    if CEngines.notLive(engines, "netdma_headline", "engines", madeBy: "netdma_open") != nil { return nil }
    return CEngines.with(engines) { UnsafePointer($0.headline) }
}

@c @implementation
public func netdma_engine_count(_ engines: OpaquePointer?) -> Int32 {
    guard let engines else { return null("netdma_engine_count", "engines") }
    if let e = CEngines.notLive(engines, "netdma_engine_count", "engines", madeBy: "netdma_open") { return e }
    return CEngines.with(engines) { Int32($0.set.engines.count) }
}

@c @implementation
public func netdma_engine_info_get(_ engines: OpaquePointer?, _ index: UInt32,
                                   _ info: UnsafeMutablePointer<netdma_engine_info>?) -> Int32 {
    guard let engines else { return null("netdma_engine_info_get", "engines") }
    if let e = CEngines.notLive(engines, "netdma_engine_info_get", "engines", madeBy: "netdma_open") { return e }
    guard let info else { return null("netdma_engine_info_get", "info") }
    return CEngines.with(engines) { e in
        let engine: Engine
        switch e.engine(index, "netdma_engine_info_get") {
        case .success(let x): engine = x
        case .failure(let error): return fail(error)
        }
        var i = netdma_engine_info()
        copyCString(engine.label, into: &i.label)
        copyCString(engine.info.generation, into: &i.generation)
        copyCString(engine.info.platform, into: &i.platform)
        copyCString(engine.info.name, into: &i.name)
        i.family = engine.family == .dsa ? NETDMA_FAMILY_DSA : NETDMA_FAMILY_IOAT
        i.netdma_version = engine.provider.characteristics.version.encoded
        i.channels = UInt32(engine.channelCount)
        i.free_channels = UInt32(max(0, engine.freeChannels))
        i.max_transfer_size = UInt64(engine.info.maximumTransferSize)
        i.numa_node = Int32(engine.numaNode ?? -1)
        i.flags = (engine.isModel ? NETDMA_ENGINE_MODEL : 0) | (engine.info.fill ? NETDMA_ENGINE_FILL : 0)
            | (engine.info.interrupts ? NETDMA_ENGINE_INTERRUPTS : 0)
        i.model_thread = engine.model?.engineThreadID ?? 0
        info.pointee = i
        return 0
    }
}

// MARK: - power and notifications

@c @implementation
public func netdma_engine_power_down(_ engines: OpaquePointer?, _ index: UInt32) -> Int32 {
    guard let engines else { return null("netdma_engine_power_down", "engines") }
    if let e = CEngines.notLive(engines, "netdma_engine_power_down", "engines", madeBy: "netdma_open") { return e }
    return CEngines.with(engines) { e in
        do throws(DriverError) {
            try e.engine(index, "netdma_engine_power_down").get().powerDown()
            return 0
        } catch {
            return fail(error)
        }
    }
}

@c @implementation
public func netdma_engine_power_up(_ engines: OpaquePointer?, _ index: UInt32) -> Int32 {
    guard let engines else { return null("netdma_engine_power_up", "engines") }
    if let e = CEngines.notLive(engines, "netdma_engine_power_up", "engines", madeBy: "netdma_open") { return e }
    return CEngines.with(engines) { e in
        do throws(DriverError) {
            try e.engine(index, "netdma_engine_power_up").get().powerUp()
            return 0
        } catch {
            return fail(error)
        }
    }
}

/// A C callback and its user pointer, called from whichever thread posts a notification.
struct NotificationTarget: @unchecked Sendable {
    // @unchecked: the pointer is the caller's; netdma.h makes it valid until replaced or closed.
    let function: @convention(c) (UnsafeMutableRawPointer?, Int32, UInt32) -> Void
    let user: UnsafeMutableRawPointer?
}

@c @implementation
public func netdma_set_notification_callback(_ engines: OpaquePointer?, _ fn: netdma_notify_fn?,
                                             _ user: UnsafeMutableRawPointer?) -> Int32 {
    guard let engines else { return null("netdma_set_notification_callback", "engines") }
    if let e = CEngines.notLive(engines, "netdma_set_notification_callback", "engines", madeBy: "netdma_open") { return e }
    return CEngines.with(engines) { e in
        var registration: ClientRegistration?
        if let fn {
            let target = NotificationTarget(function: fn, user: user)
            let indices = Dictionary(uniqueKeysWithValues: e.set.engines.enumerated().map { ($1.handle, UInt32($0)) })
            // Not under a lock: the registry calls back at once for the engines already started.
            registration = e.set.registry.addClient { n in
                guard let index = indices[n.provider] else { return }
                target.function(target.user, Int32(n.code.rawValue), index)
            }
        }
        let old = e.notifications.withLock { s in defer { s = registration }; return s }
        if let old { e.set.registry.removeClient(old) }
        return 0
    }
}
