// multi_tensor_apply.cuh: a small multi-tensor-apply helper for crucible's list kernels.
//
// Defines, in namespace crucible::mta:
//   TensorRef<Depth, Args>     host side: one tensor of the work, i.e. its address in each of
//                              Depth parallel lists, its size, and optional per-tensor scalars;
//   TensorListMetadata<Depth, Args>  the kernel argument that carries the addresses, sizes and
//                              per-tensor scalars of up to kMaxTensors tensors, plus the
//                              (tensor slot, chunk index) of each of up to kMaxBlocks CUDA blocks;
//   multi_tensor_apply()       host side: packs a whole list into as few launches as the
//                              argument limits allow and calls a launch callback for each;
//   count_blocks()             how many blocks (chunks) multi_tensor_apply() will launch in all;
//   TensorListMetadata::locate() device side: the tensor and element range of this block's chunk;
//   for_each_fragment()        device side: walks a chunk in kIlp-element fragments per thread,
//                              with vector (16-byte / 8-byte) accesses when the pointers allow;
//   load_lanes() / store_lanes() the fp32 <-> storage conversions of one fragment.
//
// Why: optimizer steps and norms touch hundreds of tensors, most of them small. One kernel per
// tensor is launch-bound; packing every tensor's chunks into a single grid makes a whole list
// cost one (or a few) launches. The tensor list travels in the kernel's parameter space (no
// device allocation, no host-to-device copy), which caps its size at the classic 4 KiB
// parameter limit: when a list does not fit, it is split over consecutive launches on the same
// stream, and a tensor that straddles two launches is simply carried over into the next one.
#pragma once

#include <array>
#include <cstdint>
#include <type_traits>
#include <vector>

#include <cuda_bf16.h>

#include <c10/util/Exception.h>

namespace crucible::mta {

// Elements per thread per step. With fp32 storage a fragment is one 16-byte access.
constexpr int kIlp = 4;

// Bytes of kernel parameter space the metadata may use: the 4 KiB limit minus room for the
// kernel's other (small) arguments.
constexpr int kParamBudget = 4096 - 256;

// Per-tensor scalars of kernels that need none.
struct NoTensorArgs {};

// One tensor of a multi-tensor launch, as the host describes it.
template <int Depth, typename Args = NoTensorArgs>
struct TensorRef {
  std::array<void*, Depth> addresses;  // first element in each list (all laid out alike)
  int64_t size;                        // elements
  Args args;                           // this tensor's scalars (e.g. its bias corrections)
};

template <int Depth, typename Args = NoTensorArgs>
struct TensorListMetadata {
  static_assert(Depth >= 1, "a multi-tensor kernel needs at least one list");
  static_assert(std::is_trivially_copyable_v<Args>, "per-tensor args travel as kernel params");
  static constexpr int kMaxBlocks = 320;
  // As many tensors as fit beside the block table; slots are indexed by a uint8_t.
  static constexpr int kMaxTensorsFit =
      (kParamBudget - kMaxBlocks * static_cast<int>(sizeof(int32_t) + sizeof(uint8_t))) /
      static_cast<int>((Depth + 1) * sizeof(int64_t) + sizeof(Args));
  static constexpr int kMaxTensors = kMaxTensorsFit < 255 ? kMaxTensorsFit : 255;

  void* addresses[Depth][kMaxTensors];  // addresses[list][slot]: first element of the tensor
  int64_t sizes[kMaxTensors];           // elements of the tensor in each slot
  int32_t block_chunk[kMaxBlocks];      // chunk index (within its tensor) of each block
  Args args[kMaxTensors];               // per-tensor scalars of each slot
  uint8_t block_tensor[kMaxBlocks];     // tensor slot of each block

  // This block's share of the work: tensor slot, first element, number of elements.
  struct Chunk {
    int tensor;
    int64_t offset;
    int size;
  };
  __device__ __forceinline__ Chunk locate(int block, int64_t chunk_size) const {
    const int t = block_tensor[block];
    const int64_t offset = static_cast<int64_t>(block_chunk[block]) * chunk_size;
    const int64_t left = sizes[t] - offset;
    return {t, offset, static_cast<int>(left < chunk_size ? left : chunk_size)};
  }

