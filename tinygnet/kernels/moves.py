"""Planes moved by a few positions: how centred stride-1 windows skip the padded copy.

A window of odd sides centred on every position of an H x W plane and moved
one position at a time (padding half the window, stride 1: the output is the
input's size) reads, at its offset (dh, dw), the plane moved by (dh, dw):

    moved[..., i, j] = a[..., i + dh, j + dw]     (the padding's value where
                                                   i + dh or j + dw leaves the plane)

With the planes of a row laid end to end that is ONE flat copy shifted by
dh*W + dw (long runs in memory, where a copy through the padded planes runs
rows of W values), then the padding's value written over the positions the
move took off the plane: there the flat copy brought in the neighbouring
row's, plane's or image's values, or nothing. The fast max pooling
(``cpu_pool.py``) moves its planes so; the fast convolution (``cpu_conv.py``)
builds its columns so, and folds them back with the adjoint, ``add_moved_back``.
"""
from __future__ import annotations

__all__ = ["centred_stride_1", "move", "add_moved_back"]


def centred_stride_1(KH, KW, SH, SW, PH, PW) -> bool:
    """Windows of odd sides centred on every input position, moved one position at a time
    (padding half the window, stride 1): the output is the input's size."""
    return SH == SW == 1 and KH % 2 == KW % 2 == 1 and (PH, PW) == (KH // 2, KW // 2)


def move(out, a, dh, dw, value):
    """``out`` = ``a`` moved by (dh, dw), ``value`` where that leaves the plane; returns ``out``.

    ``a`` and ``out`` are (R, ..., H, W); each of the R rows moves on its own (a row must be
    contiguous: its planes end to end), in one flat copy.
    """
    flat_out, flat_a = _rows(out, written=True), _rows(a)
    L, shift = flat_a.shape[1], dh * a.shape[-1] + dw
    if abs(shift) < L:            # else every position is off the plane (planes smaller than K)
        flat_out[:, max(0, -shift):L - max(0, shift)] = flat_a[:, max(0, shift):L + min(0, shift)]
    for view in _off_the_plane(out, dh, dw):
        view[...] = value         # also the ends the flat copy did not reach
    return out


def add_moved_back(out, a, dh, dw):
    """The adjoint of ``move`` (padding 0): ``out`` += ``a`` moved by (-dh, -dw), its
    entries that ``move`` read from off the plane dropped. ``a`` is overwritten (those entries
    zeroed; they then add 0.0 to a neighbour). Same shapes as ``move``."""
    for view in _off_the_plane(a, dh, dw):
        view[...] = 0
    flat_out, flat_a = _rows(out, written=True), _rows(a, written=True)
    L, shift = flat_a.shape[1], dh * a.shape[-1] + dw
    if abs(shift) < L:
        flat_out[:, max(0, shift):L + min(0, shift)] += flat_a[:, max(0, -shift):L - max(0, shift)]
    return out


def _rows(a, written=False):
    """``a`` (R, ...) as (R, L): each row's values end to end. An array written through it
    must give a view (each row contiguous, as the callers' arrays are): a reshape that had to
    copy would take the writes with it, so that is an error."""
    if written and a.size and not a[0].flags.c_contiguous:
        raise ValueError(f"moves: an array of shape {a.shape} and strides {a.strides} is "
                         f"written through its rows, which must each be contiguous")
    return a.reshape(a.shape[0], -1)


def _off_the_plane(planes, dh, dw):
    """The positions of ``planes`` (R, ..., H, W) that a move by (dh, dw) reads from off the
    plane, as views of each row's values end to end: the last dh rows of every plane (or
    first -dh), the last dw columns of every row (or first -dw)."""
    H, W = planes.shape[-2:]
    flat = _rows(planes, written=True)
    views = []
    if dh:
        plane_rows = flat.reshape(flat.shape[0], -1, H * W)       # R, planes, H*W
        views.append(plane_rows[:, :, max(H - dh, 0) * W:] if dh > 0 else
                     plane_rows[:, :, :-dh * W])
    if dw:
        columns = flat.reshape(flat.shape[0], -1, W)              # R, plane rows, W
        views.append(columns[:, :, max(W - dw, 0):] if dw > 0 else columns[:, :, :-dw])
    return views
