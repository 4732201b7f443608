"""The Streamlit dashboard: ``logprobe ui`` runs ``streamlit run app/dashboard.py -- --root DIR``.

This file wires the sidebar (filter, search, run selection) to the pages in ``app/views``; pages lay
out what ``storage`` and ``monitor`` return, and no statistic is computed here.
"""

from __future__ import annotations

import argparse
import sys
from functools import partial

import streamlit as st

from logprobe import monitor, storage
from logprobe.app.session import STATUSES, Context, literal, store
from logprobe.app.views import diagnosis, drift, flags, metrics, parity, runs, sql, tokens

PAGES = {  # url path -> (title, module)
    "runs": ("Runs", runs),
    "metrics": ("Metrics", metrics),
    "drift": ("Drift and alerts", drift),
    "diagnosis": ("Diagnosis", diagnosis),
    "flags": ("Flags and versions", flags),
    "parity": ("Parity", parity),
    "tokens": ("Tokens", tokens),
    "sql": ("SQL", sql),
}
MAX_DEFAULT_SELECTED = 8


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", default=None)
    parser.add_argument("--rules", default=None)
    args, _ = parser.parse_known_args(sys.argv[1:])
    return args


def _rules(path: str | None) -> tuple[list[monitor.Rule], str]:
    if path is None:
        return monitor.default_rules(), "The shipped default rules (logprobe ui --rules FILE to use yours)."
    try:
        return monitor.load_rules(path)[0], f"Rules from {path}."
    except monitor.RuleError as exc:
        st.error(literal(exc))
        return monitor.default_rules(), f"{exc}; showing the shipped default rules instead."


def _sidebar(root: str) -> tuple[list[dict], list[str]]:
    db = store(root)
    every = storage.list_runs(db).to_pylist()
    st.sidebar.title("logprobe")
    st.sidebar.caption(literal(root))
    if db.mirror is not None and db.mirror.last_error is not None:
        # An s3:// root whose endpoint does not answer: say the charts may be behind, and why.
        st.sidebar.warning(literal(f"Cannot list the bucket; showing the local copy. {db.mirror.last_error}"))
    statuses = st.sidebar.multiselect("Status", STATUSES, default=list(STATUSES))
    search = st.sidebar.text_input("Search runs", placeholder="name, id or tag").strip().lower()
    shown = [
        r
        for r in every
        if r["status"] in statuses
        and (not search or any(search in str(v).lower() for v in (r["run_id"], r["name"], r["tags"])))
    ]
    ids = [r["run_id"] for r in shown]
    asked = [r for r in st.query_params.get("runs", "").split(",") if r in ids]
    selected = st.sidebar.multiselect("Compare runs", ids, default=asked or ids[:MAX_DEFAULT_SELECTED])
    st.sidebar.caption(f"{len(shown)} of {len(every)} runs shown")
    return shown, selected


def main(root: str | None = None, rules: str | None = None, page: str | None = None) -> None:
    """Draw the app; ``page`` picks the default page (the tests open each page this way)."""
    st.set_page_config(page_title="logprobe", layout="wide")
    _sign_in()
    args = _args()
    root = str(storage.resolve_root(root or args.root))
    shown, selected = _sidebar(root)
    rule_list, rules_source = _rules(rules or args.rules)
    ctx = Context(root, store(root), shown, selected, rule_list, rules_source)
    ctx.pages = {
        name: st.Page(
            partial(_render, module, ctx), title=title, url_path=name, default=name == (page or "runs")
        )
        for name, (title, module) in PAGES.items()
    }
    nav = st.navigation(list(ctx.pages.values()))
    if not ctx.store.files("metrics") and not ctx.store.files("runs"):
        st.info(
            f"No runs under {literal(root)} yet. Start one with collectors.init(root=...) or `logprobe demo`."
        )
    nav.run()


def _sign_in() -> None:
    """With an ``[auth]`` section in ``.streamlit/secrets.toml``, Streamlit's OIDC login guards every
    page: a visitor who is not signed in gets a sign-in button and nothing else. Without one
    (``is_logged_in`` is then absent) the dashboard is open to whoever reaches its address."""
    if "is_logged_in" not in st.user:
        return
    if not st.user.is_logged_in:
        st.title("logprobe")
        st.button("Sign in", on_click=st.login)
        st.stop()
    st.sidebar.button("Sign out", on_click=st.logout)


def _render(module: object, ctx: Context) -> None:
    module.render(ctx)


if __name__ == "__main__":
    main()
