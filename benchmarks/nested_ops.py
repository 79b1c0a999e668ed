"""Torch ops on a ragged batch: NestedTensor against the packed tensor, torch.nested and padding, in one run.

Workload (issue 6): 64 sequences of lengths uniform in [16, 512], 256 features, float32, CPU, one
thread. Every row times one op in four forms, interleaved, and prints the medians and ratios:

- danling: the op on the NestedTensor;
- packed: the same op on the packed ``(sum(lengths), 256)`` tensor (``nt.concat``), the floor: it
  computes exactly the real data and nothing else; for attention, where packing the sequences
  together would let them attend to each other, the floor is a Python loop of per-sequence calls;
- torch.nested: the op on a ``torch.nested`` tensor of the jagged layout;
- padded: the op on the padded ``(64, max_len, 256)`` batch (attention with a key padding mask).

Rows: ``x + 1``, ``relu``, ``linear(256->256)``, ``layer_norm``, ``softmax(-1)`` (targets: at most
1.05x packed) and ``scaled_dot_product_attention`` with 4 heads of 64 (target: at most 1.2x the loop).

Run: ``python benchmarks/nested_ops.py [--repeats 30] [--batch 64] [--features 256]``.
"""

from __future__ import annotations

import argparse
import ctypes
import random
import statistics
import time
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F

from danling.tensors import NestedTensor

HEADS = 4


def _reuse_freed_memory() -> None:
    """Keep glibc from returning freed blocks to the OS, so that no variant pays page faults others skip.

    Each op allocates a result of up to ~130 MB (padded attention); without this, whether an
    allocation is served from the heap or by fresh zeroed pages depends on what ran just before.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD: serve large blocks from the heap
    libc.mallopt(-1, 1 << 31)  # M_TRIM_THRESHOLD: do not give the heap back


def _milliseconds(fn: Callable[[], object], inner: int) -> float:
    """Milliseconds per call, after one untimed call that settles the allocator for this variant."""
    fn()
    start = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - start) / inner * 1e3


def measure(variants: dict[str, Callable[[], object]], repeats: int, inner: int) -> dict[str, float]:
    """
    Median milliseconds per call of every variant, repeats interleaved so that drift hits all alike.

    The order is shuffled every repeat: a variant that runs right after a large one (the padded
    batch) is measurably slower for a few calls (the allocator and the caches settle), and no
    variant should always be the one that follows it (a fixed or rotated order would do that).
    """
    for fn in variants.values():
        fn()  # warm-up: caches, allocator, lazily built index tensors
    labels = list(variants)
    samples: dict[str, list[float]] = {label: [] for label in labels}
    order = random.Random(0)
    for _ in range(repeats):
        for label in order.sample(labels, len(labels)):
            samples[label].append(_milliseconds(variants[label], inner))
    return {label: statistics.median(times) for label, times in samples.items()}


def build_inputs(batch: int, features: int) -> dict:
    torch.manual_seed(0)
    lengths = torch.randint(16, 513, (batch,)).tolist()
    sequences = [torch.randn(length, features) for length in lengths]
    nested = NestedTensor(sequences)
    jagged = torch.nested.nested_tensor(sequences, layout=torch.jagged)
    padded = torch.nn.utils.rnn.pad_sequence(sequences, batch_first=True)
    mask = torch.arange(padded.shape[1]) < torch.tensor(lengths)[:, None]
    head_dim = features // HEADS
    return {
        "lengths": lengths,
        "nested": nested,
        "packed": nested.concat,
        "jagged": jagged,
        "padded": padded,
        "nested_heads": NestedTensor([s.view(-1, HEADS, head_dim).transpose(0, 1).contiguous() for s in sequences]),
        "loop_heads": [s.view(1, -1, HEADS, head_dim).transpose(1, 2).contiguous() for s in sequences],
        "jagged_heads": jagged.unflatten(-1, (HEADS, head_dim)).transpose(1, 2),
        "padded_heads": padded.view(batch, -1, HEADS, head_dim).transpose(1, 2).contiguous(),
        "key_padding": mask[:, None, None, :],
    }


def rows(inputs: dict, features: int) -> list[tuple[str, dict[str, Callable[[], object]]]]:
    weight, bias = torch.randn(features, features) / features**0.5, torch.randn(features)
    norm_weight, norm_bias = torch.randn(features), torch.randn(features)
    forms = {"danling": inputs["nested"], "packed": inputs["packed"], "torch.nested": inputs["jagged"]}
    forms["padded"] = inputs["padded"]

    def each(op: Callable[[torch.Tensor], object]) -> dict[str, Callable[[], object]]:
        return {label: (lambda x=x: op(x)) for label, x in forms.items()}

    q = inputs
    attention = {
        "danling": lambda: F.scaled_dot_product_attention(q["nested_heads"], q["nested_heads"], q["nested_heads"]),
        "packed": lambda: [F.scaled_dot_product_attention(h, h, h) for h in q["loop_heads"]],
        "torch.nested": lambda: F.scaled_dot_product_attention(q["jagged_heads"], q["jagged_heads"], q["jagged_heads"]),
        "padded": lambda: F.scaled_dot_product_attention(
            q["padded_heads"], q["padded_heads"], q["padded_heads"], attn_mask=q["key_padding"]
        ),
    }
    return [
        ("x + 1", each(lambda x: x + 1)),
        ("relu", each(F.relu)),
        (f"linear({features}->{features})", each(lambda x: F.linear(x, weight, bias))),
        ("layer_norm", each(lambda x: F.layer_norm(x, (features,), norm_weight, norm_bias))),
        ("softmax(-1)", each(lambda x: F.softmax(x, -1))),
        (f"sdpa ({HEADS} heads of {features // HEADS})", attention),
    ]


def print_table(results: list[tuple[str, dict[str, float], float]]) -> None:
    labels = ["danling", "packed", "torch.nested", "padded"]
    header = f"{'op':<22}" + "".join(f"{label:>14}" for label in labels)
    header += "".join(f"{'/' + label:>15}" for label in labels[1:]) + f"{'target':>9}"
    print(header)
    for name, medians, target in results:
        line = f"{name:<22}" + "".join(f"{medians[label]:>11.3f} ms" for label in labels)
        line += "".join(f"{medians['danling'] / medians[label]:>14.2f}x" for label in labels[1:])
        verdict = "ok" if medians["danling"] / medians["packed"] <= target else "MISS"
        print(line + f"{f'<={target}x':>9} {verdict}")
    print("ratios are danling / column (below 1.0: danling is faster); for sdpa the packed column is a Python")
    print("loop of per-sequence calls (packing all sequences into one call would let them attend to each other)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--features", type=int, default=256)
    args = parser.parse_args()
    torch.set_num_threads(1)
    _reuse_freed_memory()
    warnings.filterwarnings("ignore", message=".*nested tensors is in prototype stage.*")
    inputs = build_inputs(args.batch, args.features)
    lengths = inputs["lengths"]
    print(
        f"batch={args.batch} lengths 16..512 (sum {sum(lengths)}, max {max(lengths)}) x {args.features}, float32, "
        f"cpu, threads=1, torch {torch.__version__}, medians of {args.repeats} interleaved repeats"
    )
    results = []
    for name, variants in rows(inputs, args.features):
        attention = name.startswith("sdpa")
        repeats = max(5, args.repeats // 3) if attention else args.repeats
        medians = measure(variants, repeats, inner=1 if attention else 5)
        results.append((name, medians, 1.2 if attention else 1.05))
    print_table(results)


if __name__ == "__main__":
    main()
