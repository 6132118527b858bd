"""The CUDA launch plans, checked on the CPU: the host code that computes every
launch of the three optimizers (pytrainer._C.plan_elementwise for AdamW and
AnyPrecisionAdamW, pytrainer._C.plan_adafactor) covers every element exactly
once, stays within CUDA's limits on the H200 (compute capability 9.0), and
takes 64-bit offsets for tensors of more than 2^31 elements, which are only
described here (sizes, no memory)."""
from __future__ import annotations

import pytest

from pytrainer import ops

pytestmark = pytest.mark.skipif(not ops.available(), reason="compiled kernels not built")

BIG = 2**31 + 5


@pytest.fixture(scope="module")
def C():
    return ops.require()


def test_the_limits_are_cudas_for_compute_capability_9_0(C):
    assert C.cuda_launch_limits == {
        "max_grid_x": 2**31 - 1, "max_grid_yz": 65535, "max_threads_per_block": 1024,
        "max_static_shared_bytes": 48 * 1024, "max_opt_in_shared_bytes_sm90": 227 * 1024}


def within_limits(C, launch: dict) -> None:
    limits = C.cuda_launch_limits
    gx, gy, gz = launch["grid"]
    bx, by, bz = launch["block"]
    assert 0 <= gx <= limits["max_grid_x"] and 1 <= gy <= limits["max_grid_yz"] and \
        1 <= gz <= limits["max_grid_yz"], launch
    assert bx * by * bz <= limits["max_threads_per_block"] and min(bx, by, bz) >= 1, launch
    assert 0 <= launch["shared_bytes"] <= limits["max_static_shared_bytes"], launch


# ------------------------------------------------------------ AdamW, AnyPrecisionAdamW


def check_elementwise(C, numels: list[int]) -> dict:
    plan = C.plan_elementwise(numels)
    ranges = plan["chunk_ranges"]
    assert plan["update"]["grid"][0] == plan["chunks"] == len(ranges)
    within_limits(C, plan["update"])
    within_limits(C, plan["steps"])
    assert plan["steps"]["grid"][0] * plan["steps"]["block"][0] >= len(numels)
    # every element of every tensor in exactly one block, blocks in tensor order
    covered = {i: 0 for i in range(len(numels))}
    for block, (i, begin, end) in enumerate(ranges):
        assert plan["first_chunk"][i] <= block
        assert begin == covered[i], (block, i, begin)  # contiguous, no gap, no overlap
        assert begin < end <= numels[i] and end - begin <= plan["chunk_size"]
        assert begin % 8 == 0  # every block starts on a 16-byte pack of any dtype
        covered[i] = end
    assert covered == {i: n for i, n in enumerate(numels)}
    return plan


@pytest.mark.parametrize("numels", [
    [1], [0], [0, 1, 0], [32768], [32769, 5, 0, 65536, 3], [1] * 1000,
    [50257 * 768, 768, 768 * 3072, 3072, 1]])
def test_elementwise_plan_covers_every_element_once(C, numels):
    check_elementwise(C, numels)


def test_elementwise_plan_of_a_tensor_past_2_to_the_31(C):
    plan = check_elementwise(C, [7, BIG, 3])
    *_, (last_tensor, begin, end) = [r for r in plan["chunk_ranges"] if r[0] == 1]
    assert end == BIG and begin == (BIG - 1) // 32768 * 32768 > 2**31 - 1 - 32768
    assert plan["chunks"] == 1 + (BIG + 32767) // 32768 + 1


def test_elementwise_plan_refuses_a_grid_past_cudas_limit(C):
    too_many = (2**31 - 1) * 32768 + 1  # one chunk more than gridDim.x allows
    with pytest.raises(RuntimeError, match=r"the update launch needs a grid of 2147483648 x 1 x 1 "
                                           r"blocks; CUDA allows up to 2147483647"):
        C.plan_elementwise([too_many])


# ------------------------------------------------------------------------ Adafactor


