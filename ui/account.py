"""Who this session is and which project it works in; every page reads its folders through `workspace()`.

With no sign-in configured (the one-person app) the session is the admin of the plain workspace, FTLAB_HOME.
Otherwise nothing renders until the person is signed in, and the session's workspace is one project's folder.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

import streamlit as st
from streamlit.errors import StreamlitSecretNotFoundError

from core.accounts import projects, quotas, signin, users
from core.accounts.projects import Project
from core.accounts.users import AccountError, User
from core.config import workspace_root

SOLO = User("", admin=True)
URL_IDS = ("data", "run", "search", "cv", "ensemble")  # what the URL names inside a project


@st.cache_resource
def _throttle() -> users.Throttle:
    """One for the server: guesses spread over sessions are counted together."""
    return users.Throttle()


def _identity_provider() -> bool:
    """[auth] in .streamlit/secrets.toml: what st.login needs (README: Sharing a server)."""
    try:
        return "auth" in st.secrets
    except StreamlitSecretNotFoundError:  # no secrets file
        return False


def method() -> str:
    """How people sign in; a damaged users.toml stops every page with what to fix (never 'no sign-in')."""
    try:
        return signin.method(workspace_root(), _identity_provider())
    except AccountError as exc:
        st.error(str(exc))
        st.stop()


@st.cache_resource
def _say_once(text: str) -> None:
    """On the server's console, once per server (the first session)."""
    print(f"Fine-Tune Lab: {text}", file=sys.stderr, flush=True)


def refuse_open_server() -> None:
    """No page for anyone when the server is reachable from other machines and nobody is asked who they are;
    with the explicit flag, a warning on the console."""
    address = st.get_option("server.address") or ""
    how = method()
    why = signin.open_refusal(address, how, sys.argv)
    if why:
        _say_once(why)
        st.error(why)
        st.stop()
    if how == "none" and not signin.loopback(address):
        _say_once(f"WARNING: listening on {address or 'every network interface'} with no sign-in "
                  f"({signin.OPEN_FLAG}): anyone who can reach this port sees and changes every dataset and run.")


def _password_form(keep_page: Callable[[], object]) -> User:
    keep_page()
    with st.form("sign-in"):
        st.subheader("Sign in to Fine-Tune Lab")
        name = st.text_input("User name", key="sign-in-name")
        password = st.text_input("Password", type="password", key="sign-in-password")
        if st.form_submit_button("Sign in", type="primary"):
            try:
                user = users.authenticate(workspace_root(), name.strip(), password, _throttle())
            except AccountError as exc:
                st.error(str(exc))
            else:
                st.session_state["signed-in"] = user.name
                st.session_state.pop("signed-out", None)
                st.session_state["set-cookie"] = users.session_token(workspace_root(), user)
                st.rerun()
    st.caption("No account? Ask the person who runs this server (README: Sharing a server).")
    st.stop()


def signed_in(keep_page: Callable[[], object]) -> User:
    """The signed-in user, or the sign-in screen and a stop."""
    how = method()
    if how == "none":
        return SOLO
    if how == "oidc":
        if not st.user.is_logged_in:
            keep_page()
            st.subheader("Sign in to Fine-Tune Lab")
            st.button("Sign in", type="primary", on_click=st.login)
            st.stop()
        name = str(st.user.get("email") or st.user.get("sub") or "")
    elif how == "proxy":
        name = st.context.headers.get(signin.header()) or ""
        if not name:
            st.error(f"The proxy in front of this server did not say who you are (no {signin.header()} header). "
                     "Open the app through the lab's address, not this machine's port.")
            st.stop()
    else:
        if st.session_state.pop("clear-cookie", False):
            _set_cookie("", 0)
        if ("signed-in" not in st.session_state and not st.session_state.get("signed-out")
                and (known := users.token_user(workspace_root(), _cookie()))):
            st.session_state["signed-in"] = known.name  # a reload, a dropped connection, a new tab
        name = st.session_state.get("signed-in") or _password_form(keep_page)
        if token := st.session_state.pop("set-cookie", None):
            _set_cookie(token, users.SESSION_HOURS * 3600)
    try:
        return users.lookup(workspace_root(), name)
    except AccountError as exc:
        st.error(str(exc))
        st.stop()


