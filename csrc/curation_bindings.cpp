// The pybind11 module curation._kernels: crucible's torch-free curation kernels (shingling,
// hashing, MinHash signatures, LSH band keys, exact shingle Jaccard). Every entry point checks
// its arrays (dtype, shape, contiguity, offsets monotone and inside the data) and raises
// ValueError naming the argument; the heavy loops run with the GIL released.
// curation/dedup/minhash.py is the typed Python wrapper over Arrow columns.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "minhash/band_keys.h"
#include "minhash/jaccard.h"
#include "minhash/permute.h"
#include "minhash/signatures.h"
#include "minhash/string_column.h"
#include "minhash/tokenize.h"

namespace py = pybind11;
namespace mh = crucible::minhash;

namespace {

[[noreturn]] void fail(const std::string& message) { throw py::value_error(message); }

std::string dtype_name(const py::array& a) { return py::str(a.dtype()).cast<std::string>(); }

// `name` must be a C-contiguous numpy array of T with `ndim` dimensions.
template <class T>
py::array check_array(const py::object& obj, const char* name, int ndim, const char* type) {
  if (!py::isinstance<py::array>(obj)) {
    fail(std::string(name) + " must be a numpy array of " + type + " (got " +
         py::str(py::type::of(obj).attr("__name__")).cast<std::string>() + ")");
  }
  py::array a = py::reinterpret_borrow<py::array>(obj);
  if (!a.dtype().is(py::dtype::of<T>())) {
    fail(std::string(name) + " must have dtype " + type + " (got " + dtype_name(a) +
         "); convert it with .astype(np." + type + ")");
  }
  if (a.ndim() != ndim) {
    fail(std::string(name) + " must be " + std::to_string(ndim) + "-dimensional (got " +
         std::to_string(a.ndim()) + " dimensions)");
  }
  if (!(a.flags() & py::array::c_style)) {
    fail(std::string(name) + " must be C-contiguous; pass np.ascontiguousarray(" + name + ")");
  }
  return a;
}

template <class O>
void check_offsets(const O* offsets, size_t count, size_t data_size) {
  if (offsets[0] < 0) fail("offsets[0] is negative (" + std::to_string(offsets[0]) + ")");
  for (size_t i = 1; i < count; ++i) {
    if (offsets[i] < offsets[i - 1]) {
      fail("offsets must be non-decreasing: offsets[" + std::to_string(i) + "] = " +
           std::to_string(offsets[i]) + " < offsets[" + std::to_string(i - 1) + "] = " +
           std::to_string(offsets[i - 1]));
    }
  }
  if (static_cast<uint64_t>(offsets[count - 1]) > data_size) {
    fail("offsets end at " + std::to_string(offsets[count - 1]) + " but data holds only " +
         std::to_string(data_size) + " bytes");
  }
}

// The documents of an Arrow string (int32 offsets) or large_string (int64 offsets) column.
// The arrays must outlive the returned view.
mh::StringColumn string_column(const py::object& offsets_obj, const py::object& data_obj) {
  py::array data = check_array<uint8_t>(data_obj, "data", 1, "uint8");
  if (!py::isinstance<py::array>(offsets_obj)) {
    fail("offsets must be a numpy array of int32 or int64 (got " +
         py::str(py::type::of(offsets_obj).attr("__name__")).cast<std::string>() + ")");
  }
  py::array off = py::reinterpret_borrow<py::array>(offsets_obj);
  const bool is64 = off.dtype().is(py::dtype::of<int64_t>());
  if (!is64 && !off.dtype().is(py::dtype::of<int32_t>())) {
    fail("offsets must have dtype int32 (Arrow string) or int64 (large_string) (got " +
         dtype_name(off) + ")");
  }
  if (is64) {
    check_array<int64_t>(offsets_obj, "offsets", 1, "int64");
  } else {
    check_array<int32_t>(offsets_obj, "offsets", 1, "int32");
  }
  if (off.shape(0) < 1) fail("offsets must hold n_docs + 1 >= 1 values (got 0)");
  mh::StringColumn col;
  col.rows = static_cast<size_t>(off.shape(0) - 1);
  col.data = static_cast<const uint8_t*>(data.data());
  const size_t data_size = static_cast<size_t>(data.shape(0));
  if (is64) {
    col.offsets64 = static_cast<const int64_t*>(off.data());
    check_offsets(col.offsets64, col.rows + 1, data_size);
  } else {
    col.offsets32 = static_cast<const int32_t*>(off.data());
    check_offsets(col.offsets32, col.rows + 1, data_size);
  }
  return col;
}

size_t check_ngram(int64_t ngram) {
  if (ngram < 1) fail("ngram must be >= 1 (got " + std::to_string(ngram) + ")");
  return static_cast<size_t>(ngram);
}

int check_threads(int64_t threads) {
  if (threads < 0) fail("threads must be >= 0, 0 meaning every core (got " +
                        std::to_string(threads) + ")");
  return static_cast<int>(threads);
}

mh::ShingleMode shingle_mode(bool char_mode) {
  return char_mode ? mh::ShingleMode::kChar : mh::ShingleMode::kWord;
}

py::array_t<uint64_t> minhash(const py::object& offsets, const py::object& data,
                              const py::object& a_obj, const py::object& b_obj, int64_t ngram,
                              bool char_mode, bool sha1, int64_t threads) {
  const mh::StringColumn docs = string_column(offsets, data);
  py::array a = check_array<uint64_t>(a_obj, "a", 1, "uint64");
  py::array b = check_array<uint64_t>(b_obj, "b", 1, "uint64");
  if (a.shape(0) < 1) fail("a must hold at least one permutation (got 0)");
  if (a.shape(0) != b.shape(0)) {
    fail("a and b must have the same length (got " + std::to_string(a.shape(0)) + " and " +
         std::to_string(b.shape(0)) + ")");
  }
  const size_t n = check_ngram(ngram);
  const int nthreads = check_threads(threads);
  const size_t num_perm = static_cast<size_t>(a.shape(0));
  const mh::Permutations perms(static_cast<const uint64_t*>(a.data()),
                               static_cast<const uint64_t*>(b.data()), num_perm,
                               sha1 ? mh::HashKind::kSha1 : mh::HashKind::kXxh64);
  py::array_t<uint64_t> out({static_cast<py::ssize_t>(docs.rows),
                             static_cast<py::ssize_t>(num_perm)});
  uint64_t* dst = out.mutable_data();
  {
    py::gil_scoped_release nogil;
    mh::minhash_signatures(docs, perms, n, shingle_mode(char_mode), nthreads, dst);
  }
  return out;
}

py::array_t<uint64_t> band_keys(const py::object& sig_obj, int64_t bands, int64_t rows,
                                int64_t threads) {
  py::array sig = check_array<uint64_t>(sig_obj, "signatures", 2, "uint64");
  if (bands < 1 || rows < 1) {
    fail("bands and rows must be >= 1 (got bands=" + std::to_string(bands) +
         ", rows=" + std::to_string(rows) + ")");
  }
  const size_t num_perm = static_cast<size_t>(sig.shape(1));
  if (static_cast<uint64_t>(bands) * static_cast<uint64_t>(rows) > num_perm) {
    fail(std::to_string(bands) + " bands x " + std::to_string(rows) + " rows need " +
         std::to_string(bands * rows) + " signature values, the signatures have " +
         std::to_string(num_perm));
  }
  const int nthreads = check_threads(threads);
  const size_t n = static_cast<size_t>(sig.shape(0));
  py::array_t<uint64_t> out({static_cast<py::ssize_t>(n), static_cast<py::ssize_t>(bands)});
  const auto* src = static_cast<const uint64_t*>(sig.data());
  uint64_t* dst = out.mutable_data();
  {
    py::gil_scoped_release nogil;
    mh::band_keys(src, n, num_perm, static_cast<size_t>(bands), static_cast<size_t>(rows),
                  nthreads, dst);
  }
  return out;
}

py::tuple shingle_hashes(const py::object& offsets, const py::object& data, int64_t ngram,
                         bool char_mode, int64_t threads) {
  const mh::StringColumn docs = string_column(offsets, data);
  const size_t n = check_ngram(ngram);
  const int nthreads = check_threads(threads);
  const mh::ShingleMode mode = shingle_mode(char_mode);
  py::array_t<int64_t> doc_offsets(static_cast<py::ssize_t>(docs.rows + 1));
  int64_t* off = doc_offsets.mutable_data();
  {
    py::gil_scoped_release nogil;
    mh::shingle_offsets(docs, n, mode, nthreads, off);
  }
  py::array_t<uint64_t> hashes(static_cast<py::ssize_t>(off[docs.rows]));
  uint64_t* dst = hashes.mutable_data();
  {
    py::gil_scoped_release nogil;
    mh::shingle_hashes(docs, n, mode, nthreads, off, dst);
  }
  return py::make_tuple(doc_offsets, hashes);
}

py::array_t<double> jaccard_pairs(const py::object& offsets, const py::object& data,
                                  const py::object& left_obj, const py::object& right_obj,
                                  int64_t ngram, bool char_mode, int64_t threads) {
  const mh::StringColumn docs = string_column(offsets, data);
  py::array left = check_array<int64_t>(left_obj, "left", 1, "int64");
  py::array right = check_array<int64_t>(right_obj, "right", 1, "int64");
  if (left.shape(0) != right.shape(0)) {
    fail("left and right must have the same length (got " + std::to_string(left.shape(0)) +
         " and " + std::to_string(right.shape(0)) + ")");
  }
  const size_t n = check_ngram(ngram);
  const int nthreads = check_threads(threads);
  const size_t pairs = static_cast<size_t>(left.shape(0));
  const auto* l = static_cast<const int64_t*>(left.data());
  const auto* r = static_cast<const int64_t*>(right.data());
  for (size_t k = 0; k < pairs; ++k) {
    for (const auto& [name, idx] : {std::pair{"left", l[k]}, std::pair{"right", r[k]}}) {
      if (idx < 0 || static_cast<uint64_t>(idx) >= docs.rows) {
        fail(std::string(name) + "[" + std::to_string(k) + "] = " + std::to_string(idx) +
             " is not a document index (there are " + std::to_string(docs.rows) + ")");
      }
    }
  }
  py::array_t<double> out(static_cast<py::ssize_t>(pairs));
  double* dst = out.mutable_data();
  {
    py::gil_scoped_release nogil;
    mh::jaccard_pairs(docs, l, r, pairs, n, shingle_mode(char_mode), nthreads, dst);
  }
  return out;
}

}  // namespace

