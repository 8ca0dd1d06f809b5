// The one online-softmax core every attention kernel runs: a tile of query rows against a tile of
// key/value rows, forward (running max/sum/accumulator, merged tile by tile as in FlashAttention)
// and backward (FlashAttention-2, Dao, arXiv 2307.08691, section 3.1.2: P recomputed from the
// saved LSE, D = rowsum(dO o O)).
// Products go to core/gemm (fp32, or bf16 inputs with fp32 sums); masks are per-row key ranges.
#pragma once
#include <cstdint>
#include <vector>

#include "attention/engine/varlen.hpp"

namespace longctx::attn {

// Which keys of a tile each query row sees. Rows are queries at consecutive positions
// q_pos0 + i, keys at consecutive positions k_pos0 + j; row i sees key j iff
// key_lo(q) <= k_pos < key_hi(q) under `problem`'s causal/window rule. `all` skips masking
// (every key visible, e.g. MoBA's strictly-past selected blocks).
struct TileMask {
  const Problem* problem = nullptr;
  int64_t q_pos0 = 0, k_pos0 = 0, lk = 0;
  bool all = true;
  // If set, row i sees the keys at positions [0, row_hi[i]) instead of the problem's rule (rows
  // that are gathered or strided, e.g. NSA's compressed and selected blocks).
  const int64_t* row_hi = nullptr;
  // Visible key range [lo, hi) of row i within a tile of n keys (hi <= lo: none).
  void range(int64_t i, int64_t n, int64_t& lo, int64_t& hi) const;
};

// Running softmax state of `rows` query rows: max m, sum l (in scaled-score units) and the
// unnormalised output acc[rows x d] (row stride ld_acc). `fresh`: no key folded in yet and acc not
// initialised: the next tile_forward writes acc instead of adding to it (a gathered tile's partial
// state skips zeroing its rows).
struct SoftmaxState {
  float* m;
  float* l;
  float* acc;
  int64_t ld_acc;
  bool fresh = false;
  void reset(int64_t rows, int d);  // m = -inf, l = 0, acc = 0
  void reset_fresh(int64_t rows);   // m = -inf, l = 0, fresh
};

// The online-softmax step every forward kernel shares: folds raw scores s[0..n) (q . k, not yet
// scaled) into row i of `st`: new max, rescaled sum and accumulator; s becomes the unnormalised
// probabilities exp(scale * s - m_new) that the caller then multiplies into V.
void fold_scores(SoftmaxState st, int64_t i, float* s, int64_t n, float scale, int d);

// LSE merge of two partial states over disjoint key sets (flash-decoding's reduction): row i of
// `into` becomes the state of the union with row j of `from`. A row with l = 0 holds no key: its
// acc is not read (it may be unset).
void merge_state(SoftmaxState into, int64_t i, SoftmaxState from, int64_t j, int d);

// K^T and V of one tile of keys packed for the products once: for several tiles of queries that
// see all of its keys (the gathered tiles of one block: block_sparse.hpp), or for the strips of a
// causal tile.
struct PackedKeys {
  gemm::PackedB kt, v;
  void pack(Rows k, Rows v, int64_t n, int d, gemm::Precision products);
};

// Folds keys k[0..n) / values v[0..n) into the state of q[0..rows). `s` is scratch of rows * n.
// With `packed` (the same n keys packed), strips over the first keys of the tile read them from the
// pack, the others from k and v (which an unmasked tile never reads then).
void tile_forward(Rows q, int64_t rows, Rows k, Rows v, int64_t n, int d, float scale, gemm::Precision products,
                  const TileMask& mask, SoftmaxState st, float* s, const PackedKeys* packed = nullptr);

// out = acc / l and lse = m + log(l) per row (out written in place of acc when out == acc);
// a row with no visible key gets out = 0 and lse = -inf.
void tile_finalize(SoftmaxState st, int64_t rows, int d, float* out, int64_t ld_out, float* lse);

// Gradient contributions of one (query tile, key tile) pair, accumulated (+=) into
// dq[rows x d] (stride ld_dq), dk[n x d] and dv[n x d] (stride ld_dkv). lse and delta
// (= rowsum(dO o O)) are per query row. `p` and `dp` are scratch of rows * n each.
void tile_backward(Rows q, Rows dout, const float* lse, const float* delta, int64_t rows, Rows k, Rows v, int64_t n,
                   int d, float scale, gemm::Precision products, const TileMask& mask, float* dq, int64_t ld_dq,
                   float* dk, float* dv, int64_t ld_dkv, float* p, float* dp);

}  // namespace longctx::attn

