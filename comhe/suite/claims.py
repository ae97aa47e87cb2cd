"""The claims a paper table makes, checked on our runs across seeds.

A claim in an experiment file is an ordering of rows, best first, by the column's metric: lower is better for test
error and energy, higher for accuracy (``experiments.METRICS``)::

    claims:
      - text: "RP-CoMHE < HS-MHE < MHE < Baseline on CNN-6 and CNN-9"
        order: [RP-CoMHE, HS-MHE, MHE, Baseline]     # a chain: each adjacent pair is one comparison
        columns: [CNN-6, CNN-9]                      # default: every column
      - text: "every MHE variant beats the baseline"
        better: [MHE, HS-MHE]
        than: Baseline
      - text: "MHE: hidden and output < hidden only"    # cells across columns: a chain of [row, column]
        cells: [[MHE, H and O], [MHE, H only]]

Test, per comparison "A better than B" of two cells (A < B for error, A > B for accuracy): the exact one-sided
permutation test of the difference of means over the seeds (all C(nA + nB, nA) relabellings of the pooled runs;
p = the share whose mean(A) - mean(B) is at most the observed one; values negated for accuracy), at ALPHA = 0.05.
It assumes nothing about the distribution; its price is that small samples cannot reach 0.05: with 3 seeds a side
the smallest p is 1/20, reached only when every run of A beats every run of B, and with 2 seeds a side it is 1/6.
A comparison whose smallest reachable p is above ALPHA is "too few runs" (as is one with a missing side; diverged
runs are excluded, as from the means). ``test_sentence`` says this for the seed count of a table.

Verdict of a claim: "not held" if any comparison with enough runs has p > ALPHA; else "too few runs" if any has
too few; else "held".
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import List, Mapping, Optional, Sequence, Tuple

ALPHA = 0.05
HELD, NOT_HELD, TOO_FEW = "held", "not held", "too few runs"
TEST_NAME = f"exact one-sided permutation test of the difference of means over seeds, alpha = {ALPHA}"


def test_sentence(seeds: int) -> str:
    """The test and what ``seeds`` runs a side can show with it, as one sentence (table headers, scorecard)."""
    if seeds < 3:
        reach = ("1 seed a side cannot be tested" if seeds == 1 else
                 f"with 2 seeds a side the smallest reachable p is 1/6 > {ALPHA}")
        return f"{TEST_NAME}; {reach}, so every claim is \"too few runs\" (3 seeds a side are needed)."
    if seeds == 3:
        return f"{TEST_NAME}; with 3 seeds a side, \"held\" needs every run of A to beat every run of B (p = 1/20)."
    return f"{TEST_NAME}; with {seeds} seeds a side the smallest reachable p is 1/{math.comb(2 * seeds, seeds)}."


def permutation_p(a: Sequence[float], b: Sequence[float]) -> float:
    """P(mean(A*) - mean(B*) <= observed) over every split of the pooled values into groups of |A| and |B|."""
    pooled, na = list(a) + list(b), len(a)
    total = sum(pooled)

    def diff(group_a: Sequence[float]) -> float:
        sa = sum(group_a)
        return sa / na - (total - sa) / len(b)

    observed = diff(a)
    splits = list(itertools.combinations(range(len(pooled)), na))
    hits = sum(diff([pooled[i] for i in idx]) <= observed + 1e-12 for idx in splits)
    return hits / len(splits)


def smallest_p(na: int, nb: int) -> float:
    return 1.0 / math.comb(na + nb, na) if na and nb else 1.0


@dataclass
class Comparison:
    better: str
    worse: str
    column: str
    a: List[float]
    b: List[float]
    p: Optional[float]
    verdict: str
    higher_is_better: bool = False

    def describe(self, digits: int = 2) -> str:
        def mean(v: List[float]) -> str:
            return f"{sum(v) / len(v):.{digits}f} (n={len(v)})" if v else "no runs"
        p = f", p = {self.p:.3f}" if self.p is not None else ""
        where = f"{self.column}: " if self.column else ""
        return f"{where}{self.better} {mean(self.a)} vs {self.worse} {mean(self.b)}{p}"


@dataclass
class ClaimResult:
    text: str
    verdict: str
    comparisons: List[Comparison]


def compare(better: str, worse: str, column: str, a: List[float], b: List[float],
            higher_is_better: bool = False) -> Comparison:
    """``better`` beats ``worse``: lower values for an error (the default), higher for an accuracy."""
    if smallest_p(len(a), len(b)) > ALPHA:
        return Comparison(better, worse, column, a, b, None, TOO_FEW, higher_is_better)
    # For "higher is better" the same one-sided test runs on the negated values: mean(-A) < mean(-B).
    p = permutation_p([-v for v in a], [-v for v in b]) if higher_is_better else permutation_p(a, b)
    return Comparison(better, worse, column, a, b, p, HELD if p <= ALPHA else NOT_HELD, higher_is_better)


def pairs(claim: Mapping, columns: Sequence[str]) -> List[Tuple[Tuple[str, str], Tuple[str, str]]]:
    """The claim as comparisons ``((row, column) better, (row, column) worse)``."""
    if claim.get("cells"):
        chain = [tuple(c) for c in claim["cells"]]
        return list(zip(chain[:-1], chain[1:]))
    names = list(claim["order"]) if claim.get("order") else list(claim["better"]) + [claim["than"]]
    row_pairs = list(zip(names[:-1], names[1:])) if claim.get("order") else [(n, claim["than"]) for n in names[:-1]]
    return [((a, col), (b, col)) for col in (claim.get("columns") or columns) for a, b in row_pairs]


def check(claim: Mapping, values: Mapping[Tuple[str, str], List[float]], columns: Sequence[str],
          higher_is_better: Optional[Mapping[str, bool]] = None) -> ClaimResult:
    """``values[(row, column)]``: the finished runs' metric values of that cell (diverged runs left out);
    ``higher_is_better[column]``: the direction of that column's metric (default: lower is better)."""
    comparisons = []
    for (ra, ca), (rb, cb) in pairs(claim, columns):
        a_name, b_name = (ra, rb) if ca == cb else (f"{ra} [{ca}]", f"{rb} [{cb}]")
        comparisons.append(compare(a_name, b_name, ca if ca == cb else "", list(values.get((ra, ca), [])),
                                   list(values.get((rb, cb), [])), bool((higher_is_better or {}).get(ca))))
    verdicts = {c.verdict for c in comparisons}
    verdict = NOT_HELD if NOT_HELD in verdicts else TOO_FEW if TOO_FEW in verdicts else HELD
    return ClaimResult(claim["text"], verdict, comparisons)


def check_all(claims: Sequence[Mapping], values: Mapping[Tuple[str, str], List[float]], columns: Sequence[str],
              higher_is_better: Optional[Mapping[str, bool]] = None) -> List[ClaimResult]:
    return [check(c, values, columns, higher_is_better) for c in claims]
