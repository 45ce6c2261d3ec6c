"""The HTML report of a work folder: ``build_report(workdir) -> report/index.html``."""

from mama_augment.report.build import (
    DEFAULT_PAGE_SIZE,
    ReportSummary,
    build_report,
    build_report_summary,
)

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "ReportSummary",
    "build_report",
    "build_report_summary",
]
