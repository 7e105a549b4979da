// The attention every transformer block calls. LocalAttention runs the backend's kernel; a
// sequence-parallel wrapper (Ulysses) exchanges q/k/v with one all-to-all, calls the local
// attention over the full sequence for its share of the heads, and exchanges the output back.
// Prepare is where such a wrapper allocates its exchange buffers (through core::Tensor, so they
// count against the device's budget); the layer index on every call lets it keep per-layer
// tensors for backward. The shapes are the kernel's: qkv (B, T, 3C), out (B, T, C), lse
// (B, NH, T).
//
//   core::LocalAttention local;
//   model->set_attention(&my_wrapper);   // not owned; default is a LocalAttention
#ifndef MEMTRAIN_CORE_ATTENTION_H_
#define MEMTRAIN_CORE_ATTENTION_H_

#include <cstdint>

#include "absl/status/status.h"
#include "core/backend.h"
#include "core/model.h"

namespace memtrain::core {

// What the model prepares attention for.
struct AttentionShape {
  int64_t B = 0, T = 0, C = 0, NH = 0;
  int n_layer = 0;
  ModelMode mode = ModelMode::kTrain;
  Device device;
};

// One call: which layer, the shape, and where it runs.
struct AttentionCall {
  int layer = 0;
  int64_t B = 0, T = 0, C = 0, NH = 0;
  const ExecContext* ctx = nullptr;
};

class Attention {
 public:
  virtual ~Attention() = default;
  // Called by the model's Prepare; InvalidArgument if the shape cannot be served (e.g. more
  // sequence ranks than heads), ResourceExhausted past the memory budget.
  virtual absl::Status Prepare(const AttentionShape& shape) { return absl::OkStatus(); }
  virtual absl::Status Forward(const AttentionCall& call, float* out, float* lse,
                               const float* qkv) = 0;
  // dqkv written.
  virtual absl::Status Backward(const AttentionCall& call, float* dqkv, const float* dout,
                                const float* qkv, const float* out, const float* lse) = 0;
};

class LocalAttention : public Attention {
 public:
  absl::Status Forward(const AttentionCall& call, float* out, float* lse,
                       const float* qkv) override;
  absl::Status Backward(const AttentionCall& call, float* dqkv, const float* dout, const float* qkv,
                        const float* out, const float* lse) override;
};

}  // namespace memtrain::core

#endif  // MEMTRAIN_CORE_ATTENTION_H_
