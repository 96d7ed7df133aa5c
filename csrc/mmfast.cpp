// Every mmfast operator schema, in one place, and the pybind11 module: build facts, and the
// functions of Python objects rather than tensors (common/python_io.h).
// Kernels live in csrc/cpu/<op>.cpp and csrc/cuda/<op>.cu; fakes and autograd in mmfast/ops/<op>.py.
#include <ATen/Parallel.h>
#include <pybind11/pybind11.h>
#include <torch/library.h>
#include <torch/version.h>

#include <string>

#include "common/checks.h"
#include "common/python_io.h"

TORCH_LIBRARY(mmfast, m) {
  // Each family's fake kernels and autograd live in mmfast/ops/<family>.py; naming the module
  // before its schemas lets torch import it (and check it) when a fake is needed.
  m.set_python_module("mmfast.ops.pq_encode");
  // DESIGN 2.1. codebooks [R*M, C, D/M]; perm [R, D] or None; codes [B, R*M] (uint8/int16/int32 by C).
  m.def("pq_encode(Tensor x, Tensor codebooks, Tensor? perm) -> Tensor");

  m.set_python_module("mmfast.ops.bilinear_fusion");
  // DESIGN 2.2. u [B, P], v [B, Q], weight [K, P, Q], bias [K] or None; gate "none", "first"
  // (sigmoid on u) or "second" (sigmoid on v); out [B, K].
  m.def("bilinear_fusion(Tensor u, Tensor v, Tensor weight, Tensor? bias, str gate) -> Tensor");
  // Gradients for u, v, weight and bias (the last is grad_out summed over the batch).
  m.def("_bilinear_fusion_backward(Tensor grad_out, Tensor u, Tensor v, Tensor weight, str gate)"
        " -> (Tensor, Tensor, Tensor, Tensor)");

  m.set_python_module("mmfast.ops.cacnet");
  // DESIGN 2.4. params: the 15 CACNet tensors in mmfast.ops.cacnet.PARAM_NAMES order, weights
  // [in, out]. hidden1, hidden2: [2, B, H] post-activation (image half first); layer1:
  // [4, B, H] the layer-1 blocks x'w(x',h'), x''w(x'',h''), x'w(x',h''), x''w(x'',h') before
  // bias; losses [B] (mean BCE over classes); beta a 0-dim tensor. Grad lists: see the ops file.
  m.def("cacnet_forward(Tensor x_img, Tensor x_txt, Tensor[] params, str activation) -> "
        "(Tensor logits, Tensor hidden1, Tensor hidden2)");
  m.def("_cacnet_forward_backward(Tensor grad_logits, Tensor x_img, Tensor x_txt, "
        "Tensor[] params, Tensor hidden1, Tensor hidden2, str activation, bool input_grads) -> "
        "(Tensor grad_x_img, Tensor grad_x_txt, Tensor[] grad_params)");
  m.def("cacnet_phase1(Tensor x_img, Tensor x_txt, Tensor targets, Tensor[] params, "
        "str activation) -> (Tensor passive_image_loss, Tensor passive_text_loss, Tensor[] grads)");
  m.def("cacnet_phase2_forward(Tensor x_img, Tensor x_txt, Tensor targets, Tensor[] params, "
        "str activation) -> (Tensor full_loss, Tensor passive_image_loss, "
        "Tensor passive_text_loss, Tensor beta, Tensor layer1, Tensor hidden1, Tensor hidden2, "
        "Tensor logits)");
  m.def("cacnet_phase2_full_backward(Tensor x_img, Tensor x_txt, Tensor targets, "
        "Tensor[] params, Tensor hidden1, Tensor hidden2, Tensor logits, str activation) -> "
        "Tensor[]");
  m.def("cacnet_phase2_cross_active(Tensor x_img, Tensor x_txt, Tensor targets, "
        "Tensor[] params, Tensor layer1, str activation, bool train_output) -> "
        "(Tensor cross_image_loss, Tensor cross_text_loss, Tensor[] grads)");

  m.set_python_module("mmfast.ops.cross_attention_cosine");
  // DESIGN 2.3. V [B, Kr, d], T [B, N, d], t_lengths [B] int64 or None
  // -> v_bar [B, Kr], t_bar [B, N].
  m.def("cross_attention_cosine(Tensor V, Tensor T, Tensor? t_lengths, float scale) -> "
        "(Tensor, Tensor)");
  // Gradients for V and T, recomputed from the inputs alone (nothing else is saved).
  m.def("_cross_attention_cosine_backward(Tensor grad_v_bar, Tensor grad_t_bar, Tensor V, "
        "Tensor T, Tensor? t_lengths, float scale) -> (Tensor, Tensor)");

  m.set_python_module("mmfast.ops.fasttext_sgd");
  // DESIGN 3.1. A training step, not a differentiable function: per-example SGD on softmax
  // cross-entropy (labels [B] int64) or one-vs-all (labels [B, K] float 0/1) over the bags
  // indices[offsets[b]:offsets[b+1]], updating embedding [V, H], weight [K, H] and bias [K] in
  // place; per_sample_weights [nnz] or None (bag mean);
  // the learning rate falls linearly from lr_start to lr_end; threads None: all intra-op threads;
  // order [S] int64 or None: the examples in the order they train (a shuffle without a gather;
  // None: 0..B-1). Returns losses [S], each step's loss before its own update.
  m.def("fasttext_sgd_(Tensor(a!) embedding, Tensor(b!) weight, Tensor(c!)? bias, "
        "Tensor indices, Tensor offsets, Tensor? per_sample_weights, Tensor labels, "
        "float lr_start, float lr_end, int? threads=None, Tensor? order=None) -> Tensor");

  m.set_python_module("mmfast.ops.hash_text");
  // DESIGN 3.1's TextHasher.encode. text: the texts' UTF-8 bytes end to end (uint8), text i at
  // [text_offsets[i], text_offsets[i + 1]); fold [0x110000] int32 (mmfast.ops.hash_text.
  // fold_table); the vocabulary's words likewise in vocabulary/vocabulary_offsets, looked up
  // through vocabulary_table (_text_vocabulary_table). ids [nnz] int64, offsets [n] (each text's
  // first id), fallback [n] bool: texts to tokenize in Python (they get no ids here).
  m.def("hash_text(Tensor text, Tensor text_offsets, Tensor fold, Tensor vocabulary, "
        "Tensor vocabulary_offsets, Tensor vocabulary_table, int buckets, int ngrams) -> "
        "(Tensor ids, Tensor offsets, Tensor fallback)");
  m.def("_text_vocabulary_table(Tensor vocabulary, Tensor vocabulary_offsets) -> Tensor");
  // TextHasher.build's counts: distinct tokens, most frequent first, then in code-point order.
  m.def("count_words(Tensor text, Tensor text_offsets, Tensor fold) -> (Tensor words, "
        "Tensor word_offsets, Tensor counts, Tensor fallback)");
}

