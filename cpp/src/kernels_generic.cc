// The baseline (SSE2) kernel variant: runs on every x86-64 and on other architectures.
#include "kernel_arch.h"

#define FMR_ARCH generic
#define FMR_ARCH_NAME "generic"
#include "fmrecall/kernel_impl.h"
