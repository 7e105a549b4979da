// The model shapes the benchmark programs share, by the name their --shape flag takes.
#ifndef MEMTRAIN_BENCH_BENCH_SHAPES_H_
#define MEMTRAIN_BENCH_BENCH_SHAPES_H_

#include <string>

#include "core/model/gpt2.h"

namespace memtrain::bench {

// "small": 4 layers, C = 256, byte vocabulary; anything else: GPT-2 124M.
inline core::GPT2Config BenchShape(const std::string& name) {
  if (name == "small") {
    return {.max_seq_len = 256, .vocab_size = 256, .n_layer = 4, .n_head = 4, .n_embd = 256};
  }
  return {.max_seq_len = 1024, .vocab_size = 50257, .n_layer = 12, .n_head = 12, .n_embd = 768};
}

}  // namespace memtrain::bench

#endif  // MEMTRAIN_BENCH_BENCH_SHAPES_H_
