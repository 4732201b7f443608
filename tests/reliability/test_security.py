"""Security: what a person at the dashboard or the CLI can reach, and what hostile data can do there.

1. The SQL console and ``logprobe query`` are confined to the data root: every escape we know of
   (other files, ``..``, symlinks, extensions, ATTACH, COPY, SET, table functions with side effects,
   several statements, comments, writing CTEs) is refused with a clear message.
2. Names, flag values, payloads and messages holding HTML, JavaScript or Markdown show as the text
   they are on every dashboard page, in a real Chromium, and in the terminal.
3. A run id can never be a path: ``../x``, ``/etc``, ``%2e%2e`` and NUL are refused wherever one
   enters (writer, collectors, CLI options, dashboard URLs, monitor functions).
4. Webhook URLs and their tokens live in the environment only: never in the store, never in a log,
   even when the endpoint is down, answers 500, hangs, or the URL itself is malformed.
5. ``logprobe ui`` listens on 127.0.0.1 only.

Holes this suite found and that were closed: DuckDB allow-listed its temp directory beside the
root, extension autoload stayed on, ``EXPLAIN ANALYZE`` ran what it explained, a CTE could write,
symlinks led out of the root, and a run id could end in a newline.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from urllib.parse import urlencode

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from bench._servers import serve_ui
from logprobe import collectors, monitor, storage
from logprobe.app.cli import main as cli_main
from logprobe.storage import Store, Writer
from tests.conftest import LOGPROBE

SECRET = "OUTSIDE-SECRET-7f3a"  # what the files outside the root hold; must never come back

# ---------------------------------------------------------------------------------------------
# 1. The SQL console and `logprobe query` are confined to the data root
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def confined(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A store with one run, and secrets beside it: outside.parquet/.csv next to the root."""
    base = tmp_path_factory.mktemp("confined")
    root = base / "root"
    with Writer(root) as writer:
        writer.append("runs", "x", {"name": "x"})
        writer.log_metrics("x", 0, {"mismatch/k3": 1e-4})
    pq.write_table(pa.table({"secret": [SECRET]}), base / "outside.parquet")
    (base / "outside.csv").write_text(f"secret\n{SECRET}\n")
    (base / "outside.db").write_bytes(b"")
    return base, root


PERMISSION = "disabled by configuration"  # DuckDB: a file outside allowed_directories
STATEMENT = "only read-only SELECT"  # storage.QueryError: not a SELECT
ONE = "exactly one SQL statement"
LOCKED = "configuration has been locked"


def _escapes(root: Path) -> dict[str, str]:
    """Query -> the words its refusal must contain."""
    up = f"{root}/.."
    return {
        # other files, by every reader and spelling
        f"SELECT * FROM read_parquet('{up}/outside.parquet')": PERMISSION,
        f"SELECT * FROM '{up}/outside.parquet'": PERMISSION,
        f"FROM '{up}/outside.csv'": PERMISSION,
        f"SELECT * FROM read_csv('{up}/outside.csv')": PERMISSION,
        f"SELECT * FROM read_csv_auto('{root}/metrics/../../outside.csv')": PERMISSION,
        f"SELECT * FROM read_text('{root}/../../../../../../etc/passwd')": PERMISSION,
        f"SELECT * FROM read_parquet(['{root}/metrics/run_id=x/../../../outside.parquet'])": PERMISSION,
        f"SELECT * FROM parquet_metadata('{up}/outside.parquet')": PERMISSION,
        f"SELECT * FROM parquet_kv_metadata('{up}/outside.parquet')": PERMISSION,
        f"SELECT * FROM read_duckdb('{up}/outside.db')": PERMISSION,
        f"SELECT * FROM glob('{up}/*')": PERMISSION,
        f"SELECT * FROM read_text('{str(root).rstrip('/')}-sibling/x')": PERMISSION,
        "SELECT * FROM read_csv('/etc/passwd')": PERMISSION,
        "SELECT * FROM read_text('/etc/passwd')": PERMISSION,
        "SELECT * FROM read_blob('/etc/passwd')": PERMISSION,
        "SELECT * FROM read_json('/etc/passwd')": PERMISSION,
        "SELECT * FROM read_text('/proc/self/environ')": PERMISSION,
        "SELECT * FROM read_text('file:///etc/passwd')": PERMISSION,
        "SELECT * FROM read_text('~/.bashrc')": PERMISSION,
        "SELECT * FROM read_text('./pyproject.toml')": PERMISSION,
        "SELECT * FROM glob('/etc/*')": PERMISSION,
        "SELECT * FROM glob('**')": PERMISSION,
        "SELECT * FROM 'https://example.com/x.parquet'": PERMISSION,
        "SELECT * FROM read_text('s3://bucket/key')": PERMISSION,
        "FROM '/etc/passwd'": "does not exist",  # no replacement scans over paths either
        "SELECT getenv('HOME')": "getenv does not exist",
        # the extension and secret directories are outside the root too
        "SELECT * FROM duckdb_extensions()": PERMISSION,
        "SELECT * FROM duckdb_secrets()": PERMISSION,
        f"SELECT * FROM sqlite_scan('{up}/outside.db', 't')": "extension",
        f"SELECT * FROM read_xlsx('{up}/outside.xlsx')": "extension",
        # table functions that change settings or run other statements
        f"SELECT * FROM enable_logging(storage='file', storage_path='{up}/log')": LOCKED,
        f"SELECT * FROM enable_profiling(format='json', save_location='{up}/profile.json')": LOCKED,
        "SELECT * FROM add_grammar_extension('x')": LOCKED,
        f"SELECT * FROM query('COPY metrics TO ''{up}/stolen.csv''')": "single SELECT",
        "SELECT * FROM query('SET enable_external_access = true')": "single SELECT",
        "SELECT * FROM json_execute_serialized_sql(json_serialize_sql("
        "'SELECT * FROM read_text(''/etc/passwd'')'))": PERMISSION,
        # statements that are not a read
        f"COPY metrics TO '{up}/stolen.csv'": STATEMENT,
        f"COPY (SELECT 1) TO '{root}/metrics/run_id=x/planted.parquet'": STATEMENT,
        f"EXPORT DATABASE '{up}/exported'": STATEMENT,
        f"IMPORT DATABASE '{up}'": STATEMENT,
        f"ATTACH '{up}/outside.db'": STATEMENT,
        "ATTACH ':memory:' AS scratch": STATEMENT,
        "DETACH memory": STATEMENT,
        "USE _logprobe": STATEMENT,
        "INSTALL httpfs": STATEMENT,
        "FORCE INSTALL httpfs FROM 'http://127.0.0.1:9'": STATEMENT,
        "LOAD httpfs": STATEMENT,
        f"LOAD '{root}/evil.duckdb_extension'": STATEMENT,
        "CREATE SECRET (TYPE s3, KEY_ID 'a', SECRET 'b')": STATEMENT,
        "CREATE TABLE t AS SELECT 1": STATEMENT,
        "CREATE OR REPLACE VIEW metrics AS SELECT 1 AS planted": STATEMENT,
        "DROP VIEW metrics": STATEMENT,
        "INSERT INTO _logprobe.bad_files VALUES ('a', 'b')": STATEMENT,
        "UPDATE _logprobe.bad_files SET path = 'a'": STATEMENT,
        "DELETE FROM _logprobe.bad_files": STATEMENT,
        "WITH x AS (SELECT 1) INSERT INTO _logprobe.bad_files SELECT 'a', 'b' FROM x": STATEMENT,
        "CHECKPOINT": STATEMENT,
        # settings: no statement may undo the confinement
        "SET enable_external_access = true": STATEMENT,
        "SET GLOBAL enable_external_access = true": STATEMENT,
        "SET allowed_directories = ['/']": STATEMENT,
        "SET lock_configuration = false": STATEMENT,
        "RESET lock_configuration": STATEMENT,
        "RESET enable_external_access": STATEMENT,
        "PRAGMA enable_external_access = true": STATEMENT,
        "PRAGMA version": STATEMENT,
        "CALL pragma_version()": STATEMENT,
        "CALL enable_logging()": STATEMENT,
        "PIVOT metrics ON name USING first(value)": STATEMENT,  # runs as several statements
        # several statements, and statements hidden behind comments
        "SELECT 1; SELECT 2": ONE,
        f"SELECT 1; COPY metrics TO '{up}/stolen.csv'": ONE,
        f"SELECT 1 /* harmless */; ATTACH '{up}/other.db'": ONE,
        "SELECT 1 -- a comment\n; INSTALL httpfs": ONE,
        f"/* SELECT 1 */ COPY metrics TO '{up}/stolen.csv'": STATEMENT,
        "-- SELECT 1\nINSTALL httpfs": STATEMENT,
        "": ONE,
        "-- only a comment": ONE,
        "SELEC nonsense": "cannot parse",
        f"WITH x AS (SELECT 1) COPY x TO '{up}/stolen.csv'": "cannot parse",
    }


