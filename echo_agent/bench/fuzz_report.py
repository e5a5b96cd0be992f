"""The fuzz run's record: one ``CaseResult`` per case, the store checks at the end
(``FuzzReport``), and the Markdown table ``echo-agent bench fuzz`` prints.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from echo_agent.bench.fuzz_mutations import (
    ACCEPT,
    FAMILIES,
    REFUSE,
)
from echo_agent.bench.fuzz_sender import NO_RESPONSE, NOT_SENT, REFUSED, STORED, WARNING


@dataclass(frozen=True)
class CaseResult:
    """What happened to one case, as recorded right after it."""

    index: int
    family: str
    detail: str
    seed: str
    expect: str
    outcome: str
    status: int | None
    note: str
    echo_ok: bool
    echo_retried: bool  # the first C-ECHO failed, one on a new association was answered
    node_alive: bool
    row: bool
    file_ok: bool
    incoming_left: int

    @property
    def good(self) -> bool:
        return self.family == "good"


@dataclass
class FuzzReport:
    """Every case and the checks of the store at the end."""

    seed: int
    seconds: float
    cases: list[CaseResult]
    store_files_without_row: list[str] = field(default_factory=list)
    rows_without_file: list[str] = field(default_factory=list)
    incoming_left: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    pixels_not_decodable: int = 0
    node_restarts: int = 0
    node_log_tracebacks: int = 0
    node_peak_rss_mb: float = 0.0

    # --- the figures -------------------------------------------------------------------------

    @property
    def mutants(self) -> list[CaseResult]:
        return [c for c in self.cases if not c.good]

    @property
    def goods(self) -> list[CaseResult]:
        return [c for c in self.cases if c.good]

    @property
    def crashes(self) -> list[CaseResult]:
        """Cases after which the node had exited, did not answer C-ECHO, or sent no
        response to a C-STORE it was sent."""
        return [
            c for c in self.cases if not c.node_alive or not c.echo_ok or c.outcome == NO_RESPONSE
        ]

    @property
    def lost_good(self) -> list[CaseResult]:
        return [c for c in self.goods if c.outcome != STORED or not (c.row and c.file_ok)]

    @property
    def partial(self) -> list[str]:
        """Files without their row, rows without their file, anything left in .incoming,
        rows for refused instances, and stored instances whose file differs from what was
        sent."""
        problems = [f"file without row: {p}" for p in self.store_files_without_row]
        problems += [f"row without file: {p}" for p in self.rows_without_file]
        problems += [f"left in .incoming: {p}" for p in self.incoming_left]
        for c in self.cases:
            if c.incoming_left:
                problems.append(f"case {c.index}: {c.incoming_left} file(s) in .incoming")
            if c.outcome != STORED and c.row:
                problems.append(f"case {c.index}: refused ({c.outcome}) but recorded")
            if c.outcome == STORED and not (c.row and c.file_ok):
                problems.append(f"case {c.index}: acknowledged but not stored byte for byte")
        return problems

    @property
    def not_failure_refusals(self) -> list[CaseResult]:
        """Instances not stored whose status was no failure (a warning: 'kept with changes')."""
        return [c for c in self.cases if c.outcome == WARNING]

    @property
    def processing_failures(self) -> list[CaseResult]:
        """0x0110: the node failed on its side (an exception), not on the dataset."""
        return [c for c in self.cases if c.status == 0x0110]

    @property
    def wrongly_stored(self) -> list[CaseResult]:
        return [c for c in self.mutants if c.expect == REFUSE and c.outcome == STORED]

    @property
    def wrongly_refused(self) -> list[CaseResult]:
        return [c for c in self.mutants if c.expect == ACCEPT and c.outcome == REFUSED]

    @property
    def ok(self) -> bool:
        return not (
            self.crashes
            or self.lost_good
            or self.partial
            or self.not_failure_refusals
            or self.processing_failures
            or self.unreadable
            or self.wrongly_stored
            or self.wrongly_refused
            or self.node_log_tracebacks
        )

    def problems(self) -> list[str]:
        lines = [
            f"crash after case {c.index} ({c.family}: {c.detail}; {c.note})" for c in self.crashes
        ]
        lines += [
            f"good case {c.index} ({c.seed}) lost: {c.outcome} {c.note}" for c in self.lost_good
        ]
        lines += self.partial
        lines += [
            f"case {c.index} not stored with status 0x{c.status or 0:04X}"
            for c in self.not_failure_refusals
        ]
        lines += [
            f"case {c.index} processing failure ({c.family}: {c.detail})"
            for c in self.processing_failures
        ]
        lines += [f"unreadable stored object: {u}" for u in self.unreadable]
        lines += [
            f"case {c.index} stored though it must be refused ({c.family} {c.seed}: {c.detail})"
            for c in self.wrongly_stored
        ]
        lines += [
            f"case {c.index} refused though valid ({c.family} {c.seed}: {c.detail}; "
            f"0x{c.status or 0:04X} {c.note})"
            for c in self.wrongly_refused
        ]
        if self.node_log_tracebacks:
            lines.append(f"{self.node_log_tracebacks} traceback(s) in the listener's log")
        return lines


def format_table(report: FuzzReport) -> str:
    """Markdown: cases by family and outcome, then the invariants and any problem found."""
    lines = [
        "| mutation | cases | stored | refused | not sent | no response | statuses |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    families = ("good", *FAMILIES)
    for family in families:
        cases = [c for c in report.cases if c.family == family]
        if not cases:
            continue
        outcomes = Counter(c.outcome for c in cases)
        statuses = Counter(c.status for c in cases if c.status)
        shown = ", ".join(f"0x{s:04X}x{n}" for s, n in sorted(statuses.items()))
        lines.append(
            f"| {family} | {len(cases)} | {outcomes[STORED]} | {outcomes[REFUSED]} | "
            f"{outcomes[NOT_SENT]} | {outcomes[NO_RESPONSE]} | {shown or '-'} |"
        )
    total = Counter(c.outcome for c in report.cases)
    lines.append(
        f"| **all** | {len(report.cases)} | {total[STORED]} | {total[REFUSED]} | "
        f"{total[NOT_SENT]} | {total[NO_RESPONSE]} | |"
    )
    stored_mutants = sum(c.outcome == STORED for c in report.mutants)
    lines += [
        "",
        f"seed {report.seed}: {len(report.cases)} cases ({len(report.goods)} unmodified, "
        f"{len(report.mutants)} mutants) in {report.seconds:.1f} s "
        f"({len(report.cases) / max(report.seconds, 1e-9):.0f} cases/s); "
        f"listener peak RSS {report.node_peak_rss_mb:.0f} MB",
        f"crashes {len(report.crashes)}, partial files {len(report.partial)}, lost good "
        f"instances {len(report.lost_good)}, refusals without a failure status "
        f"{len(report.not_failure_refusals)}, processing failures "
        f"{len(report.processing_failures)}, unreadable stored objects {len(report.unreadable)}",
        f"mutants stored {stored_mutants} (pixels not decodable: {report.pixels_not_decodable}), "
        f"stored though certain to be invalid {len(report.wrongly_stored)}, refused though "
        f"valid {len(report.wrongly_refused)}, listener restarts {report.node_restarts}, "
        f"C-ECHO answered only on a new association {sum(c.echo_retried for c in report.cases)}",
    ]
    problems = report.problems()
    if problems:
        lines += ["", f"{len(problems)} problem(s):", *[f"- {p}" for p in problems[:40]]]
    retried = [c for c in report.cases if c.echo_retried]
    if retried:
        lines += ["", "C-ECHO answered only on a new association after:"]
        lines += [f"- case {c.index} ({c.family}: {c.detail}; {c.note})" for c in retried[:10]]
    return "\n".join(lines)
