"""Atomic displacement parameters: U_cif <-> Ueq, B <-> U.

U_cif order everywhere in xdxd: U11 U22 U33 U12 U13 U23 (Å²), the CIF's own order.
SHELX writes U11 U22 U33 U23 U13 U12; `from_shelx_order` converts.
"""
from __future__ import annotations

import math

import gemmi
import numpy as np

EIGHT_PI2 = 8.0 * math.pi ** 2


def b_to_u(b: float) -> float:
    """B (Å²) -> U (Å²): U = B / (8 pi²)."""
    return b / EIGHT_PI2


def u_equiv(cell: gemmi.UnitCell, u_cif) -> float:
    """Ueq (Å²) = one third of the trace of U in Cartesian axes (Fischer & Tillmanns 1988).

    u_cif: U11 U22 U33 U12 U13 U23 (Å²) on the CIF's reciprocal-length-scaled axes.
    """
    u11, u22, u33, u12, u13, u23 = (float(v) for v in u_cif)
    U = np.array([[u11, u12, u13], [u12, u22, u23], [u13, u23, u33]])
    rc = cell.reciprocal()
    N = np.diag([rc.a, rc.b, rc.c])
    A = np.array(cell.orth.mat)
    Ucart = A @ N @ U @ N @ A.T
    return float(np.trace(Ucart) / 3.0)


def from_shelx_order(u6) -> list[float]:
    """SHELX U11 U22 U33 U23 U13 U12 -> CIF U11 U22 U33 U12 U13 U23."""
    u11, u22, u33, u23, u13, u12 = (float(v) for v in u6)
    return [u11, u22, u33, u12, u13, u23]
