r"""
Attention on ragged batches: ``F.scaled_dot_product_attention`` and ``F.multi_head_attention_forward``.

Each element attends only to its own keys, so the ragged layout *is* the key padding mask: nothing
is padded and no mask is built for it. ``nn.MultiheadAttention`` (``batch_first`` either way,
``need_weights`` either way), ``nn.TransformerEncoderLayer`` and ``nn.TransformerEncoder`` accept
NestedTensors of ``(L, E)`` sequences through ``multi_head_attention_forward``: the projections run
once on the packed rows, only the attention itself runs per sequence.

The attention kernel is chosen per call:

- CUDA, ``float16``/``bfloat16``, no ``attn_mask``, no dropout, heads packed as ``(rows, H, E)``:
  the variable-length flash kernel ``torch.nn.attention.varlen.varlen_attn`` (torch 2.9 and newer),
  one launch for the whole batch;
- otherwise (always on CPU, where torch has no variable-length kernel) one fused SDPA call per
  element on views of the packed buffer, outputs concatenated once. This is a documented
  per-element path (it calls ``check_slow_path``), and the fastest one measured on CPU: on 64
  sequences of 16-512 tokens, 4 heads of 64, one thread, it costs 0.85-1.15x a Python loop of
  per-sequence SDPA calls (1.1x with backward; ``nn.MultiheadAttention`` 1.1x a loop of per-sequence
  module calls), where padding the batch costs 3.1-3.4x and ``torch.nested`` 11-22x.

Dense operands are batch-first: a dense ``key``/``value`` gives element ``i`` its row ``[i]``; a dense
``attn_mask`` with a batch dim gives row ``[i]``, and any dense mask is cropped to each element's
``(L, S)`` (it is read as a mask over the padded batch).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from functools import lru_cache

import torch
from torch import Tensor
from torch.nn import functional as F

from .._layout import NestedLayout
from ..nested_tensor import NestedTensor
from ._packed import from_elements, is_nested, packed_like, split_elements
from ._registry import check_slow_path, implements

HALF_PRECISION = (torch.float16, torch.bfloat16)


# ---------------------------------------------------------------------------- operands per element


def _batch_size(*operands: object) -> int:
    sizes = {len(t) for t in operands if is_nested(t)}
    if len(sizes) != 1:
        raise ValueError(f"NestedTensor operands of attention must have one batch size, got {sorted(sizes)}")
    return sizes.pop()


def element_operands(operand: Tensor, batch: int, name: str) -> Sequence[Tensor]:
    """Element views of a NestedTensor operand, or the rows of a dense batch-first one."""
    if is_nested(operand):
        return split_elements(operand)
    if operand.dim() == 0 or operand.size(0) != batch:
        raise ValueError(
            f"A dense {name} next to NestedTensors must be batch-first with {batch} rows, got {tuple(operand.shape)}"
        )
    return operand.unbind(0)


def element_masks(
    mask: Tensor | None, batch: int, lengths: Sequence[tuple[int, ...]], batched: Callable[[Tensor], bool], name: str
) -> list[Tensor | None]:
    """Per-element masks: NestedTensor elements, or a dense mask (rows when ``batched``) cropped to ``lengths``."""
    if mask is None:
        return [None] * batch
    if is_nested(mask):
        if len(mask) != batch:
            raise ValueError(f"{name} has {len(mask)} elements for a batch of {batch}")
        return list(split_elements(mask))
    rows = mask.unbind(0) if batched(mask) else [mask] * batch
    if len(rows) != batch:
        raise ValueError(f"{name} of shape {tuple(mask.shape)} does not have a row per element of {batch}")
    return [row[(..., *(slice(0, size) for size in sizes))] for row, sizes in zip(rows, lengths)]


# ---------------------------------------------------------------------------- kernels


@lru_cache(maxsize=1)
def varlen_kernel() -> tuple[Callable, frozenset[str]] | None:
    """``varlen_attn`` and its keyword names when this torch provides it (2.9 and newer), else ``None``."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn, frozenset(inspect.signature(varlen_attn).parameters)


def varlen_supported(
    device_type: str,
    dtype: torch.dtype,
    *,
    is_causal: bool,
    equal_lengths: bool,
    enable_gqa: bool = False,
    scale: float | None = None,
) -> bool:
    """Whether this torch has a variable-length kernel for these settings (causal needs equal lengths)."""
    kernel = varlen_kernel()
    if kernel is None or device_type != "cuda" or dtype not in HALF_PRECISION:
        return False
    parameters = kernel[1]
    if (enable_gqa and "enable_gqa" not in parameters) or (scale is not None and "scale" not in parameters):
        return False
    return not is_causal or (equal_lengths and bool({"window_size", "is_causal"} & parameters))


