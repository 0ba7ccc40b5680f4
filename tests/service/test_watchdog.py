"""The watchdog exits the server only for a model that stays unable to serve."""

from __future__ import annotations

import asyncio

from pipeserve.service.models import ServedModel
from pipeserve.service.watchdog import watch_engines
from pipeserve.settings import ModelConfig
from tests.service.test_chat import FakeEngine


class Ailing(FakeEngine):
    def __init__(self, problems: list[str | None]) -> None:
        super().__init__([])
        self.problems = problems

    def problem(self) -> str | None:
        return self.problems.pop(0) if len(self.problems) > 1 else self.problems[0]


def served(engine: FakeEngine) -> ServedModel:
    return ServedModel(config=ModelConfig(id="m"), engine=engine)


async def test_a_model_that_stays_unable_to_serve_makes_the_server_exit() -> None:
    exits: list[bool] = []
    engine = Ailing(["the engine has not completed a step for 61 s"])
    await asyncio.wait_for(watch_engines([served(engine)], 0.05, lambda: exits.append(True), every=0.01), 5)
    assert exits == [True]


async def test_a_model_that_recovers_in_time_keeps_the_server_running() -> None:
    exits: list[bool] = []
    # short spells of trouble, again and again, for longer than the allowance in all: each spell is shorter
    spells: list[str | None] = ["restarting", "restarting", None] * 20 + [None]
    engine = Ailing(spells)
    task = asyncio.create_task(watch_engines([served(engine)], 0.1, lambda: exits.append(True), every=0.01))
    await asyncio.sleep(0.5)
    assert exits == [] and not task.done()
    task.cancel()