# Holes the statement filter lets through today; the proposed storage/_store.py fix closes them.
WRITING_SELECTS = {
    # EXPLAIN ANALYZE runs the statement it explains: a COPY into the root plants or overwrites data
    "EXPLAIN ANALYZE COPY (SELECT 1 AS a) TO '{root}/metrics/run_id=x/planted.parquet'": "EXPLAIN",
    "EXPLAIN (ANALYZE, FORMAT json) COPY (SELECT 1 AS a) TO '{root}/planted.csv'": "EXPLAIN",
    "EXPLAIN ANALYZE CREATE OR REPLACE VIEW metrics AS SELECT 1 AS planted": "EXPLAIN",
    "EXPLAIN ANALYZE DELETE FROM _logprobe.empty_metrics": "EXPLAIN",
    # a SELECT whose CTE writes
    "WITH d AS (DELETE FROM _logprobe.bad_files RETURNING *) SELECT * FROM d": "read-only",
    "WITH i AS (INSERT INTO _logprobe.empty_metrics (name, value) VALUES ('planted', 1) RETURNING *) "
    "SELECT * FROM i": "read-only",
}


def _refusal(store: Store, sql: str) -> str:
    try:
        result = store.read_only_query(sql)
    except (storage.QueryError, duckdb.Error) as exc:
        return str(exc)
    raise AssertionError(f"not refused: {sql!r} returned {result.to_pylist()[:3]}")


def _snapshot(directory: Path) -> set[tuple[str, int]]:
    """Every file under ``directory`` with its mtime: what an escape that writes would change."""
    return {(str(p), p.lstat().st_mtime_ns) for p in directory.rglob("*")}


def test_console_store_settings_are_locked_down(confined: tuple[Path, Path]) -> None:
    _, root = confined
    with Store(root, confined=True) as store:
        got = {
            name: store.read_only_query(f"SELECT current_setting('{name}') AS v").column("v")[0].as_py()
            for name in ("enable_external_access", "lock_configuration", "allowed_directories")
        }
        assert got["enable_external_access"] is False and got["lock_configuration"] is True
        assert f"{root}/" in got["allowed_directories"]
        # Even a caller holding the connection itself cannot loosen it: the configuration is locked.
        for setting in (
            "enable_external_access = true",
            "lock_configuration = false",
            "allowed_directories = ['/']",
            "autoinstall_known_extensions = true",
            "temp_directory = '/'",
        ):
            with pytest.raises(duckdb.Error, match=LOCKED):
                store.con.execute(f"SET {setting}")


