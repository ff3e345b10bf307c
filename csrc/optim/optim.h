// Fused optimiser updates: one pass over each parameter tensor instead of NumPy's chain of
// temporaries. The arithmetic follows torch.optim's update rules, element by element, so
// results do not depend on the number of threads.
#pragma once

#include "common.h"

namespace fastconv {

// SGD with momentum / dampening / Nesterov / L2 weight decay (torch.optim.SGD):
//   d = g + wd*p;  buf = first ? d : momentum*buf + (1-dampening)*d;
//   d = nesterov ? d + momentum*buf : buf;  p -= lr*d
// With momentum == 0, buf is not touched (may be null).
template <typename T>
void sgd_update(index_t n, T* p, const T* g, T* buf, T lr, T momentum, T dampening,
                T weight_decay, bool nesterov, bool first_step);

// Adam / AdamW (torch.optim.Adam, AdamW; amsgrad off):
//   AdamW: p *= 1 - lr*wd;  Adam: g += wd*p
//   m += (1-beta1)*(g - m);  v = beta2*v + (1-beta2)*g*g
//   p -= (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps),  bc_i = 1 - beta_i^step
template <typename T>
void adam_update(index_t n, T* p, const T* g, T* m, T* v, T lr, T beta1, T beta2, T eps,
                 T weight_decay, bool decoupled, index_t step);

}  // namespace fastconv
