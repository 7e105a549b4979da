// CPU kernels of a small image-classification CNN (VGG-style: conv3x3 - BatchNorm - ReLU - 2x2
// max-pool groups, then a linear head), forward and backward side by side, in the style of ops.h.
// The head is MatmulForward/Backward of ops.h and the loss CrossEntropyForward/Backward of ops.h
// with V = Vp = classes.
//
// Conventions: raw pointers, NCHW row-major: an image batch (B, C, H, W) has element
// ((b * C + c) * H + h) * W + w. Backward kernels ACCUMULATE (+=) into parameter gradients; for
// activation gradients each function says whether it writes or accumulates.
//
// Determinism: every result here is a pure function of the inputs (and, for the convolution, of
// the scratch's slot count): bit-identical from run to run AND for any number of OpenMP threads.
// Work is split into pieces that do not depend on the thread count (images, channels, planes, or
// the caller's scratch slots), each piece is computed by one thread in a fixed order, and partial
// sums are reduced in a fixed order. sgemm is called from inside parallel regions, where
// OpenBLAS's OpenMP build runs single-threaded.
#ifndef MEMTRAIN_CORE_KERNELS_CPU_CNN_OPS_H_
#define MEMTRAIN_CORE_KERNELS_CPU_CNN_OPS_H_

#include <cstdint>

namespace memtrain::core::cpu {

// ---- 2-D convolution (square kernel K x K, same stride and zero padding on both axes) ----------
// Output size of one axis: (H + 2 * pad - K) / stride + 1 (floor, as PyTorch).
int64_t Conv2dOutSize(int64_t H, int64_t K, int64_t stride, int64_t pad);

// Scratch contract. The convolution runs im2col + sgemm, one image at a time, on `slots`
// independent work areas of the caller's scratch buffer. Slot s holds
//   col   (C*K*K, OH*OW)   the im2col matrix of one image (reused for its gradient in backward),
//   dw    (OC, C*K*K)      this slot's partial weight gradient (backward only),
//   db    (OC)             this slot's partial bias gradient (backward only),
// so the buffer is slots * (C*K*K*OH*OW + OC*C*K*K + OC) floats: Conv2dScratchFloats. The same
// buffer serves forward and backward (allocate once per model with the largest layer's size; its
// contents need not survive between calls). Images are split into min(slots, B) contiguous ranges
// of sizes fixed by (B, slots) alone; the ranges run in parallel, at most one thread per slot.
// Use slots = the thread count (core::GetThreads()) for full speed; fewer slots use fewer threads
// and less memory. Forward results do not depend on `slots`; the weight and bias gradients do (in
// the last bits: their partial sums are grouped by slot) but never on the thread count.
int64_t Conv2dScratchFloats(int64_t C, int64_t H, int64_t W, int64_t OC, int64_t K, int64_t stride,
                            int64_t pad, int64_t slots);

// out = conv2d(inp, weight) + bias (PyTorch's nn.Conv2d, dilation 1, groups 1).
//   out (B, OC, OH, OW); inp (B, C, H, W); weight (OC, C*K*K) = PyTorch's (OC, C, K, K)
//   flattened; bias (OC) or null; scratch: see above (slots >= 1). K = 1, stride 1, pad 0 runs
//   sgemm on the input directly (no im2col).
void Conv2dForward(float* out, const float* inp, const float* weight, const float* bias, int64_t B,
                   int64_t C, int64_t H, int64_t W, int64_t OC, int64_t K, int64_t stride,
                   int64_t pad, float* scratch, int64_t slots);
// dinp (B, C, H, W) WRITTEN (null: not computed, e.g. the first layer);
// dweight (OC, C*K*K) += (null: not computed); dbias (OC) += (null: not computed);
// dout (B, OC, OH, OW); inp, weight, dims and scratch as in forward.
void Conv2dBackward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                    const float* weight, int64_t B, int64_t C, int64_t H, int64_t W, int64_t OC,
                    int64_t K, int64_t stride, int64_t pad, float* scratch, int64_t slots);

