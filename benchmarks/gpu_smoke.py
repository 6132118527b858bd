"""Each optimizer stepped on a device against the same steps on the CPU.

Odd shapes on purpose: a 0-d param, an empty one, one element, a length that is not a
multiple of any vector width, a matrix with an odd number of columns, a 3-D param
(Adafactor factors its last two dims), and a view that starts one element into its
storage (misaligned for 16-byte accesses). Each case runs a few steps with fresh
gradients, through the GradScaler path (``step_scaled``) and with a tensor lr too,
then compares every parameter and state with the CPU's.

    python benchmarks/gpu_smoke.py --device cuda            # the GPU check's smoke stage
    python benchmarks/gpu_smoke.py --device cuda --steps 1  # under compute-sanitizer
    python benchmarks/gpu_smoke.py --device cpu             # CPU: this ISA against DEFAULT

On the CPU the reference is the portable (DEFAULT) instruction set, so the script
checks something on a machine without a GPU too. Exit status 1 when a case differs
beyond its dtype's tolerance (2 when a case raised).
"""
from __future__ import annotations

import argparse
import json
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pytrainer import ops  # noqa: E402
from pytrainer.optim import Adafactor, AnyPrecisionAdamW, FusedAdamW  # noqa: E402

#: shapes of the parameters of every case; "view" is a 1-D param one element into its storage
SHAPES: list[tuple[int, ...] | str] = [(), (0,), (1,), (1037,), (31, 33), (4, 33, 17), "view"]
VIEW_LENGTH = 515


@dataclass
class Case:
    name: str
    dtype: torch.dtype
    make: Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]
    #: how each step is taken: "step", "scaled" (step_scaled with a grad scale), "skip"
    #: (step_scaled with found_inf set: nothing may change), "lr_tensor"
    mode: str = "step"


def cases() -> list[Case]:
    kahan = dict(use_kahan_summation=True, momentum_dtype=torch.bfloat16,
                 variance_dtype=torch.bfloat16, compensation_buffer_dtype=torch.bfloat16)
    out = []
    for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        out.append(Case(f"FusedAdamW {dtype}", dtype,
                        lambda ps: FusedAdamW(ps, lr=1e-2, weight_decay=0.1)))
    out += [
        Case("FusedAdamW amsgrad maximize", torch.float32,
             lambda ps: FusedAdamW(ps, lr=1e-2, amsgrad=True, maximize=True)),
        Case("FusedAdamW scaled", torch.bfloat16, lambda ps: FusedAdamW(ps, lr=1e-2), "scaled"),
        Case("FusedAdamW skipped", torch.float32, lambda ps: FusedAdamW(ps, lr=1e-2), "skip"),
        Case("FusedAdamW lr tensor", torch.float32,
             lambda ps: FusedAdamW(ps, lr=torch.tensor(1e-2)), "lr_tensor"),
        Case("AnyPrecision Kahan bf16", torch.bfloat16,
             lambda ps: AnyPrecisionAdamW(ps, lr=1e-2, weight_decay=0.1, **kahan)),
        Case("AnyPrecision stochastic bf16", torch.bfloat16,
             lambda ps: AnyPrecisionAdamW(ps, lr=1e-2, rounding="stochastic", seed=7)),
        Case("AnyPrecision fp32 states fp16", torch.float16,
             lambda ps: AnyPrecisionAdamW(ps, lr=1e-2, variance_dtype=torch.float32)),
        Case("AnyPrecision scaled", torch.float32,
             lambda ps: AnyPrecisionAdamW(ps, lr=1e-2), "scaled"),
        Case("Adafactor relative step", torch.float32, lambda ps: Adafactor(ps)),
        Case("Adafactor lr beta1 wd bf16", torch.bfloat16,
             lambda ps: Adafactor(ps, lr=1e-2, relative_step=False, scale_parameter=False,
                                  beta1=0.9, weight_decay=0.01)),
        Case("Adafactor fp16 scaled", torch.float16,
             lambda ps: Adafactor(ps, lr=1e-2, relative_step=False), "scaled"),
        Case("Adafactor skipped", torch.float32, lambda ps: Adafactor(ps), "skip"),
    ]
    return out


def make_params(dtype: torch.dtype, device: str, gen: torch.Generator):
    params = []
    for shape in SHAPES:
        if shape == "view":
            base = torch.randn(VIEW_LENGTH + 1, generator=gen, dtype=torch.float64)
            storage = base.to(device=device, dtype=dtype)
            params.append(torch.nn.Parameter(storage[1:]))
        else:
            params.append(torch.nn.Parameter(
                torch.randn(shape, generator=gen, dtype=torch.float64).to(device=device,
                                                                          dtype=dtype)))
    return params


