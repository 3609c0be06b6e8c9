"""Testing code built on tokenlease without sleeping.

    from tokenlease import Manager
    from tokenlease.testing import ManualClock

    clock = ManualClock()
    manager = Manager.from_config(config, clock=clock)
    ...
    clock.advance(600, settle=manager)  # ten minutes pass; the background refresh is done

When the manager talks to a test server with a clock of its own, move the server first, then
the manager's clock, so work the move starts meets a server already at the new time.
"""

from ._native import ManualClock

__all__ = ["ManualClock"]
