"""Strata's statistics engine: ep-stats-layout aggregates and metric expressions in, decisions out.

Public API (see docs/statistics.md):

- :func:`evaluate` — every metric × variant of many experiments in one vectorised pass;
- :func:`evaluate_segments` — every metric per segment (Holm across a dimension's segments) and
  the heterogeneity test (Cochran's Q, BH) that flags segments whose effect differs;
- :func:`required_cross_terms` — the cross-product sums the aggregates must carry;
- :func:`experiment_from_record` — validate an experiments-table row into an
  :class:`ExperimentDesign` (metrics are :class:`strata.metrics.Metric`, the one metric model);
- :func:`run_evaluation` (``strata evaluate EXP --date D``), :func:`read_results`,
  :func:`reproduce` — the Iceberg ``results`` table through pyiceberg;
- :func:`recommend` — guardrail outcomes and one recommendation per experiment with its reason
  (:mod:`strata.stats.recommend`);
- :func:`build_reports` (``strata report [EXP]``), :func:`write_reports` — static HTML;
- :mod:`strata.stats.power`, :mod:`strata.stats.sequential`, :mod:`strata.stats.multiple`,
  :mod:`strata.stats.srm`, :mod:`strata.stats.inputs`.

Usage:
    >>> from strata.stats import EvaluationConfig
    >>> EvaluationConfig().alpha
    0.05
"""

from strata.metrics import Metric
from strata.stats.engine import (
    CROSS_COLUMNS,
    KEY_COLUMNS,
    VALUE_COLUMNS,
    Evaluation,
    evaluate,
    required_cross_terms,
    verdicts,
)
from strata.stats.errors import AggregateError, DesignError, ExpressionError
from strata.stats.models import (
    EvaluationConfig,
    ExperimentDesign,
    VariantDesign,
    experiment_from_record,
    experiments_from_records,
)
from strata.stats.recommend import recommend
from strata.stats.report import build_reports, write_reports
from strata.stats.results import (
    evaluable_by_date,
    evaluable_experiments,
    read_results,
    reproduce,
    run_evaluation,
)
from strata.stats.segments import SegmentEvaluation, evaluate_segments

__all__ = [
    "CROSS_COLUMNS",
    "KEY_COLUMNS",
    "VALUE_COLUMNS",
    "AggregateError",
    "DesignError",
    "Evaluation",
    "EvaluationConfig",
    "ExperimentDesign",
    "ExpressionError",
    "Metric",
    "SegmentEvaluation",
    "VariantDesign",
    "build_reports",
    "evaluable_by_date",
    "evaluable_experiments",
    "evaluate",
    "evaluate_segments",
    "experiment_from_record",
    "experiments_from_records",
    "read_results",
    "recommend",
    "reproduce",
    "required_cross_terms",
    "run_evaluation",
    "verdicts",
    "write_reports",
]
