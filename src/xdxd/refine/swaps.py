"""Element swaps: one greedy search over pairs of atoms whose elements may be exchanged.

At 1.5–2.5 Å C, N and O (and Si/P/S/Cl, ...) scatter too alike for a sampler to label
them right; the refinement puts labels right by exchanging the elements of one pair of
atoms at a time. `greedy_swaps` is that search, the same for every caller: each round
judges every single swap of the current labels (crystal.chemistry.swap_pairs: within the
SWAP_GROUPS, or any two elements), keeps the one that gains most if it gains more than a
margin, and goes on from it, at most max_rounds times; the element counts stay as they
are. What differs is the judge:

- `swap_elements` (a model without riding H): each variant refined for a few cycles
  from the positions the last kept swap left, judged by R1 + CHEM_WEIGHT × chemistry;
- `swap_riding` (a model with riding H): each variant with its own riding H (and, from a
  rough model, its likeliest H counts), refined and judged the same way, the current
  labels judged again each round, many variants screened before refining, and the
  runners-up returned for the final refinement to decide;
- dual-space's quick swaps (solve.dualspace): R1 of |Fc| with the pair's Uiso reset.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple

import numpy as np

from xdxd.crystal.chemistry import swap_pairs
from xdxd.crystal.dataset import DataSet
from xdxd.refine.chemistry import CHEM_WEIGHT, Chemistry, check
from xdxd.refine.hydrogens import _with_h, h_count_choices, riders
from xdxd.refine.least_squares import LsqOptions, RefinementResult, refine_batch


class Verdict(NamedTuple):
    """A judge's word on one swap variant: its gain over the current labels (a swap is
    made when the best gain exceeds the search's margin) and the state the next round
    starts from if it is kept."""
    gain: float
    state: object


class Round(NamedTuple):
    """One round of `greedy_swaps`: the labels it started from, the pairs (i, j) tried,
    the variants (labels with that pair exchanged), their verdicts and the one kept."""
    elements: list[str]
    pairs: list[tuple[int, int]]
    variants: list[list[str]]
    verdicts: list[Verdict]
    kept: int | None


# judge(labels, pairs, variants, state) -> (state of the current labels, a Verdict per variant)
Judge = Callable[[list[str], list[tuple[int, int]], list[list[str]], object], tuple[object, list[Verdict]]]


def greedy_swaps(elements: list[str], judge: Judge, state: object, max_rounds: int = 6,
                 min_gain: float = 1e-4, groups: bool = True) -> tuple[list[str], object, list[Round]]:
    """Greedy element swaps (see the module docstring). state: what the judge starts from
    (positions, ADPs, ...). Returns (labels, state, rounds): the state of the labels
    returned, as the judge last saw them or as the kept swap left them."""
    els, rounds = list(elements), []
    for _ in range(max_rounds):
        pairs = swap_pairs(els, groups)
        variants = [_exchanged(els, i, j) for i, j in pairs]
        state, verdicts = judge(els, pairs, variants, state)
        if not variants:
            break
        k = int(np.argmax([v.gain for v in verdicts]))
        kept = k if verdicts[k].gain > min_gain else None
        rounds.append(Round(els, pairs, variants, verdicts, kept))
        if kept is None:
            break
        els, state = variants[k], verdicts[k].state
    return els, state, rounds


def _exchanged(elements: list[str], i: int, j: int) -> list[str]:
    out = list(elements)
    out[i], out[j] = out[j], out[i]
    return out


def swaps_made(rounds: list[Round]) -> list[tuple[tuple[int, int], list[str], Verdict]]:
    """((i, j), labels before, verdict) of each swap kept, in order."""
    return [(r.pairs[r.kept], r.elements, r.verdicts[r.kept]) for r in rounds if r.kept is not None]


# ---------------------------------------------------------------------------
# swaps of a model without riding H

@dataclass
class SwapResult:
    elements: list[str]
    result: RefinementResult   # refinement of the final labels (the last kept swap's cycles)
    chemistry: Chemistry
    swaps: list[dict]          # [{"i", "j", "from": [e_i, e_j], "r1", "score"}] in the order made


def swap_elements(data: DataSet, elements: list[str], frac: np.ndarray,
                  uiso: np.ndarray | None = None, occ: np.ndarray | None = None,
                  uaniso: np.ndarray | None = None, hydrogens: int | None = None,
                  max_rounds: int = 6, cycles: int = 4, batch: int = 64,
                  opts: LsqOptions = LsqOptions()) -> SwapResult:
    """Greedy element swaps with re-refinement: every variant refined for `cycles` cycles
    (in batches of `batch`) from where the last kept swap left the atoms, judged by
    R1 + CHEM_WEIGHT × chemistry score; a swap is kept when it lowers that by 1e-4.
    frac (N,3) fractional, uiso (N,) Å², as refined before the call."""
    cell, ops = data.cell, data.ops

    def judged(els: list[str], r: RefinementResult) -> tuple:
        c = check(cell, ops, els, r.frac, hydrogens)
        return r.r1 + CHEM_WEIGHT * c.score, r, c

    def judge(els, pairs, variants, state):
        best, res, _ = state
        out = []
        for s in range(0, len(variants), batch):
            chunk = variants[s:s + batch]
            for v, r in zip(chunk, refine_batch(data, chunk, res.frac, res.uiso, occ, uaniso,
                                                cycles=cycles, opts=opts)):
                score = judged(v, r)
                out.append(Verdict(best - score[0], score))
        return state, out

    start = refine_batch(data, list(elements), frac, uiso, occ, uaniso, cycles=cycles, opts=opts)[0]
    els, (_, res, chem), rounds = greedy_swaps(elements, judge, judged(list(elements), start), max_rounds)
    swaps = [{"i": i, "j": j, "from": [before[i], before[j]], "r1": round(v.state[1].r1, 5),
              "score": round(v.state[2].score, 3)} for (i, j), before, v in swaps_made(rounds)]
    return SwapResult(els, res, chem, swaps)


# ---------------------------------------------------------------------------
# swaps of a model with riding H

COUNT_CHOICES = 3      # H-count assignments tried with a labelling in swap_riding
COUNT_SHORTLIST = 3    # swap variants of a round that get all COUNT_CHOICES
COUNT_WEIGHT = 0.005   # R1 units per unit of H-count penalty (h_options) in swap_riding
CLOSE_MARGIN = 0.001   # R1 units: swap_riding's runners-up within this of its choice ...
CLOSE_LABELLINGS = 2   # ... (at most this many) get the final refinement too
SWAP_SCREEN = 24       # swap variants of a round refined for 4 cycles; more are screened first


class Judged(NamedTuple):
    """A labelling as swap_riding judged it: score (R1 + chemistry + H-count penalty), the
    H counts that gave it (None: decided by geometry), and the heavy atoms' frac (N,3) and
    uiso (N,) Å² after its refinement cycles."""
    score: float
    counts: list[int] | None
    frac: np.ndarray
    uiso: np.ndarray


def swap_riding(data: DataSet, elements: list[str], frac: np.ndarray, uiso: np.ndarray,
                occ: np.ndarray, hydrogens: int | None, max_rounds: int = 6, cycles: int = 4,
                count_frac: np.ndarray | None = None, close: int = CLOSE_LABELLINGS,
                screen: int = SWAP_SCREEN, opts: LsqOptions = LsqOptions()
                ) -> tuple[list[str], list[dict], list[int] | None, list[tuple]]:
    """Greedy C/N/O (Si/P/S/Cl, ...) element swaps of a heavy-atom model, each variant with
    its own riding H: the swap that most lowers R1 + CHEM_WEIGHT × chemistry score is
    kept, until none helps; each round starts from the positions the kept swap's cycles
    left (frac, uiso: heavy atoms), with the current labels judged again there. With
    count_frac (N,3) the current labels and the
    COUNT_SHORTLIST best variants of each round (judged first with their likeliest H
    counts) are tried with their COUNT_CHOICES likeliest H counts in that geometry
    (`hydrogens.h_count_choices`; + COUNT_WEIGHT × their penalty) and judged by the best: a 2 Å
    candidate is too rough to tell an NH from a CH₂ by geometry, and H counts decided on
    it alone made a wrong C/N swap win (1100656). A round with more than `screen` variants
    judges them all as they stand (0 cycles) and refines only the `screen` best (NTD51a,
    31 atoms, ~250 variants a round: refine_record 93 s -> 34 s, same labels; experiments/refine-
    near-truth 47/56 swaps put right either way). Returns (elements, swaps, the H counts
    chosen with them or None, runners-up): up to `close` labellings of the last round
    that scored within CLOSE_MARGIN of the chosen one, each (elements, counts, swaps), for
    the final refinement to decide (4-cycle scores that close are a coin toss: on a 2 Å
    diffusion solution of 2006609 the search swapped an O and a C at 0.0841 against 0.0848
    for keeping them, and only the full refinement prefers the right labels)."""
    cell, ops = data.cell, data.ops
    n = len(elements)
    occ = np.asarray(occ, float)

    def evaluate(variants: list[list[str]], at: Judged, choices: int = 1,
                 cycles: int = cycles) -> list[Judged]:
        """Each labelling refined from the positions of `at` with its riding H."""
        tries = []  # (variant index, penalty, counts)
        for v, els in enumerate(variants):
            if count_frac is None:
                tries.append((v, 0.0, None))
            else:
                tries += [(v, p, c) for p, c in
                          h_count_choices(cell, ops, els, count_frac, hydrogens, choices)]
        built = [_with_h(cell, ops, variants[v], at.frac, at.uiso, occ, None, hydrogens, c)
                 for v, _, c in tries]
        scores = [np.inf] * len(tries)
        moved = [(at.frac, at.uiso)] * len(tries)  # heavy-atom frac, uiso after the cycles
        by_n: dict[int, list[int]] = {}
        for t, b in enumerate(built):
            by_n.setdefault(len(b[0]), []).append(t)
        for idx in by_n.values():
            res = refine_batch(data, [built[t][0] for t in idx],
                               np.stack([built[t][1] for t in idx]), np.stack([built[t][2] for t in idx]),
                               np.stack([built[t][3] for t in idx]),
                               riding=np.stack([riders(n, built[t][5]) for t in idx]),
                               cycles=cycles, opts=opts)
            for t, r in zip(idx, res):
                v, penalty, _ = tries[t]
                scores[t] = (r.r1 + CHEM_WEIGHT * check(cell, ops, variants[v], r.frac[:n], hydrogens).score
                             + COUNT_WEIGHT * penalty)
                moved[t] = (r.frac[:n], r.uiso[:n])
        out = [Judged(np.inf, None, at.frac, at.uiso)] * len(variants)
        for t, (v, _, c) in enumerate(tries):
            if scores[t] < out[v].score:
                out[v] = Judged(scores[t], c, *moved[t])
        return out

    def judge(els, pairs, variants, at: Judged):
        # the current labels, from where the last kept swap's cycles left the atoms: the
        # score to beat (a 2 Å refinement with wrong labels pulls bonds to the wrong
        # lengths; judged from those positions, the right swap of 2006609 looked worse)
        now = evaluate([els], at, COUNT_CHOICES)[0]
        current = Judged(now.score, now.counts, at.frac, at.uiso)
        if not variants:
            return current, []
        if len(variants) > screen:  # the rest are judged as they stand (0 cycles) and dropped
            rough = np.argsort([sc.score for sc in evaluate(variants, at, cycles=0)], kind="stable")
            scores = [Judged(np.inf, None, at.frac, at.uiso)] * len(variants)
            for v, sc in zip(rough[:screen], evaluate([variants[v] for v in rough[:screen]], at)):
                scores[int(v)] = sc
        else:
            scores = evaluate(variants, at)
        if count_frac is not None:
            short = [int(v) for v in np.argsort([sc.score for sc in scores], kind="stable")[:COUNT_SHORTLIST]]
            for v, sc in zip(short, evaluate([variants[v] for v in short], at, COUNT_CHOICES)):
                scores[v] = min(scores[v], sc, key=lambda t: t.score)
        return current, [Verdict(current.score - sc.score, sc) for sc in scores]

    def swap(pair: tuple[int, int], before: list[str], score: float) -> dict:
        i, j = pair
        return {"i": i, "j": j, "from": [before[i], before[j]], "objective": round(float(score), 5),
                "riding_h": True}

    start = Judged(np.inf, None, np.asarray(frac, float), np.asarray(uiso, float))
    els, best, rounds = greedy_swaps(elements, judge, start, max_rounds)
    swaps = [swap(pair, before, v.state.score) for pair, before, v in swaps_made(rounds)]
    runners = []
    if rounds:  # the last round's labellings, each with the swaps that lead to it
        last = rounds[-1]
        before = swaps_made(rounds[:-1])
        done = [swap(pair, b, v.state.score) for pair, b, v in before]
        runners = sorted(((v.state.score, e, v.state.counts, done + [swap(p, last.elements, v.state.score)])
                          for p, e, v in zip(last.pairs, last.variants, last.verdicts)
                          if e != els and v.state.score < best.score + CLOSE_MARGIN), key=lambda t: t[0])
    return els, swaps, best.counts, [(e, c, sw) for _, e, c, sw in runners[:close]]
