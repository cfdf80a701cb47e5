"""Checking and reading an audit log directory (the format: :mod:`batchwire.telemetry.audit_log`).

:func:`verify_log` reads every ``audit-NNNNNN.jsonl`` file in number order, each line
once, and reports every problem as a :class:`Problem` (file name, line number from 1,
kind, detail). :func:`read_records` yields the request records that match a filter.
Neither needs the writer, numpy's tensors or torch: ``batchwire audit`` runs them.

How the kinds are told apart, line by line, following the chain of ``seq`` and ``prev``
(``expected`` is the previous record's seq + 1, ``head`` the SHA-256 of its line):

- ``malformed``: the line is not a JSON object, its ``type`` is unknown, it lacks one
  of its type's keys, or ``seq`` is not a positive integer or ``prev`` not 64 hex
  digits. The chain is resumed after it without checking the next ``prev``.
- ``truncated``: the last line of the newest file lacks its newline (the file was
  cut). A file that is not the newest must end with a checkpoint; if it ends otherwise
  and the next file's ``open`` record does not say so (``previous_end`` is ``unclean``
  or ``torn``: the writer stopped without closing it, or a write failed), records were
  cut off its end: reported on its last line, with the seq range the next file shows
  missing.
- ``removed``: ``seq`` jumps forward (to ``s > expected``) and the seqs skipped appear
  nowhere later in the same file: records ``expected .. s-1`` are gone. Also: a file
  whose first line is not its ``open`` record, and a directory with no file at all.
- ``reordered``: ``seq`` goes backwards or repeats; or it jumps forward and (some of)
  the skipped seqs appear later in the same file (reported once, where the order first
  breaks; the lines that come back later are not reported again).
- ``edited``: ``seq`` is ``expected`` but ``prev`` is not ``head``: the previous line was
  changed after it was written. Reported on that previous line.
- ``gap``: a file number is missing between two files; an ``open`` record that names
  another file than its own, another previous file than the one before it, or whose
  ``prev`` is not the hash of that file's last complete line; a log whose first file's
  ``open`` record names a previous file (the log starts later) that no ``retention``
  record accounts for (one whose last removed file is that file, with the same hash).
- ``signature invalid``: with a public key, a checkpoint signed by another key (its
  ``key_id`` differs) or whose signature does not verify against its ``seq`` and ``prev``.
- ``unsigned``: with a public key, a checkpoint without a signature.

What a hash chain cannot show: records cut off the end of the newest file (and the
last line of the log, which no later line covers) -- compare ``seq`` with a copy of the
last checkpoint kept elsewhere. Without a public key nothing proves who wrote the log:
anyone could have rewritten all of it consistently; with one, every record up to the
last checkpoint is proven (``VerifyReport.unsigned_tail`` counts the records after it).
"""

from __future__ import annotations

import bisect
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchwire.telemetry.audit_records import (
    GENESIS,
    RECORD_KEYS,
    describe_key,
    file_number,
    key_id,
    line_hash,
    parse_rfc3339,
    verify_checkpoint,
)

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

__all__ = [
    "PROBLEM_KINDS",
    "Problem",
    "VerifyReport",
    "load_public_key",
    "log_files",
    "read_records",
    "verify_log",
]

PROBLEM_KINDS = (
    "edited",
    "removed",
    "reordered",
    "truncated",
    "signature invalid",
    "unsigned",
    "gap",
    "malformed",
)

_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the log: where (file name, line from 1; 0 for the directory)."""

    file: str
    line: int
    kind: str
    detail: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.kind}: {self.detail}"


@dataclass
class VerifyReport:
    """What :func:`verify_log` found."""

    files: int = 0
    #: Complete, well-formed records of every type.
    records: int = 0
    requests: int = 0
    checkpoints: int = 0
    #: Checkpoints carrying a signature (verified only when a public key was given).
    signed: int = 0
    problems: list[Problem] = field(default_factory=list)
    #: Records after the last checkpoint: no signature covers them yet.
    unsigned_tail: int = 0
    #: Whether signatures were checked (a public key was given).
    signatures_checked: bool = False

    @property
    def ok(self) -> bool:
        return not self.problems


def log_files(directory: Path) -> list[Path]:
    """The log's files in ``directory``, in number order."""
    found = []
    for path in Path(directory).iterdir():
        number = file_number(path.name)
        if number is not None and path.is_file():
            found.append((number, path))
    return [path for _, path in sorted(found)]


