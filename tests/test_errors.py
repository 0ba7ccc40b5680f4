"""The exception hierarchy's own rules (rendering through the server is in tests/server/test_errors.py)."""

import pytest

from pipeserve import errors
from pipeserve.errors import judge_failure


@pytest.mark.parametrize(
    ("judge_status", "status", "error_type"),
    [
        (400, 400, "invalid_request_error"),
        (404, 404, "invalid_request_error"),  # the judge model is no longer served
        (413, 400, "invalid_request_error"),  # the judge model refused: nothing a retry fixes
        (429, 429, "rate_limit_error"),
        (503, 503, "server_error"),
        (None, 500, "server_error"),
        (200, 500, "server_error"),  # not an error status: the failure is still ours
        (999, 500, "server_error"),
    ],
)
def test_a_failed_judge_maps_to_a_status_by_what_a_retry_can_do(
    judge_status: int | None, status: int, error_type: str
) -> None:
    error = judge_failure("the judge failed", judge_status)
    assert (error.status_code, error.error_type) == (status, error_type)
    assert error.body()["error"]["code"] in ("judge_failed", "rate_limit_exceeded")


def test_every_client_error_class_is_drawn_in_the_module_docstring() -> None:
    """The hierarchy's picture is kept true: each class that a client can see appears in it."""
    assert errors.__doc__ is not None
    for name in dir(errors):
        value = getattr(errors, name)
        if isinstance(value, type) and issubclass(value, Exception) and value.__module__ == errors.__name__:
            assert name in errors.__doc__, f"{name} is missing from the hierarchy drawn in pipeserve/errors.py"