namespace longctx::attn {

// Tile sizes of the dense and block-sparse kernels (rows of queries x rows of keys per product).
constexpr int64_t kQueryTile = 256;
constexpr int64_t kKeyTile = 256;

// Per-thread scratch for the tile kernels: score/probability tiles, fp32 copies of bf16 rows, and
// the packed keys of a causal tile.
struct TileScratch {
  std::vector<float> m, l, s, dp, q, dout, k, v, lse, delta;
  PackedKeys keys;
  TileScratch(int64_t q_rows, int64_t k_rows, int d, bool backward);
};

// Mask for query rows at positions [q_pos0, q_pos0 + rows) against keys [k_pos0, k_pos0 + n):
// `all` when every row sees every key of the tile, so the kernel can skip masking.
TileMask make_tile_mask(const Problem& p, int64_t q_pos0, int64_t rows, int64_t k_pos0, int64_t n, int64_t lk);

// Query rows [lo, hi) (sequence-local) that see at least one key of [k_pos0, k_pos0 + n).
void rows_seeing_keys(const Problem& p, const Seq& s, int64_t k_pos0, int64_t n, int64_t& lo, int64_t& hi);

// delta[h, t] = sum_c dout[t, h, c] * out[t, h, c] (FlashAttention-2's D), [Hq, Tq].
std::vector<float> rowsum_dout_out(const Tensor& dout, const Tensor& out);

// Per-thread dQ accumulators: thread 0 writes into dq, threads 1.. into their own buffers, and
// reduce() adds them into dq in thread order (a fixed summation order: deterministic).
class DqAccumulators {
 public:
  DqAccumulators(Tensor& dq, int threads);
  float* for_thread(int t);
  void reduce();

 private:
  Tensor& dq_;
  std::vector<Tensor> extra_;
};

}  // namespace longctx::attn

namespace longctx::attn {

// Forward over a contiguous key range: folds keys [k_begin, k_end) (sequence-local positions) of
// KV head `g` into the state of query rows at positions pos0 .. pos0 + rows - 1, kKeyTile keys at a
// time, with the problem's causal/window mask, or unmasked when `all_visible` (rows that are not
// at consecutive positions, such as MoBA's gathered queries of a strictly-past block). `packed`:
// the keys already packed, packed[i] holding (at least) the i-th kKeyTile keys from k_begin.
void attend_key_range(const Problem& p, const Seq& s, const StoredRows& k, const StoredRows& v, int g, Rows q,
                      int64_t rows, int64_t pos0, int64_t k_begin, int64_t k_end, SoftmaxState st,
                      TileScratch& ws, bool all_visible = false, const PackedKeys* packed = nullptr);

// Backward of one key tile [k_pos0, k_pos0 + n) of KV head `g` from the query rows [q_lo, q_hi)
// (sequence-local) of every query head of the group, masked by the problem's rule: adds into dk/dv
// (pointing at the tile's first row) and into dq (a [Tq, Hq, d] accumulator).
struct BackwardInputs {
  const Tensor &q, &k, &v, &dout;
  const float* lse;    // [Hq, Tq]
  const float* delta;  // [Hq, Tq]
};
void backward_key_tile(const Problem& p, const Seq& s, const BackwardInputs& in, int g, int64_t k_pos0,
                       int64_t n, int64_t q_lo, int64_t q_hi, float* dk, float* dv, float* dq,
                       TileScratch& ws);

}  // namespace longctx::attn