def use_varlen(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    *,
    attn_mask: Tensor | None,
    dropout_p: float,
    is_causal: bool,
    scale: float | None,
    enable_gqa: bool,
    device_type: str | None = None,
) -> bool:
    """
    Whether ``scaled_dot_product_attention`` can run as one variable-length kernel call.

    Needs NestedTensors of ``(H, L, E)`` ragged only along ``L`` with heads packed ``(rows, H, E)``, no
    mask, no dropout, and what [`varlen_supported`][] asks (CUDA, half precision; causal attention, which
    the kernel aligns bottom-right, only with equal query and key lengths). ``device_type`` stands in for
    the query's device in tests.
    """
    if not all(is_nested(t) for t in (query, key, value)) or attn_mask is not None or dropout_p:
        return False
    if not all(_heads_packed(t) for t in (query, key, value)):
        return False
    if key._layout.packed_sizes != value._layout.packed_sizes:
        return False
    return varlen_supported(
        device_type or query.device.type,
        query.dtype,
        is_causal=is_causal,
        equal_lengths=query._layout.packed_sizes == key._layout.packed_sizes,
        enable_gqa=enable_gqa,
        scale=scale,
    )


def _heads_packed(nt: NestedTensor) -> bool:
    layout = nt._layout
    return layout.rank == 3 and layout.permutation == (1, 0, 2) and layout.ragged_rank == 1


