// CACNet (DESIGN 2.4): argument checks and the device-independent schedule of every phase.
//
// The GEMMs go through ATen (MKL/oneDNN on the CPU, cuBLAS on CUDA); the elementwise epilogues
// (bias + activation, activation backward, BCE loss and gradient) are the per-device kernels of
// a `Kernels` policy that csrc/cpu/cacnet.cpp and csrc/cuda/cacnet.cu each supply, so the two
// devices run one schedule.
//
// Layout: weights are [in, out] (y = x w, the paper's notation), the 15 parameters come as one
// list in the order of `Param` (mmfast.ops.cacnet.PARAM_NAMES), and each hidden layer has two
// halves of H units (image half h', g'; text half h'', g'').
#pragma once
#include <ATen/ATen.h>
#include <ATen/core/LegacyTypeDispatch.h>

#include <array>
#include <string_view>
#include <type_traits>
#include <vector>

#include "common/checks.h"
#include "common/host_device.h"

namespace mmfast::cacnet {

enum class Activation { kRelu, kTanh, kSigmoid };

inline Activation parse_activation(std::string_view op, std::string_view name) {
  if (name == "relu") return Activation::kRelu;
  if (name == "tanh") return Activation::kTanh;
  if (name == "sigmoid") return Activation::kSigmoid;
  TORCH_CHECK_VALUE(false, op, ": activation must be one of relu, tanh, sigmoid, got '", name, "'");
}

// Calls f with the activation as a compile-time constant, so inner loops do not branch on it.
template <class F>
void dispatch_activation(Activation activation, F&& f) {
  switch (activation) {
    case Activation::kRelu:
      return f(std::integral_constant<Activation, Activation::kRelu>{});
    case Activation::kTanh:
      return f(std::integral_constant<Activation, Activation::kTanh>{});
    case Activation::kSigmoid:
      return f(std::integral_constant<Activation, Activation::kSigmoid>{});
  }
}

// The derivative of each activation written in terms of its output, which is what we keep.
template <Activation A, typename T>
MMFAST_HOST_DEVICE inline T activation_slope(T out) {
  if constexpr (A == Activation::kRelu) return out > T(0) ? T(1) : T(0);
  if constexpr (A == Activation::kTanh) return T(1) - out * out;
  if constexpr (A == Activation::kSigmoid) return out * (T(1) - out);
}

// Parameter order of every cacnet op. w_<from>_<to>: xi/xt the image/text input, hi/ht the
// image/text half of hidden layer 1 (h', h''), gi/gt of hidden layer 2 (g', g''), y the output.
enum Param : int {
  kWxiHi, kWxtHt,  // passive, layer 1
  kWxiHt, kWxtHi,  // cross-active, layer 1
  kWhiGi, kWhtGt,  // passive, layer 2
  kWhiGt, kWhtGi,  // cross-active, layer 2
  kWgiY, kWgtY,    // output
  kBhi, kBht, kBgi, kBgt, kBy,
  kNumParams
};

// The four layer-1 blocks (x' w(x',h'), x'' w(x'',h''), x' w(x',h''), x'' w(x'',h')), stored as
// layer1[block]: together they are the full network's layer-1 product split in blocks.
enum Layer1Block : int { kImageToImage, kTextToText, kImageToText, kTextToImage };

// One sub-network: input -> one layer-1 half -> one layer-2 half -> a virtual output.
struct Path {
  bool text_input;
  Layer1Block block;  // its layer-1 product
  int w1, b1, w2, b2, w_out;
};
constexpr Path kPassiveImage{false, kImageToImage, kWxiHi, kBhi, kWhiGi, kBgi, kWgiY};
constexpr Path kPassiveText{true, kTextToText, kWxtHt, kBht, kWhtGt, kBgt, kWgtY};
constexpr Path kCrossImage{false, kImageToText, kWxiHt, kBht, kWhtGi, kBgi, kWgiY};
constexpr Path kCrossText{true, kTextToImage, kWxtHi, kBhi, kWhiGt, kBgt, kWgtY};

// One layer of the full network: its image and text inputs feed both halves of its output
// through four blocks w_<input>_<output> and a bias per half.
struct CrossLayer {
  int image_image, text_image, text_text, image_text, b_image, b_text;
};
constexpr CrossLayer kLayer1{kWxiHi, kWxtHi, kWxtHt, kWxiHt, kBhi, kBht};
constexpr CrossLayer kLayer2{kWhiGi, kWhtGi, kWhtGt, kWhiGt, kBgi, kBgt};

struct Shape {
  int64_t batch, image_dim, text_dim, half, classes;
};

// `targets` (named targets_name: the backward op checks its incoming gradient the same way) may
// be null.
inline Shape check_args(const char* op, const at::Tensor& x_img, const at::Tensor& x_txt,
                        const at::Tensor* targets, at::TensorList params,
                        const char* targets_name = "targets") {
  MMFAST_CHECK_DIM(op, "x_img", x_img, 2);
  MMFAST_CHECK_DIM(op, "x_txt", x_txt, 2);
  TORCH_CHECK_TYPE(x_img.scalar_type() == at::kFloat || x_img.scalar_type() == at::kDouble, op,
                   ": x_img must be float32 or float64, got ", x_img.scalar_type());
  TORCH_CHECK_VALUE(params.size() == kNumParams, op, ": params must hold ", int(kNumParams),
                    " tensors, got ", params.size());
  const Shape shape{x_img.size(0), x_img.size(1), x_txt.size(1), params[kBhi].size(0),
                    params[kBy].size(0)};
  const auto check_like_x = [&](const char* name, const at::Tensor& t) {
    MMFAST_CHECK_SAME_DTYPE(op, name, t, x_img);
    MMFAST_CHECK_SAME_DEVICE(op, name, t, x_img);
  };
  check_like_x("x_txt", x_txt);
  TORCH_CHECK_VALUE(x_txt.size(0) == shape.batch, op, ": x_txt must have ", shape.batch,
                    " rows like x_img, got ", x_txt.size(0));
  if (targets) {
    check_like_x(targets_name, *targets);
    TORCH_CHECK_VALUE(targets->dim() == 2 && targets->size(0) == shape.batch &&
                          targets->size(1) == shape.classes,
                      op, ": ", targets_name, " must have shape [", shape.batch, ", ", shape.classes,
                      "], got ", targets->sizes());
  }
  const int64_t H = shape.half, C = shape.classes;
  const std::array<std::vector<int64_t>, kNumParams> expected{{
      {shape.image_dim, H}, {shape.text_dim, H}, {shape.image_dim, H}, {shape.text_dim, H},
      {H, H}, {H, H}, {H, H}, {H, H}, {H, C}, {H, C}, {H}, {H}, {H}, {H}, {C}}};
  for (int p = 0; p < kNumParams; ++p) {
    const std::string name = "params[" + std::to_string(p) + "]";
    check_like_x(name.c_str(), params[p]);
    TORCH_CHECK_VALUE(params[p].sizes() == at::IntArrayRef(expected[p]), op, ": ", name,
                      " must have shape ", at::IntArrayRef(expected[p]), ", got ",
                      params[p].sizes());
  }
  return shape;
}

// A tensor an earlier op of this family computed and the caller hands back (Phase2Forward's
// hidden1, hidden2, logits, layer1): the kernels index it by the shape of this call, so one from
// another batch or width would be read out of bounds.
inline void check_saved(const char* op, const char* name, const at::Tensor& t,
                        const at::Tensor& x_img, at::IntArrayRef sizes) {
  MMFAST_CHECK_SAME_DTYPE(op, name, t, x_img);
  MMFAST_CHECK_SAME_DEVICE(op, name, t, x_img);
  TORCH_CHECK_VALUE(t.sizes() == sizes, op, ": ", name, " must have shape ", sizes,
                    " (from the forward of this batch and model), got ", t.sizes());
}

// `Kernels` supplies a DeviceGuard type (constructed from x's device once check_args has refused
// mixed devices: a CUDA guard built on a CPU tensor's device fails with a message about guards,
// not arguments) and, for contiguous tensors
// of x's dtype and device:
//   bias_activation(out, pre, pre2, bias, act)  out = act(pre [+ pre2] + bias), rows of bias's
//                                               width; pre2 may be undefined; out may alias pre
//   activation_backward_(grad, out, act)        grad *= act'(out)
//   checks_values()                             whether the value checks run (checks.h)
//   all_valid(t, binary)                        every value finite (binary: 0 or 1); one pass
//   bce_with_logits(logits, bias, targets, loss, grad, grad_scale)
//       z = logits + bias (bias may be undefined; when defined, z is written back to logits);
//       loss[b] = mean_c BCE(z[b, c], targets[b, c]) when loss is defined;
//       grad = (sigmoid(z) - targets) * grad_scale when grad is defined.
template <class Kernels>
struct Schedule {
  using Tensor = at::Tensor;

