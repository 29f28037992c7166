// Fused AdamW and the global gradient norm on CUDA.
//
// Both ops run over whole tensor lists with multi-tensor apply (multi_tensor_apply.cuh): every
// tensor is cut into chunks of kChunkSize elements, each CUDA block of kBlockSize threads
// handles one chunk, and a list costs one launch (a few when it exceeds the kernel-argument
// limits). Threads work on fragments of kIlp = 4 elements: one 16-byte access per fp32 list
// (8 bytes per bf16 list) when the chunk's pointers are aligned, strided scalar accesses
// otherwise and for the last size % 4 elements of a tensor.
//
// fused_adamw_cuda mirrors fused_adamw_cpu operation for operation, in fp32 (see the formula at
// the top of fused_adamw_cpu.cpp), with the same per-tensor coefficients (advance_steps: every
// tensor is bias-corrected with its own step count). The call-wide coefficients are one kernel
// argument; the two that depend on the step ride in the multi-tensor metadata beside each
// tensor's addresses, so per-tensor steps cost no device memory and no host-to-device copy.
// Every operation is an explicitly rounded intrinsic (__fmul_rn, __fadd_rn, __fdiv_rn,
// __fsqrt_rn) so that nvcc cannot contract a multiply and an add into an FMA: the result is the
// op-by-op IEEE result of the reference formula, not a compiler-dependent one (the CPU build
// uses -ffp-contract=off for the same reason, so both devices give the same bits). grad_scale
// (the clip coefficient) stays on the device and is read inside the kernel, so the step never
// waits for the host.
//
// total_norm_cuda is deterministic: each block sums the squares of its chunk (fp32 per thread,
// the block's threads combined in double in a fixed tree) into its own slot of a partials
// buffer, indexed by the chunk's position in the whole list, and one single-block kernel adds
// the partials in a fixed order. No float atomics, so the same inputs give the same bits on
// every run.
#include "fused_adamw.h"

#include <cmath>
#include <cstdint>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
// The current stream comes from c10 directly (at::cuda::getCurrentCUDAStream is the same
// function): ATen/cuda/CUDAContext.h would pull in the cuBLAS/cuSPARSE headers for nothing.
#include <c10/cuda/CUDAStream.h>

#include "multi_tensor_apply.cuh"

namespace crucible::optim {
namespace {

using mta::kIlp;

// 512 threads x 4 elements = 2048 elements per block step; a 64 Ki-element chunk is 32 such
// steps, long enough to amortise the block's set-up, short enough that a list of small tensors
// still spreads over many blocks.
constexpr int kBlockSize = 512;
constexpr int64_t kChunkSize = 64 * 1024;
static_assert(kChunkSize % kIlp == 0, "chunks must keep fragments aligned");

// ---------------------------------------------------------------------------------------------
// Fused AdamW.

// The fields of AdamWCoeffs (fused_adamw.h, computed by advance_steps) that are the same for
// every tensor of a call, plus where the gradient multiplier comes from.
struct AdamWCallArgs {
  float decay;              // 1 - lr * weight_decay
  float w1;                 // 1 - beta1
  float b2;                 // beta2
  float w2;                 // 1 - beta2
  float eps;
  const float* grad_scale;  // one fp32 value on the device, or nullptr for 1
  bool maximize;            // negate the (scaled) gradient
};

// The fields of AdamWCoeffs that depend on the tensor's own step count.
struct AdamWTensorArgs {
  float bc2_sqrt;  // sqrt(1 - beta2^step)
  float neg_step;  // -lr / (1 - beta1^step)
};

// Slots of the lists in the metadata: params, grads, exp_avgs, exp_avg_sqs, then
// max_exp_avg_sqs when amsgrad, then master_params when present.
constexpr int kParamList = 0;
constexpr int kGradList = 1;
constexpr int kExpAvgList = 2;
constexpr int kExpAvgSqList = 3;
constexpr int kMaxExpAvgSqList = 4;
constexpr int adamw_depth(bool amsgrad, bool master) {
  return 4 + (amsgrad ? 1 : 0) + (master ? 1 : 0);
}
constexpr int master_list(bool amsgrad) { return amsgrad ? 5 : 4; }

// One element of the update; p, m, v, vmax are read and written. Same order of operations as
// adamw_segment in fused_adamw_cpu.cpp, each one rounded on its own (see the file comment).
template <bool kAmsgrad>
__device__ __forceinline__ void adamw_element(float& p, float grad, float& m, float& v,
                                              float& vmax, const AdamWCallArgs& c,
                                              const AdamWTensorArgs& t, float grad_mul) {
  const float g = __fmul_rn(grad, grad_mul);
  p = __fmul_rn(p, c.decay);
  m = __fadd_rn(m, __fmul_rn(c.w1, __fsub_rn(g, m)));
  v = __fadd_rn(__fmul_rn(v, c.b2), __fmul_rn(c.w2, __fmul_rn(g, g)));
  float vhat = v;
  if constexpr (kAmsgrad) {
    vhat = vmax < v ? v : vmax;  // std::max(vmax, v), NaN handling included
    vmax = vhat;
  }
  const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vhat), t.bc2_sqrt), c.eps);
  p = __fadd_rn(p, __fmul_rn(t.neg_step, __fdiv_rn(m, denom)));
}

