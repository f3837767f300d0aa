// Counter-based random numbers for stochastic layers.
//
// Salmon et al., "Parallel random numbers: as easy as 1, 2, 3" (SC 2011): Philox4x32-10 maps a
// (key, counter) pair to four independent 32-bit words. A draw is addressed by
// (seed, stream, layer, row, element), where stream is the training step or the Monte-Carlo
// sample. The same address always gives the same number, whatever the thread count, the chunking
// of Monte-Carlo samples or the order in which rows are computed.
#ifndef DROPNET_ENGINE_RANDOM_H_
#define DROPNET_ENGINE_RANDOM_H_

#include <cstdint>

namespace dropnet::engine {

// Where in the random sequence a forward pass draws. Row r of the pass belongs to stream
// stream_base + r / rows_per_stream and is row r % rows_per_stream within it: for training the
// stream is the step and rows_per_stream the batch size; for Monte Carlo the stream is the sample
// index t and rows_per_stream the batch B, so sample t of input b draws the same numbers however
// the T x B rows are chunked.
//
// With row_keys (rows_per_stream entries), row r of a stream draws at row address row_keys[r]
// instead of r. Monte Carlo keys each input by RowKey of its values, so an input's masks, and so
// its answer, depend on the seed, the sample, the layer and the input itself, not on its position
// in the request or on the inputs beside it; distinct inputs still draw independent masks.
struct RandomStream {
  uint64_t seed = 0;
  uint64_t stream_base = 0;
  int64_t rows_per_stream = 1 << 30;
  const uint32_t* row_keys = nullptr;
};

// A 32-bit address of a row of n values, from their bits: equal rows get equal keys, distinct
// rows distinct keys but for hash collisions (about one pair in 2^32).
uint32_t RowKey(const float* values, int64_t n);

// A generator for one (stream, layer, row): Uniform/Normal draws indexed by element.
class CounterRng {
 public:
  CounterRng(uint64_t seed, uint64_t stream, uint32_t layer, uint32_t row);
  // Four uniform 32-bit words for block `block` (elements 4*block .. 4*block+3).
  void Block(uint32_t block, uint32_t out[4]) const;
  // Fills n uniforms in [0, 1) for elements 0..n-1.
  void Uniform(float* out, int64_t n) const;
  // Fills n standard normals (Box-Muller on pairs of words) for elements 0..n-1.
  void Normal(float* out, int64_t n) const;
  // Fills n raw words for elements 0..n-1.
  void Bits(uint32_t* out, int64_t n) const;
  // The dropout draw for elements 0..n-1: m[j] = keep_value when word j >= threshold, else 0;
  // mask[j] = m[j] and y[j] = x[j] * m[j] (y[j] = m[j] without x). mask and y may be null.
  void Keep(uint32_t threshold, float keep_value, const float* x, float* y, float* mask,
            int64_t n) const;

 private:
  uint32_t key_[2];
  uint32_t ctr_[3];
};

// Returns the generator for row `row` of a pass over `stream`, at layer `layer`.
inline CounterRng RowRng(const RandomStream& s, uint32_t layer, int64_t row) {
  const int64_t r = row % s.rows_per_stream;
  return CounterRng(s.seed, s.stream_base + static_cast<uint64_t>(row / s.rows_per_stream), layer,
                    s.row_keys ? s.row_keys[r] : static_cast<uint32_t>(r));
}

// A small counter-based generator for host-side shuffles and initialisation (SplitMix64).
class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t seed) : state_(seed) {}
  uint64_t Next() {
    uint64_t z = (state_ += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
  }
  double Uniform() { return static_cast<double>(Next() >> 11) * 0x1.0p-53; }
  double Normal();
  uint64_t Below(uint64_t n) { return Next() % n; }

 private:
  uint64_t state_;
};

}  // namespace dropnet::engine

#endif  // DROPNET_ENGINE_RANDOM_H_
