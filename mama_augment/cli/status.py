"""``mama-augment status``."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from mama_augment.cli._app import DEFAULT_WORKDIR, WORKDIR_HELP, app, call_library, parse_workdir


def human_bytes(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1024 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"  # pragma: no cover


def _print_kinds(kinds: list[dict]) -> None:
    if not kinds:
        return
    width = max(len(k["kind"]) for k in kinds)
    typer.echo("  error kinds:")
    for entry in kinds:
        example = entry["example"]
        if len(example) > 80:
            example = example[:77] + "..."
        typer.echo(f"    {entry['kind'].ljust(width)}  {entry['count']:6d}  {example}")


def _print_manifest_problems(info: dict) -> None:
    if info.get("error"):
        typer.secho(f"  cannot read: {info['error']}", fg=typer.colors.RED)
    for part in info.get("unreadable_parts", []):
        typer.secho(f"  unreadable part {part['path']}: {part['error']}", fg=typer.colors.YELLOW)
    if info.get("uncompacted_parts"):
        typer.echo(f"  {info['uncompacted_parts']} part file(s) not yet compacted (a run is going on or was stopped, "
                   "or they are rows added since, too few yet to rewrite the table for)")


def print_status(status: dict) -> None:
    out = typer.echo
    stages = status["stages"]
    out(f"work folder: {status['workdir']}")

    kf = stages["keyframes"]
    out("")
    if not kf["exists"] and not kf.get("error"):
        out("keyframes  not run yet (no keyframes.parquet)")
    else:
        out(f"keyframes  {kf['done']} done, {kf['failed']} failed, pending: unknown without the inputs (rerun to resume)")
        _print_manifest_problems(kf)
        if kf.get("embedders"):
            out("  embedders: " + ", ".join(f"{k} {v}" for k, v in kf["embedders"].items()))
        if kf.get("decoders"):
            out("  decoders: " + ", ".join(f"{k} {v}" for k, v in kf["decoders"].items()))
        _print_kinds(kf.get("error_kinds", []))

    cap = stages["captions"]
    out("")
    if not cap["exists"] and not cap.get("error"):
        pending = cap.get("pending")
        more = f"; {pending} pending" if pending else ""
        out(f"captions   not run yet (no captions.parquet){more}")
    else:
        pending = "unknown" if cap.get("pending") is None else str(cap["pending"])
        videos = cap.get("videos_pending")
        video_note = f" ({videos} videos without any caption)" if videos else ""
        out(f"captions   {cap['done']} done, {cap['failed']} failed, {pending} pending{video_note}")
        _print_manifest_problems(cap)
        if cap.get("models"):
            rows = cap["models"]
            mw = max(len("model"), *(len(r["model"]) for r in rows))
            pw = max(len("prompt"), *(len(r["prompt_name"]) for r in rows))
            out(f"  {'model'.ljust(mw)}  {'prompt'.ljust(pw)}  {'backend':12}  {'ok':>8}  {'failed':>7}")
            for r in rows:
                out(f"  {r['model'].ljust(mw)}  {r['prompt_name'].ljust(pw)}  {r['backend'][:12]:12}  {r['ok']:8d}  {r['failed']:7d}")
        _print_kinds(cap.get("error_kinds", []))

    runs = stages["runs"]
    out("")
    if not runs["count"]:
        out("runs       none yet (mama-augment train)")
    else:
        out(f"runs       {runs['count']} run(s), {runs['evaluated']} evaluated")
        nw = max(len("name"), *(len(r["name"]) for r in runs["runs"]))
        out(f"  {'name'.ljust(nw)}  {'loss':8}  {'backbone':9}  {'step':>7}  {'t2v R@1':>8}  {'v2t R@1':>8}")
        for r in runs["runs"]:
            step = r.get("step", "")
            t2v = "" if r.get("t2v_r1") is None else f"{r['t2v_r1']:.4g}"
            v2t = "" if r.get("v2t_r1") is None else f"{r['v2t_r1']:.4g}"
            if r.get("task") == "qa":
                # a QA run has no retrieval numbers: its accuracy takes their place
                accuracy = "" if r.get("qa_accuracy") is None else f"  accuracy {r['qa_accuracy']:.4g} %"
                out(f"  {r['name'].ljust(nw)}  {'qa':8}  {'':9}  {'':>7}{accuracy}")
            else:
                out(f"  {r['name'].ljust(nw)}  {str(r.get('loss', '')):8}  {str(r.get('backbone', '')):9}  {str(step):>7}  {t2v:>8}  {v2t:>8}")
            for error in r.get("errors", []):
                typer.secho(f"    cannot read {error}", fg=typer.colors.RED)

    if status["configs"]:
        out("")
        out("recorded configurations: " + ", ".join(
            f"{stage} ({info['recorded_at'] or '?'})" for stage, info in status["configs"].items()))

    out("")
    out(f"disk       {human_bytes(status['disk_total_bytes'])} in all")
    for row in status["disk"]:
        out(f"  {row['name'].ljust(22)} {human_bytes(row['bytes']):>10}  {row['files']:8d} files")


@app.command("status")
def status_command(
    workdir: Path = typer.Option(DEFAULT_WORKDIR, "--workdir", "-w", parser=parse_workdir, metavar="PATH", help=WORKDIR_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the status as one JSON object (for scripts)."),
) -> None:
    """Show what a work folder holds: rows done / failed / pending per stage, errors, models, disk.

    A manifest or run file that cannot be read is reported with the reason (exit code 1).

    Example: mama-augment status --workdir mama-work --json
    """
    from mama_augment.status import workdir_status

    status = call_library(workdir_status, workdir)
    if as_json:
        typer.echo(json.dumps(status, indent=2, default=str))
    else:
        print_status(status)
    if status["problems"]:
        if not as_json:
            typer.echo("")
            for problem in status["problems"]:
                typer.secho(f"problem: {problem}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)
