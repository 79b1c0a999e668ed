"""NestedTensor core costs against torch.nested (jagged layout) and pad_sequence, in one process.

Workload (from issue 5): 64 tensors of lengths 16..512 by 256 features. Measured:

- build: a batch from the list of tensors;
- tensor: the padded ``(64, max_len, 256)`` view, cold (no cached index or result);
- mask: the boolean padding mask, cold;
- build+tensor+mask: what a training step pays to get padded inputs and a mask (ours moves the
  data twice, into the packed buffer and then into the padded view, where ``pad_sequence`` moves
  it once: the packing is what every later op on the packed data saves);
- op: ``x * 2`` on 16k x 256 packed floats, NestedTensor against the plain packed tensor (the
  dispatch overhead target of issue 6 is 1.05x).

Every variant runs interleaved with the others, ``repeats`` times; the script prints medians and
the ratio of ours to each alternative (below 1.0: ours is faster). Timings use one CPU thread.

Run: ``python benchmarks/nested_core.py [--repeats 30] [--device cpu|cuda]``.
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import time
from collections.abc import Callable

import torch
from torch.nn.utils.rnn import pad_sequence

from danling.tensors import NestedTensor


def _keep_freed_memory() -> None:
    """Ask glibc to reuse freed blocks instead of returning them to the OS.

    Every variant allocates a ~33 MB output; above glibc's mmap threshold each allocation would
    page-fault fresh memory (several ms here), depending on what ran before. That is the OS, not
    the code being measured, so the benchmark turns it off where it can.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD
    libc.mallopt(-1, 1 << 31)  # M_TRIM_THRESHOLD


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn: Callable[[object], object], setup: Callable[[], object], device: torch.device, inner: int) -> float:
    """Milliseconds per call of ``fn(state)``, each call on its own ``setup()`` state (built untimed)."""
    fn(setup())  # untimed: leaves the allocator warm for this variant, whatever ran before it
    states = [setup() for _ in range(inner)]
    _sync(device)
    start = time.perf_counter()
    while states:  # each state (and what it cached) is freed right after use, like a discarded result
        fn(states.pop())
    _sync(device)
    return (time.perf_counter() - start) / inner * 1e3


def _compare(name: str, variants: dict, device: torch.device, repeats: int, inner: int) -> dict[str, float]:
    """Run ``variants`` (label -> fn or (fn, setup)) interleaved; print medians and ours/alternative ratios."""
    variants = {label: v if isinstance(v, tuple) else (v, lambda: None) for label, v in variants.items()}
    for fn, setup in variants.values():  # warm-up
        fn(setup())
    samples: dict[str, list[float]] = {label: [] for label in variants}
    for _ in range(repeats):
        for label, (fn, setup) in variants.items():
            samples[label].append(_time(fn, setup, device, inner))
    medians = {label: statistics.median(times) for label, times in samples.items()}
    ours = medians["danling"]
    print(f"\n{name}")
    for label, median in medians.items():
        ratio = "" if label == "danling" else f"   danling/{label} = {ours / median:.2f}x"
        print(f"  {label:<22} {median:9.3f} ms{ratio}")
    return medians


def _cold(nt: NestedTensor) -> NestedTensor:
    """The same data with a fresh layout object, so no cached index or view is reused."""
    layout = type(nt._layout).from_shapes(nt._layout.element_shapes)
    return NestedTensor._from_packed(nt._values, layout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--features", type=int, default=256)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    _keep_freed_memory()
    device = torch.device(args.device)

    lengths = torch.randint(16, 513, (args.batch,)).tolist()
    tensors = [torch.randn(n, args.features, device=device) for n in lengths]
    ours = NestedTensor(tensors)
    jagged = torch.nested.nested_tensor(tensors, layout=torch.jagged)
    max_len = max(lengths)
    assert torch.equal(ours.tensor, pad_sequence(tensors, batch_first=True))
    assert torch.equal(ours.tensor, torch.nested.to_padded_tensor(jagged, 0.0))
    print(f"device={device} batch={args.batch} lengths 16..512 (max {max_len}) x {args.features}, threads=1")

    def padded_mask() -> torch.Tensor:  # what a pad_sequence user writes for every batch
        lengths_of_batch = torch.tensor([t.shape[0] for t in tensors], device=device)
        return torch.arange(max_len, device=device) < lengths_of_batch[:, None]

    _compare(
        "build from a list of tensors",
        {
            "danling": lambda _: NestedTensor(tensors),
            "torch.nested(jagged)": lambda _: torch.nested.nested_tensor(tensors, layout=torch.jagged),
            "pad_sequence": lambda _: pad_sequence(tensors, batch_first=True),
        },
        device,
        args.repeats,
        inner=5,
    )

    def fresh() -> NestedTensor:
        return _cold(ours)

    _compare(
        ".tensor (padded, cold)",
        {
            # Every variant gets the same untimed setup (a fresh NestedTensor, which only ours
            # reads), so all calls start from the same memory state.
            "danling": (lambda nt: nt.tensor, fresh),
            "torch.nested(jagged)": (lambda _: torch.nested.to_padded_tensor(jagged, 0.0), fresh),
            "pad_sequence": (lambda _: pad_sequence(tensors, batch_first=True), fresh),
        },
        device,
        args.repeats,
        inner=5,
    )
    _compare(
        ".mask (cold)",
        {"danling": (lambda nt: nt.mask, lambda: _cold(ours)), "lengths + arange": lambda _: padded_mask()},
        device,
        args.repeats,
        inner=20,
    )

    def ours_all(_) -> tuple:
        nt = NestedTensor(tensors)
        return nt.tensor, nt.mask

    _compare(
        "build + .tensor + .mask",
        {
            "danling": ours_all,
            "torch.nested(jagged)": lambda _: (
                torch.nested.to_padded_tensor(torch.nested.nested_tensor(tensors, layout=torch.jagged), 0.0),
                padded_mask(),
            ),
            "pad_sequence": lambda _: (pad_sequence(tensors, batch_first=True), padded_mask()),
        },
        device,
        args.repeats,
        inner=5,
    )

    big = NestedTensor([torch.randn(n, args.features, device=device) for n in [256] * 64])
    values = big._values
    _compare(
        f"x * 2 on {tuple(values.shape)} packed floats (issue-6 overhead target 1.05x)",
        {"danling": lambda _: big * 2, "packed tensor": lambda _: values * 2},
        device,
        args.repeats,
        inner=5,
    )


if __name__ == "__main__":
    main()
