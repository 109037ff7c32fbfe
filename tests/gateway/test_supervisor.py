"""The supervisor restarts a loop that crashed (with backoff) and stops loops in order."""

from __future__ import annotations

import asyncio

from tidal.gateway.supervisor import Supervisor


async def test_a_crashed_loop_is_logged_and_comes_back(caplog) -> None:  # type: ignore[no-untyped-def]
    runs: list[int] = []
    steady = asyncio.Event()

    async def flaky() -> None:
        runs.append(len(runs) + 1)
        if len(runs) < 3:
            raise RuntimeError(f"boom {len(runs)}")
        steady.set()
        await asyncio.Event().wait()  # then runs until stopped

    supervisor = Supervisor(first_s=0.01, max_s=0.05)
    supervisor.add("flaky", flaky)
    supervisor.start()
    await asyncio.wait_for(steady.wait(), 5)
    (status,) = supervisor.status()
    assert runs == [1, 2, 3]
    assert status.running and status.restarts == 2 and status.last_error == "RuntimeError: boom 2"
    assert "loop flaky crashed" in caplog.text
    await supervisor.stop()
    assert not supervisor.status()[0].running


async def test_a_loop_that_returns_is_restarted_too() -> None:
    runs: list[int] = []
    again = asyncio.Event()

    async def quits() -> None:
        runs.append(1)
        if len(runs) == 2:
            again.set()
            await asyncio.Event().wait()

    supervisor = Supervisor(first_s=0.01)
    supervisor.add("quits", quits)
    supervisor.start()
    await asyncio.wait_for(again.wait(), 5)
    assert supervisor.status()[0].last_error == "the loop returned"
    await supervisor.stop()


async def test_one_broken_loop_does_not_stop_the_others_and_stop_goes_in_reverse_order() -> None:
    ticks: list[str] = []
    stopped: list[str] = []

    def loop(name: str, broken: bool):  # type: ignore[no-untyped-def]
        async def run() -> None:
            try:
                while True:
                    if broken:
                        raise ValueError("always")
                    ticks.append(name)
                    await asyncio.sleep(0.001)
            finally:
                stopped.append(name)

        return run

    supervisor = Supervisor(first_s=0.01, max_s=0.02)
    supervisor.add("writer", loop("writer", False))
    supervisor.add("broken", loop("broken", True))
    supervisor.add("autoscaler", loop("autoscaler", False))
    supervisor.start()
    while ticks.count("writer") < 20 or ticks.count("autoscaler") < 20:
        await asyncio.sleep(0.005)
    assert supervisor.status()[1].restarts >= 1
    await supervisor.stop()
    assert [name for name in stopped if name != "broken"] == ["autoscaler", "writer"]
