"""transfer: pairwise task-transfer analysis for biomedical and clinical NLP.

Multi-task BERT (one shared encoder, one head per task) on the BLUE tasks: single-task baselines,
multi-task refinement and fine-tuning, and the pairwise grid that shows which task helps or hurts which.
Nothing heavy is imported here, so ``import transfer`` is cheap.
"""

__version__ = "0.2.0"