  // ---- value checks: one pass each; only the failure path looks for the first bad row. Made
  // only when Kernels::checks_values() (the "full" checks mode, and on CUDA no graph capture).
  static void check_values(const char* op, const char* name, const Tensor& t, bool binary) {
    if (t.numel() == 0 || !Kernels::checks_values() || Kernels::all_valid(t, binary)) return;
    const Tensor ok = binary ? (t == 0) | (t == 1) : at::isfinite(t);
    const int64_t row = (~ok).any(1).nonzero()[0][0].item<int64_t>();
    TORCH_CHECK_VALUE(false, op, ": ", name, " must ",
                      binary ? "hold only 0 and 1" : "be finite", ", but row ", row, " has ",
                      binary ? "another value" : "a NaN or infinite value");
  }

  static void check_inputs(const char* op, const Tensor& x_img, const Tensor& x_txt,
                           const Tensor* targets) {
    check_values(op, "x_img", x_img, false);
    check_values(op, "x_txt", x_txt, false);
    if (targets) check_values(op, "targets", *targets, true);
  }

  // ---- shared pieces
  // out = a b into a view (at::mm_out wants an lvalue).
  static void mm_into(Tensor out, const Tensor& a, const Tensor& b) { at::mm_out(out, a, b); }

  static Tensor layer1_products(const Tensor& x_img, const Tensor& x_txt, at::TensorList params,
                                const Shape& s) {
    Tensor layer1 = at::empty({4, s.batch, s.half}, x_img.options());  // [4, B, H]
    mm_into(layer1[kImageToImage], x_img, params[kWxiHi]);
    mm_into(layer1[kTextToText], x_txt, params[kWxtHt]);
    mm_into(layer1[kImageToText], x_img, params[kWxiHt]);
    mm_into(layer1[kTextToImage], x_txt, params[kWxtHi]);
    return layer1;
  }