def check_adafactor(C, shapes, element_size=2) -> dict:
    plan = C.plan_adafactor(shapes, [element_size] * len(shapes))
    for launch in plan["launches"].values():
        within_limits(C, launch)
    assert plan["launches"]["sums"]["grid"][0] == plan["units"]
    assert plan["launches"]["update"]["grid"][0] == plan["units"]
    assert plan["launches"]["norm"]["grid"][0] == plan["units"]
    assert plan["launches"]["factors"]["grid"][0] == plan["fin_blocks"]
    assert plan["launches"]["means"]["grid"][0] * plan["launches"]["means"]["block"][0] >= \
        plan["batches"]
    assert plan["launches"]["scalars"]["grid"][0] == len(shapes)
    first_unit = 0
    for shape, e in zip(shapes, plan["entries"]):
        numel = 1
        for s in shape:
            numel *= s
        assert e["numel"] == numel and e["first_unit"] == first_unit
        assert len(e["tiles"]) == e["units"]
        first_unit += e["units"]
        if numel == 0:
            assert e["units"] == 0
            continue
        if len(shape) >= 2:
            assert (e["rows"], e["cols"], e["batches"]) == (shape[-2], shape[-1], numel // (
                shape[-2] * shape[-1]))
        else:
            assert (e["rows"], e["cols"], e["batches"]) == (1, numel, 1)
        # per batch, the tiles' rows x columns partition rows x cols exactly once
        seen = {}
        for b0, b1, r0, r1, c0, c1 in e["tiles"]:
            assert 0 <= b0 < b1 <= e["batches"]
            assert 0 <= r0 < r1 <= e["rows"] and 0 <= c0 < c1 <= e["cols"]
            for batch in range(b0, b1):
                assert (batch, r0, c0) not in seen
                seen[batch, r0, c0] = (r1, c1)
        for batch in range(e["batches"]):
            row_edges = sorted({(r0, r1) for (b, r0, c0), (r1, c1) in seen.items() if b == batch})
            col_edges = sorted({(c0, c1) for (b, r0, c0), (r1, c1) in seen.items() if b == batch})
            assert row_edges[0][0] == 0 and row_edges[-1][1] == e["rows"]
            assert col_edges[0][0] == 0 and col_edges[-1][1] == e["cols"]
            assert all(a[1] == b[0] for a, b in zip(row_edges, row_edges[1:]))
            assert all(a[1] == b[0] for a, b in zip(col_edges, col_edges[1:]))
            for r0, r1 in row_edges:
                for c0, c1 in col_edges:
                    assert seen[batch, r0, c0] == (r1, c1)
    assert plan["units"] == first_unit
    return plan


@pytest.mark.parametrize("shapes", [
    [[50257, 768]], [[768, 3072]], [[64, 64, 3, 3]], [[3, 3]], [[1, 4099]], [[4099, 1]],
    [[0, 7]], [[7, 0]], [[]], [[0]], [[5]], [[65537]],
    [[50257, 768], [768], [768, 2304], [2304], [], [0, 3], [2, 3, 5, 7]]])
@pytest.mark.parametrize("element_size", [2, 4])
def test_adafactor_plan_covers_every_element_once(C, shapes, element_size):
    check_adafactor(C, shapes, element_size)


def test_adafactor_plan_of_tensors_past_2_to_the_31(C):
    """A vector of 2^31+5 elements and a matrix of 2^31+2048: their tiles' 64-bit
    offsets reach the last element (plans only: nothing is allocated)."""
    rows = 2**20 + 1  # x 2048 columns: 2^31 + 2048 elements
    plan = check_adafactor(C, [[BIG], [rows, 2048]])
    vector, matrix = plan["entries"]
    assert vector["tiles"][-1][5] == BIG and vector["tiles"][-1][4] > 2**31 - 1 - 32768
    assert matrix["tiles"][-1][3] == rows and matrix["tiles"][-1][5] == 2048


def test_adafactor_plan_refuses_bad_descriptions(C):
    with pytest.raises(RuntimeError, match="2- or 4-byte"):
        C.plan_adafactor([[3]], [8])
    with pytest.raises(RuntimeError, match="negative size"):
        C.plan_adafactor([[-1, 3]], [2])


# ------------------------------------------- Adafactor: the CUDA kernels' indexing

N = 4099  # odd: the last 16-byte pack of a row is partial
NAMED = {
    "gpt2-embedding": [50257, 768], "mlp": [768, 3072], "conv3x3": [64, 64, 3, 3],
    "3x3": [3, 3], "1xN": [1, N], "Nx1": [N, 1], "0xN": [0, N], "wide": [40, 50257],
    "batched": [6, 500, 96]}