def test_console_store_allows_the_root_only_and_no_extensions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "root"
    with Writer(root) as writer:
        writer.log_metrics("x", 0, {"mismatch/k3": 1e-4})
    monkeypatch.chdir(tmp_path)  # DuckDB's default temp_directory is <cwd>/.tmp
    (tmp_path / ".tmp").mkdir()
    (tmp_path / ".tmp" / "beside.csv").write_text(f"secret\n{SECRET}\n")
    with Store(root, confined=True) as store:

        def setting(name: str) -> object:
            return store.read_only_query(f"SELECT current_setting('{name}') AS v").column("v")[0].as_py()

        assert setting("allowed_directories") == [f"{root}/"]
        message = _refusal(store, f"SELECT * FROM read_csv('{tmp_path}/.tmp/beside.csv')")
        assert PERMISSION in message and SECRET not in message
        for name in (
            "autoinstall_known_extensions",
            "autoload_known_extensions",
            "allow_community_extensions",
        ):
            assert setting(name) is False, name
        # Today DuckDB tries to download the sqlite extension, stopped only by the file access check.
        message = _refusal(store, f"SELECT * FROM sqlite_scan('{tmp_path}/x.db', 't')")
        assert "automatically install" not in message, message


def test_console_refuses_every_escape_with_a_clear_message(
    confined: tuple[Path, Path], figures: Callable[..., None]
) -> None:
    base, root = confined
    before = _snapshot(base)
    escapes = _escapes(root)
    with Store(root, confined=True) as store:
        for sql, words in escapes.items():
            message = _refusal(store, sql)
            assert words in message, (sql, message)
            assert SECRET not in message and "root:x:0:0" not in message, sql
        # The store still answers, unchanged, after every attempt.
        assert store.read_only_query("SELECT count(*) AS n FROM metrics").to_pylist() == [{"n": 1}]
        assert store.read_only_query("SELECT count(*) AS n FROM bad_files").to_pylist() == [{"n": 0}]
    assert _snapshot(base) == before, "an escape wrote a file in or beside the data root"
    figures(escapes_refused=len(escapes))


def test_logprobe_query_refuses_every_escape_with_a_clear_message(
    confined: tuple[Path, Path], figures: Callable[..., None]
) -> None:
    base, root = confined
    before = _snapshot(base)
    runner = CliRunner()
    escapes = _escapes(root)
    for sql, words in escapes.items():
        result = runner.invoke(cli_main, ["query", "--root", str(root), "--", sql])
        assert result.exit_code != 0, (sql, result.output)
        assert isinstance(result.exception, SystemExit), (sql, result.exception)  # not a traceback
        assert words in result.output, (sql, result.output)
        assert SECRET not in result.output
    assert _snapshot(base) == before
    figures(cli_escapes_refused=len(escapes))


def test_dashboard_sql_console_refuses_every_escape_with_a_clear_message(
    confined: tuple[Path, Path], figures: Callable[..., None]
) -> None:
    """The SQL page itself (app/views/sql.py), through Streamlit's AppTest: every refusal is an
    error box with the reason, never an exception on the page."""
    base, root = confined
    before = _snapshot(base)
    at = _page(root, "sql", {})
    escapes = _escapes(root)
    for sql, words in escapes.items():
        at.text_area[0].input(sql)
        at.button[0].click().run()
        assert not at.exception, (sql, [e.value for e in at.exception])
        shown = re.sub(r"\\(.)", r"\1", at.error[0].value)  # the message is Markdown-escaped
        assert words in shown and SECRET not in shown, (sql, shown)
    assert _snapshot(base) == before
    figures(console_escapes_refused=len(escapes))


@pytest.mark.parametrize("template", list(WRITING_SELECTS))
def test_console_refuses_selects_that_write(tmp_path: Path, template: str) -> None:
    root = tmp_path / "root"
    with Writer(root) as writer:
        writer.log_metrics("x", 0, {"mismatch/k3": 1e-4})
    (root / "metrics" / "run_id=x" / "zz-torn.parquet").write_bytes(b"not parquet")  # one bad file
    before = _snapshot(root)
    with Store(root, confined=True) as store:
        message = _refusal(store, template.format(root=root))
        assert WRITING_SELECTS[template] in message, message
        assert store.read_only_query("SELECT name FROM metrics").to_pylist() == [{"name": "mismatch/k3"}]
        assert store.read_only_query("SELECT count(*) AS n FROM bad_files").to_pylist() == [{"n": 1}]
    assert _snapshot(root) == before, "the console wrote into the data root"


@pytest.fixture
def symlinked(tmp_path: Path) -> tuple[Path, Path]:
    """A root whose metrics partition holds a symlink to a Parquet file outside it, shaped like
    a metrics file, and a partition that is itself a symlink to an outside folder."""
    root = tmp_path / "root"
    with Writer(root) as writer:
        writer.log_metrics("x", 0, {"mismatch/k3": 1e-4})
    outside = tmp_path / "outside"
    outside.mkdir()
    stolen = pa.table({"step": [0], "name": ["stolen"], "value": [42.0], "secret": [SECRET]})
    pq.write_table(stolen, outside / "outside.parquet")
    (root / "metrics" / "run_id=x" / "evil.parquet").symlink_to(outside / "outside.parquet")
    (root / "metrics" / "run_id=y").symlink_to(outside, target_is_directory=True)
    return root, outside


def test_console_cannot_read_through_a_symlink_leading_out(symlinked: tuple[Path, Path]) -> None:
    root, _ = symlinked
    with Store(root, confined=True) as store:
        for path in ("metrics/run_id=x/evil.parquet", "metrics/run_id=y/outside.parquet"):
            message = _refusal(store, f"SELECT * FROM read_parquet('{root}/{path}')")
            assert PERMISSION in message and SECRET not in message, message


def test_the_catalog_skips_symlinks_leading_out_of_the_root(symlinked: tuple[Path, Path]) -> None:
    root, _ = symlinked
    with Store(root) as store:  # the dashboard's pages and the CLI read through this unconfined store
        assert not any("evil" in p or "run_id=y" in p for p in store.files("metrics"))
        assert any("outside the data root" in why for why in store.bad_files.values()), store.bad_files
        rows = store.sql("SELECT * FROM metrics").to_pylist()
        assert [r["name"] for r in rows] == ["mismatch/k3"] and SECRET not in str(rows)
    with Store(root, confined=True) as store:  # and one symlink does not take the console down
        assert store.read_only_query("SELECT count(*) AS n FROM metrics").to_pylist() == [{"n": 1}]


