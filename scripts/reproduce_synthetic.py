"""Reproduce the synthetic experiment of the MMoE paper (Ma et al., KDD 2018, section 5).

Two regression tasks whose weight vectors have cosine ``rho``:

    x ~ N(0, I_100);  u1, u2 orthonormal;  w1 = c*u1;  w2 = c*(rho*u1 + sqrt(1-rho^2)*u2)
    y_i = w_i.x + sum_{j=1..m} sin(alpha_j * w_i.x + beta_j) + eps,  eps ~ N(0, 0.01)

with c = 1, m = 10 and alpha_j, beta_j ~ N(0, 0.01) shared by the two tasks. "N(0, 0.01)" is
read as variance 0.01 (standard deviation 0.1) for alpha, beta and the noise alike.

Shared-Bottom, OMoE and MMoE (the library's models, ``mmoe_model.models.build_model``) are
trained with an MSE loss (the sum of the two tasks' MSEs) and Adam for the same number of steps;
their per-task outputs [B, 2] are the regression predictions. One run = one (rho, arch, seed);
the seed fixes the data (u1, u2, alpha, beta, x, noise), shared by all archs of that seed, and the
model initialisation. Each finished run is appended to a JSON-lines file and skipped on rerun.

    .venv/bin/python scripts/reproduce_synthetic.py --seeds 5

writes the results to --results, then a table (stdout, and --table as markdown) and the plot
docs/img/synthetic.png (held-out MSE vs rho, one line per arch, mean +- std over seeds), plus
docs/img/synthetic_curves.png (held-out MSE over training steps, mean over seeds).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in __import__("sys").path:
    __import__("sys").path.insert(0, str(REPO))

from mmoe_model.features import InputLayout  # noqa: E402
from mmoe_model.models import ModelConfig, build_model  # noqa: E402
from schemas.spec import DatasetSpec, parse_spec  # noqa: E402

DIM = 100
ARCHS = ("shared-bottom", "omoe", "mmoe")
LABELS = {"shared-bottom": "Shared-Bottom", "omoe": "OMoE", "mmoe": "MMoE",
          "ple": "PLE", "single-task": "Single-task"}


# --------------------------------------------------------------------------------------------
# Data


def make_data(rho: float, n: int, seed: int, dim: int = DIM, c: float = 1.0, m: int = 10,
              scale: float = 0.1, noise_std: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """``(x [n, dim] float32, y [n, 2] float32)`` for task-weight cosine ``rho`` (section 5.2)."""
    rng = np.random.default_rng(seed)
    # Two orthonormal unit vectors: QR of a Gaussian [dim, 2].
    q, _ = np.linalg.qr(rng.standard_normal((dim, 2)))
    u1, u2 = q[:, 0], q[:, 1]
    w1 = c * u1
    w2 = c * (rho * u1 + math.sqrt(max(0.0, 1.0 - rho * rho)) * u2)
    alpha = rng.normal(0.0, scale, m)
    beta = rng.normal(0.0, scale, m)
    x = rng.standard_normal((n, dim))
    ys = []
    for w in (w1, w2):
        z = x @ w                                                   # [n]
        y = z + np.sin(np.outer(z, alpha) + beta).sum(axis=1) + rng.normal(0.0, noise_std, n)
        ys.append(y)
    return x.astype(np.float32), np.stack(ys, axis=1).astype(np.float32)


def synthetic_spec(dim: int = DIM) -> DatasetSpec:
    """100 dense features (no normalisation: x is already N(0, 1)) and two tasks."""
    return parse_spec({
        "name": "paper-synthetic",
        "keys": [{"name": "row_id", "dtype": "long"}],
        "features": [{"name": f"x{i}", "kind": "dense", "normalize": "none"} for i in range(dim)],
        "tasks": [{"name": "y1"}, {"name": "y2"}],
    }, origin="reproduce_synthetic")


# --------------------------------------------------------------------------------------------
# Models with comparable parameter counts


def param_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def model_configs(num_experts: int = 8, expert_units: int = 16,
                  tower_hidden: tuple[int, ...] = (8,), dim: int = DIM) -> dict[str, ModelConfig]:
    """MMoE / OMoE: ``num_experts`` single-layer experts of ``expert_units`` ReLU units (as in the
    paper). Shared-Bottom: one single-layer bottom whose width is chosen so that its parameter
    count is the closest to MMoE's. Every arch gets the same towers."""
    layout = InputLayout(dense_dim=dim, embeddings=())
    moe = dict(num_experts=num_experts, expert_hidden=(), expert_dim=expert_units,
               tower_hidden=tower_hidden)
    configs = {"mmoe": ModelConfig(arch="mmoe", **moe), "omoe": ModelConfig(arch="omoe", **moe)}
    target = param_count(build_model(configs["mmoe"], layout, 2))

    def sb(width: int) -> ModelConfig:
        return ModelConfig(arch="shared-bottom", expert_hidden=(), expert_dim=width,
                           tower_hidden=tower_hidden)

    width = min(range(8, 1024), key=lambda w: abs(param_count(build_model(sb(w), layout, 2))
                                                 - target))
    configs["shared-bottom"] = sb(width)
    return configs


