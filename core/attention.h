// The attention interface the model calls. LocalAttention runs the CPU kernel; a sequence-parallel
// wrapper (Ulysses) exchanges q/k/v with one all-to-all, calls the local attention over the full
// sequence for its share of the heads, and exchanges the output back. The shapes are the
// kernel's: qkv (B, T, 3C), out (B, T, C), lse B*NH*T floats.
//
//   core::LocalAttention local;
//   model->set_attention(&my_wrapper);   // not owned; default is a LocalAttention
#ifndef MEMTRAIN_CORE_ATTENTION_H_
#define MEMTRAIN_CORE_ATTENTION_H_

#include <cstdint>

namespace memtrain::core {

class Attention {
 public:
  virtual ~Attention() = default;
  virtual void Forward(float* out, float* lse, const float* qkv, int64_t B, int64_t T, int64_t C,
                       int64_t NH) = 0;
  // dqkv written.
  virtual void Backward(float* dqkv, const float* dout, const float* qkv, const float* out,
                        const float* lse, int64_t B, int64_t T, int64_t C, int64_t NH) = 0;
};

class LocalAttention : public Attention {
 public:
  void Forward(float* out, float* lse, const float* qkv, int64_t B, int64_t T, int64_t C,
               int64_t NH) override;
  void Backward(float* dqkv, const float* dout, const float* qkv, const float* out,
                const float* lse, int64_t B, int64_t T, int64_t C, int64_t NH) override;
};

}  // namespace memtrain::core

#endif  // MEMTRAIN_CORE_ATTENTION_H_
