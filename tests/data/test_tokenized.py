import torch

from sqs_pyro.data.tokenized import ByteTokenizer, TokenizedClassification, length_grouped_permutation
from sqs_pyro.run.trainer import epoch_order


def _lengths(n=1000, seed=0):
    return torch.randint(3, 64, (n,), generator=torch.Generator().manual_seed(seed))


def padded_tokens(lengths, order, batch_size):
    """Tokens in dynamically padded batches: each batch padded to its longest sequence."""
    return sum(int(lengths[order[i : i + batch_size]].max()) * len(order[i : i + batch_size])
               for i in range(0, len(order), batch_size))


def test_length_grouped_permutation_is_a_seeded_permutation():
    lengths = _lengths()
    a = length_grouped_permutation(lengths, 32, torch.Generator().manual_seed(1))
    b = length_grouped_permutation(lengths, 32, torch.Generator().manual_seed(1))
    c = length_grouped_permutation(lengths, 32, torch.Generator().manual_seed(2))
    assert sorted(a.tolist()) == list(range(len(lengths)))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_length_grouped_batches_carry_less_padding():
    lengths, batch = _lengths(), 32
    grouped = length_grouped_permutation(lengths, batch, torch.Generator().manual_seed(0), megabatch=50)
    shuffled = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(0))
    assert padded_tokens(lengths, grouped, batch) < 0.75 * padded_tokens(lengths, shuffled, batch)
    assert padded_tokens(lengths, grouped, batch) < 1.1 * int(lengths.sum())


def test_length_grouped_batches_are_shuffled_not_swept_long_to_short():
    lengths, batch = _lengths(), 32
    order = length_grouped_permutation(lengths, batch, torch.Generator().manual_seed(0), megabatch=50)
    first = torch.stack([lengths[order[i : i + batch]].max() for i in range(0, 31 * batch, batch)]).float()
    assert not torch.all(first[:-1] >= first[1:])  # not a descending sweep


def test_partial_batch_stays_last():
    lengths = _lengths(100)
    order = length_grouped_permutation(lengths, 32, torch.Generator().manual_seed(0))
    assert len(order) == 100 and sorted(order.tolist()) == list(range(100))


def test_tokenized_classification_epoch_order_follows_group_by_length():
    texts = ["a" * (1 + i % 30) for i in range(200)]
    plain = TokenizedClassification.from_texts(ByteTokenizer(), texts, [0] * 200, max_length=40)
    grouped = TokenizedClassification.from_texts(ByteTokenizer(), texts, [0] * 200, max_length=40, group_by_length=True)
    assert torch.equal(epoch_order(plain, 3, 1, 16), epoch_order(plain, 3, 1, 16))
    assert torch.equal(plain.epoch_order(16, torch.Generator().manual_seed(5)),
                       torch.randperm(200, generator=torch.Generator().manual_seed(5)))
    order = epoch_order(grouped, 3, 1, 16)
    assert padded_tokens(grouped.lengths, order, 16) < padded_tokens(plain.lengths, epoch_order(plain, 3, 1, 16), 16)
    assert grouped.subset(50).group_by_length
