/// How a device model's engine runs (``MockIOATDevice`` and ``MockDSADevice``).
public enum ModelExecution: Sendable, Hashable {
    /// On its own thread, at memcpy speed: it spins `Options.spinIterations` idle passes (with a
    /// pause), then sleeps on a futex until the next doorbell, portal write or command.
    case thread
    /// Only when the caller calls the model's `step()` or `runUntilIdle(maxSteps:)`, so that
    /// queue occupancy, drops and command waits are deterministic in tests.
    case manual
}