  // The full network from its layer-1 blocks: hidden1, hidden2 [2, B, H] (post-activation, image
  // half first) and the output logits [B, C] before b_y.
  static std::array<Tensor, 3> full_forward(const Tensor& layer1, at::TensorList params,
                                            Activation act, const Shape& s) {
    Tensor hidden1 = at::empty({2, s.batch, s.half}, layer1.options());
    Tensor hidden2 = at::empty({2, s.batch, s.half}, layer1.options());
    Tensor h_img = hidden1[0], h_txt = hidden1[1], g_img = hidden2[0], g_txt = hidden2[1];
    Kernels::bias_activation(h_img, layer1[kImageToImage], layer1[kTextToImage], params[kBhi], act);
    Kernels::bias_activation(h_txt, layer1[kTextToText], layer1[kImageToText], params[kBht], act);
    at::mm_out(g_img, h_img, params[kWhiGi]).addmm_(h_txt, params[kWhtGi]);
    at::mm_out(g_txt, h_txt, params[kWhtGt]).addmm_(h_img, params[kWhiGt]);
    Kernels::bias_activation(g_img, g_img, Tensor(), params[kBgi], act);
    Kernels::bias_activation(g_txt, g_txt, Tensor(), params[kBgt], act);
    Tensor logits = at::mm(g_img, params[kWgiY]).addmm_(g_txt, params[kWgtY]);
    return {hidden1, hidden2, logits};
  }

  // ---- cacnet_forward and its backward
  static std::tuple<Tensor, Tensor, Tensor> forward(const Tensor& x_img_in, const Tensor& x_txt_in,
                                                    at::TensorList params,
                                                    std::string_view activation) {
    constexpr const char* op = "cacnet_forward";
    const Shape s = check_args(op, x_img_in, x_txt_in, nullptr, params);
    const typename Kernels::DeviceGuard device_guard(x_img_in.device());
    const at::AutoDispatchBelowADInplaceOrView below_autograd;  // a kernel, not a graph
    const Activation act = parse_activation(op, activation);
    check_inputs(op, x_img_in, x_txt_in, nullptr);
    const Tensor x_img = x_img_in.contiguous(), x_txt = x_txt_in.contiguous();
    auto [hidden1, hidden2, logits] =
        full_forward(layer1_products(x_img, x_txt, params, s), params, act, s);
    logits.add_(params[kBy]);
    return {logits, hidden1, hidden2};
  }

