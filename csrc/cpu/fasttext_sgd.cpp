// fasttext_sgd_ on the CPU (DESIGN 3.1): fastText's training loop as one op. Each example is one
// SGD step on softmax cross-entropy (labels [B], class indices) or on one-vs-all, the sum of K
// binary logistic losses (labels [B, K], 0/1 targets: fastText's -loss ova), applied at once to
// the embedding rows of its bag, the classifier and the bias, with the learning rate falling
// linearly over the examples.
//
// Threads run Hogwild, as fastText does: the examples are cut into one contiguous chunk per
// thread, and every thread reads and writes the shared parameters without locks. Two threads may
// update the same embedding row or classifier row at once, and then one update can be lost or a
// read can see a half-applied one. These races are benign for sparse SGD (Recht et al., "Hogwild!",
// 2011): the bags rarely overlap and a lost update is a little noise in the gradient. With one
// thread the op is exactly sequential SGD and matches mmfast/reference/fasttext_sgd.py.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <vector>

#include "common/checks.h"
#include "common/simd.h"

namespace mmfast {
namespace {

using simd::kLanes;
using simd::vfloat;

constexpr const char* kOp = "fasttext_sgd_";
constexpr int64_t kPublishEvery = 32;  // examples between merges of a thread's classifier

// y += a * x over n floats. A row's last n % kLanes floats take one masked vector: at dim 50 a
// scalar tail loop cost as much as the rest of the row (an epoch at dim 50 was slower than at 64).
inline void axpy(int64_t n, float a, const float* __restrict x, float* __restrict y) {
  const vfloat av = simd::broadcast(a);
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    simd::store(y + i, simd::load(y + i) + av * simd::load(x + i));
  }
  if (i < n) {
    simd::store_first(y + i, simd::load_first(y + i, n - i) + av * simd::load_first(x + i, n - i),
                      n - i);
  }
}

// x[i] = e^(x[i] - shift) over n floats (simd::exp, about 1 ulp); returns their sum.
inline float exp_shifted(float* x, int64_t n, float shift) {
  const vfloat shift_v = simd::broadcast(shift);
  vfloat total{};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    const vfloat e = simd::exp(simd::load(x + i) - shift_v);
    simd::store(x + i, e);
    total += e;
  }
  if (i < n) {
    // the lanes past n hold e^(0 - shift), no class's: only the first n - i count
    const vfloat e = simd::exp(simd::load_first(x + i, n - i) - shift_v);
    simd::store_first(x + i, e, n - i);
    for (int64_t lane = 0; lane < n - i; ++lane) total[lane] += e[lane];
  }
  return simd::sum(total);
}

// One pass over a classifier row: grad_hidden += g * row with the row as it was, then
// row -= lr * g * hidden, so the row is read and written once.
inline void classifier_row_step(int64_t n, float g, float lr, const float* __restrict hidden,
                                float* __restrict row, float* __restrict grad_hidden) {
  const vfloat gv = simd::broadcast(g), step = simd::broadcast(-lr * g);
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    const vfloat w = simd::load(row + i);
    simd::store(grad_hidden + i, simd::load(grad_hidden + i) + gv * w);
    simd::store(row + i, w + step * simd::load(hidden + i));
  }
  if (i < n) {
    const int64_t rest = n - i;
    const vfloat w = simd::load_first(row + i, rest);
    simd::store_first(grad_hidden + i, simd::load_first(grad_hidden + i, rest) + gv * w, rest);
    simd::store_first(row + i, w + step * simd::load_first(hidden + i, rest), rest);
  }
}

struct Problem {
  float* embedding;           // [V, H]
  float* weight;              // [K, H]
  float* bias;                // [K] or nullptr
  const int64_t* indices;     // [nnz]
  const int64_t* offsets;     // [B + 1]
  const float* bag_weights;   // [nnz] or nullptr: 1 / bag size
  const int64_t* labels;      // [B] class indices (softmax), or nullptr
  const float* targets;       // [B, K] 0/1 targets (one-vs-all), or nullptr
  const int64_t* order;       // [S] the examples in the order they train, or nullptr: 0..B-1
  float* losses;              // [S], in training order
  int64_t dim, classes;
};

