"""``batchwire infer``: send one inference request from the command line.

``register(app)`` adds the command to the main ``batchwire`` typer app;
``python -m batchwire.clients.cli infer ...`` runs it standalone.

The help layout of both command lines lives here too (:class:`HelpFormatter`,
:class:`HelpCommand`, :class:`HelpGroup`): this module is the one they share,
and the one a client-only install (no torch, no server dependencies) has.
"""

from __future__ import annotations

import json
import math
import textwrap
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import grpc
import numpy as np
import typer
from typer.core import TyperCommand, TyperGroup

from batchwire.clients._calls import InferResult
from batchwire.clients.client import InferenceClient
from batchwire.clients.errors import InferenceServerError
from batchwire.clients.tensors import bf16_to_float32, float_to_bf16
from batchwire.clients.tls import CertificateFileError
from batchwire.core.datatypes import NUMPY_DTYPES
from batchwire.protos import grpc_service_pb2 as pb

__all__ = [
    "CONTEXT_SETTINGS",
    "HelpCommand",
    "HelpFormatter",
    "HelpGroup",
    "build_app",
    "main",
    "parse_headers",
    "random_inputs",
    "random_tensor",
    "register",
]

#: Size given to variable (-1) dimensions other than the batch dimension.
VARIABLE_DIM_SIZE = 8
#: Random integer inputs are drawn from [INT_LOW, INT_HIGH): valid token ids, indices...
INT_LOW, INT_HIGH = 1, 100


# -- help layout ----------------------------------------------------------------------
#
# Help is laid out by click's plain formatter, not typer's rich panels (every app and
# command here sets rich_markup_mode=None): rich gives each column of its option table
# a share of the terminal and cuts what does not fit, which at 80 columns truncated
# option and environment variable names ("--model-reposito…", "BATCHWIRE_MODEL_…").
# Click keeps the names whole in the first column, but its text wrapper breaks words
# after hyphens ("[default: no-" / "allow-pickled-models]", "--trace-" / "rate"), and
# its command list cuts each summary with "...". The classes below keep click's layout
# but wrap only at spaces, and list every command's first sentence whole. They subclass
# the classes typer itself uses, found through TyperCommand.context_class: recent typer
# releases carry their own copy of click, which the click package's classes would not
# mix with.

#: Help text stops at this many columns on wider terminals (longer lines read worse).
HELP_WIDTH = 100


def _wrap_paragraphs(text: str, width: int) -> list[str]:
    """``text`` wrapped at spaces only, to ``width`` columns; paragraphs kept apart.

    A paragraph starting with click's ``\\b`` marker keeps its own line breaks.
    """
    lines: list[str] = []
    for paragraph in text.strip().split("\n\n"):
        if lines:
            lines.append("")
        if paragraph.startswith("\b\n"):
            lines.extend(paragraph[2:].splitlines())
            continue
        lines.extend(
            textwrap.wrap(
                " ".join(paragraph.split()),
                max(width, 10),
                break_on_hyphens=False,
                break_long_words=False,
            )
        )
    return lines


if TYPE_CHECKING:
    # What the runtime lookups below give with the typer installed: its own copy of click.
    from typer._click.core import Context as _Context
    from typer._click.formatting import HelpFormatter as _Formatter
else:
    # Whichever click typer uses (its own copy, or click itself in older versions).
    _Context = TyperCommand.context_class
    _Formatter = _Context.formatter_class


class HelpFormatter(_Formatter):
    """Click's help layout, wrapping text between words only, never inside a name."""

    def write_text(self, text: str) -> None:
        """Write ``text`` as indented paragraphs."""
        indent = " " * self.current_indent
        for line in _wrap_paragraphs(text, self.width - self.current_indent):
            self.write(f"{indent}{line}\n" if line else "\n")

    def write_dl(
        self, rows: Iterable[tuple[str, str]], col_max: int = 30, col_spacing: int = 2
    ) -> None:
        """Write terms and their descriptions in two columns, as click lays them out.

        A term wider than ``col_max`` stands on a line of its own, its description
        below it in the second column.
        """
        rows = list(rows)
        if not rows:
            return
        first_col = min(max(len(term) for term, _ in rows), col_max) + col_spacing
        indent = " " * self.current_indent
        text_indent = " " * (self.current_indent + first_col)
        for term, text in rows:
            self.write(f"{indent}{term}")
            lines = _wrap_paragraphs(text, self.width - first_col - 2) if text else []
            if not lines:
                self.write("\n")
                continue
            if len(term) <= first_col - col_spacing:
                self.write(" " * (first_col - len(term)))
            else:
                self.write(f"\n{text_indent}")
            self.write(f"{lines[0]}\n")
            for line in lines[1:]:
                self.write(f"{text_indent}{line}\n" if line else "\n")


