"""Predict over whole archives: ``cxrdistill predict PATH... --out FILE.csv|.jsonl`` with the app's models.

Inputs are files, folders (searched recursively for X-ray files) or list files (``.txt``: one path per line).
DataLoader workers decode; the main process runs :meth:`Predictor.predict` on each film, the same call the app
makes, and :func:`prediction_row` only copies its results: the family's answer (model, probability, state), each
model's probabilities, state and finding calls, the TB boxes (original-image pixels, inside the lungs) and whether
the lungs were found; or ``status=error`` and the reason for a file that cannot be read (never a crash).
Rows are flushed every few films, so a killed run loses at most those, and ``--resume`` skips the paths already
in the output.

Under ``accelerate launch`` (or torchrun) each process takes every ``WORLD_SIZE``-th input and writes a part file;
the first process then merges the parts, in input order, into the output.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from cxrdistill.inference import Predictor, read_for_prediction
from cxrdistill.io import ReadLimits, XRayReadError
from cxrdistill.results import Prediction

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".tif", ".tiff", ".bmp", ".webp")
LIST_SUFFIXES = (".txt", ".lst")


def collect_inputs(paths: Iterable[str | os.PathLike]) -> list[str]:
    """Files as given, folders searched recursively (sorted), list files expanded; duplicates dropped.

    A path that does not exist is kept: it becomes an error row, so the output accounts for every input.
    """
    found: list[str] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found += sorted(str(p) for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.suffix.lower() in LIST_SUFFIXES and path.is_file():
            base = path.parent
            for line in path.read_text().splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    found.append(str(Path(line) if Path(line).is_absolute() else base / line))
        else:
            found.append(str(path))
    return list(dict.fromkeys(found))


class XRayFiles(Dataset):
    """Files decoded as :meth:`Predictor.read` decodes an upload (:func:`read_for_prediction`): ``{"index",
    "path", "xray", "error"}``; a file that cannot be read gives ``error`` (the reason) and no ``xray``."""

    def __init__(self, paths: Sequence[str], limits: ReadLimits) -> None:
        self.paths, self.limits = list(paths), limits

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.paths[index]
        item: dict[str, Any] = {"index": index, "path": path, "xray": None, "error": None}
        try:
            return {**item, "xray": read_for_prediction(path, self.limits)}
        except XRayReadError as error:
            return {**item, "error": str(error)}
        except OSError as error:  # missing file, permission denied: the reason without the traceback
            return {**item, "error": f"cannot open the file ({error.strerror or type(error).__name__})"}


def _keep_list(items: list[dict]) -> list[dict]:
    return items


@dataclass
class Columns:
    """The output's columns, fixed by the predictor's models: the family's answer first, then each model's
    probabilities, state and finding calls (named as in ``Prediction.to_dict``: ``student-28``, ``teacher-224``,
    ``tb-28``), the TB boxes and whether the lungs were found."""

    predictor: Predictor
    resolution: int

    def models(self) -> dict[str, Any]:
        """name -> model of every model a row reports, in the order :meth:`Predictor.predict` runs them."""
        predictor = self.predictor
        chosen = [("student", predictor.students[self.resolution]), ("teacher", predictor.teacher)]
        chosen += [("tb", predictor.tb_model), (None, predictor.classifiers[predictor.answer_name])]
        return {predictor.name_of(role or predictor.role_of(model), model): model for role, model in chosen if model}

    def names(self) -> list[str]:
        names = ["path", "status", "error", "height", "width", *ANSWER_COLUMNS]
        for name, model in self.models().items():
            config = model.config
            names += [f"{name}_p_{label}" for label in config.global_labels] + [f"{name}_state"]
            for label in config.local_labels:
                names += [f"{name}_p_{label}", f"{name}_call_{label}"]
        if self.predictor.tb_model is not None:
            names.append("tb_boxes")
        if self.predictor.lung_model is not None:
            names.append("lungs_found")
        return names


ANSWER_COLUMNS = (
    "answer_model",
    "answer_label",
    "answer_probability",
    "answer_state",
    "answer_rule_out",
    "answer_rule_in",
)


def prediction_row(path: str, prediction: Prediction) -> dict[str, Any]:
    """One output row from a :class:`Prediction`: every value is read from ``prediction.to_dict()``, the same
    dict the app and the API show, so a row cannot answer differently from them."""
    result = prediction.to_dict()
    height, width = result["image"]["original_size"]
    answer = result["answer"]
    row: dict[str, Any] = {"path": path, "status": "ok", "error": "", "height": height, "width": width}
    row.update(
        {f"answer_{key}": answer[key] for key in ("model", "label", "probability", "state", "rule_out", "rule_in")}
    )
    for model in prediction.results:
        name = model.name
        for label, p in model.global_probs.items():
            row[f"{name}_p_{label}"] = round(p, 6)
        row[f"{name}_state"] = model.decision.state
        for label, p in model.local_probs.items():
            row[f"{name}_p_{label}"] = round(p, 6)
            row[f"{name}_call_{label}"] = model.local_calls[label]
    if prediction.tb is not None:
        row["tb_boxes"] = json.dumps([b["box"] + [b["score"]] for b in result["tb"]["boxes"]])
    if result["lungs"] is not None:
        row["lungs_found"] = result["lungs"]["found"]
    return row


def predict_files(
    paths: Sequence[str],
    predictor: Predictor,
    out: str | os.PathLike,
    options: BatchOptions | None = None,
) -> dict[str, Any]:
    """Write one row per path to ``out`` (``.csv`` or ``.jsonl``) from ``predictor.predict``; returns counts
    and timings.

    Raises:
        FileExistsError: ``out`` exists and ``options.resume`` is false.
        ValueError: ``out`` is not a .csv / .jsonl file, or the predictor has no student of that resolution.
    """
    options = options or BatchOptions()
    out = Path(out)
    resolution = options.resolution or predictor.resolutions[0]
    if resolution not in predictor.students:
        raise ValueError(f"no student for {resolution} px; available: {predictor.resolutions}")
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    columns = Columns(predictor, resolution)
    if out.suffix.lower() not in (".csv", ".jsonl"):
        raise ValueError(f"--out must end in .csv or .jsonl, got {out.name!r}")
    if out.exists() and not options.resume:
        raise FileExistsError(f"{out} exists; pass --resume to continue it or choose another file")
    done = {row["path"] for row in read_rows(out)} if options.resume and out.exists() else set()
    target = out if world == 1 else out.with_name(f"{out.name}.part{rank}-of-{world}")
    if world > 1 and options.resume and target.exists():
        done |= {row["path"] for row in read_rows(target)}
    mine = [p for i, p in enumerate(paths) if i % world == rank and p not in done]
    stats = _predict_into(target, mine, columns, options, progress=options.progress and rank == 0)
    stats["skipped_already_done"] = len([p for i, p in enumerate(paths) if i % world == rank]) - len(mine)
    stats.update(process=rank, processes=world)
    if world > 1:
        _merge_parts(out, paths, world, rank, columns)
    return stats


@dataclass(frozen=True)
class BatchOptions:
    """How :func:`predict_files` runs: the student's input size (default: the smallest), DataLoader workers that
    decode files, whether to continue an existing output, and a progress bar."""

    resolution: int | None = None
    num_workers: int = 0
    resume: bool = False
    progress: bool = True


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a CSV / JSONL output; a line cut short by a crash is dropped."""
    if not path.exists():
        return []
    if path.suffix.lower() == ".csv" or ".csv.part" in path.name:
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        # DictReader fills a short (cut) row with None and keys a long one's extras with None
        return [r for r in rows if None not in r and None not in r.values() and r.get("status") in ("ok", "error")]
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def _predict_into(target: Path, paths, columns: Columns, options: BatchOptions, progress: bool) -> dict[str, Any]:
    predictor = columns.predictor
    loader = DataLoader(
        XRayFiles(paths, predictor.limits),
        batch_size=8,  # decoded films handed over a few at a time; the models run film by film
        num_workers=options.num_workers,
        collate_fn=_keep_list,
    )
    existing = read_rows(target)
    csv_format = target.suffix.lower() == ".csv" or ".csv.part" in target.name
    # Rewrite what is there without a half-written last line, then append as films are done.
    _write_rows(target, existing, columns, csv_format, mode="w")
    counts = {"ok": 0, "error": 0}
    model_s = 0.0
    started = time.perf_counter()
    with tqdm(total=len(paths), desc="predict", unit="img", disable=not progress) as bar:
        for items in loader:
            rows = []
            for item in items:
                if item["error"] is not None:
                    rows.append({"path": item["path"], "status": "error", "error": item["error"]})
                    continue
                t0 = time.perf_counter()
                prediction = predictor.predict(item["xray"], resolution=columns.resolution)
                model_s += time.perf_counter() - t0
                rows.append(prediction_row(item["path"], prediction))
            _write_rows(target, rows, columns, csv_format, mode="a")
            for row in rows:
                counts[row["status"]] += 1
            bar.update(len(items))
    wall = time.perf_counter() - started
    return {
        **counts,
        "images": len(paths),
        "wall_s": round(wall, 3),
        "images_per_s": round(len(paths) / wall, 2) if wall > 0 else None,
        "model_s": round(model_s, 3),
    }