// A thread's private copy of the shared classifier (weight, then bias), and the shared values as
// of the last merge, so that publish() adds exactly this thread's change since then.
class PrivateClassifier {
 public:
  PrivateClassifier(float* shared_weight, float* shared_bias, int64_t weight_size, int64_t classes)
      : shared_weight_(shared_weight), shared_bias_(shared_bias), weight_size_(weight_size),
        bias_size_(shared_bias ? classes : 0), local_(weight_size_ + bias_size_),
        snapshot_(local_.size()) {
    refresh();
  }
  float* weight() { return local_.data(); }
  float* bias() { return shared_bias_ ? local_.data() + weight_size_ : nullptr; }

  void publish() {
    merge(shared_weight_, 0, weight_size_);
    if (shared_bias_) merge(shared_bias_, weight_size_, bias_size_);
  }

 private:
  void merge(float* shared, int64_t at, int64_t n) {
    for (int64_t i = 0; i < n; ++i) shared[i] += local_[at + i] - snapshot_[at + i];
    std::copy(shared, shared + n, local_.begin() + at);
    std::copy(shared, shared + n, snapshot_.begin() + at);
  }
  void refresh() {
    std::copy(shared_weight_, shared_weight_ + weight_size_, local_.begin());
    if (shared_bias_) {
      std::copy(shared_bias_, shared_bias_ + bias_size_, local_.begin() + weight_size_);
    }
    snapshot_ = local_;
  }

  float* shared_weight_;
  float* shared_bias_;
  int64_t weight_size_, bias_size_;
  std::vector<float> local_, snapshot_;
};

// The bags of a block of consecutive steps, copied end to end in training order. With a
// shuffled `order` each step's bag lies anywhere in an index array of hundreds of megabytes, and
// inside the SGD loop, whose steps depend on each other, every bag cost its cache and TLB misses
// one after another; a block's copies are independent loads that overlap, and the loop then reads
// its bags in sequence. On 1M documents of 32 ids at dim 50 an epoch took 3.1 s reading the bags
// in place and 2.0 s reading a permuted copy.
class BagBlock {
 public:
  static constexpr int64_t kSteps = 4096;

  explicit BagBlock(const Problem& p) : p_(p) {}

  // Copies the bags of steps [begin, end).
  void gather(int64_t begin, int64_t end) {
    starts_.assign(1, 0);
    ids_.clear();
    weights_.clear();
    for (int64_t step = begin; step < end; ++step) {
      const int64_t b = p_.order[step], first = p_.offsets[b], last = p_.offsets[b + 1];
      ids_.insert(ids_.end(), p_.indices + first, p_.indices + last);
      if (p_.bag_weights) weights_.insert(weights_.end(), p_.bag_weights + first,
                                          p_.bag_weights + last);
      starts_.push_back(static_cast<int64_t>(ids_.size()));
    }
  }
  // Step `begin + i`'s bag: its ids, their weights (nullptr: mean), and how many.
  const int64_t* ids(int64_t i) const { return ids_.data() + starts_[i]; }
  const float* weights(int64_t i) const {
    return p_.bag_weights ? weights_.data() + starts_[i] : nullptr;
  }
  int64_t size(int64_t i) const { return starts_[i + 1] - starts_[i]; }

 private:
  const Problem& p_;
  std::vector<int64_t> starts_, ids_;
  std::vector<float> weights_;
};

