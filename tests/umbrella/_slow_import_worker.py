"""A worker whose module takes seconds to import, like a cold import of torch on a busy machine."""

import time

IMPORT_SECONDS = 4.0

time.sleep(IMPORT_SECONDS)  # every spawned rank pays this before its entry point runs


def quick_rank(rank: int, world_size: int) -> int:
    return rank