  // Gradients of the full network from d loss / d logits: the 15 parameter gradients and, when
  // input_grads, those of x_img and x_txt (else empty tensors).
  static std::tuple<Tensor, Tensor, std::vector<Tensor>> full_backward(
      const Tensor& grad_logits, const Tensor& x_img, const Tensor& x_txt, at::TensorList params,
      const Tensor& hidden1, const Tensor& hidden2, Activation act, bool input_grads) {
    std::vector<Tensor> grads(kNumParams);
    const Tensor h_img = hidden1[0], h_txt = hidden1[1], g_img = hidden2[0], g_txt = hidden2[1];
    grads[kWgiY] = at::mm(g_img.t(), grad_logits);
    grads[kWgtY] = at::mm(g_txt.t(), grad_logits);
    grads[kBy] = grad_logits.sum(0);
    Tensor dg_img = at::mm(grad_logits, params[kWgiY].t());  // [B, H] d/d pre-activation of g'
    Tensor dg_txt = at::mm(grad_logits, params[kWgtY].t());
    Kernels::activation_backward_(dg_img, g_img, act);
    Kernels::activation_backward_(dg_txt, g_txt, act);
    auto [dh_img, dh_txt] = cross_layer_backward(kLayer2, h_img, h_txt, dg_img, dg_txt, params,
                                                 grads, true);
    Kernels::activation_backward_(dh_img, h_img, act);
    Kernels::activation_backward_(dh_txt, h_txt, act);
    auto [grad_x_img, grad_x_txt] = cross_layer_backward(kLayer1, x_img, x_txt, dh_img, dh_txt,
                                                         params, grads, input_grads);
    return {grad_x_img, grad_x_txt, grads};
  }

  // A layer's weight and bias gradients from those of its pre-activations (d_img, d_txt), and,
  // when input_grads, the gradients of its inputs (else empty tensors).
  static std::pair<Tensor, Tensor> cross_layer_backward(
      const CrossLayer& layer, const Tensor& in_img, const Tensor& in_txt, const Tensor& d_img,
      const Tensor& d_txt, at::TensorList params, std::vector<Tensor>& grads, bool input_grads) {
    grads[layer.image_image] = at::mm(in_img.t(), d_img);
    grads[layer.text_image] = at::mm(in_txt.t(), d_img);
    grads[layer.text_text] = at::mm(in_txt.t(), d_txt);
    grads[layer.image_text] = at::mm(in_img.t(), d_txt);
    grads[layer.b_image] = d_img.sum(0);
    grads[layer.b_text] = d_txt.sum(0);
    if (!input_grads) return {at::empty({0}, in_img.options()), at::empty({0}, in_img.options())};
    return {at::mm(d_img, params[layer.image_image].t()).addmm_(d_txt, params[layer.image_text].t()),
            at::mm(d_txt, params[layer.text_text].t()).addmm_(d_img, params[layer.text_image].t())};
  }

  static std::tuple<Tensor, Tensor, std::vector<Tensor>> forward_backward(
      const Tensor& grad_logits, const Tensor& x_img, const Tensor& x_txt, at::TensorList params,
      const Tensor& hidden1, const Tensor& hidden2, std::string_view activation, bool input_grads) {
    constexpr const char* op = "_cacnet_forward_backward";
    const Shape s = check_args(op, x_img, x_txt, &grad_logits, params, "grad_logits");
    const typename Kernels::DeviceGuard device_guard(x_img.device());
    const at::AutoDispatchBelowADInplaceOrView below_autograd;  // a kernel, not a graph
    check_saved(op, "hidden1", hidden1, x_img, {2, s.batch, s.half});
    check_saved(op, "hidden2", hidden2, x_img, {2, s.batch, s.half});
    return full_backward(grad_logits.contiguous(), x_img.contiguous(), x_txt.contiguous(), params,
                         hidden1.contiguous(), hidden2.contiguous(),
                         parse_activation(op, activation), input_grads);
  }

  // ---- sub-networks
  struct PathForward {
    Tensor hidden1, hidden2, logits;  // [B, H], [B, H], [B, C] (b_y included)
  };

  static PathForward path_forward(const Path& path, const Tensor& layer1, at::TensorList params,
                                  Activation act) {
    PathForward f;
    f.hidden1 = at::empty_like(layer1[path.block]);
    Kernels::bias_activation(f.hidden1, layer1[path.block], Tensor(), params[path.b1], act);
    f.hidden2 = at::mm(f.hidden1, params[path.w2]);
    Kernels::bias_activation(f.hidden2, f.hidden2, Tensor(), params[path.b2], act);
    f.logits = at::mm(f.hidden2, params[path.w_out]);
    return f;
  }

