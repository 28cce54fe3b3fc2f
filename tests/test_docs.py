"""The documentation site builds with warnings as errors, and its API reference covers ``dp_pixel_torch.__all__``.

The build runs ``sphinx-build -W --keep-going -b html docs <tmp>`` in a fresh output directory: every docutils error
in a docstring or page, every broken cross-reference (``nitpicky``: ``:func:``/``:class:``/``:meth:`` roles that name
something of the package, MyST links to pages and heading anchors) and every failing example fails the test.
It needs the ``[docs]`` extra (``pip install -e ".[docs]"``, part of ``[dev]``) and skips without it.
"""

from __future__ import annotations

import html
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

for _module in ("sphinx", "myst_parser", "furo", "sphinx_gallery", "matplotlib", "skimage"):
    pytest.importorskip(_module, reason=f"the docs build needs {_module}: pip install -e '.[docs]'")


@pytest.fixture(scope="module")
def built_site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("docs-html")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    env.setdefault("OMP_NUM_THREADS", "1")
    env["MPLBACKEND"] = "Agg"
    proc = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-E", "-q", "-b", "html", str(DOCS), str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, f"sphinx-build -W failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-12000:]}"
    return out


def _documented_ids(site: Path) -> set[str]:
    ids: set[str] = set()
    for page in [site / "api.html", *(site / "generated").glob("*.html"), *(site / "api").glob("*.html")]:
        ids.update(html.unescape(m) for m in re.findall(r'<dt class="sig[^"]*" id="([^"]+)"', page.read_text()))
        ids.update(re.findall(r'id="module-([^"]+)"', page.read_text()))
    return ids


def test_docs_build_strict(built_site: Path) -> None:
    assert (built_site / "index.html").is_file()
    assert (built_site / "api.html").is_file()


def test_api_reference_covers_all(built_site: Path) -> None:
    import dp_pixel_torch

    ids = _documented_ids(built_site)
    missing = [name for name in dp_pixel_torch.__all__ if f"dp_pixel_torch.{name}" not in ids]
    assert not missing, f"in dp_pixel_torch.__all__ but not in the API reference: {missing}"
    api_page = (built_site / "api.html").read_text()
    unlinked = [name for name in dp_pixel_torch.__all__ if f"dp_pixel_torch.{name}" not in api_page]
    assert not unlinked, f"not reachable from api.html: {unlinked}"