# --------------------------------------------------------------------------------------------
# Training


def run_one(rho: float, arch: str, seed: int, config: ModelConfig, n_train: int, n_test: int,
            steps: int, batch_size: int, lr: float, eval_every: int,
            scale: float = 0.1) -> dict[str, Any]:
    """Train one model with MSE + Adam for ``steps`` mini-batch steps; returns the run record."""
    torch.set_num_threads(1)
    x, y = make_data(rho, n_train + n_test, seed, scale=scale)
    x_tr, y_tr = torch.from_numpy(x[:n_train]), torch.from_numpy(y[:n_train])
    x_te, y_te = torch.from_numpy(x[n_train:]), torch.from_numpy(y[n_train:])
    no_cats_tr = torch.zeros((n_train, 0), dtype=torch.int64)
    no_cats_te = torch.zeros((n_test, 0), dtype=torch.int64)
    layout = InputLayout.from_spec(synthetic_spec(x.shape[1]))

    torch.manual_seed(seed)
    model = build_model(config, layout, 2)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def mse(xs: torch.Tensor, ys: torch.Tensor, cats: torch.Tensor) -> list[float]:
        model.eval()
        out = model(xs, cats)
        model.train()
        return ((out - ys) ** 2).mean(dim=0).tolist()            # per task

    started = time.perf_counter()
    curve: list[list[float]] = []
    order = torch.randperm(n_train, generator=gen)
    pos = 0
    model.train()
    for step in range(1, steps + 1):
        if pos + batch_size > n_train:
            order, pos = torch.randperm(n_train, generator=gen), 0
        rows = order[pos:pos + batch_size]
        pos += batch_size
        out = model(x_tr[rows], no_cats_tr[rows])
        loss = ((out - y_tr[rows]) ** 2).mean(dim=0).sum()        # sum of the per-task MSEs
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % eval_every == 0 or step == steps:
            curve.append([step, float(np.mean(mse(x_te, y_te, no_cats_te)))])
    train_mse = mse(x_tr, y_tr, no_cats_tr)
    test_mse = mse(x_te, y_te, no_cats_te)
    return {
        "rho": rho, "arch": arch, "seed": seed, "params": param_count(model),
        "train_mse": train_mse, "test_mse": test_mse,
        "train_loss": float(np.mean(train_mse)), "test_loss": float(np.mean(test_mse)),
        "label_corr": float(np.corrcoef(y[:, 0], y[:, 1])[0, 1]),
        "test_label_var": y[n_train:].var(axis=0).tolist(),
        "curve": curve, "seconds": round(time.perf_counter() - started, 2),
        "setup": setup_dict(n_train, n_test, steps, batch_size, lr, config, scale),
    }


def setup_dict(n_train: int, n_test: int, steps: int, batch_size: int, lr: float,
               config: ModelConfig, scale: float) -> dict[str, Any]:
    setup = {"n_train": n_train, "n_test": n_test, "steps": steps, "batch_size": batch_size,
             "lr": lr, "model": config.to_dict()}
    if scale != 0.1:  # the paper's setting keeps the key of the runs made before --scale existed
        setup["scale"] = scale
    return setup


def add_nmse(record: dict[str, Any]) -> dict[str, Any]:
    """``test_nmse``: held-out MSE / label variance per task, averaged (1.0 = predicting the
    mean). Comparable across seeds, whose label scales differ (sum of sines). Records written
    before ``test_label_var`` existed get it by regenerating their (deterministic) data."""
    if "test_nmse" in record:
        return record
    if "test_label_var" not in record:
        setup = record["setup"]
        _, y = make_data(record["rho"], setup["n_train"] + setup["n_test"], record["seed"],
                         scale=setup.get("scale", 0.1))
        record["test_label_var"] = y[setup["n_train"]:].var(axis=0).tolist()
    record["test_nmse"] = float(np.mean(np.array(record["test_mse"])
                                        / np.array(record["test_label_var"])))
    return record


def run_key(setup: dict[str, Any], rho: float, arch: str, seed: int) -> str:
    return json.dumps([setup, rho, arch, seed], sort_keys=True)