# ---------------------------------------------------------------------------------------------
# 2. Hostile text shows as text: dashboard (real Chromium), parity reports, terminal
# ---------------------------------------------------------------------------------------------

# Each payload carries a marker word; rendered literally, the marker sits in one text node with
# the syntax around it. Formatted (bold, heading, link, math, colour, HTML), it would not.
PAYLOADS = {
    "hostile-img": "<img src=x onerror=alert(1)>hostile-img",
    "hostile-script": "<script>alert(2)</script>hostile-script",
    "hostile-strong": "**hostile-strong**",
    "hostile-link": "[hostile-link](javascript:alert(3))",
    "hostile-heading": "# hostile-heading",
    "hostile^2": "$hostile^2$",
    "hostile-red": ":red[hostile-red]",
    "hostile-image": "![hostile-image](http://127.0.0.1:9/track.png)",
    "hostile-btag": "<b>hostile-btag</b>",
    "hostile-atag": "<a href='https://example.com/x'>hostile-atag</a>",
    "hostile-rich": "[bold]hostile-rich[/bold] [/x]",
}
METRICS = [  # four hostile metric names: all four are charted on the Metrics page
    f"{PAYLOADS['hostile-heading']} {PAYLOADS['hostile-img']}",
    f"{PAYLOADS['hostile-strong']} {PAYLOADS['hostile-link']} {PAYLOADS['hostile-script']}",
    f"{PAYLOADS['hostile^2']} {PAYLOADS['hostile-red']} {PAYLOADS['hostile-image']}",
    f"{PAYLOADS['hostile-btag']} {PAYLOADS['hostile-atag']} {PAYLOADS['hostile-rich']}",
]
RULE_NAME = "<b>hostile-rule</b> **hostile-rule-bold**"
ALL = " ".join(PAYLOADS.values())


def _hostile_store(root: Path) -> Path:
    """Three runs whose every free-text field is hostile; returns a rule file over their metrics.

    Two runs share an engine, so the Flags page has a flag effect to chart (values as ticks); the
    NaNs make findings on two metrics, so the Drift page links one (its label is Markdown)."""
    first = {
        "engine": PAYLOADS["hostile-btag"],
        "vllm_version": PAYLOADS["hostile-img"],
        "logprobs_mode": PAYLOADS["hostile-strong"],
        "flags": {PAYLOADS["hostile-heading"]: PAYLOADS["hostile-link"], "evil": PAYLOADS["hostile-atag"]},
    }
    engines = {
        "evil-reference": first,
        "evil-again": first,
        "evil-candidate": {
            "engine": PAYLOADS["hostile-red"],
            "vllm_version": PAYLOADS["hostile^2"],
            "logprobs_mode": PAYLOADS["hostile-script"],
            "flags": {
                PAYLOADS["hostile-heading"]: PAYLOADS["hostile-image"],
                "evil": PAYLOADS["hostile-rich"],
            },
        },
    }
    for i, (run_id, engine) in enumerate(engines.items()):
        run = collectors.init(
            run_id=run_id,
            root=root,
            name=ALL,
            project=PAYLOADS["hostile-heading"],
            tags=list(PAYLOADS.values()),
            config={"note": ALL},
            flush_interval=0.05,
        )
        run.log_engine(engine, step=0)
        for step in range(12):
            values = dict.fromkeys(METRICS, 0.001 * (i + 1) * (1 + step % 3))
            if step in (6, 8):  # NaN: an immediate finding, newest first on the Drift page
                values[METRICS[1 if step == 8 else 3]] = float("nan")
            run.log(step, values)
        run.event("config_change", step=4, note=ALL, **{PAYLOADS["hostile-strong"]: PAYLOADS["hostile-img"]})
        run.event("weight_update", step=5, note=PAYLOADS["hostile-script"])
        base = {"step": 3, "ts": time.time(), "source": "trainer", "rank": 0}
        for b, (lo, hi) in enumerate([(-1.0, 0.0), (0.0, 1.0)]):
            run.writer.append(
                "histograms", run_id, {**base, "name": "log_ratio", "bin": b, "lo": lo, "hi": hi, "count": 3}
            )
        for token, text in enumerate(PAYLOADS.values()):
            run.writer.append(
                "tokens",
                run_id,
                {
                    **base,
                    "token_id": token,
                    "token_text": text,
                    "position": token,
                    "seq_index": 0,
                    "trainer_logprob": -1.0,
                    "rollout_logprob": -1.5,
                    "log_ratio": 0.5,
                },
            )
        run.writer.append(
            "alerts",
            run_id,
            {
                **base,
                "rule": RULE_NAME,
                "metric": METRICS[1],
                "severity": "bad",
                "value": 1.0,
                "threshold": 0.5,
                "state": "firing",
                "message": ALL,
            },
        )
        run.close()
    rules = root.parent / "hostile-rules.toml"
    rules.write_text(
        f"[[rule]]\nname = {json.dumps(RULE_NAME)}\nmetric = {json.dumps(METRICS[3])}\nabove = 0.002\n"
    )
    return rules


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("hostile")
    root = base / "root"
    return root, _hostile_store(root)


@pytest.fixture(scope="module")
def hostile_server(hostile: tuple[Path, Path]) -> Iterator[str]:
    root, rules = hostile
    proc, url = serve_ui(root, "--rules", str(rules))
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    pytest.importorskip("playwright.sync_api", reason="Playwright is a test extra (requirements-test.txt)")
    from bench._browser import chromium

    with chromium() as browser:
        yield browser


