"""The request budget: first come, first served; a body alone always gets in; a waiter that is
cancelled leaves no share behind and does not block those after it."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from foundation.grpc_server import RequestBudget


async def _admitted(budget: RequestBudget, sizes: list[int]) -> tuple[list[asyncio.Task], list[int]]:
    order: list[int] = []

    async def one(index: int, size: int) -> None:
        await budget.acquire(size)
        order.append(index)

    tasks = [asyncio.create_task(one(i, size)) for i, size in enumerate(sizes)]
    await asyncio.sleep(0)
    return tasks, order


async def test_waiters_are_admitted_in_arrival_order_and_a_large_body_alone_gets_in():
    budget = RequestBudget(100)
    await budget.acquire(90)
    tasks, order = await _admitted(budget, [50, 10, 500])
    assert order == []  # the small one does not overtake the first waiter
    budget.release(90)
    await asyncio.sleep(0)
    assert order == [0, 1]  # 50 + 10 fit; 500 waits until it is alone
    budget.release(50)
    budget.release(10)
    await asyncio.sleep(0)
    assert order == [0, 1, 2] and budget.used == 500
    budget.release(500)
    await asyncio.gather(*tasks)
    assert budget.used == 0


@settings(max_examples=50, deadline=None)
@given(sizes=st.lists(st.integers(1, 300), min_size=1, max_size=12), cancel=st.sets(st.integers(0, 11)))
def test_cancelled_waiters_leave_nothing_behind(sizes, cancel):
    async def run() -> None:
        budget = RequestBudget(256)
        await budget.acquire(200)
        tasks, order = await _admitted(budget, sizes)
        for index in cancel:
            if index < len(tasks):
                tasks[index].cancel()
        budget.release(200)
        released = 0
        while not all(task.done() for task in tasks):
            await asyncio.sleep(0)
            # Whoever got in holds exactly its share; finish them in turn.
            assert budget.used == sum(sizes[i] for i in order[released:])
            for index in order[released:]:
                budget.release(sizes[index])
            released = len(order)
        for index in order[released:]:
            budget.release(sizes[index])
        assert budget.used == 0 and not budget._waiting
        # Those not cancelled got in, in the order they came.
        assert order == sorted(order)
        assert set(order) >= set(range(len(sizes))) - set(cancel)

    asyncio.run(run())