def load_public_key(path: Path) -> Ed25519PublicKey:
    """The Ed25519 public key in the PEM file ``path``.

    A PEM private key is accepted too (its public half is used), so the key the server
    signs with verifies its own log; hand verifiers the public key
    (``openssl pkey -in KEY -pubout``). Raises ValueError naming the file and what
    it holds instead.
    """
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )
    from cryptography.hazmat.primitives.serialization import (
        load_pem_private_key,
        load_pem_public_key,
    )

    expected = "expected an Ed25519 public key in PEM (openssl pkey -in KEY -pubout)"
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read the public key {path}: {exc.strerror or exc}") from None
    if b"-----BEGIN " not in data:
        raise ValueError(f"public key {path}: not a PEM file; {expected}")
    key: Any
    try:
        if b"PRIVATE KEY-----" in data:
            key = load_pem_private_key(data, password=None)
        else:
            key = load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"public key {path}: not a readable key ({exc}); {expected}") from None
    if isinstance(key, Ed25519PrivateKey):
        key = key.public_key()
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"public key {path}: holds an {describe_key(key)}; {expected}")
    return key


# -- verification ---------------------------------------------------------------------


@dataclass(slots=True)
class _Entry:
    """One line of a file as the verifier keeps it (requests without their fields)."""

    line: int
    hash: str
    seq: int | None = None
    prev: str = ""
    type: str = ""
    #: The whole record for open, checkpoint and retention records.
    record: dict[str, Any] | None = None
    #: Why the line is not a record ("" when it is).
    error: str = ""
    #: The line lacks its newline (the file's last line).
    torn: bool = False
    size: int = 0


def _parse_line(number: int, raw: bytes) -> _Entry:
    torn = not raw.endswith(b"\n")
    content = raw if torn else raw[:-1]
    entry = _Entry(number, line_hash(content), torn=torn, size=len(content))
    try:
        record = json.loads(content)
    except ValueError as exc:
        entry.error = f"not JSON ({exc})"
        return entry
    if not isinstance(record, dict):
        entry.error = f"a JSON {type(record).__name__}, expected an object"
        return entry
    kind = record.get("type")
    keys = RECORD_KEYS.get(kind) if isinstance(kind, str) else None
    if keys is None or not isinstance(kind, str):
        entry.error = f"type {kind!r}, expected one of {', '.join(RECORD_KEYS)}"
        return entry
    missing = [key for key in keys if key not in record]
    if missing:
        entry.error = f"the {kind} record lacks {', '.join(missing)}"
        return entry
    seq, prev = record["seq"], record["prev"]
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        entry.error = f"seq is {seq!r}, expected an integer >= 1"
        return entry
    if not isinstance(prev, str) or not _HEX64.fullmatch(prev):
        entry.error = f"prev is {prev!r}, expected 64 hex digits"
        return entry
    entry.seq, entry.prev, entry.type = seq, prev, kind
    if kind != "request":
        entry.record = record
    return entry


def _short(digest: str) -> str:
    return digest[:16]


def _missing(first: int, last: int) -> str:
    if first == last:
        return f"seq {first} is missing"
    return f"seq {first}..{last} ({last - first + 1} records) are missing"