PYBIND11_MODULE(_kernels, m) {
  m.doc() = "crucible's curation kernels (no torch): shingling, xxh64/sha1 hashing, MinHash "
            "signatures, LSH band keys and exact shingle Jaccard, bit-exact with "
            "curation.dedup.reference";
  m.def("minhash", &minhash, py::arg("offsets"), py::arg("data"), py::arg("a"), py::arg("b"),
        py::arg("ngram"), py::arg("char_mode"), py::arg("sha1"), py::arg("threads"),
        "MinHash signatures (n_docs, num_perm) uint64 of the documents data[offsets[i]:"
        "offsets[i+1]]; documents without shingles get the all-maximum signature.");
  m.def("band_keys", &band_keys, py::arg("signatures"), py::arg("bands"), py::arg("rows"),
        py::arg("threads"),
        "LSH band keys (n, bands) uint64: xxh64 of each band's rows, seed = band index.");
  m.def("shingle_hashes", &shingle_hashes, py::arg("offsets"), py::arg("data"),
        py::arg("ngram"), py::arg("char_mode"), py::arg("threads"),
        "(doc_offsets int64 (n+1), hashes uint64): xxh64 of every shingle, in document order.");
  m.def("jaccard_pairs", &jaccard_pairs, py::arg("offsets"), py::arg("data"), py::arg("left"),
        py::arg("right"), py::arg("ngram"), py::arg("char_mode"), py::arg("threads"),
        "Exact Jaccard similarity (float64) of the shingle sets of documents left[k], right[k].");
  m.def("simd_level", &mh::simd_level,
        "The SIMD path of the permutation kernel: 'avx512', 'avx2' or 'scalar' "
        "(capped by the environment variable CRUCIBLE_MINHASH_SIMD).");
}
