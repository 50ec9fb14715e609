"""One embedded Ray session for the RL tests (tests/helpers/rl.py runs a config in it).

Starting Ray costs ~5 s and each RL run starts 3-6 actors: sharing the session keeps the whole
RL suite within its few-minute budget. The session is private (``address="local"``, own temp
dir, token auth off) and shut down when the package's tests end, like the local target's.
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="package")
def ray_session():
    from cluster.local import start_private_ray, stop_private_ray

    temp = start_private_ray(8)  # the local target's runtime, with room for every role's actor
    yield
    stop_private_ray(temp)
