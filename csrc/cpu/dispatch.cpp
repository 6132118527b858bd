#include "cpu/dispatch.h"

#include <ATen/Parallel.h>
#include <ATen/Version.h>
#include <c10/util/Exception.h>
#include <c10/util/StringUtil.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cstdlib>
#include <mutex>

namespace pytrainer::cpu {
namespace {

#if defined(__x86_64__) || defined(_M_X64)
bool cpu_has_avx512() {
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
         __builtin_cpu_supports("fma");
}
#if defined(PT_CPU_AVX512_BF16)
bool cpu_has_avx512_bf16() {
  return cpu_has_avx512() && __builtin_cpu_supports("avx512bf16");
}
#endif
bool cpu_has_avx2() {
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
         __builtin_cpu_supports("f16c");
}
#endif

// Best first.
constexpr const char* kIsaNames[] = {"AVX512_BF16", "AVX512", "AVX2", "DEFAULT"};

const IsaKernels* by_name(const std::string& name) {
#if defined(__x86_64__) || defined(_M_X64)
#if defined(PT_CPU_AVX512_BF16)
  if (name == "AVX512_BF16") return cpu_has_avx512_bf16() ? &isa_avx512bf16() : nullptr;
#endif
  if (name == "AVX512") return cpu_has_avx512() ? &isa_avx512() : nullptr;
  if (name == "AVX2") return cpu_has_avx2() ? &isa_avx2() : nullptr;
#endif
  if (name == "DEFAULT") return &isa_default();
  return nullptr;
}

const IsaKernels* automatic() {
  // PYTRAINER_CPU_ISA forces one for the process (to measure or test another
  // instruction set on this machine), as ATEN_CPU_CAPABILITY does for torch.
  if (const char* forced = std::getenv("PYTRAINER_CPU_ISA"); forced != nullptr && *forced) {
    std::string name(forced);
    for (char& ch : name) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
    const IsaKernels* k = by_name(name);
    TORCH_CHECK(k != nullptr, "pytrainer: PYTRAINER_CPU_ISA=", forced,
                " is unknown or not supported by this CPU; valid here: ",
                c10::Join(", ", supported_isas()));
    return k;
  }
  // Otherwise follow torch's own choice (it honours ATEN_CPU_CAPABILITY), capped
  // by what the CPU reports to us.
  const std::string torch_isa = at::get_cpu_capability();
  const bool torch_avx512 = torch_isa.find("AVX512") != std::string::npos;
  const bool torch_avx2 = torch_avx512 || torch_isa.find("AVX2") != std::string::npos;
  if (torch_avx512) {
    if (const IsaKernels* k = by_name("AVX512_BF16")) return k;
    if (const IsaKernels* k = by_name("AVX512")) return k;
  }
  if (torch_avx2) {
    if (const IsaKernels* k = by_name("AVX2")) return k;
  }
  return &isa_default();
}

std::atomic<const IsaKernels*> g_override{nullptr};

}  // namespace

const IsaKernels& kernels() {
  if (const IsaKernels* k = g_override.load(std::memory_order_relaxed)) return *k;
  static const IsaKernels* chosen = automatic();
  return *chosen;
}

std::vector<std::string> supported_isas() {
  std::vector<std::string> names;
  for (const char* name : kIsaNames) {
    if (by_name(name) != nullptr) names.emplace_back(name);
  }
  return names;
}

std::string set_isa(const std::string& name) {
  if (name.empty()) {
    g_override.store(nullptr);
  } else {
    const IsaKernels* k = by_name(name);
    TORCH_CHECK(k != nullptr, "pytrainer: CPU instruction set '", name,
                "' is unknown or not supported by this CPU; valid here: ",
                c10::Join(", ", supported_isas()));
    g_override.store(k);
  }
  return kernels().name;
}

void run_jobs(const std::vector<RangeJob>& jobs) {
  // 16K elements: 64 KB of float32 per tensor touched, big enough to amortise the
  // chunk lookup, small enough to balance two cores over uneven tensor sizes.
  constexpr int64_t kChunk = 16384;
  std::vector<int64_t> first_chunk(jobs.size() + 1, 0);
  for (size_t j = 0; j < jobs.size(); ++j) {
    first_chunk[j + 1] = first_chunk[j] + (jobs[j].numel + kChunk - 1) / kChunk;
  }
  const int64_t n_chunks = first_chunk.back();
  if (n_chunks == 0) return;
  at::parallel_for(0, n_chunks, 1, [&](int64_t lo, int64_t hi) {
    size_t j = std::upper_bound(first_chunk.begin(), first_chunk.end(), lo) -
               first_chunk.begin() - 1;
    for (int64_t c = lo; c < hi; ++c) {
      while (c >= first_chunk[j + 1]) ++j;
      const RangeJob& job = jobs[j];
      const int64_t begin = (c - first_chunk[j]) * kChunk;
      job.fn(job.task, begin, std::min(begin + kChunk, job.numel));
    }
  });
}

}  // namespace pytrainer::cpu
