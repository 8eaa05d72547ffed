"""Predict over whole archives: ``cxrdistill predict PATH... --model SRC [--tb-model SRC] --out FILE.csv|.jsonl``.

Inputs are files, folders (searched recursively for X-ray files) or list files (``.txt``: one path per line).
DataLoader workers decode; the main process runs the models in batches. Every input gets one row: probabilities
and calls at the model's calibrated thresholds, TB probability and boxes (original-image pixels) with a TB model,
or ``status=error`` and the reason for a file that cannot be read (never a crash). Rows are flushed batch by batch,
so a killed run loses at most one batch and ``--resume`` skips the paths already in the output.

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
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from cxrdistill.data.transforms import model_input
from cxrdistill.inference import BASE_SIZE, calls, display_boxes, display_image, grid_to_display
from cxrdistill.io import ReadLimits, XRayReadError, load_xray

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
    """Decoded, model-ready views of files: ``{"path", "views": {size: (1, size, size)}, "shape", "original",
    "error"}``; a file that cannot be read gives ``error`` (the reason) and no views."""

    def __init__(self, paths: Sequence[str], sizes: Sequence[int], limits: ReadLimits | None = None) -> None:
        self.paths, self.sizes, self.limits = list(paths), sorted(set(sizes)), limits or ReadLimits()

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.paths[index]
        item: dict[str, Any] = {"index": index, "path": path, "views": None, "shape": None, "original": None}
        started = time.perf_counter()
        try:
            xray = load_xray(path, limits=self.limits)
        except XRayReadError as error:
            return {**item, "error": str(error), "decode_s": time.perf_counter() - started}
        except OSError as error:  # missing file, permission denied: the reason without the traceback
            return {**item, "error": f"cannot open the file ({error.strerror or type(error).__name__})"}
        display = display_image(xray.pixels)
        views = {size: model_input(display, size, BASE_SIZE)[0] for size in self.sizes}
        return {
            **item,
            "views": views,
            "shape": display.shape,
            "original": xray.meta.original_size,
            "error": None,
            "decode_s": time.perf_counter() - started,
        }


def _keep_list(items: list[dict]) -> list[dict]:
    return items


@dataclass
class Columns:
    """The output's columns, fixed by the models' label spaces."""

    student: Any
    tb_model: Any | None

    def names(self) -> list[str]:
        config = self.student.config
        names = ["path", "status", "error", "height", "width"]
        for label in (*config.global_labels, *config.local_labels):
            names += [f"p_{label}", f"call_{label}"]
        if self.tb_model is not None:
            names += ["tb_probability", "tb_call", "tb_boxes"]
        return names


def predict_files(
    paths: Sequence[str],
    student,
    out: str | os.PathLike,
    tb_model=None,
    batch_size: int = 32,
    num_workers: int = 0,
    resume: bool = False,
    progress: bool = True,
    limits: ReadLimits | None = None,
) -> dict[str, Any]:
    """Write one row per path to ``out`` (``.csv`` or ``.jsonl``); returns counts and timings.

    Raises:
        FileExistsError: ``out`` exists and ``resume`` is false.
    """
    out = Path(out)
    if tb_model is not None and getattr(tb_model, "explains_with", None) != "cam":
        raise ValueError(f"the TB model must be a CNN with class activation maps, got {type(tb_model).__name__}")
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    columns = Columns(student, tb_model)
    if out.suffix.lower() not in (".csv", ".jsonl"):
        raise ValueError(f"--out must end in .csv or .jsonl, got {out.name!r}")
    if out.exists() and not resume:
        raise FileExistsError(f"{out} exists; pass --resume to continue it or choose another file")
    done = {row["path"] for row in read_rows(out)} if resume and out.exists() else set()
    target = out if world == 1 else out.with_name(f"{out.name}.part{rank}-of-{world}")
    if world > 1 and resume and target.exists():
        done |= {row["path"] for row in read_rows(target)}
    mine = [p for i, p in enumerate(paths) if i % world == rank and p not in done]
    stats = _predict_into(target, mine, columns, batch_size, num_workers, progress and rank == 0, limits)
    stats["skipped_already_done"] = len([p for i, p in enumerate(paths) if i % world == rank]) - len(mine)
    stats.update(process=rank, processes=world)
    if world > 1:
        _merge_parts(out, paths, world, rank, columns)
    return stats


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


def _predict_into(target, paths, columns, batch_size, num_workers, progress, limits) -> dict[str, Any]:
    student, tb_model = columns.student, columns.tb_model
    sizes = [student.config.image_size] + ([tb_model.config.image_size] if tb_model is not None else [])
    loader = DataLoader(
        XRayFiles(paths, sizes, limits),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=_keep_list,
    )
    existing = read_rows(target)
    csv_format = target.suffix.lower() == ".csv" or ".csv.part" in target.name
    # Rewrite what is there without a half-written last line, then append batch by batch.
    _write_rows(target, existing, columns, csv_format, mode="w")
    counts = {"ok": 0, "error": 0}
    model_s = decode_s = 0.0
    started = time.perf_counter()
    with tqdm(total=len(paths), desc="predict", unit="img", disable=not progress) as bar:
        for items in loader:
            good = [item for item in items if item["error"] is None]
            t0 = time.perf_counter()
            rows = {item["index"]: _error_row(item) for item in items if item["error"] is not None}
            if good:
                rows.update(_model_rows(good, student, tb_model))
            model_s += time.perf_counter() - t0
            decode_s += sum(item.get("decode_s", 0.0) for item in items)
            ordered = [rows[item["index"]] for item in items]
            _write_rows(target, ordered, columns, csv_format, mode="a")
            for row in ordered:
                counts[row["status"]] += 1
            bar.update(len(items))
    wall = time.perf_counter() - started
    return {
        **counts,
        "images": len(paths),
        "wall_s": round(wall, 3),
        "images_per_s": round(len(paths) / wall, 2) if wall > 0 else None,
        "model_s": round(model_s, 3),
        "decode_s": round(decode_s, 3),
    }


def _error_row(item: dict) -> dict[str, Any]:
    return {"path": item["path"], "status": "error", "error": item["error"]}


@torch.inference_mode()
def _model_rows(items: list[dict], student, tb_model) -> dict[int, dict[str, Any]]:
    config = student.config
    views = torch.stack([item["views"][config.image_size] for item in items])
    output = student(views)
    global_probs = output.global_logits.float().softmax(-1).numpy()
    local_probs = output.local_logits.float().sigmoid().numpy()
    tb = None
    if tb_model is not None:
        tb_views = torch.stack([item["views"][tb_model.config.image_size] for item in items])
        tb = tb_model.forward_for_maps(tb_views)
    rows = {}
    for k, item in enumerate(items):
        height, width = item["original"]
        row: dict[str, Any] = {"path": item["path"], "status": "ok", "error": "", "height": height, "width": width}
        for labels, probs, thresholds in (
            (config.global_labels, global_probs[k], config.global_thresholds),
            (config.local_labels, local_probs[k], config.local_thresholds),
        ):
            decided = calls(labels, probs.tolist(), thresholds)
            for label, p in zip(labels, probs.tolist(), strict=True):
                row[f"p_{label}"] = round(p, 6)
                row[f"call_{label}"] = decided[label]
        if tb is not None:
            tb_config = tb_model.config
            positive = tb_model.positive_index
            p_tb = float(tb.global_logits[k].float().softmax(-1)[positive])
            threshold = tb_config.global_thresholds[positive] if tb_config.global_thresholds is not None else None
            cam = next(iter(tb_model.explanation_maps(tb).values()))[k]
            heatmap = grid_to_display(cam, tb_config.image_size, item["shape"]).numpy()
            scale = height / item["shape"][0]
            boxes = display_boxes(heatmap, tb_config, scale)
            row["tb_probability"] = round(p_tb, 6)
            row["tb_call"] = None if threshold is None else bool(p_tb >= threshold)
            row["tb_boxes"] = json.dumps([[round(v, 1) for v in b.box] + [round(b.score, 4)] for b in boxes])
        rows[item["index"]] = row
    return rows


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