# For every text node holding a marker, the node's text and the tags around it.
_TEXT_NODES = """(markers) => {
  const hits = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  while (walker.nextNode()) {
    const node = walker.currentNode;
    for (const marker of markers) {
      if (!node.textContent.includes(marker)) continue;
      const tags = [];
      for (let el = node.parentElement; el && tags.length < 4; el = el.parentElement) {
        tags.push(el.tagName.toLowerCase() + (el.getAttribute('style') || '').replace(/\\s/g, ''));
      }
      hits.push({marker, text: node.textContent, tags});
    }
  }
  return hits;
}"""
# Elements that exist only if some payload was interpreted, not shown.
INJECTED = {
    "img[src='x']": "an <img> from HTML",
    "img[src*='127.0.0.1:9']": "an image from Markdown",
    "a[href^='javascript']": "a javascript: link",
    "a[href*='example.com']": "a link from HTML",
    ".katex, .katex-display, mjx-container": "math",
    "[class*='ColoredText'], span[style*='color: red']": "a :red[] directive",
}


def _check_page(page: object, where: str) -> int:
    """Fail on anything a payload made of the page; return how many hostile texts it shows."""
    for selector, what in INJECTED.items():
        assert page.locator(selector).count() == 0, f"{where}: {what} ({selector})"
    assert page.evaluate("[...document.scripts].every(s => !s.textContent.includes('alert('))"), (
        f"{where}: a <script> from a payload"
    )
    for level in range(1, 7):
        assert page.locator(f"h{level}:has-text('hostile-heading')").count() == 0, f"{where}: # heading"
    hits = page.evaluate(_TEXT_NODES, list(PAYLOADS))
    for hit in hits:
        raw = PAYLOADS[hit["marker"]]
        # Shown literally, the marker's text node holds the whole payload, syntax and all.
        assert raw in hit["text"], f"{where}: {raw!r} rendered as {hit['text']!r} in {hit['tags']}"
        assert not any(t.startswith(("strong", "b", "em", "a", "h")) for t in hit["tags"][:1]), (where, hit)
    return len(hits)


# What each page must show before it is checked (beyond its heading).
READY = {
    "runs": "[data-testid='stDataFrame']",
    "metrics": ".js-plotly-plot",
    "drift": "[data-testid='stPageLink']",
    "diagnosis": "[data-testid='stSelectbox']",
    "flags": ".js-plotly-plot",
    "parity": "text=Verdict:",
    "tokens": "[data-testid='stDataFrame']",
    "sql": "text=Run query",
}


@pytest.mark.browser
def test_hostile_text_shows_as_text_on_all_pages(
    hostile_server: str, browser: object, figures: Callable[..., None]
) -> None:
    from logprobe.app.dashboard import PAGES

    page = browser.new_page(viewport={"width": 1500, "height": 1100})
    dialogs: list[str] = []
    fetched: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.on("request", lambda request: fetched.append(request.url))
    shown: dict[str, int] = {}
    try:
        for name, (title, _) in PAGES.items():
            query = {"metric": METRICS[0]} if name == "metrics" else {}
            page.goto(f"{hostile_server}/{'' if name == 'runs' else name}?{urlencode(query)}")
            page.get_by_role("heading", name=title).first.wait_for(timeout=60_000)
            page.locator(READY[name]).first.wait_for(timeout=60_000)
            if name == "metrics":  # the asked-for metric and the three others, one chart each
                page.wait_for_function("document.querySelectorAll('.js-plotly-plot').length >= 4")
            if name == "sql":
                area = page.get_by_role("textbox", name="SQL")
                area.fill("SELECT run_id, kind, payload FROM events ORDER BY run_id, step")
                page.get_by_role("button", name="Run query").click()
                page.locator("[data-testid='stDataFrame']").first.wait_for(timeout=30_000)
                hostile_path = f"/nowhere/{PAYLOADS['hostile-strong']} {PAYLOADS['hostile-img']}"
                area.fill(f"SELECT * FROM read_text('{hostile_path}')")
                page.get_by_role("button", name="Run query").click()
                page.locator("[data-testid='stAlertContentError']").first.wait_for(timeout=30_000)
            page.wait_for_timeout(1500)  # let Plotly and images (if any were injected) settle
            exceptions = page.locator("[data-testid='stException']")
            assert exceptions.count() == 0, (name, exceptions.first.inner_text())
            shown[name] = _check_page(page, name)
        assert not dialogs, f"alert() ran: {dialogs}"
        outside = [u for u in fetched if not u.startswith(hostile_server) and not u.startswith("data:")]
        assert not outside, f"the page fetched {outside}"
    finally:
        page.close()
    # The check is not vacuous: these pages show the hostile names as text (chart titles, ticks,
    # legends, link labels, error messages); the rest show them in data grids (drawn on a canvas).
    for name in ("metrics", "drift", "flags", "sql"):
        assert shown[name] > 0, (name, shown)
    figures(pages_checked=len(shown), hostile_strings=len(PAYLOADS), hostile_texts_seen=sum(shown.values()))


