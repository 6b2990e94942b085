"""What a run of `experiment.train_and_evaluate` writes besides the model:
plots of its history, the exported artifacts with their deployment report,
and the final table."""

import json
import os

import numpy as np


def _arrays(dataset):
    xs, ys = zip(*dataset.as_numpy_iterator(), strict=True)
    return np.concatenate(xs), np.concatenate(ys)


def write_plots(history, kernels_density, out_dir):
    """`accuracy.png`, `coefficient_sparsity.png` and `layer_density.png`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(epochs, [h["accuracy"] for h in history], label="dense (train)")
    ax.plot(
        epochs,
        [h["pruned_accuracy"] for h in history],
        "o-",
        ms=3,
        label="pruned copy (eval data)",
    )
    for phase, color in (("art", "tab:orange"), ("finetune", "tab:green")):
        inside = [h["epoch"] for h in history if h["phase"] == phase]
        if inside:
            ax.axvspan(
                min(inside) - 0.5,
                max(inside) + 0.5,
                color=color,
                alpha=0.1,
                label=phase,
            )
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "accuracy.png"), dpi=100)
    plt.close(fig)

    fig, left = plt.subplots(figsize=(7, 4))
    left.plot(epochs, [h["coefficient"] for h in history], color="tab:red")
    left.set_yscale("symlog", linthresh=1e-8)
    left.set_xlabel("epoch")
    left.set_ylabel("coefficient", color="tab:red")
    right = left.twinx()
    right.plot(epochs, [h["sparsity"] for h in history], color="tab:blue")
    right.set_ylabel("sparsity of the kernels", color="tab:blue")
    right.set_ylim(0, 1)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "coefficient_sparsity.png"), dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, max(3, 0.3 * len(kernels_density))))
    names = list(kernels_density)
    ax.barh(names, [kernels_density[n] for n in names])
    ax.invert_yaxis()
    ax.set_xlabel("density (fraction of non-zero weights)")
    ax.set_xlim(0, 1)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "layer_density.png"), dpi=100)
    plt.close(fig)


def export_artifacts(model, pipes, targets, output_dir):
    """Converts once per artifact, writes the files, and reports each artifact
    run once (the micro arena found once per micro model)."""
    from hypersparse_tf import export

    x_test, y_test = _arrays(pipes["test"])
    x_train, _ = _arrays(pipes["train_eval"])
    representative = x_train[:200]
    artifacts = export.convert_artifacts(
        model, representative, targets, verify_inputs=x_test[:64]
    )
    files = {
        "mobile_float": "mobile_float.tflite",
        "mobile_sparse": "mobile_sparse.tflite",
        # The board gets the shrunk model.
        "micro_int8_shrunk": "micro_int8.tflite",
    }
    for artifact, filename in files.items():
        if artifact in artifacts:
            with open(os.path.join(output_dir, filename), "wb") as f:
                f.write(artifacts[artifact])
    report = export.deployment_report(
        model,
        representative,
        x_test,
        y_test,
        name=model.name,
        targets=targets,
        artifacts=artifacts,
    )
    results = {}
    if "micro" in targets:
        data = artifacts["micro_int8_shrunk"]
        export.write_c_array(data, os.path.join(output_dir, "micro_model"), "g_model")
        row = next(
            r for r in report["artifacts"] if r["artifact"] == "micro_int8_shrunk"
        )
        results["micro_test_accuracy"] = row["accuracy"]
        results["micro_bytes"] = len(data)
        results["micro_arena_bytes"] = row["arena_bytes"]
    with open(os.path.join(output_dir, "deployment_report.json"), "w") as f:
        json.dump(report, f, indent=1)
    with open(os.path.join(output_dir, "deployment_report.md"), "w") as f:
        f.write(export.report_markdown(report) + "\n")
    results["deployment_report"] = report
    return results


def summary_table(summary):
    """The final table of a run, as Markdown."""

    def percent(value):
        return "-" if value is None else f"{100 * value:.2f}%"

    lines = [
        "| quantity | value |",
        "|---|---|",
        f"| phase | {summary['phase']} |",
        f"| ART epochs to termination | {summary['art_epochs']} |",
        f"| epochs in all | {summary['epochs']} |",
        f"| sparsity of the kernels | {percent(summary['sparsity'])} |",
        f"| dense test accuracy (end of warm-up) | "
        f"{percent(summary['dense_test_accuracy'])} |",
        f"| sparse test accuracy (Keras, last epoch) | "
        f"{percent(summary['sparse_test_accuracy'])} |",
        f"| sparse test accuracy, best fine-tuning epoch (chosen on the test "
        f"set, as the paper reports) | "
        f"{percent(summary.get('best_finetune_test_accuracy'))} |",
    ]
    if "micro_test_accuracy" in summary:
        lines += [
            f"| int8 test accuracy on TFLite Micro (after shrink) | "
            f"{percent(summary['micro_test_accuracy'])} |",
            f"| micro model bytes | {summary['micro_bytes']:,d} |",
            f"| micro tensor arena bytes | {summary['micro_arena_bytes']:,d} |",
        ]
    report = summary.get("deployment_report")
    if report:
        for row in report["artifacts"]:
            lines.append(
                f"| {row['artifact']} bytes (gzip) | {row['bytes']:,d} "
                f"({row['gzip_bytes']:,d}) |"
            )
        rows = {row["artifact"]: row for row in report["artifacts"]}
        if "micro_int8" in rows and "micro_int8_shrunk" in rows:
            # What removing channels bought on the board (shrink).
            full, small = rows["micro_int8"], rows["micro_int8_shrunk"]
            for what, key in (("flash bytes", "bytes"), ("arena bytes", "arena_bytes")):
                lines.append(
                    f"| board model {what}: shrunk / unshrunk | "
                    f"{small[key]:,d} / {full[key]:,d} "
                    f"({small[key] / full[key]:.2f}x) |"
                )
            lines.append(
                f"| board model MACs: shrunk / unshrunk | {small['macs']:,d} / "
                f"{full['macs']:,d} (removed {1 - small['macs'] / full['macs']:.1%}) |"
            )
            lines.append(
                f"| board model parameters: shrunk / unshrunk | "
                f"{small['parameters']:,d} / {full['parameters']:,d} (removed "
                f"{1 - small['parameters'] / full['parameters']:.1%}) |"
            )
    lines.append(f"| wall time | {summary.get('wall_seconds', 0):.0f} s |")
    return "\n".join(lines)