template <bool kAmsgrad, bool kMaster>
using AdamWMetadata = mta::TensorListMetadata<adamw_depth(kAmsgrad, kMaster), AdamWTensorArgs>;

// The metadata is a __grid_constant__: blocks index it with runtime values, and this keeps it
// in parameter space instead of copying it to local memory. Two blocks per SM (at most 64
// registers a thread) keep more loads in flight for this memory-bound kernel; the six-list
// variant (amsgrad + master weights) would spill at 64, so it asks for one.
constexpr int adamw_min_blocks(bool amsgrad, bool master) { return amsgrad && master ? 1 : 2; }

// P: parameter/gradient storage (float or __nv_bfloat16); state and master weights are fp32.
template <typename P, bool kAmsgrad, bool kMaster>
__global__ void __launch_bounds__(kBlockSize, adamw_min_blocks(kAmsgrad, kMaster))
    fused_adamw_kernel(const __grid_constant__ AdamWMetadata<kAmsgrad, kMaster> meta,
                       const AdamWCallArgs c) {
  const auto chunk = meta.locate(blockIdx.x, kChunkSize);
  const AdamWTensorArgs t = meta.args[chunk.tensor];
  P* __restrict__ param = meta.template chunk_ptr<P>(kParamList, chunk);
  const P* __restrict__ grad = meta.template chunk_ptr<P>(kGradList, chunk);
  float* __restrict__ exp_avg = meta.template chunk_ptr<float>(kExpAvgList, chunk);
  float* __restrict__ exp_avg_sq = meta.template chunk_ptr<float>(kExpAvgSqList, chunk);
  float* __restrict__ max_sq = nullptr;
  float* __restrict__ master = nullptr;
  if constexpr (kAmsgrad) max_sq = meta.template chunk_ptr<float>(kMaxExpAvgSqList, chunk);
  if constexpr (kMaster) master = meta.template chunk_ptr<float>(master_list(kAmsgrad), chunk);

  // Read on the device: a host-side .item() would stall the stream every step.
  const float scale = c.grad_scale != nullptr ? __ldg(c.grad_scale) : 1.0f;
  const float grad_mul = c.maximize ? -scale : scale;

  // The same for every thread of the block, so the branch in for_each_fragment is uniform.
  bool vector_ok = mta::pack_aligned(param) && mta::pack_aligned(grad) &&
                   mta::pack_aligned(exp_avg) && mta::pack_aligned(exp_avg_sq);
  if constexpr (kAmsgrad) vector_ok = vector_ok && mta::pack_aligned(max_sq);
  if constexpr (kMaster) vector_ok = vector_ok && mta::pack_aligned(master);

  mta::for_each_fragment(chunk.size, vector_ok, [&](auto contiguous, int start, int stride,
                                                    int end) {
    float p[kIlp], g[kIlp], m[kIlp], v[kIlp], vmax[kIlp] = {};
    // With master weights the fp32 copy is the source of truth; param is only written.
    if constexpr (kMaster) {
      mta::load_lanes(p, master, contiguous, start, stride, end);
    } else {
      mta::load_lanes(p, param, contiguous, start, stride, end);
    }
    mta::load_lanes(g, grad, contiguous, start, stride, end);
    mta::load_lanes(m, exp_avg, contiguous, start, stride, end);
    mta::load_lanes(v, exp_avg_sq, contiguous, start, stride, end);
    if constexpr (kAmsgrad) mta::load_lanes(vmax, max_sq, contiguous, start, stride, end);
#pragma unroll
    for (int k = 0; k < kIlp; ++k) {
      adamw_element<kAmsgrad>(p[k], g[k], m[k], v[k], vmax[k], c, t, grad_mul);
    }
    mta::store_lanes(exp_avg, m, contiguous, start, stride, end);
    mta::store_lanes(exp_avg_sq, v, contiguous, start, stride, end);
    if constexpr (kAmsgrad) mta::store_lanes(max_sq, vmax, contiguous, start, stride, end);
    if constexpr (kMaster) mta::store_lanes(master, p, contiguous, start, stride, end);
    mta::store_lanes(param, p, contiguous, start, stride, end);
  });
}