// SGD over the steps [begin, end), step s training example order[s] (or s), the learning rate
// going from lr_start at `begin` to lr_end at `end` (excluded) in equal steps. losses[s] is the
// loss of step s's example before its own update. With `private_classifier` the classifier updates go to a thread-local copy merged
// into the shared one every kPublishEvery examples and at the end.
void train_chunk(Problem p, int64_t begin, int64_t end, double lr_start, double lr_end,
                 bool private_classifier) {
  const int64_t dim = p.dim, classes = p.classes;
  std::optional<PrivateClassifier> classifier;
  if (private_classifier) {
    classifier.emplace(p.weight, p.bias, classes * dim, classes);
    p.weight = classifier->weight();
    p.bias = classifier->bias();
  }
  std::vector<float> hidden(dim), grad_hidden(dim), logits(classes);
  const double lr_slope = (lr_end - lr_start) / double(std::max<int64_t>(end - begin, 1));
  BagBlock block(p);
  int64_t block_begin = begin, block_end = begin;
  for (int64_t step = begin; step < end; ++step) {
    const float lr = static_cast<float>(lr_start + lr_slope * double(step - begin));
    const int64_t b = p.order ? p.order[step] : step;
    const int64_t* bag;
    const float* bag_weights;
    int64_t bag_size;
    if (p.order) {  // from the block's copies
      if (step == block_end) {
        block_begin = step;
        block_end = std::min(end, step + BagBlock::kSteps);
        block.gather(block_begin, block_end);
      }
      bag = block.ids(step - block_begin);
      bag_weights = block.weights(step - block_begin);
      bag_size = block.size(step - block_begin);
    } else {  // in place: the steps read the bags in order
      bag = p.indices + p.offsets[b];
      bag_weights = p.bag_weights ? p.bag_weights + p.offsets[b] : nullptr;
      bag_size = p.offsets[b + 1] - p.offsets[b];
    }
    const float mean_weight = bag_size > 0 ? 1.f / float(bag_size) : 0.f;

    std::fill(hidden.begin(), hidden.end(), 0.f);
    for (int64_t j = 0; j < bag_size; ++j) {
      const float w = bag_weights ? bag_weights[j] : mean_weight;
      axpy(dim, w, p.embedding + bag[j] * dim, hidden.data());
    }

    for (int64_t k = 0; k < classes; ++k) {
      logits[k] = simd::dot(p.weight + k * dim, hidden.data(), dim);
      if (p.bias) logits[k] += p.bias[k];
    }
    // logits becomes d loss / d logits: softmax - onehot, or sigmoid - target per label.
    if (p.targets) {
      const float* target = p.targets + b * classes;
      float loss = 0.f;
      for (int64_t k = 0; k < classes; ++k) {
        const float z = logits[k];
        // -t log sigmoid(z) - (1 - t) log(1 - sigmoid(z)), without overflow for large |z|
        loss += std::max(z, 0.f) - z * target[k] + std::log1p(std::exp(-std::abs(z)));
        logits[k] = 1.f / (1.f + std::exp(-z)) - target[k];
      }
      p.losses[step] = loss;
    } else {
      const float max_logit = *std::max_element(logits.begin(), logits.end());
      const int64_t label = p.labels[b];
      const float label_logit = logits[label];
      // one exp per class, kLanes at a time: the probabilities are the exps over their sum
      const float sum = exp_shifted(logits.data(), classes, max_logit);
      p.losses[step] = max_logit + std::log(sum) - label_logit;
      const float inverse_sum = 1.f / sum;
      for (int64_t k = 0; k < classes; ++k) logits[k] *= inverse_sum;
      logits[label] -= 1.f;
    }

    std::fill(grad_hidden.begin(), grad_hidden.end(), 0.f);
    for (int64_t k = 0; k < classes; ++k) {
      const float g = logits[k];
      classifier_row_step(dim, g, lr, hidden.data(), p.weight + k * dim, grad_hidden.data());
      if (p.bias) p.bias[k] -= lr * g;
    }
    for (int64_t j = 0; j < bag_size; ++j) {
      const float w = bag_weights ? bag_weights[j] : mean_weight;
      axpy(dim, -lr * w, grad_hidden.data(), p.embedding + bag[j] * dim);
    }
    if (classifier && (step - begin + 1) % kPublishEvery == 0) classifier->publish();
  }
  if (classifier) classifier->publish();
}

