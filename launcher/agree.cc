#include "launcher/agree.h"

#include <elf.h>
#include <link.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "core/status.h"
#include "google/protobuf/text_format.h"
#include "launcher/spec.h"

namespace memtrain::launcher {

namespace pb = google::protobuf;

absl::Status AgreeOnStatus(parallel::Communicator* comm, const absl::Status& local) {
  int stop = 0;
  return AgreeOnStatus(comm, local, &stop);
}

absl::Status AgreeOnStatus(parallel::Communicator* comm, const absl::Status& local, int* stop) {
  const int32_t mine[2] = {static_cast<int32_t>(local.code()), *stop};
  std::vector<int32_t> all(2 * comm->size());
  absl::Status s = comm->AllGather(mine, all.data(), 2, core::DType::kI32).Wait();
  if (!s.ok()) return local.ok() ? s : local;
  for (int r = 0; r < comm->size(); ++r) *stop = std::max(*stop, all[2 * r + 1]);
  for (int r = 0; r < comm->size(); ++r) {
    if (all[2 * r] == 0) continue;
    if (r == comm->rank()) return local;
    return absl::Status(static_cast<absl::StatusCode>(all[2 * r]), "");
  }
  return absl::OkStatus();
}

namespace {

// 64-bit FNV-1a: the same on every machine (absl::Hash is seeded per process).
uint64_t Fnv1a(const std::string& s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}

// What each rank contributes to the first collective of a job.
struct Fingerprint {
  int64_t code;                  // absl::StatusCode of the rank's own checks
  uint64_t build, job, options;  // hashes
  int64_t build_bytes, job_bytes, options_bytes;
};

// Broadcasts rank `root`'s `text` (of `bytes` bytes, known to every rank) to every rank.
absl::StatusOr<std::string> BroadcastText(parallel::Communicator* comm, const std::string& text,
                                          int64_t bytes, int root) {
  std::string buf = comm->rank() == root ? text : std::string(bytes, '\0');
  MT_RETURN_IF_ERROR(comm->Broadcast(buf.data(), bytes, core::DType::kU8, root).Wait());
  return buf;
}

std::string FieldValue(const pb::Message& m, const pb::FieldDescriptor* f) {
  const pb::Reflection* r = m.GetReflection();
  if (f->is_repeated()) {
    std::vector<std::string> items;
    for (int i = 0; i < r->FieldSize(m, f); ++i) {
      std::string v;
      pb::TextFormat::PrintFieldValueToString(m, f, i, &v);
      items.push_back(v);
    }
    return absl::StrCat("[", absl::StrJoin(items, ", "), "]");
  }
  if (!r->HasField(m, f)) return "(not set)";
  if (f->cpp_type() == pb::FieldDescriptor::CPPTYPE_MESSAGE) return "(set)";
  std::string v;
  pb::TextFormat::PrintFieldValueToString(m, f, -1, &v);
  return v;
}

// The first field (in declaration order, depth first) whose value differs: "path = a", "b".
bool FirstDifference(const pb::Message& a, const pb::Message& b, const std::string& prefix,
                     std::string* path, std::string* va, std::string* vb) {
  const pb::Descriptor* d = a.GetDescriptor();
  for (int i = 0; i < d->field_count(); ++i) {
    const pb::FieldDescriptor* f = d->field(i);
    const std::string p = prefix.empty() ? f->name() : prefix + "." + f->name();
    const std::string x = FieldValue(a, f), y = FieldValue(b, f);
    if (x != y) {
      *path = p, *va = x, *vb = y;
      return true;
    }
    if (!f->is_repeated() && f->cpp_type() == pb::FieldDescriptor::CPPTYPE_MESSAGE &&
        a.GetReflection()->HasField(a, f) &&
        FirstDifference(a.GetReflection()->GetMessage(a, f), b.GetReflection()->GetMessage(b, f), p,
                        path, va, vb)) {
      return true;
    }
  }
  return false;
}

}  // namespace

std::string BuildId() {
  std::string id;
  dl_iterate_phdr(
      [](dl_phdr_info* info, size_t, void* out) -> int {
        // The first object is the program itself.
        for (int i = 0; i < info->dlpi_phnum; ++i) {
          const ElfW(Phdr)& ph = info->dlpi_phdr[i];
          if (ph.p_type != PT_NOTE) continue;
          const char* p = reinterpret_cast<const char*>(info->dlpi_addr + ph.p_vaddr);
          const char* end = p + ph.p_memsz;
          while (p + sizeof(ElfW(Nhdr)) <= end) {
            ElfW(Nhdr) n;
            std::memcpy(&n, p, sizeof n);
            const char* name = p + sizeof n;
            const char* desc = name + ((n.n_namesz + 3) & ~3u);
            if (desc + n.n_descsz > end) break;
            if (n.n_type == NT_GNU_BUILD_ID && n.n_namesz == 4 &&
                std::memcmp(name, "GNU", 4) == 0) {
              std::string* hex = static_cast<std::string*>(out);
              for (uint32_t k = 0; k < n.n_descsz; ++k) {
                absl::StrAppendFormat(hex, "%02x", static_cast<unsigned char>(desc[k]));
              }
              return 1;
            }
            p = desc + ((n.n_descsz + 3) & ~3u);
          }
        }
        return 1;
      },
      &id);
  return id.empty() ? "unknown" : id;
}

absl::Status AgreeOnJob(parallel::Communicator* comm, const absl::Status& local, const Job* job,
                        const std::string& options) {
  const int n = comm->size(), rank = comm->rank();
  const std::string build = BuildId();
  const std::string text = local.ok() && job != nullptr ? JobToText(*job) : "";
  const Fingerprint mine{.code = static_cast<int64_t>(local.code()),
                         .build = Fnv1a(build),
                         .job = Fnv1a(text),
                         .options = Fnv1a(options),
                         .build_bytes = static_cast<int64_t>(build.size()),
                         .job_bytes = static_cast<int64_t>(text.size()),
                         .options_bytes = static_cast<int64_t>(options.size())};
  std::vector<Fingerprint> all(n);
  absl::Status s = comm->AllGather(&mine, all.data(), sizeof(Fingerprint), core::DType::kU8).Wait();
  if (!s.ok()) return local.ok() ? s : local;
  // A rank that failed its own checks: the lowest one prints its message.
  for (int r = 0; r < n; ++r) {
    if (all[r].code == 0) continue;
    if (r == rank) return local;
    return absl::Status(static_cast<absl::StatusCode>(all[r].code), "");
  }
  // Which ranks differ from rank 0 in `what`; every rank computes the same list.
  auto differing = [&](auto field) {
    std::vector<int> out;
    for (int r = 1; r < n; ++r) {
      if (all[r].*field != all[0].*field) out.push_back(r);
    }
    return out;
  };
  // "rank 1 differs", "ranks 1, 3 differ".
  auto ranks = [](const std::vector<int>& rs) {
    return absl::StrCat(rs.size() == 1 ? "rank " : "ranks ", absl::StrJoin(rs, ", "),
                        rs.size() == 1 ? " differs" : " differ");
  };
  // Only rank 0 prints: the others return the same code with an empty message.
  auto fail = [&](const std::string& message) {
    return absl::InvalidArgumentError(rank == 0 ? message : "");
  };
  if (std::vector<int> d = differing(&Fingerprint::build); !d.empty()) {
    MT_ASSIGN_OR_RETURN(std::string other, BroadcastText(comm, build, all[d[0]].build_bytes, d[0]));
    return fail(absl::StrFormat(
        "the ranks run different trainer builds: %s from rank 0 (build id %s on rank 0, %s on "
        "rank %d); run the same trainer on every node",
        ranks(d), build, other, d[0]));
  }
  if (std::vector<int> d = differing(&Fingerprint::options); !d.empty()) {
    MT_ASSIGN_OR_RETURN(std::string other,
                        BroadcastText(comm, options, all[d[0]].options_bytes, d[0]));
    return fail(absl::StrFormat(
        "the ranks were started with different options: %s from rank 0 (rank 0: %s; rank %d: "
        "%s); give every rank the same command line",
        ranks(d), options.empty() ? "none" : options, d[0], other.empty() ? "none" : other));
  }
  if (std::vector<int> d = differing(&Fingerprint::job); !d.empty()) {
    MT_ASSIGN_OR_RETURN(std::string other, BroadcastText(comm, text, all[d[0]].job_bytes, d[0]));
    std::string where = "the effective specs differ";
    if (rank == 0) {
      absl::StatusOr<Job> theirs = ParseJobText(other, absl::StrCat("rank ", d[0]));
      std::string path, a, b;
      if (job != nullptr && theirs.ok() && FirstDifference(*job, *theirs, "", &path, &a, &b)) {
        where = absl::StrFormat("first difference: %s = %s on rank 0 but %s on rank %d", path, a, b,
                                d[0]);
      }
    }
    return fail(absl::StrFormat(
        "the ranks disagree about the job: %s from rank 0 (%s); give every rank the same job "
        "file and --set options",
        ranks(d), where));
  }
  return absl::OkStatus();
}

}  // namespace memtrain::launcher
