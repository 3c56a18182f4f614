"""Cheap transfer preview: one all-task run that records look-ahead task affinity.

    python -m transfer.affinity --domain biomedical [grid options]

is ``python -m transfer.grid --stages affinity``: the all-task multi-task run of the domain, with
``transfer.training.lookahead.AffinityTracker`` measuring, every ``--affinity-every`` steps, the plain look-ahead
affinity Z(s->t) = 1 - L_t(after a step on s) / L_t(before) and the marginal affinity M(s->t) (the step on s
minus the momentum-only step of the run's optimiser, per unit learning rate), with probes in fp32 unless the
profile says ``affinity_precision = "train"`` (``--set affinity_precision=train``). It is stored in the results
store like any run (its own run id, ``metrics.json`` gains an ``affinity`` block), and ``python -m transfer.graph``
draws it next to the measured pairwise grid and scores Z, M and simple baselines against it (rank agreement
within targets with a block permutation p, top-1 partner and regret, split-half reliability, wall-time ratio).
Every grid option applies (``--profile``, ``--seeds``, ``--results``, ``--devices``, ``--backend dask`` ...).
"""

from __future__ import annotations

import sys

from transfer.cli import command
from transfer.errors import UsageError


@command
def main(argv: list[str] | None = None) -> int:
    from transfer import grid

    args = list(sys.argv[1:] if argv is None else argv)
    if "--stages" in args:
        raise UsageError("transfer.affinity plans only the affinity run; use python -m transfer.grid --stages ... "
                         "to combine stages")
    if "-h" in args or "--help" in args:
        print(__doc__.strip() + "\n")
    return grid.main(["--stages", "affinity", *args])


if __name__ == "__main__":
    raise SystemExit(main())
