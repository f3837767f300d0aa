// Standard dropout.
//
// Srivastava, Hinton, Krizhevsky, Sutskever, Salakhutdinov, "Dropout: A Simple Way to Prevent
// Neural Networks from Overfitting", JMLR 15 (2014). With p the drop probability, each element is
// kept with probability 1-p. Inverted scaling (the default): y = m*x/(1-p) in kTrain and
// kMonteCarlo, y = x in kEval, so E[y] = x. Classic scaling (the paper's): y = m*x when
// stochastic, y = (1-p)*x in kEval. As in PyTorch's ATen, the mask is a pure function of the
// context (seed, stream, layer, row, element) and is returned so that Backward reuses it.
#ifndef DROPNET_ENGINE_DROPOUT_H_
#define DROPNET_ENGINE_DROPOUT_H_

#include "server/engine/layer.h"

namespace dropnet::engine {

// Throws InvalidArgument naming `field` and the value unless 0 <= p < 1.
void CheckDropRate(const char* field, double p);

// Validates a dropout configuration (its rate): the output is the input's shape.
LayerPlan PlanDropout(const LayerConfig& config, const Shape& input);

// A rows x cols mask whose elements are `keep_value` with probability 1-p and 0 otherwise, drawn
// at the random addresses of ctx (row r of the pass, element j).
Matrix BernoulliMask(int64_t rows, int64_t cols, double p, float keep_value, const Context& ctx);

class Dropout : public RateDropoutOf<Dropout> {
 public:
  Dropout(const LayerConfig& config, const Shape& input);
  bool PassesThrough(Mode mode) const override {
    return config_.rate == 0.0 || (mode == Mode::kEval && !config_.classic_scaling);
  }
  void Forward(const Matrix& x, const Context& ctx, LayerCache* cache, Matrix* y) const override;
};

}  // namespace dropnet::engine

#endif  // DROPNET_ENGINE_DROPOUT_H_