// A CPU tensor of `dtype` with `ndim` dimensions.
void check_cpu_tensor(const char* name, const at::Tensor& t, at::ScalarType dtype, int64_t ndim) {
  TORCH_CHECK_VALUE(t.device().is_cpu(), kOp, ": ", name, " must be a CPU tensor, got ",
                    t.device());
  TORCH_CHECK_TYPE(t.scalar_type() == dtype, kOp, ": ", name, " must be ", dtype, ", got ",
                   t.scalar_type());
  MMFAST_CHECK_DIM(kOp, name, t, ndim);
}

// A parameter: float32, and contiguous because it is updated in place (a contiguous copy would
// leave the caller's tensor untouched).
void check_parameter(const char* name, const at::Tensor& t, int64_t ndim) {
  check_cpu_tensor(name, t, at::kFloat, ndim);
  TORCH_CHECK_VALUE(t.is_contiguous(), kOp, ": ", name, " must be contiguous (it is updated in "
                    "place), got strides ", t.strides());
}

// Range checks over whole tensors, so a bad id is an error before any parameter changes.
void check_range(const char* name, const at::Tensor& values, int64_t limit) {
  if (values.numel() == 0) return;
  const auto [low, high] = min_max(values);
  TORCH_CHECK_INDEX(low >= 0 && high < limit, kOp, ": ", name, " must be in [0, ", limit,
                    "), got values in [", low, ", ", high, "]");
}