def load_results(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a run killed mid-write: ignore the torn line
                continue
    return out


# --------------------------------------------------------------------------------------------
# Reporting


def summarise(records: Iterable[dict[str, Any]], metric: str = "test_loss"
              ) -> dict[tuple[float, str], tuple[float, float, int]]:
    groups: dict[tuple[float, str], list[float]] = {}
    for r in records:
        groups.setdefault((r["rho"], r["arch"]), []).append(r[metric])
    return {k: (float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, len(v))
            for k, v in groups.items()}


def markdown_table(records: list[dict[str, Any]], rhos: list[float], archs: list[str]) -> str:
    test, train = summarise(records, "test_loss"), summarise(records, "train_loss")
    corr, nmse = summarise(records, "label_corr"), summarise(records, "test_nmse")
    median = {k: float(np.median([r["test_loss"] for r in records
                                  if (r["rho"], r["arch"]) == k])) for k in test}
    params = {r["arch"]: r["params"] for r in records}
    lines = ["| rho | label corr. | " + " | ".join(
        f"{LABELS[a]} ({params.get(a, '?')} params): test MSE [median] / train MSE / test "
        f"MSE÷Var(y)" for a in archs) + " |",
             "|---|---|" + "---|" * len(archs)]
    for rho in rhos:
        cells = []
        for a in archs:
            if (rho, a) not in test:
                cells.append("n/a")
                continue
            m, s, n = test[(rho, a)]
            tm, ts, _ = train[(rho, a)]
            nm, ns, _ = nmse[(rho, a)]
            cells.append(f"{m:.4f} ± {s:.4f} [{median[(rho, a)]:.4f}] / {tm:.4f} ± {ts:.4f}"
                         f" / {nm:.4f} ± {ns:.4f} (n={n})")
        c = next((corr[(rho, a)][0] for a in archs if (rho, a) in corr), float("nan"))
        lines.append(f"| {rho} | {c:.3f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired_gaps(records: list[dict[str, Any]], rhos: list[float],
                metric: str = "test_loss") -> str:
    """Per rho: mean +- std over seeds of the paired differences OMoE-MMoE and SB-OMoE."""
    by = {(r["rho"], r["arch"], r["seed"]): r[metric] for r in records}
    name = {"test_loss": "test MSE", "test_nmse": "test MSE÷Var(y)"}.get(metric, metric)
    lines = [f"| rho | OMoE − MMoE ({name}) | Shared-Bottom − OMoE | Shared-Bottom − MMoE "
             "| MMoE best of the 3 in k/n seeds |",
             "|---|---|---|---|---|"]
    for rho in rhos:
        seeds = sorted({s for (r_, a, s) in by if r_ == rho})
        d1 = [by[(rho, "omoe", s)] - by[(rho, "mmoe", s)] for s in seeds
              if (rho, "omoe", s) in by and (rho, "mmoe", s) in by]
        d2 = [by[(rho, "shared-bottom", s)] - by[(rho, "omoe", s)] for s in seeds
              if (rho, "omoe", s) in by and (rho, "shared-bottom", s) in by]
        d3 = [by[(rho, "shared-bottom", s)] - by[(rho, "mmoe", s)] for s in seeds
              if (rho, "mmoe", s) in by and (rho, "shared-bottom", s) in by]
        best = [s for s in seeds if all((rho, a, s) in by for a in ARCHS)
                and min(ARCHS, key=lambda a: by[(rho, a, s)]) == "mmoe"]
        full = [s for s in seeds if all((rho, a, s) in by for a in ARCHS)]

        def fmt(d: list[float]) -> str:
            return (f"{np.mean(d):+.4f} ± {np.std(d, ddof=1) if len(d) > 1 else 0:.4f}"
                    if d else "n/a")

        lines.append(f"| {rho} | {fmt(d1)} | {fmt(d2)} | {fmt(d3)} | {len(best)}/{len(full)} |")
    return "\n".join(lines)


def plot(records: list[dict[str, Any]], rhos: list[float], archs: list[str], path: Path,
         curves_path: Path | None = None, title: str = "", metric: str = "test_loss") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    test = summarise(records, metric)
    fig, ax = plt.subplots(figsize=(7, 4.6))
    for i, a in enumerate(archs):
        pts = [(rho, *test[(rho, a)][:2]) for rho in rhos if (rho, a) in test]
        if not pts:
            continue
        xs, ms, ss = zip(*pts)
        shift = (i - 1) * 0.008
        line = ax.errorbar(np.array(xs) + shift, ms, yerr=ss, marker="o", capsize=4,
                           label=f"{LABELS[a]} (mean ± std)")
        seeds = [(r["rho"] + shift + 0.003, r[metric]) for r in records if r["arch"] == a]
        ax.scatter(*zip(*seeds), s=12, alpha=0.5, color=line[0].get_color(), marker="x",
                   label=f"{LABELS[a]}, single seeds")
    ax.set_xlabel("task correlation ρ (cosine of w1, w2)")
    ax.set_ylabel(("held-out MSE" if metric == "test_loss" else "held-out MSE ÷ Var(y)")
                  + ", mean of 2 tasks")
    if title:
        ax.set_title(title, fontsize=9)
    n = max((v[2] for v in test.values()), default=0)
    if not title:
        ax.set_title(f"Synthetic data (Ma et al. 2018, §5): mean ± std over {n} seeds")
    ax.set_xticks(rhos)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)

    if curves_path is None:
        return
    fig, axes = plt.subplots(1, len(rhos), figsize=(4 * len(rhos), 3.4), sharey=True)
    axes = np.atleast_1d(axes)
    for ax, rho in zip(axes, rhos):
        for a in archs:
            runs = [r["curve"] for r in records if r["rho"] == rho and r["arch"] == a]
            if not runs:
                continue
            length = min(len(c) for c in runs)
            steps = [c[0] for c in runs[0][:length]]
            # Median over seeds: one slow seed would dominate a mean on a log scale.
            median = np.median([[c[1] for c in run[:length]] for run in runs], axis=0)
            ax.plot(steps, median, label=LABELS[a])
        ax.set_yscale("log")
        ax.set_title(f"ρ = {rho}")
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("held-out MSE (median over seeds)")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(curves_path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--rhos", type=float, nargs="+", default=[0.5, 0.9, 1.0])
    p.add_argument("--archs", nargs="+", default=list(ARCHS), choices=list(LABELS))
    p.add_argument("--n-train", type=int, default=10000)
    p.add_argument("--n-test", type=int, default=2000)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--scale", type=float, default=0.1,
                   help="Standard deviation of alpha_j and beta_j (paper: N(0, 0.01), i.e. 0.1).")
    p.add_argument("--results", type=Path, default=Path("/tmp/repro-results/synthetic.jsonl"))
    p.add_argument("--plot", type=Path, default=REPO / "docs/img/synthetic.png")
    p.add_argument("--curves", type=Path, default=REPO / "docs/img/synthetic_curves.png")
    p.add_argument("--plot-metric", choices=["test_loss", "test_nmse"], default="test_loss",
                   help="test_loss: held-out MSE; test_nmse: held-out MSE / label variance.")
    p.add_argument("--table", type=Path, default=None, help="Also write the tables (markdown).")
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    configs = model_configs()
    args.results.parent.mkdir(parents=True, exist_ok=True)
    done = {run_key(r["setup"], r["rho"], r["arch"], r["seed"]): r
            for r in load_results(args.results)}
    wanted = []
    started = time.perf_counter()
    for seed in range(args.seeds):
        for rho in args.rhos:
            for arch in args.archs:
                cfg = configs.get(arch) or ModelConfig(arch=arch, num_experts=4, expert_hidden=(),
                                                       expert_dim=16, tower_hidden=(8,))
                setup = setup_dict(args.n_train, args.n_test, args.steps, args.batch_size,
                                   args.lr, cfg, args.scale)
                key = run_key(setup, rho, arch, seed)
                if key not in done:
                    rec = run_one(rho, arch, seed, cfg, args.n_train, args.n_test, args.steps,
                                  args.batch_size, args.lr, args.eval_every, args.scale)
                    with args.results.open("a") as fh:
                        fh.write(json.dumps(rec) + "\n")
                    done[key] = rec
                    print(f"rho={rho} {arch:13s} seed={seed} test_mse={rec['test_loss']:.4f} "
                          f"train_mse={rec['train_loss']:.4f} ({rec['seconds']}s)", flush=True)
                wanted.append(add_nmse(done[key]))
    print(f"all runs done; {time.perf_counter() - started:.0f}s in this invocation", flush=True)

    archs = [a for a in args.archs]
    table = markdown_table(wanted, args.rhos, archs)
    gaps = ""
    if set(ARCHS) <= set(archs):
        gaps = (paired_gaps(wanted, args.rhos, "test_loss") + "\n\n"
                + paired_gaps(wanted, args.rhos, "test_nmse"))
    print(table)
    print()
    print(gaps)
    total = sum(r["seconds"] for r in wanted)
    print(f"\ntraining time summed over {len(wanted)} runs: {total:.0f}s")
    if args.table:
        args.table.write_text(table + "\n\n" + gaps + f"\n\ntraining time summed over "
                              f"{len(wanted)} runs: {total:.0f}s\n")
    n = args.seeds
    title = (f"Synthetic (Ma et al. 2018, §5): α,β ~ N(0, {args.scale}²), {args.n_train} train rows,"
             f"\n{args.steps} Adam steps x {args.batch_size}, lr {args.lr}; mean ± std over {n} seeds")
    plot(wanted, args.rhos, archs, args.plot, args.curves, title, args.plot_metric)
    print(f"plots: {args.plot} {args.curves}")


if __name__ == "__main__":
    main()
