"""Retraining: cohort → fixed validation split → train → evaluate against the served model → gate → registry.

One run (``retrain(...)``), whether from ``ich-node retrain`` or the scheduler:

1. takes the retrain lock (``<data_dir>/retrain/retrain.lock``; a second run is refused, never queued),
2. splits the cohort by a salted hash of the patient: a patient is in validation forever, whatever else
   is added later, so neither the served model nor a candidate ever trained on a validation patient,
3. refuses clearly when there are too few cases or expanders (in training or in validation),
4. trains each requested kind with its default protocol (``Trainer.fit``), evaluates the candidate and
   the currently served version on the same validation cases (``Trainer.evaluate``),
5. adds the candidate to the registry (always: it can be inspected and force-promoted later) and promotes
   it only when the gate passes (``promote="auto"``), never (``"never"``) or regardless (``"force"``),
6. writes ``report.json`` + ``report.md`` in the run directory and ``evaluation.json`` in the version,
   and keeps ``<data_dir>/retrain/status.json`` current for ``ich-node status``.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import fcntl
import hashlib
import json
import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Literal, Protocol, Sequence

from .registry import Registry, atomic_write_text, now_iso

log = logging.getLogger(__name__)

PromoteMode = Literal["auto", "never", "force"]
SPLIT_SALT = "ich-node-validation-v1"


class RetrainRefused(RuntimeError):
    """The data cannot support a trustworthy retrain (too few cases or expanders, no masks...)."""


class RetrainBusy(RuntimeError):
    """Another retraining holds the lock."""


# ---------------------------------------------------------------------------------------- policy


@dataclass(frozen=True)
class DataPolicy:
    """How much data a retrain needs, and how validation is kept apart."""

    val_fraction: float = 0.25
    min_train_cases: int = 40
    min_train_expanders: int = 8      # classifier only
    min_val_cases: int = 12
    min_val_expanders: int = 3        # classifier only: AUC needs both classes
    split_salt: str = SPLIT_SALT

    def __post_init__(self) -> None:
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")


@dataclass(frozen=True)
class GatePolicy:
    """How much worse than the served model a candidate may be and still be promoted automatically."""

    auc_margin: float = 0.02              # classifier: new AUC >= current AUC - margin
    brier_margin: float = 0.01            # classifier: new Brier <= current Brier + margin
    dice_margin: float = 0.02             # segmenter: new median Dice >= current - margin
    volume_error_margin_ml: float = 0.5   # segmenter: new mean |volume error| <= current + margin
    # classifier: the candidate's AUC must clear chance on the validation cases with 95 % confidence
    # (DeLong lower bound). "Not worse than served" alone passes a useless model whenever a small
    # validation share flatters it (site_adaptation: AUC 1.00 on 4 validation cases, 0.42 held out).
    auc_ci_low_min: float = 0.5


# metric, direction (+1 higher is better), margin attribute
GATE_METRICS: dict[str, tuple[tuple[str, int, str], ...]] = {
    "classifier": (("auc", +1, "auc_margin"), ("brier", -1, "brier_margin")),
    "segmenter": (("median_dice", +1, "dice_margin"), ("volume_mae_ml", -1, "volume_error_margin_ml")),
}


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    reasons: list[str]


def gate(kind: str, new: dict, current: dict | None, policy: GatePolicy = GatePolicy()) -> GateDecision:
    """Not worse than ``current`` beyond the margins, on every gate metric of ``kind``."""
    reasons, passed = [], True
    for metric, sign, margin_name in GATE_METRICS[kind]:
        margin = getattr(policy, margin_name)
        value = new.get(metric)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return GateDecision(False, [f"candidate has no {metric} on the validation set"])
        ref = None if current is None else current.get(metric)
        if ref is None or (isinstance(ref, float) and math.isnan(ref)):
            reasons.append(f"{metric} {value:.4f} (no served model to compare with)")
            continue
        ok = value >= ref - margin if sign > 0 else value <= ref + margin
        passed &= ok
        op = "≥" if sign > 0 else "≤"
        bound = ref - margin if sign > 0 else ref + margin
        reasons.append(f"{metric} {value:.4f} {'passes' if ok else 'FAILS'}: needs {op} {bound:.4f} "
                       f"(served {ref:.4f} {'-' if sign > 0 else '+'} margin {margin})")
    if kind == "classifier":
        low = (new.get("auc_ci95") or [None])[0]
        ok = low is not None and math.isfinite(low) and low > policy.auc_ci_low_min
        passed &= ok
        shown = f"{low:.4f}" if low is not None and math.isfinite(low) else "unknown"
        reasons.append(f"auc 95 % CI lower bound {shown} {'passes' if ok else 'FAILS'}: needs > "
                       f"{policy.auc_ci_low_min} (better than chance on {new.get('cases', '?')} validation cases)")
    return GateDecision(passed, reasons)


# ------------------------------------------------------------------------------------ the cohort


def read_manifest(cohort_dir: Path) -> list[dict]:
    path = Path(cohort_dir) / "manifest.csv"
    if not path.is_file():
        raise RetrainRefused(f"{cohort_dir} is not a cohort: manifest.csv missing")
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    for col in ("case_id", "baseline_dir", "expansion"):
        if rows and col not in rows[0]:
            raise RetrainRefused(f"{path} has no {col!r} column")
    return rows


def in_validation(patient_key: str, fraction: float, salt: str = SPLIT_SALT) -> bool:
    """Fixed membership: depends only on the patient and the salt, not on the rest of the data."""
    h = int.from_bytes(hashlib.sha256(f"{salt}\x00{patient_key}".encode()).digest()[:8], "big")
    return h / 2**64 < fraction


def label_of(row: dict) -> int:
    value = str(row.get("expansion", "")).strip().lower()
    if value in ("1", "true", "yes"):
        return 1
    if value in ("0", "false", "no"):
        return 0
    raise RetrainRefused(f"case {row.get('case_id')!r}: expansion {row.get('expansion')!r} is not 0/1")


@dataclass(frozen=True)
class CohortSplit:
    train_dir: Path
    val_dir: Path
    train_cases: int
    val_cases: int
    train_expanders: int
    val_expanders: int
    fingerprint: str           # of the training rows (goes into the model's training_data)

    def summary(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}


def split_cohort(cohort_dir: Path, out_dir: Path, policy: DataPolicy = DataPolicy()) -> CohortSplit:
    """Write ``out_dir/train`` and ``out_dir/validation`` manifests (absolute paths) from a cohort."""
    cohort_dir = Path(cohort_dir).resolve()
    rows = read_manifest(cohort_dir)
    path_cols = [c for c in (rows[0] if rows else {}) if c.endswith(("_dir", "_mask"))]
    parts: dict[str, list[dict]] = {"train": [], "validation": []}
    for row in rows:
        row = dict(row)
        for c in path_cols:
            if row.get(c):
                row[c] = str((cohort_dir / row[c]).resolve())
        row["source_cohort"] = str(cohort_dir)
        key = row.get("patient_id") or row["case_id"]
        parts["validation" if in_validation(key, policy.val_fraction, policy.split_salt) else "train"].append(row)
    for name, part in parts.items():
        d = Path(out_dir) / name
        d.mkdir(parents=True, exist_ok=True)
        with open(d / "manifest.csv", "w", newline="") as fh:
            cols = [c for c in (rows[0] if rows else {"case_id": ""}) if c != "source_cohort"] + ["source_cohort"]
            w = csv.DictWriter(fh, fieldnames=cols)
            w.writeheader()
            w.writerows(part)
    canon = "\n".join(json.dumps({k: v for k, v in r.items() if k != "source_cohort"}, sort_keys=True)
                      for r in sorted(parts["train"], key=lambda r: r["case_id"]))
    return CohortSplit(
        Path(out_dir) / "train", Path(out_dir) / "validation", len(parts["train"]), len(parts["validation"]),
        sum(label_of(r) for r in parts["train"]), sum(label_of(r) for r in parts["validation"]),
        hashlib.sha256(canon.encode()).hexdigest(),
    )


def check_data(kind: str, split: CohortSplit, policy: DataPolicy) -> None:
    """Refuse, with the numbers, when the split cannot train or judge a ``kind`` model."""
    from training.classifier import CV_MIN_PER_CLASS

    problems = []
    if split.train_cases < policy.min_train_cases:
        problems.append(f"{split.train_cases} training cases (need ≥ {policy.min_train_cases})")
    if split.val_cases < policy.min_val_cases:
        problems.append(f"{split.val_cases} validation cases (need ≥ {policy.min_val_cases})")
    if kind == "classifier":
        if split.train_expanders < policy.min_train_expanders:
            problems.append(f"{split.train_expanders} expanders in training (need ≥ {policy.min_train_expanders})")
        elif split.train_expanders < CV_MIN_PER_CLASS:  # a floor set below what the protocol can fit
            problems.append(f"{split.train_expanders} expanders in training (the protocol's nested 2-fold CV "
                            f"needs ≥ {CV_MIN_PER_CLASS} of each class)")
        if split.train_cases - split.train_expanders < CV_MIN_PER_CLASS:
            problems.append(f"{split.train_cases - split.train_expanders} non-expanders in training (the protocol's "
                            f"nested 2-fold CV needs ≥ {CV_MIN_PER_CLASS} of each class)")
        if split.val_expanders < policy.min_val_expanders:
            problems.append(f"{split.val_expanders} expanders in validation (need ≥ {policy.min_val_expanders})")
        if split.val_cases - split.val_expanders < 1:
            problems.append("no non-expander in validation")
    if kind == "segmenter":
        rows = read_manifest(split.train_dir) + read_manifest(split.val_dir)
        without = sum(1 for r in rows if not r.get("baseline_mask") or r.get("mask_source") == "model1")
        if without:
            problems.append(f"{without} case(s) have no reference mask (node-collected and imported cases carry "
                            f"model 1's own masks, not ground truth; retrain the segmenter from a DIR with "
                            f"reference masks or --source synthetic)")
    if problems:
        raise RetrainRefused(f"not retraining the {kind}: " + "; ".join(problems))


# ----------------------------------------------------------------------------------- the trainers


class Trainer(Protocol):
    """What retraining needs from a model family: the default protocol, and a judge."""

    kind: str

    def fit(self, train_dir: Path, out_dir: Path, *, parent_version: str | None) -> Path:
        """Train on the cohort in ``train_dir``; write a model directory (``metadata.json``) into ``out_dir``."""
        ...

    def evaluate(self, model_dir: Path | None, val_dir: Path, out_dir: Path) -> dict:
        """Gate metrics (see ``GATE_METRICS``) of ``model_dir`` on the cohort in ``val_dir``; plots etc. to ``out_dir``."""
        ...


# ------------------------------------------------------------------------------ lock and status


def retrain_dir(data_dir: Path | str) -> Path:
    return Path(data_dir) / "retrain"


def read_status(data_dir: Path | str) -> dict:
    """What ``ich-node status`` shows: state of the last/current retrain, schedule, last outcome."""
    path = retrain_dir(data_dir) / "status.json"
    try:
        status = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {"state": "never run"}
    if status.get("state") == "running" and not _pid_alive(status.get("pid")):
        status["state"] = "interrupted"
    return status


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_status(data_dir: Path | str, **fields) -> dict:
    status = {**read_status(data_dir), **fields, "updated": now_iso()}
    atomic_write_text(retrain_dir(data_dir) / "status.json", json.dumps(status, indent=2, sort_keys=True) + "\n")
    return status


@contextlib.contextmanager
def retrain_lock(data_dir: Path | str) -> Iterator[None]:
    """Never two retrains at once (also across processes); released by the OS if the process dies."""
    d = retrain_dir(data_dir)
    d.mkdir(parents=True, exist_ok=True)
    fh = open(d / "retrain.lock", "a+")
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            st = read_status(data_dir)
            raise RetrainBusy(f"a retraining is already running (pid {st.get('pid', '?')}, "
                              f"started {st.get('started', '?')}); not starting another") from None
        yield
    finally:
        fh.close()


# ------------------------------------------------------------------------------------- the run


@dataclass
class KindOutcome:
    kind: str
    served_version: str | None
    candidate_version: str | None = None
    promoted: bool = False
    gate: GateDecision | None = None
    candidate_metrics: dict = field(default_factory=dict)
    served_metrics: dict | None = None
    refused: str | None = None
    seconds: dict = field(default_factory=dict)


@dataclass
class RetrainReport:
    run_dir: Path
    source: str
    promote: str
    split: CohortSplit | None
    outcomes: list[KindOutcome]
    started: str
    finished: str | None = None

    def to_dict(self) -> dict:
        out = asdict(self)
        out["run_dir"] = str(self.run_dir)
        out["split"] = self.split.summary() if self.split else None
        return json.loads(json.dumps(out, default=str))


def retrain(
    *,
    registry: Registry,
    data_dir: Path | str,
    cohort: Path | str | Callable[[Path], Path],
    trainers: Sequence[Trainer],
    source: str,
    promote: PromoteMode = "auto",
    data_policy: DataPolicy = DataPolicy(),
    gate_policy: GatePolicy = GatePolicy(),
    trigger: str = "cli",
    progress: Callable[[str], None] = lambda _m: None,
) -> RetrainReport:
    """One retraining run (see the module docstring). Raises ``RetrainBusy``; refusals are in the report.

    ``cohort`` is a cohort directory, or a function building one inside the run directory (under the lock).

    A kind refused for lack of data does not stop the others; if every kind is refused the run raises
    ``RetrainRefused`` after writing the report, so the CLI exits non-zero with the reason.
    """
    if promote not in ("auto", "never", "force"):
        raise ValueError(f"promote must be auto, never or force, got {promote!r}")
    with retrain_lock(data_dir):
        started = now_iso()
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
        run_dir = retrain_dir(data_dir) / "runs" / f"{stamp}-{os.getpid()}"
        run_dir.mkdir(parents=True, exist_ok=True)
        write_status(data_dir, state="running", pid=os.getpid(), started=started, finished=None, trigger=trigger,
                     source=source, kinds=[t.kind for t in trainers], run_dir=str(run_dir), message=None)
        report = RetrainReport(run_dir, source, promote, None, [], started)
        try:
            cohort_dir = cohort(run_dir) if callable(cohort) else Path(cohort)
            report.split = split = split_cohort(cohort_dir, run_dir / "cohort", data_policy)
            progress(f"cohort: {split.train_cases} training cases ({split.train_expanders} expanders), "
                     f"{split.val_cases} validation ({split.val_expanders} expanders)")
            for trainer in trainers:
                report.outcomes.append(_retrain_kind(trainer, registry, split, source, promote, data_policy,
                                                     gate_policy, run_dir, progress))
        except BaseException as exc:
            report.finished = now_iso()
            _write_report(report)
            write_status(data_dir, state="failed", finished=report.finished, message=f"{type(exc).__name__}: {exc}")
            raise
        report.finished = now_iso()
        _write_report(report)
        refused = [o for o in report.outcomes if o.refused]
        summary = {o.kind: _outcome_line(o) for o in report.outcomes}
        state = "refused" if refused and len(refused) == len(report.outcomes) else "done"
        write_status(data_dir, state=state, finished=report.finished, last=summary,
                     message="; ".join(o.refused for o in refused) or None)
        if state == "refused":
            raise RetrainRefused("; ".join(o.refused for o in refused))
        return report


def _retrain_kind(trainer: Trainer, registry: Registry, split: CohortSplit, source: str, promote: PromoteMode,
                  data_policy: DataPolicy, gate_policy: GatePolicy, run_dir: Path,
                  progress: Callable[[str], None]) -> KindOutcome:
    kind = trainer.kind
    served = registry.promoted()[kind]
    outcome = KindOutcome(kind, served)
    try:
        check_data(kind, split, data_policy)
    except RetrainRefused as exc:
        outcome.refused = str(exc)
        progress(str(exc))
        return outcome
    if served and promote != "force":
        seen = (registry.get(kind, served).metadata.training_data or {}).get("fingerprint")
        if seen == split.fingerprint:
            outcome.refused = (f"not retraining the {kind}: the served version v{served} was trained on exactly "
                               f"these {split.train_cases} cases (no new data; --promote force retrains anyway)")
            progress(outcome.refused)
            return outcome
    staging = registry.staging_dir(kind)
    try:
        t0 = time.monotonic()
        progress(f"{kind}: training on {split.train_cases} cases (served version {served or 'none'})")
        trainer.fit(split.train_dir, staging, parent_version=served)
        t1 = time.monotonic()
        progress(f"{kind}: evaluating candidate and served version on {split.val_cases} validation cases")
        outcome.candidate_metrics = trainer.evaluate(staging, split.val_dir, run_dir / kind / "candidate")
        served_dir = registry.get(kind, served).path if served else None
        # No served classifier: nothing to beat. No served segmenter: the classical fallback is served.
        outcome.served_metrics = (trainer.evaluate(served_dir, split.val_dir, run_dir / kind / "served")
                                  if (served_dir or kind == "segmenter") else None)
        outcome.seconds = {"fit": round(t1 - t0, 1), "evaluate": round(time.monotonic() - t1, 1)}
        outcome.gate = gate(kind, outcome.candidate_metrics, outcome.served_metrics, gate_policy)
        evaluation = {"validation": {"cases": split.val_cases, "expanders": split.val_expanders,
                                     "manifest": str(split.val_dir / "manifest.csv")},
                      "candidate": outcome.candidate_metrics, "served": outcome.served_metrics,
                      "served_version": served, "gate": asdict(outcome.gate), "gate_policy": asdict(gate_policy),
                      "run_dir": str(run_dir)}
        atomic_write_text(staging / "evaluation.json", json.dumps(evaluation, indent=2, default=str) + "\n")
        version = registry.add(
            kind, staging, move=True, parent_version=served,
            training_data={"source": source, "fingerprint": split.fingerprint, "cases": split.train_cases,
                           "expanders": split.train_expanders},
            metrics={"validation": outcome.candidate_metrics},
            extra={"gate": {"passed": outcome.gate.passed, "reasons": outcome.gate.reasons}},
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    outcome.candidate_version = version.version
    if promote == "force" or (promote == "auto" and outcome.gate.passed):
        why = "forced" if promote == "force" else "gate passed"
        registry.promote(kind, version.version, reason=f"retrain ({why}): " + "; ".join(outcome.gate.reasons),
                         actor="retrain")
        outcome.promoted = True
    progress(f"{kind}: candidate version {version.version} "
             f"{'PROMOTED' if outcome.promoted else 'kept as candidate (not promoted)'}; "
             + "; ".join(outcome.gate.reasons))
    return outcome


def _outcome_line(o: KindOutcome) -> str:
    if o.refused:
        return f"refused: {o.refused}"
    state = "promoted" if o.promoted else ("gate refused" if o.gate and not o.gate.passed else "not promoted")
    return f"v{o.candidate_version} {state} (served before: {_v(o.served_version)})"


def _v(version: str | None) -> str:
    return f"v{version}" if version else "none"


def _write_report(report: RetrainReport) -> None:
    data = report.to_dict()
    atomic_write_text(report.run_dir / "report.json", json.dumps(data, indent=2) + "\n")
    lines = [f"# Retraining run {report.run_dir.name}", "",
             f"- source: {report.source}; promote: {report.promote}; started {report.started}, "
             f"finished {report.finished}"]
    if report.split:
        s = report.split
        lines.append(f"- training: {s.train_cases} cases ({s.train_expanders} expanders); fixed validation: "
                     f"{s.val_cases} cases ({s.val_expanders} expanders)")
    for o in report.outcomes:
        lines += ["", f"## {o.kind}", ""]
        if o.refused:
            lines.append(f"Refused: {o.refused}")
            continue
        lines.append(f"Candidate v{o.candidate_version} vs served {_v(o.served_version)}: "
                     f"{'promoted' if o.promoted else 'not promoted'}.")
        lines += ["", "| metric | candidate | served |", "|---|---|---|"]
        for metric in sorted(set(o.candidate_metrics) | set(o.served_metrics or {})):
            if isinstance(o.candidate_metrics.get(metric), dict) or metric == "skipped":
                continue
            lines.append(f"| {metric} | {_fmt(o.candidate_metrics.get(metric))} | "
                         f"{_fmt((o.served_metrics or {}).get(metric))} |")
        lines += [""] + [f"- {r}" for r in (o.gate.reasons if o.gate else [])]
    atomic_write_text(report.run_dir / "report.md", "\n".join(lines) + "\n")


def _fmt(v) -> str:
    if isinstance(v, list):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return f"{v:.4f}" if isinstance(v, float) else ("—" if v is None else str(v))


# ------------------------------------------------------------------------ sources and the schedule

SOURCES_HELP = "node (cases the node labelled or imported), a cohort DIR (manifest.csv), or synthetic"


def cohort_from_source(source: str, run_dir: Path, *, data_dir: Path, registry: Registry,
                       synthetic_cases: int = 200, seed: int = 0, synth_options=None,
                       progress: Callable[[str], None] = lambda _m: None) -> Path:
    """A cohort directory (``manifest.csv``) for ``source``; built inside the run (under the lock)."""
    if source == "node":
        from .dataset import DatasetStore

        store = DatasetStore.for_data_dir(data_dir)
        counts = store.counts()
        progress(f"node dataset: {counts['cases'] - counts['excluded']} included cases "
                 f"({counts['expanders']} expanders, {counts['excluded']} excluded)")
        segmenter = registry.current_paths().segmenter
        # A stable folder per served segmenter: its masks, and so the cached features, stay valid across runs.
        tag = registry.promoted()["segmenter"] or "classical"
        return store.export_cohort(retrain_dir(data_dir) / f"node-cohort-seg{tag}", segmenter_dir=segmenter,
                                   progress=progress)
    if source == "synthetic":
        from training import synth  # the synthetic-cohort generator (``ich-node synth``)

        out = run_dir / "source"
        progress(f"generating {synthetic_cases} synthetic cases (seed {seed})")
        synth.write_cohort(out, synthetic_cases, seed=seed, options=synth_options, workers=max(1, (os.cpu_count() or 2) // 2))
        return out
    path = Path(source)
    if not (path / "manifest.csv").is_file():
        raise RetrainRefused(f"--source {source!r}: not 'node' or 'synthetic', and no manifest.csv in that folder")
    return path


def scheduled_job(cron: str | None, *, config_path: str | None = None, data_dir: Path | str | None = None,
                  extra_args: Sequence[str] = ()) -> dict:
    """``{"retrain": (fn, CronTrigger)}`` for ``NodeScheduler(extra=...)``; ``{}`` when ``cron`` is None (off).

    The job runs ``ich-node retrain --source node --classifier --promote auto`` in a child process (the
    training libraries never load into the node), logs its outcome, and relies on the retrain lock so a
    run still going when the next one is due is refused, not stacked.
    """
    if not cron:
        return {}
    from apscheduler.triggers.cron import CronTrigger

    trigger = CronTrigger.from_crontab(cron)
    args = ["retrain", "--source", "node", "--classifier", "--promote", "auto", "--trigger", "schedule", *extra_args]
    if config_path:
        args += ["--config", str(config_path)]
    if data_dir:
        args += ["--data-dir", str(data_dir)]
        write_status(data_dir, schedule=cron)

    def run() -> int:
        return run_cli_child(args, data_dir)

    run.__name__ = "retrain"
    return {"retrain": (run, trigger)}


def run_cli_child(args: Sequence[str], data_dir: Path | str | None) -> int:
    import subprocess
    import sys

    log.info("scheduled retraining starting: ich-node %s", " ".join(args))
    cmd = [sys.executable, "-c", "from dicomnode.cli import main; main()", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-5:]
    if proc.returncode == 0:
        log.info("scheduled retraining finished: %s", " | ".join(tail))
    else:
        log.warning("scheduled retraining ended with exit code %d: %s", proc.returncode, " | ".join(tail))
    return proc.returncode
