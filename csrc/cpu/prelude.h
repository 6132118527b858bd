// Everything the ISA-specific kernel translation units include from outside.
//
// It must be included before `#pragma GCC target`: an inline function of a
// shared header compiled under that pragma would be an AVX-512 copy that the
// linker may pick for every caller, so only our own code, in a namespace of its
// own per instruction set, sits inside the pragma.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "common/adamw_coeffs.h"
#include "common/anyprecision_coeffs.h"
#include "common/rounding.h"
#include "cpu/kernel_table.h"

// For the functions that hold a kernel's loops: everything they call is
// inlined into them. GCC otherwise leaves some of the pieces a loop is
// assembled from as calls, per vector (4x slower).
#define PT_FLATTEN __attribute__((flatten))