  // Typed pointer to the first element of this block's chunk in list `list`.
  template <typename T>
  __device__ __forceinline__ T* chunk_ptr(int list, const Chunk& c) const {
    return static_cast<T*>(addresses[list][c.tensor]) + c.offset;
  }
};

// Number of blocks multi_tensor_apply() launches for these tensors: one per chunk.
template <int Depth, typename Args>
int64_t count_blocks(const std::vector<TensorRef<Depth, Args>>& tensors, int64_t chunk_size) {
  int64_t blocks = 0;
  for (const auto& t : tensors) blocks += (t.size + chunk_size - 1) / chunk_size;
  return blocks;
}

// Splits every tensor into chunks of chunk_size elements and calls
// launch(meta, num_blocks, first_block) once per packed launch, where block b of that launch
// handles chunk b and first_block + b is its index among all blocks of the whole list (stable
// however the list is split into launches: kernels can use it to address per-chunk output).
// Empty tensors get no block. Returns the total number of blocks launched.
template <int Depth, typename Args, typename Launch>
int64_t multi_tensor_apply(const std::vector<TensorRef<Depth, Args>>& tensors,
                           int64_t chunk_size, Launch&& launch) {
  using Meta = TensorListMetadata<Depth, Args>;
  static_assert(sizeof(Meta) <= kParamBudget, "metadata exceeds the kernel parameter budget");
  TORCH_CHECK(chunk_size > 0 && chunk_size % kIlp == 0 && chunk_size <= INT32_MAX,
              "multi_tensor_apply: bad chunk size ", chunk_size);

  Meta meta{};
  int num_tensors = 0;
  int num_blocks = 0;
  int64_t launched = 0;
  auto flush = [&] {
    launch(static_cast<const Meta&>(meta), num_blocks, launched);
    launched += num_blocks;
    num_blocks = 0;
  };

  for (size_t i = 0; i < tensors.size(); ++i) {
    const int64_t n = tensors[i].size;
    if (n == 0) continue;
    const int64_t chunks = (n + chunk_size - 1) / chunk_size;
    TORCH_CHECK(chunks <= INT32_MAX, "multi_tensor_apply: tensor ", i, " has ", n,
                " elements, too many for chunks of ", chunk_size);
    int slot = num_tensors++;
    for (int d = 0; d < Depth; ++d) meta.addresses[d][slot] = tensors[i].addresses[d];
    meta.sizes[slot] = n;
    meta.args[slot] = tensors[i].args;
    for (int64_t c = 0; c < chunks; ++c) {
      meta.block_tensor[num_blocks] = static_cast<uint8_t>(slot);
      meta.block_chunk[num_blocks] = static_cast<int32_t>(c);
      if (++num_blocks == Meta::kMaxBlocks) {
        flush();
        if (c + 1 < chunks) {
          // The rest of this tensor goes into the next launch, as its first slot.
          for (int d = 0; d < Depth; ++d) meta.addresses[d][0] = meta.addresses[d][slot];
          meta.sizes[0] = n;
          meta.args[0] = meta.args[slot];
          slot = 0;
          num_tensors = 1;
        } else {
          num_tensors = 0;
        }
      }
    }
    if (num_tensors == Meta::kMaxTensors) {
      if (num_blocks > 0) flush();
      num_tensors = 0;
    }
  }
  if (num_blocks > 0) flush();
  return launched;
}

// ---------------------------------------------------------------------------------------------
// Device side: walking one chunk.

// Calls body(contiguous, start, stride, end) for each of this thread's fragments of a chunk of
// n elements. A fragment is kIlp lanes: with contiguous = std::true_type the kIlp consecutive
// elements at `start` (start a multiple of kIlp, so a vector access is aligned when the chunk's
// pointers are); with std::false_type the elements start, start + stride, ... that are < end
// (the others are padding the body must not store). `vector_ok` says every pointer of the chunk
// is aligned for vector access; otherwise, and for the last n % kIlp elements, fragments are
// strided so that consecutive threads still touch consecutive elements (coalesced).
template <typename Body>
__device__ __forceinline__ void for_each_fragment(int n, bool vector_ok, Body&& body) {
  const int tid = static_cast<int>(threadIdx.x);
  const int threads = static_cast<int>(blockDim.x);
  if (vector_ok) {
    const int vectors = n / kIlp;
    for (int v = tid; v < vectors; v += threads) body(std::true_type{}, v * kIlp, 1, n);
    const int tail = vectors * kIlp;  // fewer than kIlp elements left: one strided fragment
    if (tail + tid < n) body(std::false_type{}, tail + tid, threads, n);
  } else {
    for (int start = tid; start < n; start += threads * kIlp) {
      body(std::false_type{}, start, threads, n);
    }
  }
}

// kIlp elements of T in one aligned access (float: 16 bytes, bfloat16: 8 bytes).
template <typename T>
struct alignas(sizeof(T) * kIlp) Pack {
  T v[kIlp];
};

template <typename T>
__device__ __forceinline__ bool pack_aligned(const T* p) {
  return reinterpret_cast<uintptr_t>(p) % sizeof(Pack<T>) == 0;
}

// Storage <-> fp32 for the storage types the kernels support. bfloat16 widens exactly and
// narrows with round-to-nearest-even (the rounding of c10::BFloat16(float) on the CPU).
template <typename T>
__device__ __forceinline__ float to_float(T x);
template <typename T>
__device__ __forceinline__ T from_float(float x);

template <>
__device__ __forceinline__ float to_float<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ float from_float<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 x) {
  return __bfloat162float(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// Loads one fragment as fp32 (padding lanes of a strided fragment read as 0).
template <typename T, bool kContiguous>
__device__ __forceinline__ void load_lanes(float (&r)[kIlp], const T* p,
                                           std::integral_constant<bool, kContiguous>, int start,
                                           int stride, int end) {
  if constexpr (kContiguous) {
    const Pack<T> pk = *reinterpret_cast<const Pack<T>*>(p + start);
#pragma unroll
    for (int k = 0; k < kIlp; ++k) r[k] = to_float<T>(pk.v[k]);
  } else {
#pragma unroll
    for (int k = 0; k < kIlp; ++k) {
      const int i = start + k * stride;
      r[k] = i < end ? to_float<T>(p[i]) : 0.0f;
    }
  }
}

// Stores one fragment, converting from fp32 (padding lanes of a strided fragment are skipped).
template <typename T, bool kContiguous>
__device__ __forceinline__ void store_lanes(T* p, const float (&r)[kIlp],
                                            std::integral_constant<bool, kContiguous>, int start,
                                            int stride, int end) {
  if constexpr (kContiguous) {
    Pack<T> pk;
#pragma unroll
    for (int k = 0; k < kIlp; ++k) pk.v[k] = from_float<T>(r[k]);
    *reinterpret_cast<Pack<T>*>(p + start) = pk;
  } else {
#pragma unroll
    for (int k = 0; k < kIlp; ++k) {
      const int i = start + k * stride;
      if (i < end) p[i] = from_float<T>(r[k]);
    }
  }
}

}  // namespace crucible::mta
