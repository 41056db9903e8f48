"""A worker's cached state (featurelib.worker.cached): built once, frozen out of the cyclic collector,
and released whole (cycles included) when another spec replaces it."""

from __future__ import annotations

import gc
import weakref

from featurelib import worker


class Model:
    """A stand-in for a loaded model: its parts refer to each other (Keras layers do), so only the
    cyclic collector can free them."""

    def __init__(self) -> None:
        self.layers = [{"owner": self} for _ in range(3)]
        self.closed = False

    def close(self) -> None:
        self.closed = True


def test_state_is_built_once_frozen_and_its_cycles_freed_when_replaced():
    worker.teardown()
    gc.unfreeze()
    builds = []

    def build():
        builds.append(Model())
        return builds[-1]

    try:
        first, built = worker.cached(("spec", 1), build)
        again, built_again = worker.cached(("spec", 1), build)
        assert built and not built_again and again is first and len(builds) == 1
        # Frozen: a full collection after each task (PySpark's reused workers) no longer walks it.
        assert gc.get_freeze_count() > 0
        assert not any(o is first for o in gc.get_objects())

        alive = weakref.ref(first)
        del first, again, builds[:]
        second, built = worker.cached(("spec", 2), build)  # another run's spec
        assert built and second is not None
        assert alive() is None, "the replaced state's cycles were not collected (still frozen?)"
        assert gc.get_freeze_count() > 0
    finally:
        worker.teardown()
    assert gc.get_freeze_count() == 0


def test_teardown_closes_what_holds_resources():
    worker.teardown()
    model, _ = worker.cached(("spec", 3), Model)
    worker.teardown()
    assert model.closed and gc.get_freeze_count() == 0
