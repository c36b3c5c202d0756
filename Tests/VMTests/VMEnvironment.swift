import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Whether this process runs inside the test VM booted by `Scripts/vm-test` (its init sets
/// `NETDMA_VM=1`). The VM tests are required there and skipped everywhere else.
enum VMEnvironment {
    static let isGuest: Bool = getenv("NETDMA_VM").map { String(cString: $0) == "1" } ?? false
}

@Suite("VM smoke", .enabled(if: VMEnvironment.isGuest, "needs the Scripts/vm-test guest (NETDMA_VM=1)"))
struct VMSmokeTests {
    @Test func vfioContainerDeviceExists() {
        #expect(access("/dev/vfio/vfio", F_OK) == 0)
    }
}
