"""MNIST-LC and MNIST-FC with the penultimate layer's width swapped (issue 15: SDTP on MNIST-LC).

SDTP's penultimate target is ``h - g_L(p) + g_L(y*)``: it rests on an inverse ``g_L`` that rebuilds
the last hidden layer from the 10 class probabilities alone. MNIST-FC's last hidden layer has 256
units, MNIST-LC's 1024. These two networks swap that width, everything else as registered, so a
run tells whether the width the 10 outputs must be inverted into is what holds SDTP back on LC::

    bioprop train --preset mnist-lc-sdtp-parallel --model examples/penultimate_width.py:mnist_lc_penultimate_256 \\
        --epochs 5 --train-eval-size 10000 --data-dir ../shared/data --out runs/penultimate/...

Any function here is a model a config can name (``--model file.py:function``).
"""

from __future__ import annotations

from bioprop.models.zoo import LayerSpec, build_network


def mnist_lc_penultimate_256():
    """``mnist-lc`` with a 256-unit fully-connected layer instead of 1024 (MNIST-FC's width)."""
    hidden = [LayerSpec("lc", 32, 3, 2), LayerSpec("lc", 64, 3, 2), LayerSpec("fc", 256)]
    return build_network("mnist-lc-penultimate-256", (1, 28, 28), hidden, 10)


def mnist_fc_penultimate_1024():
    """``mnist-fc`` with its fifth hidden layer 1024 units wide instead of 256 (MNIST-LC's width)."""
    hidden = [LayerSpec("fc", 256)] * 4 + [LayerSpec("fc", 1024)]
    return build_network("mnist-fc-penultimate-1024", (1, 28, 28), hidden, 10)
