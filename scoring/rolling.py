"""Exact order statistics of sliding windows, fast for short windows over many series.

:func:`sliding_order_statistics` returns the same values as ``np.partition`` over
``sliding_window_view`` (it selects elements, it computes nothing), several times faster: the
default detector (:mod:`scoring.baseline`) takes the quartiles of the 48 buckets before every
bucket of every sensor, and ``np.partition`` with three ``kth`` over millions of 48-element rows
was nine tenths of its scoring time (measured: ~1 us per row, call overhead and three selection
passes per row).

How: per series and segment of consecutive windows, one stable ``argsort`` turns the values into
distinct ranks ``0..S-1`` (``S`` <= 64 x words). A window is then the set of its ranks: a bitmask
of ``words`` 64-bit words, obtained for every window at once as the XOR of two prefix-XORs of
``1 << rank`` (ranks are distinct, so XOR over a range is its union). The ``k``-th smallest
element of the window is the ``k``-th set bit of its mask (popcounts and a binary search inside
one word), and its value is the sorted segment at that rank. Every step is an elementwise numpy
operation over all windows of a block of series, without a per-row call.

Ties and special values: ranks break ties by position (stable sort), so the selected element has
exactly the value ``np.partition`` puts at ``k``; NaN sorts last in both. Only the sign of a zero
may differ when ``0.0`` and ``-0.0`` tie (they compare equal).
"""

from __future__ import annotations

import numpy as np

_ONE = np.uint64(1)
_M1 = np.uint64(0x5555555555555555)
_M2 = np.uint64(0x3333333333333333)
_M4 = np.uint64(0x0F0F0F0F0F0F0F0F)
_H01 = np.uint64(0x0101010101010101)


def _popcount_swar(words: np.ndarray) -> np.ndarray:
    """Set bits of each uint64 (for numpy < 2.0, which lacks ``np.bitwise_count``)."""
    x = words - ((words >> _ONE) & _M1)
    x = (x & _M2) + ((x >> np.uint64(2)) & _M2)
    x = (x + (x >> np.uint64(4))) & _M4
    return ((x * _H01) >> np.uint64(56)).astype(np.uint8)


_popcount = getattr(np, "bitwise_count", _popcount_swar)


def _select_table() -> np.ndarray:
    """``table[byte * 8 + k]``: index of the ``k``-th set bit of ``byte`` (0 where none)."""
    table = np.zeros((256, 8), dtype=np.uint64)
    for byte in range(256):
        bits = [i for i in range(8) if byte >> i & 1]
        table[byte, : len(bits)] = bits
    return table.ravel()


_SELECT_IN_BYTE = _select_table()


def _select_in_word(word: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Index of the ``k``-th (0-based) set bit of each uint64 ``word`` (which has > k bits).

    A binary search down to the byte holding the bit (popcount of the lower half, three
    halvings), then a table of the bits of every byte.
    """
    pos = np.zeros(word.shape, dtype=np.uint64)
    rem = k.astype(np.uint8)
    for half in (32, 16, 8):
        count = _popcount((word >> pos) & np.uint64((1 << half) - 1)).astype(np.uint8)
        beyond = count <= rem  # the bit is in the upper half of the current range
        pos += beyond * np.uint64(half)
        rem -= beyond * count
    byte = (word >> pos) & np.uint64(255)
    return pos + _SELECT_IN_BYTE[(byte << np.uint64(3)) + rem]


def sliding_order_statistics(
    values: np.ndarray, window: int, kth: tuple[int, ...], n_windows: int | None = None
) -> np.ndarray:
    """The ``kth`` smallest elements of every window of ``window`` consecutive values.

    Parameters
    ----------
    values : ndarray of shape (s, L)
        ``s`` series of ``L`` values.
    window : int
        Window length ``w`` (1 <= w <= L).
    kth : tuple of int
        Orders wanted, each in ``[0, w)`` (0 is the minimum).
    n_windows : int, optional
        Windows wanted, starting at positions ``0..n_windows-1`` (default all ``L - w + 1``).

    Returns
    -------
    ndarray of shape (len(kth), s, n_windows)
        ``out[i, j, t]`` equals ``np.partition(values[j, t:t + w], kth)[kth[i]]``.
    """
    values = np.asarray(values)
    s, length = values.shape
    w = int(window)
    if not 1 <= w <= length:
        raise ValueError(f"window {w} does not fit series of length {length}")
    if any(not 0 <= k < w for k in kth):
        raise ValueError(f"orders {kth} not in [0, {w})")
    total = length - w + 1 if n_windows is None else int(n_windows)
    if not 0 <= total <= length - w + 1:
        raise ValueError(f"{total} windows of {w} do not fit series of length {length}")
    if s == 0 or total == 0:
        return np.empty((len(kth), s, total), dtype=values.dtype)
    words = max(2, -(-(w + 31) // 64))  # a segment holds >= 32 windows, ranks < 64 x words
    per_segment = 64 * words - w + 1
    segments = -(-total // per_segment)
    g = -(-total // segments)  # windows per segment, evenly: no short last one
    span = g + w - 1
    # Segments of every series as rows of one (s * segments, span) array; the last one is padded
    # with the series' last value (windows beyond `total` are dropped).
    need = segments * g + w - 1
    if need > length:
        values = np.concatenate([values, np.repeat(values[:, -1:], need - length, axis=1)], axis=1)
    rows = np.lib.stride_tricks.sliding_window_view(values, span, axis=1)[:, ::g][:, :segments]
    rows = rows.reshape(s * segments, span)
    n = len(rows)
    order = np.argsort(rows, axis=1)  # tied values are one value: their order is moot
    ordered = np.take_along_axis(rows, order, axis=1).ravel()
    ranks = np.empty((n, span), dtype=np.intp)
    np.put_along_axis(ranks, order, np.arange(span)[None, :], axis=1)
    word_of = ranks >> 6
    bits = _ONE << (ranks & 63).astype(np.uint64)
    # masks[q, r, t]: word q of the set of ranks in window t of row r
    masks = np.empty((words, n, g), dtype=np.uint64)
    prefix = np.zeros((n, span + 1), dtype=np.uint64)
    for q in range(words):
        np.bitwise_xor.accumulate(np.where(word_of == q, bits, 0), axis=1, out=prefix[:, 1:])
        np.bitwise_xor(prefix[:, w : w + g], prefix[:, :g], out=masks[q])
    # the word holding the k-th set bit, and the bit's order inside it
    shape = (len(kth), n, g)
    left = np.broadcast_to(np.asarray(kth, dtype=np.int16)[:, None, None], shape).copy()
    word = np.zeros(shape, dtype=np.uint64)
    base = np.zeros(shape, dtype=np.uint64)
    k_in_word = np.zeros(shape, dtype=np.int16)
    for q in range(words):
        count = _popcount(masks[q]).astype(np.int16)
        here = (left >= 0) & (left < count)
        np.copyto(word, masks[q], where=here)
        np.copyto(base, np.uint64(64 * q), where=here)
        np.copyto(k_in_word, left, where=here)
        left -= count
    rank = (base + _select_in_word(word, k_in_word)).astype(np.intp)
    rank += (np.arange(n) * span)[None, :, None]
    out = ordered.take(rank).reshape(len(kth), s, segments * g)
    if segments * g != total:
        out = out[:, :, :total]
    return out
