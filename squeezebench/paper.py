"""The study's Tables 1-18, as rows of our own benchmark records.

``PAPER_TABLES[n]`` says which (model, dataset) pairs and which variant ids regenerate the
study's Table n on our hardware, and which record fields it shows; ``EXTRAS`` adds the
temperature figure, the study's future-work chains and the compact-size targets. The ``paper``
profile (:mod:`squeezebench.profiles`) runs exactly the union of these, so a report writer can
select records by ``(model, dataset, variant)`` and lay them out table by table. The study's own
figures are in the reference data (study-tables.csv / study-params.csv), never mixed in here.

Variant ids (see the compression modules for the grammar):

* precision ``fp64``/``fp16``, int8 ``int8-static`` (post-training, per-channel), ``int8-qat``;
* unstructured pruning ``prune50`` .. ``prune90`` (layer-wise, as the study), ``gprune96-s4-e4``
  / ``gprune96-s8-e6`` (global, 4 rounds of 4 / 8 rounds of 6 epochs, for the size targets);
* structured pruning ``sprune50-dense`` (neurons), ``sprune50-conv``/``sprune75-conv`` (neurons and
  filters);
* distillation ``kd-t<T>`` into the 784-50-10 ``mlp_student``, its control ``scratch-mlp_student``,
  ``kdself-t4`` into the chain's current model.
"""
from __future__ import annotations

from dataclasses import dataclass

LENET300, LENET5 = "lenet300_100", "lenet5"
MNIST, CIFAR10 = "mnist", "cifar10"
STUDY_PAIRS = tuple((m, d) for d in (MNIST, CIFAR10) for m in (LENET300, LENET5))

SIZE = ("artifact_bytes", "compressed_bytes", "nonzero_params", "params")
ACCURACY = ("top1",)
LATENCY = ("per_image_us",)
PER_LAYER = ("nonzero_per_layer",)

PRUNE_SPARSITIES = (50, 60, 70, 80, 90)
PRUNE = tuple(f"prune{s}" for s in PRUNE_SPARSITIES)
SPRUNE = ("sprune50-dense", "sprune50-conv", "sprune75-conv")
INT8 = "int8-static"
TEMPERATURES = (1, 2, 4, 8, 16, 20)
KD = "kd-t4"  # the table rows; the sweep is in EXTRAS["temperature"]
KD_SWEEP = tuple(f"kd-t{t}" for t in TEMPERATURES)
SCRATCH = "scratch-mlp_student"
# Global pruning here: layer-wise prune80 cost LeNet-5 4.1 pp on CIFAR-10 (its 450 conv1 weights
# lose 80 % too), global 1.3 pp; kdself then recovers to -0.8 pp (measured, same seeds).
FUTURE = ("gprune80+kdself-t4+int8-qat",  # distill the original into its pruned copy, then quantize
          "kd-t4+gprune80+int8-static")  # prune the distilled student, then quantize
# Honest-bytes targets (compressed_bytes >= 50x (LeNet-300-100) / 40x (LeNet-5) below the fp32
# artifact at <= 0.3 pp on MNIST): global pruning to 96 %, then int8 with per-tensor weight scales
# (per-channel costs a float per output channel: 10-15 % of LeNet-5's bytes). LeNet-300-100 gets
# there with 4 rounds of 4 epochs (-0.21 pp, 59.6x); LeNet-5 only just, with 8 rounds of 6 epochs.
# Measured on MNIST, from a baseline trained at 1 thread: gprune96-s4-e4 -0.43 pp, -s8-e3 -0.30,
# -s4-e8 -0.28 (fine-tuning -s4-e4 further with QAT or self-distillation did not help); from the
# 2-thread baseline (what 2 cores train now): -s4-e8 -0.48, -s8-e4 -0.33, -s8-e6 -0.30 at 43.2x.
COMPACT = {LENET300: "gprune96-s4-e4+int8-static-pt", LENET5: "gprune96-s8-e6+int8-static-pt"}


