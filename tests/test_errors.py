"""The exception hierarchy's own rules (rendering through the server is in tests/server/test_errors.py)."""

import pytest

from pipeserve.errors import JudgeFailedError


@pytest.mark.parametrize(
    ("judge_status", "status", "error_type"),
    [
        (400, 400, "invalid_request_error"),
        (404, 404, "invalid_request_error"),
        (503, 503, "server_error"),
        (None, 500, "server_error"),
        (200, 500, "server_error"),  # not an error status: the failure is still ours
        (999, 500, "server_error"),
    ],
)
def test_a_failed_judge_keeps_its_status_when_it_is_an_error_status(
    judge_status: int | None, status: int, error_type: str
) -> None:
    error = JudgeFailedError("the judge failed", status_code=judge_status)
    assert (error.status_code, error.error_type) == (status, error_type)
    assert error.body()["error"]["code"] == "judge_failed"
    assert JudgeFailedError.status_code == 500  # set per instance: the class default stays
