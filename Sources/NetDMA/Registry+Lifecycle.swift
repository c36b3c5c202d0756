import Platform

extension NetDMARegistry {
    /// Registers `provider` and starts it with `attributes`: `NetDmaRegisterProvider`, then
    /// `NetDmaProviderStart`, for a provider whose hardware is already up. The registration is
    /// undone when Start fails.
    ///
    /// - Throws: the error of ``register(_:)`` or ``start(_:attributes:)``.
    public func registerAndStart(_ provider: any NetDMAProvider,
                                 attributes: ProviderAttributes) throws(DriverError) -> ProviderHandle {
        let handle = try register(provider)
        do throws(DriverError) {
            try start(handle, attributes: attributes)
        } catch {
            try? deregister(handle)
            throw error
        }
        return handle
    }

    /// Stops `handle` (`NetDmaProviderStop`: drains and frees every channel) and deregisters it.
    ///
    /// - Returns: the channels that had to be aborted because they did not drain.
    @discardableResult
    public func stopAndDeregister(_ handle: ProviderHandle) throws(DriverError) -> [Int] {
        let aborted = try stop(handle)
        try deregister(handle)
        return aborted
    }
}