def set_grads(params, dtype: torch.dtype, device: str, gen: torch.Generator) -> None:
    for p in params:
        g = torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.1
        if p.dim() == 1 and p.storage_offset() == 1:  # the misaligned view: its grad too
            full = torch.empty(p.numel() + 1, dtype=dtype, device=device)
            p.grad = full[1:].copy_(g.to(dtype))
        else:
            p.grad = g.to(device=device, dtype=dtype)


def run_case(case: Case, device: str, steps: int, seed: int):
    """Params and states after ``steps`` steps, all on the CPU, keyed by name."""
    gen = torch.Generator().manual_seed(seed)
    params = make_params(case.dtype, device, gen)
    opt = case.make(params)
    if case.mode == "lr_tensor":
        for group in opt.param_groups:
            group["lr"] = group["lr"].to(device)
    for _ in range(steps):
        set_grads(params, case.dtype, device, gen)
        if case.mode in ("scaled", "skip"):
            for p in params:
                p.grad.mul_(64.0)
            scale = torch.full((), 64.0, device=device)  # the kernels divide by it
            found_inf = torch.full((), 1.0 if case.mode == "skip" else 0.0, device=device)
            opt.step_scaled(grad_scale=scale, found_inf=found_inf)
        else:
            opt.step()
    out = {f"param{i}": p.detach().cpu() for i, p in enumerate(params)}
    for i, p in enumerate(params):
        for key, value in opt.state[p].items():
            if isinstance(value, torch.Tensor):
                out[f"param{i}.{key}"] = value.detach().cpu()
    return out


def compare(reference: dict, candidate: dict) -> tuple[bool, bool, float, str]:
    """(within tolerance, bitwise equal, largest difference, first failure)."""
    if reference.keys() != candidate.keys():
        return False, False, float("inf"), f"keys differ: {sorted(reference ^ candidate)}"
    bitwise, worst, failure = True, 0.0, ""
    for key, ref in reference.items():
        got = candidate[key]
        if ref.shape != got.shape or ref.dtype != got.dtype:
            return False, False, float("inf"), f"{key}: {got.dtype}{tuple(got.shape)} vs " \
                                               f"{ref.dtype}{tuple(ref.shape)}"
        if ref.numel() == 0:
            continue
        if not torch.equal(ref, got):
            bitwise = False
            worst = max(worst, float((ref.double() - got.double()).abs().max()))
        try:
            torch.testing.assert_close(got, ref, equal_nan=True)
        except AssertionError as error:
            failure = failure or f"{key}: {str(error).splitlines()[0]}"
    return not failure, bitwise, worst, failure


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    ops.check_device(torch.device(args.device), "adamw_")
    results, status = [], 0
    for case in cases():
        try:
            if args.device == "cpu":  # the portable kernels are the reference on the CPU
                ops.require().set_cpu_isa("DEFAULT")
            reference = run_case(case, "cpu", args.steps, args.seed)
            ops.require().set_cpu_isa("")
            candidate = run_case(case, args.device, args.steps, args.seed)
            if args.device != "cpu":
                torch.cuda.synchronize()
            ok, bitwise, worst, failure = compare(reference, candidate)
            if case.mode == "skip":
                start = run_case(case, "cpu", 0, args.seed)
                unchanged = all(torch.equal(start[k], candidate[k]) for k in start)
                ok, failure = ok and unchanged, failure or ("" if unchanged else
                                                            "a skipped step changed a param")
        except Exception:  # report every case, then fail
            ok, bitwise, worst, failure = False, False, float("nan"), traceback.format_exc()
            status = 2
        status = status or (0 if ok else 1)
        results.append(dict(case=case.name, ok=ok, bitwise=bitwise, max_abs_diff=worst,
                            failure=failure))
        print(f"{'ok  ' if ok else 'FAIL'} {case.name:<34} "
              f"{'bitwise' if bitwise else f'max |diff| {worst:.3g}'}"
              f"{'' if ok else '  ' + failure.strip().splitlines()[-1]}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(dict(device=args.device, steps=args.steps,
                                                   results=results), indent=2))
    print(f"{sum(r['ok'] for r in results)}/{len(results)} cases agree with the CPU reference")
    return status


if __name__ == "__main__":
    sys.exit(main())
