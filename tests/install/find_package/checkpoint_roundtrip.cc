// Against an installed memtrain, through memtrain::checkpoint alone (no MPI, no protobuf): train a
// tiny GPT-2 two steps, save a checkpoint, load it back, and check that the weights and optimizer
// state are the same (saved again, the files are byte-identical) and that both copies take the
// next step to the same loss.
//
//   checkpoint_roundtrip DIR      (DIR: an empty or missing folder)
#include <cstdio>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include "checkpoint/checkpoint.h"
#include "core/engine.h"
#include "core/model/gpt2.h"
#include "optim/adamw.h"

using namespace memtrain;

namespace {

int Fail(const std::string& what, const absl::Status& s = absl::OkStatus()) {
  std::fprintf(stderr, "FAIL: %s %s\n", what.c_str(), s.ok() ? "" : s.ToString().c_str());
  return 1;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

constexpr int B = 2, T = 8, V = 40;

struct Data {
  std::vector<int32_t> in = std::vector<int32_t>(B * T), tg = std::vector<int32_t>(B * T);
  Data() {
    for (int i = 0; i < B * T; ++i) in[i] = (i * 7) % V, tg[i] = (i * 3 + 1) % V;
  }
  core::Batch batch() const { return {in.data(), tg.data(), B, T}; }
};

// Forward, backward and one AdamW step; the loss of the forward.
absl::StatusOr<float> TrainStep(core::Engine& engine, optim::Optimizer& opt, const Data& d) {
  MT_RETURN_IF_ERROR(engine.Forward(d.batch()));
  const float loss = engine.Loss();
  engine.ZeroGrad();
  MT_RETURN_IF_ERROR(engine.Backward(d.batch()));
  opt.Step(/*lr=*/1e-2f);
  return loss;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) return Fail("usage: checkpoint_roundtrip DIR");
  const std::string dir = argv[1];
  const Data data;

  core::GPT2Config cfg{.max_seq_len = 16, .vocab_size = V, .n_layer = 2, .n_head = 2, .n_embd = 16};
  absl::StatusOr<std::unique_ptr<core::GPT2>> model = core::GPT2::Create(cfg);
  if (!model.ok()) return Fail("GPT2::Create", model.status());
  (*model)->InitWeights(/*seed=*/7);
  if (absl::Status s = (*model)->Prepare(B, T); !s.ok()) return Fail("Prepare", s);
  absl::StatusOr<std::unique_ptr<optim::AdamW>> opt =
      optim::AdamW::Create(model->get(), {.weight_decay = 0.1f});
  if (!opt.ok()) return Fail("AdamW::Create", opt.status());
  core::Engine engine(model->get());
  for (int step = 0; step < 2; ++step) {
    absl::StatusOr<float> loss = TrainStep(engine, **opt, data);
    if (!loss.ok()) return Fail("train step", loss.status());
    std::printf("step %d loss %.6f\n", step + 1, *loss);
  }

  const checkpoint::TrainState state{.step = 2, .batches_consumed = 2, .job_text = "install test"};
  if (absl::Status s = checkpoint::SaveCheckpoint(dir + "/a", 2, state, **model, **opt); !s.ok()) {
    return Fail("SaveCheckpoint", s);
  }
  absl::StatusOr<std::string> folder = checkpoint::LatestCheckpoint(dir + "/a");
  if (!folder.ok()) return Fail("LatestCheckpoint", folder.status());
  absl::StatusOr<checkpoint::LoadedCheckpoint> loaded = checkpoint::LoadCheckpoint(*folder);
  if (!loaded.ok()) return Fail("LoadCheckpoint", loaded.status());
  if (loaded->state.step != 2 || loaded->state.batches_consumed != 2 ||
      loaded->state.job_text != "install test") {
    return Fail("the loaded TrainState differs from the saved one");
  }
  core::GPT2& copy = *loaded->model;
  if (absl::Status s = copy.Prepare(B, T); !s.ok()) return Fail("Prepare (loaded)", s);
  absl::StatusOr<std::unique_ptr<optim::AdamW>> opt2 =
      optim::AdamW::Create(&copy, {.weight_decay = 0.1f});
  if (!opt2.ok()) return Fail("AdamW::Create (loaded)", opt2.status());
  if (absl::Status s = checkpoint::RestoreOptimizer(*loaded, copy, opt2->get()); !s.ok()) {
    return Fail("RestoreOptimizer", s);
  }

  // The same weights and optimizer state: saved again, the files are byte for byte the same.
  if (absl::Status s = checkpoint::SaveCheckpoint(dir + "/b", 2, state, copy, **opt2); !s.ok()) {
    return Fail("SaveCheckpoint (loaded)", s);
  }
  for (const char* f : {"model.safetensors", "optimizer.safetensors"}) {
    const std::string a = ReadFile(dir + "/a/step_00000002/" + f);
    const std::string b = ReadFile(dir + "/b/step_00000002/" + f);
    if (a.empty() || a != b) return Fail(std::string(f) + " differs after the round trip");
  }

  // And the same next step.
  core::Engine engine2(&copy);
  absl::StatusOr<float> l1 = TrainStep(engine, **opt, data);
  absl::StatusOr<float> l2 = TrainStep(engine2, **opt2, data);
  if (!l1.ok() || !l2.ok()) return Fail("step 3", l1.ok() ? l2.status() : l1.status());
  if (*l1 != *l2)
    return Fail("step 3 loss differs: " + std::to_string(*l1) + " vs " + std::to_string(*l2));
  std::printf("step 3 loss %.6f from the original and from the checkpoint\n", *l1);
  std::printf("checkpoint round trip OK\n");
  return 0;
}
