// C++ field names in Status messages become job-spec paths, and a job-spec user gets the same
// message as an API user for the same mistake.
#include "launcher/field_names.h"

#include <gtest/gtest.h>

#include <string>

#include "absl/strings/cord.h"
#include "launcher/make_optimizer.h"
#include "launcher/spec.h"
#include "optim/adamw.h"
#include "optim/lion.h"
#include "optim/sgd.h"

namespace memtrain::launcher {
namespace {

std::string Mapped(const std::string& message) {
  return std::string(ToJobSpecNames(absl::InvalidArgumentError(message)).message());
}

TEST(FieldNamesTest, OptimizerAndModelFieldsBecomeSpecPaths) {
  EXPECT_EQ(Mapped("AdamWConfig::lr = -1: must be >= 0"), "optimizer.adamw.lr = -1: must be >= 0");
  EXPECT_EQ(Mapped("LionConfig::beta1 = 1"), "optimizer.lion.beta1 = 1");
  EXPECT_EQ(Mapped("LionConfig::direction = 3"), "optimizer.lion.k = 3");
  EXPECT_EQ(Mapped("LionConfig::bf16_momentum"), "optimizer.lion.momentum_dtype");
  EXPECT_EQ(Mapped("SgdConfig::nesterov = true: needs SgdConfig::momentum > 0"),
            "optimizer.sgd.nesterov = true: needs optimizer.sgd.momentum > 0");
  for (const char* f :
       {"max_seq_len", "vocab_size", "padded_vocab_size", "n_layer", "n_head", "n_embd"}) {
    EXPECT_EQ(Mapped(std::string("GPT2Config::") + f + " = 0"),
              std::string("model.gpt.") + f + " = 0");
  }
  // Several names, qualified names, punctuation around them.
  EXPECT_EQ(Mapped("GPT2Config::n_embd = 32 is not a multiple of GPT2Config::n_head = 3;"),
            "model.gpt.n_embd = 32 is not a multiple of model.gpt.n_head = 3;");
  EXPECT_EQ(Mapped("(optim::AdamWConfig::eps)"), "(optimizer.adamw.eps)");
  EXPECT_EQ(Mapped("memtrain::core::GPT2Config::vocab_size."), "model.gpt.vocab_size.");
}

TEST(FieldNamesTest, LeavesEverythingElseAlone) {
  for (const char* m : {"AdamWConfig::foo = 1", "AdamWConfig::lrx", "XAdamWConfig::lr",
                        "AdamWConfig:: lr", "lr = 1e-08: ok", "std::vector", "::", "a::", ""}) {
    EXPECT_EQ(Mapped(m), m);
  }
  EXPECT_TRUE(ToJobSpecNames(absl::OkStatus()).ok());
  // The code and payloads are kept.
  absl::Status s = absl::NotFoundError("SgdConfig::lr");
  s.SetPayload("memtrain/test", absl::Cord("x"));
  absl::Status m = ToJobSpecNames(s);
  EXPECT_EQ(m.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(m.message(), "optimizer.sgd.lr");
  ASSERT_TRUE(m.GetPayload("memtrain/test").has_value());
  EXPECT_EQ(*m.GetPayload("memtrain/test"), "x");
}

constexpr char kJob[] = R"pb(
  model { gpt { n_layer: 2 n_head: 2 n_embd: 32 vocab_size: 256 max_seq_len: 64 } }
  data { train_tokens: "t.bin" }
  train { steps: 10 batch_size: 2 seq_len: 16 }
)pb";

// The job spec's optimizer check is the optimizer's own: ValidateJob's message is Create's with
// the field names mapped.
TEST(FieldNamesTest, JobSpecAndApiGiveTheSameMessage) {
  struct Case {
    const char* set;
    absl::Status api;
  };
  auto model = core::GPT2::Create(
                   {.max_seq_len = 8, .vocab_size = 16, .n_layer = 1, .n_head = 2, .n_embd = 8})
                   .value();
  const Case cases[] = {
      {"optimizer.adamw.lr=-1", optim::AdamW::Create(model.get(), {.lr = -1}).status()},
      {"optimizer.lion.lr=0", optim::Lion::Create(model.get(), {.lr = 0}).status()},
      {"optimizer.adamw.beta2=1", optim::AdamW::Create(model.get(), {.beta2 = 1}).status()},
      {"optimizer.adamw.eps=0", optim::AdamW::Create(model.get(), {.eps = 0}).status()},
      {"optimizer.lion.beta1=-0.5", optim::Lion::Create(model.get(), {.beta1 = -0.5f}).status()},
      {"optimizer.lion.tau=0", optim::Lion::Create(model.get(), {.tau = 0}).status()},
      {"optimizer.lion.weight_decay=-1",
       optim::Lion::Create(model.get(), {.weight_decay = -1}).status()},
      {"optimizer.sgd.lr=-1", optim::Sgd::Create(model.get(), {.lr = -1}).status()},
      {"optimizer.sgd.momentum=1", optim::Sgd::Create(model.get(), {.momentum = 1}).status()},
      {"optimizer.sgd.nesterov=true", optim::Sgd::Create(model.get(), {.nesterov = true}).status()},
  };
  for (const Case& c : cases) {
    Job job = ParseJobText(kJob, "job").value();
    ASSERT_TRUE(ApplyOverride(&job, c.set).ok()) << c.set;
    FillDefaults(&job);
    const absl::Status spec = ValidateJob(job, 1);
    ASSERT_FALSE(c.api.ok()) << c.set;
    EXPECT_EQ(spec, ToJobSpecNames(c.api)) << c.set;
    // MakeOptimizer (no ValidateJob first) reports the same.
    EXPECT_EQ(MakeOptimizer(job.optimizer(), model.get()).status(), spec) << c.set;
  }
}

}  // namespace
}  // namespace memtrain::launcher
