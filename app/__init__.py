"""Postboard: a REST API for users and posts.

`app.factory.create_app` builds the Flask app. The modules are layered (pyproject.toml,
[tool.importlinter]): each imports only those below it, so this package's own import
runs nothing.
"""
