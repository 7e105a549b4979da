#include "core/attention.h"

namespace memtrain::core {

absl::Status LocalAttention::Forward(const AttentionCall& c, float* out, float* lse,
                                     const float* qkv) {
  BackendFor(c.ctx->device).AttentionForward(*c.ctx, out, lse, qkv, c.B, c.T, c.C, c.NH);
  return absl::OkStatus();
}

absl::Status LocalAttention::Backward(const AttentionCall& c, float* dqkv, const float* dout,
                                      const float* qkv, const float* out, const float* lse) {
  BackendFor(c.ctx->device)
      .AttentionBackward(*c.ctx, dqkv, dout, qkv, out, lse, c.B, c.T, c.C, c.NH);
  return absl::OkStatus();
}

}  // namespace memtrain::core
