// docs/job-spec.md must document every field of launcher/job.proto (by its full path).
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "launcher/job.pb.h"

namespace memtrain::launcher {
namespace {

void Collect(const google::protobuf::Descriptor* d, const std::string& prefix,
             std::vector<std::string>* out) {
  for (int i = 0; i < d->field_count(); ++i) {
    const google::protobuf::FieldDescriptor* f = d->field(i);
    const std::string path = prefix.empty() ? f->name() : prefix + "." + f->name();
    if (f->message_type() != nullptr) {
      Collect(f->message_type(), path, out);
      if (!prefix.empty()) out->push_back(path);  // sections like model.gpt
    } else {
      out->push_back(path);
    }
  }
}

TEST(JobSpecDocTest, EveryFieldIsDocumented) {
  std::ifstream in(std::string(MEMTRAIN_SOURCE_DIR) + "/docs/job-spec.md");
  ASSERT_TRUE(in) << "docs/job-spec.md is missing";
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string doc = ss.str();
  std::vector<std::string> fields;
  Collect(Job::descriptor(), "", &fields);
  ASSERT_GT(fields.size(), 30u);
  for (const std::string& f : fields) {
    EXPECT_NE(doc.find("`" + f + "`"), std::string::npos) << f << " is not in docs/job-spec.md";
  }
}

}  // namespace
}  // namespace memtrain::launcher