def _q(variants: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(f"{v}+{INT8}" for v in variants)


@dataclass(frozen=True)
class PaperTable:
    """One table of the study: its rows are records of ``variants`` on each of ``pairs``."""

    number: int | str
    title: str
    pairs: tuple[tuple[str, str], ...]
    variants: tuple[str, ...]
    fields: tuple[str, ...]
    note: str = ""

    def rows(self) -> list[tuple[str, str, str]]:
        """(model, dataset, variant) of every row, in table order."""
        return [(m, d, v) for m, d in self.pairs for v in self.variants]


_TABLES = (
    PaperTable(1, "Precision of LeNet-300-100 on MNIST", ((LENET300, MNIST),),
               ("fp64", "fp32", "fp16", INT8), SIZE + ACCURACY),
    PaperTable(2, "int8 quantization", ((LENET5, MNIST), (LENET300, CIFAR10), (LENET5, CIFAR10)),
               ("fp32", INT8), SIZE + ACCURACY + LATENCY),
    PaperTable(3, "Weight pruning of LeNet-300-100 on MNIST", ((LENET300, MNIST),),
               ("fp32",) + PRUNE, SIZE + ACCURACY + LATENCY),
    PaperTable(4, "Nonzero weights per layer, LeNet-300-100 on MNIST", ((LENET300, MNIST),),
               ("fp32",) + PRUNE, PER_LAYER, note="the study counts weights without biases"),
    PaperTable(5, "Structured (neuron/filter) pruning of LeNet-5 on MNIST", ((LENET5, MNIST),),
               ("fp32",) + SPRUNE, SIZE + ACCURACY + LATENCY + ("macs",)),
    PaperTable(6, "Parameters per layer, LeNet-5 on MNIST, structured pruning", ((LENET5, MNIST),),
               ("fp32",) + SPRUNE, PER_LAYER, note="the study counts biases too"),
    PaperTable(7, "Weight pruning of LeNet-300-100 on CIFAR-10", ((LENET300, CIFAR10),),
               ("fp32",) + PRUNE, SIZE + ACCURACY + LATENCY, note="the study ran 50/70/80 %"),
    PaperTable(8, "Nonzero weights per layer, LeNet-300-100 on CIFAR-10", ((LENET300, CIFAR10),),
               ("fp32",) + PRUNE, PER_LAYER),
    PaperTable(9, "Structured pruning of LeNet-5 on CIFAR-10", ((LENET5, CIFAR10),),
               ("fp32",) + SPRUNE, SIZE + ACCURACY + LATENCY + ("macs",)),
    PaperTable(10, "Parameters per layer, LeNet-5 on CIFAR-10, structured pruning", ((LENET5, CIFAR10),),
               ("fp32",) + SPRUNE, PER_LAYER),
    PaperTable(11, "Knowledge distillation on MNIST (teacher, student alone, distilled student)",
               ((LENET300, MNIST), (LENET5, MNIST)), ("fp32", SCRATCH, KD), SIZE + ACCURACY + LATENCY,
               note="fp32 is the teacher; the student is mlp_student (784-50-10), same epochs and seed"),
    PaperTable(12, "Knowledge distillation on CIFAR-10", ((LENET300, CIFAR10), (LENET5, CIFAR10)),
               ("fp32", SCRATCH, KD), SIZE + ACCURACY + LATENCY),
    PaperTable(13, "Pruning + quantization, LeNet-300-100 on MNIST", ((LENET300, MNIST),),
               ("fp32", INT8) + tuple(x for p in PRUNE for x in (p, f"{p}+{INT8}")), SIZE + ACCURACY + LATENCY),
    PaperTable(14, "Pruning + quantization, LeNet-5 on MNIST", ((LENET5, MNIST),),
               ("fp32", INT8) + tuple(x for p in SPRUNE for x in (p, f"{p}+{INT8}")), SIZE + ACCURACY + LATENCY),
    PaperTable(15, "Pruning + quantization, LeNet-300-100 on CIFAR-10", ((LENET300, CIFAR10),),
               ("fp32", INT8) + tuple(x for p in PRUNE for x in (p, f"{p}+{INT8}")), SIZE + ACCURACY + LATENCY),
    PaperTable(16, "Pruning + quantization, LeNet-5 on CIFAR-10", ((LENET5, CIFAR10),),
               ("fp32", INT8) + tuple(x for p in SPRUNE for x in (p, f"{p}+{INT8}")), SIZE + ACCURACY + LATENCY),
    PaperTable(17, "Distillation + quantization on MNIST", ((LENET300, MNIST), (LENET5, MNIST)),
               ("fp32", INT8, KD, f"{KD}+{INT8}"), SIZE + ACCURACY + LATENCY),
    PaperTable(18, "Distillation + quantization on CIFAR-10", ((LENET300, CIFAR10), (LENET5, CIFAR10)),
               ("fp32", INT8, KD, f"{KD}+{INT8}"), SIZE + ACCURACY + LATENCY),
)
PAPER_TABLES: dict[int, PaperTable] = {t.number: t for t in _TABLES}  # type: ignore[misc]

_BOTH = tuple((m, d) for d in (MNIST, CIFAR10) for m in (LENET300, LENET5))
EXTRAS: dict[str, PaperTable] = {
    "temperature": PaperTable("temperature", "Effect of the temperature on the distilled student's top-1 "
                              "(LeNet-5 teacher)", ((LENET5, MNIST), (LENET5, CIFAR10)),
                              (SCRATCH,) + KD_SWEEP, ACCURACY, note="alpha 0.9; scratch is T-independent"),
    "future": PaperTable("future", "The study's future work: distill into a pruned copy of the teacher, "
                         "prune a distilled student; then quantize", _BOTH, ("fp32",) + FUTURE,
                         SIZE + ACCURACY + LATENCY),
    **{f"compact-{m}": PaperTable(f"compact-{m}", f"Smallest honest size of {m} on MNIST: global pruning "
                                  "+ int8, compact encoding", ((m, MNIST),), ("fp32", v),
                                  SIZE + ACCURACY + ("compressed_bits_per_weight",),
                                  note="compressed_bytes of model.sqz vs the fp32 artifact_bytes")
       for m, v in COMPACT.items()},
}


def paper_variants() -> tuple[tuple[str, ...], dict[str, tuple[tuple[str, str], ...]]]:
    """Every variant the tables need, in first-use order, and the (model, dataset) pairs each
    applies to."""
    pairs: dict[str, list[tuple[str, str]]] = {}
    for t in (*PAPER_TABLES.values(), *EXTRAS.values()):
        for pair in t.pairs:
            for v in t.variants:
                ps = pairs.setdefault(v, [])
                if pair not in ps:
                    ps.append(pair)
    return tuple(pairs), {v: tuple(ps) for v, ps in pairs.items()}
