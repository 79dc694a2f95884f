"""The README and docs/ stay true to the repository: links resolve, named files exist,
the settings table matches the code, the endpoints named are served, and the README's
curl lines are the walk-through script's."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
CONFIGURATION = ROOT / "docs" / "configuration.md"
WALKTHROUGH = ROOT / "scripts" / "walkthrough.sh"

FENCE = re.compile(r"^```.*?^```[ \t]*$", re.M | re.S)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
CODE_SPAN = re.compile(r"`([^`\n]+)`")
REPO_PATH = re.compile(r"^(?:app|worker|tests|migrations|scripts|bench|docs|\.ci)/\S*$")
TOP_LEVEL_FILES = {
    "Makefile",
    "Procfile",
    "Dockerfile",
    "gunicorn.conf.py",
    "wsgi.py",
    "setup.cfg",
    "pyproject.toml",
    "README.md",
    ".dockerignore",
    ".gitignore",
}
PLACEHOLDER = re.compile(r"[<>{}…]")
# what no file may name: a path outside the repository, broken in every clone
OUTSIDE = ("." + "./shared", "DESIGN" + ".md")
SKIP_DIRS = {".git", ".venv", "venv", "instance", "__pycache__", ".pytest_cache", ".ruff_cache", "htmlcov"}


def prose(path: Path) -> str:
    """The page without its fenced code blocks (links and spans there are not links)."""
    return FENCE.sub("", path.read_text())


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    result = set()
    for line in prose(path).splitlines():
        if match := re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line):
            base = slug(match.group(1))
            count = seen.get(base, 0)
            seen[base] = count + 1
            result.add(base if count == 0 else f"{base}-{count}")
    return result


def test_the_pages_exist_and_the_readme_is_short():
    names = {page.name for page in PAGES}
    assert {"api.md", "configuration.md", "operations.md", "architecture.md", "performance.md"} <= names
    lines = README.read_text().splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; keep it a first page, details go in docs/"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_resolves_inside_the_repository(page):
    checked, broken = 0, []
    for target in LINK.findall(prose(page)):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...
            continue
        path_part, _, anchor = target.partition("#")
        resolved = (page.parent / path_part).resolve() if path_part else page
        checked += 1
        if not resolved.is_relative_to(ROOT):
            broken.append(f"{target}: outside the repository")
        elif not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target}: no heading #{anchor} in {resolved.relative_to(ROOT)}")
    assert checked > 0
    assert broken == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_repository_path_named_in_backticks_exists(page):
    named = [
        span
        for span in CODE_SPAN.findall(prose(page))
        if (REPO_PATH.match(span) or span in TOP_LEVEL_FILES) and not PLACEHOLDER.search(span)
    ]
    assert named
    missing = [p for p in named if not (list(ROOT.glob(p)) if "*" in p else (ROOT / p).exists())]
    assert missing == []


def repository_files():
    """The files git tracks or would track (build output and ignored files are not ours)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],  # noqa: S607
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        path = ROOT / name
        if path.is_file() and not SKIP_DIRS.intersection(path.relative_to(ROOT).parts):
            yield path


def test_no_file_names_a_path_outside_the_repository():
    offenders = []
    files = list(repository_files())
    assert README in files and Path(__file__) in files
    for path in files:
        if path.suffix in {".png", ".pyc"}:
            continue
        text = path.read_text(errors="ignore")
        offenders += [f"{path.relative_to(ROOT)}: {name}" for name in OUTSIDE if name in text]
    assert offenders == []


# -- the settings table ---------------------------------------------------------------

# read by the code but not settings: the system's own, and what bench/run.py hands wrk.lua
NOT_SETTINGS = {
    "PATH",
    "BENCH_METHOD",
    "BENCH_PATH",
    "BENCH_BODY",
    "BENCH_TOKEN",
    "BENCH_MIN_ID",
    "BENCH_MAX_ID",
    "BENCH_SKIP_ID",
    "BENCH_MODE",
    "BENCH_ITEMS",
    "BENCH_THREADS",
    "BENCH_RETRY_AFTER",
}
# settings of the tools themselves, set by the Makefile and the Docker image
TOOL_SETTINGS = {"FLASK_APP"}

ENV_READ_PATTERNS = [
    # os.environ.get("X"), os.environ["X"], os.environ.setdefault("X"), os.getenv("X")
    r"""os\.(?:environ(?:\.get|\.setdefault|\.pop)?\s*[\[(]|getenv\()\s*f?["']([A-Z][A-Z0-9_]+)["']""",
    # app/config.py's typed readers
    r"""\b_(?:int|float|bool)\(\s*["']([A-Z][A-Z0-9_]+)["']""",
    # click options read from the environment
    r"""envvar=["']([A-Z][A-Z0-9_]+)["']""",
]


