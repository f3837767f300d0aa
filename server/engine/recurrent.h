// LSTM and GRU layers with variational RNN dropout and zoneout, trained by full BPTT.
//
// Hochreiter & Schmidhuber, "Long Short-Term Memory" (1997); Cho et al., "Learning Phrase
// Representations using RNN Encoder-Decoder" (2014). The cell equations and gate orders are
// PyTorch's (LSTM: i, f, g, o; GRU: r, z, n with the reset gate applied to W_hn h + b_hn), with
// weights stored transposed (weight_ih: F x G*H, weight_hh: H x G*H) and both bias vectors kept.
// Variational RNN dropout is Gal & Ghahramani, "A Theoretically Grounded Application of Dropout
// in Recurrent Neural Networks" (NeurIPS 2016): one inverted Bernoulli mask per sequence on the
// input features (rate) and one on the recurrent state fed to the gates (recurrent_rate), the same
// at every step. Zoneout is Krueger et al., "Zoneout: Regularizing RNNs by Randomly Preserving
// Hidden Activations" (ICLR 2017): per unit and step the previous state is kept with probability
// zoneout_cell (LSTM cell) or zoneout_hidden (hidden state), c_t = d*c_{t-1} + (1-d)*c~_t and
// h_t = d*h_{t-1} + (1-d)*h~_t with h~_t = o*tanh(c~_t); kEval uses the expectation (d = z).
//
// Input rows are sequences of T steps of F features ({T, F}); the output is the last hidden state
// {H} or every state {T, H} (return_sequences). The input projection of all steps is one GEMM;
// the recurrence runs each block of sequences on its own thread. Random numbers of row r (one
// sequence) are addressed as elements [0, F) input mask, [F, F+H) recurrent mask, then
// F+H + 2*H*t + j (cell zoneout) and F+H + 2*H*t + H + j (hidden zoneout) for step t: the
// variational masks' addresses do not depend on the step.
#ifndef DROPNET_ENGINE_RECURRENT_H_
#define DROPNET_ENGINE_RECURRENT_H_

#include "server/engine/layer.h"

namespace dropnet::engine {

// Validates an lstm or gru configuration for `input`: its output shape and parameter count.
LayerPlan PlanRecurrent(const LayerConfig& config, const Shape& input);

class Recurrent : public LayerOf<Recurrent> {
 public:
  Recurrent(const LayerConfig& config, const Shape& input, uint64_t init_seed);
  bool IsStochastic() const override;
  void Forward(const Matrix& x, const Context& ctx, LayerCache* cache, Matrix* y) const override;
  void Backward(const Matrix& dy, const LayerCache& cache, std::span<Matrix> grads,
                Matrix* dx) const override;

  bool is_lstm() const { return lstm_; }
  int steps() const { return steps_; }
  int features() const { return features_; }
  int units() const { return units_; }

 private:
  // Forward over rows that are rows row_offset.. of the pass (their random addresses).
  void ForwardRows(const Matrix& x, const Context& ctx, int64_t row_offset, LayerCache* cache,
                   Matrix* y) const;

  bool lstm_;
  int steps_, features_, units_, gates_;
};

}  // namespace dropnet::engine

#endif  // DROPNET_ENGINE_RECURRENT_H_
