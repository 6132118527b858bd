// Every float32 significand in [1, 2) divided by each float32 bias correction
// sqrt(1 - beta2^t), by the steps of csrc/common/divide_math.h's div_by against
// the IEEE division (the claim in that file's comment). About 20 s on one core:
//   gcc -O3 -march=native -ffp-contract=off scripts/check_division.c -lm && ./a.out
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <float.h>
static float from_bits(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static uint32_t bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
int main(void) {
  const double betas[] = {0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 0.9995, 0.9999, 0.99999};
  long long mismatches = 0, checks = 0, naive_wrong = 0;
  int divisors = 0;
  float last = -1;
  for (int b = 0; b < 9; ++b) {
    for (int t = 1; t <= 1125; ++t) {
      const float d = (float)sqrt(1.0 - pow(betas[b], t));
      if (d == last) continue;
      last = d;
      ++divisors;
      const float r = 1.0f / d, nr = -r;
      for (uint32_t m = 0; m < (1u << 23); ++m) {
        const float a = from_bits(0x3f800000u | m);
        const float q = a * r;
        float res = fmaf(q, d, -a);
        res = res < FLT_MAX ? res : FLT_MAX;
        const float got = fmaf(res, nr, q);
        const float want = a / d;
        mismatches += bits(got) != bits(want);
        naive_wrong += bits(q) != bits(want);
      }
      checks += 1 << 23;
    }
  }
  printf("%d divisors, %lld checks, %lld mismatches; a*(1/d) alone wrong in %lld (%.1f%%)\n",
         divisors, checks, mismatches, naive_wrong, 100.0 * naive_wrong / checks);
  return mismatches != 0;
}
