"""Per-user quotas on a shared server: the disk of the projects a user owns, and how many jobs they run at once.
Over quota is refused before work starts, with what to delete."""
from __future__ import annotations

from pathlib import Path

from core.accounts.projects import PROJECTS
from core.accounts.users import User
from core.runs import disk_bytes

# What a person can delete, by the page that deletes it.
DELETABLE = {"runs": "Runs", "datasets": "Data", "searches": "Search", "cv": "Cross-validate",
             "ensembles": "Ensembles", "imported": "Model", "features": "(a cache, rebuilt when needed)"}


class QuotaError(ValueError):
    """Over a quota; the message says what to delete or wait for."""


def usage(root: Path, owner: str) -> int:
    return disk_bytes(Path(root) / PROJECTS / owner)


def largest(root: Path, owner: str, n: int = 5) -> list[tuple[str, int]]:
    """The biggest things the owner could delete, as ('project/runs/ID', bytes)."""
    items = []
    for project in sorted((Path(root) / PROJECTS / owner).glob("*")):
        for kind in DELETABLE:
            for item in sorted((project / kind).glob("*")) if (project / kind).is_dir() else ():
                items.append((f"{project.name}/{kind}/{item.name}", disk_bytes(item)))
    return sorted(items, key=lambda t: -t[1])[:n]


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def check_disk(root: Path, owner: User, adding: int = 0) -> None:
    """Refuse work that would take the owner past their disk quota: the message lists what to delete."""
    used = usage(root, owner.name)
    if used + adding <= owner.disk_bytes:
        return
    what = "; ".join(f"{name} ({_gb(b)}, {DELETABLE[name.split('/')[1]]} page)" for name, b in largest(root, owner.name))
    adding_text = f" and this needs {_gb(adding)} more" if adding else ""
    raise QuotaError(f"{owner.name}'s projects use {_gb(used)} of the {_gb(owner.disk_bytes)} allowed{adding_text}. "
                     f"Delete what you no longer need, largest first: {what or 'nothing to list'}.")


def check_jobs(user: User, active: int) -> None:
    if active >= user.jobs:
        raise QuotaError(f"{user.name} already has {active} job{'s' * (active != 1)} running or queued, the most allowed "
                         f"at once. Stop one (Train, Search or Cross-validate page), or wait for one to finish.")
