import NetDMAEngines

let dma = try EngineSet.open(.model(.ioat))         // or `try .resolve()`: the engines bound to vfio-pci
let queue = try CopyQueue(channel: try dma.allocateChannel())
let source = try dma.memory.allocate(length: 1 << 20), destination = try dma.memory.allocate(length: 1 << 20)
for i in 0..<source.length { source.bytes[i] = UInt8(truncatingIfNeeded: i &* 7 &+ 1) }
_ = try queue.enqueueCopy(source: source.iova, destination: destination.iova, length: 1 << 20)
try queue.submit()
var done = queue.completed(max: 1)
while done.count == 0 && !done.hadError { done = queue.completed(max: 1) }
precondition(!done.hadError && source.bytes.elementsEqual(destination.bytes), "the copy failed")
print("copied 1 MiB on \(dma.engines[0].label) and verified it")
dma.close()