class _Verifier:
    """The state of one verification walk (see the module doc for the rules)."""

    def __init__(self, files: list[Path], public_key: Ed25519PublicKey | None) -> None:
        self.files = files
        self.public_key = public_key
        self.public_id = key_id(public_key) if public_key is not None else ""
        self.report = VerifyReport(files=len(files), signatures_checked=public_key is not None)
        #: Next seq expected, and the hash the next prev must be; None: take what comes.
        self.expected: int | None = 1
        self.head: str | None = GENESIS
        #: (file, line) of the line ``head`` is the hash of.
        self.head_at: tuple[str, int] = ("", 0)
        #: Seqs known to come later in the current file (a reorder already reported).
        self.coming: set[int] = set()
        #: Retention records: last removed file -> (its last hash, file, line).
        self.retained: dict[str, tuple[str, str, int]] = {}
        #: The first file's open record when it names a previous file: (file, prev file, prev).
        self.start_claim: tuple[str, str, str] | None = None

    def problem(self, file: str, line: int, kind: str, detail: str) -> None:
        self.report.problems.append(Problem(file, line, kind, detail))

    def run(self) -> VerifyReport:
        if not self.files:
            self.problem("", 0, "removed", "no audit-NNNNNN.jsonl file in the directory")
            return self.report
        previous: tuple[Path, list[_Entry]] | None = None
        for index, path in enumerate(self.files):
            with open(path, "rb") as stream:
                entries = [_parse_line(n, raw) for n, raw in enumerate(stream, 1)]
            self.check_file(index, path, entries, previous)
            previous = (path, entries)
        self.check_start()
        return self.report

    def check_file(
        self,
        index: int,
        path: Path,
        entries: list[_Entry],
        previous: tuple[Path, list[_Entry]] | None,
    ) -> None:
        name = path.name
        newest = index == len(self.files) - 1
        self.coming = set()
        order = sorted((e.seq, e.line) for e in entries if e.seq is not None)
        seqs = [seq for seq, _ in order]
        first = True
        for entry in entries:
            if entry.torn:
                # Only the last line can lack its newline; a torn line that is not the
                # newest file's is judged by the next file's open record.
                if newest:
                    self.problem(
                        name,
                        entry.line,
                        "truncated",
                        f"the last line has no newline ({entry.size} bytes): the file was cut",
                    )
                continue
            if entry.error:
                self.problem(name, entry.line, "malformed", entry.error)
                self.head = None
                if self.expected is not None:
                    self.expected += 1
                first = False
                continue
            report = self.report
            report.records += 1
            if first:
                first = False
                self.check_open(index, path, entry, previous)
            before = len(report.problems)
            self.check_chain(name, entry, order, seqs, opening=entry.line == 1 and index > 0)
            if entry.line == 1 and entry.type != "open" and len(report.problems) == before:
                self.problem(
                    name,
                    1,
                    "removed",
                    f"the first line is a {entry.type} record: the file's open record is gone",
                )
            self.head_at = (name, entry.line)
            if entry.type == "request":
                report.requests += 1
                report.unsigned_tail += 1
            elif entry.type == "checkpoint":
                report.unsigned_tail = 0
                self.check_checkpoint(name, entry)
            else:
                report.unsigned_tail += 1
                if entry.type == "retention":
                    self.note_retention(name, entry)

    def check_open(
        self,
        index: int,
        path: Path,
        entry: _Entry,
        previous: tuple[Path, list[_Entry]] | None,
    ) -> None:
        """The first complete line of a file: its open record against the file before."""
        if entry.type != "open" or entry.record is None:
            return
        record = entry.record
        name = path.name
        if record["file"] != name:
            self.problem(
                name, entry.line, "gap", f"the open record names the file {record['file']!r}"
            )
        previous_file = record["previous_file"]
        if previous is None:
            if previous_file is not None:
                # The log starts later: retention must account for what came before.
                self.start_claim = (name, str(previous_file), entry.prev)
                self.expected = self.head = None
            return
        before, before_entries = previous
        before_number = file_number(before.name)
        number = file_number(name)
        assert before_number is not None and number is not None
        if number != before_number + 1:
            first_missing, last_missing = before_number + 1, number - 1
            missing = f"audit-{first_missing:06d}.jsonl"
            if last_missing > first_missing:
                missing += f" .. audit-{last_missing:06d}.jsonl"
            self.problem(name, entry.line, "gap", f"files are missing before it: {missing}")
            self.expected = self.head = None
            return
        if previous_file != before.name:
            self.problem(
                name,
                entry.line,
                "gap",
                f"the open record names the previous file {previous_file!r}, "
                f"expected {before.name!r}",
            )
            self.expected = self.head = None
            return
        self.check_end(before.name, before_entries, record["previous_end"], entry)

    def check_end(
        self, name: str, entries: list[_Entry], declared: object, opening: _Entry
    ) -> None:
        """How the file before ends, against what the next file's open record says."""
        torn = bool(entries) and entries[-1].torn
        complete = [e for e in entries if not e.torn]
        last = complete[-1] if complete else None
        if torn:
            if declared != "torn":
                self.problem(
                    name,
                    entries[-1].line,
                    "truncated",
                    f"the last line has no newline ({entries[-1].size} bytes) and the next "
                    f"file does not say so (previous_end {declared!r}): the file was cut",
                )
            return
        if last is not None and last.type == "checkpoint":
            if declared == "torn":
                self.problem(
                    name,
                    last.line,
                    "truncated",
                    "the next file says this one ends with a partial line, "
                    "but it ends with a whole one: the partial line was removed",
                )
            return
        if declared in ("unclean", "torn") and last is not None:
            return
        if last is None:
            what = "the file holds no record"
            line = 0
        else:
            what = f"the file ends at line {last.line} with a {last.type or 'malformed'} record"
            line = last.line
        lost = ""
        if self.expected is not None and opening.seq is not None and opening.seq > self.expected:
            lost = f"; {_missing(self.expected, opening.seq - 1)}"
        self.problem(
            name,
            line,
            "truncated",
            f"{what}, not its closing checkpoint, and the next file does not say it ended "
            f"early (previous_end {declared!r}): records were cut off its end{lost}",
        )
        self.expected = self.head = None

    def check_chain(
        self, name: str, entry: _Entry, order: list[tuple[int, int]], seqs: list[int], opening: bool
    ) -> None:
        seq = entry.seq
        assert seq is not None
        expected, head = self.expected, self.head
        self.head = entry.hash
        if seq in self.coming:
            # The other half of a reorder already reported.
            self.coming.discard(seq)
            self.head = None
            return
        if expected is None:
            self.expected = seq + 1
            return
        if seq == expected:
            self.expected = seq + 1
            if head is None or entry.prev == head:
                return
            at_file, at_line = self.head_at
            if opening:
                self.problem(
                    name,
                    entry.line,
                    "gap",
                    f"the open record's prev {_short(entry.prev)}... is not the hash "
                    f"{_short(head)}... of the last line of {at_file} (line {at_line}): "
                    f"that line was changed, or the files do not follow each other",
                )
            else:
                self.problem(
                    at_file,
                    at_line,
                    "edited",
                    f"the line was changed after it was written: its SHA-256 is "
                    f"{_short(head)}..., the next record ({name}:{entry.line}, seq {seq}) "
                    f"has prev {_short(entry.prev)}...",
                )
            return
        if seq > expected:
            self.expected = seq + 1
            # Seqs expected..seq-1 that appear later in this file: a reorder, not a removal.
            later = []
            start = bisect.bisect_left(seqs, expected)
            stop = bisect.bisect_left(seqs, seq)
            for other, line in order[start:stop]:
                if line > entry.line:
                    later.append((other, line))
            if later:
                self.coming.update(other for other, _ in later)
                other, line = later[0]
                self.problem(
                    name,
                    entry.line,
                    "reordered",
                    f"seq {seq} comes before seq {other} (line {line}): lines were moved",
                )
            missing = (seq - expected) - len({other for other, _ in later})
            if missing > 0 and not later:
                self.problem(
                    name,
                    entry.line,
                    "removed",
                    f"{_missing(expected, seq - 1)} before this line (seq {seq})",
                )
            elif missing > 0:
                self.problem(
                    name,
                    entry.line,
                    "removed",
                    f"{missing} records between seq {expected} and seq {seq} are missing",
                )
            return
        earlier = [line for other, line in order if other == seq and line < entry.line]
        again = f": it repeats line {earlier[0]}" if earlier else ""
        self.problem(
            name,
            entry.line,
            "reordered",
            f"seq {seq} comes after seq {expected - 1}{again}",
        )
        self.head = None

    def check_checkpoint(self, name: str, entry: _Entry) -> None:
        record = entry.record
        assert record is not None and entry.seq is not None
        self.report.checkpoints += 1
        signature = record["signature"]
        if signature is None:
            if self.public_key is not None:
                self.problem(
                    name,
                    entry.line,
                    "unsigned",
                    "the checkpoint has no signature (the log was written without a signing key)",
                )
            return
        self.report.signed += 1
        if self.public_key is None:
            return
        if record["key_id"] != self.public_id:
            self.problem(
                name,
                entry.line,
                "signature invalid",
                f"signed by key {record['key_id']}, the given public key is {self.public_id}",
            )
        elif not isinstance(signature, str) or not verify_checkpoint(
            self.public_key, entry.seq, entry.prev, signature
        ):
            self.problem(
                name,
                entry.line,
                "signature invalid",
                f"the signature does not verify for seq {entry.seq} at head "
                f"{_short(entry.prev)}... with key {self.public_id}",
            )

    def note_retention(self, name: str, entry: _Entry) -> None:
        record = entry.record
        assert record is not None
        removed = record["removed"]
        if isinstance(removed, list) and removed and isinstance(removed[-1], str):
            self.retained[removed[-1]] = (str(record["last_removed_hash"]), name, entry.line)

    def check_start(self) -> None:
        if self.start_claim is None:
            return
        name, previous_file, prev = self.start_claim
        found = self.retained.get(previous_file)
        if found is None:
            self.problem(
                name,
                1,
                "gap",
                f"the log starts here, after {previous_file} (named by the open record), "
                f"and no retention record accounts for the files before it",
            )
            return
        recorded, at_file, at_line = found
        if recorded != prev:
            self.problem(
                name,
                1,
                "gap",
                f"the retention record at {at_file}:{at_line} says {previous_file} ended "
                f"with hash {_short(recorded)}..., the open record's prev is {_short(prev)}...",
            )


