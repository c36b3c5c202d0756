// A client needs one import: the engine facade brings the NetDMA interface (channels,
// descriptors, CopyQueue), DMA memory and CPU sets with it.
@_exported import NetDMA
@_exported import Platform
@_exported import enum Hardware.EngineFamily
