"""A shared server: sign-in, private projects, sharing, admins, quotas, and the open-address guard, through AppTest
(every page opened by another user with the owner's ids) and the registry a page uses."""
import os
import subprocess
import sys
import time

import pytest
import streamlit as st
from streamlit import config as st_config
from streamlit.testing.v1 import AppTest

from conftest import ROOT, make_dataset
from core.accounts import projects, quotas, signin, users
from core.accounts.users import AccountError
from core.data.sources import ingest
from core.evaluate import ensemble
from core.experiments import search
from core.experiments.crossval import cross_validate
from core.jobs.registry import JobError, JobRegistry
from core.train.engine import fit
from test_engine import small_config

pytestmark = pytest.mark.integration

PAGES = ["home", "data", "model", "train", "results", "predict", "runs", "search", "crossval", "review", "ensembles"]
RUN = "20260101-000000-a11ce0"
SECRET_CLASSES = ("vermilion", "cerulean")  # alice's class names: text only her sessions may ever show
PASSWORDS = {"alice": "alice-secret-1", "bob": "bob-secret-22", "carol": "carol-admin-333"}


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A shared home: three accounts (carol is an admin) and alice's project with a dataset, a run, a search,
    a cross-validation and an ensemble, all made by the real code."""
    home = tmp_path_factory.mktemp("lab") / "workspace"
    for name, password in PASSWORDS.items():
        users.put(home, name, password, admin=name == "carol")
    alice = projects.create(home, "alice")
    data = make_dataset(home.parent / "data", {SECRET_CLASSES[0]: 8, SECRET_CLASSES[1]: 8})
    before = os.environ.get("FTLAB_HOME")
    os.environ["FTLAB_HOME"] = str(alice.home)  # as the project's workers run
    try:
        key = ingest(data, alice.home).key
        fit(small_config(data, epochs=1), alice.home / "runs" / RUN)
        config = small_config(data, epochs=1)
        config.data.folds = 2
        cross_validate(config, alice.home / "cv" / "20260101-000000-c0ffee")
        search.create(small_config(data, epochs=1), search.SearchConfig(trials=2), alice.home / "searches" / "20260101-000000-5ea4c0")
        ensemble.create([alice.home / "runs" / RUN, alice.home / "cv" / "20260101-000000-c0ffee" / "fold-1"],
                        alice.home / "ensembles" / "20260101-000000-e05e3b")
    finally:
        os.environ.pop("FTLAB_HOME") if before is None else os.environ.__setitem__("FTLAB_HOME", before)
    ids = {"data": key, "run": RUN, "cv": "20260101-000000-c0ffee", "search": "20260101-000000-5ea4c0",
           "ensemble": "20260101-000000-e05e3b"}
    return home, ids


@pytest.fixture
def home(lab, monkeypatch):
    monkeypatch.setenv("FTLAB_HOME", str(lab[0]))
    monkeypatch.delenv(signin.HEADER_ENV, raising=False)
    st.cache_resource.clear()
    return lab[0]


def signed_in(name, params=None):
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    for k, v in (params or {}).items():
        at.query_params[k] = v
    at.run()
    at.text_input(key="sign-in-name").input(name)
    at.text_input(key="sign-in-password").input(PASSWORDS[name])
    at.button[0].click().run()
    assert not at.exception, at.exception
    return at


def shown(at) -> str:
    """Everything the page put on screen, as text (element protos: values, labels, options, tables)."""
    return str(at._tree)


def test_nothing_renders_before_sign_in_and_a_wrong_password_is_refused(home):
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    assert [f.label for f in at.text_input] == ["User name", "Password"] and not at.selectbox
    at.text_input(key="sign-in-name").input("alice")
    at.text_input(key="sign-in-password").input("not her password")
    at.button[0].click().run()
    assert at.error[0].value == "Wrong user name or password." and not at.selectbox
    at.text_input(key="sign-in-name").input("nobody")
    at.button[0].click().run()
    assert at.error[0].value == "Wrong user name or password."  # an unknown name reads the same


def test_guessing_is_throttled_per_name():
    throttle = users.Throttle(allowed=3, seconds=60)
    home = ROOT / "no-such-home"
    for _ in range(3):
        with pytest.raises(AccountError, match="Wrong user name"):
            users.authenticate(home, "alice", "guess", throttle)
    with pytest.raises(AccountError, match="Too many wrong passwords for alice"):
        users.authenticate(home, "alice", "guess", throttle)


def test_passwords_are_stored_salted_and_never_in_clear(tmp_path):
    users.put(tmp_path, "dora", "correct horse")
    users.put(tmp_path, "eve", "correct horse")
    text = users.users_file(tmp_path).read_text()
    assert "correct horse" not in text and oct(users.users_file(tmp_path).stat().st_mode)[-3:] == "600"
    dora, eve = users.load(tmp_path)[0]["dora"], users.load(tmp_path)[0]["eve"]
    assert dora.password != eve.password  # salted
    assert users.password_matches("correct horse", dora.password) and not users.password_matches("correct hors", dora.password)
    with pytest.raises(AccountError, match="at least 8"):
        users.put(tmp_path, "frank", "short")
    for bad in ("../alice", "a b", "", "x/y"):
        with pytest.raises(AccountError, match="not a usable user name"):
            users.put(tmp_path, bad, "long enough")


def test_a_signed_in_user_works_in_their_own_project_and_sees_their_run(home, lab):
    at = signed_in("alice", {"run": RUN})
    assert at.selectbox(key="project-pick").value == "alice/main"
    assert any("Signed in as **alice**" in c.value for c in at.sidebar.caption)
    at.switch_page("views/results.py").run()
    assert not at.exception and RUN in shown(at) and SECRET_CLASSES[0] in shown(at)  # the check below can fail


@pytest.mark.parametrize("page", PAGES)
def test_another_users_ids_show_nothing_of_theirs_on_any_page(home, lab, page):
    _, ids = lab
    at = signed_in("bob", {"project": "alice/main"} | ids)
    assert "There is no project 'alice/main' that you can open" in at.error[0].value
    assert at.selectbox(key="project-pick").value == "bob/main"
    at.switch_page(f"views/{page}.py").run()
    assert not at.exception, at.exception
    for name, value in ids.items():  # the URL's ids are gone with the project they named ...
        at.query_params[name] = value  # ... and given again inside bob's own project, they find nothing
    at.run()
    assert not at.exception, at.exception
    text = shown(at)
    assert not any(secret in text for secret in SECRET_CLASSES), page
    assert str(home / "projects" / "alice") not in text


def test_a_project_shared_with_bob_opens_for_bob_and_an_admin_sees_every_project(home, lab):
    alice_user = users.lookup(home, "alice")
    main = projects.create(home, "alice")
    projects.share(main, alice_user, ["bob"])
    try:
        at = signed_in("bob", {"project": "alice/main", "run": RUN})
        assert not at.error and at.selectbox(key="project-pick").value == "alice/main"
        at.switch_page("views/results.py").run()
        assert RUN in shown(at) and SECRET_CLASSES[0] in shown(at)
        with pytest.raises(AccountError, match="Only alice"):
            projects.share(main, users.lookup(home, "bob"), ["bob", "mallory"])
    finally:
        projects.share(main, alice_user, [])
    admin = signed_in("carol")
    assert "alice/main" in admin.selectbox(key="project-pick").options
    assert "alice/main" not in signed_in("bob").selectbox(key="project-pick").options


def test_project_folders_are_owner_only_on_disk(home, lab):
    """Other accounts of the machine (a CLI run by another Unix user) cannot read a project."""
    alice = projects.create(home, "alice")
    for folder in (home / "projects", home / "projects" / "alice", alice.home):
        assert oct(folder.stat().st_mode)[-3:] == "700", folder
    if os.geteuid() != 0:
        return
    probe = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c",
                            f"open({str(alice.home / 'runs' / RUN / 'config.json')!r}).read()"],
                           capture_output=True, text=True)
    assert probe.returncode != 0 and "Permission denied" in probe.stderr


def test_the_registry_seen_from_bobs_project_cannot_touch_alices_jobs(home, lab, tmp_path):
    data = make_dataset(tmp_path / "data", {"a": 8, "b": 8})
    root = JobRegistry(home / "runs", threads=1)
    alice, bob = users.lookup(home, "alice"), users.lookup(home, "bob")
    as_alice = root.for_project(projects.create(home, "alice").home, alice, alice)
    as_bob = root.for_project(projects.create(home, "bob").home, bob, bob)
    job = as_alice.submit(small_config(data, epochs=30))
    try:
        assert as_bob.snapshot(job) is None and job not in [s.id for s in as_bob.snapshots()]
        as_bob.stop(job)
        time.sleep(0.5)
        assert as_alice.snapshot(job).active and as_alice.snapshot(job).run_dir.parent == as_alice.runs_root
        alices_run = home / "projects" / "alice" / "main" / "runs" / RUN
        with pytest.raises(JobError, match="no 20260101-000000-a11ce0 in this project"):
            as_bob.submit(small_config(data), resume_dir=alices_run)
        with pytest.raises(JobError, match="in this project"):
            as_bob.resume("cv", home / "projects" / "alice" / "main" / "cv" / "20260101-000000-c0ffee")
        with pytest.raises(JobError, match="in this project"):
            as_bob.ensemble([alices_run, home / "projects" / "alice" / "main" / "cv" / "20260101-000000-c0ffee"])
        assert [s.id for s in root.snapshots()] == [job]  # the server's own view (reattach, admin) sees it
    finally:
        as_alice.stop(job)
        deadline = time.time() + 30
        while as_alice.snapshot(job).active and time.time() < deadline:
            time.sleep(0.2)


def test_over_the_job_quota_a_start_is_refused_with_what_to_do(home, lab, tmp_path):
    data = make_dataset(tmp_path / "data", {"a": 8, "b": 8})
    root = JobRegistry(home / "runs", threads=1)
    dora = users.User("dora", jobs=1)
    view = root.for_project(projects.create(home, "dora").home, dora, dora)
    first = view.submit(small_config(data, epochs=30))
    try:
        with pytest.raises(JobError, match="dora already has 1 job running or queued.*Stop one"):
            view.submit(small_config(data, epochs=1))
    finally:
        view.stop(first)


def test_over_the_disk_quota_the_train_page_says_what_to_delete(home, lab):
    small = users.load(home)[0]["alice"]
    users.put(home, "alice", disk_gb=1e-6)  # 1 kB: alice's run alone is more
    try:
        at = signed_in("alice", {"data": lab[1]["data"]})
        at.switch_page("views/train.py").run()
        next(b for b in at.button if b.label == "Start training").click().run()
        message = at.error[0].value
        assert "alice's projects use" in message and "Delete what you no longer need" in message
        assert f"main/runs/{RUN}" in message and "Runs page" in message
        assert not at.session_state["registry"].snapshots()
    finally:
        users.put(home, "alice", disk_gb=small.disk_gb)


def test_quota_lists_the_largest_items_first(tmp_path):
    project = projects.create(tmp_path, "gus")
    (project.home / "runs" / "big").mkdir(parents=True)
    (project.home / "runs" / "big" / "model.safetensors").write_bytes(os.urandom(300_000))
    (project.home / "datasets" / "k1").mkdir(parents=True)
    (project.home / "datasets" / "k1" / "a.png").write_bytes(os.urandom(50_000))
    with pytest.raises(quotas.QuotaError) as refused:
        quotas.check_disk(tmp_path, users.User("gus", disk_gb=1e-4))
    text = str(refused.value)
    assert text.index("main/runs/big") < text.index("main/datasets/k1") and "Data page" in text
    quotas.check_disk(tmp_path, users.User("gus", disk_gb=1.0))  # within: no error


def test_a_server_reachable_from_other_machines_needs_sign_in_or_the_flag(tmp_path, monkeypatch):
    monkeypatch.setenv("FTLAB_HOME", str(tmp_path / "workspace"))
    monkeypatch.delenv(signin.HEADER_ENV, raising=False)
    before = st_config.get_option("server.address")
    st_config.set_option("server.address", "0.0.0.0")
    try:
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
        assert "listens on 0.0.0.0 with no sign-in" in at.error[0].value and not at.button and not at.selectbox
        monkeypatch.setattr(sys, "argv", ["app.py", signin.OPEN_FLAG])
        assert not AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run().error
        monkeypatch.setattr(sys, "argv", ["app.py"])
        users.put(tmp_path / "workspace", "alice", "alice-secret-1")
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
        assert not at.error and [f.label for f in at.text_input] == ["User name", "Password"]
    finally:
        st_config.set_option("server.address", before)
    assert signin.loopback("127.0.0.1") and signin.loopback("::1") and not signin.loopback("")


def test_the_users_command_writes_accounts_an_admin_can_list(tmp_path):
    env = os.environ | {"FTLAB_HOME": str(tmp_path)}
    add = subprocess.run([sys.executable, "-m", "core", "users", "add", "hana", "--admin", "--disk-gb", "5",
                          "--password-stdin"], input="hana-password\n", capture_output=True, text=True, cwd=ROOT, env=env)
    assert add.returncode == 0, add.stderr
    assert users.authenticate(tmp_path, "hana", "hana-password", users.Throttle()).admin
    listed = subprocess.run([sys.executable, "-m", "core", "users", "list"], capture_output=True, text=True, cwd=ROOT, env=env)
    assert "hana: admin, disk 5 GB" in listed.stdout
    short = subprocess.run([sys.executable, "-m", "core", "users", "add", "ivan", "--password-stdin"], input="short\n",
                           capture_output=True, text=True, cwd=ROOT, env=env)
    assert short.returncode == 2 and "at least 8 characters" in short.stderr


def test_with_an_identity_provider_the_session_is_the_signed_in_email(home, lab):
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.secrets["auth"] = {"client_id": "lab", "client_secret": "x", "redirect_uri": "http://localhost:8501/oauth2callback",
                          "cookie_secret": "y", "server_metadata_url": "https://idp.example/.well-known/openid-configuration"}
    at.user = {"is_logged_in": False}
    at.run()
    assert [b.label for b in at.button] == ["Sign in"] and not at.selectbox and not at.text_input
    at.user = {"is_logged_in": True, "email": "dora@lab.example", "sub": "123"}
    at.run()
    assert not at.exception and at.selectbox(key="project-pick").value == "dora@lab.example/main"
    assert (home / "projects" / "dora@lab.example" / "main" / "project.json").is_file()
    assert any(b.label == "Sign out" for b in at.sidebar.button)


def test_a_sign_in_cookie_is_signed_expires_and_ends_with_a_password_change(tmp_path):
    users.put(tmp_path, "jane", "jane-password-1")
    jane = users.load(tmp_path)[0]["jane"]
    token = users.session_token(tmp_path, jane)
    assert users.token_user(tmp_path, token).name == "jane"
    name, expires, signature = token.split(":")
    for forged in (f"carol:{expires}:{signature}", f"jane:{int(expires) + 3600}:{signature}", f"jane:{expires}:{'0' * 64}",
                   "jane", ""):
        assert users.token_user(tmp_path, forged) is None, forged
    assert users.token_user(tmp_path, users.session_token(tmp_path, jane, hours=-1)) is None  # expired
    assert oct((tmp_path / users.SESSION_KEY).stat().st_mode)[-3:] == "600"
    users.put(tmp_path, "jane", "jane-password-2")
    assert users.token_user(tmp_path, token) is None  # a new password ends the old sign-ins


def test_projects_are_created_shared_and_switched_in_the_sidebar(home, lab):
    at = signed_in("alice", {"run": RUN})
    at.sidebar.text_input(key="project-new").input("thz-2026").run()
    next(b for b in at.sidebar.button if b.label == "Create").click().run()
    assert at.selectbox(key="project-pick").value == "alice/thz-2026" and at.query_params["project"] == "alice/thz-2026"
    assert "run" not in at.query_params  # the run belonged to alice/main
    at.sidebar.text_input(key="project-members").input("bob, carol").run()
    next(b for b in at.sidebar.button if b.label == "Save sharing").click().run()
    assert projects.get(home, users.lookup(home, "bob"), "alice/thz-2026").members == ("bob", "carol")
    at.selectbox(key="project-pick").select("alice/main").run()
    assert not at.exception and at.query_params["project"] == "alice/main"
    bob = signed_in("bob")
    assert bob.selectbox(key="project-pick").options == ["bob/main", "alice/thz-2026"]
    bob.selectbox(key="project-pick").select("alice/thz-2026").run()
    assert not bob.exception and bob.query_params["project"] == "alice/thz-2026"
    assert any("Shared with you by alice" in c.value for c in bob.sidebar.caption)


def test_a_damaged_accounts_file_stops_every_page_with_what_to_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("FTLAB_HOME", str(tmp_path))
    for text, says in (("[users.alice\npassword = ", "is not valid TOML"), ("[users]\nalice = 3\n", "does not hold accounts"),
                       ("[defaults]\ndisk_gb = 'lots'\n", "does not hold accounts")):
        users.users_file(tmp_path).write_text(text)
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
        assert not at.exception and says in at.error[0].value and not at.selectbox and not at.text_input


def test_over_the_disk_quota_an_upload_is_refused_before_it_is_copied(home, lab):
    from test_page_data import folder_upload, uploader

    small = users.load(home)[0]["bob"]
    users.put(home, "bob", disk_gb=1e-6)
    try:
        at = signed_in("bob")
        at.switch_page("views/data.py").run()
        uploader(at, "folder").set_value(folder_upload({"ants": 5, "bees": 5})).run()
        next(b for b in at.button if b.label == "Use this folder").click().run()
        assert not at.exception and "bob's projects use" in at.error[0].value and "this needs" in at.error[0].value
        assert not (home / "projects" / "bob" / "main" / "datasets").exists()
    finally:
        users.put(home, "bob", disk_gb=small.disk_gb)