  // Trains one sub-network on its virtual output, loss = mean_b BCE(y_b, t_b): writes its
  // per-sample losses and adds its gradients into `grads` (b_y accumulates over the pair).
  static Tensor train_path(const Path& path, const Tensor& x, const Tensor& targets,
                           const Tensor& layer1, at::TensorList params, Activation act,
                           bool train_output, std::vector<Tensor>& grads) {
    PathForward f = path_forward(path, layer1, params, act);
    const int64_t batch = x.size(0), classes = targets.size(1);
    Tensor loss = at::empty({batch}, x.options());
    Tensor grad_logits = at::empty_like(f.logits);
    Kernels::bce_with_logits(f.logits, params[kBy], targets, loss, grad_logits,
                             1.0 / double(std::max<int64_t>(batch * classes, 1)));
    if (train_output) {
      grads[path.w_out] = at::mm(f.hidden2.t(), grad_logits);
      Tensor grad_bias = grad_logits.sum(0);
      grads[kBy] = grads[kBy].defined() ? grads[kBy].add_(grad_bias) : grad_bias;
    }
    Tensor d2 = at::mm(grad_logits, params[path.w_out].t());
    Kernels::activation_backward_(d2, f.hidden2, act);
    grads[path.w2] = at::mm(f.hidden1.t(), d2);
    grads[path.b2] = d2.sum(0);
    Tensor d1 = at::mm(d2, params[path.w2].t());
    Kernels::activation_backward_(d1, f.hidden1, act);
    grads[path.w1] = at::mm(x.t(), d1);
    grads[path.b1] = d1.sum(0);
    return loss;
  }

  // The gradients a pair of sub-networks trains, in the pair's order: w1 image, w1 text, w2
  // image, w2 text, b1 image, b1 text, b2 image, b2 text, then (train_output) w_out image,
  // w_out text, b_y.
  static std::tuple<Tensor, Tensor, std::vector<Tensor>> train_pair(
      const Path& image_path, const Path& text_path, const Tensor& x_img, const Tensor& x_txt,
      const Tensor& targets, const Tensor& layer1, at::TensorList params, Activation act,
      bool train_output) {
    std::vector<Tensor> grads(kNumParams);
    Tensor image_loss =
        train_path(image_path, x_img, targets, layer1, params, act, train_output, grads);
    Tensor text_loss =
        train_path(text_path, x_txt, targets, layer1, params, act, train_output, grads);
    std::vector<Tensor> trained{grads[image_path.w1], grads[text_path.w1], grads[image_path.w2],
                                grads[text_path.w2],  grads[image_path.b1], grads[text_path.b1],
                                grads[image_path.b2], grads[text_path.b2]};
    if (train_output) {
      trained.insert(trained.end(), {grads[image_path.w_out], grads[text_path.w_out], grads[kBy]});
    }
    return {image_loss, text_loss, trained};
  }

  // ---- phase 1: both passive sub-networks
  static std::tuple<Tensor, Tensor, std::vector<Tensor>> phase1(
      const Tensor& x_img_in, const Tensor& x_txt_in, const Tensor& targets_in,
      at::TensorList params, std::string_view activation) {
    constexpr const char* op = "cacnet_phase1";
    const Shape s = check_args(op, x_img_in, x_txt_in, &targets_in, params);
    const typename Kernels::DeviceGuard device_guard(x_img_in.device());
    const at::AutoDispatchBelowADInplaceOrView below_autograd;  // a kernel, not a graph
    const Activation act = parse_activation(op, activation);
    check_inputs(op, x_img_in, x_txt_in, &targets_in);
    const Tensor x_img = x_img_in.contiguous(), x_txt = x_txt_in.contiguous();
    // Only the two passive blocks: phase 1 never reads the cross-active ones.
    Tensor layer1 = at::empty({2, s.batch, s.half}, x_img.options());
    mm_into(layer1[kImageToImage], x_img, params[kWxiHi]);
    mm_into(layer1[kTextToText], x_txt, params[kWxtHt]);
    return train_pair(kPassiveImage, kPassiveText, x_img, x_txt, targets_in.contiguous(), layer1,
                      params, act, /*train_output=*/true);
  }