def emulate(C, shape, element_size) -> tuple[dict, dict]:
    plan = check_adafactor(C, [shape], element_size)
    return plan, C.emulate_adafactor_cuda([shape], [element_size])


@pytest.mark.parametrize("name", NAMED)
@pytest.mark.parametrize("element_size", [2, 4])
def test_adafactor_cuda_indexing_covers_every_element_and_partial_once(C, name, element_size):
    """The host walk of every block and thread of pass 1 (passes 2 and 3 own the
    same slots) and of finalize 1, through the kernels' own index functions:
    every element owned by exactly one thread, every partial sum written once
    and read once, every row and column state and row mean written once."""
    plan, walk = emulate(C, NAMED[name], element_size)
    assert walk["out_of_range"] == 0
    assert walk["element_errors"] == 0
    assert walk["row_partial_errors"] == walk["col_partial_errors"] == 0
    assert walk["row_sum_errors"] == walk["mean_errors"] == 0
    assert walk["row_state_errors"] == [0] and walk["col_state_errors"] == [0]
    assert walk["max_row_slot"] < walk["row_slots"]
    assert walk["max_fin_cols"] <= walk["block_threads"]
    (e,) = plan["entries"]
    if e["units"] and not e["tile_matrices"]:
        lanes, rows = e["threads_per_row"], e["rows_per_step"]
        assert lanes * rows == walk["block_threads"] and lanes & (lanes - 1) == 0
        assert e["packs_per_thread"] * e["pack"] <= 16  # registers per thread


@pytest.mark.parametrize("name", NAMED)
@pytest.mark.parametrize("element_size", [2, 4])
def test_adafactor_cuda_partials_are_below_1_128_of_the_param(C, name, element_size):
    plan, _ = emulate(C, NAMED[name], element_size)
    (e,) = plan["entries"]
    assert plan["partial_floats"] * 4 * 128 < max(e["numel"] * element_size, 1) or \
        plan["partial_floats"] == 0


@pytest.mark.parametrize("name", NAMED)
@pytest.mark.parametrize("element_size", [2, 4])
def test_adafactor_cuda_blocks_have_work_for_every_thread(C, name, element_size):
    """In its first step every block of a factored tensor gives each of its
    threads a (row, 16-byte pack) slot of its tile, or a whole matrix of one
    pack per row (conv kernels); only a tensor with fewer such slots than a
    block has threads leaves some idle."""
    plan, walk = emulate(C, NAMED[name], element_size)
    (e,) = plan["entries"]
    (active,) = walk["active_threads"]
    threads = walk["block_threads"]
    slots = e["batches"] * e["rows"] * -(-e["cols"] // e["pack"]) if e["numel"] else 0
    if slots < threads:
        assert active == ([] if slots == 0 else [e["batches"] if e["tile_matrices"] else slots])
    else:
        assert all(a == threads for a in active), sorted(set(active))


def test_adafactor_cuda_conv_kernels_go_a_thread_per_matrix(C):
    plan, walk = emulate(C, [64, 64, 3, 3], 2)
    (e,) = plan["entries"]
    assert e["tile_matrices"] == walk["block_threads"] and e["units"] == 64 * 64 // 256
    assert plan["partial_floats"] == 0 and plan["fin_blocks"] == 0


def test_adafactor_cuda_finalize_runs_on_a_grid(C):
    """The GPT-2 embedding's column partials fold in a block per 256 columns, the
    rows of a wide matrix in a block per row tile: no block reads a whole matrix."""
    plan, _ = emulate(C, [50257, 768], 2)
    (e,) = plan["entries"]
    assert e["row_tiles"] > 1 and e["col_tiles"] == 1 and e["fin_blocks"] == 3
    assert e["tile_rows"] >= 128
    plan, _ = emulate(C, [1024, 50257], 2)
    (e,) = plan["entries"]
    assert e["row_tiles"] > 1 and e["col_tiles"] > 1
    assert e["fin_blocks"] == (50257 + 255) // 256 + e["row_tiles"]
    plan, _ = emulate(C, [7, 50, 40], 4)  # a tile per matrix: states written in pass 1
    assert plan["fin_blocks"] == 0 and plan["partial_floats"] == 0