def varlen_rows(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    query_layout: NestedLayout,
    key_layout: NestedLayout,
    *,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> Tensor:
    """One ``varlen_attn`` call on packed ``(rows, H, E)`` heads; cumulative lengths come from the layouts."""
    kernel, parameters = varlen_kernel()
    device = query.device
    options: dict = {}
    if scale is not None:
        options["scale"] = scale
    if enable_gqa:
        options["enable_gqa"] = True
    if is_causal:
        options.update({"window_size": (-1, 0)} if "window_size" in parameters else {"is_causal": True})
    query_offsets, key_offsets = (
        layout._cached("varlen_offsets", device, lambda d, layout=layout: layout.offsets.to(d, torch.int32))
        for layout in (query_layout, key_layout)
    )
    longest_query, longest_key = max(query_layout.packed_sizes), max(key_layout.packed_sizes)
    return kernel(query, key, value, query_offsets, key_offsets, longest_query, longest_key, **options)


def _layout_like(query: NestedTensor, last: int) -> NestedLayout:
    """``query``'s layout with the (static) last element dim resized to ``last``."""
    layout = query._layout
    sizes = list(layout.static_sizes)
    sizes[layout.values_dim(layout.rank - 1) - 1] = last
    return layout.with_static_sizes(sizes)


def _attend_one(
    query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None, dropout_p: float, is_causal: bool, **options
) -> Tensor:
    """SDPA on one element; 3-d elements run as a batch of one so CPU picks its fused flash kernel."""
    if query.dim() == key.dim() == value.dim() == 3 and (mask is None or mask.dim() <= 3):
        mask = mask if mask is None else mask.unsqueeze(0) if mask.dim() == 3 else mask
        return F.scaled_dot_product_attention(
            query[None], key[None], value[None], mask, dropout_p, is_causal, **options
        )[0]
    return F.scaled_dot_product_attention(query, key, value, mask, dropout_p, is_causal, **options)


@implements(F.scaled_dot_product_attention)
def scaled_dot_product_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> Tensor:
    r"""
    ``F.scaled_dot_product_attention`` of every element: self or cross attention, lengths may differ.

    The output is a NestedTensor shaped like ``query`` (last dim from ``value``), or a dense batch when
    ``query`` is dense.

    Examples:
        >>> import torch.nn.functional as F
        >>> query = NestedTensor([torch.randn(2, 5, 8), torch.randn(2, 3, 8)])
        >>> key = NestedTensor([torch.randn(2, 4, 8), torch.randn(2, 6, 8)])
        >>> value = NestedTensor([torch.randn(2, 4, 16), torch.randn(2, 6, 16)])
        >>> output = F.scaled_dot_product_attention(query, key, value, is_causal=True)
        >>> [tuple(element.shape) for element in output.unbind()]
        [(2, 5, 16), (2, 3, 16)]
        >>> expected = F.scaled_dot_product_attention(query[1], key[1], value[1], is_causal=True)
        >>> torch.allclose(output[1], expected, atol=1e-6)
        True
    """
    options = {"scale": scale} if scale is not None else {}
    if enable_gqa:
        options["enable_gqa"] = True
    if use_varlen(
        query,
        key,
        value,
        attn_mask=attn_mask,
        dropout_p=dropout_p,
        is_causal=is_causal,
        scale=scale,
        enable_gqa=enable_gqa,
    ):
        output = varlen_rows(
            query._values,
            key._values,
            value._values,
            query._layout,
            key._layout,
            is_causal=is_causal,
            scale=scale,
            enable_gqa=enable_gqa,
        )
        return packed_like(query, output, _layout_like(query, output.size(-1)))
    check_slow_path("scaled_dot_product_attention (no variable-length kernel for this device and dtype)")
    batch = _batch_size(query, key, value, attn_mask)
    queries = element_operands(query, batch, "query")
    keys = element_operands(key, batch, "key")
    values = element_operands(value, batch, "value")
    lengths = [(q.size(-2), k.size(-2)) for q, k in zip(queries, keys)]
    masks = element_masks(attn_mask, batch, lengths, lambda m: m.dim() > queries[0].dim(), "attn_mask")
    outputs = [
        _attend_one(q, k, v, m, dropout_p, is_causal, **options) for q, k, v, m in zip(queries, keys, values, masks)
    ]
    if not is_nested(query):
        return torch.stack(outputs)
    if not outputs or query._layout.values_dim(query._layout.rank - 1) is None:
        return from_elements(outputs, like=query) if outputs else query
    layout = _layout_like(query, outputs[0].size(-1))
    return packed_like(query, layout.pack(outputs), layout)


# ---------------------------------------------------------------------------- multi-head attention


def _sequences(operand: Tensor, name: str) -> NestedTensor:
    """A NestedTensor of ``(L, E)`` sequences packed ``(rows, E)``; a dense operand is ``(L, N, E)``."""
    if not is_nested(operand):
        if operand.dim() != 3:
            raise ValueError(f"A dense {name} next to NestedTensors must be (L, N, E), got {tuple(operand.shape)}")
        operand = NestedTensor(operand.unbind(1))
    layout = operand._layout
    if layout.rank != 2 or len({shape[1] for shape in layout.element_shapes}) > 1:
        raise ValueError(
            f"multi_head_attention_forward expects {name} elements of shape (L, E) with one E, "
            f"got {layout.element_shapes}"
        )
    if layout.batch_size and layout.values_dim(1) is None:  # E packed with the rows: only after a transpose
        check_slow_path(f"repacking the {name} of multi_head_attention_forward as (rows, E)")
        return from_elements(split_elements(operand), like=operand)
    return operand


def _rows(nt: NestedTensor) -> Tensor:
    return nt._values.reshape(-1, nt._layout.element_shapes[0][1]) if len(nt) else nt._values.reshape(0, 0)


def _project(
    query: NestedTensor,
    key: NestedTensor,
    value: NestedTensor,
    in_proj_weight: Tensor | None,
    in_proj_bias: Tensor | None,
    separate: tuple[Tensor, Tensor, Tensor] | None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Input projections on the packed rows (one matmul for self-attention), as ``(rows, E)`` each."""
    biases = in_proj_bias.chunk(3) if in_proj_bias is not None else (None, None, None)
    if separate is not None:
        return tuple(F.linear(_rows(t), w, b) for t, w, b in zip((query, key, value), separate, biases))
    if query is key and key is value:
        return F.linear(_rows(query), in_proj_weight, in_proj_bias).chunk(3, dim=-1)
    weights = in_proj_weight.chunk(3)
    q = F.linear(_rows(query), weights[0], biases[0])
    if key is value:
        kv_bias = None if in_proj_bias is None else torch.cat(biases[1:])
        return (q, *F.linear(_rows(key), torch.cat(weights[1:]), kv_bias).chunk(2, dim=-1))
    return q, F.linear(_rows(key), weights[1], biases[1]), F.linear(_rows(value), weights[2], biases[2])


def _float_mask(mask: Tensor | None, dtype: torch.dtype, name: str) -> Tensor | None:
    """``nn.MultiheadAttention``'s mask convention: True (or ``-inf``) blocks a position; made additive."""
    if mask is None or mask.is_floating_point():
        return mask if mask is None else mask.to(dtype)
    if mask.dtype != torch.bool:
        raise ValueError(f"only bool and floating types of {name} are supported, got {mask.dtype}")
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(mask, float("-inf"))


@implements(F.multi_head_attention_forward)
def multi_head_attention_forward(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    embed_dim_to_check: int,
    num_heads: int,
    in_proj_weight: Tensor | None,
    in_proj_bias: Tensor | None,
    bias_k: Tensor | None,
    bias_v: Tensor | None,
    add_zero_attn: bool,
    dropout_p: float,
    out_proj_weight: Tensor,
    out_proj_bias: Tensor | None,
    training: bool = True,
    key_padding_mask: Tensor | None = None,
    need_weights: bool = True,
    attn_mask: Tensor | None = None,
    use_separate_proj_weight: bool = False,
    q_proj_weight: Tensor | None = None,
    k_proj_weight: Tensor | None = None,
    v_proj_weight: Tensor | None = None,
    static_k: Tensor | None = None,
    static_v: Tensor | None = None,
    average_attn_weights: bool = True,
    is_causal: bool = False,
) -> tuple[NestedTensor, NestedTensor | None]:
    r"""
    ``F.multi_head_attention_forward`` on NestedTensors of ``(L, E)`` sequences (each its own batch of one).

    The NestedTensors carry their batch dim, so ``batch_first`` of the module does not matter. Masks
    follow the module's convention (True blocks); dense masks are read over the padded batch and
    cropped per sequence: ``key_padding_mask`` ``(N, S)``, ``attn_mask`` ``(L, S)`` or ``(N * H, L, S)``.
    Attention weights come back as a batch-first NestedTensor of ``(L, S)`` (or ``(H, L, S)``) elements.

    Examples:
        >>> attention = torch.nn.MultiheadAttention(8, 2, batch_first=True)
        >>> tokens = NestedTensor([torch.randn(5, 8), torch.randn(3, 8)])
        >>> output, weights = attention(tokens, tokens, tokens)
        >>> output.shape, [tuple(w.shape) for w in weights.unbind()]
        (torch.Size([2, 5, 8]), [(5, 5), (3, 3)])
        >>> expected, _ = attention(tokens[1][None], tokens[1][None], tokens[1][None])
        >>> torch.allclose(output[1], expected[0], atol=1e-6)
        True
    """
    self_attention = query is key and key is value
    query = _sequences(query, "query")
    key = query if self_attention else _sequences(key, "key")
    value = key if self_attention or value is key else _sequences(value, "value")
    batch = _batch_size(query, key, value)
    if key._layout.packed_sizes != value._layout.packed_sizes:
        raise ValueError(
            f"multi_head_attention_forward needs a value per key, got key lengths {key._layout.packed_sizes} "
            f"and value lengths {value._layout.packed_sizes}"
        )
    embed_dim = query._layout.element_shapes[0][1] if batch else embed_dim_to_check
    if embed_dim != embed_dim_to_check:
        raise ValueError(f"multi_head_attention_forward expects embedding dim {embed_dim_to_check}, got {embed_dim}")
    if embed_dim % num_heads:
        raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
    if is_causal and attn_mask is None:
        raise ValueError("multi_head_attention_forward needs attn_mask when is_causal is set (the mask is a hint)")
    separate = (q_proj_weight, k_proj_weight, v_proj_weight) if use_separate_proj_weight else None
    q, k, v = _project(query, key, value, in_proj_weight, in_proj_bias, separate)
    heads = _HeadSplit(num_heads, embed_dim // num_heads, bias_k, bias_v, add_zero_attn, static_k, static_v)
    lengths = [(target, source) for target, source in zip(query._layout.packed_sizes, key._layout.packed_sizes)]
    masks = _merged_masks(attn_mask, key_padding_mask, lengths, num_heads, heads.extra_keys, q.dtype)
    attend = _Attend(
        heads, masks, dropout_p if training else 0.0, is_causal and key_padding_mask is None and not need_weights
    )
    rows, weights = attend(q, k, v, query._layout, key._layout, need_weights, average_attn_weights)
    output = packed_like(query, F.linear(rows, out_proj_weight, out_proj_bias), query._layout)
    return output, (type(query)(weights) if need_weights and weights else None)


class _Attend:
    """The attention step of ``multi_head_attention_forward`` on projected rows ``(rows, E)``."""

    def __init__(self, heads: _HeadSplit, masks: list[Tensor | None], dropout_p: float, causal: bool) -> None:
        self.heads, self.masks, self.dropout_p, self.causal = heads, masks, dropout_p, causal

    def __call__(
        self, q: Tensor, k: Tensor, v: Tensor, query: NestedLayout, key: NestedLayout, need_weights: bool, average: bool
    ) -> tuple[Tensor, list[Tensor]]:
        """Attended rows ``(rows, E)`` and, when asked, each sequence's weights."""
        heads = self.heads
        unmasked = self.causal or all(m is None for m in self.masks)
        if not need_weights and not self.dropout_p and heads.plain and unmasked:
            equal = query.packed_sizes == key.packed_sizes
            if varlen_supported(q.device.type, q.dtype, is_causal=self.causal, equal_lengths=equal):
                split = [t.unflatten(-1, (heads.heads, heads.head_dim)) for t in (q, k, v)]
                return varlen_rows(*split, query, key, is_causal=self.causal).flatten(-2), []
        check_slow_path("multi_head_attention_forward attention (one SDPA call per sequence without a varlen kernel)")
        outputs, weights = [], []
        pieces = zip(q.split(query.packed_sizes), k.split(key.packed_sizes), v.split(key.packed_sizes))
        for index, (q_rows, k_rows, v_rows) in enumerate(pieces):
            q_heads, k_heads, v_heads = heads.split(index, q_rows, k_rows, v_rows)
            mask = None if self.causal else self.masks[index]
            if need_weights:
                output, weight = _attention_with_weights(q_heads, k_heads, v_heads, mask, self.dropout_p)
                weights.append(weight.mean(0) if average else weight)
            else:
                output = _attend_one(q_heads, k_heads, v_heads, mask, self.dropout_p, self.causal)
            outputs.append(output.transpose(0, 1).flatten(1))
        return (torch.cat(outputs) if outputs else q), weights


class _HeadSplit:
    """Turns one sequence's projected rows into heads, with ``bias_k/v``, ``static_k/v`` and zero attention."""

    def __init__(self, heads: int, head_dim: int, bias_k, bias_v, add_zero_attn: bool, static_k, static_v) -> None:
        self.heads, self.head_dim = heads, head_dim
        self.bias_k, self.bias_v = bias_k, bias_v
        self.add_zero_attn = add_zero_attn
        self.static_k, self.static_v = static_k, static_v
        self.extra_keys = int(bias_k is not None) + int(add_zero_attn)
        self.plain = self.extra_keys == 0 and bias_v is None and static_k is None and static_v is None
        """Whether heads are plain views of the projected rows (what a variable-length kernel takes)."""

    def split(self, index: int, q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        k = k if self.bias_k is None else torch.cat([k, self.bias_k.reshape(1, -1)])
        v = v if self.bias_v is None else torch.cat([v, self.bias_v.reshape(1, -1)])
        q, k, v = (t.unflatten(-1, (self.heads, self.head_dim)).transpose(0, 1) for t in (q, k, v))
        rows = slice(index * self.heads, (index + 1) * self.heads)
        k = k if self.static_k is None else self.static_k[rows]
        v = v if self.static_v is None else self.static_v[rows]
        if self.add_zero_attn:
            k = torch.cat([k, k.new_zeros(self.heads, 1, self.head_dim)], dim=1)
            v = torch.cat([v, v.new_zeros(self.heads, 1, self.head_dim)], dim=1)
        return q, k, v


def _merged_masks(
    attn_mask: Tensor | None,
    key_padding_mask: Tensor | None,
    lengths: Sequence[tuple[int, int]],
    heads: int,
    extra_keys: int,
    dtype: torch.dtype,
) -> list[Tensor | None]:
    """Additive mask per sequence: ``attn_mask`` (rows ``i * H`` on when 3-d) plus its key padding row."""
    batch = len(lengths)
    if attn_mask is not None and not is_nested(attn_mask) and attn_mask.dim() == 3:
        attn_mask = attn_mask.unflatten(0, (batch, heads))
    masks = element_masks(attn_mask, batch, lengths, lambda m: m.dim() == 4, "attn_mask")
    padding = element_masks(key_padding_mask, batch, [(s,) for _, s in lengths], lambda m: True, "key_padding_mask")
    merged = []
    for mask, row in zip(masks, padding):
        mask = _float_mask(mask, dtype, "attn_mask")
        row = _float_mask(row, dtype, "key_padding_mask")
        if extra_keys:
            mask = mask if mask is None else F.pad(mask, (0, extra_keys))
            row = row if row is None else F.pad(row, (0, extra_keys))
        if row is not None:
            row = row.reshape(1, 1, -1)
            mask = row if mask is None else mask + row
        merged.append(mask)
    return merged


def _attention_with_weights(
    query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None, dropout_p: float
) -> tuple[Tensor, Tensor]:
    """Attention of one sequence's heads that also returns the ``(H, L, S)`` weights, as torch computes them."""
    scaled = query * (1.0 / query.size(-1)) ** 0.5
    scores = (
        scaled @ key.transpose(-2, -1)
        if mask is None
        else torch.baddbmm(mask.expand(query.size(0), -1, -1), scaled, key.transpose(-2, -1))
    )
    weights = scores.softmax(dim=-1)
    if dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p)
    return weights @ value, weights
