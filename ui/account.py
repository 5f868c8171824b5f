"""Who this session is and which project it works in; every page reads its folders through `workspace()`.

With no sign-in configured (the one-person app) the session is the admin of the plain workspace, FTLAB_HOME.
Otherwise nothing renders until the person is signed in, and the session's workspace is one project's folder.
"""
from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st
from streamlit.errors import StreamlitSecretNotFoundError

from core.accounts import projects, quotas, signin, users
from core.accounts.projects import Project
from core.accounts.users import AccountError, User
from core.config import workspace_root

SOLO = User("", admin=True, disk_gb=float("inf"), jobs=10**6)


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
    return signin.method(workspace_root(), _identity_provider())


def refuse_open_server() -> None:
    """No page for anyone when the server is reachable from other machines and nobody is asked who they are."""
    address = st.get_option("server.address") or ""
    why = signin.open_refusal(address, method(), sys.argv)
    if why:
        st.error(why)
        st.stop()


def _password_form() -> User:
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
                st.rerun()
    st.caption("No account? Ask the person who runs this server (README: Sharing a server).")
    st.stop()


def signed_in() -> User:
    """The signed-in user, or the sign-in screen and a stop."""
    how = method()
    if how == "none":
        return SOLO
    if how == "oidc":
        if not st.user.is_logged_in:
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
        name = st.session_state.get("signed-in") or _password_form()
    try:
        return users.lookup(workspace_root(), name)
    except AccountError as exc:
        st.error(str(exc))
        st.stop()


def sign_out_button(user: User) -> None:
    how = method()
    if how == "oidc":
        st.button("Sign out", on_click=st.logout, key="sign-out")
    elif how == "password" and st.button("Sign out", key="sign-out"):
        st.session_state.clear()
        st.rerun()
    st.caption(f"Signed in as **{user.name}**" + (" (admin)" if user.admin else ""))


def _forget_links() -> None:
    """The URL's dataset, run, search... belong to the project they were opened in."""
    for name in ("data", "run", "search", "cv", "ensemble"):
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
def _usage(owner: str) -> int:
    return quotas.usage(workspace_root(), owner)


def project_settings(user: User, current: Project) -> None:
    """Disk used against the quota, sharing (the owner) and new projects."""
    owner = users.lookup(workspace_root(), current.owner)
    used = _usage(owner.name)
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
