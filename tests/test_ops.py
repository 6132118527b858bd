"""The compiled module: what it reports, and a clear error when it is missing."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from pytrainer import ops


def test_device_types_reports_the_cpu_and_cuda_when_built():
    if not ops.available():
        assert ops.device_types() == ()
        return
    kinds = ops.device_types()
    assert kinds[0] == "cpu"
    assert ("cuda" in kinds) == ops.kernels.cuda_built()
    assert ops.has_kernels("cpu")
    every = ["AVX512_BF16", "AVX512", "AVX2", "DEFAULT"]
    isas = ops.cpu_isas()
    assert isas == [name for name in every if name in isas] and isas[-1] == "DEFAULT"
    assert ops.cpu_isa() in isas


def test_unknown_cpu_isa_is_a_clear_error():
    if not ops.available():
        pytest.skip("compiled kernels not built")
    with pytest.raises(RuntimeError, match="valid here: " + ", ".join(ops.cpu_isas())):
        ops.kernels.set_cpu_isa("SSE9")
    assert ops.cpu_isa() in ops.cpu_isas()


def kernel_error(prelude: str) -> str:
    """In a fresh interpreter, after ``prelude``: imports pytrainer, checks that the
    kernels are unavailable (and the module not loaded), and returns the error that
    building an optimizer then raises."""
    code = prelude + textwrap.dedent("""
        import sys, torch, pytrainer
        from pytrainer import ops
        assert not ops.available() and ops.device_types() == ()
        assert sys.modules.get("pytrainer._C") is None, "the compiled module was loaded"
        from pytrainer.optim import FusedAdamW
        try:
            FusedAdamW([torch.nn.Parameter(torch.randn(3))])
        except ops.KernelsUnavailableError as error:
            print(error)
        else:
            raise SystemExit("no error")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_import_works_without_the_compiled_module_and_says_how_to_build():
    # Hide pytrainer._C from the import system in a fresh interpreter.
    message = kernel_error('import sys\nsys.modules["pytrainer._C"] = None\n')
    assert "pip install --no-build-isolation" in message
    assert "pytrainer._C" in message


def test_a_module_built_for_another_torch_is_not_loaded_and_the_error_names_both():
    # The module's build record claims another torch: loading it would fail with an
    # undefined symbol (or crash later), so ops must not, and must say what to do.
    message = kernel_error(textwrap.dedent("""
        import sys
        from pytrainer import _build_info
        record = {"torch": "2.0.1+cu117", "cuda": "11.7", "devices": ["cpu", "cuda"],
                  "cuda_arch_list": "8.0+PTX"}
        _build_info.read = lambda path=None: record
    """))
    assert "built against torch 2.0.1+cu117" in message
    assert f"torch {torch.__version__} is installed" in message
    assert "pip install --no-build-isolation" in message
    assert "pip install 'torch==2.0.*'" in message


def test_cuda_params_without_cuda_kernels_get_a_clear_error(monkeypatch):
    if not ops.available():
        pytest.skip("compiled kernels not built")
    monkeypatch.setattr(ops, "has_kernels", lambda device, op="adamw_": torch.device(device).type == "cpu")
    with pytest.raises(ops.KernelsUnavailableError, match="no adamw_ kernel for cuda"):
        ops.check_device(torch.device("cuda"), "adamw_")


def _adamw_arguments():
    """A valid call of pytrainer._C.adamw_: its tensor lists and its other arguments."""
    p = torch.randn(3)
    lists = dict(params=[p], grads=[torch.randn(3)], exp_avgs=[torch.zeros(3)],
                 exp_avg_sqs=[torch.zeros(3)], max_exp_avg_sqs=[], state_steps=[torch.zeros(())])
    rest = dict(lr=1e-3, lr_tensor=None, beta1=0.9, beta2=0.999, weight_decay=0.0, eps=1e-8,
                amsgrad=False, maximize=False, grad_scale=None, found_inf=None,
                write_back_grads=False)
    return lists, rest


@pytest.mark.skipif(not ops.available(), reason="compiled kernels not built")
def test_entries_take_everything_after_the_tensor_lists_by_keyword_only():
    lists, rest = _adamw_arguments()
    before = lists["params"][0].clone()
    with pytest.raises(TypeError, match="incompatible function arguments"):
        ops.kernels.adamw_(*lists.values(), *rest.values())
    with pytest.raises(TypeError, match="incompatible function arguments"):
        ops.kernels.adamw_(*lists.values(), 1e-3, **{k: v for k, v in rest.items() if k != "lr"})
    assert torch.equal(lists["params"][0], before) and lists["state_steps"][0].item() == 0
    ops.kernels.adamw_(*lists.values(), **rest)  # the lists by position, the rest by name
    assert not torch.equal(lists["params"][0], before) and lists["state_steps"][0].item() == 1


@pytest.mark.skipif(not ops.available(), reason="compiled kernels not built")
def test_a_misspelled_or_missing_keyword_is_refused():
    lists, rest = _adamw_arguments()
    rest["betta1"] = rest.pop("beta1")
    with pytest.raises(TypeError, match="incompatible function arguments"):
        ops.kernels.adamw_(**lists, **rest)
    rest.pop("betta1")
    with pytest.raises(TypeError, match="incompatible function arguments"):
        ops.kernels.adamw_(**lists, **rest)
    assert lists["state_steps"][0].item() == 0


@pytest.mark.skipif(not ops.available(), reason="compiled kernels not built")
@pytest.mark.parametrize("op", ["adamw_", "anyprecision_adamw_", "adafactor_"])
def test_entries_name_their_arguments_as_the_schema_does(op):
    schema = getattr(torch.ops.pytrainer, op).default._schema
    names = [a.name for a in schema.arguments]
    lists = [a.name for a in schema.arguments if not a.kwarg_only]
    assert lists and all(str(a.type) == "List[Tensor]" for a in schema.arguments[:len(lists)])
    signature = getattr(ops.kernels, op).__doc__.splitlines()[0]
    shown = [part.split(":")[0].strip() for part in signature[signature.index("(") + 1:
                                                               signature.rindex(")")].split(", ")]
    assert shown == lists + ["*"] + names[len(lists):]
