// Job specs: parse errors with file:line:column, --set overrides, defaults made explicit, and
// semantic errors naming the field path.
#include "launcher/spec.h"

#include <gtest/gtest.h>

namespace memtrain::launcher {
namespace {

constexpr char kGood[] = R"(
model { gpt { n_layer: 2 n_head: 2 n_embd: 32 vocab_size: 256 max_seq_len: 64 } }
data { train_tokens: "t.bin" }
train { steps: 20 batch_size: 2 seq_len: 32 }
optimizer { adamw { lr: 1e-3 } }
parallel { data: 2 }
)";

Job Filled(const std::string& text) {
  Job job = ParseJobText(text, "job.pbtxt").value();
  FillDefaults(&job);
  return job;
}

TEST(SpecTest, ParseErrorsGiveFileLineColumn) {
  auto r = ParseJobText("train {\n  steps: 10\n  stepz: 3\n}\n", "job.pbtxt");
  ASSERT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("job.pbtxt:3:8:"), std::string::npos) << r.status();
  EXPECT_NE(r.status().message().find("stepz"), std::string::npos);
  auto wrong_type = ParseJobText("train { steps: \"ten\" }", "j.pbtxt");
  EXPECT_NE(wrong_type.status().message().find("j.pbtxt:1:16:"), std::string::npos)
      << wrong_type.status();
  EXPECT_EQ(ParseJobFile("/nonexistent/job.pbtxt").status().code(), absl::StatusCode::kNotFound);
}

TEST(SpecTest, DefaultsBecomeExplicit) {
  Job job = Filled(kGood);
  EXPECT_TRUE(job.train().has_grad_accum());
  EXPECT_EQ(job.train().grad_accum(), 1);
  EXPECT_TRUE(job.optimizer().adamw().has_beta2());
  EXPECT_FLOAT_EQ(job.optimizer().adamw().beta2(), 0.999f);
  EXPECT_TRUE(job.schedule().has_decay());
  EXPECT_NE(JobToText(job).find("grad_accum: 1"), std::string::npos);
  // No optimizer given: AdamW with its defaults.
  Job bare = Filled("data { train_tokens: \"t.bin\" }");
  EXPECT_TRUE(bare.optimizer().has_adamw());
  EXPECT_TRUE(bare.model().has_gpt());
  EXPECT_TRUE(ValidateJob(bare, 1).ok());
}

TEST(SpecTest, OverridesSetNestedFieldsAndNameUnknownOnes) {
  Job job = ParseJobText(kGood, "job").value();
  ASSERT_TRUE(ApplyOverride(&job, "train.steps=7").ok());
  ASSERT_TRUE(ApplyOverride(&job, "optimizer.adamw.lr=2e-4").ok());
  ASSERT_TRUE(ApplyOverride(&job, "data.val_tokens=v.bin").ok());
  ASSERT_TRUE(ApplyOverride(&job, "schedule.decay=COSINE").ok());
  EXPECT_EQ(job.train().steps(), 7);
  EXPECT_FLOAT_EQ(job.optimizer().adamw().lr(), 2e-4f);
  EXPECT_EQ(job.data().val_tokens(), "v.bin");
  EXPECT_EQ(job.schedule().decay(), Schedule::COSINE);
  absl::Status s = ApplyOverride(&job, "train.stepz=3");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("stepz"), std::string::npos);
  EXPECT_NE(s.message().find("steps"), std::string::npos);  // lists the known fields
  EXPECT_FALSE(ApplyOverride(&job, "train.steps=ten").ok());
  EXPECT_FALSE(ApplyOverride(&job, "train.steps").ok());
}

TEST(SpecTest, SemanticErrorsNameTheFieldAndTheFix) {
  struct Case {
    const char* set;
    int world;
    const char* expect;
  };
  const Case cases[] = {
      {"train.steps=10", 3, "= 2 but the job was started with 3 ranks"},
      {"optimizer.adamw.lr=0", 2, "optimizer.adamw.lr = 0: must be > 0"},
      {"optimizer.adamw.beta1=1", 2, "optimizer.adamw.beta1 = 1: must be in [0, 1)"},
      {"optimizer.adamw.weight_decay=-0.1", 2, "optimizer.adamw.weight_decay"},
      {"train.batch_size=0", 2, "train.batch_size = 0: must be >= 1"},
      {"train.seq_len=65", 2, "train.seq_len = 65: exceeds model.gpt.max_seq_len = 64"},
      {"model.gpt.n_head=3", 2, "model.gpt.n_embd = 32 is not a multiple of model.gpt.n_head"},
      {"parallel.sequence=4", 8,
       "parallel.sequence = 4 is more than the model's 2 attention heads"},
      {"data.train_tokens=", 2, "data.train_tokens"},
      {"schedule.min_lr_ratio=2", 2, "schedule.min_lr_ratio = 2: must be in [0, 1]"},
      {"optimizer.lion.lr=0", 2, "optimizer.lion.lr = 0: must be > 0"},
      {"optimizer.lion.beta2=1", 2, "optimizer.lion.beta2 = 1: must be in [0, 1)"},
      {"optimizer.lion.beta1=-0.1", 2, "optimizer.lion.beta1 = -0.1: must be in [0, 1)"},
      {"optimizer.lion.weight_decay=-1", 2, "optimizer.lion.weight_decay = -1: must be >= 0"},
      {"optimizer.lion.tau=0", 2, "optimizer.lion.tau = 0: must be > 0"},
      {"optimizer.sgd.lr=-1", 2, "optimizer.sgd.lr = -1: must be > 0"},
      {"optimizer.sgd.nesterov=true", 2, "Nesterov momentum needs momentum > 0"},
      {"optimizer.clip_grad_norm=-1", 2, "optimizer.clip_grad_norm = -1: must be >= 0"},
  };
  for (const Case& c : cases) {
    Job job = ParseJobText(kGood, "job").value();
    ASSERT_TRUE(ApplyOverride(&job, c.set).ok()) << c.set;
    FillDefaults(&job);
    absl::Status s = ValidateJob(job, c.world);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << c.set;
    EXPECT_NE(s.message().find(c.expect), std::string::npos) << c.set << " -> " << s;
  }
  EXPECT_TRUE(ValidateJob(Filled(kGood), 2).ok());
  // An unknown Lion-K direction is refused where it is written.
  Job job = ParseJobText(kGood, "job").value();
  absl::Status k = ApplyOverride(&job, "optimizer.lion.k=L2");
  EXPECT_EQ(k.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(k.message().find("optimizer.lion.k"), std::string::npos) << k;
  auto parsed = ParseJobText("optimizer { lion { k: CUBIC } }", "j.pbtxt");
  EXPECT_NE(parsed.status().message().find("j.pbtxt:1:"), std::string::npos) << parsed.status();
  EXPECT_NE(parsed.status().message().find("CUBIC"), std::string::npos);
  // Setting a Lion field switches the optimizer from AdamW to Lion.
  ASSERT_TRUE(ApplyOverride(&job, "optimizer.lion.lr=3e-4").ok());
  EXPECT_TRUE(job.optimizer().has_lion());
  EXPECT_FALSE(job.optimizer().has_adamw());
  ASSERT_TRUE(ApplyOverride(&job, "optimizer.no_decay=wpe").ok());
  EXPECT_EQ(job.optimizer().no_decay(0), "wpe");
  absl::Status files = ValidateFiles(Filled(kGood));
  EXPECT_EQ(files.code(), absl::StatusCode::kNotFound);
  EXPECT_NE(files.message().find("data.train_tokens = \"t.bin\""), std::string::npos);
}

}  // namespace
}  // namespace memtrain::launcher
