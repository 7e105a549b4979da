// A complete custom training loop against memtrain's C++ API: build a GPT-2 (or load an llm.c
// checkpoint), read llm.c token files, train with AdamW, report validation loss, save a checkpoint.
//
//   train_gpt2 TRAIN.bin [VAL.bin] [--steps N] [--init CKPT.bin] [--out CKPT.bin]
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "core/data_loader.h"
#include "core/llmc.h"
#include "core/threads.h"
#include "optim/adamw.h"

using namespace memtrain;

int Fail(const absl::Status& s) {
  std::fprintf(stderr, "error: %s\n", s.ToString().c_str());
  return 2;
}

int main(int argc, char** argv) {
  std::vector<std::string> pos;
  std::string init, out;
  int steps = 50;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--steps" && i + 1 < argc)
      steps = std::stoi(argv[++i]);
    else if (a == "--init" && i + 1 < argc)
      init = argv[++i];
    else if (a == "--out" && i + 1 < argc)
      out = argv[++i];
    else
      pos.push_back(a);
  }
  if (pos.empty() || pos.size() > 2 || pos[0][0] == '-') {
    std::fprintf(stderr,
                 "usage: train_gpt2 TRAIN.bin [VAL.bin] [--steps N] [--init F] [--out F]\n");
    return 2;
  }
  const int B = 4, T = 128, threads = core::InitThreads();
  core::GPT2Config cfg{
      .max_seq_len = 256, .vocab_size = 256, .n_layer = 4, .n_head = 4, .n_embd = 256};

  // Model, data and optimizer; each step that can fail on user input returns a Status.
  auto model = init.empty() ? core::GPT2::Create(cfg) : core::LoadLlmcCheckpoint(init);
  if (!model.ok()) return Fail(model.status());
  if (init.empty()) (*model)->InitWeights(/*seed=*/1337);
  if (absl::Status s = (*model)->Prepare(B, T); !s.ok()) return Fail(s);
  auto train = core::TokenFile::Open(pos[0]);
  if (!train.ok()) return Fail(train.status());
  if (absl::Status s = train->CheckVocab((*model)->config().vocab_size); !s.ok()) return Fail(s);
  auto loader = core::DataLoader::Create(&*train, B, T);
  if (!loader.ok()) return Fail(loader.status());
  auto opt = optim::AdamW::Create(model->get(), {.weight_decay = 0.1f});
  if (!opt.ok()) return Fail(opt.status());
  std::printf("%s, %lld parameters, B=%d T=%d, %d threads\n", (*model)->config().ToString().c_str(),
              static_cast<long long>((*model)->num_parameters()), B, T, threads);

  core::Engine engine(model->get());
  std::vector<int32_t> inputs(B * T), targets(B * T);
  core::Batch batch{inputs.data(), targets.data(), B, T};
  float first = 0, last = 0;
  for (int step = 1; step <= steps; ++step) {
    auto t0 = std::chrono::steady_clock::now();
    loader->Next(inputs.data(), targets.data());
    absl::StatusOr<float> loss = engine.Forward(batch);
    if (!loss.ok()) return Fail(loss.status());
    engine.ZeroGrad();
    engine.Backward(batch);
    opt->Step(/*lr=*/1e-3f);
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (step == 1) first = *loss;
    last = *loss;
    std::printf("step %4d/%d  loss %.4f  %6.1f ms  %6.0f tok/s\n", step, steps, *loss, 1e3 * s,
                B * T / s);
  }
  if (pos.size() == 2) {  // mean loss over up to 16 validation batches
    auto val = core::TokenFile::Open(pos[1]);
    auto vl = val.ok() ? core::DataLoader::Create(&*val, B, T) : val.status();
    if (!vl.ok()) return Fail(vl.status());
    int n = static_cast<int>(std::min<int64_t>(16, (val->size() - 1) / (B * T)));
    double sum = 0;
    for (int i = 0; i < n; ++i) {
      vl->Next(inputs.data(), targets.data());
      sum += engine.Forward(batch).value();
    }
    std::printf("val loss %.4f over %d batches\n", sum / n, n);
  }
  if (!out.empty()) {
    if (absl::Status s = core::WriteLlmcCheckpoint(**model, out); !s.ok()) return Fail(s);
    std::printf("wrote %s\n", out.c_str());
  }
  std::printf(last < first ? "loss fell from %.4f to %.4f\n" : "loss did not fall: %.4f -> %.4f\n",
              first, last);
  return 0;
}
