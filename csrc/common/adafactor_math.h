// Elementwise pieces of the Adafactor step (transformers' Adafactor math), for
// every vector type; included inside an ISA namespace on the CPU and by the
// CUDA kernel. The caller provides vsqrt.
//
//   non-factored state:  v = beta2t*v + (1-beta2t)*(g*g + eps1);  U = rsqrt(v)*g
//   factored:            U = (rsqrt(R_i/mean(R)) * rsqrt(C_j)) * g
//   apply:  u = U / divisor * alpha;  m = beta1*m + (1-beta1)*u, u = m  (with beta1)
//           p = p + p*(-weight_decay*alpha);  p = p - u
// (rsqrt as 1/sqrt: exact division, not a hardware approximation.)

struct AdafactorApply {
  float divisor;       // max(1, RMS(U) / clip_threshold)
  float alpha;         // the step size
  float beta1, one_minus_beta1;
  float neg_wd_alpha;  // -weight_decay * alpha
  bool first_moment, decay;
};

template <class V>
PT_DEVICE V adafactor_inv_sqrt(V x) {
  return V(1.0f) / vsqrt(x);
}

template <class V>
PT_DEVICE V adafactor_full_state(V v, V g, float beta2t, float one_minus_beta2t, float eps1) {
  return V(beta2t) * v + V(one_minus_beta2t) * (g * g + V(eps1));
}

// Returns the new parameter; updates the first moment m in place.
template <class V>
PT_DEVICE V adafactor_apply(V p, V U, V& m, const AdafactorApply& a) {
  V u = (U / V(a.divisor)) * V(a.alpha);
  if (a.first_moment) {
    m = V(a.beta1) * m + V(a.one_minus_beta1) * u;
    u = m;
  }
  if (a.decay) p = p + p * V(a.neg_wd_alpha);
  return p - u;
}