def settings_in_code() -> set[str]:
    names: set[str] = set()
    sources = [ROOT / "wsgi.py", ROOT / "gunicorn.conf.py"]
    for folder in ("app", "worker", "scripts", "bench", "tests"):
        sources += sorted((ROOT / folder).rglob("*.py"))
    for source in sources:
        text = source.read_text()
        for pattern in ENV_READ_PATTERNS:
            names.update(re.findall(pattern, text))
    for lua in (ROOT / "bench").rglob("*.lua"):
        names.update(re.findall(r"""os\.getenv\(\s*["']([A-Z][A-Z0-9_]+)["']""", lua.read_text()))
    # the Procfile's ${VAR:-default}, and the shell's in the Makefile's recipes ($${VAR...})
    names.update(re.findall(r"\$\{([A-Z][A-Z0-9_]+)", (ROOT / "Procfile").read_text()))
    makefile = (ROOT / "Makefile").read_text()
    names.update(re.findall(r"\$\$\{([A-Z][A-Z0-9_]+)", makefile))
    # make variables a caller may set: used as $(VAR), not defined in the Makefile (or ?=)
    defined = set(re.findall(r"^(?:export\s+)?([A-Z][A-Z0-9_]*)\s*:?=", makefile, re.M))
    names.update(set(re.findall(r"\$\(([A-Z][A-Z0-9_]+)\)", makefile)) - defined)
    return names - NOT_SETTINGS


def settings_in_docs() -> list[str]:
    return re.findall(r"^\| `([A-Z][A-Z0-9_]+)` \|", CONFIGURATION.read_text(), re.M)


def test_the_settings_table_names_every_variable_the_code_reads_and_no_other():
    code, documented = settings_in_code(), settings_in_docs()
    assert {"DATABASE_URL", "REDIS_URL", "WEB_CONCURRENCY", "WORKER_SHORT_CONCURRENCY", "PYTHON"} <= code
    assert len(documented) == len(set(documented)), "a variable has two rows"
    assert sorted(code - set(documented)) == [], "read by the code, missing in docs/configuration.md"
    assert sorted(set(documented) - code - TOOL_SETTINGS) == [], "in docs/configuration.md, read by no code"


def test_the_process_table_is_the_procfile():
    procfile = dict(line.split(":", 1) for line in (ROOT / "Procfile").read_text().splitlines() if line.strip())
    procfile = {name.strip(): command.strip() for name, command in procfile.items()}
    table = dict(re.findall(r"^\| `([a-z_]+)` \| `([^`]+)` \|", (ROOT / "docs" / "operations.md").read_text(), re.M))
    assert {"release", "web", "worker_short", "worker_long", "beat"} <= set(procfile)
    assert table == procfile


# -- endpoints named in the docs --------------------------------------------------------

METHODS = "GET|HEAD|POST|PUT|PATCH|DELETE"
ENDPOINT_SPAN = re.compile(rf"^(?:({METHODS}) )?(/api/v1\S*|/\S+)$")


def served_routes(app) -> dict[str, set[str]]:
    routes: dict[str, set[str]] = {}
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<[^>]+>", "{}", rule.rule)
        routes.setdefault(path, set()).update(rule.methods)
    return routes


def endpoints_named(page: Path) -> list[tuple[str | None, str]]:
    named = []
    for span in CODE_SPAN.findall(prose(page)):
        match = ENDPOINT_SPAN.match(span)
        if not match:
            continue
        method, path = match.groups()
        if method is None and not path.startswith("/api/v1"):
            continue  # a bare /something may be a file path; with a method it is an endpoint
        named.append((method, re.sub(r"\{[^}]*\}", "{}", path.split("?")[0])))
    return named


def test_every_endpoint_the_docs_name_is_served(app):
    routes = served_routes(app)
    named = [(page.name, method, path) for page in PAGES for method, path in endpoints_named(page)]
    assert len([n for n in named if n[0] == "api.md"]) >= 10
    unknown = []
    for page, method, path in named:
        if path == "/api/v1" or path.endswith(("/", "…")):  # a prefix: `/api/v1/admin/…`
            if not any(route.startswith(path.rstrip("/…") + "/") for route in routes):
                unknown.append(f"{page}: {path}")
            continue
        methods = routes.get(path) or routes.get(f"/api/v1{path}")
        if methods is None or (method and method not in methods):
            unknown.append(f"{page}: {method or ''} {path}")
    assert unknown == []


# -- the README's curl lines ----------------------------------------------------------


def test_the_readme_quotes_the_walkthrough_script_line_for_line():
    text = README.read_text()
    marker = text.index("<!-- walkthrough:")
    block = FENCE.search(text, marker).group(0).splitlines()[1:-1]
    quoted = [line.strip() for line in block if line.strip()]
    script = [line.strip() for line in WALKTHROUGH.read_text().splitlines()]
    assert len(quoted) >= 5
    position = 0
    for line in quoted:
        assert line in script[position:], f"not in scripts/walkthrough.sh (in this order): {line}"
        position = script.index(line, position) + 1
