"""StreamFlow: a stream is pipelined once a request is read before an earlier answer left."""

from __future__ import annotations

from batchwire.server.stream_flow import StreamFlow


def test_a_caller_that_waits_for_each_answer_never_pipelines() -> None:
    flow = StreamFlow()
    for _ in range(5):
        assert flow.read() is False
        flow.sent()
    assert not flow.pipelined and flow.unsent == 0


def test_a_request_read_before_the_previous_answer_left_marks_the_stream_for_good() -> None:
    flow = StreamFlow()
    assert flow.read() is False  # the first request: nothing unanswered yet
    assert flow.read() is True  # the caller did not wait for the first answer
    flow.sent()
    flow.sent()
    assert flow.unsent == 0
    assert flow.read() is True  # sticky: it may send ahead again at any time
