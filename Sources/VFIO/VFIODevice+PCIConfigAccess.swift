import Platform

/// A VFIO device's config region is the PCI configuration space providers use.
extension VFIODevice: PCIConfigAccess {}