def test_parity_report_shows_hostile_names_as_text() -> None:
    """`logprobe parity` (Markdown or HTML) and the dashboard's download: nothing in a name formats."""
    from html.parser import HTMLParser

    from markdown_it import MarkdownIt

    rows = [monitor.MetricParity(m, 5, 0.1, 0.2, 0.3, 0.4, 1e-3, 2, False) for m in METRICS]
    flags = [(PAYLOADS["hostile-heading"], PAYLOADS["hostile-link"], PAYLOADS["hostile-image"])]
    flags += [(f"flags.{k}", v, PAYLOADS["hostile-script"]) for k, v in PAYLOADS.items()]
    report = monitor.ParityReport("evil-reference", "evil-candidate", rows, flags)
    tokens = MarkdownIt("commonmark").enable("table").parse(report.to_markdown())
    kinds = [t.type for t in tokens] + [c.type for t in tokens for c in t.children or []]
    assert kinds.count("heading_open") == 2 and kinds.count("strong_open") == 1  # the report's own
    assert not {"link_open", "image", "html_inline", "html_block", "em_open"} & set(kinds)

    class Tags(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.tags: set[str] = set()
            self.text = ""

        def handle_starttag(self, tag: str, attrs: list) -> None:
            self.tags.add(tag)
            assert not any(a.startswith("on") or a in ("href", "src") for a, _ in attrs), (tag, attrs)

        def handle_data(self, data: str) -> None:
            self.text += data

    page = Tags()
    page.feed(report.to_html())
    assert page.tags <= {"html", "head", "meta", "title", "style", "body", "h1", "h2", "p", "strong"} | {
        "table",
        "thead",
        "tbody",
        "tr",
        "th",
        "td",
    }, page.tags
    for raw in [*METRICS, *PAYLOADS.values()]:
        assert raw in page.text, raw  # every hostile name reads exactly as it was logged
    assert "logprobs_mode" in monitor.ParityReport("a", "b", [], [("logprobs_mode", "x", "y")]).to_markdown()


# What a terminal must never receive raw: ESC sequences that retitle, clear or hide lines.
TERMINAL = "\x1b]0;pwned\x07\x1b[2J\x1b[8mhidden" + PAYLOADS["hostile-rich"]


def test_the_terminal_shows_hostile_names_as_text(tmp_path: Path) -> None:
    """`logprobe query/runs/alerts list` tables and `alerts watch` lines: rich markup in a name is
    text (it used to be parsed: "[/x]" crashed the table), and control characters are escaped."""
    with Writer(tmp_path) as writer:
        writer.append("runs", "evil", {"name": TERMINAL, "project": PAYLOADS["hostile-rich"]})
        for step in range(4):
            writer.log_metrics("evil", step, {TERMINAL: 1.0, "mismatch/k3": 0.5})
        writer.append("alerts", "evil", {"rule": TERMINAL, "state": "firing", "message": TERMINAL})
    rules = tmp_path / "rules.toml"
    rules.write_text(f"[[rule]]\nname = 'r'\nmetric = {json.dumps(TERMINAL)}\nabove = 0.1\nfor_steps = 1\n")
    runs = [
        ["query", "--root", str(tmp_path), "--", f'SELECT DISTINCT name AS "{TERMINAL}" FROM metrics'],
        ["runs", "--root", str(tmp_path)],
        ["alerts", "list", "--root", str(tmp_path)],
        ["alerts", "watch", "--once", "--root", str(tmp_path), "--rules", str(rules)],
    ]
    for args in runs:
        proc = subprocess.run([LOGPROBE, *args], capture_output=True, text=True, timeout=60)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0 and "Traceback" not in out, (args, out)
        assert "\x1b" not in out and "\x07" not in out, (args, out)
        if args[0] != "runs":  # (runs folds long names over lines)
            assert "\\x1b]0;pwned\\x07" in out, (args, out)  # shown, escaped
            assert "[bold]hostile-rich[/bold] [/x]" in out, (args, out)


# ---------------------------------------------------------------------------------------------
# 3. A run id is never a path
# ---------------------------------------------------------------------------------------------

BAD_RUN_IDS = [
    "../x",
    "..",
    ".",
    "../../etc/cron.d/x",
    "/etc",
    "/etc/passwd",
    "a/../../b",
    "a/b",
    "a\\..\\b",
    "%2e%2e",
    "%2e%2e%2fx",
    "..%2f..%2fx",
    "x\x00y",
    "\x00",
    "",
    " x",
    "x y",
    "~root",
    "-rf",
    "run_id=x",
    ".hidden",
    "x.tmp",
    "x" * 201,
    "ｘ",  # fullwidth letter
]


def test_writer_and_collectors_refuse_path_like_run_ids(tmp_path: Path, figures: Callable[..., None]) -> None:
    root = tmp_path / "root"
    with Writer(root) as writer:
        for run_id in BAD_RUN_IDS:
            for write in (
                lambda r: writer.append("events", r, {"kind": "x"}),
                lambda r: writer.log_metrics(r, 0, {"m": 1.0}),
                lambda r: collectors.Run(writer, r),
                # (init's run_id="" means "make one up", like None)
                lambda r: collectors.init(run_id=r or "..", root=root),
            ):
                with pytest.raises(ValueError, match="invalid run_id"):
                    write(run_id)
        with pytest.raises(ValueError, match="invalid writer_id"):
            Writer(root, writer_id="../x")
    assert not [p for p in tmp_path.rglob("*") if not p.is_dir()], "a refused id left a file"
    assert not [p for p in tmp_path.rglob("*") if "run_id=" in p.name], "a refused id left a folder"
    figures(bad_run_ids=len(BAD_RUN_IDS))


def test_a_run_id_cannot_end_in_a_newline(tmp_path: Path) -> None:
    with Writer(tmp_path) as writer, pytest.raises(ValueError, match="invalid run_id"):
        writer.append("events", "x\n", {"kind": "x"})


def test_cli_refuses_path_like_run_ids_with_a_clear_message(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with Writer(root) as writer:
        writer.log_metrics("ok", 0, {"mismatch/k3": 1e-4})
    runner = CliRunner()
    before = _snapshot(tmp_path)
    for run_id in ["../x", "/etc", "a/../../b", "%2e%2e", "x\x00y", ".."]:
        for args in (
            ["compact", "--root", str(root), "--run", run_id],
            ["parity", "--root", str(root), "--ref", "ok", "--run", run_id],
            ["parity", "--root", str(root), "--ref", run_id, "--run", "ok"],
            ["alerts", "list", "--root", str(root), "--run", run_id],
            ["correlate", "--root", str(root), "--runs", run_id],
        ):
            result = runner.invoke(cli_main, args)
            assert result.exit_code == 2, (args, result.output)
            assert "invalid run id" in result.output, (args, result.output)
    assert _snapshot(tmp_path) == before


def test_monitor_and_queries_treat_path_like_run_ids_as_unknown_runs(tmp_path: Path) -> None:
    """Run ids reach the monitor and the queries only as SQL parameters and partition-name
    comparisons, never as paths: a hostile one finds nothing and touches nothing."""
    root = tmp_path / "root"
    with Writer(root) as writer:
        for step in range(5):
            writer.log_metrics("ok", step, {"mismatch/k3": 1e-4})
    before = _snapshot(tmp_path)
    with Store(root) as store:
        for run_id in BAD_RUN_IDS:
            with pytest.raises(ValueError, match="no metrics for run"):
                monitor.parity(store, "ok", run_id)
            assert monitor.detect_run(store, run_id) == []
            assert monitor.flag_diff(store, run_id, "ok") == []
            assert monitor.config_changes(store, run_id) == []
            assert monitor.segments(store, "mismatch/k3", [run_id]) == []
            assert storage.metric_series(store, [run_id], ["mismatch/k3"]).num_rows == 0
            assert storage.worst_tokens(store, run_id).num_rows == 0
            assert storage.histogram_matrix(store, run_id).num_rows == 0
            assert store.column_range("metrics", run_id, "step") is None
            assert store.sql_over_run("metrics", run_id, "SELECT * FROM {source}").num_rows == 0
        report = storage.compact(root, run_ids=BAD_RUN_IDS, min_files=1)
        assert report.partitions == 0
    assert _snapshot(tmp_path) == before


def _page(root: Path, page: str, query: dict[str, str]) -> object:
    from streamlit.testing.v1 import AppTest

    def script(root: str, page: str) -> None:
        from logprobe.app.dashboard import main

        main(root=root, page=page)

    at = AppTest.from_function(script, args=(str(root), page), default_timeout=60)
    for key, value in query.items():
        at.query_params[key] = value
    return at.run()


def test_dashboard_url_params_cannot_name_paths_or_break_a_page(hostile: tuple[Path, Path]) -> None:
    root, _ = hostile
    before = _snapshot(root.parent)
    for query in (
        {"runs": "../../etc,/etc/passwd,%2e%2e", "metric": "../../etc/passwd"},
        {"runs": "evil-reference", "metric": METRICS[2], "x0": "abc", "x1": "../x"},
        {"runs": "evil-reference", "metric": METRICS[2], "x0": "nan", "x1": "inf"},
        {"runs": "\x00", "metric": "\x00", "x0": "1e999", "x1": "-1"},
    ):
        for page in ("metrics", "drift", "tokens"):
            at = _page(root, page, query)
            assert not at.exception, (page, query, [e.value for e in at.exception])
        # Unknown runs are dropped from the selection; a known one is honoured.
        picked = at.sidebar.multiselect[1].value
        assert all(r.startswith("evil-") for r in picked), picked
    assert _snapshot(root.parent) == before


# ---------------------------------------------------------------------------------------------
# 4. Webhook URLs and tokens: from the environment, never into the store or a log
# ---------------------------------------------------------------------------------------------

TOKEN = "tok-9d2f61c0e5"  # the ?token= of the webhook URL
HOOK_PATH = "T0001/B0002/hookpath-4be7a1"  # a Slack-style secret path
HOOK_ENV = "LOGPROBE_TEST_HOOK_URL"
HOOK_RULES = f"""
[[rule]]
name = "k3"
metric = "mismatch/k3"
above = 0.01
for_steps = 1
notify = ["log", "hook"]

[notifier.hook]
kind = "webhook"
url_env = "{HOOK_ENV}"
timeout_s = 0.3
"""


class _Hook(http.server.BaseHTTPRequestHandler):
    received: list[str]
    status = 200
    delay = 0.0

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        time.sleep(self.delay)
        type(self).received.append(self.path)
        self.send_response(self.status)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def _hook(status: int = 200, delay: float = 0.0) -> Iterator[tuple[int, list[str]]]:
    """A webhook endpoint on 127.0.0.1 (as in tests/monitor/test_alerts.py): (port, paths received)."""
    handler = type("Hook", (_Hook,), {"received": [], "status": status, "delay": delay})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], handler.received
    finally:
        server.shutdown()
        server.server_close()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _secrets_in_store(root: Path) -> list[str]:
    """Every place under ``root`` where the token or secret path shows: raw bytes (footers
    included), decoded rows, and the key-value metadata of each Parquet file."""
    found = []
    for path in root.rglob("*"):
        if not path.is_file():
            continue
        texts = [path.read_bytes().decode("latin-1")]
        if path.suffix == ".parquet":
            texts.append(str(pq.read_table(path).to_pylist()))
            texts.append(str(pq.read_metadata(path).metadata))
        found += [f"{path}: {s}" for t in texts for s in (TOKEN, HOOK_PATH) if s in t]
    return found


def _store_with_a_bad_run(root: Path) -> None:
    with Writer(root) as writer:
        writer.append("runs", "leaky", {"name": "leaky"})
        for step in range(6):  # fires at step 0, resolves at step 5: two alerts, two posts
            writer.log_metrics("leaky", step, {"mismatch/k3": 0.05 if step < 5 else 0.0})


def test_webhook_secrets_never_reach_the_store_or_the_log(
    tmp_path: Path, figures: Callable[..., None]
) -> None:
    """`logprobe alerts watch` against a live endpoint and every way one fails: the URL is used,
    and neither its path nor its token shows in the alerts table, any file, stdout or stderr."""
    rules = tmp_path / "rules.toml"
    rules.write_text(HOOK_RULES)
    secret_part = f"/services/{HOOK_PATH}?token={TOKEN}"
    with _hook() as (ok, received), _hook(status=500) as (err, _), _hook(delay=2.0) as (slow, _):
        down = _closed_port()
        urls = {
            "ok": f"http://127.0.0.1:{ok}{secret_part}",
            "500": f"http://127.0.0.1:{err}{secret_part}",
            "timeout": f"http://127.0.0.1:{slow}{secret_part}",
            "down": f"http://127.0.0.1:{down}{secret_part}",
            "credentials": f"http://hook:{TOKEN}@127.0.0.1:{down}/services/{HOOK_PATH}",
            "bad port": f"http://127.0.0.1:{TOKEN}{secret_part}",
            "no scheme": f"127.0.0.1:{down}{secret_part}",
        }
        watchers = {}
        for case, url in urls.items():
            root = tmp_path / case.replace(" ", "-")
            _store_with_a_bad_run(root)
            watchers[case] = subprocess.Popen(
                [LOGPROBE, "alerts", "watch", "--once", "--root", str(root), "--rules", str(rules)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env={**os.environ, HOOK_ENV: url},
            )
        outputs = {case: proc.communicate(timeout=60) for case, proc in watchers.items()}
    assert len(received) == 2 and all(TOKEN in path for path in received), received  # the URL is used
    for case, (stdout, stderr) in outputs.items():
        root = tmp_path / case.replace(" ", "-")
        assert watchers[case].returncode == 0 and "Traceback" not in stderr, (case, stderr)
        assert "firing" in stderr and "resolved" in stderr, (case, stderr)
        for text in (stdout, stderr):
            assert TOKEN not in text and HOOK_PATH not in text, (case, text)
        if case != "ok":
            assert "webhook to" in stderr and "failed after" in stderr, (case, stderr)
        with Store(root) as store:
            assert store.sql("SELECT count(*) AS n FROM alerts").to_pylist() == [{"n": 2}], case
        assert not _secrets_in_store(root), case
    figures(webhook_failure_modes=len(urls) - 1)


def test_inline_alerts_keep_webhook_secrets_out_of_store_and_logs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The collector's own rule engine (``collectors.init(alerts=rules.toml)``), in process."""
    rules = tmp_path / "rules.toml"
    rules.write_text(HOOK_RULES)
    down = _closed_port()
    caplog.set_level("DEBUG")
    for i, url in enumerate(
        [f"http://127.0.0.1:{down}/services/{HOOK_PATH}?token={TOKEN}", f"http://127.0.0.1:{TOKEN}/x"]
    ):
        monkeypatch.setenv(HOOK_ENV, url)
        root = tmp_path / f"root-{i}"
        run = collectors.init(run_id="leaky", root=root, alerts=rules, config={"lr": 1e-6})
        for step in range(6):
            run.log(step, {"mismatch/k3": 0.05 if step < 5 else 0.0})
        run.alerts.close()  # waits for the webhook thread's retries
        notifier = run.alerts.notifiers["hook"]
        run.close()
        assert notifier.failed == 2 and notifier.sent == 0, (notifier.failed, notifier.sent)
        assert not _secrets_in_store(root)
    logged = caplog.text
    assert "webhook to http://127.0.0.1" in logged
    assert TOKEN not in logged and HOOK_PATH not in logged, logged


# ---------------------------------------------------------------------------------------------
# 5. The dashboard listens on 127.0.0.1 only
# ---------------------------------------------------------------------------------------------


def _listening(port: int) -> set[str]:
    """Addresses a socket listens on for ``port``, from /proc/net/tcp and tcp6."""
    found = set()
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state != "0A" or int(hex_port, 16) != port:  # 0A: LISTEN
                continue
            raw = b"".join(bytes.fromhex(address[i : i + 8])[::-1] for i in range(0, len(address), 8))
            found.add(socket.inet_ntop(family, raw))
    return found


def _other_addresses() -> set[str]:
    """This machine's non-loopback IPv4 addresses."""
    found = set()
    with suppress(FileNotFoundError):
        out = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True).stdout
        found |= set(re.findall(r"inet (\d+\.\d+\.\d+\.\d+)", out))
    with suppress(OSError):
        found.add(socket.gethostbyname(socket.gethostname()))
    return {a for a in found if not a.startswith("127.")}


def test_the_dashboard_listens_on_loopback_only(tmp_path: Path, figures: Callable[..., None]) -> None:
    proc, url = serve_ui(tmp_path / "root")  # `logprobe ui` with its default --host
    port = int(url.rsplit(":", 1)[1])
    try:
        assert _listening(port) == {"127.0.0.1"}, _listening(port)
        others = _other_addresses()
        for address in others:
            with pytest.raises(OSError):  # refused: nothing listens there
                socket.create_connection((address, port), timeout=3).close()
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=5) as response:
            assert response.read() == b"ok"  # while loopback answers
    finally:
        proc.terminate()
        proc.wait(10)
    figures(other_addresses_refused=len(others))


