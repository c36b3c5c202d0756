#ifndef CPCI_SHIM_H
#define CPCI_SHIM_H
#include <pci/pci.h>
/* pci_lookup_name is variadic, which Swift cannot call: one fixed-arity wrapper per use. */
static inline char *cpci_lookup_vendor_name(struct pci_access *a, char *buf, int size, unsigned short vendor) {
    return pci_lookup_name(a, buf, size, PCI_LOOKUP_VENDOR, vendor);
}
static inline char *cpci_lookup_device_name(struct pci_access *a, char *buf, int size,
                                            unsigned short vendor, unsigned short device) {
    return pci_lookup_name(a, buf, size, PCI_LOOKUP_DEVICE, vendor, device);
}
static inline char *cpci_lookup_class_name(struct pci_access *a, char *buf, int size, unsigned int cls) {
    return pci_lookup_name(a, buf, size, PCI_LOOKUP_CLASS, cls);
}
#endif
