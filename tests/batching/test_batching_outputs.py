"""OutputChecker: a model's outputs against its config (shape, batch axis, -1 dims, reshape,
exact datatype, missing and undeclared outputs), and how a mismatch fails a batch."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch
from batching_testkit import TestModel, batching, hold_instance, make_spec, req, started, until

from batchwire.batching.outputs import OutputChecker, OutputError
from batchwire.core.errors import ModelExecutionError
from batchwire.core.spec import ModelSpec, TensorSpec


def spec(*outputs: TensorSpec, max_batch_size: int = 8) -> ModelSpec:
    return ModelSpec(
        name="bad",
        version="1",
        platform="python",
        max_batch_size=max_batch_size,
        inputs=(TensorSpec("X", "FP32", (3,)),),
        outputs=outputs,
    )


OUT = spec(TensorSpec("OUT", "FP32", (3,)))


def test_matching_outputs_pass_unchanged() -> None:
    value = torch.zeros(2, 3)
    result = {"OUT": value}
    assert OutputChecker(OUT).check(result, 2) is result
    assert OutputChecker(OUT).check({"OUT": np.zeros((5, 3), np.float32)}, 5)


def test_wrong_trailing_dim_names_declared_and_returned_shape() -> None:
    with pytest.raises(OutputError) as caught:
        OutputChecker(OUT).check({"OUT": torch.zeros(2, 4)}, 2)
    assert caught.value.message == (
        "model 'bad' version '1': output 'OUT' has shape [2, 4], expected [2, 3] "
        "(config dims [3] and batch size 2)"
    )


def test_wrong_rank_and_wrong_batch_axis_are_shape_errors() -> None:
    checker = OutputChecker(OUT)
    with pytest.raises(OutputError, match=r"has shape \[2, 3, 1\], expected \[2, 3\]"):
        checker.check({"OUT": torch.zeros(2, 3, 1)}, 2)
    with pytest.raises(OutputError, match=r"has shape \[3\], expected \[2, 3\]"):
        checker.check({"OUT": torch.zeros(3)}, 2)
    with pytest.raises(OutputError, match=r"has shape \[1, 3\], expected \[4, 3\] .*batch size 4"):
        checker.check({"OUT": torch.zeros(1, 3)}, 4)


def test_variable_dims_accept_any_length_but_not_another_rank() -> None:
    checker = OutputChecker(spec(TensorSpec("OUT", "FP32", (-1, 2))))
    checker.check({"OUT": torch.zeros(3, 7, 2)}, 3)
    checker.check({"OUT": torch.zeros(3, 0, 2)}, 3)
    with pytest.raises(OutputError, match=r"has shape \[3, 7, 5\], expected \[3, -1, 2\]"):
        checker.check({"OUT": torch.zeros(3, 7, 5)}, 3)
    with pytest.raises(OutputError, match=r"has shape \[3, 14\], expected \[3, -1, 2\]"):
        checker.check({"OUT": torch.zeros(3, 14)}, 3)


def test_models_that_do_not_batch_have_no_batch_axis() -> None:
    checker = OutputChecker(spec(TensorSpec("OUT", "INT64", (2, 3)), max_batch_size=0))
    checker.check({"OUT": torch.zeros(2, 3, dtype=torch.int64)}, 1)
    with pytest.raises(OutputError) as caught:
        checker.check({"OUT": torch.zeros(3, 2, dtype=torch.int64)}, 1)
    assert caught.value.message.endswith(
        "output 'OUT' has shape [3, 2], expected [2, 3] (config dims [2, 3])"
    )


def test_an_unrecoverable_reshape_is_accepted_in_the_reshape_shape() -> None:
    # dims with two -1 cannot be restored from reshape [-1]: runners hand it back as is.
    checker = OutputChecker(spec(TensorSpec("OUT", "FP32", (-1, -1), reshape=(-1,))))
    checker.check({"OUT": torch.zeros(2, 6)}, 2)
    checker.check({"OUT": torch.zeros(2, 3, 2)}, 2)
    with pytest.raises(OutputError, match=r"expected \[2, -1, -1\] or \[2, -1\] .*reshape \[-1\]"):
        checker.check({"OUT": torch.zeros(2, 3, 2, 1)}, 2)
    # A recoverable reshape is undone by the runner: only dims are accepted.
    fixed = OutputChecker(spec(TensorSpec("OUT", "FP32", (2, 3), reshape=(6,))))
    with pytest.raises(OutputError, match=r"has shape \[2, 6\], expected \[2, 2, 3\]"):
        fixed.check({"OUT": torch.zeros(2, 6)}, 2)


@pytest.mark.parametrize(
    ("value", "got"),
    [
        (torch.zeros(2, 3, dtype=torch.float64), "FP64 (torch.float64)"),
        (np.zeros((2, 3), np.float64), "FP64 (numpy float64)"),
        (torch.zeros(2, 3, dtype=torch.float16), "FP16 (torch.float16)"),
        (torch.zeros(2, 3, dtype=torch.complex64), "torch.complex64 (no KServe v2 datatype)"),
    ],
)
def test_a_datatype_other_than_the_config_is_an_error_not_a_cast(value, got) -> None:
    with pytest.raises(OutputError) as caught:
        OutputChecker(OUT).check({"OUT": value}, 2)
    assert caught.value.message == (
        f"model 'bad' version '1': output 'OUT' has datatype {got}, expected FP32 "
        "(config data_type TYPE_FP32; a torch.float32 tensor or numpy float32 array); "
        "outputs are not cast"
    )


def test_bf16_and_bytes_accept_their_storage_forms_only() -> None:
    bf16 = OutputChecker(spec(TensorSpec("OUT", "BF16", (3,))))
    bf16.check({"OUT": torch.zeros(2, 3, dtype=torch.bfloat16)}, 2)
    bf16.check({"OUT": np.zeros((2, 3), np.uint16)}, 2)  # the wire's storage of BF16
    with pytest.raises(OutputError, match=r"FP32 \(torch.float32\), expected BF16"):
        bf16.check({"OUT": torch.zeros(2, 3)}, 2)
    text = OutputChecker(spec(TensorSpec("OUT", "BYTES", (1,))))
    for array in (
        np.array([[b"a"], [b"b"]], dtype=object),
        np.array([[b"a"], [b"b"]]),
        np.array([["a"], ["b"]]),
    ):
        text.check({"OUT": array}, 2)
    with pytest.raises(OutputError, match=r"INT64 \(torch.int64\), expected BYTES .*bytes or str"):
        text.check({"OUT": torch.zeros(2, 1, dtype=torch.int64)}, 2)


def test_missing_undeclared_and_non_tensor_outputs_are_errors() -> None:
    checker = OutputChecker(spec(TensorSpec("OUT", "FP32", (3,)), TensorSpec("AUX", "FP32", (3,))))
    ok = torch.zeros(2, 3)
    with pytest.raises(
        OutputError, match=r"did not return output 'AUX' \(expected OUT, AUX; got OUT\)"
    ):
        checker.check({"OUT": ok}, 2)
    with pytest.raises(OutputError) as caught:
        checker.check({"OUT": ok, "AUX": ok, "DEBUG": ok}, 2)
    assert caught.value.message == (
        "model 'bad' version '1': the model returned output(s) DEBUG that the config "
        "does not declare (declared: OUT, AUX)"
    )
    with pytest.raises(OutputError, match=r"output 'OUT' is a list, expected a torch.Tensor"):
        checker.check({"OUT": [[0.0] * 3] * 2, "AUX": ok}, 2)
    with pytest.raises(OutputError, match="returned Tensor, expected a dict"):
        checker.check(ok, 2)


async def test_a_mismatch_fails_every_request_of_the_batch_once_without_retry() -> None:
    model = TestModel(
        make_spec(batching=batching()),
        behaviour=lambda inputs: {"OUTPUT0": inputs["INPUT0"].double()},
    )
    b = await started(model)
    held = await hold_instance(b, model)
    tasks = [asyncio.create_task(b.submit(req(t, rows=2))) for t in (1.0, 2.0)]
    await until(lambda: b.queue_depth == 2)
    model.gate.set()
    outcomes = await asyncio.gather(held, *tasks, return_exceptions=True)
    for outcome in outcomes:
        assert isinstance(outcome, ModelExecutionError)
        assert "output 'OUTPUT0' has datatype FP64 (torch.float64), expected FP32" in str(outcome)
    # One batch for the held request, one for the two queued ones: no halving retries.
    assert model.sizes == [1, 4]
    await b.stop()


async def test_a_mismatch_at_warmup_fails_the_load() -> None:
    from batchwire.core.errors import ModelLoadError
    from batchwire.core.spec import WarmupSpec

    warmup = WarmupSpec(name="probe", batch_size=2, inputs={})
    model = TestModel(
        make_spec(batching=batching(), warmup=(warmup,)),
        behaviour=lambda inputs: {"OUTPUT0": inputs["INPUT0"][:, :3]},
    )
    with pytest.raises(ModelLoadError) as caught:
        await started(model)
    assert "warmup 'probe' failed" in str(caught.value)
    assert "output 'OUTPUT0' has shape [2, 3], expected [2, 4]" in str(caught.value)