// ---- BatchNorm2d (per-channel statistics over B and HW = H*W) ----------------------------------
// Statistics are accumulated in double, one thread per channel.
//
// Training mode: out = (inp - mean) * rstd * weight + bias with the batch mean and the BIASED
// batch variance var, rstd = 1 / sqrt(var + eps).
//   out (B, C, HW); inp (B, C, HW) (out may alias inp, but BatchNorm2dBackward needs inp);
//   mean, rstd (C) saved for backward; weight, bias (C).
//   running_mean, running_var (C) updated as PyTorch does (both null: not updated):
//     running_mean = (1 - momentum) * running_mean + momentum * mean
//     running_var  = (1 - momentum) * running_var  + momentum * var * n / (n - 1),  n = B*HW
//   (the UNBIASED variance; n must be > 1, as PyTorch requires in training mode).
void BatchNorm2dForwardTrain(float* out, float* mean, float* rstd, float* running_mean,
                             float* running_var, const float* inp, const float* weight,
                             const float* bias, int64_t B, int64_t C, int64_t HW,
                             float momentum = 0.1f, float eps = 1e-5f);
// Evaluation mode: out = (inp - running_mean) / sqrt(running_var + eps) * weight + bias.
//   out (B, C, HW) (may alias inp); inp (B, C, HW); weight, bias, running_mean, running_var (C).
void BatchNorm2dForwardEval(float* out, const float* inp, const float* weight, const float* bias,
                            const float* running_mean, const float* running_var, int64_t B,
                            int64_t C, int64_t HW, float eps = 1e-5f);
// The batch statistics alone (e.g. federated clients recomputing BN statistics, forward only):
//   mean (C) and var (C) = the BIASED batch variance, of inp (B, C, HW); the same numbers
//   BatchNorm2dForwardTrain normalises with.
void BatchNorm2dBatchStats(float* mean, float* var, const float* inp, int64_t B, int64_t C,
                           int64_t HW);
// Training-mode backward (the statistics depend on the input):
//   dinp (B, C, HW) WRITTEN (may alias dout); dweight, dbias (C) +=;
//   dout, inp (B, C, HW); weight, mean, rstd (C) as saved by BatchNorm2dForwardTrain.
void BatchNorm2dBackward(float* dinp, float* dweight, float* dbias, const float* dout,
                         const float* inp, const float* weight, const float* mean,
                         const float* rstd, int64_t B, int64_t C, int64_t HW);

// ---- ReLU --------------------------------------------------------------------------------------
// out = max(inp, 0) (n); out may alias inp.
void ReluForward(float* out, const float* inp, int64_t n);
// dinp = out > 0 ? dout : 0, WRITTEN; `out` is the forward's output (so the forward may run in
// place); dinp may alias dout.
void ReluBackward(float* dinp, const float* out, const float* dout, int64_t n);

// ---- 2x2 max-pool, stride 2 --------------------------------------------------------------------
// OH = H / 2, OW = W / 2 (floor: an odd last row / column is dropped, as PyTorch).
//   out (B, C, OH, OW); argmax (B, C, OH, OW) int32 = index ih * W + iw of the maximum within its
//   input plane (PyTorch's return_indices); inp (B, C, H, W). Ties: the first maximum in the
//   window's row-major order; a NaN wins (the last NaN), as PyTorch.
void MaxPool2dForward(float* out, int32_t* argmax, const float* inp, int64_t B, int64_t C,
                      int64_t H, int64_t W);
// dinp (B, C, H, W) WRITTEN: zero, then dout scattered to the argmax positions.
//   dout, argmax (B, C, OH, OW).
void MaxPool2dBackward(float* dinp, const float* dout, const int32_t* argmax, int64_t B, int64_t C,
                       int64_t H, int64_t W);

}  // namespace memtrain::core::cpu

#endif  // MEMTRAIN_CORE_KERNELS_CPU_CNN_OPS_H_
