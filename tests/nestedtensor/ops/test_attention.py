import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from torch.nn import functional as F

from danling.tensors import NestedTensor, forbid_slow_paths
from danling.tensors.ops import attention

from ..harness import check_op

HEADS, DIM, VALUE_DIM = 2, 8, 6


def heads(lengths, dim=DIM, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(HEADS, length, dim, generator=generator) for length in lengths]


lengths = st.lists(st.integers(1, 9), min_size=1, max_size=4)


@given(lengths, st.data(), st.booleans(), st.sampled_from([None, 0.5]))
def test_sdpa_matches_every_element(query_lengths, data, causal, scale):
    key_lengths = data.draw(st.lists(st.integers(1, 9), min_size=len(query_lengths), max_size=len(query_lengths)))
    queries, keys, values = heads(query_lengths), heads(key_lengths, seed=1), heads(key_lengths, VALUE_DIM, seed=2)

    def attend(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)

    result = check_op(attend, [queries, keys, values], packed=False, dense=False, atol=1e-5, rtol=1e-5)
    if len(set(query_lengths)) > 1:
        assert result._values.shape == (sum(query_lengths), HEADS, VALUE_DIM)


def test_self_attention_on_sequences_of_any_rank():
    tokens = [torch.randn(length, DIM) for length in (5, 1, 3)]  # single head, (L, E)
    check_op(lambda x: F.scaled_dot_product_attention(x, x, x), [tokens], packed=False, atol=1e-5)
    groups = [torch.randn(2, HEADS, length, DIM) for length in (4, 2)]  # (G, H, L, E)
    check_op(lambda x: F.scaled_dot_product_attention(x, x, x, is_causal=True), [groups], packed=False, atol=1e-5)
    grouped_queries = [torch.randn(4, length, DIM) for length in (4, 2)]
    key_heads = [torch.randn(HEADS, length, DIM) for length in (3, 5)]

    def gqa(q, k):
        return F.scaled_dot_product_attention(q, k, k, enable_gqa=True)

    check_op(gqa, [grouped_queries, key_heads], packed=False, atol=1e-5)


def test_masks_over_the_padded_batch_are_cropped_per_element():
    queries, keys = heads([3, 5, 2]), heads([4, 2, 6], seed=1)
    keep = torch.rand(5, 6) > 0.4
    keep |= torch.eye(5, 6, dtype=torch.bool)  # every query keeps a key
    shared = check_op(
        lambda q, k: F.scaled_dot_product_attention(q, k, k, attn_mask=keep),
        [queries, keys],
        lambda q, k: F.scaled_dot_product_attention(q, k, k, attn_mask=keep[: q.size(1), : k.size(1)]),
        packed=False,
        atol=1e-5,
    )
    bias = torch.randn(3, 1, 5, 6)  # one row per element, broadcast over heads
    per_row = NestedTensor(queries), NestedTensor(keys)
    output = F.scaled_dot_product_attention(*per_row, per_row[1], attn_mask=bias)
    for index, (q, k) in enumerate(zip(queries, keys)):
        mask = bias[index, :, : q.size(1), : k.size(1)]
        torch.testing.assert_close(output[index], F.scaled_dot_product_attention(q, k, k, attn_mask=mask))
    nested_mask = NestedTensor([keep[: q.size(1), : k.size(1)] for q, k in zip(queries, keys)])
    from_nested = F.scaled_dot_product_attention(*per_row, per_row[1], attn_mask=nested_mask)
    torch.testing.assert_close(from_nested._values, shared._values)


def test_dense_operands_are_batch_first_rows():
    queries = heads([3, 5])
    memory = torch.randn(2, HEADS, 4, DIM)
    output = F.scaled_dot_product_attention(NestedTensor(queries), memory, memory)
    for query, element, keys in zip(queries, output.unbind(), memory):
        torch.testing.assert_close(element, F.scaled_dot_product_attention(query, keys, keys))
    learned = torch.randn(2, HEADS, 3, DIM)
    pooled = F.scaled_dot_product_attention(learned, NestedTensor(queries), NestedTensor(queries))
    assert not isinstance(pooled, NestedTensor) and pooled.shape == (2, HEADS, 3, DIM)
    torch.testing.assert_close(pooled[1], F.scaled_dot_product_attention(learned[1], queries[1], queries[1]))


