"""The document-isolating attention's chunked CPU path against the plain masked kernel."""
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from mixdata.train.attention import (
    attend,
    dense_document_mask,
    document_mask,
    document_starts,
    query_chunks,
)


@st.composite
def packed_rows(draw):
    """doc_ids [B, L]: each row a run of documents of random lengths, then maybe padding."""
    batch, length = draw(st.integers(1, 3)), draw(st.integers(1, 200))
    rows = []
    for _ in range(batch):
        row, doc = [], 0
        while len(row) < length:
            if draw(st.booleans()) and row and draw(st.integers(0, 5)) == 0:
                row += [-1] * (length - len(row))  # padding ends the row
                break
            row += [doc] * draw(st.integers(1, 90))
            doc += 1
        rows.append(row[:length])
    return torch.tensor(rows)


@given(packed_rows(), st.sampled_from([1, 7, 64]))
@settings(max_examples=60, deadline=None)
def test_chunks_cover_every_pair_the_mask_allows(doc_ids, size):
    dense = dense_document_mask(doc_ids)[:, 0]
    covered = torch.zeros_like(dense)
    for q0, q1, k0 in query_chunks(doc_ids, size):
        assert 0 <= k0 <= q0 < q1 <= doc_ids.shape[1]
        covered[:, q0:q1, k0:q1] = True
    assert not (dense & ~covered).any()


def test_document_starts_mark_each_document_and_the_padding():
    doc_ids = torch.tensor([[0, 0, 1, 1, 1, -1, -1], [0, 1, 2, 2, 2, 2, 2]])
    assert document_starts(doc_ids).tolist() == [[0, 0, 2, 2, 2, 5, 5], [0, 1, 2, 2, 2, 2, 2]]


@given(packed_rows())
@settings(max_examples=30, deadline=None)
def test_chunked_attention_equals_the_unchunked_kernel_and_its_gradients(doc_ids):
    torch.manual_seed(0)
    batch, length = doc_ids.shape
    q, k, v = (torch.randn(batch, 2, length, 8, dtype=torch.float64, requires_grad=True)
               for _ in range(3))
    mask = document_mask(doc_ids, "sdpa")
    chunked = attend(q, k, v, mask)
    plain = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.dense)
    torch.testing.assert_close(chunked, plain)
    weights = torch.randn_like(plain)
    grads = torch.autograd.grad((chunked * weights).sum(), (q, k, v))
    plain_grads = torch.autograd.grad((plain * weights).sum(), (q, k, v))
    for got, want in zip(grads, plain_grads):
        torch.testing.assert_close(got, want)


def test_a_long_document_needs_every_earlier_key_and_short_ones_skip_them():
    long_doc = torch.zeros(1, 256, dtype=torch.long)
    assert [k0 for _, _, k0 in query_chunks(long_doc, 64)] == [0, 0, 0, 0]
    short_docs = torch.arange(256).div(32, rounding_mode="floor")[None]
    assert [k0 for _, _, k0 in query_chunks(short_docs, 64)] == [0, 64, 128, 192]