class HelpContext(_Context):
    """A click context whose help goes through :class:`HelpFormatter`."""

    formatter_class = HelpFormatter


def _summary(command: TyperCommand | TyperGroup) -> str:
    """The command's short help, else the first sentence of its help, whole."""
    if command.short_help:
        return command.short_help
    text = (command.help or "").split("\f", 1)[0].strip().split("\n\n", 1)[0]
    sentence = " ".join(text.split()).split(". ", 1)[0]
    return sentence.removesuffix(".")


class HelpCommand(TyperCommand):
    """A typer command laid out by :class:`HelpFormatter`."""

    context_class = HelpContext

    def get_short_help_str(self, limit: int = 45) -> str:
        """The summary a command list shows, whole: the list wraps it instead of cutting it."""
        return _summary(self)


class HelpGroup(TyperGroup):
    """A typer group laid out by :class:`HelpFormatter`; its commands should be HelpCommands."""

    context_class = HelpContext

    def get_short_help_str(self, limit: int = 45) -> str:
        """The summary a command list shows, whole: the list wraps it instead of cutting it."""
        return _summary(self)


#: Context settings of every command: the help width on wide terminals.
CONTEXT_SETTINGS: dict[str, Any] = {"max_content_width": HELP_WIDTH}


def random_tensor(datatype: str, shape: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """A random array of ``datatype`` (v2 name) and concrete ``shape``.

    Floats are standard normal, integers uniform in [1, 100), BOOL fair coin
    flips, BYTES short lowercase ASCII strings; BF16 as ``uint16`` bit patterns.
    """
    shape = tuple(int(dim) for dim in shape)
    if datatype == "BYTES":
        flat = np.empty(math.prod(shape), dtype=np.object_)
        for index in range(flat.size):
            length = int(rng.integers(1, 9))
            flat[index] = rng.integers(
                ord("a"), ord("z") + 1, size=length, dtype=np.uint8
            ).tobytes()
        return flat.reshape(shape)
    if datatype == "BOOL":
        return rng.random(shape) < 0.5
    if datatype == "BF16":
        return float_to_bf16(rng.standard_normal(shape))
    dtype = NUMPY_DTYPES[datatype]
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    return rng.integers(INT_LOW, INT_HIGH, size=shape, dtype=dtype)


def concrete_shape(shape: Sequence[int], batched: bool, batch_size: int) -> list[int]:
    """Replace -1 dims: the batch dim (dim 0 of a batched model) by ``batch_size``,
    the others by :data:`VARIABLE_DIM_SIZE`."""
    out = []
    for index, dim in enumerate(shape):
        if dim >= 0:
            out.append(int(dim))
        elif index == 0 and batched:
            out.append(batch_size)
        else:
            out.append(VARIABLE_DIM_SIZE)
    return out


def random_inputs(
    metadata: pb.ModelMetadataResponse,
    *,
    batched: bool,
    batch_size: int = 1,
    rng: np.random.Generator | None = None,
    skip: Sequence[str] = (),
) -> dict[str, np.ndarray]:
    """Random arrays for every input in ``metadata`` except those named in ``skip``."""
    rng = rng or np.random.default_rng()
    return {
        tensor.name: random_tensor(
            tensor.datatype, concrete_shape(tensor.shape, batched, batch_size), rng
        )
        for tensor in metadata.inputs
        if tensor.name not in skip
    }


def _is_batched(client: InferenceClient, model: str, version: str, first_dims: list[int]) -> bool:
    """Whether dim 0 is the batch dim: max_batch_size > 0 in the model config, or,
    when the server has no config to show, dim 0 being variable."""
    try:
        return client.model_config(model, version).max_batch_size > 0
    except InferenceServerError as exc:
        if exc.status_code != grpc.StatusCode.UNIMPLEMENTED:
            raise
        return bool(first_dims) and all(dim == -1 for dim in first_dims)


def _load_input(spec: str) -> tuple[str, np.ndarray]:
    name, sep, path = spec.partition("=")
    if not sep or not name or not path:
        raise typer.BadParameter(f"expected NAME=file.npy, got {spec!r}", param_hint="--input")
    try:
        return name, np.load(Path(path), allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise typer.BadParameter(f"cannot load {path!r}: {exc}", param_hint="--input") from exc


def parse_headers(values: Sequence[str]) -> dict[str, str]:
    """``-H <key>:<value>`` values as a header mapping (split at the first ``:``; spaces
    around key and value dropped; a key given twice keeps its last value).

    A value may be a secret (``authorization``), so no message repeats one.
    """
    headers: dict[str, str] = {}
    for index, text in enumerate(values, start=1):
        key, sep, value = text.partition(":")
        if not sep or not key.strip():
            raise typer.BadParameter(
                f"expected <key>:<value>, got a value without a key before ':' (header {index})"
                if sep
                else f"expected <key>:<value>, got no ':' (header {index})",
                param_hint="'-H' / '--header'",
            )
        headers[key.strip()] = value.strip()
    return headers


def _connect(
    url: str,
    timeout: float,
    headers: Sequence[str],
    token: str | None,
    ssl: bool,
    root_certificates: str | None,
    private_key: str | None,
    certificate_chain: str | None,
) -> InferenceClient:
    """The client the options describe; a bad file, header or token exits with 2 and
    one line saying what is wrong (never the token)."""
    if (private_key is None) != (certificate_chain is None):
        given, missing = (
            ("--private-key", "--certificate-chain")
            if certificate_chain is None
            else ("--certificate-chain", "--private-key")
        )
        typer.echo(f"error: {given} needs {missing} (a client certificate needs both)", err=True)
        raise typer.Exit(2)
    try:
        return InferenceClient(
            url,
            timeout=timeout,
            headers=parse_headers(headers),
            token=token,
            ssl=ssl,
            root_certificates=root_certificates,
            private_key=private_key,
            certificate_chain=certificate_chain,
        )
    except CertificateFileError as exc:
        option = "--" + exc.argument.replace("_", "-")
        typer.echo(f"error: {option} {exc.path}: {exc.problem}", err=True)
        raise typer.Exit(2) from None
    except ValueError as exc:  # a header gRPC would refuse, or the token
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def _display_array(array: np.ndarray, datatype: str) -> np.ndarray:
    return bf16_to_float32(array) if datatype == "BF16" else array


def _json_value(array: np.ndarray, datatype: str) -> Any:
    if datatype == "BYTES":
        return np.vectorize(
            lambda item: (
                item.decode("utf-8", "backslashreplace") if isinstance(item, bytes) else str(item)
            ),
            otypes=[object],
        )(array).tolist()
    return _display_array(array, datatype).tolist()


def format_result(result: InferResult) -> str:
    """Human-readable outputs: name, datatype, shape, then the (truncated) values."""
    lines = [f"model {result.model_name!r} version {result.model_version!r}"]
    if result.id:
        lines[0] += f" id {result.id!r}"
    with np.printoptions(threshold=200, edgeitems=4, linewidth=100):
        for name, array in result.outputs.items():
            datatype = result.datatypes.get(name, "")
            lines.append(f"{name}  {datatype}  {list(array.shape)}")
            lines.append(np.array2string(_display_array(array, datatype)))
    return "\n".join(lines)


def result_to_json(result: InferResult) -> str:
    """The outputs as JSON (full values; BF16 as floats, BYTES as UTF-8 strings)."""
    document = {
        "model_name": result.model_name,
        "model_version": result.model_version,
        "id": result.id,
        "outputs": [
            {
                "name": name,
                "datatype": result.datatypes.get(name, ""),
                "shape": list(array.shape),
                "data": _json_value(array, result.datatypes.get(name, "")),
            }
            for name, array in result.outputs.items()
        ],
    }
    return json.dumps(document)


def infer(
    model: Annotated[str, typer.Option("--model", "-m", help="Model name.")],
    url: Annotated[
        str, typer.Option("--url", "-u", help="Server gRPC address, host:port.")
    ] = "127.0.0.1:8001",
    random: Annotated[
        bool,
        typer.Option(
            "--random",
            help="Generate random data for every input not given by --input, "
            "shaped from the model metadata.",
        ),
    ] = False,
    input_files: Annotated[
        list[str] | None,
        typer.Option("--input", "-i", help="NAME=file.npy; repeat for each input."),
    ] = None,
    batch_size: Annotated[
        int, typer.Option("--batch-size", "-b", min=1, help="Batch size of random inputs.")
    ] = 1,
    output_names: Annotated[
        list[str] | None,
        typer.Option("--output", "-o", help="Output to return; repeatable (default: all)."),
    ] = None,
    model_version: Annotated[
        str,
        typer.Option(
            "--model-version",
            "-x",
            help="Model version. Default: the server's choice (batchwire and Triton: the "
            "highest ready version).",
        ),
    ] = "",
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    seed: Annotated[
        int | None, typer.Option("--seed", help="Seed for --random (default: random).")
    ] = None,
    timeout: Annotated[
        float, typer.Option("--timeout", help="Deadline of each call, in seconds.")
    ] = 60.0,
    header_values: Annotated[
        list[str] | None,
        typer.Option(
            "--header",
            "-H",
            metavar="<key>:<value>",
            help="gRPC metadata sent with every call, such as a restricted protocol "
            "header; repeatable.",
        ),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            envvar="BATCHWIRE_TOKEN",
            show_envvar=True,
            metavar="<token>",
            help="Bearer token, sent as 'authorization: Bearer <token>'. Prefer the "
            "environment variable: a token typed on the command line stays in the shell "
            "history and shows in the process list.",
        ),
    ] = None,
    ssl: Annotated[
        bool,
        typer.Option(
            "--ssl",
            "--ssl-grpc-use-ssl",
            help="Connect with TLS (implied by the three file options below).",
        ),
    ] = False,
    root_certificates: Annotated[
        str | None,
        typer.Option(
            "--root-certificates",
            "--ssl-grpc-root-certifications-file",
            metavar="<path>",
            help="PEM file of the CA certificates to trust. Default: the system's.",
        ),
    ] = None,
    private_key: Annotated[
        str | None,
        typer.Option(
            "--private-key",
            "--ssl-grpc-private-key-file",
            metavar="<path>",
            help="PEM file of the client's private key, for mutual TLS.",
        ),
    ] = None,
    certificate_chain: Annotated[
        str | None,
        typer.Option(
            "--certificate-chain",
            "--ssl-grpc-certificate-chain-file",
            metavar="<path>",
            help="PEM file of the client's certificate, for mutual TLS.",
        ),
    ] = None,
) -> None:
    """Run one inference request against a batchwire / Triton gRPC server and print the outputs.

    A secured server: --ssl and the file options for TLS (the --ssl-grpc-* spellings
    are perf_analyzer's), BATCHWIRE_TOKEN for a bearer token, -H for other headers.
    """
    given = dict(_load_input(spec) for spec in input_files or ())
    if not random and not given:
        raise typer.BadParameter("give --input NAME=file.npy for each input, or --random")
    client = _connect(
        url,
        timeout,
        header_values or (),
        token,
        ssl,
        root_certificates,
        private_key,
        certificate_chain,
    )
    try:
        with client:
            metadata = client.model_metadata(model, model_version)
            declared = {tensor.name: tensor.datatype for tensor in metadata.inputs}
            inputs = dict(given)
            if random:
                first_dims = [tensor.shape[0] for tensor in metadata.inputs if tensor.shape]
                inputs.update(
                    random_inputs(
                        metadata,
                        batched=_is_batched(client, model, model_version, first_dims),
                        batch_size=batch_size,
                        rng=np.random.default_rng(seed),
                        skip=list(given),
                    )
                )
            try:
                datatypes = {name: declared[name] for name in inputs if name in declared}
                result = client.infer(
                    model,
                    inputs,
                    outputs=output_names,
                    version=model_version,
                    datatypes=datatypes,
                )
            except (TypeError, ValueError) as exc:  # an input file that cannot be sent
                typer.echo(f"error: {exc}", err=True)
                raise typer.Exit(2) from exc
    except InferenceServerError as exc:
        typer.echo(f"error: {exc.status_code.name}: {exc.message}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(result_to_json(result) if as_json else format_result(result))


def register(app: typer.Typer) -> None:
    """Add the ``infer`` command to ``app`` (the ``batchwire`` command line)."""
    app.command("infer", cls=HelpCommand, context_settings=CONTEXT_SETTINGS)(infer)


def build_app() -> typer.Typer:
    """A typer app holding just ``infer``, for ``python -m batchwire.clients.cli``."""
    app = typer.Typer(
        add_completion=False,
        no_args_is_help=True,
        cls=HelpGroup,
        rich_markup_mode=None,
        context_settings=CONTEXT_SETTINGS,
    )

    @app.callback()
    def _root() -> None:
        """batchwire inference client."""

    register(app)
    return app


def main() -> None:
    """Entry point of ``python -m batchwire.clients.cli``."""
    build_app()()


if __name__ == "__main__":
    main()