// Launches one kernel variant over the parameters at `indices` (all of storage type P).
template <typename P, bool kAmsgrad, bool kMaster>
void launch_adamw(const std::vector<size_t>& indices, at::TensorList params,
                  at::TensorList grads, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                  at::TensorList max_exp_avg_sqs, at::TensorList master_params,
                  const std::vector<AdamWCoeffs>& coeffs, const AdamWCallArgs& call,
                  cudaStream_t stream) {
  constexpr int kDepth = adamw_depth(kAmsgrad, kMaster);
  std::vector<mta::TensorRef<kDepth, AdamWTensorArgs>> tensors;
  tensors.reserve(indices.size());
  for (size_t i : indices) {
    mta::TensorRef<kDepth, AdamWTensorArgs> ref{};
    ref.addresses[kParamList] = params[i].data_ptr();
    ref.addresses[kGradList] = grads[i].data_ptr();
    ref.addresses[kExpAvgList] = exp_avgs[i].data_ptr();
    ref.addresses[kExpAvgSqList] = exp_avg_sqs[i].data_ptr();
    if constexpr (kAmsgrad) ref.addresses[kMaxExpAvgSqList] = max_exp_avg_sqs[i].data_ptr();
    if constexpr (kMaster) ref.addresses[master_list(kAmsgrad)] = master_params[i].data_ptr();
    ref.size = params[i].numel();
    ref.args = AdamWTensorArgs{coeffs[i].bc2_sqrt, coeffs[i].neg_step};
    tensors.push_back(ref);
  }
  mta::multi_tensor_apply(tensors, kChunkSize,
                          [&](const auto& meta, int blocks, int64_t /*first_block*/) {
                            fused_adamw_kernel<P, kAmsgrad, kMaster>
                                <<<blocks, kBlockSize, 0, stream>>>(meta, call);
                            C10_CUDA_KERNEL_LAUNCH_CHECK();
                          });
}

template <typename P>
void launch_adamw_dtype(const std::vector<size_t>& indices, at::TensorList params,
                        at::TensorList grads, at::TensorList exp_avgs,
                        at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs,
                        at::TensorList master_params, bool amsgrad,
                        const std::vector<AdamWCoeffs>& coeffs, const AdamWCallArgs& call,
                        cudaStream_t stream) {
  if (indices.empty()) return;
  const bool master = !master_params.empty();
#define CRUCIBLE_LAUNCH_ADAMW(AMS, MASTER)                                                    \
  launch_adamw<P, AMS, MASTER>(indices, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, \
                               master_params, coeffs, call, stream)
  if (amsgrad) {
    if (master) {
      CRUCIBLE_LAUNCH_ADAMW(true, true);
    } else {
      CRUCIBLE_LAUNCH_ADAMW(true, false);
    }
  } else {
    if (master) {
      CRUCIBLE_LAUNCH_ADAMW(false, true);
    } else {
      CRUCIBLE_LAUNCH_ADAMW(false, false);
    }
  }
#undef CRUCIBLE_LAUNCH_ADAMW
}

// ---------------------------------------------------------------------------------------------
// Global L2 norm.

// Sum over the block of one value per thread, in double, in a fixed order (warp shuffles, then
// the warp sums by warp 0). The result is valid in thread 0.
__device__ __forceinline__ double block_sum(double x) {
  constexpr int kWarps = kBlockSize / 32;
  __shared__ double warp_sums[kWarps];
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) x += __shfl_down_sync(0xffffffffu, x, offset);
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  if (lane == 0) warp_sums[warp] = x;
  __syncthreads();
  x = 0.0;
  if (warp == 0) {
    x = lane < kWarps ? warp_sums[lane] : 0.0;
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2) x += __shfl_down_sync(0xffffffffu, x, offset);
  }
  return x;
}

// Sum of squares of one chunk into partials[first_block + blockIdx.x]: the slot is fixed by the
// chunk's place in the list, whichever launch the chunk lands in.
template <typename T>
__global__ void __launch_bounds__(kBlockSize)
    sumsq_kernel(const __grid_constant__ mta::TensorListMetadata<1> meta, double* partials,
                 int64_t first_block) {
  const auto chunk = meta.locate(blockIdx.x, kChunkSize);
  const T* __restrict__ x = meta.template chunk_ptr<T>(0, chunk);
  float acc[kIlp] = {};  // one fp32 accumulator per lane: 32 squares each for a full chunk
  auto accumulate = [&](auto contiguous, int start, int stride, int end) {
    float r[kIlp];
    mta::load_lanes(r, x, contiguous, start, stride, end);  // padding lanes read as 0
#pragma unroll
    for (int k = 0; k < kIlp; ++k) acc[k] = __fmaf_rn(r[k], r[k], acc[k]);
  };
  mta::for_each_fragment(chunk.size, mta::pack_aligned(x), accumulate);
  const double total = block_sum(static_cast<double>((acc[0] + acc[1]) + (acc[2] + acc[3])));
  if (threadIdx.x == 0) partials[first_block + blockIdx.x] = total;
}