  // ---- phase 2: losses of the full and passive networks, beta, and what either case needs
  static std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>
  phase2_forward(const Tensor& x_img_in, const Tensor& x_txt_in, const Tensor& targets_in,
                 at::TensorList params, std::string_view activation) {
    constexpr const char* op = "cacnet_phase2_forward";
    const Shape s = check_args(op, x_img_in, x_txt_in, &targets_in, params);
    const typename Kernels::DeviceGuard device_guard(x_img_in.device());
    const at::AutoDispatchBelowADInplaceOrView below_autograd;  // a kernel, not a graph
    const Activation act = parse_activation(op, activation);
    check_inputs(op, x_img_in, x_txt_in, &targets_in);
    const Tensor x_img = x_img_in.contiguous(), x_txt = x_txt_in.contiguous();
    const Tensor targets = targets_in.contiguous();
    Tensor layer1 = layer1_products(x_img, x_txt, params, s);
    auto [hidden1, hidden2, logits] = full_forward(layer1, params, act, s);
    Tensor full_loss = at::empty({s.batch}, x_img.options());
    Kernels::bce_with_logits(logits, params[kBy], targets, full_loss, Tensor(), 0.0);
    std::array<Tensor, 2> passive_loss;
    for (int side = 0; side < 2; ++side) {
      PathForward f = path_forward(side ? kPassiveText : kPassiveImage, layer1, params, act);
      passive_loss[side] = at::empty({s.batch}, x_img.options());
      Kernels::bce_with_logits(f.logits, params[kBy], targets, passive_loss[side], Tensor(), 0.0);
    }
    // alpha = mean_i (E'_i + E''_i) / (2 E_i), E_i floored at 1e-12; beta = alpha / (1 + alpha).
    Tensor alpha = ((passive_loss[0] + passive_loss[1]) / (2 * full_loss.clamp_min(1e-12))).mean();
    Tensor beta = alpha / (1 + alpha);
    return {full_loss, passive_loss[0], passive_loss[1], beta, layer1, hidden1, hidden2, logits};
  }

  // Case 1: the full network end to end on E = mean_b BCE(y_b, t_b); the 15 gradients.
  static std::vector<Tensor> phase2_full_backward(const Tensor& x_img, const Tensor& x_txt,
                                                  const Tensor& targets, at::TensorList params,
                                                  const Tensor& hidden1, const Tensor& hidden2,
                                                  const Tensor& logits,
                                                  std::string_view activation) {
    constexpr const char* op = "cacnet_phase2_full_backward";
    const Shape s = check_args(op, x_img, x_txt, &targets, params);
    const typename Kernels::DeviceGuard device_guard(x_img.device());
    const at::AutoDispatchBelowADInplaceOrView below_autograd;  // a kernel, not a graph
    check_saved(op, "hidden1", hidden1, x_img, {2, s.batch, s.half});
    check_saved(op, "hidden2", hidden2, x_img, {2, s.batch, s.half});
    check_saved(op, "logits", logits, x_img, {s.batch, s.classes});
    const Activation act = parse_activation(op, activation);
    Tensor grad_logits = at::empty({s.batch, s.classes}, x_img.options());
    // The logits already hold b_y.
    Kernels::bce_with_logits(logits.contiguous(), Tensor(), targets.contiguous(), Tensor(),
                             grad_logits, 1.0 / double(std::max<int64_t>(s.batch * s.classes, 1)));
    return std::get<2>(full_backward(grad_logits, x_img.contiguous(), x_txt.contiguous(), params,
                                     hidden1.contiguous(), hidden2.contiguous(), act, false));
  }

  // Case 2: both cross-active sub-networks from the layer-1 blocks phase2_forward computed.
  static std::tuple<Tensor, Tensor, std::vector<Tensor>> phase2_cross_active(
      const Tensor& x_img, const Tensor& x_txt, const Tensor& targets, at::TensorList params,
      const Tensor& layer1, std::string_view activation, bool train_output) {
    constexpr const char* op = "cacnet_phase2_cross_active";
    const Shape s = check_args(op, x_img, x_txt, &targets, params);
    const typename Kernels::DeviceGuard device_guard(x_img.device());
    const at::AutoDispatchBelowADInplaceOrView below_autograd;  // a kernel, not a graph
    check_saved(op, "layer1", layer1, x_img, {4, s.batch, s.half});
    return train_pair(kCrossImage, kCrossText, x_img.contiguous(), x_txt.contiguous(),
                      targets.contiguous(), layer1.contiguous(), params,
                      parse_activation(op, activation), train_output);
  }
};

}  // namespace mmfast::cacnet
