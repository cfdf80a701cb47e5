"""The /metrics families of the audit log and of drift statistics.

Read at scrape time, in the metrics thread, from the server's data plane (its
``audit_log`` and ``drift``, see :mod:`batchwire.server.audit_stage` and
:mod:`batchwire.server.drift_stage`): the audit log's counters are plain integers its
writer thread updates, and each drift window hands out a consistent snapshot under
its own lock, so a scrape never waits for a request.

Every family is declared, even on a server without an audit log or drift statistics
(with no samples then) and before the first request, so that dashboards and alerts
can name them from the start. A drift tensor's PSI is left out while its
window holds too few items to say anything (state ``insufficient``, -1).
"""

from __future__ import annotations

import math
from typing import Any

from batchwire.telemetry.metrics import Family

__all__ = ["DRIFT_STATE_VALUES", "governance_families"]

#: batchwire_drift_state's value for each state.
DRIFT_STATE_VALUES = {"insufficient": -1, "ok": 0, "warning": 1, "alert": 2}


def governance_families(source: Any) -> list[Family]:
    """The audit and drift families of ``source`` (a data plane); [] for None."""
    if source is None:
        return []
    return [*_audit_families(source.audit_log), *_drift_families(source.drift)]


def _audit_families(log: Any) -> list[Family]:
    depth = Family(
        "batchwire_audit_queue_depth", "gauge", "Audit records waiting for the writer thread."
    )
    capacity = Family(
        "batchwire_audit_queue_capacity", "gauge", "Audit records the queue holds at most."
    )
    written = Family(
        "batchwire_audit_records_written_total",
        "counter",
        "Request records written to the audit log and flushed.",
    )
    dropped = Family(
        "batchwire_audit_dropped_total",
        "counter",
        "Audit records dropped: queue_full or write_error (--audit-queue-full=drop), closed "
        "(a request answered after the log was closed at shutdown).",
    )
    errors = Family(
        "batchwire_audit_write_errors_total",
        "counter",
        "Failed writes to the audit log (disk full, directory gone...); see the server log.",
    )
    if log is not None:
        depth.add({}, log.depth)
        capacity.add({}, log.queue_size)
        written.add({}, log.written)
        counts = dict(log.dropped)
        for reason in ("queue_full", "write_error", "closed"):
            dropped.add({"reason": reason}, counts.get(reason, 0))
        errors.add({}, log.write_errors)
    return [depth, capacity, written, dropped, errors]


def _drift_families(drift: Any) -> list[Family]:
    psi = Family(
        "batchwire_drift_psi",
        "gauge",
        "Population stability index of a tensor feature over the drift window against the "
        "version's reference profile.",
    )
    bins = Family(
        "batchwire_drift_bin_count",
        "gauge",
        "Values of a tensor feature in each reference bin over the drift window.",
    )
    state = Family(
        "batchwire_drift_state",
        "gauge",
        "Drift state of a tensor: -1 too few items, 0 ok, 1 warning, 2 alert "
        "(batchwire.drift_thresholds; never affects readiness).",
    )
    nonfinite = Family(
        "batchwire_drift_nonfinite_ratio",
        "gauge",
        "Share of a tensor's values in the drift window that are NaN or infinite.",
    )
    out_of_range = Family(
        "batchwire_drift_out_of_range_ratio",
        "gauge",
        "Share of a tensor's finite values in the drift window outside the reference's range.",
    )
    window = Family(
        "batchwire_drift_window_requests",
        "gauge",
        "Requests counted in the model version's drift window now.",
    )
    dropped = Family(
        "batchwire_drift_dropped_requests_total",
        "counter",
        "Requests left out of drift statistics because the drift thread was behind.",
    )
    families = [psi, bins, state, nonfinite, out_of_range, window, dropped]
    if drift is None:
        return families
    # Copies: the loop thread replaces windows (reloads) while a scrape runs.
    for (model, version), drift_window in sorted(dict(drift.windows).items()):
        window.add({"model": model, "version": version}, drift_window.requests)
        for tensor, snapshot in sorted(drift_window.snapshot().items()):
            labels = {"model": model, "version": version, "tensor": tensor}
            state.add(labels, DRIFT_STATE_VALUES.get(snapshot.state, -1))
            nonfinite.add(labels, snapshot.nonfinite_ratio)
            out_of_range.add(labels, snapshot.out_of_range_ratio)
            for index, feature in enumerate(snapshot.features):
                feature_labels = {**labels, "feature": feature}
                value = float(snapshot.psi[index])
                if snapshot.state != "insufficient" and math.isfinite(value):
                    psi.add(feature_labels, value)
                for b, count in enumerate(snapshot.counts[index].tolist()):
                    bins.add({**feature_labels, "bin": str(b)}, count)
    for (model, version), count in sorted(dict(drift.dropped).items()):
        dropped.add({"model": model, "version": version}, count)
    return families
