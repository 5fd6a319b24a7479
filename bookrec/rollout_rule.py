"""The rollout's decision rule: promote, roll back or extend, from a rollout's online figures.

Pure functions over the figures ``bookrec.rollout.figures`` reads (no I/O, no Prefect).

**Breach (checked at every check interval, decides at once).** The candidate's variants
(``canary``, and the interleaved requests, which the candidate helps to answer) are pooled
and compared with the ``champion`` variant. Once they have ``min_requests`` requests:

- error rate above ``max_error_rate`` (default 2%) *and* above the champion's by more than
  ``max_error_excess`` (default 1 percentage point): rollback;
- p95 latency above ``max_p95_ms`` (default 1,000 ms) *and* above ``max_p95_ratio``
  (default 2x) the champion's p95: rollback.

Both conditions must hold, so a machine that is slow or failing for every variant does not
blame the candidate.

**Decision (at the end of the baking period and of each extension: a "look").**

- *Interleaving*: each interleaved reader's credits go to team 0 (champion) and team 1
  (candidate). A reader with at least one credit is informative; their preference is
  ``team1 - team0``. The statistic is the mean preference over informative readers, with
  a percentile bootstrap interval (readers resampled with replacement; the pairing of a
  reader's two credits is kept). The candidate is *better* if the interval's lower end is
  above 0, *worse* if its upper end is below 0.
- *Canary*: each reader's hit rate (hits / impressions) in the canary arm against the
  champion arm (readers who saw the champion alone); the difference of the arms' means
  with a bootstrap interval resampling each arm's readers (unpaired: different readers).
- An arm is judged only with ``min_readers`` exposed readers (each side) and, for
  interleaving, ``min_informative`` readers with a credit; before that it is *unclear*.
- Several looks at the same data inflate the error rate, so the interval's level is
  ``1 - alpha / looks`` with ``looks = 1 + max_extensions`` (Bonferroni): a short test does
  not decide on noise, and the family-wise error stays <= ``alpha`` (default 5%).
- Outcome: any arm *worse* -> **rollback**; at least one arm *better* and none worse ->
  **promote**; otherwise **extend** (another ``extend_minutes``), and after
  ``max_extensions`` extensions -> **rollback** ("not shown better": the champion stays,
  the candidate is marked rejected; a human can still promote it by hand).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

PROMOTE = "promote"
ROLLBACK = "rollback"
EXTEND = "extend"
BETTER, WORSE, UNCLEAR = "better", "worse", "unclear"

CHAMPION = "champion"
CANARY = "canary"
INTERLEAVE = "interleave"
INTERLEAVE_CHAMPION = "interleave_champion"
INTERLEAVE_CANDIDATE = "interleave_candidate"
# Variants whose requests the candidate (helps to) answer, for the error and latency checks.
CANDIDATE_VARIANTS = (CANARY, INTERLEAVE, INTERLEAVE_CANDIDATE)


class RuleConfigError(ValueError):
    """A rule parameter or a rollout spec is invalid; the message names it."""


@dataclass(frozen=True)
class RuleConfig:
    """Every threshold of the rule (the rollout flow's parameters of the same names)."""

    alpha: float = 0.05
    min_readers: int = 200
    min_informative: int = 30
    max_extensions: int = 2
    bootstrap: int = 2000
    seed: int = 0
    min_requests: int = 200
    max_error_rate: float = 0.02
    max_error_excess: float = 0.01
    max_p95_ms: float = 1000.0
    max_p95_ratio: float = 2.0

    def __post_init__(self) -> None:
        """Refuse values that make the rule meaningless."""
        if not 0.0 < self.alpha < 1.0:
            raise RuleConfigError(f"alpha must be in (0, 1), got {self.alpha}")
        for name in ("min_readers", "min_informative", "max_extensions", "min_requests"):
            if getattr(self, name) < 0:
                raise RuleConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.bootstrap < 100:
            raise RuleConfigError(f"bootstrap must be >= 100 replicates, got {self.bootstrap}")
        for name in ("max_error_rate", "max_error_excess", "max_p95_ms", "max_p95_ratio"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise RuleConfigError(f"{name} must be finite and >= 0, got {value}")

    @property
    def looks(self) -> int:
        """How many times the rule may decide: the bake and each extension."""
        return 1 + self.max_extensions

    @property
    def level(self) -> float:
        """Confidence level of each look's interval (Bonferroni over the looks)."""
        return 1.0 - self.alpha / self.looks

    def to_json(self) -> dict[str, Any]:
        """Plain dict (the audit row's thresholds, the artifact)."""
        return {**asdict(self), "looks": self.looks, "level": self.level}

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The parameter names."""
        return tuple(f.name for f in fields(cls))


@dataclass(frozen=True)
class ArmResult:
    """One arm's test: its statistic, interval and verdict (better, worse, unclear)."""

    arm: str  # interleave | canary
    verdict: str
    estimate: float | None
    low: float | None
    high: float | None
    readers: int  # exposed readers (the candidate's side)
    informative: int  # readers with a credit (interleave) / champion-arm readers (canary)
    detail: str

    def to_json(self) -> dict[str, Any]:
        """Plain dict."""
        return asdict(self)


@dataclass(frozen=True)
class Verdict:
    """What the rule says now: the outcome, why, and each arm's test."""

    decision: str  # promote | rollback | extend
    reason: str
    breach: bool = False
    arms: tuple[ArmResult, ...] = ()
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """Plain dict (the flow's result, the artifact, ``bookrec rollout --status``)."""
        return {"decision": self.decision, "reason": self.reason, "breach": self.breach,
                "arms": [a.to_json() for a in self.arms], "details": self.details}


# ---- statistics ---------------------------------------------------------------------------


def _interval(boots: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(boots, [tail, 1.0 - tail])
    return float(low), float(high)


def bootstrap_mean(values: np.ndarray, *, n_boot: int, level: float, seed: int
                   ) -> tuple[float, float, float]:
    """Mean of ``values`` and its percentile bootstrap interval (resampling the values)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        raise ValueError("no values to bootstrap")
    rng = np.random.default_rng(seed)
    boots = np.empty(n_boot)
    chunk = max(1, 2_000_000 // values.size)  # bounded memory: at most ~2M draws at once
    for start in range(0, n_boot, chunk):
        n = min(chunk, n_boot - start)
        boots[start:start + n] = values[rng.integers(0, values.size, (n, values.size))].mean(1)
    return (float(values.mean()), *_interval(boots, level))


def bootstrap_difference(a: np.ndarray, b: np.ndarray, *, n_boot: int, level: float, seed: int
                         ) -> tuple[float, float, float]:
    """mean(a) - mean(b) for two independent samples, with a bootstrap interval that
    resamples each sample on its own."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.size == 0 or b.size == 0:
        raise ValueError("both samples need values")
    rng = np.random.default_rng(seed)
    boots = np.empty(n_boot)
    chunk = max(1, 2_000_000 // max(a.size, b.size))
    for start in range(0, n_boot, chunk):
        n = min(chunk, n_boot - start)
        boots[start:start + n] = (a[rng.integers(0, a.size, (n, a.size))].mean(1)
                                  - b[rng.integers(0, b.size, (n, b.size))].mean(1))
    return (float(a.mean() - b.mean()), *_interval(boots, level))


def _verdict(low: float, high: float) -> str:
    if low > 0:
        return BETTER
    if high < 0:
        return WORSE
    return UNCLEAR


def interleave_test(team0: Any, team1: Any, cfg: RuleConfig, *, exposed: int | None = None
                    ) -> ArmResult:
    """The interleaving arm: per-reader credits to the champion (``team0``) and the
    candidate (``team1``), one entry per interleaved reader (zeros allowed)."""
    t0, t1 = np.asarray(team0, dtype=np.float64), np.asarray(team1, dtype=np.float64)
    if t0.shape != t1.shape:
        raise ValueError(f"team credit arrays differ in length: {t0.shape} vs {t1.shape}")
    readers = int(exposed if exposed is not None else t0.size)
    informative = (t0 + t1) > 0
    pref = (t1 - t0)[informative]
    wins, losses = int((pref > 0).sum()), int((pref < 0).sum())
    n = int(informative.sum())
    counts = (f"{readers} interleaved readers, {n} with a credit (candidate preferred by "
              f"{wins}, champion by {losses}, {n - wins - losses} ties; credits "
              f"{t1.sum():.0f} vs {t0.sum():.0f})")
    if readers < cfg.min_readers or n < max(1, cfg.min_informative):
        return ArmResult(INTERLEAVE, UNCLEAR, float(pref.mean()) if n else None, None, None,
                         readers, n, f"{counts}; needs {cfg.min_readers} readers and "
                         f"{cfg.min_informative} with a credit")
    est, low, high = bootstrap_mean(pref, n_boot=cfg.bootstrap, level=cfg.level, seed=cfg.seed)
    verdict = _verdict(low, high)
    return ArmResult(INTERLEAVE, verdict, est, low, high, readers, n,
                     f"{counts}; mean preference for the candidate {est:+.4f} credits/reader, "
                     f"{cfg.level:.2%} interval [{low:+.4f}, {high:+.4f}]: {verdict}")


def _rates(impressions: Any, hits: Any) -> np.ndarray:
    imp, hit = np.asarray(impressions, dtype=np.float64), np.asarray(hits, dtype=np.float64)
    if imp.shape != hit.shape:
        raise ValueError(f"impressions and hits differ in length: {imp.shape} vs {hit.shape}")
    shown = imp > 0
    return hit[shown] / imp[shown]


def canary_test(canary_impressions: Any, canary_hits: Any, champion_impressions: Any,
                champion_hits: Any, cfg: RuleConfig) -> ArmResult:
    """The canary arm: per-reader hit rate of canary readers against champion readers."""
    cand = _rates(canary_impressions, canary_hits)
    champ = _rates(champion_impressions, champion_hits)
    counts = (f"{cand.size} canary readers (hit rate {cand.mean() if cand.size else 0:.4f}) "
              f"vs {champ.size} champion readers ({champ.mean() if champ.size else 0:.4f})")
    if cand.size < cfg.min_readers or champ.size < cfg.min_readers:
        est = float(cand.mean() - champ.mean()) if cand.size and champ.size else None
        return ArmResult(CANARY, UNCLEAR, est, None, None, int(cand.size), int(champ.size),
                         f"{counts}; needs {cfg.min_readers} readers in each arm")
    est, low, high = bootstrap_difference(cand, champ, n_boot=cfg.bootstrap, level=cfg.level,
                                          seed=cfg.seed + 1)
    verdict = _verdict(low, high)
    return ArmResult(CANARY, verdict, est, low, high, int(cand.size), int(champ.size),
                     f"{counts}; difference {est:+.4f}, {cfg.level:.2%} interval "
                     f"[{low:+.4f}, {high:+.4f}]: {verdict}")


# ---- reading the figures ------------------------------------------------------------------


def _variants(figures: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per-variant summary rows, whether under ``variants`` or at the top level."""
    found = figures.get("variants")
    if isinstance(found, dict):
        return {k: v for k, v in found.items() if isinstance(v, dict)}
    names = (CHAMPION, CANARY, INTERLEAVE, INTERLEAVE_CHAMPION, INTERLEAVE_CANDIDATE)
    return {k: figures[k] for k in names if isinstance(figures.get(k), dict)}


def _num(row: dict[str, Any] | None, key: str) -> float | None:
    value = (row or {}).get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _pooled(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    """Requests, errors, error rate and the largest p95 of several variants."""
    requests = sum(_num(r, "requests") or 0 for r in rows)
    errors = sum(_num(r, "errors") or 0 for r in rows)
    p95s = [p for p in (_num(r, "p95_ms") for r in rows if _num(r, "requests")) if p is not None]
    return {"requests": requests, "errors": errors,
            "error_rate": errors / requests if requests else None,
            "p95_ms": max(p95s) if p95s else None}


def candidate_load(figures: dict[str, Any]) -> dict[str, float | None]:
    """The candidate's pooled request figures (every variant it answers or co-answers)."""
    variants = _variants(figures)
    rows = [variants[v] for v in CANDIDATE_VARIANTS if v in variants]
    if INTERLEAVE in variants and INTERLEAVE_CANDIDATE in variants:
        # one interleaved request is one request, however it is split in the figures
        rows = [variants[v] for v in (CANARY, INTERLEAVE) if v in variants]
    return _pooled(rows)


def check_breach(figures: dict[str, Any], cfg: RuleConfig) -> Verdict | None:
    """A rollback verdict if the candidate breaches the error or latency limits, else None."""
    cand = candidate_load(figures)
    champ = _pooled([_variants(figures).get(CHAMPION) or {}])
    if (cand["requests"] or 0) < max(1, cfg.min_requests):
        return None
    reasons = []
    rate, base = cand["error_rate"] or 0.0, champ["error_rate"] or 0.0
    if rate > cfg.max_error_rate and rate > base + cfg.max_error_excess:
        reasons.append(
            f"candidate error rate {rate:.2%} ({cand['errors']:.0f} of {cand['requests']:.0f} "
            f"requests) is above {cfg.max_error_rate:.2%} and the champion's {base:.2%} + "
            f"{cfg.max_error_excess * 100:.1f} pp"
        )
    p95, base_p95 = cand["p95_ms"], champ["p95_ms"]
    if p95 is not None and p95 > cfg.max_p95_ms and (
        base_p95 is None or p95 > cfg.max_p95_ratio * base_p95
    ):
        reasons.append(
            f"candidate p95 latency {p95:.0f} ms is above {cfg.max_p95_ms:.0f} ms and "
            f"{cfg.max_p95_ratio:g}x the champion's "
            + (f"{base_p95:.0f} ms" if base_p95 is not None else "(no champion requests)")
        )
    if not reasons:
        return None
    return Verdict(ROLLBACK, "breach: " + "; ".join(reasons), breach=True,
                   details={"candidate": cand, "champion": champ})


def _arrays(figures: dict[str, Any], *names: str) -> dict[str, list[float]] | None:
    """Per-reader arrays under ``figures["readers"][...]`` or ``figures[...]``, if present."""
    for container in (figures.get("readers"), figures.get("per_reader"), figures):
        if not isinstance(container, dict):
            continue
        for name in names:
            value = container.get(name)
            if isinstance(value, dict):
                return value
    return None


def interleave_arrays(figures: dict[str, Any]) -> tuple[list[float], list[float]] | None:
    """(team0, team1) per interleaved reader, or None when the figures have no such arm."""
    found = _arrays(figures, INTERLEAVE, "interleaving")
    if not found:
        return None
    t0 = found.get("team0", found.get("champion"))
    t1 = found.get("team1", found.get("candidate"))
    if t0 is None or t1 is None:
        return None
    return list(t0), list(t1)


def canary_arrays(figures: dict[str, Any]
                  ) -> tuple[list[float], list[float], list[float], list[float]] | None:
    """(canary impressions, canary hits, champion impressions, champion hits) per reader."""
    found = _arrays(figures, CANARY)
    if not found:
        return None
    cand = found.get(CANARY) if isinstance(found.get(CANARY), dict) else found
    champ = found.get(CHAMPION) if isinstance(found.get(CHAMPION), dict) else None
    if champ is None:
        champ = _arrays(figures, CHAMPION) or {}
    try:
        return (list(cand["impressions"]), list(cand["hits"]),
                list(champ["impressions"]), list(champ["hits"]))
    except (KeyError, TypeError):
        return None


def judge(figures: dict[str, Any], cfg: RuleConfig, *, look: int, interleave: float,
          canary: float) -> Verdict:
    """The rule at look number ``look`` (1: the end of the bake; 2..: extensions).

    ``interleave`` and ``canary`` are the rollout's shares: an arm with a zero share is not
    judged. A breach decides first.
    """
    breach = check_breach(figures, cfg)
    if breach is not None:
        return breach
    arms: list[ArmResult] = []
    if interleave > 0:
        found = interleave_arrays(figures)
        t0, t1 = found if found else ([], [])
        arms.append(interleave_test(t0, t1, cfg))
    if canary > 0:
        found = canary_arrays(figures)
        arms.append(canary_test(*(found or ([], [], [], [])), cfg))
    details = {"look": look, "looks": cfg.looks, "level": cfg.level}
    worse = [a for a in arms if a.verdict == WORSE]
    better = [a for a in arms if a.verdict == BETTER]
    said = "; ".join(f"{a.arm}: {a.detail}" for a in arms) or "no arm to judge"
    if worse:
        return Verdict(ROLLBACK, f"candidate is worse ({said})", arms=tuple(arms),
                       details=details)
    if better:
        return Verdict(PROMOTE, f"candidate is better ({said})", arms=tuple(arms),
                       details=details)
    if look <= cfg.max_extensions:
        return Verdict(EXTEND, f"not decided at look {look} of {cfg.looks} ({said})",
                       arms=tuple(arms), details=details)
    return Verdict(ROLLBACK, f"not shown better after {cfg.max_extensions} extension(s): the "
                   f"champion stays ({said})", arms=tuple(arms), details=details)


# ---- the gate's "roll out" setting --------------------------------------------------------

SPEC_KEYS = {"interleave": float, "canary": float, "bake_minutes": float,
             "check_every_s": float, "max_extensions": int, "extend_minutes": float}


def parse_spec(text: str | None) -> dict[str, Any] | None:
    """A rollout spec such as ``"interleave=0.5,canary=0.1,bake_minutes=20"`` (the
    ``BOOKREC_ROLLOUT_DEFAULT`` setting, ``bookrec promote --rollout``) as flow parameters.

    Empty, "off", "none" or "0" mean no rollout (None). "on" means the flow's defaults.
    """
    if text is None:
        return None
    text = text.strip()
    if text.lower() in ("", "off", "none", "no", "false", "0"):
        return None
    if text.lower() in ("on", "yes", "true", "1", "default"):
        return {}
    out: dict[str, Any] = {}
    for part in text.split(","):
        name, sep, raw = part.strip().partition("=")
        name = name.strip().replace("-", "_")
        if not sep or name not in SPEC_KEYS:
            raise RuleConfigError(
                f"rollout spec {part.strip()!r}: expected NAME=VALUE with NAME one of "
                f"{', '.join(SPEC_KEYS)}")
        try:
            value = SPEC_KEYS[name](raw.strip())
        except ValueError:
            raise RuleConfigError(f"rollout spec {name}: {raw.strip()!r} is not a number") from None
        out[name] = value
    check_shares(out.get("interleave", 0.5), out.get("canary", 0.0))
    return out


def check_shares(interleave: float, canary: float) -> None:
    """Shares of readers must be in [0, 1], add up to < 1 (the champion keeps some), and
    at least one must be positive."""
    for name, value in (("interleave", interleave), ("canary", canary)):
        if not (isinstance(value, int | float) and 0.0 <= value <= 1.0):
            raise RuleConfigError(f"{name} share must be in [0, 1], got {value!r}")
    if interleave + canary <= 0:
        raise RuleConfigError("a rollout needs an interleave or canary share above 0")
    if canary > 0 and interleave + canary >= 1.0:
        raise RuleConfigError("interleave + canary must leave champion-only readers (< 1) "
                              "for the canary comparison")
    if interleave + canary > 1.0:
        raise RuleConfigError("interleave + canary shares add up to more than 1")
