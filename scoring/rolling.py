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
element of the window is the ``k``-th set bit of its mask, found by broadword selection (running
popcounts of the mask's bytes in one multiplication, the byte holding the bit by comparing all
eight at once, then a table of the bits of every byte), and its value is the sorted segment at
that rank. Every step is an elementwise numpy operation over all windows of a block of series,
without a per-row call and without branches (``np.where`` and indexing with uint64 are several
times slower than arithmetic on the masks; measured).

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
_H80 = np.uint64(0x8080808080808080)
_BYTE = np.uint64(0xFF)
_ZERO = np.uint64(0)


def _byte_counts_swar(words: np.ndarray) -> np.ndarray:
    """Set bits of each byte of each uint64, in that byte (three SWAR steps)."""
    x = words - ((words >> _ONE) & _M1)
    x = (x & _M2) + ((x >> np.uint64(2)) & _M2)
    return (x + (x >> np.uint64(4))) & _M4


def _popcount_swar(words: np.ndarray) -> np.ndarray:
    """Set bits of each uint64 (for numpy < 2.0, which lacks ``np.bitwise_count``)."""
    return ((_byte_counts_swar(words) * _H01) >> np.uint64(56)).astype(np.uint8)


if hasattr(np, "bitwise_count"):
    _popcount = np.bitwise_count

    def _byte_counts(words: np.ndarray) -> np.ndarray:
        return np.bitwise_count(words.view(np.uint8)).view(np.uint64)

else:  # numpy < 2.0
    _popcount = _popcount_swar
    _byte_counts = _byte_counts_swar


def _select_table() -> np.ndarray:
    """``table[byte * 8 + k]``: index of the ``k``-th set bit of ``byte`` (0 where none)."""
    table = np.zeros((256, 8), dtype=np.intp)
    for byte in range(256):
        bits = [i for i in range(8) if byte >> i & 1]
        table[byte, : len(bits)] = bits
    return table.ravel()


_SELECT_IN_BYTE = _select_table()


def _select_in_word(word: np.ndarray, running: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Index (intp) of the ``k``-th (0-based) set bit of each uint64 ``word`` (which has > k
    bits), given ``running``: byte ``i`` holds the set bits of bytes ``0..i`` of the word.

    Broadword selection (S. Vigna, "Broadword implementation of rank/select queries", 2008):
    the bit is in the first byte whose running count exceeds ``k``, so the number of bytes
    whose count is at most ``k`` (all eight compared at once in their high bits; counts are
    <= 64, nothing borrows) is that byte's index; then a table of the bits of every byte.
    """
    at_most_k = (((k * _H01) | _H80) - running) & _H80
    place = _popcount(at_most_k).astype(np.uint64) << np.uint64(3)  # first bit of that byte
    before = ((running << np.uint64(8)) >> place) & _BYTE  # set bits below that byte
    byte = (word >> place) & _BYTE
    bit = _SELECT_IN_BYTE.take(((byte << np.uint64(3)) + (k - before)).astype(np.intp))
    return place.astype(np.intp) + bit


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
    rows = np.ascontiguousarray(rows.reshape(s * segments, span))
    n = len(rows)
    order = np.argsort(rows, axis=1)  # tied values are one value: their order is moot
    order += (np.arange(n) * span)[:, None]  # flat positions
    ordered = rows.ravel().take(order)  # (n, span): each row sorted
    ranks = np.empty(n * span, dtype=np.uint64)
    ranks[order.ravel()] = np.tile(np.arange(span, dtype=np.uint64), n)
    ranks = ranks.reshape(n, span)
    bits = _ONE << (ranks & np.uint64(63))
    word_of = ranks >> np.uint64(6)
    # masks[q, r, t]: word q of the set of ranks in window t of row r
    masks = np.empty((words, n, g), dtype=np.uint64)
    prefix = np.zeros((n, span + 1), dtype=np.uint64)
    for q in range(words):
        np.bitwise_xor.accumulate(bits * (word_of == q), axis=1, out=prefix[:, 1:])
        np.bitwise_xor(prefix[:, w : w + g], prefix[:, :g], out=masks[q])
    running = _byte_counts(masks) * _H01  # byte i: set bits in bytes 0..i of the word
    counts = running >> np.uint64(56)  # set bits of each word
    out = np.empty((len(kth), n, g), dtype=values.dtype)
    flat_row = (np.arange(n) * span)[:, None]
    for i, k in enumerate(kth):
        k = np.uint64(k)
        # the word holding the k-th set bit, chosen with masks (no branches), and the bit's
        # order inside it
        if words == 2:
            upper = (counts[0] <= k).astype(np.uint64)
            take_upper = _ZERO - upper  # all ones where the bit is in the second word
            word = masks[0] ^ ((masks[0] ^ masks[1]) & take_upper)
            word_running = running[0] ^ ((running[0] ^ running[1]) & take_upper)
            k_in_word = k - (counts[0] & take_upper)
            base = upper << np.uint64(6)
        else:
            word = np.zeros((n, g), dtype=np.uint64)
            word_running = np.zeros((n, g), dtype=np.uint64)
            k_in_word = np.zeros((n, g), dtype=np.uint64)
            base = np.zeros((n, g), dtype=np.uint64)
            below = np.zeros((n, g), dtype=np.uint64)  # set bits in the words before q
            for q in range(words):
                here = _ZERO - ((below <= k) & (k < below + counts[q])).astype(np.uint64)
                word |= masks[q] & here
                word_running |= running[q] & here
                k_in_word |= (k - below) & here
                base |= np.uint64(64 * q) & here
                below += counts[q]
        rank = _select_in_word(word, word_running, k_in_word)
        rank += base.astype(np.intp)
        rank += flat_row
        out[i] = ordered.take(rank)
    out = out.reshape(len(kth), s, segments * g)
    if segments * g != total:
        out = out[:, :, :total]
    return out