// One block: adds the partials in a fixed order and writes sqrt of the sum as fp32.
__global__ void __launch_bounds__(kBlockSize)
    finish_norm_kernel(const double* __restrict__ partials, int64_t n, float* __restrict__ out) {
  double s = 0.0;
  for (int64_t i = threadIdx.x; i < n; i += kBlockSize) s += partials[i];
  s = block_sum(s);
  if (threadIdx.x == 0) *out = static_cast<float>(sqrt(s));
}
static_assert(kIlp == 4, "sumsq_kernel folds exactly four lanes");

// Launches sumsq_kernel over `tensors` (all of storage type T), their chunks taking partial
// slots first_block, first_block + 1, ... Returns the number of slots used.
template <typename T>
int64_t launch_sumsq(const std::vector<mta::TensorRef<1>>& tensors, double* partials,
                     int64_t first_block, cudaStream_t stream) {
  return mta::multi_tensor_apply(
      tensors, kChunkSize, [&](const auto& meta, int blocks, int64_t block) {
        sumsq_kernel<T><<<blocks, kBlockSize, 0, stream>>>(meta, partials, first_block + block);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
}

}  // namespace

void fused_adamw_cuda(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                      at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs,
                      at::TensorList master_params, at::TensorList state_steps, double lr,
                      double beta1, double beta2, double weight_decay, double eps, bool amsgrad,
                      bool maximize, const std::optional<at::Tensor>& grad_scale) {
  check_adamw_inputs(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, master_params,
                     state_steps, amsgrad, grad_scale);
  if (params.empty()) return;
  // Host-side step counters (CPU tensors): incremented here, one coefficient set per tensor,
  // exactly as on the CPU path.
  const std::vector<AdamWCoeffs> coeffs =
      advance_steps(state_steps, lr, beta1, beta2, weight_decay, eps);

  const c10::cuda::CUDAGuard device_guard(params[0].device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  // decay, w1, b2, w2 and eps come from the call's hyper-parameters alone: the same in every
  // entry of coeffs.
  const AdamWCoeffs& c0 = coeffs[0];
  const AdamWCallArgs call{c0.decay,
                           c0.w1,
                           c0.b2,
                           c0.w2,
                           c0.eps,
                           grad_scale.has_value() ? grad_scale->const_data_ptr<float>() : nullptr,
                           maximize};

  // One kernel per parameter dtype present (a list may mix fp32 and bf16 parameters).
  std::vector<size_t> f32, bf16;
  for (size_t i = 0; i < params.size(); ++i) {
    (params[i].scalar_type() == at::kFloat ? f32 : bf16).push_back(i);
  }
  launch_adamw_dtype<float>(f32, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs,
                            master_params, amsgrad, coeffs, call, stream);
  launch_adamw_dtype<__nv_bfloat16>(bf16, params, grads, exp_avgs, exp_avg_sqs,
                                    max_exp_avg_sqs, master_params, amsgrad, coeffs, call,
                                    stream);
}

at::Tensor total_norm_cuda(at::TensorList tensors) {
  check_norm_inputs(tensors);
  if (tensors.empty()) {
    return at::zeros({}, at::TensorOptions().dtype(at::kFloat).device(
                             at::Device(at::kCUDA, c10::cuda::current_device())));
  }
  const c10::cuda::CUDAGuard device_guard(tensors[0].device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::TensorOptions options = tensors[0].options();

  // fp32 tensors first, then bf16 ones: the partials layout depends only on the list.
  std::vector<mta::TensorRef<1>> f32, bf16;
  for (const at::Tensor& t : tensors) {
    (t.scalar_type() == at::kFloat ? f32 : bf16).push_back({{t.data_ptr()}, t.numel(), {}});
  }
  const int64_t blocks =
      mta::count_blocks(f32, kChunkSize) + mta::count_blocks(bf16, kChunkSize);
  if (blocks == 0) return at::zeros({}, options.dtype(at::kFloat));

  at::Tensor partials = at::empty({blocks}, options.dtype(at::kDouble));
  double* slots = partials.data_ptr<double>();
  int64_t used = launch_sumsq<float>(f32, slots, 0, stream);
  used += launch_sumsq<__nv_bfloat16>(bf16, slots, used, stream);
  TORCH_INTERNAL_ASSERT(used == blocks, "total_norm: launched ", used, " blocks, expected ",
                        blocks);

  at::Tensor out = at::empty({}, options.dtype(at::kFloat));
  finish_norm_kernel<<<1, kBlockSize, 0, stream>>>(slots, blocks, out.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace crucible::optim
