"""The MNIST autoencoder of Bartunov et al. (2018), App. 5.5 (Figs. 6 and 7), as three presets.

"784-512-64-512-784 on MNIST", trained with a squared-error reconstruction loss by DTP-parallel,
SDTP-parallel and BP; Fig. 6 plots the train and test reconstruction error over 500 epochs
(about 0.005-0.02), Fig. 7 a few test digits and each method's reconstruction (SDTP underfits but
its reconstructions look comparable). The paper gives no number and no hyperparameter for it.

Presets ``mnist-ae-dtp-parallel``, ``mnist-ae-sdtp-parallel``, ``mnist-ae-bp`` (groups
``autoencoder`` and ``mnist-ae``; not in ``mnist``, which is Table 1a). Each is the MNIST-FC
cell of the same method (:func:`~bioprop.presets.paper.make_config`: its Table 5 column, batch
size, validation split, epochs, the paper's DECISIONS) with the ``mnist-autoencoder`` network
(:mod:`bioprop.models.zoo`) and the input scaling below. ``bioprop report`` draws Figs. 6 and 7
from them (:mod:`bioprop.experiments.report_autoencoder`).
"""

from __future__ import annotations

from bioprop.presets.paper import Decision, PaperNumbers, make_config

MODEL = "mnist-autoencoder"
DATASET = "mnist"
ARCH = "ae"  # preset names mnist-ae-<method>
TABLE = "autoencoder"  # Cell.table of these presets
METHODS = ("dtp-parallel", "sdtp-parallel", "bp")  # the three curves of Fig. 6, in the figure's order
NORMALIZATION = "none"  # pixels / 255: the network reconstructs the [0, 1] image
SOURCE = "App. 5.5, Figs. 6-7 (curves and images only; no table)"

DECISIONS: list[Decision] = [
    Decision("autoencoder hyperparameters (App. 5.5)", "none given for the autoencoder",
             "the MNIST-FC Table 5 column of the same method (DTP-parallel, SDTP-parallel, BP), with every "
             "other MNIST-FC choice (batch 100, 10,000 validation images, 500 epochs)",
             "the nearest tuned setting: the same data, fully-connected tanh layers of similar width, the "
             "same rule and schedule; the paper says nothing else"),
    Decision("autoencoder input scaling, output layer and loss", "'squared L2 reconstruction loss'; output "
             "nonlinearity and input scaling not stated",
             "pixels / 255 (normalisation 'none'), a linear output of 784 units, L = 1/2 ||h_L - x||^2 summed "
             "over pixels and averaged over the batch; reported metric: the mean squared error per pixel",
             "on the [0, 1] scale the per-pixel error has Fig. 6's range (0.005-0.02); a linear output reaches "
             "every pixel value without saturating; the reduction is Lee et al.'s (as the TP losses). For "
             "SDTP the first target is then the image itself and the output inverse reads h_L directly"),
    Decision("autoencoder reconstructions (Fig. 7)", "a few test digits and their reconstructions",
             "the first 8 test images and their reconstructions after the last epoch, kept in that epoch's "
             "metrics row ('reconstructions', base64 uint8) so the exported runs carry them",
             "the report is rebuilt from compact per-run JSON without checkpoints"),
]


def config(method: str):
    """The TrainConfig of ``mnist-ae-<method>``: the MNIST-FC cell of ``method`` on the autoencoder."""
    config = make_config(DATASET, "fc", method)  # Table 5's MNIST-FC column of the same method
    config.model = MODEL
    config.data.normalization = NORMALIZATION
    return config


def numbers() -> PaperNumbers:
    return PaperNumbers(source=SOURCE)
