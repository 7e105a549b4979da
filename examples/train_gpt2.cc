// A complete custom training loop against memtrain's C++ API: build a GPT-2 (or load an llm.c
// checkpoint), read llm.c token files, train with AdamW, report validation loss, save a checkpoint.
//
//   train_gpt2 TRAIN.bin [VAL.bin] [--steps N] [--init CKPT.bin] [--out CKPT.bin]
#include <chrono>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "core/data_loader.h"
#include "core/evaluate.h"
#include "core/llmc.h"
#include "core/threads.h"
#include "optim/adamw.h"

using namespace memtrain;

int Fail(const absl::Status& s) {
  std::fprintf(stderr, "error: %s\n", s.ToString().c_str());
  return 2;
}

int main(int argc, char** argv) {
  std::vector<std::string> files;
  std::map<std::string, std::string> flags = {{"--steps", "50"}, {"--init", ""}, {"--out", ""}};
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (flags.count(arg) && i + 1 < argc)
      flags[arg] = argv[++i];
    else
      files.push_back(arg);
  }
  if (files.empty() || files.size() > 2 || files[0][0] == '-') {
    std::fprintf(stderr,
                 "usage: train_gpt2 TRAIN.bin [VAL.bin] [--steps N] [--init F] [--out F]\n");
    return 2;
  }
  const int B = 4, T = 128, steps = std::stoi(flags["--steps"]), threads = core::InitThreads();
  core::GPT2Config cfg{
      .max_seq_len = 256, .vocab_size = 256, .n_layer = 4, .n_head = 4, .n_embd = 256};

  // Model, data and optimizer: every call that can fail on user input returns a Status.
  const std::string& init = flags["--init"];
  auto model = init.empty() ? core::GPT2::Create(cfg) : core::LoadLlmcCheckpoint(init);
  if (!model.ok()) return Fail(model.status());
  if (init.empty()) (*model)->InitWeights(/*seed=*/1337);
  if (absl::Status s = (*model)->Prepare(B, T); !s.ok()) return Fail(s);
  auto train = core::TokenFile::Open(files[0]);
  if (!train.ok()) return Fail(train.status());
  if (absl::Status s = train->CheckVocab((*model)->config().vocab_size); !s.ok()) return Fail(s);
  auto loader = core::DataLoader::Create(&*train, B, T);
  if (!loader.ok()) return Fail(loader.status());
  auto opt = optim::AdamW::Create(model->get(), {.lr = 1e-3f, .weight_decay = 0.1f});
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
    if (absl::Status st = engine.Forward(batch); !st.ok()) return Fail(st);
    const float loss = engine.Loss();
    engine.ZeroGrad();
    if (absl::Status st = engine.Backward(batch); !st.ok()) return Fail(st);
    (*opt)->Step();  // with (*opt)->lr(); a schedule would call (*opt)->set_lr(...) first
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (step == 1) first = loss;
    last = loss;
    std::printf("step %4d/%d  loss %.4f  %6.1f ms  %6.0f tok/s\n", step, steps, loss, 1e3 * s,
                B * T / s);
  }
  if (files.size() == 2) {  // mean loss over up to 16 validation batches
    auto val = core::TokenFile::Open(files[1]);
    auto vl = val.ok() ? core::DataLoader::Create(&*val, B, T) : val.status();
    auto val_loss = vl.ok() ? core::EvaluateLoss(engine, *vl, 16) : vl.status();
    if (!val_loss.ok()) return Fail(val_loss.status());
    std::printf("val loss %.4f\n", *val_loss);
  }
  if (!flags["--out"].empty()) {
    if (absl::Status s = core::WriteLlmcCheckpoint(**model, flags["--out"]); !s.ok())
      return Fail(s);
    std::printf("wrote %s\n", flags["--out"].c_str());
  }
  std::printf(last < first ? "loss fell from %.4f to %.4f\n" : "loss did not fall: %.4f -> %.4f\n",
              first, last);
  return 0;
}
