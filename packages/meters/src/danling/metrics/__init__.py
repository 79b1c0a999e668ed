"""danling.metrics: running meters, streaming and global metrics, metric functions, distributed sync.

- :class:`AverageMeter` / :class:`AverageMeters`: running averages of losses, learning rates ...
- :class:`MetricMeter` / :class:`StreamMetrics`: metrics evaluated per batch and averaged.
- :class:`GlobalMetrics`: exact dataset-level metrics from stored predictions or a confusion matrix.
- :class:`MultiTaskMetrics`: one container per task, with macro / micro / weighted aggregates.
- :mod:`danling.metrics.functional`: the metric math as pure functions.
- ``binary_metrics()``, ``multiclass_metrics(C)``, ``multilabel_metrics(L)``, ``regression_metrics(D)``:
  ready containers.
"""

from . import functional
from .average_meter import AverageMeter, AverageMeters
from .factory import (
    binary_metric_funcs,
    binary_metrics,
    multiclass_metric_funcs,
    multiclass_metrics,
    multilabel_metric_funcs,
    multilabel_metrics,
    regression_metric_funcs,
    regression_metrics,
)
from .global_metrics import GlobalMetrics, MetricRequirementError
from .metric_func import MetricFunc
from .multitask import MultiTaskMetrics
from .preprocess import (
    base_preprocess,
    preprocess_binary,
    preprocess_multiclass,
    preprocess_multilabel,
    preprocess_regression,
)
from .round_dict import RoundDict
from .state import ConfmatSpec, MetricState, Requirements
from .stream_metrics import MetricMeter, StreamMetrics

__all__ = [
    "AverageMeter",
    "AverageMeters",
    "ConfmatSpec",
    "GlobalMetrics",
    "MetricFunc",
    "MetricMeter",
    "MetricRequirementError",
    "MetricState",
    "MultiTaskMetrics",
    "Requirements",
    "RoundDict",
    "StreamMetrics",
    "base_preprocess",
    "binary_metric_funcs",
    "binary_metrics",
    "functional",
    "multiclass_metric_funcs",
    "multiclass_metrics",
    "multilabel_metric_funcs",
    "multilabel_metrics",
    "preprocess_binary",
    "preprocess_multiclass",
    "preprocess_multilabel",
    "preprocess_regression",
    "regression_metric_funcs",
    "regression_metrics",
]
