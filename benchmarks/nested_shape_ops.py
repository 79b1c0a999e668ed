"""Shape, joining, matmul and sorting ops on a NestedTensor against the loop a user would write, in one process.

Workload (issue 6): 64 sequences of lengths uniform in [16, 512], hidden 256, float32, CPU, one thread.
Every row times our NestedTensor op and its alternatives interleaved, ``repeats`` times, and prints
medians and the ratio of ours to each (below 1.0: ours is faster):

- ``packed``: the same op on the packed ``(sum(lengths), 256)`` tensor, where that is the same
  computation (static dims, matmul with a weight): the dispatch overhead, target 1.05x;
- ``loop``: a Python loop over the sequences (views of one buffer) and one ``torch.cat`` of the
  results: what ragged ops cost without a NestedTensor;
- ``torch.nested``: the jagged-layout nested tensor, where it supports the op.

Run: ``python benchmarks/nested_shape_ops.py [--repeats 15]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from danling.tensors import NestedTensor


def _median_ms(fn: Callable[[], object], inner: int) -> float:
    start = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - start) * 1e3 / inner


def _row(name: str, variants: dict[str, Callable[[], object]], repeats: int, inner: int) -> None:
    samples: dict[str, list[float]] = {key: [] for key in variants}
    for fn in variants.values():
        fn()  # warm caches (row indices are built once per layout, as in a training loop)
    for _ in range(repeats):
        for key, fn in variants.items():
            samples[key].append(_median_ms(fn, inner))
    medians = {key: statistics.median(values) for key, values in samples.items()}
    ours = medians["ours"]
    cells = [f"{key} {value:8.3f} ms" for key, value in medians.items()]
    ratios = [f"{ours / value:5.2f}x {key}" for key, value in medians.items() if key != "ours"]
    print(f"{name:<28} " + "  ".join(cells) + "   ours/" + ", ours/".join(ratios))


def _loop(elements: list[torch.Tensor], op: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[], object]:
    return lambda: torch.cat([op(e) for e in elements])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--inner", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(16, 513, (64,), generator=generator).tolist()
    packed = torch.randn(sum(lengths), 256, generator=generator)
    elements = list(packed.split(lengths))
    nt = NestedTensor(elements)
    jagged = torch.nested.nested_tensor_from_jagged(packed, torch.tensor([0, *lengths]).cumsum(0))
    weight = torch.randn(256, 256, generator=generator)
    other = NestedTensor([e * 2 for e in elements])
    doubled, other_elements = other._values, list(other.unbind())  # joins read two buffers, never one twice
    run = lambda name, variants: _row(name, variants, args.repeats, args.inner)  # noqa: E731

    print(f"64 sequences, lengths {min(lengths)}..{max(lengths)} ({sum(lengths)} rows), hidden 256, 1 thread")
    run(
        "x @ W (256->256)",
        {"ours": lambda: nt @ weight, "packed": lambda: packed @ weight, "torch.nested": lambda: jagged @ weight},
    )
    run(
        "einsum bld,de->ble",
        {"ours": lambda: torch.einsum("bld,de->ble", nt, weight), "packed": lambda: packed @ weight},
    )
    run("cat batches", {"ours": lambda: torch.cat([nt, other]), "packed": lambda: torch.cat([packed, doubled])})
    run(
        "cat along length",
        {
            "ours": lambda: torch.cat([nt, other], 1),
            "loop": lambda: torch.cat([torch.cat([e, d]) for e, d in zip(elements, other_elements)]),
        },
    )
    run(
        "cat along hidden",
        {"ours": lambda: torch.cat([nt, other], 2), "packed": lambda: torch.cat([packed, doubled], 1)},
    )
    run(
        "stack (new last dim)",
        {"ours": lambda: torch.stack([nt, other], -1), "packed": lambda: torch.stack([packed, doubled], -1)},
    )
    run("flip length", {"ours": lambda: nt.flip(1), "loop": _loop(elements, lambda e: e.flip(0))})
    run("roll length by 3", {"ours": lambda: nt.roll(3, 1), "loop": _loop(elements, lambda e: e.roll(3, 0))})
    run(
        "narrow length 0..16",
        {"ours": lambda: nt.narrow(1, 0, 16), "loop": _loop(elements, lambda e: e.narrow(0, 0, 16))},
    )
    run(
        "chunk length in 2",
        {"ours": lambda: nt.chunk(2, 1), "loop": lambda: [torch.cat(p) for p in zip(*(e.chunk(2) for e in elements))]},
    )
    run(
        "sort length",
        {"ours": lambda: nt.sort(1), "loop": lambda: [torch.cat(p) for p in zip(*(e.sort(0) for e in elements))]},
    )
    run("sort hidden", {"ours": lambda: nt.sort(2), "packed": lambda: packed.sort(1)})
    run(
        "topk 8 along length",
        {"ours": lambda: nt.topk(8, 1), "loop": lambda: [torch.cat(p) for p in zip(*(e.topk(8, 0) for e in elements))]},
    )
    run("cumsum length", {"ours": lambda: nt.cumsum(1), "loop": _loop(elements, lambda e: e.cumsum(0))})
    run("cumprod length", {"ours": lambda: nt.cumprod(1), "loop": _loop(elements, lambda e: e.cumprod(0))})
    run(
        "cummax length",
        {"ours": lambda: nt.cummax(1), "loop": lambda: [torch.cat(p) for p in zip(*(e.cummax(0) for e in elements))]},
    )
    run("cumsum hidden", {"ours": lambda: nt.cumsum(2), "packed": lambda: packed.cumsum(1)})
    run(
        "transpose+reshape(-1)",
        {"ours": lambda: nt.transpose(1, 2).reshape(-1), "loop": _loop(elements, lambda e: e.T.reshape(-1))},
    )


if __name__ == "__main__":
    main()
