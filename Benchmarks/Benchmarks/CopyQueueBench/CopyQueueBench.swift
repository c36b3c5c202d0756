import Benchmark
import BenchRig
import NetDMA

let benchmarks: @Sendable () -> Void = {}
