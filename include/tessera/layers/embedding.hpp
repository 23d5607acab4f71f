// Token embedding: ids -> rows of a [vocab, dim] table; backward scatter-adds into the table's gradient.
// ids are in backend B's memory (device pointers on CUDA, where they are not range-checked: see
// ops/embedding.hpp) and must stay valid until backward.
#pragma once
#include "tessera/core/param.hpp"
#include "tessera/layers/context.hpp"
#include "tessera/ops/embedding.hpp"

namespace tessera {

template <class T, class B = cpu>
struct Embedding {
  using value_type = T;
  using backend = B;
  struct Params {
    BOOST_HANA_DEFINE_STRUCT(Params, (Param<T, B>, weight));
  };
  struct Saved {
    const int64_t* ids = nullptr;
    int64_t n = 0;
  };
  Params params;
  int64_t vocab = 0, dim = 0;

  void setup(int64_t v, int64_t d) {
    vocab = v;
    dim = d;
    params.weight.resize({v, d});
  }
  /// ids: [n] -> y: [n, dim]. Throws naming the position of an out-of-range id (CPU).
  void forward(const int64_t* ids, int64_t n, Tensor<T, B>& y, Saved& s) const {
    y.resize_uninit({n, dim});
    ops::embedding_forward(B{}, y.data(), ids, params.weight.value.data(), n, vocab, dim);
    s.ids = ids;
    s.n = n;
  }
  void backward(TensorView<const T> dy, Saved& s) {
    ops::embedding_backward(B{}, params.weight.grad.data(), dy.data(), s.ids, s.n, vocab, dim);
  }
};

}  // namespace tessera
