#include <longctx/attention/moba/reference.hpp>

namespace longctx::reference {

namespace {

// Calls f(t, src, j) for every output row t, tap j and the input row src = t - (K - 1) + j it
// reads inside t's sequence.
template <class F>
void for_each_tap(int64_t rows, int64_t kernel, const std::vector<int64_t>& cu_seqlens, F&& f) {
  const std::vector<int64_t> cu = cu_seqlens.empty() ? std::vector<int64_t>{0, rows} : cu_seqlens;
  for (size_t s = 0; s + 1 < cu.size(); ++s)
    for (int64_t t = cu[s]; t < cu[s + 1]; ++t)
      for (int64_t j = 0; j < kernel; ++j) {
        const int64_t src = t - (kernel - 1) + j;
        if (src >= cu[s]) f(t, src, j);
      }
}

}  // namespace

template <class T>
std::vector<T> key_conv_forward(const std::vector<T>& x, int64_t C, const std::vector<T>& w, const std::vector<T>& b,
                                const std::vector<int64_t>& cu_seqlens) {
  const int64_t rows = int64_t(x.size()) / C, K = int64_t(w.size()) / C;
  std::vector<T> y(x.size(), T(0));
  for (int64_t t = 0; t < rows; ++t)
    for (int64_t c = 0; c < C && !b.empty(); ++c) y[size_t(t * C + c)] = b[size_t(c)];
  for_each_tap(rows, K, cu_seqlens, [&](int64_t t, int64_t src, int64_t j) {
    for (int64_t c = 0; c < C; ++c) y[size_t(t * C + c)] += w[size_t(j * C + c)] * x[size_t(src * C + c)];
  });
  return y;
}

template <class T>
void key_conv_backward(const std::vector<T>& x, int64_t C, const std::vector<T>& w, bool bias, const std::vector<T>& dy,
                       const std::vector<int64_t>& cu_seqlens, std::vector<T>& dx, std::vector<T>& dw, std::vector<T>& db) {
  const int64_t rows = int64_t(x.size()) / C, K = int64_t(w.size()) / C;
  dx.assign(x.size(), T(0));
  dw.assign(w.size(), T(0));
  db.assign(bias ? size_t(C) : 0, T(0));
  for (int64_t t = 0; t < rows && bias; ++t)
    for (int64_t c = 0; c < C; ++c) db[size_t(c)] += dy[size_t(t * C + c)];
  for_each_tap(rows, K, cu_seqlens, [&](int64_t t, int64_t src, int64_t j) {
    for (int64_t c = 0; c < C; ++c) {
      dx[size_t(src * C + c)] += w[size_t(j * C + c)] * dy[size_t(t * C + c)];
      dw[size_t(j * C + c)] += dy[size_t(t * C + c)] * x[size_t(src * C + c)];
    }
  });
}

template std::vector<float> key_conv_forward<float>(const std::vector<float>&, int64_t, const std::vector<float>&,
                                                    const std::vector<float>&, const std::vector<int64_t>&);
template std::vector<double> key_conv_forward<double>(const std::vector<double>&, int64_t, const std::vector<double>&,
                                                      const std::vector<double>&, const std::vector<int64_t>&);
template void key_conv_backward<float>(const std::vector<float>&, int64_t, const std::vector<float>&, bool,
                                       const std::vector<float>&, const std::vector<int64_t>&, std::vector<float>&,
                                       std::vector<float>&, std::vector<float>&);
template void key_conv_backward<double>(const std::vector<double>&, int64_t, const std::vector<double>&, bool,
                                        const std::vector<double>&, const std::vector<int64_t>&, std::vector<double>&,
                                        std::vector<double>&, std::vector<double>&);

}  // namespace longctx::reference
