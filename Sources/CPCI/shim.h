#ifndef CPCI_SHIM_H
#define CPCI_SHIM_H
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
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

/* libpci's message hooks are variadic C function pointers, which Swift cannot create.
 * pci_alloc() leaves them NULL until pci_init(); name lookups without a bus scan need them. */
static inline void cpci_quiet(char *msg, ...) { (void)msg; }
static inline void cpci_fatal(char *msg, ...) {
    va_list ap;
    va_start(ap, msg);
    fputs("libpci: ", stderr);
    vfprintf(stderr, msg, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1); /* libpci requires the error hook not to return */
}
/** Sets quiet warning/debug hooks and a fatal error hook on an access from pci_alloc(). */
static inline void cpci_set_hooks(struct pci_access *a) {
    a->warning = cpci_quiet;
    a->debug = cpci_quiet;
    a->error = cpci_fatal;
}
#endif