at::Tensor fasttext_sgd_cpu(at::Tensor& embedding, at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, const at::Tensor& indices,
                            const at::Tensor& offsets,
                            const std::optional<at::Tensor>& per_sample_weights,
                            const at::Tensor& labels, double lr_start, double lr_end,
                            std::optional<int64_t> threads,
                            const std::optional<at::Tensor>& order) {
  check_parameter("embedding", embedding, 2);
  check_parameter("weight", weight, 2);
  const int64_t vocabulary = embedding.size(0), dim = embedding.size(1), classes = weight.size(0);
  TORCH_CHECK_VALUE(weight.size(1) == dim, kOp, ": weight must have shape [K, ", dim,
                    "] to match embedding, got ", weight.sizes());
  TORCH_CHECK_VALUE(classes > 0, kOp, ": weight must have at least one class, got shape ",
                    weight.sizes());
  if (bias) {
    check_parameter("bias", *bias, 1);
    TORCH_CHECK_VALUE(bias->size(0) == classes, kOp, ": bias must have shape [", classes,
                      "], got ", bias->sizes());
  }
  check_cpu_tensor("indices", indices, at::kLong, 1);
  check_cpu_tensor("offsets", offsets, at::kLong, 1);
  // labels [B] int64: softmax over classes; [B, K] float32 0/1 targets: one-vs-all
  const bool one_vs_all = labels.dim() == 2;
  if (one_vs_all) {
    check_cpu_tensor("labels", labels, at::kFloat, 2);
    TORCH_CHECK_VALUE(labels.size(1) == classes, kOp, ": one-vs-all labels must have shape [B, ",
                      classes, "] (K = weight.size(0)), got ", labels.sizes());
  } else {
    check_cpu_tensor("labels", labels, at::kLong, 1);
  }
  const int64_t batch = labels.size(0), nnz = indices.size(0);
  TORCH_CHECK_VALUE(offsets.size(0) == batch + 1, kOp, ": offsets must have B + 1 = ", batch + 1,
                    " entries (B = labels.size(0)), got ", offsets.size(0));
  if (per_sample_weights) {
    check_cpu_tensor("per_sample_weights", *per_sample_weights, at::kFloat, 1);
    TORCH_CHECK_VALUE(per_sample_weights->size(0) == nnz, kOp,
                      ": per_sample_weights must have shape [", nnz, "] like indices, got ",
                      per_sample_weights->sizes());
  }
  TORCH_CHECK_VALUE(std::isfinite(lr_start) && std::isfinite(lr_end), kOp,
                    ": lr_start and lr_end must be finite, got ", lr_start, " and ", lr_end);
  TORCH_CHECK_VALUE(!threads || *threads >= 1, kOp, ": threads must be >= 1 or None, got ",
                    threads.value_or(0));

  const at::Tensor indices_c = indices.contiguous(), offsets_c = offsets.contiguous();
  const at::Tensor labels_c = labels.contiguous();
  const at::Tensor bag_weights =
      per_sample_weights ? per_sample_weights->contiguous() : at::Tensor();
  const int64_t* offset_data = offsets_c.const_data_ptr<int64_t>();
  TORCH_CHECK_VALUE(offset_data[0] == 0 && offset_data[batch] == nnz, kOp,
                    ": offsets must run from 0 to indices.size(0) = ", nnz, ", got ",
                    offset_data[0], " to ", offset_data[batch]);
  TORCH_CHECK_VALUE(batch == 0 || (offsets_c.diff() >= 0).all().item<bool>(), kOp,
                    ": offsets must be non-decreasing");
  check_range("indices", indices_c, vocabulary);
  if (one_vs_all) {
    // A pass over B x K floats that guards no memory: skipped in the "shapes" checks mode.
    TORCH_CHECK_VALUE(!full_checks() || ((labels_c == 0) | (labels_c == 1)).all().item<bool>(),
                      kOp, ": one-vs-all labels must hold only 0 and 1");
  } else {
    check_range("labels", labels_c, classes);
  }

  at::Tensor order_c;
  if (order) {
    check_cpu_tensor("order", *order, at::kLong, 1);
    order_c = order->contiguous();
    check_range("order", order_c, batch);
  }
  const int64_t steps = order ? order_c.size(0) : batch;
  at::Tensor losses = at::empty({steps}, embedding.options());  // in training order
  if (steps == 0) return losses;
  const Problem problem{embedding.data_ptr<float>(),
                        weight.data_ptr<float>(),
                        bias ? bias->data_ptr<float>() : nullptr,
                        indices_c.const_data_ptr<int64_t>(),
                        offset_data,
                        per_sample_weights ? bag_weights.const_data_ptr<float>() : nullptr,
                        one_vs_all ? nullptr : labels_c.const_data_ptr<int64_t>(),
                        one_vs_all ? labels_c.const_data_ptr<float>() : nullptr,
                        order ? order_c.const_data_ptr<int64_t>() : nullptr,
                        losses.data_ptr<float>(),
                        dim,
                        classes};

  // One chunk per thread, each with the whole learning-rate decay over its own examples: the
  // threads progress together, as fastText's do through their parts of the file. Their races
  // make every run's result differ a little, so under torch.use_deterministic_algorithms(True)
  // None means one thread, and more than one is PyTorch's nondeterminism alert.
  const bool deterministic = at::globalContext().deterministicAlgorithms();
  if (deterministic && threads.value_or(1) > 1) {
    at::globalContext().alertNotDeterministic("fasttext_sgd_ with threads > 1 (Hogwild)");
  }
  const int64_t wanted = threads.value_or(deterministic ? 1 : at::get_num_threads());
  const int64_t chunks = std::min<int64_t>(wanted, steps);
  at::parallel_for(0, chunks, 1, [&](int64_t chunk_begin, int64_t chunk_end) {
    for (int64_t chunk = chunk_begin; chunk < chunk_end; ++chunk) {
      train_chunk(problem, steps * chunk / chunks, steps * (chunk + 1) / chunks, lr_start, lr_end,
                  /*private_classifier=*/chunks > 1);
    }
  });
  return losses;
}

}  // namespace

TORCH_LIBRARY_IMPL(mmfast, CPU, m) { m.impl("fasttext_sgd_", &fasttext_sgd_cpu); }

}  // namespace mmfast
