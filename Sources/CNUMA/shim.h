#ifndef CNUMA_SHIM_H
#define CNUMA_SHIM_H
#include <numa.h>
#endif
