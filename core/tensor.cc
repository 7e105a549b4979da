#include "core/tensor.h"

#include <cstring>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "core/backend.h"

namespace memtrain::core {

const char* DTypeName(DType t) {
  switch (t) {
    case DType::kF32:
      return "f32";
    case DType::kBF16:
      return "bf16";
    case DType::kI32:
      return "i32";
    case DType::kU16:
      return "u16";
    case DType::kF64:
      return "f64";
    case DType::kU8:
      return "u8";
  }
  return "?";
}

int64_t NumElements(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string ShapeString(const Shape& shape) {
  return absl::StrCat("(", absl::StrJoin(shape, ", "), ")");
}

absl::StatusOr<Tensor> Tensor::Empty(const Shape& shape, DType dtype, MemoryTag tag,
                                     Device device) {
  for (int64_t d : shape) {
    if (d < 0) return absl::InvalidArgumentError("negative dimension in " + ShapeString(shape));
  }
  Tensor t;
  t.shape_ = shape;
  t.numel_ = NumElements(shape);
  t.dtype_ = dtype;
  t.device_ = device;
  size_t bytes = t.nbytes();
  MT_ASSIGN_OR_RETURN(void* p, Allocate(device, bytes, tag));
  t.storage_ = std::make_shared<Storage>(p, bytes, device, tag);
  t.data_ = p;
  return t;
}

absl::StatusOr<Tensor> Tensor::Zeros(const Shape& shape, DType dtype, MemoryTag tag,
                                     Device device) {
  MT_ASSIGN_OR_RETURN(Tensor t, Empty(shape, dtype, tag, device));
  t.SetZero();
  return t;
}

Tensor Tensor::Wrap(void* data, const Shape& shape, DType dtype, Device device) {
  Tensor t;
  t.data_ = data;
  t.shape_ = shape;
  t.numel_ = NumElements(shape);
  t.dtype_ = dtype;
  t.device_ = device;
  return t;
}

Tensor Tensor::View(int64_t offset, const Shape& shape) const {
  int64_t n = NumElements(shape);
  MT_CHECK(offset >= 0 && offset + n <= numel_)
      << "view " << ShapeString(shape) << " at " << offset << " outside " << DebugString();
  Tensor t = *this;
  t.data_ = static_cast<char*>(data_) + offset * static_cast<int64_t>(DTypeSize(dtype_));
  t.shape_ = shape;
  t.numel_ = n;
  return t;
}

void Tensor::SetZero() const {
  if (nbytes() > 0) BackendFor(device_).SetZero(ExecContext::For(device_), data_, nbytes());
}

void Tensor::CopyFrom(const Tensor& src) const {
  MT_CHECK(src.dtype_ == dtype_ && src.numel_ == numel_ && src.device_ == device_)
      << "CopyFrom " << src.DebugString() << " into " << DebugString();
  BackendFor(device_).Copy(ExecContext::For(device_), data_, src.data_, nbytes());
}

std::string Tensor::DebugString() const {
  return absl::StrFormat("Tensor(%s, %s, %s)", ShapeString(shape_), DTypeName(dtype_),
                         device_.ToString());
}

}  // namespace memtrain::core
