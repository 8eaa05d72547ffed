"""The ``cxrdistill`` command.

``cxrdistill inspect FILE`` (or ``--example``) reads an X-ray as the models will see it and prints what it found:
format, modality, view, size, bit depth, spacing, intensity statistics and a small text preview.
``cxrdistill push MODEL_DIR REPO_ID`` and ``cxrdistill pull REPO_ID`` move models through the Hugging Face Hub.
``cxrdistill evaluate --model SRC --dataset NAME --root DIR`` measures a model (and can calibrate its thresholds).
``cxrdistill predict PATH... --model SRC --out FILE`` runs a model over files, folders or lists (CSV / JSONL).
``cxrdistill export MODEL --out DIR [--int8]`` writes ONNX models for ONNX Runtime.
``cxrdistill space-push REPO_ID`` deploys the demo app with the released models as a Hugging Face Space.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cxrdistill.io import ReadLimits, XRayReadError, load_xray

# Dark to bright: lungs should come out as spaces and dots, bone and mediastinum as dense characters.
_RAMP = " .:-=+*#%@"


def text_preview(pixels: np.ndarray, width: int = 48) -> str:
    """A ``width``-column character picture of ``pixels`` (terminal cells are about twice as tall as wide)."""
    height = max(1, round(pixels.shape[0] / pixels.shape[1] * width / 2))
    low, high = float(pixels.min()), float(pixels.max())
    pixels = (pixels - low) / (high - low) if high > low else np.zeros_like(pixels)  # stretch for the terminal
    rows = np.array_split(np.arange(pixels.shape[0]), height)
    columns = np.array_split(np.arange(pixels.shape[1]), width)
    lines = []
    for row in rows:
        band = pixels[row[0] : row[-1] + 1]
        means = [band[:, col[0] : col[-1] + 1].mean() for col in columns]
        lines.append("".join(_RAMP[min(len(_RAMP) - 1, int(m * len(_RAMP)))] for m in means))
    return "\n".join(lines)


def _inspect(args: argparse.Namespace) -> int:
    if args.example:
        from cxrdistill.examples import EXAMPLES, example_path

        path = example_path(args.example)
        print(f"example {args.example!r}: {EXAMPLES[args.example][2]}")
    elif args.path:
        path = args.path
    else:
        print("cxrdistill inspect: give a FILE or --example", file=sys.stderr)
        return 2
    try:
        xray = load_xray(path, limits=ReadLimits(max_file_bytes=args.max_mib * 2**20))
    except XRayReadError as error:
        print(f"cannot read {path}: {error}", file=sys.stderr)
        return 1
    pixels = xray.pixels
    report = {
        "file": str(path),
        **xray.meta.to_dict(),
        "pixels": {
            "shape": list(pixels.shape),
            "min": float(pixels.min()),
            "mean": float(pixels.mean()),
            "max": float(pixels.max()),
        },
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    for key, value in report.items():
        if key != "pixels" and value is not None:
            print(f"{key:>16}: {value}")
    stats = report["pixels"]
    print(
        f"{'pixels':>16}: {stats['shape'][0]} x {stats['shape'][1]} float32 in [0, 1], "
        f"mean {stats['mean']:.3f} (min {stats['min']:.3f}, max {stats['max']:.3f})"
    )
    print(text_preview(pixels))
    return 0


def _push(args: argparse.Namespace) -> int:
    from cxrdistill.hub import push_folder
    from cxrdistill.models import ModelLoadError

    try:
        commit = push_folder(args.model_dir, args.repo_id, branch=args.revision, tag=args.tag, private=args.private)
    except ModelLoadError as error:
        print(f"cannot push: {error}", file=sys.stderr)
        return 1
    print(f"pushed {args.model_dir} to {args.repo_id} (commit {commit}" + (f", tag {args.tag})" if args.tag else ")"))
    return 0


def _space_push(args: argparse.Namespace) -> int:
    from cxrdistill.hub import push_space
    from cxrdistill.models import ModelLoadError

    try:
        commit = push_space(args.repo_id, args.root, model_repos=args.model_repo, private=args.private)
    except (FileNotFoundError, ValueError, ModelLoadError) as error:
        print(f"cannot push the Space: {error}", file=sys.stderr)
        return 1
    print(f"pushed the Space {args.repo_id} (commit {commit})")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from cxrdistill.batch import BatchOptions, collect_inputs, predict_files
    from cxrdistill.inference import ModelChoice, load_predictor
    from cxrdistill.models import ModelLoadError

    if args.threads:
        torch_threads(args.threads)
    try:
        predictor = load_predictor(
            ModelChoice(
                args.student, args.teacher, args.tb_model, args.revision, args.models_dir, args.family, args.answer
            )
        )
    except (ModelLoadError, FileNotFoundError, ValueError) as error:
        print(f"cannot load the models: {error}", file=sys.stderr)
        return 1
    paths = collect_inputs(args.paths)
    if not paths:
        print("no input files found", file=sys.stderr)
        return 2
    options = BatchOptions(args.resolution, args.workers, args.resume, not args.quiet)
    try:
        stats = predict_files(paths, predictor, args.out, options)
    except (FileExistsError, ValueError) as error:
        print(f"cxrdistill predict: {error}", file=sys.stderr)
        return 2
    print(json.dumps(stats), file=sys.stderr)
    return 0


def torch_threads(count: int) -> None:
    import torch

    torch.set_num_threads(count)


def _export(args: argparse.Namespace) -> int:
    from cxrdistill.export import copy_card, export_onnx
    from cxrdistill.models import ModelLoadError, load_model

    try:
        model = load_model(args.model, revision=args.revision)
    except ModelLoadError as error:
        print(f"cannot load the model: {error}", file=sys.stderr)
        return 1
    files = export_onnx(model, args.out, int8=args.int8)
    copy_card(args.model, args.out)
    for path in files:
        print(path)
    return 0


def _pull(args: argparse.Namespace) -> int:
    from cxrdistill.hub import pull
    from cxrdistill.models import ModelLoadError, load_model

    try:
        folder = pull(args.repo_id, revision=args.revision, local_dir=args.local_dir)
    except ModelLoadError as error:
        print(f"cannot pull: {error}", file=sys.stderr)
        return 1
    model = load_model(folder)
    config = model.config
    print(
        f"{args.repo_id}: {type(model).__name__}, {config.image_size} px, global {list(config.global_labels)}, "
        f"local {list(config.local_labels)}"
    )
    print(folder)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    import dataclasses

    from cxrdistill.evaluation import (
        EvalData,
        calibrate_thresholds,
        classification_metrics,
        load_dataset,
        predict_dataset,
        to_jsonable,
    )
    from cxrdistill.localisation import localisation_json, localisation_metrics, map_sanity, sanity_json
    from cxrdistill.models import ModelLoadError, load_model

    try:
        model = load_model(args.model, revision=args.revision)
    except ModelLoadError as error:
        print(f"cannot load the model: {error}", file=sys.stderr)
        return 1
    if args.map_target is not None:
        if not hasattr(model.config, "map_target"):
            print(f"--map-target applies to CNNs; {type(model).__name__} has no map target", file=sys.stderr)
            return 2
        model.config = dataclasses.replace(model.config, map_target=args.map_target)
    data = EvalData(args.dataset, args.root, args.split, args.part, args.val_fraction, args.split_seed, args.lung_crop)
    if model.config.input_crop == "lungs" and not args.lung_crop:
        print("this model reads films cropped to their lungs: pass --lung-crop LUNG_MODEL", file=sys.stderr)
        return 2
    if args.lung_crop and args.part == "all":
        print("--lung-crop crops the films of our split: use --part val or train", file=sys.stderr)
        return 2
    dataset = load_dataset(data)
    config = model.config
    problem = _evaluation_problem(args, data, dataset, config)
    if problem:
        print(problem[1], file=sys.stderr)
        return problem[0]
    predictions = predict_dataset(
        model,
        dataset,
        batch_size=args.batch_size,
        cache_dir=args.cache_dir,
        localise=True,
        map_methods=args.map_methods,
        **_localisation_inputs(args, data, model),
    )
    global_thresholds, local_thresholds = config.global_thresholds, config.local_thresholds
    if args.calibrate_to:
        global_thresholds, local_thresholds = calibrate_thresholds(predictions)
    metrics = classification_metrics(
        predictions,
        config.global_labels,
        config.local_labels,
        bootstrap=args.bootstrap,
        global_thresholds=global_thresholds,
        local_thresholds=local_thresholds,
    )
    report = {
        "model": str(args.model),
        "revision": args.revision,
        "data": dataclasses.asdict(data),
        **metrics,
        "localisation": localisation_json(localisation_metrics(predictions["localisation"], bootstrap=args.bootstrap)),
        "map_sanity": sanity_json(map_sanity(predictions, model.positive_index)),
    }
    text = json.dumps(to_jsonable(report), indent=2)
    if args.json:
        Path(args.json).write_text(text + "\n")
    print(text)
    if args.calibrate_to:
        model.config = dataclasses.replace(
            config, global_thresholds=global_thresholds, local_thresholds=local_thresholds
        )
        model.save_pretrained(args.calibrate_to)
        print(f"saved the model with calibrated thresholds to {args.calibrate_to}", file=sys.stderr)
    return 0


def _evaluation_problem(args: argparse.Namespace, data, dataset, config) -> tuple[int, str] | None:
    """``(exit code, message)`` where ``evaluate``'s options cannot work together, else ``None``."""
    if tuple(dataset.global_space.names) != tuple(config.global_labels):
        return 1, (
            f"the model's global labels {list(config.global_labels)} are not the dataset's "
            f"{list(dataset.global_space.names)}"
        )
    if args.task == "tb-localisation":
        if args.dataset != "tbx11k":
            return 2, "--task tb-localisation needs --dataset tbx11k (the radiologists' TB boxes)"
        args.location_prior = True
    if args.location_prior and data.part != "val":
        return 2, "--location-prior needs --part val: the prior is built from the training side"
    if args.contrast_normal and data.part != "val":
        return 2, "--contrast-normal needs --part val: the normal map is built from the training side"
    return None