def test_dropout_draws_like_a_loop_over_elements():
    queries = heads([4, 7, 3])
    nested = NestedTensor(queries)
    torch.manual_seed(3)
    output = F.scaled_dot_product_attention(nested, nested, nested, dropout_p=0.5)
    torch.manual_seed(3)
    expected = [F.scaled_dot_product_attention(q[None], q[None], q[None], dropout_p=0.5)[0] for q in queries]
    for got, want in zip(output.unbind(), expected):
        torch.testing.assert_close(got, want)


def test_sdpa_gradcheck_in_float64():
    query = NestedTensor(heads([3, 2]), dtype=torch.float64)
    key = NestedTensor(heads([2, 4], seed=1), dtype=torch.float64)
    inputs = [t._values.clone().requires_grad_() for t in (query, key)]

    def attend(query_values, key_values):
        q, k = query._rewrap(query_values), key._rewrap(key_values)
        return F.scaled_dot_product_attention(q, k, k, is_causal=True)._values

    assert torch.autograd.gradcheck(attend, inputs)


def test_attention_errors_name_the_operands():
    queries = NestedTensor(heads([3, 5]))
    with pytest.raises(ValueError, match="one batch size"):
        F.scaled_dot_product_attention(queries, NestedTensor(heads([3])), NestedTensor(heads([3])))
    with pytest.raises(ValueError, match="dense key next to NestedTensors must be batch-first with 2 rows"):
        F.scaled_dot_product_attention(queries, torch.randn(3, HEADS, 4, DIM), torch.randn(3, HEADS, 4, DIM))


# ---------------------------------------------------------------------------- variable-length kernel


def reference_varlen(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, window_size=(-1, -1), scale=None):
    """The contract of ``varlen_attn`` written as a loop, to check what the handlers pass it."""
    outputs = []
    for index in range(cu_seq_q.numel() - 1):
        rows_q = slice(int(cu_seq_q[index]), int(cu_seq_q[index + 1]))
        rows_k = slice(int(cu_seq_k[index]), int(cu_seq_k[index + 1]))
        assert rows_q.stop - rows_q.start <= max_q and rows_k.stop - rows_k.start <= max_k
        q, k, v = (t.transpose(0, 1) for t in (query[rows_q], key[rows_k], value[rows_k]))
        causal = tuple(window_size) == (-1, 0)
        outputs.append(F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale).transpose(0, 1))
    return torch.cat(outputs)


def half_heads(lengths, seed=0):
    return NestedTensor([t.transpose(0, 1) for t in heads(lengths, seed=seed)], dtype=torch.float16).transpose(1, 2)


def test_varlen_kernel_is_chosen_only_where_it_applies():
    if attention.varlen_kernel() is None:
        pytest.skip("this torch has no torch.nn.attention.varlen")
    query, key = half_heads([3, 5]), half_heads([4, 2], seed=1)
    options = {"attn_mask": None, "dropout_p": 0.0, "is_causal": False, "scale": None, "enable_gqa": False}
    assert attention.use_varlen(query, key, key, **options, device_type="cuda")
    assert not attention.use_varlen(query, key, key, **options)  # CPU
    assert not attention.use_varlen(query, key, key, **(options | {"dropout_p": 0.1}), device_type="cuda")
    assert not attention.use_varlen(query, key, key, **(options | {"attn_mask": torch.ones(5, 4)}), device_type="cuda")
    assert not attention.use_varlen(query.float(), key.float(), key.float(), **options, device_type="cuda")
    assert not attention.use_varlen(query, key, key, **(options | {"is_causal": True}), device_type="cuda")
    assert attention.use_varlen(query, query, query, **(options | {"is_causal": True}), device_type="cuda")
    uniform = NestedTensor(heads([3, 3]), dtype=torch.float16)  # equal shapes pack head by head, not (rows, H, E)
    assert not attention.use_varlen(uniform, uniform, uniform, **options, device_type="cuda")