@pytest.mark.browser
def test_an_auth_section_puts_every_page_behind_sign_in(
    hostile: tuple[Path, Path], browser: object, tmp_path: Path
) -> None:
    """The README's recipe: an ``[auth]`` section in ``.streamlit/secrets.toml`` (Streamlit's OIDC
    login) and ``logprobe ui`` shows nothing but a sign-in button until the provider says who you are."""
    from logprobe.app.dashboard import PAGES

    root, _ = hostile
    (tmp_path / ".streamlit").mkdir()
    (tmp_path / ".streamlit" / "secrets.toml").write_text(
        "[auth]\n"
        'redirect_uri = "http://127.0.0.1:8501/oauth2callback"\n'
        'cookie_secret = "a-long-random-string-for-this-test"\n'
        'client_id = "logprobe"\n'
        'client_secret = "not-a-secret"\n'
        'server_metadata_url = "http://127.0.0.1:9/.well-known/openid-configuration"\n'
    )
    proc, url = serve_ui(root, cwd=tmp_path)
    page = browser.new_page()
    try:
        for name in PAGES:
            page.goto(f"{url}/{'' if name == 'runs' else name}")
            page.get_by_role("button", name="Sign in").wait_for(timeout=60_000)
            page.wait_for_timeout(300)
            assert "evil-reference" not in page.content(), name  # no run, no data, no sidebar
            assert page.locator("[data-testid='stDataFrame'], .js-plotly-plot").count() == 0, name
    finally:
        page.close()
        proc.terminate()
        proc.wait(10)