COOKIE = "ftlab-sign-in"


def _cookie() -> str:
    return st.context.cookies.get(COOKIE) or ""


def _set_cookie(value: str, seconds: float) -> None:
    """Streamlit cannot set a cookie from Python; the page's own script does (same origin, strict same-site)."""
    st.html(f"<script>document.cookie = '{COOKIE}={value}; path=/; max-age={int(seconds)}; SameSite=Strict';</script>",
            unsafe_allow_javascript=True, width=1)


def sign_out_button(user: User) -> None:
    how = method()
    if how == "oidc":
        st.button("Sign out", on_click=st.logout, key="sign-out")
    elif how == "password" and st.button("Sign out", key="sign-out"):
        st.session_state.clear()
        st.session_state["signed-out"] = st.session_state["clear-cookie"] = True  # this tab's cookie is stale now
        st.rerun()
    st.caption(f"Signed in as **{user.name}**" + (" (admin)" if user.admin else ""))


def _forget_links() -> None:
    """The URL's dataset, run, search... belong to the project they were opened in."""
    for name in URL_IDS:
        st.query_params.pop(name, None)
        st.session_state.pop(f"url-{name}", None)
    st.session_state.pop("config", None)


def _switch() -> None:
    _forget_links()
    st.query_params["project"] = st.session_state["url-project"] = st.session_state["project-pick"]


def project(user: User) -> Project | None:
    """The project named in the URL when this user may open it, else their first one; None for the one-person app."""
    if user is SOLO:
        return None
    root = workspace_root()
    mine = projects.visible(root, user)
    wanted = st.query_params.get("project") or st.session_state.get("url-project", "")  # page links drop it
    current = mine[0]
    if wanted:
        try:
            current = projects.get(root, user, wanted)
        except AccountError as exc:
            st.error(str(exc))
            _forget_links()
    st.session_state["project-pick"] = current.id
    st.selectbox("Project", [p.id for p in mine], key="project-pick", on_change=_switch)
    st.query_params["project"] = st.session_state["url-project"] = current.id
    return current


@st.cache_data(ttl=30, show_spinner=False)
def _usage(root: str, owner: str) -> int:
    return quotas.usage(Path(root), owner)


def project_settings(user: User, current: Project) -> None:
    """Disk used against the quota, sharing (the owner) and new projects."""
    owner = users.lookup(workspace_root(), current.owner)
    used = _usage(str(workspace_root()), owner.name)
    st.progress(min(1.0, used / owner.disk_bytes), text=f"{owner.name}'s disk: {used / 1e9:.2f} of {owner.disk_gb:g} GB")
    with st.expander("Share or add a project"):
        if user.name == current.owner or user.admin:
            members = st.text_input("Shared with (user names, comma-separated)", ", ".join(current.members),
                                    key="project-members")
            if st.button("Save sharing", key="project-share"):
                try:
                    projects.share(current, user, members.split(","))
                except AccountError as exc:
                    st.error(str(exc))
                else:
                    st.rerun()
        else:
            st.caption(f"Shared with you by {current.owner}.")
        name = st.text_input("New project", key="project-new", placeholder="e.g. thz-2026")
        if name and st.button("Create", key="project-create"):
            try:
                made = projects.create(workspace_root(), user.name, name.strip())
            except AccountError as exc:
                st.error(str(exc))
            else:
                _forget_links()
                st.query_params["project"] = st.session_state["url-project"] = made.id
                st.rerun()


def over_quota(adding: int) -> str | None:
    """Why adding this many bytes to the session's project is refused (its owner's disk quota), or None."""
    project = st.session_state.get("project")
    if project is None:
        return None
    try:
        quotas.check_disk(workspace_root(), users.lookup(workspace_root(), project.owner), adding)
    except quotas.QuotaError as exc:
        return str(exc)
    return None


def workspace() -> Path:
    """This session's workspace (app.py sets it before any page runs): its project's folder, or FTLAB_HOME for
    the one-person app."""
    return st.session_state["workspace"]


def current_user() -> User:
    return st.session_state["user"]
