"""Loading each model format and binding config tensors to the module's inputs/outputs."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from repository_test_helpers import JIT_DEPRECATION, save_script, write_model

from batchwire.core.errors import ModelExecutionError, ModelLoadError
from batchwire.core.model import Model, ModelRunner
from batchwire.server.repository import ModelRepository

pytestmark = pytest.mark.filterwarnings(JIT_DEPRECATION)

CPU = torch.device("cpu")


def _tensors(kind: str, *entries: tuple[str, str, list[int]]) -> str:
    items = ", ".join(
        f'{{ name: "{name}", data_type: {dtype}, dims: {dims} }}' for name, dtype, dims in entries
    )
    return f"{kind} [ {items} ]\n"


def _load(root: Path, name: str, **repo_options: object) -> Model:
    repo = ModelRepository(root, **repo_options)  # type: ignore[arg-type]
    entry = repo.discover_model(name)
    assert entry.ok, entry.error
    return repo.load(entry.versions[0])


def _runner(root: Path, name: str, **repo_options: object) -> ModelRunner:
    model = _load(root, name, **repo_options)
    assert isinstance(model, Model)
    runner = model.create_runner(CPU, 0)
    assert isinstance(runner, ModelRunner)
    assert runner.device == CPU
    return runner


class TwoInTwoOut(torch.nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return a - b, a + 10 * b


class Named(torch.nn.Module):
    def forward(self, image: torch.Tensor, scale: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"product": image * scale, "difference": image - scale}


def test_torchscript_indexed_names_bind_by_index(tmp_path: Path) -> None:
    # Listed out of order on purpose: INPUT__<i> is forward's argument i, OUTPUT__<i> result i.
    config = (
        "max_batch_size: 4\n"
        + _tensors("input", ("INPUT__1", "TYPE_FP32", [2]), ("INPUT__0", "TYPE_FP32", [2]))
        + _tensors("output", ("OUTPUT__1", "TYPE_FP32", [2]), ("OUTPUT__0", "TYPE_FP32", [2]))
    )
    model_dir = write_model(tmp_path, "indexed", config)
    save_script(TwoInTwoOut(), model_dir / "1" / "model.pt")
    a, b = torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, 4.0]])
    out = _runner(tmp_path, "indexed")({"INPUT__0": a, "INPUT__1": b})
    assert list(out) == ["OUTPUT__1", "OUTPUT__0"]
    torch.testing.assert_close(out["OUTPUT__0"], a - b)
    torch.testing.assert_close(out["OUTPUT__1"], a + 10 * b)
    assert out["OUTPUT__0"].is_inference()  # the runner wraps the call in inference_mode


def test_torchscript_argument_names_and_dict_outputs(tmp_path: Path) -> None:
    config = (
        "max_batch_size: 4\n"
        + _tensors("input", ("scale", "TYPE_FP32", [1]), ("image", "TYPE_FP32", [3]))
        + _tensors("output", ("difference", "TYPE_FP32", [3]), ("product", "TYPE_FP32", [3]))
    )
    model_dir = write_model(tmp_path, "named", config)
    save_script(Named(), model_dir / "1" / "model.pt")
    image, scale = torch.arange(6.0).reshape(2, 3), torch.tensor([[2.0], [3.0]])
    out = _runner(tmp_path, "named")({"scale": scale, "image": image})
    torch.testing.assert_close(out["product"], image * scale)
    torch.testing.assert_close(out["difference"], image - scale)


def test_torchscript_other_names_bind_in_config_order(tmp_path: Path) -> None:
    config = (
        "max_batch_size: 4\n"
        + _tensors("input", ("X", "TYPE_FP32", [2]), ("Y", "TYPE_FP32", [2]))
        + _tensors("output", ("D", "TYPE_FP32", [2]), ("S", "TYPE_FP32", [2]))
    )
    model_dir = write_model(tmp_path, "ordered", config)
    save_script(TwoInTwoOut(), model_dir / "1" / "model.pt")
    x, y = torch.ones(1, 2), torch.full((1, 2), 2.0)
    out = _runner(tmp_path, "ordered")({"Y": y, "X": x})
    torch.testing.assert_close(out["D"], x - y)
    torch.testing.assert_close(out["S"], x + 10 * y)


@pytest.mark.parametrize(
    ("outputs", "module", "message"),
    [
        (
            [("A", "TYPE_FP32", [2]), ("B", "TYPE_FP32", [2]), ("C", "TYPE_FP32", [2])],
            TwoInTwoOut(),
            "returned 2 values but the config declares 3 outputs (A, B, C)",
        ),
        (
            [("OUTPUT__0", "TYPE_FP32", [2]), ("OUTPUT__2", "TYPE_FP32", [2])],
            TwoInTwoOut(),
            "returned 2 values but output 'OUTPUT__2' needs index 2",
        ),
        (
            [("product", "TYPE_FP32", [2]), ("ratio", "TYPE_FP32", [2])],
            Named(),
            "no output(s) ratio (got keys product, difference)",
        ),
    ],
)
def test_output_mismatch_fails_at_call_time(
    tmp_path: Path, outputs: list, module: torch.nn.Module, message: str
) -> None:
    names = ("INPUT__0", "INPUT__1") if isinstance(module, TwoInTwoOut) else ("image", "scale")
    config = (
        "max_batch_size: 4\n"
        + _tensors("input", *((n, "TYPE_FP32", [2]) for n in names))
        + _tensors("output", *outputs)
    )
    model_dir = write_model(tmp_path, "bad", config)
    save_script(module, model_dir / "1" / "model.pt")
    runner = _runner(tmp_path, "bad")
    with pytest.raises(ModelExecutionError) as info:
        runner({n: torch.ones(1, 2) for n in names})
    assert message in str(info.value)
    assert "bad version 1 (model.pt)" in str(info.value)


def test_too_many_inputs_for_forward_is_a_load_error(tmp_path: Path) -> None:
    config = (
        "max_batch_size: 4\n"
        + _tensors("input", *((f"INPUT__{i}", "TYPE_FP32", [2]) for i in range(3)))
        + _tensors("output", ("OUTPUT__0", "TYPE_FP32", [2]), ("OUTPUT__1", "TYPE_FP32", [2]))
    )
    model_dir = write_model(tmp_path, "many", config)
    path = save_script(TwoInTwoOut(), model_dir / "1" / "model.pt")
    with pytest.raises(ModelLoadError) as info:
        _load(tmp_path, "many")
    assert str(info.value).startswith(f"{path}: input: forward() takes 2 argument(s) (a, b)")
    assert "the inputs need 3" in str(info.value)


class ReshapeCheck(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.dim() == 3, "the model must see the reshape shape [batch, 2, 2]"
        return x.sum(-1, keepdim=True)  # [batch, 2, 1]


def test_reshape_applies_on_the_way_in_and_out(tmp_path: Path) -> None:
    config = """
        max_batch_size: 4
        input [ { name: "INPUT__0", data_type: TYPE_FP32, dims: [ 4 ], reshape: { shape: [ 2, 2 ] } } ]
        output [ { name: "OUTPUT__0", data_type: TYPE_FP32, dims: [ 2 ], reshape: { shape: [ 2, 1 ] } } ]
    """
    model_dir = write_model(tmp_path, "reshaped", config)
    save_script(ReshapeCheck(), model_dir / "1" / "model.pt")
    out = _runner(tmp_path, "reshaped")({"INPUT__0": torch.arange(8.0).reshape(2, 4)})
    torch.testing.assert_close(out["OUTPUT__0"], torch.tensor([[1.0, 5.0], [9.0, 13.0]]))


def test_torch_export_program(tmp_path: Path) -> None:
    batch = torch.export.Dim("batch", min=1, max=64)
    example = (torch.randn(2, 3), torch.randn(2, 1))
    program = torch.export.export(
        Named(), example, dynamic_shapes={"image": {0: batch}, "scale": {0: batch}}
    )
    config = (
        "max_batch_size: 8\n"
        + _tensors("input", ("scale", "TYPE_FP32", [1]), ("image", "TYPE_FP32", [3]))
        + _tensors("output", ("product", "TYPE_FP32", [3]), ("difference", "TYPE_FP32", [3]))
    )
    model_dir = write_model(tmp_path, "exported", config)
    (model_dir / "1").mkdir()
    torch.export.save(program, str(model_dir / "1" / "model.pt2"))

    entry = ModelRepository(tmp_path).discover_model("exported")
    assert entry.versions[0].spec.platform == "torch_export"
    image, scale = torch.randn(5, 3), torch.randn(5, 1)
    out = _runner(tmp_path, "exported")({"image": image, "scale": scale})
    torch.testing.assert_close(out["product"], image * scale)
    torch.testing.assert_close(out["difference"], image - scale)


def test_torch_export_platform_with_torchscript_file(tmp_path: Path) -> None:
    config = (
        'platform: "torch_export"\nmax_batch_size: 4\n'
        + _tensors("input", ("INPUT__0", "TYPE_FP32", [2]), ("INPUT__1", "TYPE_FP32", [2]))
        + _tensors("output", ("OUTPUT__0", "TYPE_FP32", [2]), ("OUTPUT__1", "TYPE_FP32", [2]))
        + 'default_model_filename: "model.pt"\n'
    )
    model_dir = write_model(tmp_path, "wrong", config)
    path = save_script(TwoInTwoOut(), model_dir / "1" / "model.pt")
    with pytest.raises(ModelLoadError) as info:
        _load(tmp_path, "wrong")
    assert str(info.value).startswith(f"{path}: is a TorchScript archive")
    assert "expected a file written by torch.export.save" in str(info.value)


PYTHON_MODEL = """
    import numpy as np
    import torch

    EVENTS = []


    class BatchwireModel:
        def load(self, spec, device, instance_index):
            self.device = device
            self.prefix = spec.parameters["prefix"].encode()
            EVENTS.append(("load", spec.name, str(device), instance_index))

        def execute(self, inputs):
            text = inputs["TEXT"]
            assert text.dtype == object
            lengths = [[len(item)] for item in text[:, 0]]
            echo = np.array([[self.prefix + item] for item in text[:, 0]], dtype=object)
            return {
                "LENGTH": torch.tensor(lengths, dtype=torch.int64) + inputs["OFFSET"],
                "ECHO": echo,
            }

        def finalize(self):
            EVENTS.append(("finalize",))
