// Flush-to-zero for the float32 CPU kernels (framework-free, so the tests can
// compile it alone).
//
// When the gradients of a forgetting network decay below float32's smallest
// normal number (~1.2e-38) the backward spends most of its time in the
// microcode assists that denormal operands and results take on x86: a 2-3x
// slowdown for a loss on the last state with nn.RNN's initialisation
// (docs/cpu.md). Each kernel thread therefore sets flush-to-zero and
// denormals-are-zero for the duration of its part of the call and restores
// its previous mode on the way out, also when unwinding; nothing outside the
// kernels sees the change. float64 keeps gradual underflow.
#pragma once

#include <cstdint>

#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#endif

namespace irnn_cuda {

// The calling thread's floating-point control word (MXCSR on x86, FPCR on
// AArch64; 0 elsewhere) and its flush-to-zero bits.
#if defined(__x86_64__) || defined(__i386__)
inline uint64_t fp_control_word() { return _mm_getcsr(); }
inline void set_fp_control_word(uint64_t w) {
  _mm_setcsr(static_cast<unsigned>(w));
}
constexpr uint64_t kFlushDenormalBits = 0x8040;  // FTZ (bit 15) | DAZ (bit 6)
#elif defined(__aarch64__)
inline uint64_t fp_control_word() {
  uint64_t w;
  __asm__ __volatile__("mrs %0, fpcr" : "=r"(w));
  return w;
}
inline void set_fp_control_word(uint64_t w) {
  __asm__ __volatile__("msr fpcr, %0" : : "r"(w));
}
constexpr uint64_t kFlushDenormalBits = uint64_t(1) << 24;  // FZ
#else
inline uint64_t fp_control_word() { return 0; }
inline void set_fp_control_word(uint64_t) {}
constexpr uint64_t kFlushDenormalBits = 0;
#endif

// Sets the flush-to-zero bits of the calling thread while it lives (when
// `enable`), then restores the control word it found.
class FlushDenormalsGuard {
 public:
  explicit FlushDenormalsGuard(bool enable)
      : enabled_(enable), saved_(enable ? fp_control_word() : 0) {
    if (enabled_) set_fp_control_word(saved_ | kFlushDenormalBits);
  }
  ~FlushDenormalsGuard() {
    if (enabled_) set_fp_control_word(saved_);
  }
  FlushDenormalsGuard(const FlushDenormalsGuard&) = delete;
  FlushDenormalsGuard& operator=(const FlushDenormalsGuard&) = delete;

 private:
  bool enabled_;
  uint64_t saved_;
};

}  // namespace irnn_cuda
