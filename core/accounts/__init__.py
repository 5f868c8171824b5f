"""Who is using a shared server and what they may touch: accounts (users.py), projects and who shares them
(projects.py), disk and job quotas (quotas.py), and when sign-in is required (signin.py).

With no accounts configured and the server on 127.0.0.1 none of this applies: one person, one workspace.
"""