def _write_rows(path: Path, rows: list[dict], columns: Columns, csv_format: bool, mode: str) -> None:
    names = columns.names()
    with path.open(mode, newline="") as handle:
        if csv_format:
            writer = csv.DictWriter(handle, fieldnames=names, extrasaction="raise")
            if mode == "w":
                writer.writeheader()
            for row in rows:
                writer.writerow({k: _csv_value(row.get(k)) for k in names})
        else:
            for row in rows:
                handle.write(json.dumps({k: _json_value(k, row.get(k)) for k in names}) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def _csv_value(value):
    return "" if value is None else value


def _json_value(key: str, value):
    if key == "tb_boxes" and isinstance(value, str):
        return json.loads(value)  # a list in JSONL, a JSON string in CSV
    if isinstance(value, np.generic):
        return value.item()
    return value


def _merge_parts(out: Path, paths: Sequence[str], world: int, rank: int, columns: Columns) -> None:
    """Wait for every process, then let rank 0 write ``out`` from the parts (and an earlier ``out``)."""
    import torch.distributed as dist

    initialised_here = False
    if not dist.is_initialized():
        dist.init_process_group("gloo")
        initialised_here = True
    try:
        dist.barrier()
        if rank == 0:
            rows = {row["path"]: row for row in read_rows(out)}
            parts = [out.with_name(f"{out.name}.part{r}-of-{world}") for r in range(world)]
            for part in parts:
                rows.update({row["path"]: row for row in read_rows(part)})
            ordered = [rows[p] for p in paths if p in rows]
            temporary = out.with_name(f".{out.name}.merging")
            _write_rows(temporary, ordered, columns, out.suffix.lower() == ".csv", mode="w")
            os.replace(temporary, out)
            for part in parts:
                part.unlink(missing_ok=True)
        dist.barrier()
    finally:
        if initialised_here:
            dist.destroy_process_group()
