#include "core/attention.h"

#include "core/kernels/cpu/ops.h"

namespace memtrain::core {

void LocalAttention::Forward(float* out, float* lse, const float* qkv, int64_t B, int64_t T,
                             int64_t C, int64_t NH) {
  cpu::AttentionForward(out, lse, qkv, B, T, C, NH);
}

void LocalAttention::Backward(float* dqkv, const float* dout, const float* qkv, const float* out,
                              const float* lse, int64_t B, int64_t T, int64_t C, int64_t NH) {
  cpu::AttentionBackward(dqkv, dout, qkv, out, lse, B, T, C, NH);
}

}  // namespace memtrain::core