def verify_log(directory: Path, public_key: Ed25519PublicKey | None = None) -> VerifyReport:
    """Check every file of the log in ``directory`` (see the module doc).

    With ``public_key``, every checkpoint's signature is verified; without one,
    signatures are counted but not checked. Raises OSError when a file cannot be read.
    """
    return _Verifier(log_files(Path(directory)), public_key).run()


# -- reading --------------------------------------------------------------------------


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


def read_records(
    directory: Path,
    *,
    model: str | None = None,
    version: str | None = None,
    principal: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> Iterator[dict[str, Any]]:
    """The request records of the log in ``directory``, in order, that match every filter.

    ``since <= received < until``; a datetime without a time zone is UTC. Lines that
    are not well-formed request records (torn, malformed, other types) are skipped:
    :func:`verify_log` reports them.
    """
    low = _aware(since) if since is not None else None
    high = _aware(until) if until is not None else None
    for path in log_files(Path(directory)):
        with open(path, "rb") as stream:
            for raw in stream:
                if not raw.endswith(b"\n"):
                    continue
                try:
                    record = json.loads(raw)
                except ValueError:
                    continue
                if not isinstance(record, dict) or record.get("type") != "request":
                    continue
                if model is not None and record.get("model") != model:
                    continue
                if version is not None and record.get("version") != version:
                    continue
                if principal is not None and record.get("principal") != principal:
                    continue
                if low is not None or high is not None:
                    try:
                        received = parse_rfc3339(str(record.get("received")))
                    except ValueError:
                        continue
                    if (low is not None and received < low) or (
                        high is not None and received >= high
                    ):
                        continue
                yield record
