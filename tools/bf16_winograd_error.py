"""How much accuracy Winograd loses if its transformed tiles are multiplied in bfloat16,
against bf16 mode's direct product of bf16 operands (docs/precision.md, "Why not bf16
Winograd"). In float64: random inputs N(0, 1), 3x3 weights N(0, 1 / (9 C)), C = 256 input
channels; prints the RMS error of each form relative to the output's RMS.

    python tools/bf16_winograd_error.py [--channels 256] [--tiles 200] [--seed 0]
"""

from __future__ import annotations

import argparse

import numpy as np

from fastconv.precision import round_to_bf16

# Lavin and Gray's F(4x4, 3x3) and F(2x2, 3x3): y = A^T [(G g G^T) * (B^T d B)] A.
F4 = dict(m=4,
          BT=np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                       [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], float),
          G=np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                      [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]]),
          AT=np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0],
                       [0, 1, -1, 8, -8, 1]], float))
F2 = dict(m=2,
          BT=np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], float),
          G=np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]]),
          AT=np.array([[1, 1, 1, 0], [0, 1, -1, -1]], float))


def bf16(a: np.ndarray) -> np.ndarray:
    """a rounded to bfloat16 (to nearest even), as float64."""
    return round_to_bf16(np.asarray(a, np.float32)).astype(np.float64)


def direct(d: np.ndarray, g: np.ndarray, m: int) -> np.ndarray:
    """The m x m outputs of each (m+2) x (m+2) tile d (T, C, a, a) under kernels g (F, C, 3, 3)."""
    out = np.zeros((d.shape[0], g.shape[0], m, m))
    for i in range(m):
        for j in range(m):
            out[:, :, i, j] = np.einsum("tcab,fcab->tf", d[:, :, i:i + 3, j:j + 3], g)
    return out


def winograd_rounded(d: np.ndarray, g: np.ndarray, f: dict) -> np.ndarray:
    """Winograd on bf16 operands with the transformed tiles and kernels rounded to bf16."""
    v = bf16(np.einsum("ij,tcjk,lk->tcil", f["BT"], bf16(d), f["BT"]))
    u = bf16(np.einsum("ij,fcjk,lk->fcil", f["G"], bf16(g), f["G"]))
    return np.einsum("ij,tfjk,lk->tfil", f["AT"], np.einsum("tcil,fcil->tfil", v, u), f["AT"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--channels", type=int, default=256)
    p.add_argument("--tiles", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    rng = np.random.default_rng(a.seed)
    g = rng.standard_normal((8, a.channels, 3, 3)) / np.sqrt(9 * a.channels)
    for name, f in (("F(2x2, 3x3)", F2), ("F(4x4, 3x3)", F4)):
        m = f["m"]
        d = rng.standard_normal((a.tiles, a.channels, m + 2, m + 2))
        exact = direct(d, g, m)
        rms = np.sqrt(np.mean(exact ** 2))
        err = {"bf16 operands, multiplied exactly": direct(bf16(d), bf16(g), m),
               f"{name}, transformed tiles in bf16": winograd_rounded(d, g, f)}
        for what, y in err.items():
            print(f"{name} data: {what}: {100 * np.sqrt(np.mean((y - exact) ** 2)) / rms:.2f}%")


if __name__ == "__main__":
    main()
