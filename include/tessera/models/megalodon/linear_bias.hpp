// Linear layers with a bias on any backend. The CUDA ops::linear_forward / linear_backward take no bias yet
// (ops/matmul.hpp refuses one), and Megalodon's wv, wz, wr, wh1 have biases, so on CUDA the bias is added and
// reduced here by ops::add_row_bias / row_bias_backward around the bias-free GEMMs. On the CPU these are
// exactly Linear::forward / backward. (Once ops/matmul.hpp handles a CUDA bias, these become plain calls.)
#pragma once
#include <type_traits>

#include "tessera/layers/linear.hpp"
#include "tessera/ops/megalodon_elementwise.hpp"

namespace tessera::models::megalodon_detail {

template <class T, class B>
void linear_forward(const Linear<T, B>& l, const SeqContext& ctx, TensorView<const std::type_identity_t<T>> x,
                    Tensor<T, B>& y, typename Linear<T, B>::Saved& s) {
  if constexpr (is_cpu_v<B>) {
    l.forward(ctx, x, y, s);
  } else {
    TESSERA_CHECK(x.rank() == 2 && x.size(1) == l.in && x.is_contiguous(), "Linear: input ", x.shape,
                  " does not match in_features ", l.in);
    const int64_t n = x.size(0);
    y.resize_uninit({n, l.out});
    ops::linear_forward(B{}, y.data(), x.data(), l.params.weight.value.data(), static_cast<const T*>(nullptr),
                        n, l.in, l.out);
    if (l.params.bias.present()) ops::add_row_bias(B{}, y.data(), l.params.bias.value.data(), n, l.out);
    s.x = x;
  }
}

template <class T, class B>
void linear_backward(Linear<T, B>& l, const SeqContext& ctx, TensorView<const std::type_identity_t<T>> dy,
                     Tensor<T, B>& dx, typename Linear<T, B>::Saved& s) {
  if constexpr (is_cpu_v<B>) {
    l.backward(ctx, dy, dx, s);
  } else {
    const int64_t n = s.x.size(0);
    dx.resize_uninit({n, l.in});
    ops::linear_backward(B{}, dx.data(), l.params.weight.grad.data(), static_cast<T*>(nullptr), dy.data(),
                         s.x.data(), l.params.weight.value.data(), n, l.in, l.out);
    if (l.params.bias.present()) ops::row_bias_backward(B{}, l.params.bias.grad.data(), dy.data(), n, l.out);
  }
}

}  // namespace tessera::models::megalodon_detail
