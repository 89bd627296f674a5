// Run-time choice of the kernel variant (wheels run on any x86-64; -march=native is opt-in).
#include <cstdlib>
#include <cstring>

#include "fmrecall/kernel.h"

namespace fmrecall {

namespace {
int cpu_level() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx512bw"))
    return 2;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return 1;
#endif
  return 0;
}

int chosen_level() {
  int level = cpu_level();
  if (const char* env = std::getenv("FMRECALL_ARCH")) {
    int want = level;
    if (!std::strcmp(env, "generic"))
      want = 0;
    else if (!std::strcmp(env, "avx2"))
      want = 1;
    else if (!std::strcmp(env, "avx512"))
      want = 2;
    if (want < level) level = want;  // never above what the CPU supports
  }
  return level;
}
}  // namespace

const char* best_arch() {
  static const char* names[] = {"generic", "avx2", "avx512"};
  return names[chosen_level()];
}

KernelFns select_kernels(int32_t kp) {
#if defined(FMRECALL_X86)
  switch (chosen_level()) {
    case 2: return avx512::kernels(kp);
    case 1: return avx2::kernels(kp);
    default: break;
  }
#endif
  return generic::kernels(kp);
}

}  // namespace fmrecall