"""

PYTHON_CONFIG = """
    backend: "python"
    max_batch_size: 4
    input [ { name: "TEXT", data_type: TYPE_STRING, dims: [ 1 ] },
            { name: "OFFSET", data_type: TYPE_INT64, dims: [ 1 ] } ]
    output [ { name: "LENGTH", data_type: TYPE_INT64, dims: [ 1 ] },
             { name: "ECHO", data_type: TYPE_STRING, dims: [ 1 ] } ]
    parameters { key: "prefix", value: { string_value: ">" } }
"""


def test_python_model_with_bytes(tmp_path: Path) -> None:
    write_model(tmp_path, "py", PYTHON_CONFIG, {"1/model.py": PYTHON_MODEL})
    model = _load(tmp_path, "py")
    runner = model.create_runner(CPU, 3)
    text = np.array([[b"abc"], [b""]], dtype=object)
    out = runner({"TEXT": text, "OFFSET": torch.tensor([[10], [20]])})
    assert out["LENGTH"].tolist() == [[13], [20]]
    assert out["ECHO"].tolist() == [[b">abc"], [b">"]]

    module = type(runner._instance)  # the imported user module records its events
    events = __import__(module.__module__).EVENTS
    assert events == [("load", "py", "cpu", 3)]
    model.close()
    assert events[-1] == ("finalize",)


def test_python_model_custom_class_and_errors(tmp_path: Path) -> None:
    source = (
        "class Doubler:\n    def execute(self, inputs):\n        return {'Y': inputs['X'] * 2}\n"
    )
    config = (
        'backend: "python"\nmax_batch_size: 2\n'
        + _tensors("input", ("X", "TYPE_FP32", [1]))
        + _tensors("output", ("Y", "TYPE_FP32", [1]))
    )
    custom = (
        config
        + 'parameters { key: "batchwire.python_class", value: { string_value: "Doubler" } }\n'
    )
    write_model(tmp_path, "custom", custom, {"1/model.py": source})
    out = _runner(tmp_path, "custom")({"X": torch.tensor([[1.5]])})
    torch.testing.assert_close(out["Y"], torch.tensor([[3.0]]))

    path = write_model(tmp_path, "noclass", config, {"1/model.py": source}) / "1" / "model.py"
    with pytest.raises(ModelLoadError) as info:
        _load(tmp_path, "noclass")
    assert str(info.value).startswith(f"{path}: parameters['batchwire.python_class']: ")
    assert "no class 'BatchwireModel'" in str(info.value)
    assert "the file defines Doubler" in str(info.value)

    path = (
        write_model(tmp_path, "broken", config, {"1/model.py": "def oops(:\n"}) / "1" / "model.py"
    )
    with pytest.raises(ModelLoadError, match=r"importing it failed: SyntaxError") as info:
        _load(tmp_path, "broken")
    assert str(info.value).startswith(f"{path}: ")


def test_python_model_missing_output_fails_at_call_time(tmp_path: Path) -> None:
    source = textwrap.dedent(
        """
        class BatchwireModel:
            def execute(self, inputs):
                return {"Z": inputs["X"]}
        """
    )
    config = (
        'backend: "python"\nmax_batch_size: 2\n'
        + _tensors("input", ("X", "TYPE_FP32", [1]))
        + _tensors("output", ("Y", "TYPE_FP32", [1]))
    )
    write_model(tmp_path, "missing", config, {"1/model.py": source})
    runner = _runner(tmp_path, "missing")
    with pytest.raises(ModelExecutionError, match=r"returned no output\(s\) Y \(got Z\)"):
        runner({"X": torch.ones(1, 1)})


PICKLE_CONFIG = (
    "max_batch_size: 4\n"
    + _tensors("input", ("INPUT__0", "TYPE_FP32", [4]))
    + _tensors("output", ("OUTPUT__0", "TYPE_FP32", [2]))
)


def test_pickled_module_refused_then_allowed(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(4, 2)).eval()
    model_dir = write_model(tmp_path, "pickled", PICKLE_CONFIG)
    (model_dir / "1").mkdir()
    path = model_dir / "1" / "model.pt"
    torch.save(module, path)

    with pytest.raises(ModelLoadError) as info:
        _load(tmp_path, "pickled")
    message = str(info.value)
    assert message.startswith(f"{path}: is a pickled Python object, not TorchScript")
    assert "runs arbitrary code" in message
    assert "allow_pickle=True" in message
    assert "--allow-pickled-models" in message

    runner = _runner(tmp_path, "pickled", allow_pickle=True)
    x = torch.randn(3, 4)
    with torch.inference_mode():
        expected = module(x)
    torch.testing.assert_close(runner({"INPUT__0": x})["OUTPUT__0"], expected)


def test_state_dict_is_explained(tmp_path: Path) -> None:
    model_dir = write_model(tmp_path, "weights", PICKLE_CONFIG)
    (model_dir / "1").mkdir()
    torch.save(torch.nn.Linear(4, 2).state_dict(), model_dir / "1" / "model.pt")
    with pytest.raises(ModelLoadError, match=r"weights \(a state_dict\?\), not a model"):
        _load(tmp_path, "weights")


def test_garbage_file_names_the_file(tmp_path: Path) -> None:
    model_dir = write_model(tmp_path, "garbage", PICKLE_CONFIG, {"1/model.pt": b"not a model"})
    with pytest.raises(ModelLoadError) as info:
        _load(tmp_path, "garbage")
    assert str(info.value).startswith(
        f"{model_dir / '1' / 'model.pt'}: is not a loadable TorchScript file"
    )


def test_intra_op_threads_must_be_positive() -> None:
    assert ModelRepository(Path("unused"), intra_op_threads=2).intra_op_threads == 2
    with pytest.raises(ValueError, match="intra_op_threads must be >= 1"):
        ModelRepository(Path("unused"), intra_op_threads=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runner_on_cuda(tmp_path: Path) -> None:
    config = (
        "max_batch_size: 4\n"
        + _tensors("input", ("INPUT__0", "TYPE_FP32", [2]), ("INPUT__1", "TYPE_FP32", [2]))
        + _tensors("output", ("OUTPUT__0", "TYPE_FP32", [2]), ("OUTPUT__1", "TYPE_FP32", [2]))
    )
    model_dir = write_model(tmp_path, "gpu", config)
    save_script(TwoInTwoOut(), model_dir / "1" / "model.pt")
    runner = _load(tmp_path, "gpu").create_runner(torch.device("cuda"), 0)
    assert runner.device == torch.device("cuda", torch.cuda.current_device())
    a = torch.ones(2, 2, device="cuda")
    out = runner({"INPUT__0": a, "INPUT__1": a})
    assert out["OUTPUT__1"].device.type == "cuda"
    torch.testing.assert_close(out["OUTPUT__1"].cpu(), torch.full((2, 2), 11.0))