@pytest.mark.parametrize("causal", [False, True])
def test_handlers_drive_the_varlen_kernel_with_the_packed_rows(monkeypatch, causal):
    monkeypatch.setattr(attention, "varlen_kernel", lambda: (reference_varlen, frozenset({"window_size", "scale"})))
    monkeypatch.setattr(attention, "varlen_supported", lambda *args, **kwargs: True)
    queries = [t.transpose(0, 1) for t in heads([3, 5, 2])]  # (L, H, E), packed (rows, H, E)
    with forbid_slow_paths():
        nested = NestedTensor(queries).transpose(1, 2)
        output = F.scaled_dot_product_attention(nested, nested, nested, is_causal=causal, scale=0.3)
    for got, query in zip(output.unbind(), queries):
        q = query.transpose(0, 1)
        torch.testing.assert_close(got, F.scaled_dot_product_attention(q, q, q, is_causal=causal, scale=0.3))
    layer = nn.MultiheadAttention(HEADS * DIM, HEADS, batch_first=True)
    tokens = [torch.randn(length, HEADS * DIM) for length in (3, 5, 2)]
    mask = nn.Transformer.generate_square_subsequent_mask(5) if causal else None
    with forbid_slow_paths():
        nested = NestedTensor(tokens)
        output, weights = layer(nested, nested, nested, need_weights=False, attn_mask=mask, is_causal=causal)
    assert weights is None
    for got, token in zip(output.unbind(), tokens):
        length = token.size(0)
        crop = None if mask is None else mask[:length, :length]
        expected = layer(token[None], token[None], token[None], attn_mask=crop, is_causal=causal)[0][0]
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------- multi-head attention


def sequences(lengths, dim=DIM * HEADS, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(length, dim, generator=generator) for length in lengths]


def batch_leading(nested: NestedTensor) -> NestedTensor:
    """The same NestedTensor with the batch dim first (the harness reads elements along dim 0)."""
    return nested if nested.batch_first else nested.transpose(0, 1)


def module_reference(layer, batch_first, **kwargs):
    """One element through the module alone: a batch of one."""

    def run(query, key=None, value=None):
        key = query if key is None else key
        value = key if value is None else value
        if batch_first:
            output, weights = layer(query[None], key[None], value[None], **kwargs)
            return output[0], weights
        output, weights = layer(query[:, None], key[:, None], value[:, None], **kwargs)
        return output[:, 0], weights

    return run


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("need_weights", [False, True])
@pytest.mark.parametrize(
    "options",
    [{}, {"bias": False}, {"add_bias_kv": True}, {"add_zero_attn": True}, {"kdim": 5, "vdim": 3}],
    ids=["default", "no-bias", "bias-kv", "zero-attn", "kdim-vdim"],
)
def test_multihead_attention_module(batch_first, need_weights, options):
    layer = nn.MultiheadAttention(HEADS * DIM, HEADS, batch_first=batch_first, **options)
    run = module_reference(layer, batch_first, need_weights=need_weights)
    nested_kwargs = {"batch_first": batch_first}
    tokens = sequences([4, 1, 6])
    if "kdim" in options:
        keys, values = sequences([3, 5, 2], 5, seed=1), sequences([3, 5, 2], 3, seed=2)
        check_op(
            lambda q, k, v: batch_leading(layer(q, k, v, need_weights=need_weights)[0]),
            [tokens, keys, values],
            lambda q, k, v: run(q, k, v)[0],
            nested_kwargs=nested_kwargs,
            packed=False,
            atol=1e-5,
        )
        return
    check_op(
        lambda x: batch_leading(layer(x, x, x, need_weights=need_weights)[0]),
        [tokens],
        lambda x: run(x)[0],
        nested_kwargs=nested_kwargs,
        packed=False,
        atol=1e-5,
    )
    nested = NestedTensor(tokens, batch_first=batch_first)
    assert layer(nested, nested, nested)[0].batch_first == batch_first
    weights = layer(nested, nested, nested, need_weights=need_weights)[1]
    if not need_weights:
        assert weights is None
        return
    for got, token in zip(weights.unbind(), tokens):
        torch.testing.assert_close(got, run(token)[1][0], atol=1e-6, rtol=1e-5)