def _localisation_inputs(args: argparse.Namespace, data, model) -> dict:
    """``predict_dataset``'s prior, lung model and normal-film maps as ``evaluate``'s options ask."""
    from cxrdistill.evaluation import load_train_val, mean_negative_maps
    from cxrdistill.localisation import location_prior
    from cxrdistill.models import load_model

    train = load_train_val(data)[0] if (args.location_prior or args.contrast_normal) else None
    return {
        "prior": location_prior(train) if args.location_prior else None,
        "lung_model": load_model(args.lung_model, revision=args.revision) if args.lung_model else None,
        "normal_maps": mean_negative_maps(model, train, cache_dir=args.cache_dir) if args.contrast_normal else None,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cxrdistill", description="Chest X-ray AI at low resolution.")
    commands = parser.add_subparsers(dest="command", required=True)
    for add in (_add_inspect, _add_push, _add_predict, _add_export, _add_space_push, _add_pull, _add_evaluate):
        add(commands)
    return parser


def _add_inspect(commands) -> None:
    """``cxrdistill inspect``: read an X-ray and describe it."""
    inspect = commands.add_parser("inspect", help="read an X-ray (PNG/JPG/TIFF/BMP/WebP/DICOM) and describe it")
    inspect.add_argument("path", nargs="?", help="the X-ray file")
    inspect.add_argument("--example", nargs="?", const="chest-cr", help="use a bundled example instead of a file")
    inspect.add_argument("--json", action="store_true", help="print JSON instead of text")
    inspect.add_argument("--max-mib", type=int, default=64, help="largest file accepted, in MiB (default 64)")
    inspect.set_defaults(handler=_inspect)


def _add_push(commands) -> None:
    """``cxrdistill push``: publish a saved model folder."""
    push = commands.add_parser("push", help="publish a saved model folder to the Hugging Face Hub")
    push.add_argument("model_dir", help="folder written by save_pretrained (config.json, model.safetensors, README.md)")
    push.add_argument("repo_id", help="e.g. org/cxr-student-28")
    push.add_argument("--revision", help="branch to commit to (created if needed; default main)")
    push.add_argument("--tag", help="tag the new commit, e.g. v1.0")
    push.add_argument("--private", action="store_true", help="create the repo as private")
    push.set_defaults(handler=_push)


def _add_predict(commands) -> None:
    """``cxrdistill predict``: the app's models over many films, one row each."""
    predict = commands.add_parser("predict", help="predict over files, folders or list files into a CSV / JSONL")
    predict.add_argument("paths", nargs="+", help="X-ray files, folders (searched recursively) or .txt path lists")
    predict.add_argument(
        "--models-dir", default="models", help="folder of released models (default: models), as the app loads them"
    )
    predict.add_argument(
        "--family", default="tbx11k", help="release family to load from --models-dir (tbx11k or nih1024)"
    )
    predict.add_argument(
        "--student", action="append", help="a student (folder or Hub repo id) instead of a release; repeatable"
    )
    predict.add_argument("--teacher", help="the teacher (replaces the release's)")
    predict.add_argument("--tb-model", help="the CNN whose class activation map gives TB boxes")
    predict.add_argument("--answer", help="the model that answers (default: the family's, or picked by its rule)")
    predict.add_argument("--resolution", type=int, help="the student's input size (default: the smallest)")
    predict.add_argument("--revision", help="Hub revision of the models")
    predict.add_argument("--out", required=True, help="output .csv or .jsonl (one row per input)")
    predict.add_argument("--resume", action="store_true", help="skip inputs already in --out and append")
    predict.add_argument("--workers", type=int, default=2, help="DataLoader processes decoding files (default 2)")
    predict.add_argument("--threads", type=int, help="torch threads for the models")
    predict.add_argument("--quiet", action="store_true", help="no progress bar")
    predict.set_defaults(handler=_predict)


def _add_export(commands) -> None:
    """``cxrdistill export``: ONNX (and int8) graphs of a model."""
    export = commands.add_parser("export", help="export a model to ONNX (and int8) for ONNX Runtime")
    export.add_argument("model", help="model folder or Hub repo id")
    export.add_argument("--revision", help="Hub tag, branch or commit of the model")
    export.add_argument("--out", required=True, help="folder for model.onnx, model.int8.onnx and config.json")
    export.add_argument("--int8", action="store_true", help="also write a dynamically quantised int8 model")
    export.set_defaults(handler=_export)


def _add_space_push(commands) -> None:
    """``cxrdistill space-push``: deploy the demo as a Space."""
    space = commands.add_parser("space-push", help="deploy the demo app (app.py + models) as a Hugging Face Space")
    space.add_argument("repo_id", help="e.g. org/cxrdistill-demo")
    space.add_argument("--root", default=".", help="the cxrdistill checkout to deploy (default: here)")
    space.add_argument(
        "--model-repo", action="append", help="Hub repo of a bundled model, listed in the Space's header (repeat)"
    )
    space.add_argument("--private", action="store_true", help="create the Space as private")
    space.set_defaults(handler=_space_push)


def _add_pull(commands) -> None:
    """``cxrdistill pull``: download a model and check that it loads."""
    pull = commands.add_parser("pull", help="download a model from the Hub and check that it loads")
    pull.add_argument("repo_id", help="Hub repo id, e.g. org/cxr-student-28")
    pull.add_argument("--revision", help="tag, branch or commit (default main)")
    pull.add_argument("--local-dir", help="copy the files here instead of only into the Hub cache")
    pull.set_defaults(handler=_pull)


def _add_evaluate(commands) -> None:
    """``cxrdistill evaluate``: AUROCs, operating points and map localisation on a dataset."""
    from cxrdistill.data.registry import DATASETS
    from cxrdistill.explain import GRADIENT_MAP_METHODS  # light (NumPy, SciPy); grad-cam itself loads on use

    evaluate = commands.add_parser("evaluate", help="AUROC (with bootstrap CIs) and operating points on a dataset")
    evaluate.add_argument("--model", required=True, help="model folder or Hub repo id")
    evaluate.add_argument(
        "--task",
        choices=["classification", "tb-localisation"],
        default="classification",
        help="tb-localisation: also score the location prior beside the model (TBX11K boxes); every run reports "
        "AUROCs, operating points (all and same-hospital images) and heatmap localisation where there are boxes",
    )
    evaluate.add_argument("--revision", help="Hub tag, branch or commit")
    evaluate.add_argument(
        "--dataset", required=True, choices=sorted(DATASETS), help="which registered dataset --root holds"
    )
    evaluate.add_argument(
        "--root",
        required=True,
        help="the dataset: " + "; ".join(f"{name}: {entry.root_hint}" for name, entry in sorted(DATASETS.items())),
    )
    evaluate.add_argument("--split", help="official split (TBX11K: all_train, ...; NIH: train/valid)")
    evaluate.add_argument(
        "--part",
        default="val",
        choices=["all", "train", "val"],
        help="which side of the training scripts' split (default val; 'all' for the whole split)",
    )
    evaluate.add_argument(
        "--val-fraction", type=float, default=0.25, help="validation share of the training scripts' split (0.25)"
    )
    evaluate.add_argument("--split-seed", type=int, default=0, help="seed of the training scripts' split (0)")
    evaluate.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for 95%% CIs (0: none)")
    evaluate.add_argument("--batch-size", type=int, default=64, help="images per model call (default 64)")
    evaluate.add_argument("--cache-dir", help="tensor cache folder (default ~/.cache/cxrdistill)")
    evaluate.add_argument("--json", help="also write the report here")
    evaluate.add_argument(
        "--calibrate-to",
        help="choose per-label thresholds (Youden's J) on these images and save the model with them to this folder",
    )
    evaluate.add_argument(
        "--map-methods",
        nargs="+",
        default=[],
        choices=sorted(GRADIENT_MAP_METHODS),
        help="also score these Grad-CAM-family maps of the positive class (grad-cam library; 'finer': the stage one "
        "reduction before the last, 'multiscale': both fused)",
    )
    evaluate.add_argument(
        "--lung-model",
        help="a LungSegmenter (folder or Hub repo id): also score its lung mask alone (no model) and every heatmap "
        "and the prior kept inside the lungs",
    )
    evaluate.add_argument(
        "--map-target",
        choices=("class", "log-odds"),
        help="a CNN's first map: the positive class's activation map, or its log-odds map (what a box-supervised "
        "model's box loss trains); default: the model's own config",
    )
    evaluate.add_argument(
        "--lung-crop",
        help="a LungSegmenter (folder or Hub repo id): crop every film to the box around its lungs before resizing, "
        "as a model trained with --lung-crop saw them; its maps and boxes are then over the crops",
    )
    evaluate.add_argument(
        "--location-prior",
        action="store_true",
        help="also score the mean training box mask "
        "(no model) as a heatmap: the baseline every localisation table reports",
    )
    evaluate.add_argument(
        "--contrast-normal",
        action="store_true",
        help="also score each map minus its mean over the training split's normal films (kept above 0)",
    )
    evaluate.set_defaults(handler=_evaluate)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
