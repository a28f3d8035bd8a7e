"""The report step of the demo: called by the demo runner after training."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console


def demo_report(out_dir: str | Path, console: Console | None = None) -> Path:
    """Write ``OUT/report.html`` for the demo's sequential model (store at OUT/store); returns its path."""
    from .build import build_report

    out_dir = Path(out_dir)
    path = build_report(out_dir / "models" / "sequential", out_dir / "report.html", n_boot=300)
    if console is not None:
        console.print(f"   report written: {path}", highlight=False)
    return path


def small_phantom_model(out_dir: str | Path, n_patients: int = 60, seed: int = 0, epochs: int = 15,
                        modalities: list[str] | None = None) -> Path:
    """A small phantom cohort with a trained sequential model in ``out_dir`` (the demo's experiment,
    fewer patients and epochs): what tests and benchmarks of explanations, report and server run on.
    Re-running with an existing ``out_dir/models/sequential`` only returns its path."""
    from ..config import parse_config
    from ..demo.phantom import generate_phantom
    from ..demo.run import _demo_key, phantom_experiment
    from ..train.pipeline import train_experiment

    out_dir = Path(out_dir)
    model_dir = out_dir / "models" / "sequential"
    if (model_dir / "config.json").exists():
        return model_dir
    manifest = generate_phantom(out_dir / "phantom", n_patients=n_patients, seed=seed)
    _demo_key(out_dir / "store", seed)
    exp = phantom_experiment(manifest, out_dir / "store", "sequential", seed)
    exp["train"].update(epochs=epochs, patience=5)
    if modalities:
        exp["model"]["modalities"] = list(modalities)
    train_experiment(parse_config(exp, "small phantom"), model_dir, progress=False)
    return model_dir
