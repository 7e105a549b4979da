// A tensor: a shape, an element type, a device and a pointer into reference-counted storage.
// Views (`View`, `Wrap`) share or borrow storage without copying; this is how a block's named
// parameters are windows into its one flat buffer. Row-major, contiguous.
//
//   MT_ASSIGN_OR_RETURN(core::Tensor x, core::Tensor::Zeros({B, T, C}, core::DType::kF32,
//                                                           core::MemoryTag::kActivations));
//   core::Tensor row = x.View(/*offset=*/t * C, {C});
//   float* p = row.f32();
#ifndef MEMTRAIN_CORE_TENSOR_H_
#define MEMTRAIN_CORE_TENSOR_H_

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>

#include "absl/container/inlined_vector.h"
#include "absl/status/statusor.h"
#include "core/allocator.h"
#include "core/dtype.h"
#include "core/status.h"

namespace memtrain::core {

using Shape = absl::InlinedVector<int64_t, 4>;

int64_t NumElements(const Shape& shape);
std::string ShapeString(const Shape& shape);

// Owns one allocation; freed when the last tensor referring to it goes away.
class Storage {
 public:
  Storage(void* ptr, size_t bytes, Device device, MemoryTag tag)
      : ptr_(ptr), bytes_(bytes), device_(device), tag_(tag) {}
  ~Storage() { Free(device_, ptr_, bytes_, tag_); }
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  void* ptr() const { return ptr_; }
  size_t bytes() const { return bytes_; }

 private:
  void* ptr_;
  size_t bytes_;
  Device device_;
  MemoryTag tag_;
};

class Tensor {
 public:
  Tensor() = default;

  // Uninitialised memory, counted under `tag`. ResourceExhausted past the device's budget.
  static absl::StatusOr<Tensor> Empty(const Shape& shape, DType dtype, MemoryTag tag,
                                      Device device = Device::Cpu());
  // Zero-filled (on the CPU this also touches every page once, up front).
  static absl::StatusOr<Tensor> Zeros(const Shape& shape, DType dtype, MemoryTag tag,
                                      Device device = Device::Cpu());
  // Borrows memory owned elsewhere; the caller keeps it alive.
  static Tensor Wrap(void* data, const Shape& shape, DType dtype, Device device = Device::Cpu());

  // A window of `shape` starting `offset` elements in; shares this tensor's storage.
  Tensor View(int64_t offset, const Shape& shape) const;

  bool defined() const { return data_ != nullptr; }
  const Shape& shape() const { return shape_; }
  int ndim() const { return static_cast<int>(shape_.size()); }
  int64_t dim(int i) const { return shape_[i < 0 ? i + ndim() : i]; }
  int64_t numel() const { return numel_; }
  size_t nbytes() const { return static_cast<size_t>(numel_) * DTypeSize(dtype_); }
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }

  void* raw() const { return data_; }
  float* f32() const {
    MT_CHECK(dtype_ == DType::kF32) << "tensor is " << DTypeName(dtype_) << ", not f32";
    return static_cast<float*>(data_);
  }
  int32_t* i32() const {
    MT_CHECK(dtype_ == DType::kI32) << "tensor is " << DTypeName(dtype_) << ", not i32";
    return static_cast<int32_t*>(data_);
  }
  uint16_t* u16() const {
    MT_CHECK(dtype_ == DType::kU16 || dtype_ == DType::kBF16)
        << "tensor is " << DTypeName(dtype_) << ", not 16-bit";
    return static_cast<uint16_t*>(data_);
  }

  // Fills with zeros / copies `src` (same dtype and element count, same device) through the
  // backend of the tensor's device, in the device's default context.
  void SetZero() const;
  void CopyFrom(const Tensor& src) const;
  std::string DebugString() const;

 private:
  std::shared_ptr<Storage> storage_;
  void* data_ = nullptr;
  Shape shape_;
  int64_t numel_ = 0;
  DType dtype_ = DType::kF32;
  Device device_;
};

}  // namespace memtrain::core

#endif  // MEMTRAIN_CORE_TENSOR_H_
