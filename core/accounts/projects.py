"""Projects: on a shared server each person's datasets, runs, searches, cross-validations, ensembles and imported
weights live in a project folder, FTLAB_HOME/projects/OWNER/NAME, which is that project's whole workspace.

A project is private to its owner unless shared with named users (project.json); an admin sees every project.
Folders are owner-only on disk (0700), so other accounts of the machine cannot read them either.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from core.accounts.users import AccountError, User, check_name
from core.config import workspace_root
from core.runs import read_json, write_json

PROJECTS = "projects"
PROJECT_FILE = "project.json"
DEFAULT = "main"  # every user's first project
PROJECT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class Project:
    owner: str
    name: str
    home: Path  # the project's workspace
    members: tuple[str, ...] = ()  # users it is shared with

    @property
    def id(self) -> str:
        return f"{self.owner}/{self.name}"

    def allows(self, user: User) -> bool:
        return user.admin or user.name == self.owner or user.name in self.members


def _home(root: Path, owner: str, name: str) -> Path:
    if not PROJECT_NAME.match(name):
        raise AccountError(f"{name!r} is not a usable project name: letters, digits and . _ - only, at most 64.")
    return Path(root) / PROJECTS / check_name(owner) / name


def _read(home: Path) -> Project:
    owner, name = home.parent.name, home.name
    doc = read_json(home / PROJECT_FILE) or {}
    return Project(owner, name, home, tuple(doc.get("members", ())))


def create(root: Path, owner: str, name: str = DEFAULT) -> Project:
    """Make a project (owner-only on disk); an existing one is returned as it is."""
    home = _home(root, owner, name)
    if not (home / PROJECT_FILE).is_file():
        Path(root).mkdir(parents=True, exist_ok=True)  # a fresh server's first sign-in
        for folder in (Path(root) / PROJECTS, home.parent, home):
            folder.mkdir(mode=0o700, exist_ok=True)
        write_json(home / PROJECT_FILE, {"owner": owner, "name": name, "members": []})
    return _read(home)


def get(root: Path, user: User, project_id: str) -> Project:
    """The project `OWNER/NAME` if `user` may open it. Unknown and forbidden read the same, so a guessed id
    tells nothing about another person's work."""
    owner, _, name = project_id.partition("/")
    try:
        home = _home(root, owner, name)
    except AccountError:
        home = None
    project = _read(home) if home and (home / PROJECT_FILE).is_file() else None
    if project is None or not project.allows(user):
        raise AccountError(f"There is no project {project_id!r} that you can open. Pick one of yours in the sidebar.")
    return project


def visible(root: Path, user: User) -> list[Project]:
    """The user's own projects first (the default one made on first sign-in), then those shared with them (all
    of them for an admin)."""
    create(root, user.name)
    found = [_read(p.parent) for p in sorted((Path(root) / PROJECTS).glob(f"*/*/{PROJECT_FILE}"))]
    mine = [p for p in found if p.owner == user.name]
    return mine + [p for p in found if p.owner != user.name and p.allows(user)]


def share(project: Project, by: User, members: list[str]) -> Project:
    """Set who else may open the project; only its owner (or an admin) may."""
    if by.name != project.owner and not by.admin:
        raise AccountError(f"Only {project.owner} can change who shares {project.id}.")
    names = sorted({check_name(m.strip()) for m in members if m.strip()} - {project.owner})
    write_json(project.home / PROJECT_FILE, {"owner": project.owner, "name": project.name, "members": names})
    return _read(project.home)


def home_of(path: Path) -> Path:
    """The workspace a run or job folder belongs to: its project's, else FTLAB_HOME (the one-person app). What
    reads a run in the server process finds the run's dataset copy with it, never in another workspace."""
    return next((p for p in Path(path).resolve().parents if (p / PROJECT_FILE).is_file()), workspace_root())