def test_attention_weights_per_head():
    layer = nn.MultiheadAttention(HEADS * DIM, HEADS, batch_first=True)
    tokens = sequences([4, 2])
    nested = NestedTensor(tokens)
    _, weights = layer(nested, nested, nested, average_attn_weights=False)
    for got, token in zip(weights.unbind(), tokens):
        expected = layer(token[None], token[None], token[None], average_attn_weights=False)[1][0]
        assert got.shape == (HEADS, len(token), len(token))
        torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("need_weights", [False, True])
def test_multihead_attention_masks(need_weights):
    layer = nn.MultiheadAttention(HEADS * DIM, HEADS, batch_first=True)
    tokens = sequences([5, 3, 4])
    nested = NestedTensor(tokens)
    padding = torch.zeros(3, 5, dtype=torch.bool)
    padding[0, 3:] = padding[2, 1] = True  # extra key padding inside the ragged lengths
    causal = nn.Transformer.generate_square_subsequent_mask(5)
    per_head = torch.randn(3 * HEADS, 5, 5)
    cases = [
        ({"key_padding_mask": padding}, lambda i, n: {"key_padding_mask": padding[i : i + 1, :n]}),
        ({"attn_mask": causal, "is_causal": True}, lambda i, n: {"attn_mask": causal[:n, :n], "is_causal": True}),
        ({"attn_mask": per_head}, lambda i, n: {"attn_mask": per_head[i * HEADS : (i + 1) * HEADS, :n, :n]}),
        ({"key_padding_mask": NestedTensor([row[:n] for row, n in zip(padding, (5, 3, 4))])}, None),
    ]
    for nested_masks, element_masks in cases:
        element_masks = element_masks or (lambda i, n: {"key_padding_mask": padding[i : i + 1, :n]})
        output, weights = layer(nested, nested, nested, need_weights=need_weights, **nested_masks)
        for index, token in enumerate(tokens):
            masks = element_masks(index, len(token))
            expected, expected_weights = layer(
                token[None], token[None], token[None], need_weights=need_weights, **masks
            )
            torch.testing.assert_close(output[index], expected[0], atol=1e-5, rtol=1e-5)
            if need_weights:
                torch.testing.assert_close(weights[index], expected_weights[0], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("need_weights", [False, True])
def test_multihead_attention_dropout_draws_like_a_loop(need_weights):
    layer = nn.MultiheadAttention(HEADS * DIM, HEADS, dropout=0.5, batch_first=True)
    tokens = sequences([4, 6, 2])
    nested = NestedTensor(tokens)
    torch.manual_seed(5)
    output = layer(nested, nested, nested, need_weights=need_weights)[0]
    torch.manual_seed(5)
    expected = [layer(t[None], t[None], t[None], need_weights=need_weights)[0][0] for t in tokens]
    for got, want in zip(output.unbind(), expected):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_projection_gradients_match_a_loop():
    layer = nn.MultiheadAttention(HEADS * DIM, HEADS, batch_first=True)
    reference = nn.MultiheadAttention(HEADS * DIM, HEADS, batch_first=True)
    reference.load_state_dict(layer.state_dict())
    tokens = sequences([4, 6, 2])
    nested = NestedTensor(tokens)
    layer(nested, nested, nested)[0].sum().backward()
    sum(reference(t[None], t[None], t[None])[0].sum() for t in tokens).backward()
    for name, parameter in layer.named_parameters():
        torch.testing.assert_close(parameter.grad, dict(reference.named_parameters())[name].grad, atol=1e-4, rtol=1e-4)


def test_multihead_attention_gradcheck_in_float64():
    layer = nn.MultiheadAttention(4, 2, batch_first=True, dtype=torch.float64)
    nested = NestedTensor([torch.randn(3, 4), torch.randn(2, 4)], dtype=torch.float64)
    values = nested._values.clone().requires_grad_()

    def attend(values, weight):
        tokens = nested._rewrap(values)
        output, weights = F.multi_head_attention_forward(
            tokens, tokens, tokens, 4, 2, weight, None, None, None, False, 0.0, layer.out_proj.weight, None
        )
        return output._values, weights._values

    weight = layer.in_proj_weight.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(attend, (values, weight))


def test_multihead_attention_on_transposed_and_dense_operands():
    layer = nn.MultiheadAttention(HEADS * DIM, HEADS, batch_first=True)
    tokens = sequences([4, 4])
    transposed = NestedTensor([t.t() for t in tokens]).transpose(1, 2)  # (L, E) elements packed as (E, L)
    memory = torch.randn(3, 2, HEADS * DIM)  # dense keys: (S, N, E) as the module hands them over
    output = layer(transposed, memory.transpose(0, 1), memory.transpose(0, 1))[0]
    for got, token, keys in zip(output.unbind(), tokens, memory.unbind(1)):
        torch.testing.assert_close(got, layer(token[None], keys[None], keys[None])[0][0], atol=1e-5, rtol=1e-5)


def test_multihead_attention_errors():
    layer = nn.MultiheadAttention(8, 2, batch_first=True)
    tokens = NestedTensor(sequences([3, 2], dim=6))
    with pytest.raises(ValueError, match="expects embedding dim 8, got 6"):
        layer(tokens, tokens, tokens)
    tokens = NestedTensor(sequences([3, 2], dim=8))
    with pytest.raises(ValueError, match="needs attn_mask when is_causal"):
        F.multi_head_attention_forward(
            tokens, tokens, tokens, 8, 2, layer.in_proj_weight, None, None, None, False, 0.0,
            layer.out_proj.weight, None, is_causal=True,
        )  # fmt: skip
    with pytest.raises(ValueError, match="needs a value per key"):
        F.multi_head_attention_forward(
            tokens, tokens, NestedTensor(sequences([2, 2], dim=8)), 8, 2, layer.in_proj_weight, None, None, None,
            False, 0.0, layer.out_proj.weight, None,
        )  # fmt: skip
    with pytest.raises(ValueError, match="only bool and floating types of key_padding_mask"):
        F.multi_head_attention_forward(
            tokens, tokens, tokens, 8, 2, layer.in_proj_weight, None, None, None, False, 0.0,
            layer.out_proj.weight, None, key_padding_mask=torch.zeros(2, 3, dtype=torch.long),
        )  # fmt: skip


# ---------------------------------------------------------------------------- transformer layers


@pytest.fixture
def attention_loop_allowed(monkeypatch):
    """Allow only the documented per-sequence attention loop, so the rest of a layer must run packed."""
    monkeypatch.setattr(attention, "check_slow_path", lambda detail: None)


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_transformer_encoder_layer_runs_packed_around_attention(attention_loop_allowed, norm_first, activation):
    layer = nn.TransformerEncoderLayer(
        HEADS * DIM, HEADS, dim_feedforward=32, dropout=0.0, activation=activation, batch_first=True,
        norm_first=norm_first,
    )  # fmt: skip
    check_op(layer, [sequences([5, 2, 7])], lambda x: layer(x[None])[0], atol=1e-5)


@pytest.mark.parametrize("training", [True, False])
def test_transformer_encoder_with_a_causal_mask(attention_loop_allowed, training):
    layer = nn.TransformerEncoderLayer(HEADS * DIM, HEADS, dim_feedforward=32, dropout=0.0, batch_first=True)
    encoder = nn.TransformerEncoder(layer, 2, norm=nn.LayerNorm(HEADS * DIM), enable_nested_tensor=False)
    encoder.train(training)
    mask = nn.Transformer.generate_square_subsequent_mask(7)

    def reference(x):
        return encoder(x[None], mask=mask[: len(x), : len(x)], is_causal=True)[0]

    with torch.set_grad_enabled(training):
        check_op(
            lambda x: encoder(x, mask=mask, is_causal=True), [sequences([7, 3])], reference, grad=training, atol=1e-5
        )