namespace {

std::string cpu_isa() {
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
  return "avx512";
#elif defined(__AVX2__) && defined(__FMA__)
  return "avx2+fma";
#elif defined(__AVX__)
  return "avx";
#elif defined(__SSE4_2__)
  return "sse4.2";
#elif defined(__ARM_FEATURE_SVE)
  return "sve";
#elif defined(__ARM_NEON)
  return "neon";
#else
  return "generic";
#endif
}

std::string compiler() {
#if defined(__clang__)
  return std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  return std::string("gcc ") + __VERSION__;
#else
  return "unknown";
#endif
}

}  // namespace

PYBIND11_MODULE(_C, module) {
  namespace py = pybind11;
  module.doc() = "mmfast native extension: operators are registered under torch.ops.mmfast";
  module.def("build_info", [] {
    py::dict info;
    info["version"] = MMFAST_VERSION;
    info["torch_built_with"] = TORCH_VERSION;
    info["compiler"] = compiler();
    info["cxx_standard"] = static_cast<long>(__cplusplus);
    info["cpu_isa"] = cpu_isa();
    info["cpu_arch_flag"] = MMFAST_CPU_ARCH;
#if defined(_OPENMP)
    info["openmp"] = true;
#else
    info["openmp"] = false;
#endif
#if defined(MMFAST_WITH_CUDA)
    info["cuda_kernels"] = true;
#else
    info["cuda_kernels"] = false;
#endif
    info["cuda_architectures"] = MMFAST_CUDA_ARCHS;
    return info;
  }, "Facts fixed when the extension was compiled.");
  module.def("_set_full_checks", [](bool full) { mmfast::full_checks_flag().store(full); },
             "The kernels' side of mmfast.set_checks: true for \"full\", false for \"shapes\".");
  module.def("read_jsonl_records", &mmfast::read_jsonl_records,
             "A chunk of JSONL manifest lines as records (mmfast.data.manifest), or None.");
  module.def("json_rows", &mmfast::json_rows,
             "classify's JSONL rows of a batch (mmfast.predictions.rows), or None.");
  module.def("intra_op_threads", [] { return at::get_num_threads(); },
             "Threads at::parallel_for uses in mmfast's CPU kernels.");
}
